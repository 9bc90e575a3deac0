"""Sans-IO codec for the Gearman port: binary packets and admin text lines, bytes <-> events.

Theory of operation.  ``Decoder.feed(data)`` appends bytes to one buffer and returns every
complete request in it as an event tuple ``(cmd, is_request_magic, args)``:

* binary packet: ``cmd`` is the command number (1..42), ``args`` its arguments split by the
  command table (the last argument of a no-data command, and the data of a data command,
  may hold NULs);
* admin text line (first byte not NUL): ``cmd`` is ``TEXT`` and ``args`` its tokens;
* a protocol error: ``cmd`` is ``PROTOCOL_ERROR`` and ``args`` is ``(message,)``; it is
  always the last event, and the decoder accepts nothing after it (the connection is closed
  by its owner once the earlier events are answered).

Text or binary is decided per request, like gearmand.  Limits are checked on the header,
before a payload is buffered.  No sockets, threads, clocks or logging here; the I/O thread
that owns a connection owns its Decoder.  ``pack()`` builds a response packet.  The event
tuple and the pseudo-command numbers are the thread protocol's (gearmand_py/messages.py).
"""

from __future__ import annotations

import struct
from typing import List, Sequence, Tuple, cast

from ..messages import PROTOCOL_ERROR, TEXT, Event
from .commands import COMMANDS, HEADER_SIZE, MAX_COMMAND, REQ_MAGIC, RES_MAGIC

#: An admin line longer than this without LF closes the connection (gearmand's 8 KiB buffer).
MAX_TEXT_LINE = 8192
#: More admin tokens than this close the connection, as gearmand does.
MAX_TEXT_TOKENS = 5
#: Payloads at least this big are split and packed without intermediate copies.
BIG_PACKET = 16384

#: The 12-byte packet header: magic, command, payload size (big-endian).
HEADER = struct.Struct(">4sII")
_UNPACK_HEADER = HEADER.unpack_from
_PACK_HEADER = HEADER.pack

# (expected part count, maxsplit) per command, for bytes.split(b"\0", maxsplit).  Keyed by
# plain ints: the decoded command is a small int, found by identity (an IntEnum key would
# cost an equality call per lookup).
_SPLIT = {}
for _cmd, _spec in COMMANDS.items():
    if _spec.has_data:
        _SPLIT[int(_cmd)] = (_spec.argc + 1, _spec.argc)
    elif _spec.argc == 0:
        _SPLIT[int(_cmd)] = (0, 0)
    else:
        _SPLIT[int(_cmd)] = (_spec.argc, _spec.argc - 1)


def split_text(line: bytes) -> Tuple[bytes, ...]:
    """Split an admin line like gearmand: on spaces, runs collapse, a leading space makes an
    empty first token."""
    tokens = [t for t in line.split(b" ") if t]
    if line.startswith(b" "):
        tokens.insert(0, b"")
    return tuple(tokens)


