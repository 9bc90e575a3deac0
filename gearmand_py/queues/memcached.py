"""`-q libmemcached`: background jobs as memcached items, gearmand's layout (pymemcache).

Thread: the store thread (store.py; ``open``/``replay`` run on the main thread before it
starts, ``close`` after it stopped).

Options: ``--libmemcached-servers`` (``host[:port]`` list separated by ``,`` or spaces;
required) and ``--libmemcached-prefix`` (default in ``OPTIONS``).

Layout (gearmand's, libgearman-server/plugins/queue/libmemcached/queue.cc): key
``<prefix><function>-<unique>``, value = the data, item flags = priority (0 HIGH, 1 NORMAL,
2 LOW), expiry 0. With several servers a key goes to the server libmemcached's defaults pick
(one-at-a-time hash, modulo the server count, in the order given), so a queue shared with
gearmand stays consistent; done() deletes the key on every server, which also removes items
another placement put elsewhere.

Replay lists the keys with ``lru_crawler metadump all`` (memcached >= 1.4.31; 1.6 on
Debian), falling back to ``stats cachedump`` on servers without it, then fetches each
key with its flags.  As in gearmand, the key is split at the first ``-`` after the prefix,
so a function name containing ``-`` comes back split wrongly (the format has no room for
the function name); memcached cannot store epoch jobs (``supports_epoch`` False), and it
may evict items under memory pressure (run it with enough memory, or ``-M``).

commit() sends a unit per server as one ``delete_many`` (on every server) and one
``set_many`` (pymemcache writes all commands, then reads all replies): memcached has no
transactions, so a failed unit may leave some of its items stored (never acknowledged;
they replay after a restart), and a key the server did not store refuses that job alone.
``--queue-timeout`` is pymemcache's connect and I/O timeout; after an error pymemcache
drops the socket and the next unit reconnects.
"""

from __future__ import annotations

import re
import socket
import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Sequence, Tuple
from urllib.parse import unquote_to_bytes

from ..errors import ConfigError, QueueError
from ..options import Option, queue_row
from .base import Driver, Key, Refused, StoredJob, stored_priority

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import Settings

SECTION = "libmemcached"
SECTIONS = (SECTION,)
OPTIONS: Tuple[Option, ...] = (
    queue_row("libmemcached-servers", "str", None, "List of Memcached servers to use.",
              SECTION),
    queue_row("libmemcached-prefix", "str", "gear_", "Prefix to use in memcached keys",
              SECTION),
)
DRIVER = Driver("pymemcache.client.base", "pymemcache", "memcached", "python3-pymemcache")
#: gearmand's wording ("No --servers given" in gearmand 0.x's
#: libgearman-server/queue_libmemcached.c, where module options were named without their
#: prefix; 1.1 only logs "memcached_servers_parse" once started), with the full name.
NO_SERVERS = "No --libmemcached-servers given"
DEFAULT_PORT = 11211
#: Read timeout of the key listing at replay (s).
TIMEOUT_S = 10.0
#: Upper bound on one key-listing reply (bytes) and on BUSY retries of the crawler.
MAX_DUMP_BYTES = 1 << 30
BUSY_RETRIES = 50
GET_BATCH = 100
#: memcached's longest key.
MAX_KEY = 250


def one_at_a_time(key: bytes) -> int:
    """libhashkit's default hash (chars are signed on x86, as in the C code)."""
    value = 0
    for byte in key:
        value = (value + (byte - 256 if byte >= 128 else byte)) & 0xFFFFFFFF
        value = (value + (value << 10)) & 0xFFFFFFFF
        value ^= value >> 6
    value = (value + (value << 3)) & 0xFFFFFFFF
    value ^= value >> 11
    value = (value + (value << 15)) & 0xFFFFFFFF
    return value


def parse_servers(text: str) -> List[Tuple[str, int]]:
    """``host[:port][:weight]`` entries separated by commas or whitespace."""
    servers = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        host, _, rest = item.partition(":")
        port_text = rest.split(":", 1)[0]
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            raise ConfigError(f"invalid --libmemcached-servers entry: {item}") from None
        servers.append((host or "localhost", port))
    return servers


class _Serde:
    """Values are (data, flags) on the way in, and come back the same way."""

    def serialize(self, key: Any, value: Tuple[bytes, int]) -> Tuple[bytes, int]:
        return value

    def deserialize(self, key: Any, value: bytes, flags: int) -> Tuple[bytes, int]:
        return value, flags


