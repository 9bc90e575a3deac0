"""Output backpressure: a client that never reads cannot make the server buffer a streaming
worker's output without bound, stall other clients, or keep the memory after it is gone.

The slow client submits one foreground job with a 4 KiB receive buffer and never reads;
its worker streams WORK_DATA in 64 KiB packets as fast as the server lets it.  Meanwhile a
healthy client/worker pair runs foreground jobs on another function.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Callable, List

import pytest

from gearproto import Conn, pack, wait_for
from support import Server, only_ours

CHUNK = 64 * 1024
#: The server's high-water mark (iothread.HIGH_WATER) plus the growth the issue allows.
RSS_BOUND = (4 + 32) * 1024 * 1024


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Streamer(threading.Thread):
    """A raw worker: grabs one job of ``fn`` and sends WORK_DATA until told to stop or the
    server closes the job; counts what the socket accepted."""

    def __init__(self, port: int, fn: str) -> None:
        super().__init__(daemon=True)
        self.conn = Conn(port)
        self.conn.send("CAN_DO", fn)
        self.stop = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.conn.send("GRAB_JOB")
            p = self.conn.recv(timeout=10)
            while p.name == "NO_JOB":
                time.sleep(0.01)
                self.conn.send("GRAB_JOB")
                p = self.conn.recv(timeout=10)
            handle = p.args[0]
            packet = pack("WORK_DATA", handle, b"x" * CHUNK)
            sock = self.conn.sock
            sock.settimeout(0.2)
            while not self.stop.is_set():
                try:
                    sock.sendall(packet)
                    self.sent += len(packet)
                except socket.timeout:
                    continue                # paused by the server: try again later
                except OSError:
                    return
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc


def slow_client(port: int, fn: str) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(pack("SUBMIT_JOB", fn, "", b"go"))
    return s


class Healthy(threading.Thread):
    """A client/worker pair on another function; records each job's round-trip time."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.latencies: List[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            worker = Conn(self.port)
            worker.send("CAN_DO", "healthy")
            client = Conn(self.port)
            while not self.stop.is_set():
                t0 = time.monotonic()
                client.send("SUBMIT_JOB", "healthy", "", b"ping")
                client.expect("JOB_CREATED")
                worker.send("GRAB_JOB")
                handle = worker.expect("JOB_ASSIGN").args[0]
                worker.send("WORK_COMPLETE", handle, b"pong")
                assert client.expect("WORK_COMPLETE").args[1] == b"pong"
                self.latencies.append(time.monotonic() - t0)
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc


