"""Raw-socket integration tests of job semantics, against a real server.

Every test runs against ``server``/``server_factory`` (ours by default, C gearmand with
``GEARMAND_TEST_IMPL=c``).  Tests of deliberate differences from C 1.1.20 are marked
``only_ours`` and skipped against C; where cheap, they assert C's behaviour instead so the
test itself is checked against the oracle.
"""

from __future__ import annotations

import re
import time

import pytest

from gearproto import Conn, grab, status, status_rows, submit, wait_for
from support import Factory, IMPL, Server, only_ours, sync

HANDLE_RE = re.compile(rb"^H:[^:]+:\d+$")


def worker(port: int, *fns: str, timeout_ms: int | None = None) -> Conn:
    w = Conn(port)
    for fn in fns:
        if timeout_ms is None:
            w.send("CAN_DO", fn)
        else:
            w.send("CAN_DO_TIMEOUT", fn, timeout_ms)
    sync(w)
    return w


def show_jobs(port: int) -> list[list[bytes]]:
    with Conn(port) as c:
        text = c.admin("show jobs")
    return [line.split(b"\t") for line in text.split(b"\n")[:-2]]


# -- basics ---------------------------------------------------------------------------

def test_echo_with_nul_bytes(server: Server) -> None:
    with Conn(server.port) as c:
        data = b"\0a\0\0b\xff\0"
        c.send("ECHO_REQ", data)
        assert c.expect("ECHO_RES").payload == data
        c.send("ECHO_REQ", b"")
        assert c.expect("ECHO_RES").payload == b""


def test_foreground_round_trip(server: Server) -> None:
    w = worker(server.port, "rev")
    c = Conn(server.port)
    h = submit(c, "rev", b"hello", b"u1")
    assert HANDLE_RE.match(h), h
    p = grab(w)
    assert p.as_tuple() == ("JOB_ASSIGN", h, b"rev", b"hello")
    w.send("WORK_COMPLETE", h, b"olleh")
    assert c.expect("WORK_COMPLETE").as_tuple() == ("WORK_COMPLETE", h, b"olleh")
    assert grab(w).name == "NO_JOB"
    assert status(server.port)["rev"] == (0, 0, 1)


def test_handles_increase(server: Server) -> None:
    with Conn(server.port) as c:
        h1 = submit(c, "f", b"a", cmd="SUBMIT_JOB_BG")
        h2 = submit(c, "f", b"b", cmd="SUBMIT_JOB_BG")
    assert h1.rsplit(b":", 1)[0] == h2.rsplit(b":", 1)[0]
    assert int(h2.rsplit(b":", 1)[1]) == int(h1.rsplit(b":", 1)[1]) + 1


def test_job_handle_prefix(server_factory: Factory) -> None:
    srv = server_factory("--job-handle-prefix", "XY")
    with Conn(srv.port) as c:
        assert submit(c, "f", b"d", cmd="SUBMIT_JOB_BG") == b"XY:1"


def test_background_round_trip(server: Server) -> None:
    c = Conn(server.port)
    h = submit(c, "bgf", b"payload", cmd="SUBMIT_JOB_BG")
    assert status(server.port)["bgf"] == (1, 0, 0)
    w = worker(server.port, "bgf")
    assert status(server.port)["bgf"] == (1, 0, 1)
    assert grab(w).as_tuple() == ("JOB_ASSIGN", h, b"bgf", b"payload")
    assert status(server.port)["bgf"] == (1, 1, 1)
    w.send("WORK_COMPLETE", h, b"done")
    sync(w)
    c.nothing(0.3)  # background submitter gets nothing
    assert status(server.port)["bgf"] == (0, 0, 1)


def test_grab_uniq_and_all(server: Server) -> None:
    c = Conn(server.port)
    h1 = submit(c, "g", b"d1", b"uq1", cmd="SUBMIT_JOB_BG")
    h2 = submit(c, "g", b"d2", b"", cmd="SUBMIT_JOB_BG")
    c.send("SUBMIT_REDUCE_JOB_BACKGROUND", "g", "uq3", "red", "agg", b"d3")
    h3 = c.expect("JOB_CREATED").args[0]
    w = worker(server.port, "g")
    assert grab(w, "GRAB_JOB_UNIQ").as_tuple() == ("JOB_ASSIGN_UNIQ", h1, b"g", b"uq1", b"d1")
    # GRAB_JOB_ALL on a job without reducer answers JOB_ASSIGN_UNIQ; unique empty
    assert grab(w, "GRAB_JOB_ALL").as_tuple() == ("JOB_ASSIGN_UNIQ", h2, b"g", b"", b"d2")
    assert grab(w, "GRAB_JOB_ALL").as_tuple() == (
        "JOB_ASSIGN_ALL", h3, b"g", b"uq3", b"red", b"d3")
    assert grab(w, "GRAB_JOB_UNIQ").name == "NO_JOB"