class MemcachedQueue:
    supports_epoch = False
    durable = True

    def __init__(self, servers: List[Tuple[str, int]], prefix: str, timeout: float) -> None:
        from pymemcache.client.base import Client

        self._client_cls = Client
        self.timeout = timeout
        self.servers = servers
        self.prefix = prefix.encode("utf-8", "surrogateescape")
        self._clients: List[Any] = []

    def key(self, unique: bytes, function: bytes) -> bytes:
        return b"%s%s-%s" % (self.prefix, function, unique)

    def _pick(self, key: bytes) -> Any:
        if len(self._clients) == 1:
            return self._clients[0]
        return self._clients[one_at_a_time(key) % len(self._clients)]

    def open(self) -> None:
        clients: List[Any] = []
        for host, port in self.servers:
            client = self._client_cls((host, port), serde=_Serde(),
                                      connect_timeout=self.timeout, timeout=self.timeout)
            try:
                client.version()
            except Exception as exc:
                client.close()
                for c in clients:
                    c.close()
                raise QueueError(f"cannot connect to memcached at {host}:{port}: "
                                 f"{exc or type(exc).__name__}") from None
            clients.append(client)
        self._clients = clients

    def close(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def _checked_key(self, job: StoredJob) -> bytes:
        """The job's key; QueueError for a job memcached cannot hold."""
        if job.when:
            raise QueueError("memcached cannot store epoch jobs")
        key = self.key(job.unique, job.function)
        if len(key) > MAX_KEY or len(key.split()) != 1 or key.split()[0] != key:
            raise QueueError(f"memcached cannot store the key {key[:60]!r} (spaces, control "
                             f"characters or more than {MAX_KEY} bytes)")
        return key

    def add(self, job: StoredJob) -> None:
        if not self._clients:
            raise QueueError("the memcached queue is not open")
        key = self._checked_key(job)
        if not self._pick(key).set(key, (job.data, job.priority), expire=0, noreply=False):
            raise QueueError("memcached did not store the job")

    def commit(self, adds: Sequence[StoredJob], dones: Sequence[Key]) -> Refused:
        if not self._clients:
            raise QueueError("the memcached queue is not open")
        refused: Refused = {}
        if dones:
            keys = [self.key(unique, function) for unique, function in dones]
            for client in self._clients:
                client.delete_many(keys, noreply=False)     # NOT_FOUND is fine
        per_client: Dict[int, Dict[bytes, Tuple[bytes, int]]] = {}
        index: Dict[bytes, List[int]] = {}
        for i, job in enumerate(adds):
            try:
                key = self._checked_key(job)
            except QueueError as exc:
                refused[i] = str(exc)
                continue
            slot = id(self._pick(key))
            per_client.setdefault(slot, {})[key] = (job.data, job.priority)
            index.setdefault(key, []).append(i)
        for client in self._clients:
            values = per_client.get(id(client))
            if values:
                for key in client.set_many(values, expire=0, noreply=False):
                    for i in index[key]:
                        refused[i] = "memcached did not store the job"
        if not adds and not dones:
            for client in self._clients:
                client.version()                  # a probe: is the store back?
        return refused

    def flush(self) -> None:
        pass

    def done(self, unique: bytes, function: bytes) -> None:
        key = self.key(unique, function)
        for client in self._clients:
            client.delete(key, noreply=False)   # NOT_FOUND is fine

    def replay(self) -> Iterator[StoredJob]:
        for (host, port), client in zip(self.servers, self._clients):
            keys = sorted(k for k in dump_keys(host, port) if k.startswith(self.prefix))
            for i in range(0, len(keys), GET_BATCH):
                found: Dict[bytes, Tuple[bytes, int]] = client.get_many(keys[i:i + GET_BATCH])
                for key in keys[i:i + GET_BATCH]:
                    item = found.get(key)
                    if item is None:
                        continue
                    function, sep, unique = key[len(self.prefix):].partition(b"-")
                    if not sep:
                        continue
                    data, flags = item
                    yield StoredJob(unique, function, data, stored_priority(flags), 0)


_FAIL = (b"BUSY", b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")


def _command(sock: socket.socket, line: bytes) -> bytes:
    """Send one text command; read its reply (up to ``END``, or one error line)."""
    sock.sendall(line + b"\r\n")
    buf = bytearray()
    deadline = time.monotonic() + TIMEOUT_S * 6
    while not (buf.endswith(b"END\r\n")
               or (buf.startswith(_FAIL) and buf.endswith(b"\r\n"))):
        if time.monotonic() > deadline or len(buf) > MAX_DUMP_BYTES:
            raise QueueError(f"memcached reply to {line.decode()!r} too slow or too large")
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise QueueError("memcached closed the connection")
        buf += chunk
    return bytes(buf)


def dump_keys(host: str, port: int) -> List[bytes]:
    """Every key on one server: ``lru_crawler metadump all``, else ``stats cachedump``."""
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        for _ in range(BUSY_RETRIES):
            reply = _command(sock, b"lru_crawler metadump all")
            if reply.startswith(b"BUSY"):
                time.sleep(0.1)
                continue
            if reply.startswith(_FAIL):
                break
            return [unquote_to_bytes(line.split(b" ", 1)[0][4:])
                    for line in reply.split(b"\n") if line.startswith(b"key=")]
        items = _command(sock, b"stats items")
        slabs = sorted({int(m) for m in re.findall(rb"STAT items:(\d+):number ", items)})
        keys: List[bytes] = []
        for slab in slabs:
            reply = _command(sock, b"stats cachedump %d 0" % slab)
            keys += re.findall(rb"ITEM (\S+) \[", reply)
        return keys


def _servers(value: object) -> List[Tuple[str, int]]:
    """--libmemcached-servers, required: at least one server."""
    servers = parse_servers(str(value or ""))
    if not servers:
        raise ConfigError(NO_SERVERS)
    return servers


def validate(values: Mapping[str, object]) -> None:
    _servers(values.get("libmemcached-servers"))
    DRIVER.require(values)


def create(settings: Settings) -> MemcachedQueue:
    return MemcachedQueue(_servers(settings.queue_option("libmemcached-servers")),
                          settings.queue_text("libmemcached-prefix"),
                          float(settings.queue_timeout))
