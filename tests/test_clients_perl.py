"""Round trips through Perl's Gearman::Client / Gearman::Worker (Debian libgearman-client-perl).

Gearman::Worker uses GRAB_JOB and, when idle, PRE_SLEEP followed by a 10-12 s select(): it
depends on NOOP wakeups, which makes it a good probe for the server's wakeup logic.
Scripts: tests/scripts/perl_client.pl (prints JSON) and perl_worker.pl (one line per job).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import pytest
from gearproto import Conn, status, status_rows, submit, wait_for
from support import IMPL, Server, only_ours, require

PERL = "/usr/bin/perl"
SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


@pytest.fixture(autouse=True)
def _perl() -> None:
    require(PERL, "Perl round trips need perl")
    r = subprocess.run([PERL, "-MGearman::Client", "-MGearman::Worker", "-e", "1"],
                       capture_output=True, timeout=20, check=False)
    if r.returncode != 0:
        require("/nonexistent/Gearman/Client.pm", "needs libgearman-client-perl")


def perl_client(srv: Server, *args: str, timeout: float = 30) -> Any:
    r = subprocess.run([PERL, os.path.join(SCRIPTS, "perl_client.pl"), str(srv.port), *args],
                       capture_output=True, timeout=timeout, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def perl_client_bg(srv: Server, procs: list[subprocess.Popen[bytes]],
                   *args: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([PERL, os.path.join(SCRIPTS, "perl_client.pl"), str(srv.port), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(p)
    return p


def perl_worker(srv: Server, procs: list[subprocess.Popen[bytes]], count: int, *fns: str,
                wait: bool = True) -> subprocess.Popen[bytes]:
    names = [f.split(":")[0] for f in fns]
    before = {n: status(srv.port).get(n, (0, 0, 0))[2] for n in names}
    p = subprocess.Popen([PERL, os.path.join(SCRIPTS, "perl_worker.pl"), str(srv.port),
                          str(count), *fns], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(p)
    if wait:
        assert wait_for(lambda: all(status(srv.port).get(n, (0, 0, 0))[2] > before[n]
                                    for n in names), 15), "Perl worker did not register"
    return p


def worker_jobs(p: subprocess.Popen[bytes], timeout: float = 30) -> list[tuple[str, str, bytes]]:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    jobs = []
    for line in out.decode().splitlines():
        fn, handle, hexdata = line.split("\t")
        jobs.append((fn, handle, bytes.fromhex(hexdata)))
    return jobs


def test_perl_foreground_priorities(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    w = perl_worker(server, procs, 3, "perl_rev")
    for prio in ("high", "normal", "low"):
        r = perl_client(server, "do", prio, "perl_rev", f"abc-{prio}")
        assert r == {"result": f"abc-{prio}"[::-1], "events": []}
    assert [j[2] for j in worker_jobs(w)] == [b"abc-high", b"abc-normal", b"abc-low"]


def test_perl_background_priority_order(server: Server,
                                        procs: list[subprocess.Popen[bytes]]) -> None:
    handles = []
    for prio, data in (("low", "L1"), ("normal", "N1"), ("high", "H1"), ("low", "L2")):
        h = perl_client(server, "bg", prio, "perl_order", data)["handle"]
        assert h.startswith(f"127.0.0.1:{server.port}//H:")
        handles.append(h.split("//")[1])
    with Conn(server.port) as c:
        assert status_rows(c.admin("prioritystatus"))["perl_order"] == (1, 1, 2, 0)
    w = perl_worker(server, procs, 4, "perl_order", wait=False)
    jobs = worker_jobs(w)
    assert [j[2] for j in jobs] == [b"H1", b"N1", b"L1", b"L2"]
    assert [j[1] for j in jobs] == [handles[2], handles[1], handles[0], handles[3]]


def test_perl_unique_coalescing(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    h1 = perl_client(server, "bg", "normal", "perl_u", "data", "k1")["handle"]
    h2 = perl_client(server, "bg", "normal", "perl_u", "other", "k1")["handle"]
    h3 = perl_client(server, "bg", "normal", "perl_u", "same", "-")["handle"]
    h4 = perl_client(server, "bg", "normal", "perl_u", "same", "-")["handle"]
    h5 = perl_client(server, "bg", "normal", "perl_u", "diff", "-")["handle"]
    assert h1 == h2 and h3 == h4
    assert len({h1, h3, h5}) == 3
    assert status(server.port)["perl_u"] == (3, 0, 0)
    # foreground clients joining one job all get the one result
    c1 = perl_client_bg(server, procs, "do", "normal", "perl_j", "x", "join-key")
    c2 = perl_client_bg(server, procs, "do", "normal", "perl_j", "y", "join-key")
    assert wait_for(lambda: status(server.port).get("perl_j") == (1, 0, 0), 10)
    with Conn(server.port) as c:
        def two_clients() -> bool:  # known, not running, both clients attached
            c.send("GET_STATUS_UNIQUE", b"join-key")
            return c.expect("STATUS_RES_UNIQUE").payload == b"join-key\x001\x000\x000\x000\x002"
        assert wait_for(two_clients, 10)
    w = perl_worker(server, procs, 1, "perl_j", wait=False)
    outs = [json.loads(c.communicate(timeout=20)[0]) for c in (c1, c2)]
    data = worker_jobs(w)[0][2]
    assert data in (b"x", b"y")
    assert outs == [{"result": "perl_j:" + data.decode(), "events": []}] * 2


def test_perl_intermediate_packets(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    perl_worker(server, procs, 1, "perl_chatty")
    r = perl_client(server, "do", "normal", "perl_chatty", "x")
    assert r == {"result": "done",
                 "events": [["data", "d1"], ["warning", "w1"], ["status", "1", "2"]]}


def test_perl_fail_and_exceptions(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    perl_worker(server, procs, 1, "perl_fail")
    assert perl_client(server, "do", "low", "perl_fail", "x") == {
        "result": None, "events": [["fail"]]}
    w = perl_worker(server, procs, 1, "perl_exc")
    r = perl_client(server, "do", "normal", "perl_exc", "x", "", "exceptions")
    assert r["result"] is None
    assert [e[0] for e in r["events"]] == ["exception"]
    assert "boom" in r["events"][0][1]
    w.communicate(timeout=10)


def test_perl_exception_to_client_without_exceptions(
        server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    """Deliberate difference: the converted WORK_FAIL carries the bare handle.

    C 1.1.20 appends a NUL, and Gearman::Client then dies with "Got work_fail for unknown
    handle"; against ours the client sees an ordinary failure.
    """
    perl_worker(server, procs, 1, "perl_exc")
    r = subprocess.run([PERL, os.path.join(SCRIPTS, "perl_client.pl"), str(server.port), "do",
                        "normal", "perl_exc", "x"], capture_output=True, timeout=30, check=False)
    if IMPL == "c":
        assert r.returncode != 0 and b"Got work_fail for unknown handle" in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"result": None, "events": [["fail"]]}


def test_perl_get_status(server: Server) -> None:
    h = perl_client(server, "bg", "normal", "perl_nobody", "x")["handle"].split("//")[1]
    assert perl_client(server, "status", h) == {"known": 1, "running": 0, "progress": ["0", "0"]}
    assert perl_client(server, "status", "H:nohost:77") == {
        "known": 0, "running": 0, "progress": ["0", "0"]}


def test_perl_worker_death_requeues(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    w1 = perl_worker(server, procs, 1, "perl_slow")
    client = perl_client_bg(server, procs, "do", "normal", "perl_slow", "payload")
    assert wait_for(lambda: status(server.port).get("perl_slow") == (1, 1, 1), 15), \
        status(server.port)
    w1.send_signal(signal.SIGKILL)
    w1.wait(5)
    assert wait_for(lambda: status(server.port).get("perl_slow") == (1, 0, 0), 10)
    w = Conn(server.port)
    w.send("CAN_DO", "perl_slow")
    w.send("GRAB_JOB")
    p = w.expect("JOB_ASSIGN")
    assert p.args[1:] == [b"perl_slow", b"payload"]
    w.send("WORK_COMPLETE", p.args[0], b"rescued")
    out, err = client.communicate(timeout=15)
    assert json.loads(out) == {"result": "rescued", "events": []}, err
    w.close()


def test_perl_idle_worker_woken_by_noop(server: Server,
                                        procs: list[subprocess.Popen[bytes]]) -> None:
    """An idle Perl worker sleeps 10-12 s unless NOOPed; a submit must wake it at once."""
    w = perl_worker(server, procs, 1, "perl_rev")
    time.sleep(0.5)  # let it reach PRE_SLEEP + select()
    t0 = time.monotonic()
    assert perl_client(server, "do", "normal", "perl_rev", "wake") == {
        "result": "ekaw", "events": []}
    assert time.monotonic() - t0 < 5
    assert worker_jobs(w)[0][2] == b"wake"


@only_ours
def test_perl_worker_woken_when_epoch_job_falls_due(
        server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    """C never wakes sleepers for a due epoch job (the Perl worker would wait 10-12 s)."""
    w = perl_worker(server, procs, 1, "perl_epoch")
    time.sleep(0.5)
    due = int(time.time()) + 2
    with Conn(server.port) as c:
        c.send("SUBMIT_JOB_EPOCH", "perl_epoch", "", str(due), b"timed")
        c.expect("JOB_CREATED")
    out, err = w.communicate(timeout=8)
    done = time.time()
    assert w.returncode == 0, err
    assert out.decode().split("\t")[2].strip() == b"timed".hex()
    assert due - 0.1 <= done <= due + 4


def test_perl_many_tasks(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    for _ in range(3):
        perl_worker(server, procs, 1000, "perl_many")
    r = perl_client(server, "many", "perl_many", "60", timeout=60)
    assert r == {"results": {str(i): f"perl_many:m{i}" for i in range(1, 61)}}


def test_perl_can_do_timeout(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    perl_worker(server, procs, 1, "perl_slow:1000")
    c = Conn(server.port)
    h = submit(c, "perl_slow", b"t")
    assert wait_for(lambda: status(server.port).get("perl_slow", (0, 0, 0))[1] == 1, 15)
    w = Conn(server.port)
    w.send("CAN_DO", "perl_slow")
    w.send("PRE_SLEEP")
    w.expect("NOOP", timeout=5)
    p = None
    for _ in range(20):  # C can NOOP a moment before the job is back in the queue
        w.send("GRAB_JOB")
        p = w.recv()
        if p.name == "JOB_ASSIGN":
            break
        time.sleep(0.05)
    assert p is not None and p.args[0] == h
    w.send("WORK_COMPLETE", h, b"second")
    assert c.expect("WORK_COMPLETE").args[1] == b"second"
