"""`-q postgres` (alias `libpq`): background jobs in a PostgreSQL table (psycopg2).

Thread: the store thread (store.py; ``open``/``replay`` run on the main thread before it
starts, ``close`` after it stopped; the connection is never used by two threads at once).

Layout (gearmand 1.1.20's DDL, libgearman-server/plugins/queue/postgres/queue.cc; created
when the table is missing)::

    CREATE TABLE IF NOT EXISTS <t> (unique_key VARCHAR(64), function_name VARCHAR(255),
        priority INTEGER, data BYTEA, when_to_run INTEGER, UNIQUE (unique_key, function_name))

Options: ``--libpq-conninfo`` (a libpq connection string; empty = the PG* environment
variables) and ``--libpq-table``; their defaults are in ``OPTIONS``. The connection is in
autocommit mode, so add() has committed when it returns (flush() has nothing left to do);
commit() sends a unit as ONE query string, one round trip: BEGIN, the deletes and the
upserts as two statements whose rows arrive as parallel arrays (``DELETE ... IN (SELECT *
FROM unnest(...))`` and ``INSERT ... SELECT * FROM unnest(...) ON CONFLICT ...``), COMMIT;
durable as PostgreSQL's COMMIT is (synchronous_commit); add() and done() are one-job units.

Timeouts (``--queue-timeout``): psycopg2 has no socket timeout, so the module installs a
wait callback (psycopg2.extensions.set_wait_callback: libpq in non-blocking mode, the
socket polled here) that gives up when the server sends nothing for that long - a stalled
server or network cannot hold the store thread; the connection is then dropped.  Also
``connect_timeout`` and ``statement_timeout`` unless the conninfo sets them.

Fixed gearmand bugs, same format: done() is parameterised (a unique containing ``'``
works); replay reads priority and when_to_run as the numbers they are (gearmand reads the
binary result with atoi, so every job came back HIGH with when 0); a duplicate
(unique, function) replaces the row instead of refusing the job; a lost connection is
re-opened once and the statement retried.  unique/function must be valid UTF-8 text for
VARCHAR columns in a UTF8 database; anything else refuses that job (QUEUE_ERROR).
"""

from __future__ import annotations

import math
import os
import re
import select
from typing import TYPE_CHECKING, Any, Dict, Iterator, Mapping, Sequence, Tuple, Type

from ..errors import QueueError
from ..options import Option, queue_row
from .base import Driver, Key, Refused, StoredJob, one_line, stored_priority
from .dbapi import DbApiQueue

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import Settings

SECTION = "Postgres"
SECTIONS = (SECTION,)
OPTIONS: Tuple[Option, ...] = (
    queue_row("libpq-conninfo", "str", None, "PostgreSQL connection information string.",
              SECTION),
    queue_row("libpq-table", "str", "queue", "Table to use.", SECTION),
)
DRIVER = Driver("psycopg2", "psycopg2", "postgres", "python3-psycopg2")
NOT_UTF8 = "unique and function must be UTF-8 for PostgreSQL"
NUL_TEXT = "unique and function cannot contain NUL bytes in PostgreSQL"


#: How a wait that ran out of time reads (wait_with_timeout).
NO_ANSWER = "no answer from the server in"


def wait_with_timeout(conn: Any) -> None:
    """psycopg2 wait callback: drive libpq until the operation completes; raise
    OperationalError when the server is silent for ``conn.io_timeout`` seconds."""
    import psycopg2
    import psycopg2.extensions as ext

    timeout = getattr(conn, "io_timeout", None)
    poller = select.poll()
    fd = conn.fileno()
    registered = 0
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        events = select.POLLIN if state == ext.POLL_READ else select.POLLOUT
        if events != registered:
            if registered:
                poller.modify(fd, events)
            else:
                poller.register(fd, events)
            registered = events
        if not poller.poll(None if timeout is None else timeout * 1000):
            raise psycopg2.OperationalError(f"{NO_ANSWER} {timeout:g} s")


