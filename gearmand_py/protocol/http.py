"""Sans-IO HTTP front end (``-r http``): one HTTP request becomes one Gearman request, and
the job's result becomes the HTTP response, as gearmand's HTTP protocol module does.

``HttpSession.feed(bytes)`` returns codec-style events (``(cmd, True, args)``, or a
``PROTOCOL_ERROR`` event); ``respond(packet)`` turns a reply packet that the processor sent
to this connection into the HTTP response bytes, or None while the response is not due
yet.  After a response the connection is closed (HTTP/1.0, like gearmand): ``closing`` is
set.  The I/O thread that owns the connection owns its session; no sockets, threads or
clocks here.  ``PLUGIN`` puts it on ``--http-port`` when ``-r http`` is given.

Mapping (as gearmand's libgearman-server/plugins/protocol/http/protocol.cc): ``/fn`` is the
function (leading slashes stripped, no decoding);
``X-Gearman-Unique`` (default ``-``), ``X-Gearman-Background: true``,
``X-Gearman-Priority: high|low``; the body (Content-Length, POST/PUT only) is the workload.
An empty function name is an ECHO and answers ``404 NOT_FOUND``.  Deliberate fixes over
1.1.20: WORK_DATA chunks are collected and the response is sent when the job ends
(WORK_COMPLETE/FAIL/EXCEPTION), HEAD sends no body, an unknown method gets
``405 METHOD_NOT_ALLOWED`` instead of a silent close, and an ERROR reply becomes ``500``.
"""

from __future__ import annotations

import functools
from email.parser import BytesHeaderParser
from typing import List, Optional, Tuple

from .. import COMPAT_VERSION
from ..messages import PROTOCOL_ERROR, Event
from ..settings import Settings
from . import Plugin, Port
from .codec import HEADER
from .commands import HEADER_SIZE, NAMES, Cmd

#: Longest request head (request line + headers) accepted.
MAX_HEAD = 8192
METHODS = frozenset((b"GET", b"POST", b"PUT", b"HEAD"))
VERSIONS = frozenset((b"HTTP/1.0", b"HTTP/1.1"))
SERVER = b"Gearman/" + COMPAT_VERSION.encode()

_SUBMIT = {  # (background, priority header) -> command
    (False, "high"): Cmd.SUBMIT_JOB_HIGH, (False, "normal"): Cmd.SUBMIT_JOB,
    (False, "low"): Cmd.SUBMIT_JOB_LOW, (True, "high"): Cmd.SUBMIT_JOB_HIGH_BG,
    (True, "normal"): Cmd.SUBMIT_JOB_BG, (True, "low"): Cmd.SUBMIT_JOB_LOW_BG,
}
_FINAL = frozenset((Cmd.WORK_COMPLETE, Cmd.WORK_FAIL, Cmd.WORK_EXCEPTION))


def response(status: bytes, headers: List[Tuple[bytes, bytes]], body: bytes = b"",
             send_body: bool = True) -> bytes:
    lines = [b"HTTP/1.0 " + status]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Server: " + SERVER)
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body if send_body else b"")


