"""The -t thread model: /proc/PID/task counts (ours only) and round trips for every -t value.

The thread model (README, docs/architecture.md): -t 0 -> 1 thread, -t 1 -> 2 threads,
-t N>=2 -> N + 2 threads.
C gearmand 1.1.20 differs (it also runs an epoch clock thread), so the counts are checked
against our server only; the round trips run against whichever server is selected.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from gearproto import Conn, grab, status_rows, submit
from support import Factory, IMPL, Server

only_ours = pytest.mark.skipif(IMPL == "c", reason="thread layout differs from C 1.1.20")

EXPECTED_THREADS = {"0": 1, "1": 2, "2": 4, "4": 6}


def task_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def task_names(pid: int) -> list[str]:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            pass
    return names


@only_ours
@pytest.mark.parametrize("threads", sorted(EXPECTED_THREADS))
def test_thread_count(server_factory: Factory, threads: str) -> None:
    srv = server_factory("-t", threads)
    # connections exercise every I/O thread; the count must not change with load
    conns = [Conn(srv.port) for _ in range(6)]
    for c in conns:
        c.send("ECHO_REQ", b"x")
        c.expect("ECHO_RES")
    assert task_count(srv.pid) == EXPECTED_THREADS[threads], task_names(srv.pid)
    for c in conns:
        c.close()
    time.sleep(0.1)
    assert task_count(srv.pid) == EXPECTED_THREADS[threads], task_names(srv.pid)


@only_ours
def test_default_threads_is_four_io(server: Server) -> None:
    assert task_count(server.pid) == 6, task_names(server.pid)


def _round_trips(port: int, n_clients: int = 12) -> None:
    """Foreground, background, status and echo through several connections at once."""
    w = Conn(port)
    w.send("CAN_DO", "tt")
    w.send("CAN_DO", "tt_bg")
    w.send("GET_STATUS", b"H:x:0")
    w.expect("STATUS_RES")
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with Conn(port, timeout=15) as c:
                c.send("ECHO_REQ", f"echo{i}".encode())
                assert c.expect("ECHO_RES").payload == f"echo{i}".encode()
                h = submit(c, "tt", f"in{i}".encode())
                p = c.expect("WORK_COMPLETE", timeout=15)
                assert p.args[0] == h
                results[i] = p.args[1]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    done = 0
    deadline = time.monotonic() + 20
    while done < n_clients and time.monotonic() < deadline:
        p = grab(w)
        if p.name == "NO_JOB":
            time.sleep(0.01)
            continue
        assert p.name == "JOB_ASSIGN", p
        w.send("WORK_COMPLETE", p.args[0], p.args[2].replace(b"in", b"out"))
        done += 1
    for t in threads:
        t.join(20)
    assert not errors, errors
    assert results == {i: f"out{i}".encode() for i in range(n_clients)}
    with Conn(port) as c:
        submit(c, "tt_bg", b"bgdata", cmd="SUBMIT_JOB_BG")
        p = grab(w)
        assert p.args[1:] == [b"tt_bg", b"bgdata"]
        w.send("WORK_COMPLETE", p.args[0], b"")
        w.send("GET_STATUS", b"H:x:0")
        w.expect("STATUS_RES")
        rows = status_rows(c.admin("status"))
        assert rows["tt"] == (0, 0, 1) and rows["tt_bg"] == (0, 0, 1)
    w.close()


@pytest.mark.parametrize("threads", ["0", "1", "2", "4"])
def test_round_trips_per_thread_setting(server_factory: Factory, threads: str) -> None:
    srv = server_factory("-t", threads)
    _round_trips(srv.port)
    assert srv.alive()


@pytest.mark.parametrize("threads", ["0", "1", "2", "4"])
def test_libgearman_round_trip_per_thread_setting(server_factory: Factory, threads: str) -> None:
    """A real client stack (gearman CLI worker + client, gearadmin) for every -t value."""
    import subprocess

    from support import require

    require("/usr/bin/gearman", "libgearman round trips need gearman-tools")
    srv = server_factory("-t", threads)
    base = ["/usr/bin/gearman", "-h", "127.0.0.1", "-p", str(srv.port)]
    worker = subprocess.Popen([*base, "-w", "-c", "3", "-f", "tup", "--", "tr", "a-z", "A-Z"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        outs = []
        for i in range(3):
            r = subprocess.run([*base, "-f", "tup", f"round{i}"], capture_output=True,
                               timeout=20, check=False)
            outs.append((r.returncode, r.stdout))
        assert outs == [(0, f"ROUND{i}".encode()) for i in range(3)]
        assert worker.wait(10) == 0
        r = subprocess.run(["/usr/bin/gearadmin", "-h", "127.0.0.1", "-p", str(srv.port),
                            "--status"], capture_output=True, timeout=20, check=False)
        assert r.stdout == b"tup\t0\t0\t0\n.\n"
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate(timeout=5)


@only_ours
@pytest.mark.parametrize("threads", ["0", "1", "2"])
def test_a_real_queue_adds_the_store_thread(server_factory: Factory, threads: str,
                                            tmp_path: "os.PathLike[str]") -> None:
    """-q naming a real store: one more thread, "store", whatever -t; builtin: none."""
    db = os.path.join(str(tmp_path), "q.sqlite")
    srv = server_factory("-t", threads, "-q", "libsqlite3", f"--libsqlite3-db={db}")
    with Conn(srv.port) as c:
        h = submit(c, "store_fn", b"x", cmd="SUBMIT_JOB_BG")
        assert h
    names = task_names(srv.pid)
    assert task_count(srv.pid) == EXPECTED_THREADS[threads] + 1, names
    assert names.count("store") == 1, names
    plain = server_factory("-t", threads)
    assert "store" not in task_names(plain.pid)
    assert task_count(plain.pid) == EXPECTED_THREADS[threads]
