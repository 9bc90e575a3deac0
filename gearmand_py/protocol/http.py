"""Sans-IO HTTP front end (``-r http``): one HTTP request becomes one Gearman request, and
the job's result becomes the HTTP response, as gearmand's HTTP protocol module does.

Requests are parsed by ``h11`` (RFC 9112), so framing is never guessed: chunked bodies,
``Expect: 100-continue`` and keep-alive work, and ambiguous framing (both Content-Length
and Transfer-Encoding, the request-smuggling pair) is refused with ``400`` and a close.

``HttpSession.feed(bytes)`` returns codec-style events (``(cmd, True, args)``, or a
``PROTOCOL_ERROR`` event); ``respond(packet)`` turns a reply packet that the processor sent
to this connection into the HTTP response bytes, or None while the response is not due
yet.  One request is served at a time, in order: the next one is parsed only after the
current response (``backlog`` then tells the I/O thread to call ``feed(b"")``).
``interim`` holds bytes due before any reply (``100 Continue``, a ``400``).  An HTTP/1.0
request gets gearmand 1.1.20's response bytes exactly and the connection closes
(``closing``); an HTTP/1.1 request gets an HTTP/1.1 response and the connection stays
open unless the client asked to close.  The I/O thread that owns the connection owns its
session; no sockets, threads or clocks here.  ``PLUGIN`` puts it on ``--http-port`` when
``-r http`` is given.

Mapping (as gearmand's libgearman-server/plugins/protocol/http/protocol.cc): ``/fn`` is the
function (leading slashes stripped, no decoding); ``X-Gearman-Unique`` (default ``-``),
``X-Gearman-Background: true``, ``X-Gearman-Priority: high|low``; the body (POST/PUT only)
is the workload.  An empty function name is an ECHO and answers ``404 NOT_FOUND``.
Deliberate fixes over 1.1.20: WORK_DATA chunks are collected and the response is sent when
the job ends (WORK_COMPLETE/FAIL/EXCEPTION), HEAD sends no body, an unknown method gets
``405 METHOD_NOT_ALLOWED`` instead of a silent close, and an ERROR reply becomes ``500``.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import h11

from .. import COMPAT_VERSION, compat
from ..messages import PROTOCOL_ERROR, Event
from ..settings import Settings
from . import Plugin, Port
from .codec import HEADER
from .commands import HEADER_SIZE, NAMES, Cmd

#: Longest request head (request line + headers) accepted.
MAX_HEAD = 8192
METHODS = frozenset((b"GET", b"POST", b"PUT", b"HEAD"))
WITH_BODY = frozenset((b"POST", b"PUT"))
VERSIONS = frozenset((b"1.0", b"1.1"))
SERVER = b"Gearman/" + COMPAT_VERSION.encode()
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_SUBMIT = {  # (background, priority header) -> command
    (False, b"high"): Cmd.SUBMIT_JOB_HIGH, (False, b"normal"): Cmd.SUBMIT_JOB,
    (False, b"low"): Cmd.SUBMIT_JOB_LOW, (True, b"high"): Cmd.SUBMIT_JOB_HIGH_BG,
    (True, b"normal"): Cmd.SUBMIT_JOB_BG, (True, b"low"): Cmd.SUBMIT_JOB_LOW_BG,
}
_FINAL = frozenset((Cmd.WORK_COMPLETE, Cmd.WORK_FAIL, Cmd.WORK_EXCEPTION))

Headers = List[Tuple[bytes, bytes]]
#: What a reply turns into: status code, reason, headers (without length/server), body.
Reply = Tuple[int, bytes, Headers, bytes]


def ordered_headers(ok: bool, headers: Headers, length: int, server: bytes,
                    close: bool = False) -> Headers:
    """gearmand's header order: a 200 ends with Content-Length, Server (and 2.0's
    Connection: close); any other status has Server (Connection) before Content-Length."""
    tail: Headers = [(b"Server", server)]
    if close:
        tail.append((b"Connection", b"close"))
    size = [(b"Content-Length", b"%d" % length)]
    return headers + (size + tail if ok else tail + size)


def h11_response(conn: h11.Connection, status: int, reason: bytes, headers: Headers,
                 body: bytes, send_body: bool = True) -> Tuple[bytes, bool]:
    """One whole response through h11 (HTTP/1.1); returns its bytes and whether the
    connection stays open (then the next request cycle has started)."""
    out = conn.send(h11.Response(status_code=status, reason=reason, headers=headers))
    if send_body and body:
        out += conn.send(h11.Data(data=body))
    out += conn.send(h11.EndOfMessage())
    if conn.our_state is h11.MUST_CLOSE:
        return out, False
    conn.start_next_cycle()
    return out, True


def response(status: bytes, headers: Headers, body: bytes = b"", send_body: bool = True,
             server: bytes = SERVER, version: bytes = b"HTTP/1.0",
             close: bool = False) -> bytes:
    """gearmand's response bytes: 1.1.20's HTTP/1.0 ones, or 2.0.0's to an HTTP/1.1
    request (``version`` HTTP/1.1, ``close``: a Connection: close header)."""
    lines = [version + b" " + status]
    lines += [name + b": " + value for name, value in
              ordered_headers(status.startswith(b"200 "), headers, len(body), server, close)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body if send_body else b"")


class HttpSession:
    __slots__ = ("max_body", "server", "http11_close", "_h11", "_request", "_body", "_size",
                 "_busy", "method", "handle", "chunks", "closing", "interim", "backlog")

    #: Requests are read with the I/O thread's usual read size; replies are rewritten.
    missing = 0
    passthrough = False

    def __init__(self, max_body: int, server: bytes = SERVER,
                 http11_close: bool = False) -> None:
        self.max_body = max_body
        self.server = server                # the Server header's value
        self.http11_close = http11_close    # --compat=2.0: HTTP/1.1 replies, then close
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._request: Optional[h11.Request] = None
        self._body: List[bytes] = []
        self._size = 0
        self._busy = False          # a request is with the processor
        self.method = b""
        self.handle = b""
        self.chunks: List[bytes] = []
        self.closing = False
        self.interim = b""
        self.backlog = False

    # ---- bytes in -------------------------------------------------------------------
    def feed(self, data: bytes) -> List[Event]:
        if self.closing:
            return []
        if data:
            self._h11.receive_data(data)
        self.backlog = False
        if self._busy:
            return []               # the next request waits for this response
        try:
            return self._parse()
        except h11.RemoteProtocolError as exc:
            return self._fail(400, b"Bad Request", str(exc).encode("utf-8", "replace"))

    def _parse(self) -> List[Event]:
        conn = self._h11
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return []
            if isinstance(event, h11.Request):
                refused = self._start(event)
                if refused:
                    return refused
            elif isinstance(event, h11.Data):
                self._size += len(event.data)
                if self._size > self.max_body:
                    return self._fail(413, b"Payload Too Large", b"HTTP body too large")
                self._body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._busy = True
                return [self._job()]
            else:                   # ConnectionClosed
                return []

    def _start(self, request: h11.Request) -> List[Event]:
        if request.http_version not in VERSIONS:
            return self._fail(505, b"HTTP Version Not Supported", b"HTTP/1.0 or 1.1 only")
        names = {name for name, _ in request.headers}
        if b"transfer-encoding" in names and b"content-length" in names:
            return self._fail(400, b"Bad Request",
                              b"both Content-Length and Transfer-Encoding (RFC 9112 6.1)")
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self.max_body:
                return self._fail(413, b"Payload Too Large", b"HTTP body too large")
        self._request = request
        self.method = request.method
        self._body = []
        self._size = 0
        self.chunks = []
        if self._h11.they_are_waiting_for_100_continue:
            self.interim += CONTINUE
        return []

    def _header(self, name: bytes, default: bytes = b"") -> bytes:
        assert self._request is not None
        for key, value in self._request.headers:
            if key == name:
                return bytes(value).strip()
        return default

    def _job(self) -> Event:
        request = self._request
        assert request is not None
        if self.method not in METHODS:
            return (Cmd.ECHO_REQ, True, (b"",))        # answered by respond() as 405
        body = b"".join(self._body) if self.method in WITH_BODY else b""
        function = bytes(request.target).lstrip(b"/")
        if not function:
            return (Cmd.ECHO_REQ, True, (body,))
        priority = self._header(b"x-gearman-priority").lower()
        if priority not in (b"high", b"low"):
            priority = b"normal"
        unique = self._header(b"x-gearman-unique", b"-")
        return (_SUBMIT[(self._is_background(), priority)], True, (function, unique, body))

    def _is_background(self) -> bool:
        return self._header(b"x-gearman-background").lower() == b"true"

    def _fail(self, status: int, reason: bytes, message: bytes) -> List[Event]:
        """Refuse the request: an error response, then the connection closes."""
        self.closing = True
        self.interim += response(b"%d %s" % (status, reason), [], message + b"\n",
                                 server=self.server)
        return [(PROTOCOL_ERROR, False, (message,))]

    # ---- replies out ----------------------------------------------------------------
    def respond(self, packet: bytes) -> Optional[bytes]:
        """The HTTP bytes for a reply packet, or None when nothing is due yet."""
        reply = self._reply(packet)
        if reply is None:
            return None
        status, reason, headers, body = reply
        send_body = self.method != b"HEAD"
        request = self._request
        if request is None or request.http_version != b"1.1" or self.http11_close:
            self.closing = True
            http11 = request is not None and request.http_version == b"1.1"
            return response(b"%d %s" % (status, reason), headers, body, send_body,
                            self.server, b"HTTP/1.1" if http11 else b"HTTP/1.0", http11)
        headers = ordered_headers(status == 200, headers, len(body), self.server)
        out, open_ = h11_response(self._h11, status, reason, headers, body, send_body)
        if not open_:
            self.closing = True
        else:
            self._busy = False
            self._request = None
            self.backlog = True     # a pipelined request may be waiting
        return out

    def _reply(self, packet: bytes) -> Optional[Reply]:
        _, cmd, size = HEADER.unpack_from(packet)
        payload = packet[HEADER_SIZE:HEADER_SIZE + size]
        if self.method not in METHODS:
            return 405, b"METHOD_NOT_ALLOWED", [], b""
        if cmd == Cmd.ECHO_RES:
            return 404, b"NOT_FOUND", [], b""
        if cmd == Cmd.ERROR:
            code, _, text = payload.partition(b"\0")
            return (500, b"INTERNAL_SERVER_ERROR",
                    [(b"X-Gearman-Command", b"ERROR"), (b"X-Gearman-Error", code)], text)
        if cmd == Cmd.JOB_CREATED:
            self.handle = payload
            if self._is_background():
                return (200, b"OK", [(b"X-Gearman-Job-Handle", payload),
                                     (b"X-Gearman-Command", b"JOB_CREATED")], b"")
            return None
        handle, _, data = payload.partition(b"\0")
        if cmd == Cmd.WORK_DATA:
            self.chunks.append(data)
            return None
        if cmd not in _FINAL:
            return None          # WORK_STATUS / WORK_WARNING: progress, not the answer
        body = b"".join(self.chunks) + data
        return (200, b"OK", [(b"X-Gearman-Job-Handle", handle),
                             (b"X-Gearman-Command", NAMES[cmd].encode())], body)


def _listen_port(settings: Settings) -> Optional[str]:
    return settings.http_port if settings.protocol == "http" else None


def _open(settings: Settings) -> Port:
    mode = compat.MODES[settings.compat]
    return Port("HTTP", functools.partial(HttpSession, settings.max_packet_size,
                                          b"Gearman/" + mode.version.encode(),
                                          mode.http11_close))


PLUGIN = Plugin("http", _listen_port, _open)
