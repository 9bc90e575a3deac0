"""Round trips through libgearman: Debian's ``gearman`` CLI (client and worker) and ``gearadmin``.

The libgearman worker sends GRAB_JOB_ALL/PRE_SLEEP and relies on NOOP wakeups; the client
sends a generated UUID unique unless ``-u`` is given.  Every subprocess has a timeout and
every long-running worker is killed at teardown.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence

import pytest
from gearproto import Conn, status, wait_for
from support import Factory, IMPL, Server, require

GEARMAN = "/usr/bin/gearman"
GEARADMIN = "/usr/bin/gearadmin"


@pytest.fixture(autouse=True)
def _tools() -> None:
    require(GEARMAN, "libgearman round trips need Debian's gearman-tools")
    require(GEARADMIN, "gearadmin comes with gearman-tools")


def cli(srv: Server, *args: str, stdin: bytes | None = None,
        timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([GEARMAN, "-h", "127.0.0.1", "-p", str(srv.port), *args],
                          input=stdin, capture_output=True, timeout=timeout, check=False)


def gearadmin(srv: Server, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([GEARADMIN, "-h", "127.0.0.1", "-p", str(srv.port), *args],
                          capture_output=True, timeout=20, check=False)


def start_worker(srv: Server, procs: list[subprocess.Popen[bytes]], fn: str,
                 cmd: Sequence[str], count: int | None = None,
                 extra: Sequence[str] = (), wait: bool = True) -> subprocess.Popen[bytes]:
    before = workers_for(srv, fn)
    args = [GEARMAN, "-h", "127.0.0.1", "-p", str(srv.port), "-w", "-f", fn, *extra]
    if count is not None:
        args += ["-c", str(count)]
    p = subprocess.Popen([*args, "--", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    procs.append(p)
    if wait:
        assert wait_for(lambda: workers_for(srv, fn) > before, 10), "worker did not register"
    return p


def workers_for(srv: Server, fn: str) -> int:
    return status(srv.port).get(fn, (0, 0, 0))[2]


# -- gearman CLI ----------------------------------------------------------------------------

def test_cli_foreground(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    w = start_worker(server, procs, "up", ["tr", "a-z", "A-Z"], count=1)
    r = cli(server, "-f", "up", "hello world")
    assert (r.returncode, r.stdout) == (0, b"HELLO WORLD"), r.stderr
    assert w.wait(10) == 0


def test_cli_prefix_and_stdin(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    start_worker(server, procs, "up", ["tr", "a-z", "A-Z"], count=1)
    r = cli(server, "-P", "-f", "up", stdin=b"from stdin\0with nul")
    assert (r.returncode, r.stdout) == (0, b"up: FROM STDIN\0WITH NUL"), r.stderr


def test_cli_one_job_per_line(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    start_worker(server, procs, "rev", ["rev"], count=3)
    r = cli(server, "-n", "-f", "rev", stdin=b"abc\ndef\nghi\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"cba\nfed\nihg\n"


def test_cli_background_priorities(server: Server, procs: list[subprocess.Popen[bytes]],
                                   tmp_path: object) -> None:
    out = os.path.join(str(tmp_path), "order.txt")
    for flag, data in (("-L", "low"), (None, "normal"), ("-I", "high"), ("-L", "low2")):
        args = ["-b", "-f", "pq"] + ([flag] if flag else []) + [data]
        r = cli(server, *args)
        assert r.returncode == 0, r.stderr
    rows = status(server.port)
    assert rows["pq"] == (4, 0, 0)
    r = gearadmin(server, "--priority-status")
    assert r.stdout == b"pq\t1\t1\t2\t0\n.\n"
    w = start_worker(server, procs, "pq", ["sh", "-c", f"cat >> {out}; echo >> {out}"],
                     count=4, wait=False)
    assert w.wait(15) == 0
    with open(out) as f:
        assert f.read().split() == ["high", "normal", "low", "low2"]
    assert status(server.port)["pq"] == (0, 0, 0)


def test_cli_unique_background(server: Server) -> None:
    for data in ("one", "two"):
        assert cli(server, "-b", "-u", "same-key", "-f", "uq", data).returncode == 0
    assert cli(server, "-b", "-u", "other-key", "-f", "uq", "three").returncode == 0
    assert status(server.port)["uq"] == (2, 0, 0)
    r = gearadmin(server, "--show-unique-jobs")
    assert sorted(r.stdout.split(b"\n")) == [b"", b".", b"other-key", b"same-key"]


def test_cli_job_failure(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    start_worker(server, procs, "fails", ["false"], count=1)
    r = cli(server, "-f", "fails", "x")
    assert r.returncode == 1
    assert b"Job failed" in r.stderr


def test_cli_worker_death_requeues(server: Server,
                                   procs: list[subprocess.Popen[bytes]]) -> None:
    w1 = start_worker(server, procs, "slow", ["sleep", "60"])
    client = subprocess.Popen([GEARMAN, "-h", "127.0.0.1", "-p", str(server.port), "-f", "slow",
                               "payload"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
    procs.append(client)
    assert wait_for(lambda: status(server.port).get("slow") == (1, 1, 1), 10), status(server.port)
    os.killpg(w1.pid, signal.SIGKILL)
    w1.wait(5)
    assert wait_for(lambda: status(server.port).get("slow") == (1, 0, 0), 10), status(server.port)
    # it takes the requeued job at once and exits: don't wait for it in `status`
    start_worker(server, procs, "slow", ["sh", "-c", "cat; printf ' done'"], count=1,
                 wait=False)
    out, err = client.communicate(timeout=15)
    assert (client.returncode, out) == (0, b"payload done"), err


def test_cli_job_retries_drop(server_factory: Factory,
                              procs: list[subprocess.Popen[bytes]]) -> None:
    srv = server_factory("-j", "1")
    w1 = start_worker(srv, procs, "drop", ["sleep", "60"])
    client = subprocess.Popen([GEARMAN, "-h", "127.0.0.1", "-p", str(srv.port), "-f", "drop",
                               "x"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
    procs.append(client)
    assert wait_for(lambda: status(srv.port).get("drop") == (1, 1, 1), 10)
    os.killpg(w1.pid, signal.SIGKILL)
    out, err = client.communicate(timeout=15)
    assert client.returncode == 1 and b"Job failed" in err, (out, err)
    assert wait_for(lambda: "Dropped job due to max retry count" in srv.log(), 5)
    assert status(srv.port)["drop"] == (0, 0, 0)


def test_cli_concurrent_clients(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    for _ in range(3):
        start_worker(server, procs, "cc", ["sh", "-c", "cat; printf '!'"])
    clients = [subprocess.Popen([GEARMAN, "-h", "127.0.0.1", "-p", str(server.port), "-f", "cc",
                                 f"msg{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
               for i in range(20)]
    procs.extend(clients)
    for i, c in enumerate(clients):
        out, err = c.communicate(timeout=30)
        assert (c.returncode, out) == (0, f"msg{i}!".encode()), err
    assert status(server.port)["cc"] == (0, 0, 3)


def test_cli_worker_sends_data_per_line(server: Server,
                                        procs: list[subprocess.Popen[bytes]]) -> None:
    start_worker(server, procs, "lines", ["sh", "-c", "cat >/dev/null; printf 'a\\nb\\n'"],
                 count=1, extra=["-n"])
    r = cli(server, "-f", "lines", "x")
    assert r.returncode == 0, r.stderr
    # libgearman's CLI prints each WORK_DATA as it arrives plus its own echo of the first
    # chunk; this is what it prints against C gearmand 1.1.20
    assert r.stdout == b"a\na\nb\n"


# -- gearadmin ------------------------------------------------------------------------------

def test_gearadmin_outputs(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    start_worker(server, procs, "gw", ["cat"])
    assert cli(server, "-b", "-u", "ujob", "-f", "gq", "data").returncode == 0
    assert cli(server, "-b", "-I", "-u", "ujob2", "-f", "gq", "data2").returncode == 0

    r = gearadmin(server, "--status")
    assert r.returncode == 0
    assert sorted(r.stdout.split(b"\n")) == sorted([b"gw\t0\t0\t1", b"gq\t2\t0\t0", b".", b""])
    assert gearadmin(server, "--priority-status").stdout.count(b"gq\t1\t1\t0\t0\n") == 1

    r = gearadmin(server, "--workers")
    rows = r.stdout.split(b"\n")
    assert rows[-2:] == [b".", b""]
    assert any(re.fullmatch(rb"\d+ 127\.0\.0\.1 - : gw", row) for row in rows), r.stdout
    assert any(re.fullmatch(rb"\d+ 127\.0\.0\.1 - :", row) for row in rows), r.stdout

    r = gearadmin(server, "--show-jobs")
    jobs = r.stdout.split(b"\n")[:-2]
    assert len(jobs) == 2 and all(re.fullmatch(rb"H:[^\t]+:\d+\t0\t0\t1", j) for j in jobs)
    handle = jobs[0].split(b"\t")[0].decode()

    r = gearadmin(server, "--show-unique-jobs")
    assert sorted(r.stdout.split(b"\n")) == [b"", b".", b"ujob", b"ujob2"]

    assert gearadmin(server, "--getpid").stdout == f"{server.pid}\n".encode()
    v = gearadmin(server, "--server-version").stdout
    assert v == (b"1.1.20+ds\n" if IMPL == "c" else b"1.1.20\n")
    assert gearadmin(server, "--server-verbose").stdout == b"INFO\n"

    assert gearadmin(server, "--create-function=newfn").stdout == b"OK\n"
    assert "newfn" in status(server.port)
    assert gearadmin(server, "--drop-function=newfn").stdout == b"OK\n"
    assert "newfn" not in status(server.port)
    r = gearadmin(server, "--drop-function=nope")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"Error: function not found\r\n")

    assert gearadmin(server, f"--cancel-job={handle}").stdout == b"OK\n"
    # C keeps the cancelled job listed (ignored) until a GRAB purges it; ours drops it.
    listed = gearadmin(server, "--show-jobs").stdout
    assert listed.count(b"\t0\t1\t0\n") == (1 if IMPL == "c" else 0)
    assert (handle.encode() + b"\t" in listed) == (IMPL == "c")
    r = gearadmin(server, "--cancel-job=H:none:424242")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"Error: UNKNOWN_JOB\r\n")


def test_gearadmin_no_operation(server: Server) -> None:
    r = gearadmin(server)
    assert r.returncode == 1
    assert b"No option execution operation given." in r.stdout + r.stderr


def test_gearadmin_several_operations_one_connection(server: Server) -> None:
    r = gearadmin(server, "--status", "--workers", "--getpid", "--server-version",
                  "--show-jobs", "--priority-status")
    assert r.returncode == 0
    ver = b"1.1.20+ds" if IMPL == "c" else b"1.1.20"
    # gearadmin's own order: getpid, status, version, workers, show jobs, priority status
    assert re.fullmatch(rb"\d+\n\.\n" + re.escape(ver) + rb"\n\d+ 127\.0\.0\.1 - :\n\.\n\.\n\.\n",
                        r.stdout), r.stdout
    assert r.stdout.startswith(f"{server.pid}\n".encode())


def test_gearadmin_under_load(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    """A long status reply must arrive in one piece (gearadmin stops after 5 ms idle)."""
    w = Conn(server.port)
    for i in range(400):
        w.send("CAN_DO", f"function_number_{i:04d}")
    w.send("GET_STATUS", b"H:x:0")
    w.expect("STATUS_RES")
    deadline = time.monotonic() + 30
    for _ in range(10):
        r = gearadmin(server, "--status")
        lines = r.stdout.split(b"\n")
        assert len(lines) == 402 and lines[-2:] == [b".", b""], len(lines)
        if time.monotonic() > deadline:
            break
    w.close()
