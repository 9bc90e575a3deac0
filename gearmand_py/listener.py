"""Listening sockets: bind every -L/-p address, accept and configure client sockets.

``bind_listeners`` runs on the main thread at start-up (before daemonising and before any
privilege drop).  ``accept_all`` runs on whichever thread owns the listening sockets: the
"main" listener thread, or the single loop of ``-t 0``.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from typing import Any, List, Optional, Tuple

from .errors import ConfigError
from .settings import Settings

log = logging.getLogger("gearmand")

DEFAULT_PORT = "4730"
#: Connections accepted per readiness event before going back to the selector.
ACCEPT_BATCH = 64
#: Pause (s) after accept() fails for lack of descriptors or memory.
ACCEPT_BACKOFF = 0.1


def _port(settings: Settings) -> str:
    port = settings.port
    if port == "":
        try:
            return str(socket.getservbyname("gearman", "tcp"))
        except OSError:
            return DEFAULT_PORT
    return port


def _keepalive(sock: socket.socket, settings: Settings) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in ((getattr(socket, "TCP_KEEPIDLE", None), settings.keepalive_idle),
                       (getattr(socket, "TCP_KEEPINTVL", None), settings.keepalive_interval),
                       (getattr(socket, "TCP_KEEPCNT", None), settings.keepalive_count)):
        if opt is not None and value != -1:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)


def bind_listeners(settings: Settings, port: Optional[str] = None) -> List[socket.socket]:
    """Bind and listen on every address of ``-L`` (all addresses when empty) and ``-p``.

    With port 0 the first socket picks the port and the others reuse it.  Raises
    ConfigError with a one-line message when nothing can be bound.
    """
    service = _port(settings) if port is None else port
    hosts: List[Optional[str]] = list(settings.listen) or [None]
    sockets: List[socket.socket] = []
    seen = set()
    errors: List[str] = []
    for host in hosts:
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
