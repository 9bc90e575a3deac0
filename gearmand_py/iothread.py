"""I/O loops: a selector over the connections one thread owns.

Theory of operation.  Each IOLoop owns its sockets, their codecs and write buffers; no
other thread touches them.  A readable socket is read once (at most READ_SIZE bytes: larger
``recv`` sizes cost CPython an mmap per call), its codec turns the bytes into events, and
all events of one selector round go to the processor as ONE ``Round`` (messages.py).
Replies come back as lists of ``(conn_id, bytes | None)``; each passes through the
connection's codec (``respond``), every connection's replies from one round are joined and
sent with one ``send``; only a partial send registers the socket for writing.  ``None``, or
a codec that is ``closing``, closes the connection once its output is flushed.

The loop knows no protocol by name: each connection holds the codec its listening socket's
``Port`` made (protocol/__init__.py), and TLS is the Port's too.

Each loop counts the bytes it reads and sends and the connections it holds per Port (one
integer addition per recv/send); with ``stats_interval`` (the metrics port is on) it
reports the totals to the processing thread as an IO_STATS event every interval.  A Port
that does not ``announce`` its connections (metrics) sends no CONNECT/CLOSED; one with a
``request_timeout`` (metrics) has its slow clients closed.

Loops run on the "io-N" threads for ``-t N >= 1`` and on the main thread for ``-t 0``,
where the loop also owns the listening sockets.  At ``-t 0`` and ``-t 1`` the loop runs the
processor inline (any object with ``handle``/``finish_round``/``timeout``); at ``-t N >= 2``
it posts each round to the processing thread's inbox and reads replies from its Mailbox.
A loop that runs the processor also receives the store thread's STORED messages in its
Mailbox (server.py creates that Mailbox first and hands it to both).
"""

from __future__ import annotations

import functools
import heapq
import logging
import select
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

from . import malloc
from .listener import accept_all
from .mailbox import Mailbox
from .messages import (ADOPT, CALL, CLOSED, CONGESTED, CONNECT, CREDIT, DRAINED, EVENTS,
                       INBOUND_HIGH, IO_STATS, PAUSE_READ, REPLIES, STOP, STORED, Outcome,
                       Reply, Round)
from .protocol import Port

if TYPE_CHECKING:  # pragma: no cover
    from typing import Protocol

    from .protocol import Codec

    class InlineProcessor(Protocol):
        """What ``-t 0``/``-t 1`` loops call on the processor they run (processor.py)."""

        def handle(self, io_id: int, rnd: Round) -> None: ...

        def finish_round(self) -> Dict[int, List[Reply]]: ...

        def timeout(self) -> Optional[float]: ...

        def stored(self, outcomes: List[Outcome]) -> None: ...

    class TimedCodec(Protocol):
        """A codec of a Port with ``request_timeout`` (protocol/__init__.py)."""

        served: int
        partial: bool

log = logging.getLogger("gearmand")

#: Bytes read per recv: above 64 KiB each CPython recv call costs an mmap/munmap pair.
READ_SIZE = 65536
#: ... except while a large request is arriving: then read what it still lacks, up to
#: this much, in one call.  malloc.tune() keeps such buffers off mmap, and fewer recv
#: calls mean fewer GIL hand-offs between threads (1 MiB jobs at -t 4: see performance.md).
MAX_READ_SIZE = 16 * 1024 * 1024
#: Stop reading from a connection while this much output waits for it (backpressure).
PAUSE_READ_AT = 4 * 1024 * 1024
#: Output waiting for a connection above this: it is congested, and the processor pauses
#: the connections that feed it (messages.py, "Backpressure") ...
HIGH_WATER = 4 * 1024 * 1024
#: ... until it falls below this.
LOW_WATER = 1024 * 1024
#: Freed output of at least this size is handed back to the OS (malloc_trim) when its
#: connection closes: any backlog past the high-water mark, so a client closed for
#: stalling (always over it) gives its memory back.
TRIM_AFTER = HIGH_WATER
#: Also trim when a connection closes after this much input since the last trim: a burst
#: of large packets (at -t N >= 2 queued for the processing thread) leaves freed heap that
#: glibc keeps otherwise.
TRIM_INPUT = 64 * 1024 * 1024
#: Output batches up to this size are joined into one send; larger ones use sendmsg.
JOIN_LIMIT = 256 * 1024
#: At stop, how long (s) in total an I/O thread keeps sending replies it already holds.
SHUTDOWN_FLUSH = 1.0
#: Most buffers handed to one sendmsg (Linux UIO_MAXIOV is 1024).
IOV_MAX = 512

