"""Descriptor limits: the default soft limit and behaviour when descriptors run out."""

from __future__ import annotations

import os
import resource
import socket
import time
from typing import Callable, List

from gearproto import Conn
from support import Server


def _soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no Max open files line")


def test_default_raises_soft_limit_to_hard(server_factory: Callable[..., Server]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        srv = server_factory()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert _soft_nofile(srv.pid) == hard
    srv2 = server_factory("-f", "300")
    assert _soft_nofile(srv2.pid) == 300


def test_running_out_of_descriptors_neither_spins_nor_kills(
        server_factory: Callable[..., Server]) -> None:
    srv = server_factory("-f", "40", "-t", "0")
    held: List[socket.socket] = []
    try:
        for _ in range(60):          # more than the server can accept
            held.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
        time.sleep(0.5)
        cpu_before = _cpu(srv.pid)
        time.sleep(1.0)
        assert _cpu(srv.pid) - cpu_before < 0.5, "server spins while out of descriptors"
        assert "accept() failed" in srv.log()
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while True:                       # descriptors freed: it serves again
        try:
            with Conn(srv.port, timeout=2) as c:
                assert c.admin("version").startswith(b"OK ")
                break
        except (OSError, AssertionError):
            assert time.monotonic() < deadline, "server did not recover"
            time.sleep(0.2)
    assert srv.alive()


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
