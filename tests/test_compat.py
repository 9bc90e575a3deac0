"""--compat=1.1|2.0 and --priority-scope: gearmand 1.1.20's and 2.0.0's scheduling, version,
HTTP replies and error logging, with raw sockets and a real libgearman worker.

The three-function mix: a worker that registered A, B, C; jobs queued A: HIGH, NORMAL, LOW;
B: NORMAL; C: HIGH, LOW.  This project walks a worker's functions in registration order
(C 1.1.20 walks newest first), so the expected orders are derived from that walk:
* 1.1 (per function, no rotation): HIGH-A NORMAL-A LOW-A NORMAL-B HIGH-C LOW-C
* 2.0 (global priority, always rotating): HIGH-A HIGH-C NORMAL-B NORMAL-A LOW-C LOW-A
  (upstream 2.0.0, walking C, B, A, gives HIGH-C HIGH-A NORMAL-B NORMAL-A LOW-C LOW-A: the
  same priority levels, ties broken by its own walk).
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from typing import Callable, List, Sequence, Tuple

import pytest

from gearmand_py.settings import build_settings, parse
from gearproto import Conn, admin, wait_for
from support import Server, free_low_port, only_ours, read_until_closed, require, sync

MIX: List[Tuple[str, str]] = [("A", "LOW"), ("B", "NORMAL"), ("C", "HIGH"), ("A", "NORMAL"),
                              ("C", "LOW"), ("A", "HIGH")]
ORDER_11 = ["HIGH-A", "NORMAL-A", "LOW-A", "NORMAL-B", "HIGH-C", "LOW-C"]
ORDER_20 = ["HIGH-A", "HIGH-C", "NORMAL-B", "NORMAL-A", "LOW-C", "LOW-A"]
#: --compat=2.0 --priority-scope=function: per function, rotating.
ORDER_20_FUNCTION = ["HIGH-A", "NORMAL-B", "HIGH-C", "NORMAL-A", "LOW-C", "LOW-A"]
SUBMIT = {"HIGH": "SUBMIT_JOB_HIGH_BG", "NORMAL": "SUBMIT_JOB_BG", "LOW": "SUBMIT_JOB_LOW_BG"}

pytestmark = only_ours


def queue_mix(port: int) -> None:
    with Conn(port) as client:
        for fn, prio in MIX:
            client.send(SUBMIT[prio], fn, f"{prio}-{fn}", f"{prio}-{fn}")
            client.expect("JOB_CREATED")


def raw_order(port: int) -> List[str]:
    with Conn(port) as worker:
        for fn in "ABC":
            worker.send("CAN_DO", fn)
        sync(worker)
        order = []
        for _ in MIX:
            worker.send("GRAB_JOB")
            p = worker.expect("JOB_ASSIGN")
            order.append(p.args[2].decode())
            worker.send("WORK_COMPLETE", p.args[0], b"")
        worker.send("GRAB_JOB")
        worker.expect("NO_JOB")
    return order


@pytest.mark.parametrize("args,expected", [
    ((), ORDER_11),
    (("--compat=1.1",), ORDER_11),
    (("--compat=2.0",), ORDER_20),
    (("--priority-scope=global", "-R"), ORDER_20),
    (("--compat=2.0", "--priority-scope=function"), ORDER_20_FUNCTION),
])
@pytest.mark.parametrize("threads", ["0", "2"])
def test_three_function_mix_raw(server_factory: Callable[..., Server], args: Sequence[str],
                                expected: List[str], threads: str) -> None:
    srv = server_factory("-t", threads, *args)
    queue_mix(srv.port)
    assert raw_order(srv.port) == expected


def test_low_before_high_on_another_function(server_factory: Callable[..., Server]) -> None:
    """A LOW job on A queued before a HIGH job on B; one worker for A and B."""
    for args, first in (((), "LOW-A"), (("--compat=2.0",), "HIGH-B")):
        srv = server_factory("-t", "0", *args)
        with Conn(srv.port) as client:
            client.send("SUBMIT_JOB_LOW_BG", "A", "", "LOW-A")
            client.expect("JOB_CREATED")
            client.send("SUBMIT_JOB_HIGH_BG", "B", "", "HIGH-B")
            client.expect("JOB_CREATED")
        with Conn(srv.port) as worker:
            worker.send("CAN_DO", "A")
            worker.send("CAN_DO", "B")
            worker.send("GRAB_JOB")
            assert worker.expect("JOB_ASSIGN").args[2] == first.encode(), args


#: libgearman sends CAN_DO for "-f A -f B -f C" newest first (C, B, A), so its walk is
#: C 1.1.20's and the orders are exactly upstream's.
LIBGEARMAN_11 = ["HIGH-C", "LOW-C", "NORMAL-B", "HIGH-A", "NORMAL-A", "LOW-A"]
LIBGEARMAN_20 = ["HIGH-C", "HIGH-A", "NORMAL-B", "NORMAL-A", "LOW-C", "LOW-A"]


@pytest.mark.parametrize("args,expected", [((), LIBGEARMAN_11),
                                           (("--compat=2.0",), LIBGEARMAN_20)])
def test_three_function_mix_libgearman_worker(server_factory: Callable[..., Server],
                                              args: Sequence[str],
                                              expected: List[str]) -> None:
    require("/usr/bin/gearman", "the worker is libgearman's gearman CLI")
    srv = server_factory("-t", "2", *args)
    queue_mix(srv.port)
    out = os.path.join(tempfile.mkdtemp(), "order")
    worker = subprocess.Popen(
        ["/usr/bin/gearman", "-h", "127.0.0.1", "-p", str(srv.port), "-w",
         "-f", "A", "-f", "B", "-f", "C", "--", "sh", "-c", f"cat >> {out}; echo >> {out}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def lines() -> List[str]:
            try:
                with open(out) as f:
                    return f.read().split()
            except FileNotFoundError:
                return []
        assert wait_for(lambda: len(lines()) == len(MIX), 20), lines()
        assert lines() == expected
    finally:
        worker.kill()
        worker.wait()


def test_version_answers_per_mode(server_factory: Callable[..., Server]) -> None:
    assert admin(server_factory("-t", "0").port, "version")[0] == b"OK 1.1.20\n"
    assert admin(server_factory("-t", "0", "--compat=2.0").port,
                 "version")[0] == b"OK 2.0.0\n"


def _http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        return read_until_closed(s)


def test_http11_reply_per_mode(server_factory: Callable[..., Server]) -> None:
    """2.0 answers an HTTP/1.1 request with gearmand 2.0.0's bytes and closes; 1.1 keeps
    the connection open (the request here asks to close, so both end)."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    port = free_low_port()
    server_factory("-t", "0", "--compat=2.0", "-r", "http", "--http-port", str(port))
    # byte for byte what gearmand 2.0.0 answers (checked against a 2.0.0 build)
    assert _http(port, request) == (b"HTTP/1.1 404 NOT_FOUND\r\nServer: Gearman/2.0.0\r\n"
                                    b"Connection: close\r\nContent-Length: 0\r\n\r\n")
    assert _http(port, b"GET / HTTP/1.0\r\n\r\n") == (
        b"HTTP/1.0 404 NOT_FOUND\r\nServer: Gearman/2.0.0\r\nContent-Length: 0\r\n\r\n")
    port = free_low_port()
    server_factory("-t", "0", "-r", "http", "--http-port", str(port))
    reply = _http(port, request)
    assert reply.startswith(b"HTTP/1.1 404 NOT_FOUND\r\n")
    assert b"Server: Gearman/1.1.20\r\n" in reply