class Decoder:
    """Incremental request parser for one connection.

    Incomplete input waits as a list of chunks and is joined only once the known size of
    the pending request has arrived, so a large payload is copied once, not per read.
    """

    __slots__ = ("_chunks", "_have", "_need", "max_packet", "failed")

    #: The Gear port sends replies as the processor packed them (``respond`` is the
    #: identity, so the I/O thread skips it), never closes a connection because of a reply,
    #: never has bytes due before a reply, and parses everything it is fed at once.
    passthrough = True
    closing = False
    interim = b""
    backlog = False

    def __init__(self, max_packet: int) -> None:
        self._chunks: Sequence[bytes] = ()   # unparsed input (a list while there is some)
        self._have = 0                   # bytes in _chunks
        self._need = 0                   # total bytes needed before parsing can progress
        self.max_packet = max_packet
        self.failed = False

    @property
    def buffered(self) -> int:
        return self._have

    @property
    def missing(self) -> int:
        """Bytes still to come for the request being received (0 if unknown or none)."""
        return self._need - self._have if self._need > self._have else 0

    def feed(self, data: bytes) -> List[Event]:
        """Add bytes; return the complete requests now available (maybe none)."""
        if self.failed:
            return []
        if self._chunks:
            cast(List[bytes], self._chunks).append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            buf = b"".join(self._chunks)
            self._chunks = ()
            self._have = 0
        else:
            buf = data
        events: List[Event] = []
        append = events.append
        pos = 0
        end = len(buf)
        need = 0
        while pos < end:
            if buf[pos] != 0:
                nl = buf.find(b"\n", pos, pos + MAX_TEXT_LINE + 1)
                if nl < 0:
                    if end - pos > MAX_TEXT_LINE:
                        append(self._fail(b"text line longer than 8192 bytes"))
                        return events
                    need = end - pos + 1
                    break
                line = buf[pos:nl]
                pos = nl + 1
                if line.endswith(b"\r"):
                    line = line[:-1]
                tokens = split_text(line)
                if len(tokens) > MAX_TEXT_TOKENS:
                    append(self._fail(b"too many arguments for command(GEARMAN_TEXT)"))
                    return events
                append((TEXT, True, tokens))
                continue
            if end - pos < HEADER_SIZE:
                need = HEADER_SIZE
                break
            magic, cmd, size = _UNPACK_HEADER(buf, pos)
            if magic == REQ_MAGIC:
                is_req = True
            elif magic == RES_MAGIC:
                is_req = False
            else:
                append(self._fail(b"invalid magic"))
                return events
            if cmd == 0 or cmd > MAX_COMMAND:
                append(self._fail(b"invalid command %d" % cmd))
                return events
            if size > self.max_packet:
                append(self._fail(b"packet of %d bytes exceeds the maximum of %d"
                                  % (size, self.max_packet)))
                return events
            start = pos + HEADER_SIZE
            stop = start + size
            if stop > end:
                need = HEADER_SIZE + size
                break
            parts, maxsplit = _SPLIT[cmd]
            if parts == 0:
                args: Tuple[bytes, ...] = ()
            elif maxsplit == 0:
                args = (buf[start:stop],)
            elif size < BIG_PACKET:
                args = tuple(buf[start:stop].split(b"\0", maxsplit))
                if len(args) != parts:
                    append(self._fail(b"command %d needs %d arguments" % (cmd, parts)))
                    return events
            else:                       # slice each part once: no copy of the whole
                found = []
                p = start
                for _ in range(maxsplit):
                    nul = buf.find(b"\0", p, stop)
                    if nul < 0:
                        break
                    found.append(buf[p:nul])
                    p = nul + 1
                if len(found) != maxsplit:
                    append(self._fail(b"command %d needs %d arguments" % (cmd, parts)))
                    return events
                found.append(buf[p:stop])
                args = tuple(found)
            append((cmd, is_req, args))
            pos = stop
        if pos < end:
            rest = buf[pos:] if pos else buf
            self._chunks = [rest]
            self._have = len(rest)
            self._need = need
        return events

    def respond(self, packet: bytes) -> bytes:
        """Replies go out as the processor packed them."""
        return packet

    def _fail(self, message: bytes) -> Event:
        self.failed = True
        self._chunks = ()
        self._have = 0
        return (PROTOCOL_ERROR, False, (message,))


def pack(cmd: int, *args: bytes) -> bytes:
    """A response packet (``\\0RES``) with its arguments joined by NUL."""
    size = sum(map(len, args)) + len(args) - 1 if args else 0
    if size < BIG_PACKET:
        return _PACK_HEADER(RES_MAGIC, cmd, size) + b"\0".join(args)
    parts = [_PACK_HEADER(RES_MAGIC, cmd, size)]
    for arg in args:
        parts.append(arg)
        parts.append(b"\0")
    parts.pop()
    return b"".join(parts)                  # one copy of a large payload


def pack_request(cmd: int, *args: bytes) -> bytes:
    """A request packet (``\\0REQ``); used by tools that act as clients."""
    payload = b"\0".join(args)
    return _PACK_HEADER(REQ_MAGIC, cmd, len(payload)) + payload


def header(cmd: int, size: int) -> bytes:
    """A response header alone, for callers that send the payload separately."""
    return _PACK_HEADER(RES_MAGIC, cmd, size)