def test_priorities_and_fifo(server: Server) -> None:
    c = Conn(server.port)
    order = [("SUBMIT_JOB_LOW_BG", b"low1"), ("SUBMIT_JOB_BG", b"norm1"),
             ("SUBMIT_JOB_HIGH_BG", b"high1"), ("SUBMIT_JOB_LOW_BG", b"low2"),
             ("SUBMIT_JOB_BG", b"norm2"), ("SUBMIT_JOB_HIGH_BG", b"high2")]
    for cmd, data in order:
        submit(c, "prio", data, cmd=cmd)
    with Conn(server.port) as a:
        assert status_rows(a.admin("prioritystatus"))["prio"] == (2, 2, 2, 0)
    w = worker(server.port, "prio")
    got = [grab(w).args[2] for _ in range(6)]
    assert got == [b"high1", b"high2", b"norm1", b"norm2", b"low1", b"low2"]
    assert grab(w).name == "NO_JOB"


def test_foreground_priorities(server: Server) -> None:
    clients = []
    for cmd, data in [("SUBMIT_JOB_LOW", b"l"), ("SUBMIT_JOB", b"n"), ("SUBMIT_JOB_HIGH", b"h")]:
        c = Conn(server.port)
        submit(c, "fgp", data, cmd=cmd)
        clients.append(c)
    w = worker(server.port, "fgp")
    got = []
    for _ in range(3):
        p = grab(w)
        got.append(p.args[2])
        w.send("WORK_COMPLETE", p.args[0], p.args[2] * 2)
    assert got == [b"h", b"n", b"l"]
    for c, data in zip(clients, [b"l", b"n", b"h"]):
        assert c.expect("WORK_COMPLETE").args[1] == data * 2


# -- unique coalescing ------------------------------------------------------------------

def test_unique_fg_coalesce_queued(server: Server) -> None:
    c1, c2 = Conn(server.port), Conn(server.port)
    h1 = submit(c1, "co", b"data1", b"same")
    h2 = submit(c2, "co", b"data2", b"same")
    assert h1 == h2
    assert status(server.port)["co"] == (1, 0, 0)
    w = worker(server.port, "co")
    p = grab(w)
    assert p.args[2] == b"data1"  # the joiner's data is ignored
    assert grab(w).name == "NO_JOB"
    w.send("WORK_COMPLETE", h1, b"R")
    for c in (c1, c2):
        assert c.expect("WORK_COMPLETE").as_tuple() == ("WORK_COMPLETE", h1, b"R")


def test_unique_fg_joins_running_job(server: Server) -> None:
    c1 = Conn(server.port)
    h = submit(c1, "co", b"x", b"run")
    w = worker(server.port, "co")
    assert grab(w).args[0] == h
    c2 = Conn(server.port)
    assert submit(c2, "co", b"x", b"run") == h
    w.send("WORK_DATA", h, b"part")
    w.send("WORK_COMPLETE", h, b"all")
    for c in (c1, c2):
        assert c.expect("WORK_DATA").args[1] == b"part"
        assert c.expect("WORK_COMPLETE").args[1] == b"all"
    assert grab(w).name == "NO_JOB"


def test_unique_bg_duplicate_returns_existing_handle(server: Server) -> None:
    with Conn(server.port) as c:
        h1 = submit(c, "bgu", b"a", b"key", cmd="SUBMIT_JOB_BG")
        h2 = submit(c, "bgu", b"b", b"key", cmd="SUBMIT_JOB_HIGH_BG")
        h3 = submit(c, "bgu", b"c", b"key", cmd="SUBMIT_JOB_LOW_BG")
        h4 = submit(c, "bgu2", b"a", b"key", cmd="SUBMIT_JOB_BG")  # other function
    assert h1 == h2 == h3
    assert h4 != h1
    st = status(server.port)
    assert st["bgu"] == (1, 0, 0) and st["bgu2"] == (1, 0, 0)


def test_unique_dash_hashes_data(server: Server) -> None:
    with Conn(server.port) as c:
        a1 = submit(c, "dash", b"same-data", b"-", cmd="SUBMIT_JOB_BG")
        a2 = submit(c, "dash", b"same-data", b"-", cmd="SUBMIT_JOB_BG")
        b1 = submit(c, "dash", b"other-data", b"-", cmd="SUBMIT_JOB_BG")
        e1 = submit(c, "dash", b"", b"-", cmd="SUBMIT_JOB_BG")
        e2 = submit(c, "dash", b"", b"-", cmd="SUBMIT_JOB_BG")
    assert a1 == a2
    assert b1 != a1
    assert e1 != e2  # empty data never coalesces
    assert status(server.port)["dash"] == (4, 0, 0)


def test_empty_unique_never_coalesces(server: Server) -> None:
    with Conn(server.port) as c:
        h1 = submit(c, "nu", b"d", b"", cmd="SUBMIT_JOB_BG")
        h2 = submit(c, "nu", b"d", b"", cmd="SUBMIT_JOB_BG")
    assert h1 != h2


