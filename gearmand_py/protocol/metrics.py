"""The metrics port (``--metrics-port``): Prometheus metrics, a health check and a live
status page over HTTP, served by the I/O threads.

``MetricsSession`` is a sans-IO codec like http.HttpSession (h11 parses, one request at a
time, keep-alive, pipelined requests wait their turn).  Routes:

* ``GET /metrics``     -> a SNAPSHOT event (VIEW_METRICS); the Snapshot the processor
  answers with is rendered here, in the I/O thread, as Prometheus text or OpenMetrics
  (by the Accept header; exposition.py, with prometheus_client);
* ``GET /status.json`` -> SNAPSHOT (VIEW_STATUS), rendered as JSON for the status page;
* ``GET /healthz``     -> SNAPSHOT (VIEW_HEALTH): ``200 ok``, or ``503`` and the reason;
* ``GET /`` and the page's files -> answered from the package's files (gearmand_py/web/)
  without troubling the processor.

HEAD works wherever GET does; other methods get 405, other paths 404.  Malformed or
oversized requests get 400/413 and the connection closes, and so does a client that leaves
a request incomplete for REQUEST_TIMEOUT (``partial``/``served`` tell the I/O loop);
nothing else is affected.
``PLUGIN`` puts it on ``--metrics-port`` at ``--metrics-address``; its connections are not
Gearman peers (``Port.announce`` is False) and its listener stays open during a graceful
stop, so the drain can be watched.  The I/O thread that owns a connection owns its session.
"""

from __future__ import annotations

import functools
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import h11

from .. import __version__
from ..messages import PROTOCOL_ERROR, SNAPSHOT, VIEW_HEALTH, VIEW_METRICS, VIEW_STATUS, Event
from ..settings import Settings
from . import Plugin, Port
from .http import h11_response

if TYPE_CHECKING:  # pragma: no cover
    from ..exposition import Renderer
    from ..snapshot import Snapshot

#: Longest request head accepted.
MAX_HEAD = 8192
#: Longest request body accepted (requests here need none).
MAX_BODY = 65536
#: Input buffered behind a request still being answered, at most.
MAX_PIPELINED = 65536
#: A request begun but not completed within this many seconds closes its connection.
REQUEST_TIMEOUT = 10.0
SERVER = b"gearmand-py/" + __version__.encode()
READ_METHODS = frozenset((b"GET", b"HEAD"))
VERSIONS = frozenset((b"1.0", b"1.1"))

Headers = List[Tuple[bytes, bytes]]
#: (status, headers, body) of a response.
Answer = Tuple[int, Headers, bytes]

#: Paths answered from a snapshot, and which view each asks for.
VIEWS: Dict[bytes, int] = {
    b"/metrics": VIEW_METRICS,
    b"/status.json": VIEW_STATUS,
    b"/healthz": VIEW_HEALTH,
}


