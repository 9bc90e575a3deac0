"""`-q postgres` (alias `libpq`): background jobs in a PostgreSQL table (psycopg2).

Thread: the processing thread only (``open``/``replay`` run on the main thread before it
starts, ``close`` after it stopped; the connection is never used by two threads at once).

Layout (gearmand 1.1.20's DDL, libgearman-server/plugins/queue/postgres/queue.cc; created
when the table is missing)::

    CREATE TABLE IF NOT EXISTS <t> (unique_key VARCHAR(64), function_name VARCHAR(255),
        priority INTEGER, data BYTEA, when_to_run INTEGER, UNIQUE (unique_key, function_name))

Options: ``--libpq-conninfo`` (a libpq connection string; empty = the PG* environment
variables) and ``--libpq-table``; their defaults are in ``OPTIONS``. The connection is in
autocommit mode, so add() has committed when it returns (flush() has nothing left to do).

Fixed gearmand bugs, same format: done() is parameterised (a unique containing ``'``
works); replay reads priority and when_to_run as the numbers they are (gearmand reads the
binary result with atoi, so every job came back HIGH with when 0); a duplicate
(unique, function) replaces the row instead of refusing the job; a lost connection is
re-opened once and the statement retried.  unique/function must be valid UTF-8 text for
VARCHAR columns in a UTF8 database; anything else refuses that job (QUEUE_ERROR).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Tuple, Type

from ..errors import QueueError
from ..options import Option, queue_row
from .base import Driver, StoredJob, one_line, stored_priority
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
CONNECT_TIMEOUT_S = 5


class PostgresQueue(DbApiQueue):
    supports_epoch = True
    durable = True

    def __init__(self, conninfo: str, table: str) -> None:
        import psycopg2
        import psycopg2.errors
        import psycopg2.extensions
        from psycopg2 import sql

        self._pg = psycopg2
        self.conninfo = conninfo
        self._conn: Any = None
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
            table = table.lower()     # what PostgreSQL does with gearmand's unquoted name
        self.table = table
        t = sql.Identifier(table)
        self._sql_insert = sql.SQL(
            "INSERT INTO {} (unique_key, function_name, priority, data, when_to_run) "
            "VALUES (%s, %s, %s, %s, %s)").format(t)
        self._sql_add = sql.SQL(
            "INSERT INTO {} (unique_key, function_name, priority, data, when_to_run) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (unique_key, function_name) DO UPDATE "
            "SET priority = EXCLUDED.priority, data = EXCLUDED.data, "
            "when_to_run = EXCLUDED.when_to_run").format(t)
        self._sql_done = sql.SQL(
            "DELETE FROM {} WHERE unique_key = %s AND function_name = %s").format(t)
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
        kwargs = {}
        if "connect_timeout" not in self._params and not os.environ.get("PGCONNECT_TIMEOUT"):
            kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
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
        return not self._usable()

    def add(self, job: StoredJob) -> None:
        try:
            args = (job.unique.decode(), job.function.decode(), job.priority,
                    self._pg.Binary(job.data), job.when)
        except UnicodeDecodeError:
            raise QueueError("unique and function must be UTF-8 for PostgreSQL") from None
        try:
            self._run(lambda cur: cur.execute(self._sql_add, args))
        except self._pg.errors.InvalidColumnReference:
            # A table without the UNIQUE constraint: no upsert possible, plain INSERT.
            self._sql_add = self._sql_insert
            self._run(lambda cur: cur.execute(self._sql_add, args))

    def flush(self) -> None:
        pass

    def done(self, unique: bytes, function: bytes) -> None:
        try:
            args = (unique.decode(), function.decode())
        except UnicodeDecodeError:
            return   # could never have been stored
        self._run(lambda cur: cur.execute(self._sql_done, args))

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
                         settings.queue_text("libpq-table"))