def test_unique_too_large(server: Server) -> None:
    with Conn(server.port) as c:
        c.send("SUBMIT_JOB_BG", "big", b"u" * 65, b"d")
        p = c.expect("ERROR")
        assert p.as_tuple() == ("ERROR", b"ARGUMENT_TOO_LARGE", b"Unique value too large")
        submit(c, "big", b"d", b"u" * 64, cmd="SUBMIT_JOB_BG")  # 64 is accepted


@only_ours
def test_unique_64_bytes_kept_whole(server: Server) -> None:
    """C 1.1.20 cuts a 64-byte unique to 63 bytes; ours keeps it whole."""
    u = b"abcdefgh" * 8
    with Conn(server.port) as c:
        h = submit(c, "u64", b"d", u, cmd="SUBMIT_JOB_BG")
        assert c.admin("show unique jobs") == u + b"\n.\n"
        c.send("GET_STATUS_UNIQUE", u)
        assert c.expect("STATUS_RES_UNIQUE").as_tuple() == (
            "STATUS_RES_UNIQUE", u, b"1", b"0", b"0", b"0", b"0")
        assert submit(c, "u64", b"x", u, cmd="SUBMIT_JOB_BG") == h
    w = worker(server.port, "u64")
    assert grab(w, "GRAB_JOB_UNIQ").args[2] == u


# -- intermediate packets, status ------------------------------------------------------

def test_intermediate_packets_forwarded(server: Server) -> None:
    c = Conn(server.port)
    h = submit(c, "mid", b"in")
    w = worker(server.port, "mid")
    grab(w)
    w.send("WORK_DATA", h, b"d\0ata")
    w.send("WORK_WARNING", h, b"warn")
    w.send("WORK_STATUS", h, b"3", b"10")
    got = [c.recv().as_tuple() for _ in range(3)]
    assert got == [("WORK_DATA", h, b"d\0ata"), ("WORK_WARNING", h, b"warn"),
                   ("WORK_STATUS", h, b"3", b"10")]
    c.send("GET_STATUS", h)
    assert c.expect("STATUS_RES").as_tuple() == ("STATUS_RES", h, b"1", b"1", b"3", b"10")
    c.send("GET_STATUS_UNIQUE", b"nope")
    assert c.expect("STATUS_RES_UNIQUE").payload == b"nope\x000\x000\x000\x000\x000"
    w.send("WORK_COMPLETE", h, b"")
    assert c.expect("WORK_COMPLETE").as_tuple() == ("WORK_COMPLETE", h, b"")
    c.send("GET_STATUS", h)
    assert c.expect("STATUS_RES").payload == h + b"\x000\x000\x000\x000"


def test_get_status_queued_and_unique(server: Server) -> None:
    c = Conn(server.port)
    h = submit(c, "gs", b"x", b"gsu")
    c2 = Conn(server.port)
    submit(c2, "gs", b"x", b"gsu")
    with Conn(server.port) as q:
        q.send("GET_STATUS", h)
        assert q.expect("STATUS_RES").payload == h + b"\x001\x000\x000\x000"
        q.send("GET_STATUS_UNIQUE", b"gsu")
        assert q.expect("STATUS_RES_UNIQUE").payload == b"gsu\x001\x000\x000\x000\x002"
        w = worker(server.port, "gs")
        grab(w)
        w.send("WORK_STATUS", h, b"1", b"2")
        sync(w)
        q.send("GET_STATUS_UNIQUE", b"gsu")
        assert q.expect("STATUS_RES_UNIQUE").payload == b"gsu\x001\x001\x001\x002\x002"


# -- exceptions ---------------------------------------------------------------------------

def test_option_req(server: Server) -> None:
    with Conn(server.port) as c:
        c.send("OPTION_REQ", b"EXCEPTIONS")
        assert c.expect("OPTION_RES").as_tuple() == ("OPTION_RES", b"EXCEPTIONS")
        c.send("OPTION_REQ", b"bogus")
        assert c.expect("ERROR").as_tuple() == (
            "ERROR", b"UNKNOWN_OPTION", b"Server does not recognize given option")


def test_exceptions_only_to_opted_in_clients(server: Server) -> None:
    ce, cn = Conn(server.port), Conn(server.port)
    ce.send("OPTION_REQ", "exceptions")
    ce.expect("OPTION_RES")
    h = submit(ce, "exc", b"x", b"exu")
    assert submit(cn, "exc", b"x", b"exu") == h
    w = worker(server.port, "exc")
    grab(w)
    w.send("WORK_EXCEPTION", h, b"boom")
    assert ce.expect("WORK_EXCEPTION").as_tuple() == ("WORK_EXCEPTION", h, b"boom")
    p = cn.expect("WORK_FAIL")
    if IMPL == "c":
        assert p.payload == h + b"\0"  # C 1.1.20 adds a trailing NUL
    else:
        assert p.payload == h  # deliberate difference: bare handle
    sync(w)
    assert status(server.port)["exc"] == (0, 0, 1)


