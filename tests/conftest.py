"""Shared pytest fixtures: real server processes on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Callable, Iterator, List

import pytest


from support import Server

DEFAULT_IMPL = os.environ.get("GEARMAND_TEST_IMPL", "py")


@pytest.fixture
def server_factory() -> Iterator[Callable[..., Server]]:
    """Start servers with ``server_factory(*args, impl="py"|"c")``; all stopped at teardown."""
    started: List[Server] = []

    def start(*args: str, impl: str = DEFAULT_IMPL, **kw: object) -> Server:
        srv = Server(args, impl=impl, **kw)  # type: ignore[arg-type]
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def server(server_factory: Callable[..., Server]) -> Server:
    """This project's server with default options (-t 4).

    ``GEARMAND_TEST_IMPL=c`` points it (and every ``server_factory`` call that does not name
    an impl) at C gearmand instead, to check a test against the oracle.
    """
    return server_factory()


@pytest.fixture
def c_server(server_factory: Callable[..., Server]) -> Server:
    """C gearmand (/usr/sbin/gearmand) for differential tests."""
    from support import C_GEARMAND, require

    require(C_GEARMAND, "differential tests need Debian's gearman-job-server")
    return server_factory(impl="c")


@pytest.fixture
def procs() -> Iterator[List["subprocess.Popen[bytes]"]]:
    """Helper processes a test starts (workers, clients); killed at teardown, with their
    process group when they lead one (a worker's child command goes too)."""
    started: List["subprocess.Popen[bytes]"] = []
    yield started
    for p in started:
        try:
            if os.getpgid(p.pid) == p.pid:
                os.killpg(p.pid, signal.SIGKILL)
            else:
                p.kill()
        except ProcessLookupError:
            pass
        try:
            p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pass