class PostgresQueue(DbApiQueue):
    supports_epoch = True
    durable = True

    def __init__(self, conninfo: str, table: str, timeout: float) -> None:
        import psycopg2
        import psycopg2.errors
        import psycopg2.extensions
        import psycopg2.extras
        from psycopg2 import sql

        self._pg = psycopg2
        self.conninfo = conninfo
        self.timeout = timeout
        psycopg2.extensions.set_wait_callback(wait_with_timeout)
        self._factory = type("TimedConnection", (psycopg2.extensions.connection,),
                             {"io_timeout": timeout})
        self._conn: Any = None
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
            table = table.lower()     # what PostgreSQL does with gearmand's unquoted name
        self.table = table
        t = sql.Identifier(table)
        insert = ("INSERT INTO {} (unique_key, function_name, priority, data, when_to_run) "
                  "SELECT * FROM unnest(%s::varchar[], %s::varchar[], %s::int[], %s::bytea[], "
                  "%s::int[])")
        self._sql_insert = sql.SQL(insert).format(t)
        self._sql_add = sql.SQL(
            insert + " ON CONFLICT (unique_key, function_name) DO UPDATE "
            "SET priority = EXCLUDED.priority, data = EXCLUDED.data, "
            "when_to_run = EXCLUDED.when_to_run").format(t)
        self._sql_done = sql.SQL(
            "DELETE FROM {} WHERE (unique_key, function_name) IN "
            "(SELECT * FROM unnest(%s::varchar[], %s::varchar[]))").format(t)
        self._sql_replay = sql.SQL(
            "SELECT unique_key, function_name, priority, data, when_to_run FROM {}").format(t)
        self._sql_create = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (unique_key VARCHAR(64), "
            "function_name VARCHAR(255), priority INTEGER, data BYTEA, "
            "when_to_run INTEGER, UNIQUE (unique_key, function_name))").format(t)
        try:
            params = psycopg2.extensions.parse_dsn(conninfo) if conninfo else {}
        except psycopg2.ProgrammingError as exc:
            raise QueueError(f"invalid --libpq-conninfo: {one_line(exc)}") from None
        self._params = params
        host = params.get("host") or os.environ.get("PGHOST") or "local socket"
        port = params.get("port") or os.environ.get("PGPORT") or "5432"
        self.where = f"{host}:{port}"

    def _connect(self) -> Any:
        kwargs: Dict[str, Any] = {"connection_factory": self._factory}
        if "connect_timeout" not in self._params and not os.environ.get("PGCONNECT_TIMEOUT"):
            kwargs["connect_timeout"] = max(2, math.ceil(self.timeout))
        if "options" not in self._params and not os.environ.get("PGOPTIONS"):
            kwargs["options"] = f"-c statement_timeout={int(self.timeout * 1000)}"
        conn = self._pg.connect(self.conninfo, **kwargs)
        conn.autocommit = True
        return conn

    def open(self) -> None:
        try:
            self._conn = self._connect()
        except self._pg.Error as exc:
            raise QueueError(f"cannot connect to PostgreSQL at {self.where}: "
                             f"{one_line(exc)}") from None
        try:
            with self._conn.cursor() as cur:
                cur.execute("SELECT 1 FROM information_schema.tables WHERE table_name = %s",
                            (self.table,))
                if cur.fetchone() is None:
                    cur.execute(self._sql_create)
        except self._pg.Error as exc:
            self.close()
            raise QueueError(f"PostgreSQL table {self.table} at {self.where}: "
                             f"{one_line(exc)}") from None

    def _driver_error(self) -> Type[BaseException]:
        return self._pg.Error  # type: ignore[no-any-return]

    def _retry_errors(self) -> Tuple[Type[BaseException], ...]:
        return (self._pg.OperationalError, self._pg.InterfaceError)

    def _usable(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def _is_lost(self, exc: BaseException) -> bool:
        """A dropped connection is worth one immediate retry; a silent server is not (it is
        hung: the caller reports it, and the store thread retries later itself)."""
        return not self._usable() and NO_ANSWER not in str(exc)

    def add(self, job: StoredJob) -> None:
        refused = self.commit((job,), ())
        if refused:
            raise QueueError(refused[0])

    def flush(self) -> None:
        pass

    def commit(self, adds: Sequence[StoredJob], dones: Sequence[Key]) -> Refused:
        refused: Refused = {}
        by_key: Dict[Tuple[str, str], tuple] = {}
        for i, job in enumerate(adds):
            try:
                unique, function = job.unique.decode(), job.function.decode()
            except UnicodeDecodeError:
                refused[i] = NOT_UTF8
                continue
            if "\0" in unique or "\0" in function:
                refused[i] = NUL_TEXT
                continue
            # Keyed: one INSERT ... ON CONFLICT may not touch a row twice; the last add of a
            # key is what a row-by-row upsert would have left.
            by_key[unique, function] = (unique, function, job.priority, job.data, job.when)
        # One statement per kind, its rows as parallel arrays: psycopg2 adapts a list in C,
        # where per-row statements or VALUES lists cost Python work per job.
        add_columns = [list(column) for column in zip(*by_key.values())]
        keys = []
        for unique_b, function_b in dones:
            try:
                keys.append((unique_b.decode(), function_b.decode()))
            except UnicodeDecodeError:
                continue     # could never have been stored
        done_columns = [list(column) for column in zip(*keys)]

        def write(cur: Any) -> None:
            # The whole transaction in one query string: one round trip.  A failing
            # statement skips the rest (COMMIT included); the connection is then dropped,
            # which rolls the transaction back.
            parts = [b"BEGIN"]
            if done_columns:
                parts.append(cur.mogrify(self._sql_done, done_columns))
            if add_columns:
                parts.append(cur.mogrify(self._sql_add, add_columns))
            parts.append(b"COMMIT")
            cur.execute(b"; ".join(parts))
        try:
            self._unit(write)
        except self._pg.errors.InvalidColumnReference:
            # A table without the UNIQUE constraint: no upsert possible, plain INSERT.
            self._sql_add = self._sql_insert
            self._unit(write)
        return refused

    def done(self, unique: bytes, function: bytes) -> None:
        self.commit((), ((unique, function),))

    def replay(self) -> Iterator[StoredJob]:
        def fetch(cur: Any) -> list:
            cur.execute(self._sql_replay)
            return list(cur.fetchall())
        for unique, function, priority, data, when in self._run(fetch):
            yield StoredJob((unique or "").encode(), (function or "").encode(),
                            bytes(data) if data is not None else b"",
                            stored_priority(priority), int(when or 0))


def validate(values: Mapping[str, object]) -> None:
    DRIVER.require(values)


def create(settings: Settings) -> PostgresQueue:
    """An empty or absent --libpq-conninfo leaves everything to libpq's PG* variables."""
    return PostgresQueue(settings.queue_text("libpq-conninfo"),
                         settings.queue_text("libpq-table"), float(settings.queue_timeout))
