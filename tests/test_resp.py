"""The redis queue's commit connection (gearmand_py/queues/resp.py) against the real Redis
on 127.0.0.1:6379: packing, per-command replies, a refused transaction, AUTH, and that any
failure leaves the connection closed for the next unit to reopen."""

from __future__ import annotations

import socket
import uuid
from typing import Iterator

import pytest

from gearmand_py.queues.base import NORMAL, StoredJob
from gearmand_py.queues.redis import fields, hset
from gearmand_py.queues.resp import RespConnection, RespError, command

REDIS = ("127.0.0.1", 6379)


@pytest.fixture
def conn() -> Iterator[RespConnection]:
    c = RespConnection(REDIS[0], REDIS[1], "", 2.0)
    yield c
    c.close()


@pytest.fixture
def key() -> Iterator[bytes]:
    k = b"test_resp_" + uuid.uuid4().hex.encode()
    yield k
    c = RespConnection(REDIS[0], REDIS[1], "", 2.0)
    c.transaction([command(b"DEL", k, k + b"-s")])
    c.close()


def test_command_is_a_resp_array_of_bulk_strings() -> None:
    assert command(b"DEL", b"a", b"") == b"*3\r\n$3\r\nDEL\r\n$1\r\na\r\n$0\r\n\r\n"


@pytest.mark.parametrize("function", [b"fn", b"fn-with-hyphen"])
def test_hset_fast_path_packs_as_the_generic_command(function: bytes) -> None:
    job = StoredJob(b"u1", function, b"da\r\nta\0", NORMAL, 0)
    parts = [b"HSET", b"k"] + [x for kv in fields(job).items() for x in kv]
    assert hset(b"k", job) == command(*parts)


def test_replies_in_command_order(conn: RespConnection, key: bytes) -> None:
    job = StoredJob(b"u", b"f", b"payload", NORMAL, 0)
    replies = conn.transaction([hset(key, job), command(b"SET", key + b"-s", b"x"),
                                command(b"HSET", key + b"-s", b"data", b"y"),
                                command(b"DEL", key, key + b"-s")])
    assert replies[0] == b":2"            # two new fields
    assert replies[1] == b"+OK"
    assert replies[2].startswith(b"-WRONGTYPE")
    assert replies[3] == b":2"


def test_empty_transaction_is_a_probe(conn: RespConnection) -> None:
    assert conn.transaction([]) == []
    assert conn.transaction([]) == []     # the connection is reused


def test_a_command_refused_while_queueing_refuses_the_transaction(
        conn: RespConnection, key: bytes) -> None:
    with pytest.raises(RespError, match="EXECABORT"):
        conn.transaction([command(b"SET", key, b"1"), command(b"GET")])  # GET: wrong arity
    assert conn._sock is None             # dropped; the next unit reconnects
    assert conn.transaction([command(b"EXISTS", key)]) == [b":0"]


def test_auth_refused_is_an_error(key: bytes) -> None:
    c = RespConnection(REDIS[0], REDIS[1], "no-such-password", 2.0)
    with pytest.raises(RespError):
        c.transaction([command(b"EXISTS", key)])
    assert c._sock is None


def test_unreachable_server_raises_oserror() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]         # bound, not listening: connection refused
        c = RespConnection("127.0.0.1", port, "", 1.0)
        with pytest.raises(OSError):
            c.transaction([])
        assert c._sock is None
