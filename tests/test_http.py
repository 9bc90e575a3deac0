"""HTTP protocol module (-r http): curl and raw sockets against a real server and workers."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from typing import Callable, Iterator, List, Tuple

import pytest

from gearproto import Conn, admin, wait_for
from support import Server, free_low_port, read_until_closed, require


def http(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        return read_until_closed(s)


@contextlib.contextmanager
def cli_worker(srv: Server, function: str, *command: str) -> Iterator[None]:
    """libgearman's `gearman -w` running ``command`` for ``function``, registered."""
    worker = subprocess.Popen(["/usr/bin/gearman", "-h", "127.0.0.1", "-p", str(srv.port),
                               "-w", "-f", function, "--", *command],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        registered = f"{function}\t0\t0\t1".encode()
        assert wait_for(lambda: registered in admin(srv.port, "status")[0], 10), \
            "worker did not register"
        yield
    finally:
        worker.kill()
        worker.wait()


def headers_body(raw: bytes) -> Tuple[bytes, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    return lines[0], dict(line.split(b": ", 1) for line in lines[1:]), body


@pytest.fixture(params=[0, 2])
def http_server(request: pytest.FixtureRequest,
                server_factory: Callable[..., Server]) -> Iterator[Tuple[Server, int]]:
    port = free_low_port()
    srv = server_factory("-t", str(request.param), "-r", "http", "--http-port", str(port))
    yield srv, port


def reverse_worker(srv: Server, stop: threading.Event, packets: List[Tuple[int, list]]) -> None:
    """A raw worker: echoes data reversed, with one WORK_DATA chunk first."""
    w = Conn(srv.port)
    w.send(1, b"rev")
    while not stop.is_set():
        w.send(9)
        packet = w.recv()
        if packet.num == 10:           # NO_JOB
            w.send(4)
            try:
                w.recv(timeout=0.2)
            except (socket.timeout, TimeoutError):
                pass
            continue
        handle, data = packet.args[0], packet.args[-1]
        packets.append((packet.num, packet.args))
        w.send(28, handle, b"<")
        w.send(13, handle, data[::-1])


def test_foreground_background_echo_head_and_bad_method(
        http_server: Tuple[Server, int]) -> None:
    srv, port = http_server
    stop = threading.Event()
    seen: List[Tuple[int, list]] = []
    t = threading.Thread(target=reverse_worker, args=(srv, stop, seen), daemon=True)
    t.start()
    try:
        raw = http(port, b"POST /rev HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                         b"Connection: close\r\nX-Gearman-Unique: u1\r\n\r\nhello")
        status, hdrs, body = headers_body(raw)
        assert status == b"HTTP/1.1 200 OK"     # an HTTP/1.1 request gets HTTP/1.1
        assert hdrs[b"X-Gearman-Command"] == b"WORK_COMPLETE"
        assert hdrs[b"X-Gearman-Job-Handle"].startswith(b"H:")
        assert hdrs[b"Server"] == b"Gearman/1.1.20"
        assert body == b"<olleh" and hdrs[b"Content-Length"] == b"6"

        status, hdrs, body = headers_body(http(port, b"GET / HTTP/1.0\r\n\r\n"))
        assert status == b"HTTP/1.0 404 NOT_FOUND" and body == b""

        status, hdrs, body = headers_body(http(
            port, b"PUT /bgonly HTTP/1.0\r\nX-Gearman-Background: true\r\n"
                  b"X-Gearman-Priority: high\r\nContent-Length: 2\r\n\r\nhi"))
        assert status == b"HTTP/1.0 200 OK"
        assert hdrs[b"X-Gearman-Command"] == b"JOB_CREATED"
        with Conn(srv.port) as admin:
            assert b"bgonly\t1\t0\t0\t0\n" in admin.admin("prioritystatus")

        status, hdrs, body = headers_body(http(port, b"HEAD /rev HTTP/1.0\r\n\r\n"))
        assert status == b"HTTP/1.0 200 OK" and body == b""

        status, _, _ = headers_body(http(port, b"DELETE /rev HTTP/1.0\r\n\r\n"))
        assert status == b"HTTP/1.0 405 METHOD_NOT_ALLOWED"
        status, _, _ = headers_body(http(port, b"GET /rev HTTP/2.0\r\n\r\n"))
        assert status == b"HTTP/1.0 505 HTTP Version Not Supported"    # then closed
    finally:
        stop.set()
        t.join(5)
    assert seen and seen[0][0] == 11


def test_curl_with_gearman_cli_worker(http_server: Tuple[Server, int]) -> None:
    require("/usr/bin/curl", "HTTP tests drive the server with curl")
    require("/usr/bin/gearman", "the worker is libgearman's gearman CLI")
    srv, port = http_server
    with cli_worker(srv, "upper", "tr", "a-z", "A-Z"):
        out = subprocess.run(["/usr/bin/curl", "-s", "-i", "--data-binary", "gearman",
                              f"http://127.0.0.1:{port}/upper"],
                             capture_output=True, timeout=20, check=True).stdout
    status, hdrs, body = headers_body(out)
    assert status == b"HTTP/1.1 200 OK"
    assert body == b"GEARMAN"


def test_differential_foreground_post_matches_c(server_factory: Callable[..., Server]) -> None:
    """The same POST answered by C gearmand and by ours: identical bytes apart from the
    version in the Server header."""
    require("/usr/sbin/gearmand", "differential HTTP test needs Debian's gearman-job-server")
    require("/usr/bin/gearman", "the worker is libgearman's gearman CLI")
    answers = []
    for impl in ("c", "py"):
        port = free_low_port()
        srv = server_factory("-t", "0", "-r", "http", "--http-port", str(port), impl=impl)
        with cli_worker(srv, "rev", "rev"):
            raw = http(port, b"POST /rev HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        answers.append(raw.replace(b"Gearman/1.1.20+ds", b"Gearman/1.1.20"))
    assert answers[0] == answers[1]
    assert answers[1].endswith(b"\r\n\r\nolleh")


# ---- HTTP/1.1 framing (h11) -------------------------------------------------------------

def test_smuggling_pair_is_refused(http_server: Tuple[Server, int]) -> None:
    """Content-Length and Transfer-Encoding together: 400 and a close, and no job."""
    srv, port = http_server
    raw = http(port, b"POST /smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /inner HTTP/1.1\r\n"
                     b"Host: x\r\n\r\n")
    status, _, body = headers_body(raw)
    assert status == b"HTTP/1.0 400 Bad Request"
    assert b"Transfer-Encoding" in body
    text = admin(srv.port, "status")[0]
    assert b"smuggle" not in text and b"inner" not in text


def test_chunked_body_reaches_the_worker_whole(http_server: Tuple[Server, int]) -> None:
    srv, port = http_server
    require("/usr/bin/gearman", "the worker is libgearman's gearman CLI")
    with cli_worker(srv, "rev", "rev"):
        raw = http(port, b"POST /rev HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         b"Connection: close\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n")
    status, hdrs, body = headers_body(raw)
    assert status == b"HTTP/1.1 200 OK"
    assert body == b"olleh" and hdrs[b"Content-Length"] == b"5"


def test_expect_100_continue(http_server: Tuple[Server, int]) -> None:
    srv, port = http_server
    require("/usr/bin/gearman", "the worker is libgearman's gearman CLI")
    with cli_worker(srv, "rev", "rev"), \
            socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /rev HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        rest = read_until_closed(s)
    status, _, body = headers_body(rest)
    assert status == b"HTTP/1.1 200 OK" and body == b"olleh"


def test_http11_without_host_is_refused(http_server: Tuple[Server, int]) -> None:
    """RFC 9112 3.2: an HTTP/1.1 request without Host gets 400."""
    _, port = http_server
    status, _, _ = headers_body(http(port, b"GET /x HTTP/1.1\r\n\r\n"))
    assert status == b"HTTP/1.0 400 Bad Request"


def test_keep_alive_two_requests_on_one_connection_with_curl(
        http_server: Tuple[Server, int]) -> None:
    require("/usr/bin/curl", "HTTP tests drive the server with curl")
    require("/usr/bin/gearman", "the worker is libgearman's gearman CLI")
    srv, port = http_server
    with cli_worker(srv, "upper", "tr", "a-z", "A-Z"):
        run = subprocess.run(["/usr/bin/curl", "-sv", "--http1.1", "--data-binary", "one",
                              f"http://127.0.0.1:{port}/upper", "--next", "--http1.1",
                              "--data-binary", "two", f"http://127.0.0.1:{port}/upper"],
                             capture_output=True, timeout=20, check=True)
    assert run.stdout == b"ONETWO"
    log = run.stderr.decode()
    assert log.count("HTTP/1.1 200 OK") == 2
    assert "Re-using existing connection" in log or "Reusing existing" in log


def test_pipelined_requests_answered_in_order(http_server: Tuple[Server, int]) -> None:
    """Two requests in one write: the second is parsed after the first is answered."""
    _, port = http_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 2\r\nConnection: close\r\n\r\nhi")
        raw = read_until_closed(s)
    assert raw.count(b"HTTP/1.1 404 NOT_FOUND\r\n") == 2
    assert raw.endswith(b"\r\n\r\n")


def test_differential_not_found_matches_c(server_factory: Callable[..., Server]) -> None:
    """An ECHO (empty path) answered 404 by C gearmand 1.1.20 and by ours: identical bytes
    apart from the version in the Server header (Server comes before Content-Length)."""
    require("/usr/sbin/gearmand", "differential HTTP test needs Debian's gearman-job-server")
    answers = []
    for impl in ("c", "py"):
        port = free_low_port()
        server_factory("-t", "0", "-r", "http", "--http-port", str(port), impl=impl)
        raw = http(port, b"GET / HTTP/1.0\r\n\r\n")
        answers.append(raw.replace(b"Gearman/1.1.20+ds", b"Gearman/1.1.20"))
    assert answers[0] == answers[1] == (
        b"HTTP/1.0 404 NOT_FOUND\r\nServer: Gearman/1.1.20\r\nContent-Length: 0\r\n\r\n")