def test_exceptions_server_flag(server_factory: Factory) -> None:
    srv = server_factory("--exceptions")
    c = Conn(srv.port)
    h = submit(c, "exc", b"x")
    w = worker(srv.port, "exc")
    grab(w)
    w.send("WORK_EXCEPTION", h, b"err")
    assert c.expect("WORK_EXCEPTION").as_tuple() == ("WORK_EXCEPTION", h, b"err")


def test_work_fail(server: Server) -> None:
    c = Conn(server.port)
    h = submit(c, "wf", b"x")
    w = worker(server.port, "wf")
    grab(w)
    w.send("WORK_FAIL", h)
    assert c.expect("WORK_FAIL").payload == h


# -- worker loss, retries, timeouts ------------------------------------------------------------

def test_worker_death_requeues(server: Server) -> None:
    c = Conn(server.port)
    h = submit(c, "wd", b"job")
    w1 = worker(server.port, "wd")
    assert grab(w1).args[0] == h
    w1.close()
    w2 = worker(server.port, "wd")
    p = None
    for _ in range(50):  # the disconnect is noticed asynchronously
        p = grab(w2)
        if p.name == "JOB_ASSIGN":
            break
        time.sleep(0.05)
    assert p is not None and p.as_tuple() == ("JOB_ASSIGN", h, b"wd", b"job")
    assert show_jobs(server.port) == [[h, b"1", b"0", b"0"]]
    w2.send("WORK_COMPLETE", h, b"ok")
    assert c.expect("WORK_COMPLETE").args[1] == b"ok"


def test_sleeping_worker_woken_on_requeue(server: Server) -> None:
    c = Conn(server.port)
    submit(c, "wr", b"job")
    w1 = worker(server.port, "wr")
    grab(w1)
    w2 = worker(server.port, "wr")
    w2.send("PRE_SLEEP")
    sync(w2)
    w1.close()
    assert w2.expect("NOOP", timeout=3).name == "NOOP"


def test_job_retries_drop(server_factory: Factory) -> None:
    srv = server_factory("-j", "2")
    c = Conn(srv.port)
    h = submit(c, "jr", b"job", b"jru")
    for attempt in range(2):
        w = worker(srv.port, "jr")
        p = None
        for _ in range(50):
            p = grab(w)
            if p.name == "JOB_ASSIGN":
                break
            time.sleep(0.05)
        assert p is not None and p.args[0] == h, f"attempt {attempt}: {p}"
        w.close()
    assert c.expect("WORK_FAIL", timeout=5).payload == h
    assert wait_for(lambda: "Dropped job due to max retry count: " + h.decode() + " jru"
                    in srv.log(), 5), srv.log()
    w = worker(srv.port, "jr")
    assert grab(w).name == "NO_JOB"
    assert status(srv.port)["jr"] == (0, 0, 1)


def test_can_do_timeout_requeues_and_counts_retry(server: Server) -> None:
    c = Conn(server.port)
    h = submit(c, "cdt", b"slow", b"cdtu")
    w1 = worker(server.port, "cdt", timeout_ms=1000)
    t0 = time.monotonic()
    assert grab(w1).args[0] == h
    w2 = worker(server.port, "cdt")
    w2.send("PRE_SLEEP")
    w2.expect("NOOP", timeout=4)  # woken by the requeue at ~1 s
    elapsed = time.monotonic() - t0
    assert 0.8 <= elapsed <= 3.0, elapsed
    p = grab(w2)
    for _ in range(20):  # C can NOOP a moment before the job is back in the queue
        if p.name == "JOB_ASSIGN":
            break
        time.sleep(0.05)
        p = grab(w2)
    assert p.args[0] == h, p
    assert show_jobs(server.port) == [[h, b"1", b"0", b"0"]]
    assert wait_for(lambda: "Worker timeout reached on job, requeueing: " + h.decode()
                    + " cdtu" in server.log(), 3)
    w1.send("WORK_COMPLETE", h, b"late")
    assert w1.expect("ERROR").as_tuple() == (
        "ERROR", b"JOB_NOT_FOUND", b"Job given in work result not found")
    c.nothing(0.2)  # clients are not told about the timeout
    w2.send("WORK_COMPLETE", h, b"ok")
    assert c.expect("WORK_COMPLETE").args[1] == b"ok"


def test_can_do_timeout_with_retry_limit_drops(server_factory: Factory) -> None:
    srv = server_factory("-j", "1")
    c = Conn(srv.port)
    h = submit(c, "cdt", b"slow")
    w1 = worker(srv.port, "cdt", timeout_ms=500)  # raised to the 1 s floor
    t0 = time.monotonic()
    grab(w1)
    assert c.expect("WORK_FAIL", timeout=4).payload == h
    assert time.monotonic() - t0 >= 0.8