Buffer = Union[bytes, memoryview]
Listening = Tuple[socket.socket, Port]

_MAILBOX = object()
#: The conn_id of the loop's own timer in ``_deadlines`` and of its IO_STATS events
#: (connection ids start at 1).
LOOP = 0


EV_READ = select.EPOLLIN
EV_WRITE = select.EPOLLOUT
#: Readiness that means "try recv" (errors and hang-ups surface there).
EV_READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP


class Connection:
    """A socket as its I/O thread sees it (the engine's view of the peer is state.Peer)."""

    __slots__ = ("id", "sock", "fd", "addr", "codec", "passthrough", "wq", "wlen",
                 "close_after", "events", "tls", "handshaking", "congested_at", "paused", "port")

    def __init__(self, conn_id: int, sock: socket.socket, addr: Tuple[str, int],
                 codec: "Codec", port: Port) -> None:
        self.id = conn_id
        self.port = port
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.codec = codec
        self.passthrough = codec.passthrough   # replies as packed, no interim bytes
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.handshaking = self.tls
        self.wq: Sequence[Buffer] = ()  # output the socket has not taken yet (a list if any)
        self.wlen = 0
        self.close_after = False
        self.events = EV_READ
        self.congested_at = 0.0          # monotonic time output passed HIGH_WATER; 0 = not
        self.paused = False              # reading paused by the processor (PAUSE_READ)