class HttpSession:
    __slots__ = ("max_body", "_buf", "_head", "_length", "method", "handle", "chunks",
                 "finished", "closing")

    #: Requests are read whole by the I/O thread's usual read size.
    missing = 0

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self._buf = b""
        self._head: Optional[Tuple[bytes, bytes, dict]] = None
        self._length = 0
        self.method = b""
        self.handle = b""
        self.chunks: List[bytes] = []
        self.finished = False
        self.closing = False

    def feed(self, data: bytes) -> List[Event]:
        if self.finished:
            return []
        self._buf += data
        if self._head is None:
            end = self._buf.find(b"\r\n\r\n")
            sep = 4
            if end < 0:
                end, sep = self._buf.find(b"\n\n"), 2
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    return self._fail(b"HTTP request head too long")
                return []
            head, self._buf = self._buf[:end], self._buf[end + sep:]
            line, _, header_block = head.partition(b"\n")
            parts = line.rstrip(b"\r").split(b" ")
            if len(parts) != 3 or parts[2] not in VERSIONS:
                return self._fail(b"bad HTTP request line")
            method, uri = parts[0], parts[1]
            parsed = BytesHeaderParser().parsebytes(header_block + b"\n\n")
            self.method = method
            if method not in METHODS:
                self.finished = True
                return [(Cmd.ECHO_REQ, True, (b"",)), ]  # answered by respond() as 405
            length = 0
            if method in (b"POST", b"PUT"):
                try:
                    length = int(parsed.get("Content-Length", "0"))
                except ValueError:
                    return self._fail(b"bad Content-Length")
                if length < 0 or length > self.max_body:
                    return self._fail(b"HTTP body too large")
            self._length = length
            self._head = (method, uri, {k.lower(): v for k, v in parsed.items()})
        if len(self._buf) < self._length:
            return []
        method, uri, headers = self._head
        body = self._buf[:self._length] if method in (b"POST", b"PUT") else b""
        self._buf = b""
        self.finished = True
        function = uri.lstrip(b"/")
        if not function:
            return [(Cmd.ECHO_REQ, True, (body,))]
        background = headers.get("x-gearman-background", "").strip().lower() == "true"
        priority = headers.get("x-gearman-priority", "").strip().lower()
        if priority not in ("high", "low"):
            priority = "normal"
        unique = headers.get("x-gearman-unique", "-").strip().encode("latin-1")
        return [(_SUBMIT[(background, priority)], True, (function, unique, body))]

    def _fail(self, message: bytes) -> List[Event]:
        self.finished = True
        return [(PROTOCOL_ERROR, False, (message,))]

    def respond(self, packet: bytes) -> Optional[bytes]:
        """The HTTP bytes for a reply packet, or None when nothing is due yet."""
        reply = self._reply(packet)
        if reply is not None:
            self.closing = True
        return reply

    def _reply(self, packet: bytes) -> Optional[bytes]:
        _, cmd, size = HEADER.unpack_from(packet)
        payload = packet[HEADER_SIZE:HEADER_SIZE + size]
        if self.method not in METHODS:
            return response(b"405 METHOD_NOT_ALLOWED", [])
        send_body = self.method != b"HEAD"
        if cmd == Cmd.ECHO_RES:
            return response(b"404 NOT_FOUND", [])
        if cmd == Cmd.ERROR:
            code, _, text = payload.partition(b"\0")
            return response(b"500 INTERNAL_SERVER_ERROR",
                            [(b"X-Gearman-Command", b"ERROR"), (b"X-Gearman-Error", code)],
                            text, send_body)
        if cmd == Cmd.JOB_CREATED:
            self.handle = payload
            if self._is_background():
                return response(b"200 OK", [(b"X-Gearman-Job-Handle", payload),
                                            (b"X-Gearman-Command", b"JOB_CREATED")])
            return None
        handle, _, data = payload.partition(b"\0")
        if cmd == Cmd.WORK_DATA:
            self.chunks.append(data)
            return None
        if cmd not in _FINAL:
            return None          # WORK_STATUS / WORK_WARNING: progress, not the answer
        body = b"".join(self.chunks) + data
        return response(b"200 OK", [(b"X-Gearman-Job-Handle", handle),
                                    (b"X-Gearman-Command", NAMES[cmd].encode())],
                        body, send_body)

    def _is_background(self) -> bool:
        head = self._head
        return bool(head) and head[2].get(  # type: ignore[index]
            "x-gearman-background", "").strip().lower() == "true"


def _listen_port(settings: Settings) -> Optional[str]:
    return settings.http_port if settings.protocol == "http" else None


def _open(settings: Settings) -> Port:
    return Port("HTTP", functools.partial(HttpSession, settings.max_packet_size))


PLUGIN = Plugin("http", _listen_port, _open)