@only_ours
def test_can_do_timeout_is_per_job(server: Server) -> None:
    """The timer belongs to the job and is cleared on completion (C keeps the first one)."""
    c = Conn(server.port)
    h1 = submit(c, "pj", b"one")
    w = worker(server.port, "pj", timeout_ms=1000)
    assert grab(w).args[0] == h1
    w.send("WORK_COMPLETE", h1, b"r1")
    c.expect("WORK_COMPLETE")
    time.sleep(0.6)
    h2 = submit(c, "pj", b"two")
    assert grab(w).args[0] == h2
    time.sleep(0.8)  # 1.4 s after the first job's assignment, 0.8 s into the second's
    w.send("WORK_COMPLETE", h2, b"r2")
    assert c.expect("WORK_COMPLETE").as_tuple() == ("WORK_COMPLETE", h2, b"r2")
    assert show_jobs(server.port) == []


# -- client disconnect, cancel ------------------------------------------------------------

def test_foreground_client_disconnect_abandons_job(server: Server) -> None:
    c = Conn(server.port)
    submit(c, "ab", b"fg")
    bg = Conn(server.port)
    hb = submit(bg, "ab", b"bg", cmd="SUBMIT_JOB_BG")
    bg.close()
    c.close()
    assert wait_for(lambda: show_jobs(server.port)[-1:] != [] and any(
        r[2] == b"1" for r in show_jobs(server.port)), 3)
    w = worker(server.port, "ab")
    # the abandoned fg job is purged by GRAB, the background job survives its client
    assert grab(w).as_tuple() == ("JOB_ASSIGN", hb, b"ab", b"bg")
    assert grab(w).name == "NO_JOB"


def test_cancel_job(server: Server) -> None:
    c = Conn(server.port)
    h = submit(c, "cj", b"x")
    with Conn(server.port) as a:
        assert a.admin("cancel job " + h.decode()) == b"OK\r\n"
        assert c.expect("WORK_FAIL").payload == h
        assert a.admin("cancel job H:nohost:999") == b"ERR UNKNOWN_JOB\r\n"
    w = worker(server.port, "cj")
    assert grab(w).name == "NO_JOB"
    assert status(server.port)["cj"] == (0, 0, 1)


# -- epoch jobs ---------------------------------------------------------------------------

def test_epoch_job_in_past_runs_now(server: Server) -> None:
    with Conn(server.port) as c:
        c.send("SUBMIT_JOB_EPOCH", "ep", "", "0", b"now")
        h = c.expect("JOB_CREATED").args[0]
        c.send("SUBMIT_JOB_EPOCH", "ep", "", str(int(time.time()) - 100), b"past")
        h2 = c.expect("JOB_CREATED").args[0]
    w = worker(server.port, "ep")
    assert grab(w).args[:3] == [h, b"ep", b"now"]
    assert grab(w).args[:3] == [h2, b"ep", b"past"]


def test_epoch_job_held_until_due(server: Server) -> None:
    w = worker(server.port, "ep")
    with Conn(server.port) as c:
        due = int(time.time()) + 2
        c.send("SUBMIT_JOB_EPOCH", "ep", "", str(due), b"later")
        h = c.expect("JOB_CREATED").args[0]
    assert grab(w).name == "NO_JOB"
    p = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        p = grab(w)
        if p.name == "JOB_ASSIGN":
            break
        time.sleep(0.1)
    assert p is not None and p.args[:3] == [h, b"ep", b"later"]
    assert time.time() >= due


@only_ours
def test_epoch_job_wakes_sleeping_worker(server: Server) -> None:
    """C never wakes sleepers when an epoch job falls due; ours sends NOOP."""
    w = worker(server.port, "ep")
    with Conn(server.port) as c:
        due = int(time.time()) + 2
        c.send("SUBMIT_JOB_EPOCH", "ep", "", str(due), b"later")
        h = c.expect("JOB_CREATED").args[0]
    w.send("PRE_SLEEP")
    # a NOOP may arrive at submit time (C does that); then sleep again
    p = w.recv(timeout=4)
    if p.name == "NOOP" and time.time() < due:
        assert grab(w).name == "NO_JOB"
        w.send("PRE_SLEEP")
        p = w.recv(timeout=4)
    assert p.name == "NOOP"
    assert time.time() >= due - 0.05
    assert grab(w).args[:3] == [h, b"ep", b"later"]


@only_ours
def test_future_epoch_does_not_hide_lower_priority(server: Server) -> None:
    with Conn(server.port) as c:
        c.send("SUBMIT_JOB_EPOCH", "eh", "", str(int(time.time()) + 60), b"future")
        c.expect("JOB_CREATED")
        hl = submit(c, "eh", b"low", cmd="SUBMIT_JOB_LOW_BG")
    w = worker(server.port, "eh")
    assert grab(w).args[:3] == [hl, b"eh", b"low"]
    assert grab(w).name == "NO_JOB"


