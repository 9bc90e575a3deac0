"""One storage contract suite run against every persistent queue backend (real services).

Postgres (127.0.0.1:5432, db ``test``), MariaDB (127.0.0.1:3306, root, db ``test``) and Redis
(127.0.0.1:6379) are expected to be running; memcached is started here on a free port and
stopped after the session; sqlite and tokyocabinet use files in a temporary directory.
Every run uses its own table names and key prefixes.  A service that cannot be reached
fails the test in CI (env CI set) and skips it elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from typing import Callable, Dict, Iterator, List, Tuple

import pytest

from gearmand_py.errors import QueueError
from gearmand_py.queues import create as create_backend
from gearmand_py.queues.base import HIGH, LOW, NORMAL, StoredJob
from gearmand_py.settings import Settings
from support import IN_CI, free_low_port

RUN = uuid.uuid4().hex[:8]
PG = ("127.0.0.1", 5432)
MY = ("127.0.0.1", 3306)
REDIS = ("127.0.0.1", 6379)
PG_CONNINFO = "host=127.0.0.1 port=5432 dbname=test user=postgres"

BACKENDS = ["libsqlite3", "postgres", "mysql", "libdrizzle", "libmemcached",
            "libtokyocabinet", "redis"]


def unavailable(why: str) -> None:
    if IN_CI:
        pytest.fail(f"{why} (required in CI)")
    pytest.skip(f"{why}; CI provides it")


def reachable(addr: Tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=2):
            return True
    except OSError:
        return False


def need_service(addr: Tuple[str, int], what: str) -> None:
    if not reachable(addr):
        unavailable(f"{what} is not reachable at {addr[0]}:{addr[1]}")


def need_module(name: str) -> None:
    try:
        __import__(name)
    except ImportError:
        unavailable(f"Python package {name} is not installed")


@contextlib.contextmanager
def spawn_memcached(*extra: str) -> Iterator[Tuple[str, int]]:
    """Our own memcached on a free loopback port, stopped on exit."""
    exe = shutil.which("memcached") or ("/usr/bin/memcached"
                                        if os.path.exists("/usr/bin/memcached") else None)
    if exe is None:
        unavailable("memcached is not installed (apt: memcached)")
    assert exe is not None
    port = free_low_port()
    args = [exe, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", *extra]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not reachable(("127.0.0.1", port)):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr and proc.poll() else ""
                unavailable(f"memcached did not start: {err.strip()}")
            time.sleep(0.05)
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[Tuple[str, int]]:
    """One memcached (default settings) for the whole session."""
    with spawn_memcached() as addr:
        yield addr


def queue_args(name: str, variant: str, tmpdir: str,
               memcached: Tuple[str, int] = ("127.0.0.1", 0)) -> List[str]:
    """Command-line queue options selecting this run's storage for ``variant``."""
    table = f"gq_{RUN}_{variant}"
    if name == "libsqlite3":
        return [f"--libsqlite3-db={os.path.join(tmpdir, 'q.sqlite')}",
                f"--libsqlite3-table={table}"]
    if name == "postgres":
        return [f"--libpq-conninfo={PG_CONNINFO}", f"--libpq-table={table}"]
    if name == "mysql":
        return ["--mysql-host=127.0.0.1", "--mysql-port=3306", "--mysql-user=root",
                "--mysql-db=test", f"--mysql-table={table}"]
    if name == "libdrizzle":
        return ["--libdrizzle-host=127.0.0.1", "--libdrizzle-port=3306",
                "--libdrizzle-user=root", "--libdrizzle-db=test",
                f"--libdrizzle-table={table}"]
    if name == "libmemcached":
        return [f"--libmemcached-servers={memcached[0]}:{memcached[1]}",
                f"--libmemcached-prefix=gq{RUN}{variant}_"]
    if name == "libtokyocabinet":
        return [f"--libtokyocabinet-file={os.path.join(tmpdir, variant + '.tch')}"]
    if name == "redis":
        return [f"--redis-server={REDIS[0]}", f"--redis-port={REDIS[1]}",
                f"--redis-prefix=_gq{RUN}{variant}_"]
    raise ValueError(name)


def settings_for(name: str, args: List[str], **kw: object) -> Settings:
    opts = []
    for arg in args:
        key, _, value = arg[2:].partition("=")
        opts.append((key, value))
    return Settings(queue_type=name, queue_options=tuple(opts), **kw)  # type: ignore[arg-type]


