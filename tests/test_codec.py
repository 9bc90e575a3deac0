"""Unit tests of the sans-IO codec: every packet whole, byte by byte, with trailing data."""

from __future__ import annotations

import struct
from typing import List, Tuple

import pytest

from gearmand_py.protocol.codec import (MAX_TEXT_LINE, PROTOCOL_ERROR, TEXT, Decoder, pack,
                                        pack_request, split_text)
from gearmand_py.protocol.commands import COMMANDS, NAMES, Cmd

MAX = 1 << 20


def sample_args(cmd: int) -> Tuple[bytes, ...]:
    """Arguments for cmd whose last part holds NULs where the table allows it."""
    spec = COMMANDS[cmd]
    args = [b"arg%d" % i for i in range(spec.argc)]
    if spec.has_data:
        args.append(b"da\0ta\0")
    elif args:
        args[-1] = b"last\0with\0nuls"
    return tuple(args)


def expected(cmd: int, args: Tuple[bytes, ...]) -> Tuple[bytes, ...]:
    spec = COMMANDS[cmd]
    if spec.argc == 0 and not spec.has_data:
        return ()
    return args


def feed_bytewise(decoder: Decoder, data: bytes) -> List[tuple]:
    events: List[tuple] = []
    for i in range(len(data)):
        events.extend(decoder.feed(data[i:i + 1]))
    return events


PACKETS = list(COMMANDS)


@pytest.mark.parametrize("cmd", PACKETS, ids=[NAMES[c] for c in PACKETS])
def test_every_packet_whole_bytewise_and_trailing(cmd: int) -> None:
    args = sample_args(cmd)
    wire = pack_request(cmd, *args)
    want = (cmd, True, expected(cmd, args))
    assert Decoder(MAX).feed(wire) == [want]
    assert feed_bytewise(Decoder(MAX), wire) == [want]
    d = Decoder(MAX)
    assert d.feed(wire + wire[:7]) == [want]
    assert d.feed(wire[7:]) == [want]
    assert d.buffered == 0


@pytest.mark.parametrize("cmd", PACKETS, ids=[NAMES[c] for c in PACKETS])
def test_response_magic_is_reported(cmd: int) -> None:
    args = sample_args(cmd)
    assert Decoder(MAX).feed(pack(cmd, *args)) == [(cmd, False, expected(cmd, args))]


def test_pack_exact_bytes() -> None:
    assert pack(Cmd.JOB_CREATED, b"H:x:1") == b"\0RES" + struct.pack(">II", 8, 5) + b"H:x:1"
    assert pack(Cmd.NOOP) == b"\0RES\0\0\0\x06\0\0\0\0"
    assert pack(Cmd.JOB_ASSIGN, b"h", b"f", b"d") == (
        b"\0RES\0\0\0\x0b\0\0\0\x05h\0f\0d")
    assert pack_request(Cmd.ECHO_REQ, b"x") == b"\0REQ\0\0\0\x10\0\0\0\x01x"


def test_data_with_nul_bytes_and_empty_args() -> None:
    wire = pack_request(Cmd.SUBMIT_JOB, b"f", b"", b"\0\0\0")
    assert Decoder(MAX).feed(wire) == [(Cmd.SUBMIT_JOB, True, (b"f", b"", b"\0\0\0"))]


def test_zero_arg_packet_payload_discarded() -> None:
    wire = b"\0REQ" + struct.pack(">II", Cmd.GRAB_JOB, 3) + b"abc"
    assert Decoder(MAX).feed(wire + pack_request(Cmd.PRE_SLEEP)) == [
        (Cmd.GRAB_JOB, True, ()), (Cmd.PRE_SLEEP, True, ())]