def test_error_replies_logged_at_error_in_20(server_factory: Callable[..., Server]) -> None:
    for args, level in (((), "WARNING"), (("--compat=2.0",), "ERROR")):
        srv = server_factory("-t", "0", *args)
        with Conn(srv.port) as c:
            c.send("WORK_COMPLETE", "H:nosuch:1", b"")
            c.expect("ERROR")
        assert wait_for(lambda s=srv: "GEARMAN_JOB_NOT_FOUND" in s.log(), 5)  # type: ignore
        line = next(x for x in srv.log().splitlines() if "GEARMAN_JOB_NOT_FOUND" in x)
        assert line.split()[0] == level, line


@pytest.mark.parametrize("value,expected", [("-1", 0), ("0", 0), ("3", 3), ("255", 255),
                                            ("256", 0)])
def test_job_retries_minus_one_is_no_limit(value: str, expected: int) -> None:
    for mode in ("1.1", "2.0"):
        assert build_settings(parse([f"--job-retries={value}", f"--compat={mode}"])
                              ).job_retries == expected


def test_bad_mode_and_scope_are_refused() -> None:
    from gearmand_py.errors import ConfigError
    with pytest.raises(ConfigError, match=r"the argument \('3.0'\) for option '--compat'"):
        build_settings(parse(["--compat=3.0"]))
    with pytest.raises(ConfigError, match=r"option '--priority-scope' is invalid"):
        build_settings(parse(["--priority-scope=queue"]))


@pytest.mark.parametrize("threads", ["0", "1", "2"])
@pytest.mark.parametrize("mode", ["1.1", "2.0"])
def test_epoch_job_wakes_a_sleeping_worker_at_every_t(
        server_factory: Callable[..., Server], threads: str, mode: str) -> None:
    srv = server_factory("-t", threads, f"--compat={mode}")
    with Conn(srv.port) as worker, Conn(srv.port) as client:
        worker.send("CAN_DO", "later")
        worker.send("PRE_SLEEP")
        sync(worker)
        client.send("SUBMIT_JOB_EPOCH", "later", "", int(time.time()) + 1, b"x")
        client.expect("JOB_CREATED")
        assert worker.expect("NOOP", timeout=4).name == "NOOP"