def p99(values: List[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@only_ours
@pytest.mark.parametrize("threads", ["0", "2"])
def test_slow_reader_pauses_its_worker_and_is_closed_after_the_stall_timeout(
        server_factory: Callable[..., Server], threads: str) -> None:
    srv = server_factory("-t", threads, "--client-stall-timeout", "3")
    healthy = Healthy(srv.port)
    healthy.start()
    assert wait_for(lambda: len(healthy.latencies) > 20, 10)
    baseline = rss(srv.pid)
    slow = slow_client(srv.port, "stream")
    streamer = Streamer(srv.port, "stream")
    streamer.start()
    peak = baseline
    try:
        start = time.monotonic()
        while time.monotonic() - start < 2.0:          # streaming against a stuck client
            peak = max(peak, rss(srv.pid))
            time.sleep(0.05)
        sent_while_stuck = streamer.sent
        assert sent_while_stuck > 4 * 1024 * 1024       # it did stream up to the mark...
        time.sleep(0.5)
        assert streamer.sent - sent_while_stuck < 2 * 1024 * 1024   # ... then was paused
        assert peak - baseline < RSS_BOUND, (peak - baseline) >> 20
        # the stall timeout closes the slow client (its job is then ignored), and the
        # worker is resumed
        assert wait_for(lambda: "has not read its output" in srv.log(), 10)
        slow.settimeout(10)
        received = 0
        try:
            while True:
                data = slow.recv(1 << 20)
                if not data:
                    break
                received += len(data)
        except ConnectionResetError:
            pass
        assert received < 8 * 1024 * 1024               # the backlog was not all kept
        resumed_at = streamer.sent
        assert wait_for(lambda: streamer.sent > resumed_at + 1024 * 1024, 5)  # worker reads
    finally:
        streamer.stop.set()
        slow.close()
        streamer.join(5)
        healthy.stop.set()
        healthy.join(10)
    assert streamer.error is None and healthy.error is None, (streamer.error, healthy.error)
    assert p99(healthy.latencies) < 0.1, p99(healthy.latencies)
    streamer.conn.close()
    assert wait_for(lambda: rss(srv.pid) - baseline < 8 * 1024 * 1024, 5), \
        (rss(srv.pid) - baseline) >> 20


@only_ours
def test_slow_reader_resumes_its_worker_when_it_reads_again(
        server_factory: Callable[..., Server]) -> None:
    srv = server_factory("-t", "2")
    slow = slow_client(srv.port, "stream")
    streamer = Streamer(srv.port, "stream")
    streamer.start()
    try:
        time.sleep(1.0)
        paused_at = streamer.sent
        time.sleep(0.5)
        assert streamer.sent - paused_at < 2 * 1024 * 1024     # paused
        slow.settimeout(5)
        got = 0
        deadline = time.monotonic() + 10
        while got < paused_at + 8 * 1024 * 1024 and time.monotonic() < deadline:
            got += len(slow.recv(1 << 20))                     # the client catches up ...
        assert streamer.sent > paused_at + 4 * 1024 * 1024     # ... and the worker resumed
    finally:
        streamer.stop.set()
        streamer.join(5)
        slow.close()
        streamer.conn.close()


@only_ours
def test_shared_job_slow_client_is_failed_out_and_the_other_keeps_streaming(
        server_factory: Callable[..., Server]) -> None:
    srv = server_factory("-t", "2")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", srv.port))
    slow.sendall(pack("SUBMIT_JOB", "shared", "same-unique", b"go"))
    fast = Conn(srv.port)
    fast.send("SUBMIT_JOB", "shared", "same-unique", b"go")
    handle = fast.expect("JOB_CREATED").args[0]
    streamer = Streamer(srv.port, "shared")
    streamer.start()
    try:
        got = 0
        while got < 32 * 1024 * 1024:                  # far past the slow client's mark
            p = fast.recv(timeout=5)
            assert p.name == "WORK_DATA" and p.args[0] == handle
            got += len(p.args[1])
    finally:
        streamer.stop.set()
        streamer.join(5)
    slow.settimeout(10)
    tail = b""
    try:
        while True:
            data = slow.recv(1 << 20)
            if not data or b"\0RES" + struct.pack(">I", 14) in tail + data:
                tail += data
                break
            tail = (tail + data)[-(CHUNK * 2):]
    except socket.timeout:
        pass
    assert struct.pack(">4sII", b"\0RES", 14, len(handle)) + handle in tail   # WORK_FAIL
    slow.close()
    fast.close()
    streamer.conn.close()


@only_ours
@pytest.mark.parametrize("threads", ["0", "2", "4"])
def test_input_faster_than_the_engine_is_not_queued_without_bound(
        server_factory: Callable[..., Server], threads: str) -> None:
    """Clients that pipeline requests as fast as loopback carries them (coalescing
    background submits of 4 KiB: little output, so output backpressure never engages) must
    not make the server queue their input for the processing thread without bound: at -t
    N >= 2 an I/O thread stops reading while the processing thread is more than
    messages.INBOUND_HIGH behind.  (Without it: 1.3 GB in 3 s at -t 2.)  ECHO on another
    connection keeps being answered."""
    srv = server_factory("-t", threads)
    base = rss(srv.pid)
    body = b"flood\0one-unique\0" + b"x" * 4000
    batch = (b"\0REQ" + struct.pack(">II", 18, len(body)) + body) * 64
    stop = time.monotonic() + 3.0
    errors: List[BaseException] = []

    def flood() -> None:
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            try:
                while time.monotonic() < stop:
                    s.sendall(batch)
            except OSError:
                pass                 # the server may close a client that never reads
            except BaseException as exc:  # noqa: BLE001 - reported to the test
                errors.append(exc)

    floods = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for t in floods:
        t.start()
    probe = Conn(srv.port)
    peak = 0
    worst_echo = 0.0
    while time.monotonic() < stop:
        peak = max(peak, rss(srv.pid) - base)
        t0 = time.monotonic()
        probe.send("ECHO_REQ", b"ping")
        assert probe.expect("ECHO_RES", timeout=5).args[0] == b"ping"
        worst_echo = max(worst_echo, time.monotonic() - t0)
        time.sleep(0.05)
    for t in floods:
        t.join(10)
    assert not errors, errors
    assert peak < 64 * 1024 * 1024, peak >> 20
    assert worst_echo < 1.0, worst_echo
