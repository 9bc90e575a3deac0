"""Store fixtures shared by the outage and crash tests (issue 9 sections 2 and 3).

``store_for(name, request, tmp_path)`` gives a :class:`Store`: the -q options of a fresh
table / key prefix of one backend, reachable directly or through a :class:`TcpProxy`
(``args(port)``), dropped at teardown.  A service that cannot be reached fails in CI and
skips elsewhere (``require_backend`` of the contract suite).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytest
from gearproto import Conn
from support import Server, server_env
from test_queue_contract import (
    MY,
    PG,
    REDIS,
    drop_storage,
    queue_args,
    require_backend,
    settings_for,
)

from gearmand_py.queues import create as create_backend
from gearmand_py.queues.base import StoredJob

#: Make the console script import this checkout, whatever is installed.
ENV = server_env()
#: Backends that talk to a network service (the ones a proxy can cut).
NETWORK = ("postgres", "mysql", "redis", "libmemcached")


class Store:
    """One backend's storage for one test: its -q name, options and service address."""

    def __init__(self, name: str, variant: str, tmpdir: str,
                 memcached: Tuple[str, int]) -> None:
        self.name = name
        self.direct = queue_args(name, variant, tmpdir, memcached)
        self.service: Optional[Tuple[str, int]] = {
            "postgres": PG, "mysql": MY, "redis": REDIS, "libmemcached": memcached,
        }.get(name)

    def args(self, port: Optional[int] = None) -> List[str]:
        """``-q <name>`` and its options; with ``port``, the service is reached there
        (a proxy on 127.0.0.1) instead of at its real address."""
        out = list(self.direct)
        if port is not None:
            assert self.service is not None, f"{self.name} has no network service"
            real = self.service[1]
            swapped = []
            for a in out:
                if a.startswith("--libpq-conninfo="):
                    a = a.replace(f"port={real}", f"port={port}")
                elif a == f"--mysql-port={real}" or a == f"--redis-port={real}":
                    a = a.replace(str(real), str(port))
                elif a.startswith("--libmemcached-servers="):
                    a = f"--libmemcached-servers=127.0.0.1:{port}"
                swapped.append(a)
            assert swapped != out, f"no port option to redirect in {out}"
            out = swapped
        return ["-q", self.name, *out]

    def stored(self) -> Dict[Tuple[bytes, bytes], StoredJob]:
        """What the storage holds now, read with a backend instance of our own."""
        backend = create_backend(settings_for(self.name, list(self.direct)))
        backend.open()
        try:
            return {(j.function, j.unique): j for j in backend.replay()}
        finally:
            backend.close()

    def drop(self) -> None:
        drop_storage(self.name, self.direct)


def store_for(name: str, request: pytest.FixtureRequest, tmp_path: "os.PathLike[str]"
              ) -> Store:
    """A fresh Store for ``name`` (fails in CI / skips elsewhere when unreachable)."""
    mc = require_backend(name, request)
    store = Store(name, "o" + os.urandom(4).hex(), str(tmp_path), mc)
    request.addfinalizer(store.drop)
    return store


def start_server(factory: Callable[..., Server], store: Store, *extra: str,
                 port: Optional[int] = None) -> Server:
    return factory(*store.args(port), *extra, impl="py", env=ENV)


Grabbed = Tuple[bytes, bytes, bytes]     # function, unique, data


def drain(port: int, functions: Sequence[bytes], timeout: float = 20.0,
          idle: float = 0.5) -> List[Grabbed]:
    """A worker completes every job of ``functions`` until none is left: the jobs in the
    order they were handed out.  "None left" is NO_JOB twice, ``idle`` seconds apart."""
    got: List[Grabbed] = []
    deadline = time.monotonic() + timeout
    empty_since: Optional[float] = None
    with Conn(port, timeout=min(10.0, timeout)) as w:
        for fn in functions:
            w.send("CAN_DO", fn)
        while time.monotonic() < deadline:
            w.send("GRAB_JOB_UNIQ")
            p = w.recv()
            if p.name == "NO_JOB":
                now = time.monotonic()
                if empty_since is None:
                    empty_since = now
                elif now - empty_since >= idle:
                    return got
                time.sleep(0.05)
                continue
            assert p.name == "JOB_ASSIGN_UNIQ", p
            empty_since = None
            handle, fn, unique, data = p.args
            got.append((fn, unique, data))
            w.send("WORK_COMPLETE", handle, b"done")
    raise AssertionError(f"jobs still coming after {timeout}s: {len(got)} so far")


def wait_gone(store: Store, keys: Sequence[Tuple[bytes, bytes]], timeout: float = 10.0
              ) -> None:
    """Wait until none of (function, unique) ``keys`` is stored any more (done() landed)."""
    deadline = time.monotonic() + timeout
    left = set(keys)
    while True:
        left &= set(store.stored())
        if not left:
            return
        assert time.monotonic() < deadline, \
            f"{len(left)} completed jobs still stored after {timeout}s: {sorted(left)[:5]}"
        time.sleep(0.1)
