"""Wire protocols as plugins on their listening sockets.

A protocol is a module in this package that defines ``PLUGIN`` (a ``Plugin``).  At start-up
the main thread asks every plugin on which port it listens (``listen_port(settings)``, None
when it is off) and builds its ``Port``: the protocol's name, the factory of its
per-connection codec and, for the Gear port with ``--ssl``, a TLS context.  A plugin
binds the ``-L`` addresses unless it names its own (``listen_hosts``, e.g.
``--metrics-address``).  Each listening socket carries its Port; the I/O thread that
adopts a connection makes the codec and from then on knows it only through the ``Codec``
interface below, never by protocol name.

Adding a protocol means one new module here (and its options in the option table).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import ssl
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from typing import Protocol

    from ..messages import Event
    from ..settings import Settings

    class Codec(Protocol):
        """One connection's sans-IO codec; owned by the I/O thread that owns the socket."""

        #: True when replies go out exactly as packed and ``interim``/``backlog``/``closing``
        #: never change (the I/O thread then skips them on its hot path).
        passthrough: bool
        #: Set once the codec wants its connection closed after the replies queued so far
        #: (set by ``feed`` together with ``interim``: once those bytes are sent).
        closing: bool
        #: Bytes to send before any reply (e.g. HTTP's "100 Continue"); the I/O thread
        #: takes them after each ``feed`` and empties it.
        interim: bytes
        #: Set by ``respond`` when input is buffered that ``feed(b"")`` may now turn into
        #: events (a request that waited for the previous response).
        backlog: bool

        @property
        def missing(self) -> int:
            """Bytes still to come for the request being received (0 if unknown)."""

        def feed(self, data: bytes) -> List[Event]:
            """Bytes in; the complete requests (and pseudo-events) they finish, out."""

        def respond(self, packet: Any) -> Optional[bytes]:
            """A reply packet from the processor (bytes; a snapshot.Snapshot for the
            metrics codec) -> the bytes to send (None: nothing yet)."""
else:
    Codec = object


@dataclasses.dataclass(frozen=True)
class Port:
    """What a listening socket speaks: built once at start-up, shared by I/O threads."""

    name: str                                   # "Gear", "HTTP": for logs
    codec: Callable[[], "Codec"]                # a new codec for each connection
    tls: Optional[ssl.SSLContext] = None        # wrap accepted sockets (server side)
    handshake_timeout: float = 0.0              # seconds to finish the TLS handshake
    note: str = ""                              # appended to the "Initializing" log line
    #: Its connections are Gearman peers: the processor hears of them (CONNECT/CLOSED).
    #: False for the metrics port, whose requests reach the processor only as SNAPSHOT.
    announce: bool = True
    #: Keeps listening during a graceful stop (the metrics port: watch the drain).
    stays_open: bool = False
    #: Close a connection whose request stays incomplete this long (seconds; 0 = never):
    #: slow clients.  Its codec then also has ``served`` (requests completed so far) and
    #: ``partial`` (part of a request is buffered and the client owes the rest).
    request_timeout: float = 0.0


@dataclasses.dataclass(frozen=True)
class Plugin:
    """A protocol module's entry point (main thread, start-up only)."""

    #: The ``-r``/``--protocol`` name that loads it, or None when it is not loaded by -r
    #: (always on, or switched on by an option of its own).
    module: Optional[str]
    #: The port to listen on, or None when the protocol is off.
    listen_port: Callable[["Settings"], Optional[str]]
    #: Builds the Port (may raise ConfigError, e.g. an unreadable TLS key).
    open: Callable[["Settings"], Port]
    #: The addresses to bind, when not -L's.
    listen_hosts: Optional[Callable[["Settings"], Tuple[str, ...]]] = None


def plugins() -> List[Plugin]:
    """Every protocol module's PLUGIN, in module-name order (Gear binds first)."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != "gear", m.name)):
        module = importlib.import_module(f"{__name__}.{info.name}")
        plugin = getattr(module, "PLUGIN", None)
        if isinstance(plugin, Plugin):
            found.append(plugin)
    return found


def loadable() -> List[str]:
    """The names ``-r`` accepts."""
    return sorted(p.module for p in plugins() if p.module is not None)