# -- wakeups ------------------------------------------------------------------------------

def _sleepers(port: int, n: int, fn: str) -> list[Conn]:
    ws = []
    for _ in range(n):
        w = worker(port, fn)
        w.send("PRE_SLEEP")
        sync(w)
        ws.append(w)
    return ws


def _nooped(ws: list[Conn], wait: float = 0.4) -> list[int]:
    got = []
    for i, w in enumerate(ws):
        try:
            p = w.recv(wait)
        except TimeoutError:
            continue
        assert p.name == "NOOP", p
        got.append(i)
    return got


def test_all_sleepers_woken_by_default(server: Server) -> None:
    ws = _sleepers(server.port, 3, "wk")
    with Conn(server.port) as c:
        submit(c, "wk", b"x", cmd="SUBMIT_JOB_BG")
    assert _nooped(ws) == [0, 1, 2]
    with Conn(server.port) as c:  # at most one NOOP until the next GRAB
        submit(c, "wk", b"y", cmd="SUBMIT_JOB_BG")
    assert _nooped(ws, 0.3) == []


def test_worker_wakeup_limit(server_factory: Factory) -> None:
    srv = server_factory("-w", "1")
    ws = _sleepers(srv.port, 3, "wk")
    woken: list[int] = []
    for i in range(3):
        with Conn(srv.port) as c:
            submit(c, "wk", f"j{i}".encode(), cmd="SUBMIT_JOB_BG")
        got = _nooped(ws, 0.3)
        assert len(got) == 1, (i, got)
        woken += got
    assert sorted(woken) == [0, 1, 2]  # rotates across sleepers
    with Conn(srv.port) as c:
        submit(c, "wk", b"j4", cmd="SUBMIT_JOB_BG")
    assert _nooped(ws, 0.3) == []  # all have been NOOPed already


def test_pre_sleep_with_queued_job_gets_noop(server: Server) -> None:
    with Conn(server.port) as c:
        submit(c, "ps", b"x", cmd="SUBMIT_JOB_BG")
    w = worker(server.port, "ps")
    w.send("PRE_SLEEP")
    w.expect("NOOP", timeout=2)


def test_can_do_alone_never_noops(server: Server) -> None:
    with Conn(server.port) as c:
        submit(c, "cn", b"x", cmd="SUBMIT_JOB_BG")
    w = worker(server.port, "cn")
    w.nothing(0.3)


# -- assignment order ---------------------------------------------------------------------

def _three_fn_jobs(port: int) -> Conn:
    w = Conn(port)
    for fn in ("fa", "fb", "fc"):
        w.send("CAN_DO", fn)
    sync(w)
    with Conn(port) as c:
        for fn in ("fa", "fb", "fc"):
            for i in range(2):
                submit(c, fn, f"{fn}{i}".encode(), cmd="SUBMIT_JOB_BG")
    return w


def test_default_assignment_order(server: Server) -> None:
    w = _three_fn_jobs(server.port)
    got = [grab(w).args[2].decode() for _ in range(6)]
    if IMPL == "c":
        assert got == ["fc0", "fc1", "fb0", "fb1", "fa0", "fa1"]  # C: newest first
    else:  # deliberate difference: order the worker added its functions
        assert got == ["fa0", "fa1", "fb0", "fb1", "fc0", "fc1"]


def test_round_robin_assignment(server_factory: Factory) -> None:
    srv = server_factory("-R")
    w = _three_fn_jobs(srv.port)
    got = [grab(w).args[2].decode() for _ in range(6)]
    if IMPL == "c":
        assert got == ["fc0", "fb0", "fa0", "fc1", "fb1", "fa1"]
    else:  # rotation starting with the oldest registration
        assert got == ["fa0", "fb0", "fc0", "fa1", "fb1", "fc1"]


def test_cant_do_and_reset_abilities(server: Server) -> None:
    with Conn(server.port) as c:
        submit(c, "cd1", b"x", cmd="SUBMIT_JOB_BG")
        submit(c, "cd2", b"y", cmd="SUBMIT_JOB_BG")
    w = worker(server.port, "cd1", "cd2")
    w.send("CANT_DO", "cd1")
    assert grab(w).args[1] == b"cd2"
    w.send("RESET_ABILITIES")  # also requeues the held cd2 job
    assert grab(w).name == "NO_JOB"
    assert status(server.port)["cd2"] == (1, 0, 0)


# -- maxqueue -----------------------------------------------------------------------------