class MetricsSession:
    __slots__ = ("_renderer", "_h11", "_busy", "_view", "_path", "_method", "_accept",
                 "_body", "closing", "interim", "backlog", "served")

    #: Requests are small: read with the I/O thread's usual read size.
    missing = 0
    passthrough = False

    def __init__(self, renderer: "Renderer") -> None:
        self._renderer = renderer
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._busy = False          # a SNAPSHOT is with the processor
        self._view = VIEW_METRICS
        self._path = b"/"
        self._method = b"GET"
        self._accept = ""
        self._body = 0
        self.closing = False
        self.interim = b""
        self.backlog = False
        self.served = 0             # requests completed (Port.request_timeout)

    @property
    def partial(self) -> bool:
        """Part of a request is buffered and the client owes the rest."""
        if self._busy:
            return False
        return bool(self._h11.trailing_data[0]) or self._h11.their_state is h11.SEND_BODY

    # ---- bytes in -------------------------------------------------------------------
    def feed(self, data: bytes) -> List[Event]:
        if self.closing:
            return []
        if data:
            self._h11.receive_data(data)
        self.backlog = False
        if self._busy:
            if len(self._h11.trailing_data[0]) > MAX_PIPELINED:
                return self._fail(400, b"too much pipelined input")
            return []
        try:
            return self._parse()
        except h11.RemoteProtocolError as exc:
            return self._fail(exc.error_status_hint, str(exc).encode("utf-8", "replace"))

    def _parse(self) -> List[Event]:
        conn = self._h11
        while not self.closing:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return []
            if isinstance(event, h11.Request):
                # h11 bounds a head that arrives in pieces; one read can bring a whole one
                size = len(event.target) + sum(len(n) + len(v) for n, v in event.headers)
                if size > MAX_HEAD:
                    return self._fail(431, b"request head too large")
                if event.http_version not in VERSIONS:
                    return self._fail(505, b"HTTP/1.0 or 1.1 only")
                self._method = bytes(event.method)
                self._accept = ""
                self._body = 0
                for name, value in event.headers:
                    if name == b"accept":
                        self._accept = bytes(value).decode("latin-1")
                path = bytes(event.target).split(b"?", 1)[0]
                view = VIEWS.get(path)
                self._view = -1 if view is None else view
                self._path = path
            elif isinstance(event, h11.Data):
                self._body += len(event.data)
                if self._body > MAX_BODY:
                    return self._fail(413, b"request body too large")
            elif isinstance(event, h11.EndOfMessage):
                self.served += 1
                if self._method not in READ_METHODS:
                    self.interim += self._answer((405, [(b"Allow", b"GET, HEAD")],
                                                  b"GET or HEAD only\n"))
                elif self._view >= 0:
                    self._busy = True
                    return [(SNAPSHOT, False, (self._view,))]
                else:
                    self.interim += self._answer(self._renderer.static(self._path))
            else:                   # ConnectionClosed
                return []
        return []

    def _fail(self, status: int, message: bytes) -> List[Event]:
        """Refuse the input: an error response, then the connection closes."""
        out = (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
               b"Connection: close\r\nServer: %s\r\n\r\n%s\n"
               % (status, HTTPStatus(status).phrase.encode(), len(message) + 1, SERVER,
                  message))
        self.closing = True
        self.interim += out
        return [(PROTOCOL_ERROR, False, (message,))]

    # ---- replies out ----------------------------------------------------------------
    def respond(self, packet: Any) -> Optional[bytes]:
        """The HTTP bytes for the Snapshot the processor answered with."""
        if self.closing or not self._busy:
            return None
        self._busy = False
        snap: "Snapshot" = packet
        out = self._answer(_RENDER[self._view](self._renderer, snap, self._accept))
        if not self.closing:
            self.backlog = True     # a pipelined request may be waiting
        return out

    def _answer(self, answer: Answer) -> bytes:
        status, headers, body = answer
        headers = headers + [(b"Content-Length", b"%d" % len(body)), (b"Server", SERVER),
                             (b"Cache-Control", b"no-store")]
        out, open_ = h11_response(self._h11, status, HTTPStatus(status).phrase.encode(),
                                  headers, body, self._method != b"HEAD")
        if not open_:
            self.closing = True
        return out


#: view -> how its Snapshot becomes a response.
_RENDER: Dict[int, Callable[["Renderer", "Snapshot", str], Answer]] = {
    VIEW_METRICS: lambda r, snap, accept: r.metrics(snap, accept),
    VIEW_STATUS: lambda r, snap, accept: r.status(snap),
    VIEW_HEALTH: lambda r, snap, accept: r.health(snap),
}


def _listen_port(settings: Settings) -> Optional[str]:
    return None if settings.metrics_port is None else str(settings.metrics_port)


def _listen_hosts(settings: Settings) -> Tuple[str, ...]:
    return (settings.metrics_address,)


def _open(settings: Settings) -> Port:
    from ..exposition import Renderer   # needs prometheus_client: only when the port is on
    return Port("Metrics", functools.partial(MetricsSession, Renderer()), announce=False,
                stays_open=True, request_timeout=REQUEST_TIMEOUT)


PLUGIN = Plugin(None, _listen_port, _open, _listen_hosts)