def test_text_lines_lf_crlf_pipelined_and_mixed_with_binary() -> None:
    data = b"status\r\nworkers\nshow  unique   jobs\r\n" + pack_request(Cmd.ECHO_REQ, b"e") + b"ver"
    d = Decoder(MAX)
    assert d.feed(data) == [(TEXT, True, (b"status",)), (TEXT, True, (b"workers",)),
                            (TEXT, True, (b"show", b"unique", b"jobs")),
                            (Cmd.ECHO_REQ, True, (b"e",))]
    assert d.feed(b"sion\n") == [(TEXT, True, (b"version",))]
    assert feed_bytewise(Decoder(MAX), b"status\r\n") == [(TEXT, True, (b"status",))]


def test_text_tokens_like_gearmand() -> None:
    assert split_text(b" status") == (b"", b"status")
    assert split_text(b"") == ()
    assert split_text(b"status" + b" " * 8000) == (b"status",)


def test_too_many_tokens_is_an_error() -> None:
    d = Decoder(MAX)
    events = d.feed(b"status\na b c d e f\nversion\n")
    assert events[0] == (TEXT, True, (b"status",))
    assert events[1][0] == PROTOCOL_ERROR and len(events) == 2
    assert d.feed(b"version\n") == []


def test_overlong_text_line_is_an_error() -> None:
    d = Decoder(MAX)
    assert d.feed(b"x" * MAX_TEXT_LINE) == []
    events = d.feed(b"xx")
    assert [e[0] for e in events] == [PROTOCOL_ERROR]


@pytest.mark.parametrize("wire", [
    b"\0XYZ" + struct.pack(">II", 7, 0),                 # bad magic
    b"\0REQ" + struct.pack(">II", 0, 0),                 # TEXT in binary
    b"\0REQ" + struct.pack(">II", 43, 0),                # unknown command
    b"\0REQ" + struct.pack(">II", 7, 2) + b"f\0",        # SUBMIT_JOB missing a NUL
    b"\0REQ" + struct.pack(">II", 7, MAX + 1),           # oversized length, checked early
], ids=["magic", "text-cmd", "cmd-43", "argc", "oversized"])
def test_malformed_packets(wire: bytes) -> None:
    d = Decoder(MAX)
    good = pack_request(Cmd.ECHO_REQ, b"ok")
    events = d.feed(good + wire + good)
    assert events[0] == (Cmd.ECHO_REQ, True, (b"ok",))
    assert events[1][0] == PROTOCOL_ERROR
    assert len(events) == 2
    assert d.failed and d.buffered == 0


def test_oversized_length_rejected_before_payload_arrives() -> None:
    d = Decoder(100)
    events = d.feed(b"\0REQ" + struct.pack(">II", Cmd.ECHO_REQ, 101))
    assert events and events[0][0] == PROTOCOL_ERROR


def test_large_payload_in_chunks() -> None:
    payload = bytes(range(256)) * 32768          # 8 MiB with NULs
    wire = pack_request(Cmd.ECHO_REQ, payload)
    d = Decoder(16 << 20)
    events: List[tuple] = []
    for i in range(0, len(wire), 65536):
        events.extend(d.feed(wire[i:i + 65536]))
    assert events == [(Cmd.ECHO_REQ, True, (payload,))]


def test_big_packets_split_and_pack_like_small_ones() -> None:
    data = (b"x\0y" * 20000)
    wire = pack_request(Cmd.SUBMIT_JOB, b"fn", b"uniq", data)
    assert Decoder(MAX).feed(wire) == [(Cmd.SUBMIT_JOB, True, (b"fn", b"uniq", data))]
    missing = b"\0REQ" + struct.pack(">II", Cmd.SUBMIT_JOB, 40000) + b"f" * 40000
    events = Decoder(MAX).feed(missing)
    assert [e[0] for e in events] == [PROTOCOL_ERROR]
    big = pack(Cmd.WORK_COMPLETE, b"H:x:1", data)
    assert big == b"\0RES" + struct.pack(">II", 13, 6 + len(data)) + b"H:x:1\0" + data