def test_maxqueue_rejects(server: Server) -> None:
    with Conn(server.port) as c:
        assert c.admin("maxqueue mq 2") == b"OK\r\n"  # unknown function: still OK
        submit(c, "mq", b"1", cmd="SUBMIT_JOB_BG")
        assert c.admin("maxqueue mq 2") == b"OK\r\n"
        submit(c, "mq", b"2", b"k", cmd="SUBMIT_JOB_BG")
        c.send("SUBMIT_JOB_BG", "mq", "", b"3")
        assert c.expect("ERROR").as_tuple() == ("ERROR", b"QUEUE_ERROR", b"Job queue is full")
        c.send("SUBMIT_JOB", "mq", "", b"3")
        assert c.expect("ERROR").as_tuple() == ("ERROR", b"QUEUE_ERROR", b"Job queue is full")
        submit(c, "mq", b"dup", b"k", cmd="SUBMIT_JOB_BG")  # coalesced: no check
        assert c.admin("maxqueue mq") == b"OK\r\n"  # back to unlimited
        submit(c, "mq", b"4", cmd="SUBMIT_JOB_BG")
        assert status_rows(c.admin("status"))["mq"] == (3, 0, 0)


def test_maxqueue_per_priority(server: Server) -> None:
    with Conn(server.port) as c:
        c.send("SUBMIT_JOB_BG", "mp", "", b"0")
        c.expect("JOB_CREATED")
        assert c.admin("maxqueue mp 5 1") == b"OK\r\n"  # high 5, normal 1, low unlimited
        c.send("SUBMIT_JOB_BG", "mp", "", b"n")
        assert c.expect("ERROR").args[0] == b"QUEUE_ERROR"
        submit(c, "mp", b"h", cmd="SUBMIT_JOB_HIGH_BG")
        submit(c, "mp", b"l", cmd="SUBMIT_JOB_LOW_BG")


# -- protocol errors ----------------------------------------------------------------------

# command number -> NUL count of a well-formed payload (the protocol's argument counts)
RESPONSE_ONLY = {5: 0, 6: 0, 8: 0, 10: 0, 11: 2, 17: 0, 19: 1, 20: 4, 24: 0, 27: 0, 31: 3,
                 35: 7, 40: 4, 42: 5}


@pytest.mark.parametrize("num", sorted(RESPONSE_ONLY))
def test_invalid_command_keeps_connection(server: Server, num: int) -> None:
    with Conn(server.port) as c:
        c.send(num, *([b"x"] * (RESPONSE_ONLY[num] + 1)))
        assert c.expect("ERROR").as_tuple() == (
            "ERROR", b"INVALID_COMMAND", b"Command not expected")
        c.send("ECHO_REQ", b"still here")
        assert c.expect("ECHO_RES").payload == b"still here"


def test_invalid_command_with_args(server: Server) -> None:
    with Conn(server.port) as c:
        c.send("SUBMIT_JOB_SCHED", "f", "u", "1", "2", "3", "4", "5", b"data")
        assert c.expect("ERROR").args[0] == b"INVALID_COMMAND"
        c.send("JOB_CREATED", b"H:x:1")
        assert c.expect("ERROR").args[0] == b"INVALID_COMMAND"
    assert "sched" not in status(server.port)


def test_request_with_res_magic(server: Server) -> None:
    from gearproto import RES, pack
    with Conn(server.port) as c:
        c.send_raw(pack("SUBMIT_JOB_BG", "magic", "", b"d", magic=RES))
        assert c.expect("ERROR").as_tuple() == (
            "ERROR", b"INVALID_MAGIC", b"Request magic expected")
        c.send("ECHO_REQ", b"ok")
        assert c.expect("ECHO_RES").payload == b"ok"
    assert "magic" not in status(server.port)  # not executed


@pytest.mark.parametrize("cmd,text", [
    ("WORK_DATA", b"Job does not exist on server"),
    ("WORK_WARNING", b"Job does not exist on server"),
    ("WORK_COMPLETE", b"Job given in work result not found"),
    ("WORK_EXCEPTION", b"An exception was received for a job that does not exist"),
])
def test_job_not_found(server: Server, cmd: str, text: bytes) -> None:
    with Conn(server.port) as c:
        c.send(cmd, b"H:nohost:4242", b"data")
        assert c.expect("ERROR").as_tuple() == ("ERROR", b"JOB_NOT_FOUND", text)


def test_job_not_found_status_and_fail(server: Server) -> None:
    with Conn(server.port) as c:
        c.send("WORK_STATUS", b"H:nohost:4242", b"1", b"2")
        assert c.expect("ERROR").as_tuple() == (
            "ERROR", b"JOB_NOT_FOUND", b"Job given in work result not found")
        c.send("WORK_FAIL", b"H:nohost:4242")
        assert c.expect("ERROR").as_tuple() == (
            "ERROR", b"JOB_NOT_FOUND", b"Job given in work result not found")