class IOLoop:
    """One selector loop.  Built whole: inline ``processor`` or ``post`` to the
    processing thread's inbox; ``listening`` sockets only at ``-t 0``."""

    def __init__(self, io_id: int, max_output: int, *,
                 processor: "Optional[InlineProcessor]" = None,
                 post: Optional[Callable[[Tuple[Any, ...]], None]] = None,
                 listening: Sequence[Listening] = (),
                 next_conn_id: Optional[Callable[[], int]] = None,
                 stall_timeout: float = 0.0, mailbox: Optional[Mailbox] = None,
                 stats_interval: float = 0.0) -> None:
        assert (processor is None) != (post is None), "inline processor or post, not both"
        self.io_id = io_id
        self.max_output = max_output
        self.processor = processor
        self.post = post
        self.listening = list(listening)
        self.next_conn_id = next_conn_id
        self.stall_timeout = stall_timeout     # close a congested client after this; 0 = never
        self.stats_interval = stats_interval   # report IO_STATS this often; 0 = never
        self.bytes_in = 0
        self._posted_at = 0                    # bytes_in when EVENTS were last posted
        self._uncredited = 0                   # posted input not yet credited back
        self._trimmed_at = 0                   # bytes_in at the last malloc_trim
        self.bytes_out = 0
        self.open_by_port: Dict[str, int] = {}
        self.accepted_by_port: Dict[str, int] = {}
        self.mailbox = mailbox if mailbox is not None else Mailbox()
        self._own_mailbox = mailbox is None    # else its creator closes it
        self.epoll = select.epoll()
        self.by_fd: Dict[int, object] = {}
        self.conns: Dict[int, Connection] = {}
        self.running = False
        self._round: Round = []
        self._dirty: Dict[Connection, List[bytes]] = {}
        #: (deadline, conn_id, check): TLS handshakes under way and congested clients,
        #: soonest first; ``check`` tells at the deadline whether the connection overstayed.
        self._deadlines: List[Tuple[float, int, Callable[[Connection], bool]]] = []
        self._on_message: Dict[int, Callable[[Tuple[Any, ...]], None]] = {
            REPLIES: self._on_replies,
            CREDIT: self._on_credit,
            ADOPT: self._on_adopt,
            CALL: self._on_call,
            STOP: self._on_stop,
            STORED: self._on_stored,
        }

    # ---- the loop --------------------------------------------------------------------
    def run(self) -> None:
        epoll = self.epoll
        by_fd = self.by_fd
        self._register(self.mailbox.fileno(), EV_READ, _MAILBOX)
        for listening in self.listening:
            self._register(listening[0].fileno(), EV_READ, listening)
        if self.stats_interval:
            heapq.heappush(self._deadlines, (time.monotonic(), LOOP, _loop_timer))
        self.running = True
        proc = self.processor
        poll = epoll.poll
        read = self._read
        while self.running:
            if self._uncredited > INBOUND_HIGH:
                self._await_credit()
                continue
            timeout = proc.timeout() if proc is not None else None
            if self._deadlines:
                left = max(0.0, self._deadlines[0][0] - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
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
                    self._accept(*data)  # type: ignore[misc]
            if self._deadlines:
                self._expire()
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
        """Hand the round to the processor (inline or posted), take the inline processor's
        replies, send; repeat while closing connections produced more events."""
        proc = self.processor
        while True:
            rnd = self._round
            if rnd:
                self._round = []
                if proc is not None:
                    proc.handle(self.io_id, rnd)
                else:
                    nbytes = self.bytes_in - self._posted_at   # read since the last post
                    self._posted_at = self.bytes_in
                    self._uncredited += nbytes
                    self.post((EVENTS, self.io_id, rnd, nbytes))  # type: ignore[misc]
            if proc is not None:
                for replies in proc.finish_round().values():
                    self._take_replies(replies)
            if self._dirty:
                self._send_dirty()
            if not self._round:
                return

    def _read(self, conn: Connection) -> None:
        missing = conn.codec.missing
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
        self.bytes_in += len(data)
        if conn.passthrough:                    # the Gear port: the hot path
            events = conn.codec.feed(data)
            if events:
                self._round.append((conn.id, events))
        else:
            self._feed(conn, data)

    def _feed(self, conn: Connection, data: bytes) -> None:
        """Feed a codec that may have bytes due before any reply (``interim``)."""
        codec = conn.codec
        events = codec.feed(data)
        if events:
            self._round.append((conn.id, events))
        if codec.interim:
            self._dirty.setdefault(conn, []).append(codec.interim)
            codec.interim = b""
            if codec.closing:               # a refusal: close once it is sent
                conn.close_after = True

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

    def _expire(self) -> None:
        """Close connections whose deadline passed while the reason still holds: a TLS
        handshake not finished (silent peers, and garbage shaped like the start of a TLS
        record), a client whose output stayed over the high-water mark."""
        now = time.monotonic()
        pending = self._deadlines
        while pending and pending[0][0] <= now:
            _, conn_id, overdue = heapq.heappop(pending)
            if conn_id == LOOP:
                self._report_stats(now)
                continue
            conn = self.conns.get(conn_id)
            if conn is not None and overdue(conn):
                self._drop(conn)

    def _report_stats(self, now: float) -> None:
        """Send the processing thread this loop's totals (IO_STATS); re-arm."""
        self._round.append((LOOP, [(IO_STATS, False, (
            self.bytes_in, self.bytes_out, tuple(self.open_by_port.items()),
            tuple(self.accepted_by_port.items())))]))
        heapq.heappush(self._deadlines, (now + self.stats_interval, LOOP, _loop_timer))

    def _want(self, conn: Connection, events: int) -> None:
        if events != conn.events:
            conn.events = events
            self.epoll.modify(conn.fd, events)

    # ---- the mailbox (messages.py: REPLIES, ADOPT, CALL, STOP, STORED) ----------------
    def _mailbox(self) -> None:
        on_message = self._on_message
        for msg in self.mailbox.drain():
            on_message[msg[0]](msg)

    def _on_replies(self, msg: Tuple[Any, ...]) -> None:
        self._uncredited -= msg[2]
        self._take_replies(msg[1])

    def _on_credit(self, msg: Tuple[Any, ...]) -> None:
        self._uncredited -= msg[1]

    def _await_credit(self) -> None:
        """Inbound flow control (messages.py): the processing thread is INBOUND_HIGH bytes
        behind; read no socket, only the mailbox (replies go out meanwhile), until it
        credits enough back."""
        waiter = select.poll()                 # poll: any descriptor number works
        waiter.register(self.mailbox.fileno(), select.POLLIN)
        while self.running and self._uncredited > INBOUND_HIGH:
            waiter.poll(1000)
            self._mailbox()
            self._settle()

    def _on_adopt(self, msg: Tuple[Any, ...]) -> None:
        self._adopt(msg[1], msg[2], msg[3], msg[4])

    def _on_call(self, msg: Tuple[Any, ...]) -> None:
        msg[1]()

    def _on_stop(self, msg: Tuple[Any, ...]) -> None:
        self.running = False

    def _on_stored(self, msg: Tuple[Any, ...]) -> None:
        assert self.processor is not None, "STORED goes to the loop running the processor"
        self.processor.stored(msg[1])

    def _accept(self, lsock: socket.socket, port: Port) -> None:
        assert self.next_conn_id is not None
        for sock, addr in accept_all(lsock):
            self._adopt(self.next_conn_id(), sock, addr, port)

    def _adopt(self, conn_id: int, sock: socket.socket, addr: Tuple[str, int],
               port: Port) -> None:
        if port.tls is not None:
            try:
                sock = port.tls.wrap_socket(sock, server_side=True,
                                            do_handshake_on_connect=False)
            except (ssl.SSLError, OSError) as exc:
                log.info("TLS set-up failed for %s:%d: %s", addr[0], addr[1], exc)
                sock.close()
                return
        conn = Connection(conn_id, sock, addr, port.codec(), port)
        self.conns[conn_id] = conn
        name = port.name
        self.open_by_port[name] = self.open_by_port.get(name, 0) + 1
        self.accepted_by_port[name] = self.accepted_by_port.get(name, 0) + 1
        if conn.handshaking:
            heapq.heappush(self._deadlines, (time.monotonic() + port.handshake_timeout,
                                             conn_id, _handshake_overdue))
        self._register(conn.fd, EV_READ, conn)
        if port.request_timeout:
            self._arm_request_timer(conn)
        if port.announce:
            self._round.append((conn_id, [(CONNECT, False,
                                           (sock.fileno(), addr[0], addr[1]))]))

    # ---- output ----------------------------------------------------------------------
    def _take_replies(self, replies: List[Reply]) -> None:
        """Queue the processor's replies for sending at the end of this round."""
        conns = self.conns
        dirty = self._dirty
        for conn_id, packet in replies:
            conn = conns.get(conn_id)
            if conn is None:
                continue
            if packet.__class__ is bytes and conn.passthrough:   # the Gear port: as packed
                pending = dirty.get(conn)
                if pending is None:
                    dirty[conn] = [packet]
                else:
                    pending.append(packet)
                continue
            if packet.__class__ is not int and packet is not None:   # bytes, or a Snapshot
                codec = conn.codec
                data = codec.respond(packet)
                if data is not None:
                    dirty.setdefault(conn, []).append(data)
                if codec.backlog:
                    self._feed(conn, b"")
                if not codec.closing:
                    continue
            elif packet is not None:            # an int: flow control
                conn.paused = packet == PAUSE_READ
                self._update_interest(conn)
                continue
            conn.close_after = True
            dirty.setdefault(conn, [])

    def _send_dirty(self) -> None:
        dirty = self._dirty
        self._dirty = {}
        conns = self.conns
        for conn, chunks in dirty.items():
            if conn.id not in conns:
                continue
            if chunks:
                if conn.wq:                       # already waiting for EPOLLOUT
                    cast(List[Buffer], conn.wq).extend(chunks)
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
                self.bytes_out += sent
                if sent == len(data):
                    conn.wq = ()
                    conn.wlen = 0
                    return True
                bufs = [data]
            else:
                sent = conn.sock.sendmsg(list(bufs[:IOV_MAX]))
                self.bytes_out += sent
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
        conn.wq = rest or ()
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
            want = EV_WRITE
            if pending > HIGH_WATER and not conn.congested_at:
                self._congested(conn)
        if conn.congested_at and pending < LOW_WATER:
            conn.congested_at = 0.0
            self._round.append((conn.id, [(DRAINED, False, ())]))
        if pending < PAUSE_READ_AT and not conn.close_after and not conn.paused:
            want |= EV_READ
        if want != conn.events:
            conn.events = want
            self.epoll.modify(conn.fd, want)

    def _congested(self, conn: Connection) -> None:
        """Output over the high-water mark: tell the processor (it pauses the producers)
        and, with a stall timeout, arm the deadline that closes a client that never reads."""
        now = time.monotonic()
        conn.congested_at = now
        self._round.append((conn.id, [(CONGESTED, False, ())]))
        if self.stall_timeout:
            heapq.heappush(self._deadlines, (now + self.stall_timeout, conn.id,
                                             self._stalled))

    def _stalled(self, conn: Connection) -> bool:
        stalled = bool(conn.congested_at) and (
            time.monotonic() - conn.congested_at >= self.stall_timeout)
        if stalled:
            log.warning("client %s:%d has not read its output (%d bytes waiting) for %gs, "
                        "closing it", conn.addr[0], conn.addr[1], conn.wlen,
                        self.stall_timeout)
        return stalled

    # ---- closing ---------------------------------------------------------------------
    def _drop(self, conn: Connection) -> None:
        if self.conns.pop(conn.id, None) is None:
            return
        self.open_by_port[conn.port.name] -= 1
        self.unregister(conn.fd)
        try:
            conn.sock.close()
        except OSError:
            pass
        if conn.wlen >= TRIM_AFTER or self.bytes_in - self._trimmed_at >= TRIM_INPUT:
            conn.wq = ()                        # give a slow reader's backlog back
            conn.wlen = 0
            self._trimmed_at = self.bytes_in
            malloc.trim()
        if log.isEnabledFor(logging.INFO):     # as gearmand: one line per closed peer
            log.info("Disconnected %s:%d", conn.addr[0], conn.addr[1])
        if conn.port.announce:
            self._round.append((conn.id, [(CLOSED, False, ())]))

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
        if self._own_mailbox:
            self.mailbox.close()


    def _arm_request_timer(self, conn: Connection) -> None:
        served = cast("TimedCodec", conn.codec).served
        check: Callable[[Connection], bool] = functools.partial(self._slow, served)
        heapq.heappush(self._deadlines, (time.monotonic() + conn.port.request_timeout,
                                         conn.id, check))

    def _slow(self, served: int, conn: Connection) -> bool:
        """True when the connection has had part of a request, and no request completed,
        for a whole request_timeout; otherwise look again one timeout later."""
        codec = cast("TimedCodec", conn.codec)
        if codec.partial and codec.served == served:
            log.info("request from %s:%d not completed in %gs, closing it", conn.addr[0],
                     conn.addr[1], conn.port.request_timeout)
            return True
        self._arm_request_timer(conn)
        return False


def _loop_timer(conn: Connection) -> bool:
    """The loop's own ``_deadlines`` entry (conn_id LOOP): handled by ``_expire`` itself."""
    return False


def _handshake_overdue(conn: Connection) -> bool:
    if conn.handshaking:
        log.info("TLS handshake not completed in time, closing %s:%d", conn.addr[0],
                 conn.addr[1])
    return conn.handshaking
