"""Raw Gearman packets for the load generator, written independently of the server's codec.

The benchmark must not share code with the server it measures, so this module builds request
packets and splits response streams itself.  Pure functions and constants; used by the
Python generator processes (one event loop each) and by the parent process for readiness
checks and the memory workload.  The native generator (``loadgen.c``) has its own copy of
the command numbers, in C.
"""

from __future__ import annotations

import struct
from typing import List, Tuple

REQ = b"\0REQ"
RES = b"\0RES"
HEADER = struct.Struct(">4sII")
HEADER_SIZE = 12

# Packet numbers the generator sends or expects (the protocol's command numbers).
CAN_DO = 1
PRE_SLEEP = 4
NOOP = 6
SUBMIT_JOB = 7
JOB_CREATED = 8
GRAB_JOB = 9
NO_JOB = 10
JOB_ASSIGN = 11
WORK_COMPLETE = 13
WORK_FAIL = 14
ECHO_REQ = 16
ECHO_RES = 17
SUBMIT_JOB_BG = 18
ERROR = 19
WORK_EXCEPTION = 25

#: Responses that tell a client its job failed.
FAILURES = frozenset((WORK_FAIL, WORK_EXCEPTION, ERROR))


def packet(cmd: int, *args: bytes, data: bytes = b"") -> bytes:
    """One request packet: NUL-joined ``args`` then ``data`` (pass the last arg as data when
    the command has no data part, e.g. ``packet(CAN_DO, data=b"fn")``)."""
    body = b"".join(a + b"\0" for a in args) + data
    return HEADER.pack(REQ, cmd, len(body)) + body


def submit(func: bytes, data: bytes, unique: bytes = b"", background: bool = False) -> bytes:
    """SUBMIT_JOB or SUBMIT_JOB_BG at normal priority."""
    return packet(SUBMIT_JOB_BG if background else SUBMIT_JOB, func, unique, data=data)


def work_complete_header(handle_len: int, data_len: int) -> bytes:
    """The 12-byte header of a WORK_COMPLETE whose payload is ``handle\\0data``."""
    return HEADER.pack(REQ, WORK_COMPLETE, handle_len + 1 + data_len)


GRAB = packet(GRAB_JOB)
SLEEP = packet(PRE_SLEEP)


def can_do(func: bytes) -> bytes:
    return packet(CAN_DO, data=func)


def echo(data: bytes) -> bytes:
    return packet(ECHO_REQ, data=data)


def split(buf: bytearray, n: int) -> Tuple[List[Tuple[int, int, int]], int]:
    """Complete packets in ``buf[:n]`` as (cmd, payload_start, payload_end) plus the number
    of bytes they use.  Raises ValueError on a bad magic (stream out of sync)."""
    out: List[Tuple[int, int, int]] = []
    pos = 0
    unpack = HEADER.unpack_from
    while n - pos >= HEADER_SIZE:
        magic, cmd, size = unpack(buf, pos)
        if magic != RES:
            raise ValueError(f"bad magic {bytes(magic)!r} in server reply")
        end = pos + HEADER_SIZE + size
        if end > n:
            break
        out.append((cmd, pos + HEADER_SIZE, end))
        pos = end
    return out, pos


def needed(buf: bytearray, n: int) -> int:
    """Bytes ``buf`` must hold before its first packet is complete, given ``n`` valid bytes
    (12 while the header is incomplete)."""
    if n < HEADER_SIZE:
        return HEADER_SIZE
    return HEADER_SIZE + HEADER.unpack_from(buf, 0)[2]
