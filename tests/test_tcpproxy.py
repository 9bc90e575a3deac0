"""tests/tcpproxy.py against a local echo server: forwarding, cut, stall, restore, stop."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable, Iterator, List, Tuple

import pytest
from tcpproxy import TcpProxy


class EchoServer:
    """Threaded echo server on 127.0.0.1; counts the connections it saw end."""

    def __init__(self) -> None:
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.ended: List[str] = []          # "eof" or "reset", one per finished connection
        self._threads: List[threading.Thread] = []
        self._conns: List[socket.socket] = []
        self._accept = threading.Thread(target=self._run, daemon=True)
        self._accept.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            self._conns.append(conn)
            t = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    self.ended.append("eof")
                    return
                conn.sendall(data)
        except ConnectionResetError:
            self.ended.append("reset")
        except OSError:
            self.ended.append("error")
        finally:
            conn.close()

    def close(self) -> None:
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)     # wakes the blocked accept()
        except OSError:
            pass
        self.lsock.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)
        self._accept.join(5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    srv = EchoServer()
    yield srv
    srv.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy(("127.0.0.1", echo.port)) as p:
        yield p


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def roundtrip(s: socket.socket, data: bytes, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    got = bytearray()
    sender = threading.Thread(target=s.sendall, args=(data,), daemon=True)
    sender.start()
    deadline = time.monotonic() + timeout
    while len(got) < len(data):
        s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    sender.join(timeout)
    return bytes(got)


def silent(s: socket.socket, wait: float = 0.4) -> bool:
    """True when nothing arrives within ``wait`` (and the connection is not closed)."""
    s.settimeout(wait)
    try:
        data = s.recv(100)
    except TimeoutError:
        return True
    raise AssertionError(f"expected silence, got {data!r}")


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_forwards_both_ways_large_and_many(proxy: TcpProxy, echo: EchoServer) -> None:
    blob = os.urandom(3 << 20)                 # above the per-direction buffer limit
    with connect(proxy.port) as s:
        assert roundtrip(s, blob, 20) == blob
    conns = [connect(proxy.port) for _ in range(20)]
    try:
        for i, c in enumerate(conns):
            assert roundtrip(c, b"hello %d" % i) == b"hello %d" % i
    finally:
        for c in conns:
            c.close()
    assert wait_until(lambda: proxy.open_pairs() == 0)
    assert wait_until(lambda: echo.ended.count("eof") == 21), echo.ended


def test_cut_resets_both_sides_and_refuses(proxy: TcpProxy, echo: EchoServer) -> None:
    s = connect(proxy.port)
    assert roundtrip(s, b"before") == b"before"
    proxy.cut()
    s.settimeout(2)
    with pytest.raises(ConnectionResetError):
        s.recv(10)
    s.close()
    assert wait_until(lambda: echo.ended == ["reset"]), echo.ended
    with pytest.raises(ConnectionRefusedError):
        connect(proxy.port)
    assert proxy.open_pairs() == 0


def test_restore_after_cut_same_port(proxy: TcpProxy) -> None:
    port = proxy.port
    proxy.cut()
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    proxy.restore()
    assert proxy.port == port
    with connect(port) as s:
        assert roundtrip(s, b"again") == b"again"


def test_stall_holds_bytes_then_restore_delivers(proxy: TcpProxy, echo: EchoServer) -> None:
    old = connect(proxy.port)
    assert roundtrip(old, b"x") == b"x"
    upstream_before = proxy.connected
    proxy.stall()
    old.sendall(b"held")
    assert silent(old)
    new = connect(proxy.port)             # the handshake completes ...
    new.sendall(b"queued")
    assert silent(new)                    # ... but nothing moves
    assert proxy.connected == upstream_before, "stalled proxy connected upstream"
    assert echo.ended == []
    proxy.restore()
    old.settimeout(5)
    assert old.recv(10) == b"held"
    new.settimeout(5)
    assert new.recv(10) == b"queued"
    assert roundtrip(new, b"more") == b"more"
    old.close()
    new.close()


def test_stall_after_cut_and_cut_while_stalled(proxy: TcpProxy) -> None:
    proxy.cut()
    proxy.stall()                          # listening again, moving nothing
    s = connect(proxy.port)
    s.sendall(b"a")
    assert silent(s, 0.2)
    proxy.cut()                            # the stalled connection is reset too
    s.settimeout(2)
    with pytest.raises(ConnectionResetError):
        s.recv(10)
    s.close()
    proxy.restore()
    with connect(proxy.port) as s2:
        assert roundtrip(s2, b"ok") == b"ok"


def test_stop_closes_everything(echo: EchoServer) -> None:
    proxy = TcpProxy(("127.0.0.1", echo.port))
    port = proxy.start()
    s = connect(port)
    assert roundtrip(s, b"y") == b"y"
    threads = {t.name for t in threading.enumerate()}
    assert f"tcpproxy:{port}" in threads
    proxy.stop()
    s.settimeout(2)
    with pytest.raises(ConnectionResetError):
        s.recv(10)
    s.close()
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    assert f"tcpproxy:{port}" not in {t.name for t in threading.enumerate()}


def test_unreachable_target_resets_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as tmp:
        dead: Tuple[str, int] = ("127.0.0.1", tmp.getsockname()[1])
    with TcpProxy(dead) as proxy:
        with pytest.raises(ConnectionResetError):      # the RST may beat connect()'s return
            with connect(proxy.port) as s:
                s.settimeout(3)
                s.recv(10)
        assert wait_until(lambda: proxy.open_pairs() == 0)
