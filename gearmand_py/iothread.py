"""I/O loops: a selector over the connections one thread owns.

Theory of operation.  Each IOLoop owns its sockets, their decoders and write buffers; no
other thread touches them.  A readable socket is read once (at most READ_SIZE bytes: larger
``recv`` sizes cost CPython an mmap per call), its complete requests are decoded, and all
requests of one selector round go to the processor as ONE batch ``[(conn_id, events)]``.
Replies come back through the loop's Mailbox as lists of ``(conn_id, bytes | None)``; every
connection's replies from one batch are joined and sent with one ``send``; only a partial
send registers the socket for writing.  ``None`` closes the connection once its output is
flushed.

Loops run on the "io-N" threads for ``-t N >= 1`` (the ``-t 1`` loop also runs the
processor inline) and on the main thread for ``-t 0``, where it also owns the listening
sockets.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

from .engine import Output
from .listener import accept_all
from .processor import CLOSED, CONNECT, Batch, Processor
from .protocol.codec import Decoder
from .protocol.http import HttpSession
from .wakeup import Mailbox

log = logging.getLogger("gearmand")

#: Bytes read per recv (see design.md: above 64 KiB each call costs an mmap/munmap) ...
READ_SIZE = 65536
#: ... except while a large request is arriving: then read what it still lacks, up to
#: this much, in one call.  malloc.tune() keeps such buffers off mmap, and fewer recv
#: calls mean fewer GIL hand-offs between threads (1 MiB jobs at -t 4: see performance.md).
MAX_READ_SIZE = 16 * 1024 * 1024
#: Stop reading from a connection while this much output waits for it (backpressure).
PAUSE_READ_AT = 4 * 1024 * 1024
#: Output batches up to this size are joined into one send; larger ones use sendmsg.
JOIN_LIMIT = 256 * 1024
#: At stop, how long (s) in total an I/O thread keeps sending replies it already holds.
SHUTDOWN_FLUSH = 1.0
#: Most buffers handed to one sendmsg (Linux UIO_MAXIOV is 1024).
IOV_MAX = 512

Buffer = Union[bytes, memoryview]

# Mailbox message kinds (first tuple element).
MSG_OUTPUT = 0      # (MSG_OUTPUT, [(conn_id, bytes | None)])
MSG_ADD = 1         # (MSG_ADD, conn_id, socket, (ip, port), is_http)
MSG_CALL = 2        # (MSG_CALL, fn)
MSG_STOP = 3        # (MSG_STOP,)

_LISTENER = object()
_MAILBOX = object()


EV_READ = select.EPOLLIN
EV_WRITE = select.EPOLLOUT
#: Readiness that means "try recv" (errors and hang-ups surface there).
EV_READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP


class Connection:
    __slots__ = ("id", "sock", "fd", "decoder", "http", "wq", "wlen", "close_after", "events",
                 "tls", "handshaking")

    def __init__(self, conn_id: int, sock: socket.socket, max_packet: int,
                 http: bool = False) -> None:
        self.id = conn_id
        self.sock = sock
        self.fd = sock.fileno()
        self.decoder = Decoder(max_packet)
        self.http = HttpSession(max_packet) if http else None
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.handshaking = self.tls
        self.wq: List[Buffer] = []     # output the socket has not taken yet
        self.wlen = 0
        self.close_after = False
        self.events = EV_READ


class IOLoop:
    """One selector loop.  ``post`` ships a batch to the processor (unless inline)."""

    def __init__(self, io_id: int, max_packet: int,
                 post: Optional[Callable[[int, List[Batch]], None]] = None,
                 processor: Optional[Processor] = None,
                 listeners: Sequence[socket.socket] = (),
                 http_listeners: Sequence[socket.socket] = (),
                 next_conn_id: Optional[Callable[[], int]] = None,
                 tls: Optional[ssl.SSLContext] = None) -> None:
        self.io_id = io_id
        self.max_packet = max_packet
        self.max_output = max(4 * max_packet, 64 * 1024 * 1024)
        self.post = post
        self.processor = processor
        self.listeners = list(listeners) + list(http_listeners)
        self.http_fds = {s.fileno() for s in http_listeners}
        self.tls = tls
        self.next_conn_id = next_conn_id
        self.mailbox = Mailbox()
        self.epoll = select.epoll()
        self.by_fd: Dict[int, object] = {}
        self.conns: Dict[int, Connection] = {}
        self.running = False
        self._batch: List[Batch] = []
        self._dirty: Dict[Connection, List[bytes]] = {}

    # ---- entry points (any thread) ---------------------------------------------------
    def deliver(self, io_id: int, items: List[Output]) -> None:
        """Processor -> this loop (from the processing thread)."""
        self.mailbox.put((MSG_OUTPUT, items))

    def deliver_inline(self, io_id: int, items: List[Output]) -> None:
        """Processor -> this loop when the processor runs on this very thread."""
        self._apply_output(items)

    # ---- the loop --------------------------------------------------------------------
    def run(self) -> None:
        epoll = self.epoll
        by_fd = self.by_fd
        self._register(self.mailbox.fileno(), EV_READ, _MAILBOX)
        for lsock in self.listeners:
            self._register(lsock.fileno(), EV_READ, lsock)
        self.running = True
        proc = self.processor
        poll = epoll.poll
        read = self._read
        while self.running:
            timeout = proc.timeout() if proc is not None else None
            for fd, mask in poll(-1 if timeout is None else timeout):
                data = by_fd.get(fd)
                if data is None:
                    continue
                if data.__class__ is Connection:
                    if data.handshaking:  # type: ignore[attr-defined]
                        self._handshake(data)  # type: ignore[arg-type]
                        continue
                    if mask & EV_WRITE:
                        self._flush_pending(data)  # type: ignore[arg-type]
                    if mask & EV_READABLE:
                        read(data)  # type: ignore[arg-type]
                elif data is _MAILBOX:
                    self._mailbox()
                else:
                    self._accept(data)  # type: ignore[arg-type]
            self._settle()
        self._shutdown()

    def _register(self, fd: int, events: int, data: object) -> None:
        self.epoll.register(fd, events)
        self.by_fd[fd] = data

    def unregister(self, fd: int) -> None:
        if self.by_fd.pop(fd, None) is not None:
            try:
                self.epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def _settle(self) -> None:
        """Ship the round's batch, run the inline processor, send replies; repeat while
        closing connections produced more events."""
        proc = self.processor
        while True:
            batch = self._batch
            if batch:
                self._batch = []
                if proc is not None:
                    proc.handle(self.io_id, batch)
                else:
                    self.post(self.io_id, batch)  # type: ignore[misc]
            if proc is not None:
                proc.run_timers()
                proc.flush()
            if self._dirty:
                self._send_dirty()
            if not self._batch:
                return

    def _read(self, conn: Connection) -> None:
        missing = conn.decoder.missing
        size = READ_SIZE if missing <= READ_SIZE else min(missing, MAX_READ_SIZE)
        try:
            data = conn.sock.recv(size)
            if conn.tls and data:
                tls_sock = cast(ssl.SSLSocket, conn.sock)
                while tls_sock.pending():       # decrypted bytes epoll cannot see
                    data += tls_sock.recv(tls_sock.pending())
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        events = conn.decoder.feed(data) if conn.http is None else conn.http.feed(data)
        if events:
            self._batch.append((conn.id, events))

    def _handshake(self, conn: Connection) -> None:
        """Drive a TLS handshake without blocking; then serve the connection as usual."""
        try:
            conn.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self._want(conn, EV_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(conn, EV_READ | EV_WRITE)
            return
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake failed: %s", exc)
            self._drop(conn)
            return
        conn.handshaking = False
        self._update_interest(conn)
        self._read(conn)                       # the client may have sent requests already

    def _want(self, conn: Connection, events: int) -> None:
        if events != conn.events:
            conn.events = events
            self.epoll.modify(conn.fd, events)

    def _mailbox(self) -> None:
        for msg in self.mailbox.drain():
            kind = msg[0]
            if kind == MSG_OUTPUT:
                self._apply_output(msg[1])
            elif kind == MSG_ADD:
                self._add(msg[1], msg[2], msg[3], msg[4])
            elif kind == MSG_CALL:
                msg[1]()
            elif kind == MSG_STOP:
                self.running = False

    def _accept(self, lsock: socket.socket) -> None:
        assert self.next_conn_id is not None
        http = lsock.fileno() in self.http_fds
        for sock, addr in accept_all(lsock):
            self._add(self.next_conn_id(), sock, addr, http)

    def _add(self, conn_id: int, sock: socket.socket, addr: Tuple[str, int],
             http: bool = False) -> None:
        if self.tls is not None and not http:
            try:
                sock = self.tls.wrap_socket(sock, server_side=True,
                                            do_handshake_on_connect=False)
            except (ssl.SSLError, OSError) as exc:
                log.info("TLS set-up failed for %s:%d: %s", addr[0], addr[1], exc)
                sock.close()
                return
        conn = Connection(conn_id, sock, self.max_packet, http)
        self.conns[conn_id] = conn
        self._register(conn.fd, EV_READ, conn)
        self._batch.append((conn_id, [(CONNECT, False, (sock.fileno(), addr[0], addr[1]))]))

    # ---- output ----------------------------------------------------------------------
    def _apply_output(self, items: List[Output]) -> None:
        conns = self.conns
        dirty = self._dirty
        for conn_id, data in items:
            conn = conns.get(conn_id)
            if conn is None:
                continue
            if data is not None and conn.http is not None:
                data = conn.http.respond(data)
                if data is None:
                    continue
                dirty.setdefault(conn, []).append(data)
                data = None
            if data is None:
                conn.close_after = True
                dirty.setdefault(conn, [])
                continue
            pending = dirty.get(conn)
            if pending is None:
                dirty[conn] = [data]
            else:
                pending.append(data)

    def _send_dirty(self) -> None:
        dirty = self._dirty
        self._dirty = {}
        conns = self.conns
        for conn, chunks in dirty.items():
            if conn.id not in conns:
                continue
            if chunks:
                if conn.wq:                       # already waiting for EPOLLOUT
                    conn.wq.extend(chunks)
                    conn.wlen += sum(map(len, chunks))
                    if conn.wlen > self.max_output:
                        log.warning("output buffer over %d bytes, closing connection",
                                    self.max_output)
                        self._drop(conn)
                        continue
                elif not self._write(conn, chunks):
                    continue
            if not conn.wq and conn.close_after:
                self._drop(conn)
                continue
            self._update_interest(conn)

    def _write(self, conn: Connection, bufs: Sequence[Buffer]) -> bool:
        """Send what the socket takes now; queue the rest without copying it.

        Small batches are joined and sent with one ``send``; large ones go out with
        ``sendmsg`` (gather I/O).  Returns False when the connection was dropped.
        """
        if len(bufs) == 1:
            data: Buffer = bufs[0]
        else:
            total = sum(map(len, bufs))
            data = b"".join(bufs) if total <= JOIN_LIMIT or conn.tls else b""
        try:
            if len(bufs) == 1 or data:
                sent = conn.sock.send(data)
                if sent == len(data):
                    conn.wq = []
                    conn.wlen = 0
                    return True
                bufs = [data]
            else:
                sent = conn.sock.sendmsg(list(bufs[:IOV_MAX]))
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError):
            sent = 0
        except OSError:
            self._drop(conn)
            return False
        rest: List[Buffer] = []
        for i, buf in enumerate(bufs):
            size = len(buf)
            if sent >= size:
                sent -= size
                continue
            rest.append(memoryview(buf)[sent:] if sent else buf)
            rest.extend(bufs[i + 1:])
            break
        conn.wq = rest
        conn.wlen = sum(map(len, rest))
        return True

    def _flush_pending(self, conn: Connection) -> None:
        if not self._write(conn, conn.wq):
            return
        if not conn.wq and conn.close_after:
            self._drop(conn)
            return
        self._update_interest(conn)

    def _update_interest(self, conn: Connection) -> None:
        want = 0
        pending = conn.wlen
        if pending:
            want |= EV_WRITE
        if pending < PAUSE_READ_AT and not conn.close_after:
            want |= EV_READ
        if want != conn.events:
            conn.events = want
            self.epoll.modify(conn.fd, want)

    # ---- closing ---------------------------------------------------------------------
    def _drop(self, conn: Connection) -> None:
        if self.conns.pop(conn.id, None) is None:
            return
        self.unregister(conn.fd)
        try:
            conn.sock.close()
        except OSError:
            pass
        self._batch.append((conn.id, [(CLOSED, False, ())]))

    def _shutdown(self) -> None:
        deadline = time.monotonic() + SHUTDOWN_FLUSH
        for conn in list(self.conns.values()):
            try:
                remaining = deadline - time.monotonic()
                if conn.wq and remaining > 0:   # best effort: replies already produced
                    conn.sock.settimeout(remaining)
                    for buf in conn.wq:
                        conn.sock.sendall(buf)
            except OSError:
                pass
            try:
                conn.sock.close()
            except OSError:
                pass
        self.conns.clear()
        self.by_fd.clear()
        self.epoll.close()
        self.mailbox.close()
