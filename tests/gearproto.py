"""A tiny raw Gearman protocol client for tests.

Written independently of ``gearmand_py``'s codec so the tests never trust the code under
test.  Everything is blocking with explicit timeouts; every wait is bounded.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Union

REQ = b"\0REQ"
RES = b"\0RES"

# number -> name, straight from the Gearman protocol document (gearmand's PROTOCOL file).
NAMES: dict[int, str] = {
    1: "CAN_DO", 2: "CANT_DO", 3: "RESET_ABILITIES", 4: "PRE_SLEEP", 5: "UNUSED", 6: "NOOP",
    7: "SUBMIT_JOB", 8: "JOB_CREATED", 9: "GRAB_JOB", 10: "NO_JOB", 11: "JOB_ASSIGN",
    12: "WORK_STATUS", 13: "WORK_COMPLETE", 14: "WORK_FAIL", 15: "GET_STATUS", 16: "ECHO_REQ",
    17: "ECHO_RES", 18: "SUBMIT_JOB_BG", 19: "ERROR", 20: "STATUS_RES", 21: "SUBMIT_JOB_HIGH",
    22: "SET_CLIENT_ID", 23: "CAN_DO_TIMEOUT", 24: "ALL_YOURS", 25: "WORK_EXCEPTION",
    26: "OPTION_REQ", 27: "OPTION_RES", 28: "WORK_DATA", 29: "WORK_WARNING",
    30: "GRAB_JOB_UNIQ", 31: "JOB_ASSIGN_UNIQ", 32: "SUBMIT_JOB_HIGH_BG", 33: "SUBMIT_JOB_LOW",
    34: "SUBMIT_JOB_LOW_BG", 35: "SUBMIT_JOB_SCHED", 36: "SUBMIT_JOB_EPOCH",
    37: "SUBMIT_REDUCE_JOB", 38: "SUBMIT_REDUCE_JOB_BACKGROUND", 39: "GRAB_JOB_ALL",
    40: "JOB_ASSIGN_ALL", 41: "GET_STATUS_UNIQUE", 42: "STATUS_RES_UNIQUE",
}
CODES: dict[str, int] = {v: k for k, v in NAMES.items()}

# Number of NUL-separated arguments in each response payload (last one takes the rest).
RESPONSE_ARGC: dict[str, int] = {
    "NOOP": 0, "NO_JOB": 0, "JOB_CREATED": 1, "JOB_ASSIGN": 3, "JOB_ASSIGN_UNIQ": 4,
    "JOB_ASSIGN_ALL": 5, "WORK_STATUS": 3, "WORK_COMPLETE": 2, "WORK_FAIL": 1,
    "WORK_EXCEPTION": 2, "WORK_DATA": 2, "WORK_WARNING": 2, "ECHO_RES": 1, "ERROR": 2,
    "STATUS_RES": 5, "STATUS_RES_UNIQUE": 6, "OPTION_RES": 1,
}

Arg = Union[bytes, str, int]  # noqa: UP007 (runtime alias, Python 3.9)


def _b(x: Arg) -> bytes:
    if isinstance(x, bytes):
        return x
    return str(x).encode()


def pack(cmd: int | str, *args: Arg, magic: bytes = REQ) -> bytes:
    """Pack one binary packet: arguments joined by NUL, last one unterminated."""
    num = CODES[cmd] if isinstance(cmd, str) else cmd
    payload = b"\0".join(_b(a) for a in args)
    return magic + struct.pack(">II", num, len(payload)) + payload


class Packet:
    """A received packet: name, raw payload and the payload split by the response table."""

    def __init__(self, magic: bytes, num: int, payload: bytes) -> None:
        self.magic = magic
        self.num = num
        self.name = NAMES.get(num, f"?{num}")
        self.payload = payload
        argc = RESPONSE_ARGC.get(self.name, 1)
        if argc == 0:
            self.args: list[bytes] = []
        else:
            self.args = payload.split(b"\0", argc - 1)

    def __repr__(self) -> str:
        p = self.payload if len(self.payload) < 80 else self.payload[:80] + b"..."
        return f"Packet({self.name}, {p!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, tuple):
            return (self.name, *self.args) == other
        return NotImplemented

    def as_tuple(self) -> tuple[object, ...]:
        return (self.name, *self.args)


class Closed(Exception):
    """The server closed the connection."""


class Conn:
    """One blocking connection with a receive buffer."""

    def __init__(self, port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""

    # -- sending ---------------------------------------------------------------------
    def send(self, cmd: int | str, *args: Arg) -> None:
        self.sock.sendall(pack(cmd, *args))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- receiving -------------------------------------------------------------------
    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise Closed("connection closed by server")
        self.buf += chunk

    def recv(self, timeout: float | None = None) -> Packet:
        """Receive one binary packet or raise socket.timeout / Closed."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self.buf) < 12:
            self._fill(deadline)
        magic = self.buf[:4]
        num, size = struct.unpack(">II", self.buf[4:12])
        assert magic == RES, f"bad magic from server: {self.buf[:12]!r}"
        while len(self.buf) < 12 + size:
            self._fill(deadline)
        payload = self.buf[12:12 + size]
        self.buf = self.buf[12 + size:]
        return Packet(magic, num, payload)

    def expect(self, name: str, timeout: float | None = None) -> Packet:
        p = self.recv(timeout)
        assert p.name == name, f"expected {name}, got {p!r}"
        return p

    def recv_until(self, name: str, timeout: float = 5.0,
                   limit: int = 10000) -> list[Packet]:
        """Packets up to and including the first ``name``."""
        out: list[Packet] = []
        deadline = time.monotonic() + timeout
        for _ in range(limit):
            p = self.recv(max(0.001, deadline - time.monotonic()))
            out.append(p)
            if p.name == name:
                return out
        raise AssertionError(f"no {name} in {limit} packets: {out[:10]}")

    def nothing(self, wait: float = 0.3) -> None:
        """Assert that no packet arrives within ``wait`` seconds."""
        try:
            p = self.recv(wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected packet {p!r}")

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection within ``timeout`` (no data first)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self._fill(deadline)
        except Closed:
            return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return False

    # -- admin text ------------------------------------------------------------------
    def admin(self, line: str, timeout: float | None = None) -> bytes:
        """Send one admin command and read its complete reply."""
        self.sock.sendall(line.encode() + b"\r\n")
        return self.read_text_reply(timeout)

    def read_text_reply(self, timeout: float | None = None) -> bytes:
        """One reply: a single ``OK``/``ERR`` line, or a list ending with the line ``.``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if self.buf.startswith((b"OK", b"ERR")):
                idx = self.buf.find(b"\n")
                if idx >= 0:
                    out, self.buf = self.buf[:idx + 1], self.buf[idx + 1:]
                    return out
            elif self.buf.startswith(b".\n"):
                out, self.buf = self.buf[:2], self.buf[2:]
                return out
            else:
                idx = self.buf.find(b"\n.\n")
                if idx >= 0:
                    out, self.buf = self.buf[:idx + 3], self.buf[idx + 3:]
                    return out
            self._fill(deadline)

    def read_idle(self, idle: float = 0.05, total: float = 5.0) -> list[bytes]:
        """Read until the socket has been idle for ``idle`` seconds (gearadmin style).

        Returns the list of recv() chunks so callers can check segmentation.
        """
        chunks: list[bytes] = []
        if self.buf:
            chunks.append(self.buf)
            self.buf = b""
        deadline = time.monotonic() + total
        first = not chunks
        while time.monotonic() < deadline:
            self.sock.settimeout(total if first else idle)
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
            first = False
        return chunks

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Conn:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- convenience helpers used by many tests ------------------------------------------

def submit(conn: Conn, fn: Arg, data: Arg = b"", unique: Arg = b"",
           cmd: str = "SUBMIT_JOB") -> bytes:
    """Submit and return the job handle (asserts JOB_CREATED)."""
    conn.send(cmd, fn, unique, data)
    p = conn.expect("JOB_CREATED")
    return p.args[0]


def grab(conn: Conn, cmd: str = "GRAB_JOB", timeout: float | None = None) -> Packet:
    conn.send(cmd)
    return conn.recv(timeout)


def status_rows(text: bytes) -> dict[str, tuple[int, ...]]:
    """Parse a ``status``/``prioritystatus`` reply into {function: counts}."""
    rows: dict[str, tuple[int, ...]] = {}
    lines = text.split(b"\n")
    assert lines[-2:] == [b".", b""], text
    for line in lines[:-2]:
        parts = line.split(b"\t")
        rows[parts[0].decode()] = tuple(int(x) for x in parts[1:])
    return rows


def status(port: int) -> dict[str, tuple[int, ...]]:
    """The server's ``status`` as {function: (total, running, workers)}."""
    with Conn(port) as c:
        return status_rows(c.admin("status"))


def admin(port: int, *commands: str, timeout: float = 5.0) -> list[bytes]:
    """Run admin commands on a fresh connection, one reply per command."""
    with Conn(port, timeout) as c:
        return [c.admin(cmd) for cmd in commands]


def wait_for(pred: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``pred`` until true or ``timeout``; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)

