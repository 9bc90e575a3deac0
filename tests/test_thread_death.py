"""A thread that dies stops the whole server loudly (exit 1, CRITICAL log), never a
silent half-server.  The crash is injected through a sitecustomize on PYTHONPATH."""

from __future__ import annotations

import os
import subprocess
from typing import Callable

import pytest

from gearproto import Conn
from support import Server

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(HERE, "crashinject"), REPO,
                                         env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("threads,trigger,thread_name", [
    ("4", b"crash-proc\n", "proc"),
    ("2", b"crash-io\n", "io-"),
    ("1", b"crash-io\n", "io-1"),
])
def test_dead_thread_stops_server(server_factory: Callable[..., Server], threads: str,
                                  trigger: bytes, thread_name: str) -> None:
    srv = server_factory("-t", threads, impl="py", env=_env())
    with Conn(srv.port) as c:
        assert c.admin("version").startswith(b"OK")
        c.send_raw(trigger)
        try:
            srv.proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail("server kept running with a dead thread")
    assert srv.proc.returncode == 1
    log = srv.log()
    assert "CRITICAL" in log and f"thread {thread_name}" in log and "died" in log, log
