"""A small TCP proxy on loopback that a test can cut, stall and restore (store outages).

``TcpProxy(("127.0.0.1", 5432))`` forwards 127.0.0.1:<port> to the target.  One thread runs
a selector over the listener and every connection pair; each direction has a bounded
buffer (reading stops while it holds ``BUF_LIMIT`` bytes), and at most ``MAX_PAIRS``
connections are open at once (more are reset on accept).

* ``cut()``: every open connection is reset on both sides (SO_LINGER 0: an RST, no FIN)
  and the listener is closed, so new connects are refused.
* ``stall()``: connections stay open and nothing moves in either direction; new
  connections are accepted (the TCP handshake completes) but are not connected upstream
  and nothing moves on them.  A hung database, as a client sees it.
* ``restore()``: forwarding resumes (the listener is bound again on the same port after a
  cut; connections accepted while stalled are connected upstream now).

``stop()`` (or leaving the ``with`` block) resets everything and joins the thread.
Every call returns once the proxy thread has applied it.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

BUF_LIMIT = 1 << 20
MAX_PAIRS = 256
UPSTREAM_CONNECT_TIMEOUT = 2.0
LINGER_0 = struct.pack("ii", 1, 0)

UP, CUT, STALLED = "up", "cut", "stalled"


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Pair:
    """One proxied connection: the accepted client side and (once connected) upstream."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: Optional[socket.socket] = None
        #: bytes read from one side, waiting to be written to the other
        self.to_upstream = bytearray()
        self.to_client = bytearray()
        self.client_eof = False
        self.upstream_eof = False
        self.shut: Set[int] = set()     # filenos whose write half we have shut down

    def sockets(self) -> List[socket.socket]:
        return [s for s in (self.client, self.upstream) if s is not None]


