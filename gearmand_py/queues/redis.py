"""`-q redis`: background jobs as Redis hashes, gearmand's key layout (redis-py).

Thread: the store thread (store.py; ``open``/``replay`` run on the main thread before it
starts, ``close`` after it stopped).

Options: ``--redis-server``, ``--redis-port`` (a number; anything else reads as 0, like
gearmand's atoi), ``--redis-password`` (sends AUTH when not empty) and ``--redis-prefix``;
their defaults are in ``OPTIONS``.

Layout (gearmand's, libgearman-server/plugins/queue/redis/queue.cc): key
``<prefix>-<function>-<unique>``, a hash with the fields ``data`` (the raw bytes) and
``priority`` (decimal), written with one HSET.  Every released C gearmand (1.1.16 up to
2.0.0) replays such a hash only if it has exactly these two fields (``assert(reply->elements
== 4)`` in its replay), so that is what we write.  Upstream's next release adds the fields
``function`` and ``unique`` so replay need not split the key; we read them when present,
and write them ourselves only for a job whose function name holds a ``-``: released C
versions split the key at the first ``-`` and cannot replay that job correctly anyway,
while we can.  Entries without them are split at the first ``-`` after the prefix, as
gearmand does; a plain string value (gearmand <= 1.1.15) is the data, NORMAL priority.

Fixed gearmand bugs, same format: NUL bytes in data survive replay (gearmand copied it with
strdup); SCAN replaces KEYS.  Redis cannot store epoch jobs (``supports_epoch`` False: the
engine refuses them with ERROR QUEUE_ERROR).  Durability is whatever the Redis server's
persistence settings give: the HSET has been acknowledged before JOB_CREATED.

commit() sends a unit as ONE MULTI/EXEC transaction in one write (one round trip): a DEL of
every done key, then one HSET per add; a command Redis refuses (WRONGTYPE on a key another
program holds) refuses that job alone.  It runs on its own lean connection (resp.py: the
commands packed here, redis-py's packing and parsing were half the server's CPU at
saturation); open, replay and single adds use redis-py.  ``--queue-timeout`` is the connect
and socket timeout of both, and redis-py's own retries are off (``Retry(NoBackoff(), 0)``):
a write that fails or times out fails its unit at once, and the next unit reconnects.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from ..errors import QueueError
from ..options import Option, queue_row
from .base import NORMAL, Driver, Key, Refused, StoredJob, one_line, stored_priority
from .resp import RespConnection, command

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import Settings

SECTION = "redis"
SECTIONS = (SECTION,)
#: gearmand's --help shows no "(=default)" for these.
OPTIONS: Tuple[Option, ...] = (
    queue_row("redis-server", "str", "127.0.0.1", "Redis server", SECTION,
              show_default=False),
    queue_row("redis-port", "str", "6379", "Redis server port/service", SECTION,
              show_default=False),
    queue_row("redis-password", "str", None, "Redis server password/service", SECTION),
    queue_row("redis-prefix", "str", "_gear_", "Prefix to use in redis keys", SECTION,
              show_default=False),
)
DRIVER = Driver("redis", "redis", "redis", "python3-redis")
SCAN_COUNT = 1000


def hset(key: bytes, job: StoredJob) -> bytes:
    """The HSET command that stores ``job`` under ``key`` (:func:`fields`), as RESP."""
    if b"-" in job.function:
        return command(b"HSET", key, *itertools.chain.from_iterable(fields(job).items()))
    prio = b"%d" % job.priority
    return (b"*6\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n$4\r\ndata\r\n$%d\r\n%s\r\n"
            b"$8\r\npriority\r\n$%d\r\n%s\r\n"
            % (len(key), key, len(job.data), job.data, len(prio), prio))


def fields(job: StoredJob) -> Dict[bytes, bytes]:
    """The hash of one job: released C gearmand's two fields, plus ``function`` and
    ``unique`` (upstream's next layout) only when the key alone cannot be split back."""
    mapping = {b"data": job.data, b"priority": b"%d" % job.priority}
    if b"-" in job.function:
        mapping[b"function"] = job.function
        mapping[b"unique"] = job.unique
    return mapping


def _glob_escape(text: bytes) -> bytes:
    out = bytearray()
    for ch in text:
        if ch in b"*?[]\\":
            out += b"\\"
        out.append(ch)
    return bytes(out)


class RedisQueue:
    supports_epoch = False
    durable = True

    def __init__(self, host: str, port: int, password: str, prefix: str,
                 timeout: float) -> None:
        import redis

        self._redis = redis
        self.host, self.port, self.password = host, port, password
        self.timeout = timeout
        self.prefix = prefix.encode("utf-8", "surrogateescape")
        self._key_head = self.prefix + b"-"
        self._client: Any = None
        self._resp = RespConnection(host, port, password, timeout)

    def key(self, unique: bytes, function: bytes) -> bytes:
        return b"%s%s-%s" % (self._key_head, function, unique)

    def open(self) -> None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = self._redis.Redis(host=self.host, port=self.port,
                                   password=self.password or None,
                                   socket_connect_timeout=self.timeout,
                                   socket_timeout=self.timeout,
                                   retry=Retry(NoBackoff(), 0))
        try:
            client.ping()
        except self._redis.RedisError as exc:
            client.close()
            raise QueueError(f"cannot connect to redis at {self.host}:{self.port}: "
                             f"{one_line(exc)}") from None
        self._client = client

    def close(self) -> None:
        self._resp.close()
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _c(self) -> Any:
        if self._client is None:
            raise QueueError("the redis queue is not open")
        return self._client

    def add(self, job: StoredJob) -> None:
        if job.when:
            raise QueueError("redis cannot store epoch jobs")
        self._c().hset(self.key(job.unique, job.function), mapping=fields(job))

    def flush(self) -> None:
        pass

    def commit(self, adds: Sequence[StoredJob], dones: Sequence[Key]) -> Refused:
        self._c()
        refused: Refused = {}
        commands = []
        if dones:
            commands.append(command(b"DEL", *[self.key(u, f) for u, f in dones]))
        slots = []
        for i, job in enumerate(adds):
            if job.when:
                refused[i] = "redis cannot store epoch jobs"
                continue
            commands.append(hset(self.key(job.unique, job.function), job))
            slots.append(i)
        # With nothing to write, an empty MULTI/EXEC is the probe: is the store back?
        replies = self._resp.transaction(commands)
        for i, reply in zip(slots, replies[1:] if dones else replies):
            if reply[:1] == b"-":
                refused[i] = reply[1:].decode("utf-8", "replace")
        return refused

    def done(self, unique: bytes, function: bytes) -> None:
        self._c().delete(self.key(unique, function))

    def replay(self) -> Iterator[StoredJob]:
        client = self._c()
        pattern = _glob_escape(self._key_head) + b"*"
        keys = sorted(set(client.scan_iter(match=pattern, count=SCAN_COUNT)))
        for key in keys:
            job = self._load(client, key)
            if job is not None:
                yield job

    def _load(self, client: Any, key: bytes) -> Optional[StoredJob]:
        kind = client.type(key)
        rest = key[len(self._key_head):]
        function, sep, unique = rest.partition(b"-")
        if kind == b"hash":
            fields = client.hgetall(key)
            if not fields:
                return None
            if b"function" in fields and b"unique" in fields:
                function, unique = fields[b"function"], fields[b"unique"]
            elif not sep:
                return None
            return StoredJob(unique, function, fields.get(b"data", b""),
                             stored_priority(fields.get(b"priority", NORMAL)), 0)
        if kind == b"string" and sep:
            data = client.get(key)
            return None if data is None else StoredJob(unique, function, data, NORMAL, 0)
        return None


def _atoi(text: str) -> int:
    """The port as gearmand reads it (atoi: a service name or junk is 0)."""
    try:
        return int(text)
    except ValueError:
        return 0


def validate(values: Mapping[str, object]) -> None:
    DRIVER.require(values)


def create(settings: Settings) -> RedisQueue:
    return RedisQueue(settings.queue_text("redis-server"), _atoi(settings.queue_text("redis-port")),
                      settings.queue_text("redis-password"), settings.queue_text("redis-prefix"),
                      float(settings.queue_timeout))
