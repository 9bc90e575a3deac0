"""Listening sockets: bind every -L address of a port, accept and configure client sockets.

``bind_listeners`` runs on the main thread at start-up (before daemonising and before any
privilege drop).  ``accept_all`` runs on whichever thread owns the listening sockets: the
``Listener`` of ``-t >= 1`` (the "main" thread, which deals accepted sockets to the I/O
threads in turn), or the single loop of ``-t 0``.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .errors import ConfigError
from .mailbox import Mailbox
from .messages import ADOPT, CALL
from .protocol import Port
from .settings import Settings

log = logging.getLogger("gearmand")

#: Connections accepted per readiness event before going back to the selector.
ACCEPT_BATCH = 64
#: Pause (s) after accept() fails for lack of descriptors or memory.
ACCEPT_BACKOFF = 0.1


def _keepalive(sock: socket.socket, settings: Settings) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in ((getattr(socket, "TCP_KEEPIDLE", None), settings.keepalive_idle),
                       (getattr(socket, "TCP_KEEPINTVL", None), settings.keepalive_interval),
                       (getattr(socket, "TCP_KEEPCNT", None), settings.keepalive_count)):
        if opt is not None and value != -1:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)


def bind_listeners(settings: Settings, service: str,
                   hosts: Optional[Sequence[str]] = None) -> List[socket.socket]:
    """Bind and listen on ``service`` (a port number or name) at every address of ``-L``
    (all addresses when empty), or of ``hosts`` when given.

    With port 0 the first socket picks the port and the others reuse it.  Raises
    ConfigError with a one-line message when nothing can be bound.
    """
    addresses: List[Optional[str]] = list(settings.listen if hosts is None else hosts)
    sockets: List[socket.socket] = []
    seen = set()
    errors: List[str] = []
    for host in addresses or [None]:
        try:
            infos = socket.getaddrinfo(host, service, socket.AF_UNSPEC, socket.SOCK_STREAM,
                                       0, socket.AI_PASSIVE)
        except (socket.gaierror, UnicodeError) as exc:
            raise ConfigError(f"{host or '*'}:{service}: {exc}") from None
        for family, kind, proto, _, sockaddr in infos:
            addr: Tuple[Any, ...] = tuple(sockaddr)
            if sockets and addr[1] == 0:
                addr = (addr[0], sockets[0].getsockname()[1]) + addr[2:]
            key = (family, addr[:2])
            if key in seen:
                continue
            seen.add(key)
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if settings.keepalive:
                    _keepalive(sock, settings)
                sock.bind(addr)
                sock.listen(settings.backlog)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EAFNOSUPPORT or (
                        host is None and exc.errno == errno.EADDRNOTAVAIL):
                    continue
                errors.append(f"{addr[0]!s}:{addr[1]}: {exc.strerror}")
                continue
            sock.setblocking(False)
            name = sock.getsockname()
            log.info("Listening on %s:%d (%d)", name[0], name[1], sock.fileno())
            sockets.append(sock)
    if errors:
        for sock in sockets:
            sock.close()
        raise ConfigError("Could not bind to " + "; ".join(errors))
    if not sockets:
        raise ConfigError(f"Could not bind to any address for port {service}")
    return sockets


def accept_all(lsock: socket.socket) -> List[Tuple[socket.socket, Tuple[str, int]]]:
    """Accept what is pending (bounded) and configure each socket as gearmand does."""
    accepted = []
    info = log.isEnabledFor(logging.INFO)
    for _ in range(ACCEPT_BATCH):
        try:
            sock, addr = lsock.accept()
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:  # EMFILE, ECONNABORTED...: log, keep serving
            log.error("accept() failed: %s", exc.strerror)
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # The backlog stays readable: back off instead of spinning on the error.
                time.sleep(ACCEPT_BACKOFF)
            break
        sock.setblocking(False)
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:
            pass
        if info:
            log.info("Accepted connection from %s:%d", addr[0], addr[1])
        accepted.append((sock, (addr[0], addr[1])))
    return accepted


Listening = Tuple[socket.socket, Port]


class Listener:
    """The accept loop of ``-t >= 1`` (main thread): a selector over the listening sockets
    and the main thread's Mailbox.  Accepted sockets go to the I/O threads' mailboxes in
    turn (N, N-1, ..., 1, as gearmand deals them) as ADOPT messages; CALL messages run on
    this thread (signals, crash reports, stop); ``tick`` (the CPU pinner's re-check) runs
    after every wake-up and at least every ``tick_interval`` seconds."""

    def __init__(self, listening: Sequence[Listening], io_mailboxes: Sequence[Mailbox],
                 next_conn_id: Callable[[], int],
                 tick: Optional[Callable[[], None]] = None, tick_interval: float = 0.0) -> None:
        self.listening = list(listening)
        self.mailbox = Mailbox()
        self.io_mailboxes = list(io_mailboxes)[::-1]
        self.next_conn_id = next_conn_id
        self.running = False
        self._turn = 0
        self._selector = selectors.DefaultSelector()
        self.tick = tick                   # called at least every tick_interval seconds
        self.tick_interval = tick_interval if tick is not None else None

    def run(self) -> None:
        sel = self._selector
        sel.register(self.mailbox.fileno(), selectors.EVENT_READ, None)
        for listening in self.listening:
            sel.register(listening[0], selectors.EVENT_READ, listening)
        self.running = True
        while self.running:
            for key, _ in sel.select(self.tick_interval):
                if key.data is None:
                    self._mailbox()
                    if not self.running:
                        break
                else:
                    self._accept(*key.data)
            if self.tick is not None:
                self.tick()
        sel.close()

    def _mailbox(self) -> None:
        for msg in self.mailbox.drain():
            if msg[0] == CALL:
                msg[1]()
        open_now = {lsock for lsock, _ in self.listening}
        for key in list(self._selector.get_map().values()):   # forget closed sockets
            if key.data is not None and key.fileobj not in open_now:
                self._selector.unregister(key.fileobj)

    def _accept(self, lsock: socket.socket, port: Port) -> None:
        mailboxes = self.io_mailboxes
        for sock, addr in accept_all(lsock):
            mailbox = mailboxes[self._turn % len(mailboxes)]
            self._turn += 1
            mailbox.put((ADOPT, self.next_conn_id(), sock, addr, port))

    def close_listening(self, graceful: bool = False) -> None:
        """Stop accepting; on this thread.  A graceful stop keeps the ports that stay open
        (Port.stays_open: metrics) until the end."""
        closing, kept = split_graceful(self.listening, graceful)
        close_all(closing)
        self.listening = kept


def split_graceful(listening: Sequence[Listening],
                   graceful: bool) -> Tuple[List[Listening], List[Listening]]:
    """(the sockets to close now, the ones kept): a graceful stop keeps Port.stays_open."""
    closing = [entry for entry in listening if not (graceful and entry[1].stays_open)]
    return closing, [entry for entry in listening if graceful and entry[1].stays_open]


def close_all(listening: Sequence[Listening]) -> None:
    for lsock, _ in listening:
        try:
            lsock.close()
        except OSError:
            pass
