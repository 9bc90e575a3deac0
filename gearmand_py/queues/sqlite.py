"""`-q libsqlite3`: background jobs in an SQLite table, C gearmand's layout (stdlib sqlite3).

Thread: the store thread (store.py).  ``open()`` and ``replay()`` run on the main thread
before the store thread starts, and ``save_on_shutdown()``/``close()`` after it has
stopped, so the connection is opened with ``check_same_thread=False`` but never shared.

Options: ``--libsqlite3-db`` (required), ``--libsqlite3-table`` (``gearman_queue``) and
``--store-queue-on-shutdown``.

Layout (identical to gearmand 1.1.20's, libgearman-server/plugins/queue/sqlite/, so a table
carries over both ways)::

    CREATE TABLE <t> ( unique_key TEXT, function_name TEXT, priority INTEGER, data BLOB,
                       when_to_run INTEGER, PRIMARY KEY (unique_key, function_name))

unique_key/function_name are bound as TEXT (``CAST(? AS TEXT)`` over the raw bytes, so
any byte string is stored exactly as gearmand's ``sqlite3_bind_text`` stores it), data as a
BLOB, priority and when_to_run as integers.  add() is ``INSERT OR REPLACE`` inside a
``BEGIN`` that flush() commits: the job is durable (synchronous=FULL, sqlite's default)
before JOB_CREATED is sent.  commit() writes a unit's deletes and inserts in ONE
transaction: one fsync (synchronous=FULL) for the whole group.

Fixed gearmand bugs, same format: every statement is parameterised; empty data is stored
as a zero-length BLOB, not NULL (gearmand then refuses to replay the row), and a NULL
data/priority/when written by gearmand is read as b"", NORMAL and 0 instead of stopping the
server.

``--store-queue-on-shutdown`` follows gearmand 1.1.21: nothing is written or deleted while
running; the table is emptied after a successful replay; the server hands every job still
in memory to ``save_on_shutdown()`` when it stops (a SIGKILL loses them, by design).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError, QueueError
from ..options import SWITCH, Option, queue_row
from .base import Key, Refused, StoredJob, stored_priority

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import Settings

SECTION = "libsqlite3"
SECTIONS = (SECTION,)
DEFAULT_TABLE = "gearman_queue"
OPTIONS: Tuple[Option, ...] = (
    queue_row("libsqlite3-db", "str", None, "Database file to use.", SECTION),
    Option("store-queue-on-shutdown", None, SWITCH, None, "Store queue on shutdown.",
           SECTION, "store_queue_on_shutdown"),
    queue_row("libsqlite3-table", "str", DEFAULT_TABLE, "Table to use.", SECTION),
)
#: gearmand's message (libgearman-server/plugins/queue/sqlite/instance.cc).
MISSING_DB = "missing required --libsqlite3-db=<dbfile> argument"
#: gearmand's sqlite3_busy_timeout.
BUSY_TIMEOUT_S = 6.0


def quote_ident(name: str) -> str:
    """An SQL identifier in double quotes (table names cannot be bound parameters)."""
    return '"' + name.replace('"', '""') + '"'


class SqliteQueue:
    supports_epoch = True
    durable = True

    def __init__(self, path: str, table: str, store_on_shutdown: bool = False) -> None:
        self.path = path
        self.table = table
        self.store_on_shutdown = store_on_shutdown
        self._db: Optional[sqlite3.Connection] = None
        self._in_txn = False
        t = quote_ident(table)
        self._sql_add = (f"INSERT OR REPLACE INTO {t} (priority, unique_key, function_name, "
                         "data, when_to_run) VALUES (?, CAST(? AS TEXT), CAST(? AS TEXT), ?, ?)")
        self._sql_done = (f"DELETE FROM {t} WHERE unique_key = CAST(? AS TEXT) "
                          "AND function_name = CAST(? AS TEXT)")
        self._sql_replay = (f"SELECT unique_key, function_name, priority, data, when_to_run "
                            f"FROM {t}")

    # ---- lifecycle -----------------------------------------------------------------
    def open(self) -> None:
        try:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as exc:
            raise QueueError(f"cannot open sqlite database {self.path}: {exc}") from None
        db.text_factory = bytes
        self._db = db
        self._in_txn = False
        try:
            self._create_table(db)
        except sqlite3.Error as exc:
            self.close()
            raise QueueError(f"cannot use sqlite database {self.path} table {self.table}: "
                             f"{exc}") from None

    def _create_table(self, db: sqlite3.Connection) -> None:
        t = quote_ident(self.table)
        found = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                           (self.table,)).fetchone()
        if not found:
            db.execute(f"CREATE TABLE {t} ( unique_key TEXT, function_name TEXT, "
                       "priority INTEGER, data BLOB, when_to_run INTEGER, "
                       "PRIMARY KEY (unique_key, function_name))")
            return
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({t})")}
        if b"when_to_run" not in columns and "when_to_run" not in columns:
            try:   # a table from gearmand < 0.x epoch support, as gearmand upgrades it
                db.execute(f"ALTER TABLE {t} ADD COLUMN when_to_run INTEGER")
            except sqlite3.Error:
                self.supports_epoch = False
                self._sql_add = (f"INSERT OR REPLACE INTO {t} (priority, unique_key, "
                                 "function_name, data) VALUES (?, CAST(? AS TEXT), "
                                 "CAST(? AS TEXT), ?)")
                self._sql_replay = (f"SELECT unique_key, function_name, priority, data, 0 "
                                    f"FROM {t}")

    def close(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        try:
            if self._in_txn:
                db.execute("COMMIT")
        finally:
            self._in_txn = False
            db.close()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise QueueError("the sqlite queue is not open")
        return self._db

    # ---- the contract --------------------------------------------------------------
    def add(self, job: StoredJob) -> None:
        if self.store_on_shutdown:
            return
        self._insert(job)

    def _insert(self, job: StoredJob) -> None:
        db = self._conn()
        if not self._in_txn:
            db.execute("BEGIN")
            self._in_txn = True
        args: tuple = (job.priority, job.unique, job.function, job.data)
        if self.supports_epoch:
            args += (job.when,)
        try:
            db.execute(self._sql_add, args)
        except sqlite3.Error:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self._in_txn:
            self._in_txn = False
            try:
                self._conn().execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def flush(self) -> None:
        if self._in_txn:
            try:
                self._conn().execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise
            self._in_txn = False

    def commit(self, adds: Sequence[StoredJob], dones: Sequence[Key]) -> Refused:
        if self.store_on_shutdown:
            return {}
        db = self._conn()
        self.flush()
        db.execute("BEGIN")
        self._in_txn = True
        epoch = self.supports_epoch
        try:
            if dones:
                db.executemany(self._sql_done, dones)
            if adds:
                db.executemany(self._sql_add, [
                    (job.priority, job.unique, job.function, job.data)
                    + ((job.when,) if epoch else ()) for job in adds])
        except sqlite3.Error:
            self._rollback()
            raise
        self.flush()
        return {}

    def done(self, unique: bytes, function: bytes) -> None:
        if self.store_on_shutdown:
            return
        self.flush()
        self._conn().execute(self._sql_done, (unique, function))

    def replay(self) -> Iterator[StoredJob]:
        db = self._conn()
        self.flush()
        rows = db.execute(self._sql_replay).fetchall()
        for unique, function, priority, data, when in rows:
            yield StoredJob(_as_bytes(unique), _as_bytes(function), _as_bytes(data),
                            stored_priority(priority), int(when or 0))
        if self.store_on_shutdown:
            # 1.1.21: the jobs now live in memory until the shutdown save.
            db.execute(f"DELETE FROM {quote_ident(self.table)}")

    # ---- --store-queue-on-shutdown ---------------------------------------------------
    def save_on_shutdown(self, jobs: Iterable[StoredJob]) -> int:
        """Store the jobs still in memory (called once at stop, after the threads ended)."""
        if not self.store_on_shutdown:
            return 0
        count = 0
        for job in jobs:
            self._insert(job)
            count += 1
        self.flush()
        return count


def _as_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return str(value).encode()


def _db_file(value: object) -> str:
    """--libsqlite3-db, which gearmand requires (an empty name counts as none)."""
    if not value:
        raise ConfigError(MISSING_DB)
    return str(value)


def validate(values: Mapping[str, object]) -> None:
    _db_file(values.get("libsqlite3-db"))


def create(settings: Settings) -> SqliteQueue:
    return SqliteQueue(_db_file(settings.queue_option("libsqlite3-db")),
                       settings.queue_text("libsqlite3-table"),
                       settings.store_queue_on_shutdown)