def test_work_for_job_owned_by_other_worker(server: Server) -> None:
    c = Conn(server.port)
    h = submit(c, "own", b"x")
    w1 = worker(server.port, "own")
    w2 = worker(server.port, "own")
    grab(w1)
    w2.send("WORK_COMPLETE", h, b"steal")
    assert w2.expect("ERROR").args[0] == b"JOB_NOT_FOUND"
    c.nothing(0.2)
    w1.send("WORK_COMPLETE", h, b"mine")
    assert c.expect("WORK_COMPLETE").args[1] == b"mine"


def test_set_client_id_shown_in_workers(server: Server) -> None:
    w = worker(server.port, "idf")
    w.send("SET_CLIENT_ID", b"my id")
    sync(w)
    with Conn(server.port) as a:
        text = a.admin("workers")
    assert re.search(rb"(?m)^\d+ 127\.0\.0\.1 my id : idf$", text), text


# -- framing ------------------------------------------------------------------------------

def test_pipelined_packets_in_one_write(server: Server) -> None:
    from gearproto import pack
    with Conn(server.port) as c:
        blob = b"".join(pack("SUBMIT_JOB_BG", "pipe", "", f"d{i}") for i in range(50))
        blob += b"".join(pack("ECHO_REQ", f"e{i}") for i in range(50))
        c.send_raw(blob)
        handles = [c.expect("JOB_CREATED").args[0] for _ in range(50)]
        assert len(set(handles)) == 50
        assert [c.expect("ECHO_RES").payload for _ in range(50)] == [
            f"e{i}".encode() for i in range(50)]


def test_packet_sent_byte_by_byte(server: Server) -> None:
    from gearproto import pack
    with Conn(server.port) as c:
        raw = pack("SUBMIT_JOB_BG", "slow", "uu", b"d\0d") + b"status\n"
        for i in range(len(raw)):
            c.send_raw(raw[i:i + 1])
            if i % 7 == 0:
                time.sleep(0.002)
        h = c.expect("JOB_CREATED").args[0]
        assert c.read_text_reply() == b"slow\t1\t0\t0\n.\n"
    w = worker(server.port, "slow")
    assert grab(w, "GRAB_JOB_UNIQ").as_tuple() == ("JOB_ASSIGN_UNIQ", h, b"slow", b"uu", b"d\0d")


def test_text_and_binary_mixed(server: Server) -> None:
    from gearproto import pack
    with Conn(server.port) as c:
        c.send_raw(b"version\r\n" + pack("ECHO_REQ", b"x") + b"getpid\n")
        assert c.read_text_reply().startswith(b"OK 1.1.20")
        assert c.expect("ECHO_RES").payload == b"x"
        line = c.read_text_reply()
        assert line == f"OK {server.pid}\n".encode()


def test_zero_length_packets_with_payload_ignored(server: Server) -> None:
    """A = 0 commands (GRAB_JOB, PRE_SLEEP...) throw away any payload."""
    with Conn(server.port) as c:
        c.send("GRAB_JOB", b"junk")
        assert c.expect("NO_JOB").payload == b""
        c.send("ECHO_REQ", b"after")
        assert c.expect("ECHO_RES").payload == b"after"


def test_connection_survives_errors_then_works(server: Server) -> None:
    with Conn(server.port) as c:
        c.send("OPTION_REQ", "nope")
        c.expect("ERROR")
        c.send("NOOP")
        c.expect("ERROR")
        h = submit(c, "after", b"x", cmd="SUBMIT_JOB_BG")
        assert HANDLE_RE.match(h), h


def test_work_fail_handle_too_large(server: Server) -> None:
    # the live 1.1.20 text says GEARMAND_JOB_HANDLE_SIZE
    with Conn(server.port) as c:
        c.send("WORK_FAIL", b"H:" + b"x" * 70)
        assert c.expect("ERROR").as_tuple() == (
            "ERROR", b"ARGUMENT_TOO_LARGE",
            b"Error occurred due to GEARMAND_JOB_HANDLE_SIZE being too small from snprintf")
        c.send("ECHO_REQ", b"alive")
        assert c.expect("ECHO_RES").payload == b"alive"


def test_reduce_job_reducer_too_large(server: Server) -> None:
    with Conn(server.port) as c:
        c.send("SUBMIT_REDUCE_JOB_BACKGROUND", "red", "u", b"r" * 70, "agg", b"d")
        assert c.expect("ERROR").as_tuple() == (
            "ERROR", b"ARGUMENT_TOO_LARGE", b"Unique value too large")


def test_foreground_reduce_job(server: Server) -> None:
    c = Conn(server.port)
    c.send("SUBMIT_REDUCE_JOB", "redfg", "ru", "myreducer", "agg", b"in\0put")
    h = c.expect("JOB_CREATED").args[0]
    w = worker(server.port, "redfg")
    assert grab(w, "GRAB_JOB_ALL").as_tuple() == (
        "JOB_ASSIGN_ALL", h, b"redfg", b"ru", b"myreducer", b"in\0put")
    w.send("WORK_COMPLETE", h, b"reduced")
    assert c.expect("WORK_COMPLETE").args[1] == b"reduced"