class TcpProxy:
    def __init__(self, target: Tuple[str, int], listen_host: str = "127.0.0.1") -> None:
        assert listen_host.startswith("127."), "loopback only"
        self.target = target
        self.listen_host = listen_host
        self.port = 0
        self.state = UP
        #: counters for tests: connections accepted / connected upstream so far
        self.accepted = 0
        self.connected = 0
        self._sel = selectors.DefaultSelector()
        self._listener: Optional[socket.socket] = None
        self._pairs: Dict[int, _Pair] = {}          # fileno of either socket -> pair
        self._events: Dict[int, int] = {}           # fileno -> selector events (pairs)
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._calls: List[Tuple[Callable[[], None], threading.Event]] = []

    # ---- public API (any thread) ----------------------------------------------------
    def start(self) -> int:
        """Bind 127.0.0.1:<free port>, start forwarding; returns the port."""
        assert self._thread is None, "already started"
        self._listen()
        self._thread = threading.Thread(target=self._loop, name=f"tcpproxy:{self.port}",
                                        daemon=True)
        self._thread.start()
        return self.port

    def cut(self) -> None:
        self._call(self._do_cut)

    def stall(self) -> None:
        self._call(self._do_stall)

    def restore(self) -> None:
        self._call(self._do_restore)

    def open_pairs(self) -> int:
        with self._lock:
            return len({id(p) for p in self._pairs.values()})

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self._wake()
        thread.join(10)
        assert not thread.is_alive(), "tcpproxy thread did not stop"

    def __enter__(self) -> TcpProxy:  # noqa: PYI034
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- plumbing -------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _call(self, fn: Callable[[], None], timeout: float = 10.0) -> None:
        """Run ``fn`` on the proxy thread and wait until it has run."""
        assert self._thread is not None and self._thread.is_alive(), "proxy not running"
        done = threading.Event()
        with self._lock:
            self._calls.append((fn, done))
        self._wake()
        assert done.wait(timeout), f"tcpproxy did not apply {fn.__name__} in {timeout}s"

    def _listen(self) -> None:
        deadline = time.monotonic() + 5
        while True:
            lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                lsock.bind((self.listen_host, self.port))
                break
            except OSError as exc:
                lsock.close()
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        lsock.listen(64)
        lsock.setblocking(False)
        self.port = lsock.getsockname()[1]
        self._listener = lsock
        self._sel.register(lsock, selectors.EVENT_READ, None)

    def _close_listener(self) -> None:
        lsock, self._listener = self._listener, None
        if lsock is not None:
            self._sel.unregister(lsock)
            lsock.close()

    def _loop(self) -> None:
        try:
            while not self._stopping:
                for key, mask in self._sel.select(0.5):
                    if key.fileobj is self._wake_r:
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                    elif key.fileobj is self._listener:
                        self._accept()
                    else:
                        pair = self._pairs.get(key.fd)
                        if pair is not None:
                            self._service(pair, key.fileobj, mask)  # type: ignore[arg-type]
                with self._lock:
                    calls, self._calls = self._calls, []
                for fn, done in calls:
                    try:
                        fn()
                    finally:
                        done.set()
        finally:
            self._close_listener()
            for pair in list({id(p): p for p in self._pairs.values()}.values()):
                self._drop(pair)
            with self._lock:
                for _, done in self._calls:
                    done.set()
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    # ---- state changes (proxy thread) -----------------------------------------------
    def _do_cut(self) -> None:
        self.state = CUT
        self._close_listener()
        for pair in list({id(p): p for p in self._pairs.values()}.values()):
            self._drop(pair)

    def _do_stall(self) -> None:
        if self.state == CUT:
            self._listen()
        self.state = STALLED
        for pair in list({id(p): p for p in self._pairs.values()}.values()):
            self._interest(pair)

    def _do_restore(self) -> None:
        if self.state == CUT:
            self._listen()
        self.state = UP
        for pair in list({id(p): p for p in self._pairs.values()}.values()):
            if pair.upstream is None:
                self._connect_upstream(pair)
            else:
                self._interest(pair)

    # ---- connections (proxy thread) -------------------------------------------------
    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(64):
            try:
                client, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.accepted += 1
            if self.open_pairs() >= MAX_PAIRS:
                reset(client)
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client)
            with self._lock:
                self._pairs[client.fileno()] = pair
            if self.state == UP:
                self._connect_upstream(pair)
            else:
                self._interest(pair)

    def _connect_upstream(self, pair: _Pair) -> None:
        try:
            up = socket.create_connection(self.target, timeout=UPSTREAM_CONNECT_TIMEOUT)
        except OSError:
            self._drop(pair)
            return
        self.connected += 1
        up.setblocking(False)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair.upstream = up
        with self._lock:
            self._pairs[up.fileno()] = pair
        self._interest(pair)

    def _interest(self, pair: _Pair) -> None:
        """Wait on each socket of the pair for what the current state lets it do."""
        moving = self.state == UP and pair.upstream is not None
        for sock, inbound, outbound, eof in (
                (pair.client, pair.to_upstream, pair.to_client, pair.client_eof),
                (pair.upstream, pair.to_client, pair.to_upstream, pair.upstream_eof)):
            if sock is None:
                continue
            events = 0
            if moving:
                if not eof and len(inbound) < BUF_LIMIT:
                    events |= selectors.EVENT_READ
                if outbound:
                    events |= selectors.EVENT_WRITE
            self._set_events(sock, events)

    def _set_events(self, sock: socket.socket, events: int) -> None:
        """A selector cannot hold a socket waiting for nothing: unregister it instead."""
        fd = sock.fileno()
        current = self._events.get(fd, 0)
        if events == current:
            return
        if not events:
            self._sel.unregister(sock)
            del self._events[fd]
        elif not current:
            self._sel.register(sock, events, None)
            self._events[fd] = events
        else:
            self._sel.modify(sock, events, None)
            self._events[fd] = events

    def _drop(self, pair: _Pair) -> None:
        with self._lock:
            for sock in pair.sockets():
                self._pairs.pop(sock.fileno(), None)
        for sock in pair.sockets():
            if self._events.pop(sock.fileno(), 0):
                self._sel.unregister(sock)
            reset(sock)

    def _service(self, pair: _Pair, sock: socket.socket, mask: int) -> None:
        if self.state != UP or pair.upstream is None:
            self._interest(pair)
            return
        from_client = sock is pair.client
        other = pair.upstream if from_client else pair.client
        inbound = pair.to_upstream if from_client else pair.to_client
        outbound = pair.to_client if from_client else pair.to_upstream
        if mask & selectors.EVENT_READ:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._drop(pair)
                return
            if data == b"":
                if from_client:
                    pair.client_eof = True
                else:
                    pair.upstream_eof = True
            elif data:
                inbound += data
        if mask & selectors.EVENT_WRITE and outbound:
            try:
                sent = sock.send(outbound)
                del outbound[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop(pair)
                return
        # push what we just read straight on when the other side can take it
        if inbound:
            try:
                sent = other.send(inbound)
                del inbound[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop(pair)
                return
        for eof, buf, dst in ((pair.client_eof, pair.to_upstream, pair.upstream),
                              (pair.upstream_eof, pair.to_client, pair.client)):
            if eof and not buf and dst.fileno() not in pair.shut:
                pair.shut.add(dst.fileno())
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        if pair.client_eof and pair.upstream_eof and not pair.to_client \
                and not pair.to_upstream:
            self._drop(pair)
            return
        self._interest(pair)
