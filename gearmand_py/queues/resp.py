"""A lean Redis connection for the redis queue's group commits: one unit, one write.

Thread: the store thread (store.py), through ``RedisQueue.commit``.

Why not redis-py here: profiled at saturation (8 clients x 16 pipelined background submits,
``-q redis``, py-spy), redis-py's per-command packing and per-reply parsing were half of the
server's CPU, about 5 µs per stored job (docs/performance.md, optimisation log).  This
module packs the unit's commands as RESP bytes itself and reads the replies of a
``MULTI`` / commands / ``EXEC`` exchange, in which every reply is a single line (``+OK``,
``+QUEUED``, the ``*n`` header of ``EXEC``'s array, then one integer or error per command).
Everything else the queue does (open, replay, single adds) stays on redis-py.

The socket has the queue timeout (``--queue-timeout``) for connecting and for every read
and write, so a hung Redis fails the unit instead of holding the store thread.  Any failure
closes the connection; the next unit connects again.
"""

from __future__ import annotations

import socket
from typing import List, Optional, Sequence

MULTI = b"*1\r\n$5\r\nMULTI\r\n"
EXEC = b"*1\r\n$4\r\nEXEC\r\n"
READ_SIZE = 65536


class RespError(Exception):
    """Redis refused the transaction, or answered outside the protocol."""


def command(*parts: bytes) -> bytes:
    """One RESP command (an array of bulk strings)."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class RespConnection:
    """A connection that runs MULTI/EXEC transactions of single-line-reply commands."""

    def __init__(self, host: str, port: int, password: str, timeout: float) -> None:
        self.host, self.port, self.password = host, port, password
        self.timeout = timeout
        self._sock: Optional[socket.socket] = None
        self._buf = b""

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._buf = b""
        if sock is not None:
            sock.close()

    def transaction(self, commands: Sequence[bytes]) -> List[bytes]:
        """Run ``commands`` (from :func:`command`) between MULTI and EXEC in one write;
        the reply line of each, in order (``b":1"``, ``b"-WRONGTYPE ..."``).  Raises
        OSError (connection, timeout) or RespError (the whole transaction refused)."""
        try:
            if self._sock is None:
                self._connect()
            assert self._sock is not None
            self._sock.sendall(b"".join((MULTI, *commands, EXEC)))
            n = len(commands)
            lines = self._lines(n + 2)        # +OK, +QUEUED per command, EXEC's reply
            head = lines[-1]
            if head != b"*%d" % n:
                raise RespError(_text(head[1:] if head[:1] == b"-" else head))
            return self._lines(n)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        self._sock = socket.create_connection((self.host, self.port), self.timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.password:
            self._sock.sendall(command(b"AUTH", self.password.encode()))
            [reply] = self._lines(1)
            if reply[:1] != b"+":
                raise RespError(_text(reply[1:]))

    def _lines(self, count: int) -> List[bytes]:
        """The next ``count`` reply lines (without CRLF)."""
        assert self._sock is not None
        buf = self._buf
        while buf.count(b"\r\n") < count:
            chunk = self._sock.recv(READ_SIZE)
            if not chunk:
                raise ConnectionResetError("redis closed the connection")
            buf += chunk
        lines = buf.split(b"\r\n", count)
        self._buf = lines.pop()
        return lines


def _text(reply: bytes) -> str:
    return reply.decode("utf-8", "replace")