def require_backend(name: str, request: pytest.FixtureRequest) -> Tuple[str, int]:
    """Skip/fail unless the service and driver for ``name`` are there; memcached's address."""
    mc = ("127.0.0.1", 0)
    if name == "postgres":
        need_module("psycopg2")
        need_service(PG, "PostgreSQL")
    elif name in ("mysql", "libdrizzle"):
        need_module("pymysql")
        need_service(MY, "MariaDB/MySQL")
    elif name == "redis":
        need_module("redis")
        need_service(REDIS, "Redis")
    elif name == "libmemcached":
        need_module("pymemcache")
        mc = request.getfixturevalue("memcached_server")
    elif name == "libtokyocabinet":
        from gearmand_py.errors import ConfigError
        from gearmand_py.queues.tokyocabinet import load_library
        try:
            load_library()
        except ConfigError as exc:
            unavailable(str(exc))
    return mc


def drop_storage(name: str, args: List[str]) -> None:
    """Remove what a test wrote (tables, keys); files go with tmp_path."""
    opts = dict(a[2:].partition("=")[::2] for a in args)
    try:
        if name == "postgres":
            import psycopg2
            with psycopg2.connect(PG_CONNINFO) as conn, conn.cursor() as cur:
                cur.execute(f'DROP TABLE IF EXISTS "{opts["libpq-table"]}"')
        elif name in ("mysql", "libdrizzle"):
            import pymysql
            table = opts.get("mysql-table") or opts["libdrizzle-table"]
            conn = pymysql.connect(host=MY[0], port=MY[1], user="root", database="test")
            with conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS `{table}`")
            conn.close()
        elif name == "redis":
            import redis
            client = redis.Redis(*REDIS)
            keys = list(client.scan_iter(match=opts["redis-prefix"] + "*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
        elif name == "libmemcached":
            from gearmand_py.queues.memcached import dump_keys, parse_servers
            from pymemcache.client.base import Client
            for host, port in parse_servers(opts["libmemcached-servers"]):
                mc = Client((host, port))
                for key in dump_keys(host, port):
                    if key.startswith(opts["libmemcached-prefix"].encode()):
                        mc.delete(key)
                mc.close()
    except Exception:   # cleanup is best effort
        pass


BackendFactory = Callable[..., object]


@pytest.fixture(params=BACKENDS)
def make(request: pytest.FixtureRequest, tmp_path: "os.PathLike[str]") -> Iterator[BackendFactory]:
    """``make(variant="a")`` -> an opened backend of this parameter's kind."""
    name = request.param
    mc = require_backend(name, request)
    opened: List[object] = []
    used: Dict[str, List[str]] = {}
    nonce = uuid.uuid4().hex[:6]

    def factory(variant: str = "a", **kw: object) -> object:
        args = queue_args(name, nonce + variant, str(tmp_path), mc)
        used[variant] = args
        backend = create_backend(settings_for(name, args, **kw))
        backend.open()
        opened.append(backend)
        return backend

    factory.name = name  # type: ignore[attr-defined]
    yield factory
    for backend in opened:
        try:
            backend.close()  # type: ignore[attr-defined]
        except Exception:
            pass
    for args in used.values():
        drop_storage(name, args)


def stored(backend: object) -> Dict[Tuple[bytes, bytes], StoredJob]:
    jobs = list(backend.replay())  # type: ignore[attr-defined]
    by_key = {(j.function, j.unique): j for j in jobs}
    assert len(by_key) == len(jobs), f"duplicate rows replayed: {jobs}"
    return by_key


def put(backend: object, *jobs: StoredJob) -> None:
    for job in jobs:
        backend.add(job)  # type: ignore[attr-defined]
        backend.flush()  # type: ignore[attr-defined]


# ---- the contract -----------------------------------------------------------------------

def test_protocol_attributes(make: BackendFactory) -> None:
    b = make()
    assert b.durable is True  # type: ignore[attr-defined]
    expected_epoch = make.name not in ("redis", "libmemcached")  # type: ignore[attr-defined]
    assert b.supports_epoch is expected_epoch  # type: ignore[attr-defined]


def test_round_trip_and_done(make: BackendFactory) -> None:
    b = make()
    assert stored(b) == {}
    jobs = [StoredJob(b"u1", b"fa", b"one", NORMAL, 0),
            StoredJob(b"u2", b"fa", b"two", HIGH, 0),
            StoredJob(b"u1", b"fb", b"three", LOW, 0)]
    put(b, *jobs)
    assert stored(b) == {(j.function, j.unique): j for j in jobs}
    b.done(b"u1", b"fa")  # type: ignore[attr-defined]
    assert set(stored(b)) == {(b"fa", b"u2"), (b"fb", b"u1")}
    b.done(b"u2", b"fa")  # type: ignore[attr-defined]
    b.done(b"u1", b"fb")  # type: ignore[attr-defined]
    assert stored(b) == {}


def test_binary_and_empty_data(make: BackendFactory) -> None:
    b = make()
    blob = bytes(range(256)) + b"\0\0tail\0"
    put(b, StoredJob(b"bin", b"f", blob, NORMAL, 0),
        StoredJob(b"empty", b"f", b"", NORMAL, 0),
        StoredJob(b"nul", b"f", b"\0", NORMAL, 0))
    got = stored(b)
    assert got[(b"f", b"bin")].data == blob
    assert got[(b"f", b"empty")].data == b""
    assert got[(b"f", b"nul")].data == b"\0"


@pytest.mark.parametrize("unique", [b"it's", b"a'; DROP TABLE x; --", b"dash-ed-unique",
                                    b'quo"te\\', "caf\u00e9-\u2603".encode()])
def test_awkward_uniques(make: BackendFactory, unique: bytes) -> None:
    b = make()
    if make.name == "libmemcached" and len(unique.split()) > 1:  # type: ignore[attr-defined]
        # memcached's text protocol has no way to send a key with spaces: refused.
        with pytest.raises(QueueError):
            put(b, StoredJob(unique, b"fn", b"d", NORMAL, 0))
        assert stored(b) == {}
        return
    put(b, StoredJob(unique, b"fn", b"d", NORMAL, 0))
    got = stored(b)
    assert got == {(b"fn", unique): StoredJob(unique, b"fn", b"d", NORMAL, 0)}
    b.done(unique, b"fn")  # type: ignore[attr-defined]
    assert stored(b) == {}


def test_hyphenated_function(make: BackendFactory) -> None:
    b = make()
    job = StoredJob(b"u-1", b"my-func-name", b"d", LOW, 0)
    put(b, job)
    if make.name == "libmemcached":  # type: ignore[attr-defined]
        # gearmand's key <prefix><function>-<unique> cannot tell where a hyphenated
        # function ends: replay splits at the first '-' (documented in docs/queues.md).
        split = StoredJob(b"func-name-u-1", b"my", b"d", LOW, 0)
        assert stored(b) == {(b"my", b"func-name-u-1"): split}
    else:
        assert stored(b) == {(job.function, job.unique): job}
    b.done(b"u-1", b"my-func-name")  # type: ignore[attr-defined]
    assert stored(b) == {}


def test_priorities_and_when(make: BackendFactory) -> None:
    b = make()
    epoch = b.supports_epoch  # type: ignore[attr-defined]
    when = 1_900_000_000 if epoch else 0
    jobs = [StoredJob(b"h", b"f", b"", HIGH, when), StoredJob(b"n", b"f", b"", NORMAL, 0),
            StoredJob(b"l", b"f", b"", LOW, when)]
    put(b, *jobs)
    got = stored(b)
    for j in jobs:
        assert got[(b"f", j.unique)] == j


def test_epoch_jobs_stored_or_refused(make: BackendFactory) -> None:
    b = make()
    job = StoredJob(b"e", b"f", b"", NORMAL, 1_900_000_000)
    if b.supports_epoch:  # type: ignore[attr-defined]
        put(b, job)
        assert stored(b) == {(b"f", b"e"): job}
    else:                 # redis and libmemcached, like gearmand
        with pytest.raises(QueueError):
            put(b, job)
        assert stored(b) == {}


def test_duplicate_add_replaces(make: BackendFactory) -> None:
    b = make()
    put(b, StoredJob(b"dup", b"f", b"first", LOW, 0))
    put(b, StoredJob(b"dup", b"f", b"second", HIGH, 0))
    assert stored(b) == {(b"f", b"dup"): StoredJob(b"dup", b"f", b"second", HIGH, 0)}


def test_done_of_missing_row(make: BackendFactory) -> None:
    b = make()
    put(b, StoredJob(b"keep", b"f", b"x", NORMAL, 0))
    b.done(b"nope", b"f")  # type: ignore[attr-defined]
    b.done(b"keep", b"other")  # type: ignore[attr-defined]
    assert set(stored(b)) == {(b"f", b"keep")}


def test_reopen_after_close(make: BackendFactory) -> None:
    b = make()
    job = StoredJob(b"persist", b"f", b"data\0", LOW, 0)
    put(b, job)
    b.close()  # type: ignore[attr-defined]
    b.open()  # type: ignore[attr-defined]
    assert stored(b) == {(b"f", b"persist"): job}
    b.close()  # type: ignore[attr-defined]
    again = make()          # a fresh instance on the same storage
    assert stored(again) == {(b"f", b"persist"): job}


def test_table_or_prefix_option_selects_storage(make: BackendFactory) -> None:
    a = make("a")
    other = make("b")
    put(a, StoredJob(b"ua", b"f", b"A", NORMAL, 0))
    put(other, StoredJob(b"ub", b"f", b"B", NORMAL, 0))
    assert set(stored(a)) == {(b"f", b"ua")}
    assert set(stored(other)) == {(b"f", b"ub")}


def test_many_jobs_replay_in_full(make: BackendFactory) -> None:
    b = make()
    jobs = [StoredJob(b"m%d" % i, b"f%d" % (i % 3), b"x" * i, i % 3, 0) for i in range(200)]
    put(b, *jobs)
    assert stored(b) == {(j.function, j.unique): j for j in jobs}


def test_builtin_is_a_noop() -> None:
    b = create_backend(Settings(queue_type="builtin"))
    b.open()
    b.add(StoredJob(b"u", b"f", b"d", NORMAL, 0))
    b.flush()
    b.done(b"u", b"f")
    assert list(b.replay()) == []
    assert b.durable is False
    b.close()


# ---- commit: one unit of adds and dones (the store thread's group commit) ---------------

def test_commit_adds_and_dones_as_one_unit(make: BackendFactory) -> None:
    b = make()
    jobs = [StoredJob(b"c%d" % i, b"fc", b"d%d" % i, i % 3, 0) for i in range(50)]
    assert b.commit(jobs, []) == {}  # type: ignore[attr-defined]
    assert stored(b) == {(j.function, j.unique): j for j in jobs}
    extra = StoredJob(b"new", b"fc", b"n", HIGH, 0)
    dones = [(j.unique, j.function) for j in jobs[:40]]
    assert b.commit([extra], dones) == {}  # type: ignore[attr-defined]
    assert stored(b) == {(j.function, j.unique): j for j in jobs[40:] + [extra]}


def test_commit_deletes_before_it_adds(make: BackendFactory) -> None:
    """A job that ended and a new one with the same key in one unit: the new one stays."""
    b = make()
    put(b, StoredJob(b"k", b"f", b"old", LOW, 0))
    new = StoredJob(b"k", b"f", b"new", HIGH, 0)
    assert b.commit([new], [(b"k", b"f")]) == {}  # type: ignore[attr-defined]
    assert stored(b) == {(b"f", b"k"): new}


def test_commit_same_key_twice_keeps_the_last(make: BackendFactory) -> None:
    b = make()
    first, second = StoredJob(b"t", b"f", b"1", LOW, 0), StoredJob(b"t", b"f", b"2", HIGH, 0)
    assert b.commit([first, second], []) == {}  # type: ignore[attr-defined]
    assert stored(b) == {(b"f", b"t"): second}


#: A job each backend cannot hold, refused alone by commit (None: it holds any job).
UNSTORABLE = {
    "postgres": StoredJob(b"\xff\xfe", b"f", b"", NORMAL, 0),
    "mysql": StoredJob(b"\xff\xfe", b"f", b"", NORMAL, 0),
    "libdrizzle": StoredJob(b"\xff\xfe", b"f", b"", NORMAL, 0),
    "redis": StoredJob(b"e", b"f", b"", NORMAL, 1_900_000_000),
    "libmemcached": StoredJob(b"has space", b"f", b"", NORMAL, 0),
}


def test_commit_refuses_an_unstorable_job_alone(make: BackendFactory) -> None:
    name = make.name  # type: ignore[attr-defined]
    bad = UNSTORABLE.get(name)
    if bad is None:
        pytest.skip(f"{name} can store any job")
    b = make()
    good = [StoredJob(b"g1", b"f", b"x", NORMAL, 0), StoredJob(b"g2", b"f", b"y", LOW, 0)]
    refused = b.commit([good[0], bad, good[1]], [])  # type: ignore[attr-defined]
    assert list(refused) == [1] and refused[1]
    assert stored(b) == {(j.function, j.unique): j for j in good}


def test_commit_of_nothing_checks_the_store(make: BackendFactory) -> None:
    b = make()
    assert b.commit([], []) == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["postgres", "mysql", "redis"])
def test_commit_reconnects_after_the_server_dropped_it(name: str, tmp_path: "os.PathLike[str]",
                                                       request: pytest.FixtureRequest) -> None:
    """The server closes the connection; a later commit works again by itself."""
    require_backend(name, request)
    args = queue_args(name, uuid.uuid4().hex[:6], str(tmp_path))
    b = create_backend(settings_for(name, args))
    b.open()
    try:
        assert b.commit([StoredJob(b"before", b"f", b"", NORMAL, 0)], []) == {}
        _drop_connections(name, b)
        ok = False
        for _ in range(2):               # the first may see the dead socket
            try:
                ok = b.commit([StoredJob(b"after", b"f", b"", NORMAL, 0)], []) == {}
                break
            except Exception:
                continue
        assert ok
        assert set(stored(b)) == {(b"f", b"before"), (b"f", b"after")}
    finally:
        b.close()
        drop_storage(name, args)


def _drop_connections(name: str, backend: object) -> None:
    if name == "postgres":
        import psycopg2
        pid = backend._conn.get_backend_pid()  # type: ignore[attr-defined]
        with psycopg2.connect(PG_CONNINFO) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    elif name == "mysql":
        import pymysql
        thread_id = backend._conn.thread_id()  # type: ignore[attr-defined]
        conn = pymysql.connect(host=MY[0], port=MY[1], user="root", database="test")
        with conn.cursor() as cur:
            cur.execute("KILL %s", (thread_id,))
        conn.close()
    else:
        import redis
        client = redis.Redis(*REDIS)
        client.client_kill_filter(_type="normal", skipme=True)
        client.close()


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.parametrize("name", ["postgres", "mysql", "libmemcached", "redis"])
def test_hung_store_gives_up_within_the_queue_timeout(name: str) -> None:
    """A store that accepts and then says nothing cannot hold the caller longer than about
    --queue-timeout (per attempt; a lost connection is retried once)."""
    need_module({"postgres": "psycopg2", "mysql": "pymysql", "libmemcached": "pymemcache",
                 "redis": "redis"}[name])
    with silent_server() as port:
        args = {"postgres": [f"--libpq-conninfo=host=127.0.0.1 port={port} dbname=test"],
                "mysql": ["--mysql-host=127.0.0.1", f"--mysql-port={port}"],
                "libmemcached": [f"--libmemcached-servers=127.0.0.1:{port}"],
                "redis": ["--redis-server=127.0.0.1", f"--redis-port={port}"]}[name]
        b = create_backend(settings_for(name, args, queue_timeout=1))
        start = time.monotonic()
        errors: Tuple[type, ...] = (QueueError,)
        if name == "postgres":
            import psycopg2
            errors = (psycopg2.OperationalError,)
        elif name == "mysql":
            import pymysql
            errors = (pymysql.OperationalError,)
        with pytest.raises(errors):
            if name in ("postgres", "mysql"):
                b.commit([StoredJob(b"u", b"f", b"", NORMAL, 0)], [])  # connects lazily
            else:
                b.open()
        assert time.monotonic() - start < 4.5


def test_redis_layout_released_c_can_replay(request: pytest.FixtureRequest,
                                             tmp_path: "os.PathLike[str]") -> None:
    """Released C gearmand replays a hash only with exactly the data and priority fields:
    that is what is written, unless the function name holds a '-' (then the next upstream
    release's function/unique fields are added, which we read back); a hash in that next
    layout, written by upstream, replays too."""
    import redis
    require_backend("redis", request)
    args = queue_args("redis", uuid.uuid4().hex[:6], str(tmp_path), None)
    backend = create_backend(settings_for("redis", args))
    backend.open()  # type: ignore[attr-defined]
    client = redis.Redis(*REDIS)
    key = backend.key  # type: ignore[attr-defined]
    try:
        backend.commit([StoredJob(b"u1", b"plain", b"d1", HIGH, 0),  # type: ignore
                        StoredJob(b"u2", b"has-dash", b"d2", LOW, 0)], [])
        assert client.hgetall(key(b"u1", b"plain")) == {b"data": b"d1", b"priority": b"0"}
        assert client.hgetall(key(b"u2", b"has-dash")) == {
            b"data": b"d2", b"priority": b"2", b"function": b"has-dash", b"unique": b"u2"}
        client.hset(key(b"u3", b"next"), mapping={b"data": b"d3", b"priority": b"1",
                                                 b"function": b"next", b"unique": b"u3"})
        assert stored(backend) == {
            (b"plain", b"u1"): StoredJob(b"u1", b"plain", b"d1", HIGH, 0),
            (b"has-dash", b"u2"): StoredJob(b"u2", b"has-dash", b"d2", LOW, 0),
            (b"next", b"u3"): StoredJob(b"u3", b"next", b"d3", NORMAL, 0)}
    finally:
        backend.close()  # type: ignore[attr-defined]
        drop_storage("redis", args)
