"""`-q mysql` and `-q libdrizzle`: background jobs in a MySQL/MariaDB table (PyMySQL).

Thread: the store thread (store.py; ``open``/``replay`` run on the main thread before it
starts, ``close`` after it stopped).

Two layouts, as in gearmand (libgearman-server/plugins/queue/mysql/queue.cc and the
libdrizzle module); the options' defaults are in ``OPTIONS``:

* ``-q mysql`` (``--mysql-host/-port/-user/-password/-db/-table``, the table in the
  connection's database), created when missing as::

      CREATE TABLE <t>(unique_key VARCHAR(64),function_name VARCHAR(255),priority INT,
          data LONGBLOB,when_to_run INT,unique key (unique_key, function_name))

* ``-q libdrizzle`` (``--libdrizzle-host/-port/-uds/-user/-password/-db/-table``): schema
  ``<db>`` is created when missing, and the table ``<db>.<t>`` is the same but with
  ``when_to_run BIGINT``.

The connection is in autocommit mode, so add() has committed when it returns; commit()
runs a unit's deletes and inserts between BEGIN and COMMIT (InnoDB: durable per
``innodb_flush_log_at_trx_commit``), the inserts as one multi-row INSERT unless a key is
already there.  ``--queue-timeout`` is PyMySQL's connect, read and write timeout.  Every
statement is parameterised (gearmand's libdrizzle module built its SQL as text).  A lost
connection is re-opened once and the statement retried (gearmand pings first).  A duplicate
(unique, function) replaces the row; because the columns use the server's default,
case-insensitive collation, a *different* key that collides under it (``A`` vs ``a``)
refuses the new job rather than overwriting the other one.  Statements match a key
byte-exactly with ``column = BINARY %s``, which the unique index serves (``BINARY column``
on the column side would scan the whole table).  A table without when_to_run
(older layout) makes epoch jobs refused, for both names.  unique/function must be UTF-8.
``localhost`` (or no host) means the local Unix socket when it exists, as with
libmysqlclient; an empty ``--libdrizzle-uds`` counts as none.
"""

from __future__ import annotations

import os
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Sequence,
                    Tuple, Type)

from ..errors import QueueError
from ..options import SWITCH, Option, queue_row
from .base import Driver, Key, Refused, StoredJob, one_line, stored_priority
from .dbapi import DbApiQueue

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import Settings

MYSQL, DRIZZLE = "MySQL", "libdrizzle"
SECTIONS = (MYSQL, DRIZZLE)
OPTIONS: Tuple[Option, ...] = (
    queue_row("mysql-host", "str", "localhost", "MySQL host.", MYSQL),
    queue_row("mysql-port", "u16", 3306, "Port of server. (by default 3306)", MYSQL),
    queue_row("mysql-user", "str", None, "MySQL user.", MYSQL),
    queue_row("mysql-password", "str", None, "MySQL user password.", MYSQL),
    queue_row("mysql-db", "str", None, "MySQL database.", MYSQL),
    queue_row("mysql-table", "str", "gearman_queue", "MySQL table name.", MYSQL),
    queue_row("libdrizzle-host", "str", None, "Host of server.", DRIZZLE),
    queue_row("libdrizzle-port", "u16", 3306, "Port of server.", DRIZZLE),
    queue_row("libdrizzle-uds", "str", None, "Unix domain socket for server.", DRIZZLE),
    queue_row("libdrizzle-user", "str", "root", "User name for authentication.", DRIZZLE),
    queue_row("libdrizzle-password", "str", None, "Password for authentication.", DRIZZLE),
    queue_row("libdrizzle-db", "str", "gearman", "Database to use.", DRIZZLE),
    queue_row("libdrizzle-table", "str", "queue", "Table to use.", DRIZZLE),
    queue_row("libdrizzle-mysql", SWITCH, None, "Use MySQL protocol (accepted; does "
              "nothing, as in gearmand).", DRIZZLE),
)
DRIVER = Driver("pymysql", "PyMySQL", "mysql", "python3-pymysql")
NOT_UTF8 = "unique and function must be UTF-8 for MySQL"
COLLIDES = "unique key collides with another job's under the table's collation"
NO_EPOCH = "this table has no when_to_run column"
#: Byte-exact match of a stored key that the unique index serves.
KEY_MATCH = "unique_key = BINARY %s AND function_name = BINARY %s"
SOCKETS = ("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock", "/tmp/mysql.sock")
ER_DUP_ENTRY = 1062


#: MySQL client errors meaning the connection is gone (CR_SERVER_GONE_ERROR, CR_SERVER_LOST,
#: CR_SERVER_LOST_EXTENDED) or was never there (0).
LOST_CONNECTION_CODES = (0, 2006, 2013, 2055)
#: What PyMySQL's message says when a read or write hit its timeout.
TIMED_OUT = "timed out"


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class MysqlQueue(DbApiQueue):
    supports_epoch = True
    durable = True

    def __init__(self, host: str, port: int, user: str, password: str, db: str, table: str,
                 timeout: float, drizzle: bool = False, unix_socket: str = "") -> None:
        import pymysql

        self._my = pymysql
        self.timeout = timeout
        self.host, self.port, self.user, self.password = host, port, user, password
        self.db, self.table, self.drizzle = db, table, drizzle
        self.unix_socket = unix_socket
        if not unix_socket and host in ("", "localhost"):
            self.unix_socket = next((s for s in SOCKETS if os.path.exists(s)), "")
        self.where = self.unix_socket if self.unix_socket else f"{host or 'localhost'}:{port}"
        self._conn: Any = None
        self.qtable = (f"{quote_ident(db)}.{quote_ident(table)}" if drizzle
                       else quote_ident(table))
        t = self.qtable
        self._sql_add = (f"INSERT INTO {t} (unique_key, function_name, priority, data, "
                         "when_to_run) VALUES (%s, %s, %s, %s, %s)")
        self._sql_update = (f"UPDATE {t} SET priority = %s, data = %s, when_to_run = %s "
                            f"WHERE {KEY_MATCH}")
        self._sql_done = f"DELETE FROM {t} WHERE {KEY_MATCH}"
        self._sql_exists = f"SELECT 1 FROM {t} WHERE {KEY_MATCH}"
        self._sql_replay = (f"SELECT unique_key, function_name, data, priority, when_to_run "
                            f"FROM {t}")
        when_type = "BIGINT" if drizzle else "INT"
        self._sql_create = (f"CREATE TABLE {t}(unique_key VARCHAR(64),function_name "
                            f"VARCHAR(255),priority INT,data LONGBLOB,when_to_run {when_type},"
                            "unique key (unique_key, function_name))")

    # ---- lifecycle -----------------------------------------------------------------
    def _connect(self) -> Any:
        kwargs: dict = dict(user=self.user, password=self.password, autocommit=True,
                            charset="utf8mb4", connect_timeout=self.timeout,
                            read_timeout=self.timeout, write_timeout=self.timeout,
                            binary_prefix=True)
        if self.unix_socket:
            kwargs["unix_socket"] = self.unix_socket
        else:
            kwargs.update(host=self.host or "localhost", port=self.port)
        if self.db and not self.drizzle:
            kwargs["database"] = self.db
        return self._my.connect(**kwargs)

    def open(self) -> None:
        name = DRIZZLE if self.drizzle else MYSQL
        try:
            self._conn = self._connect()
        except self._my.Error as exc:
            raise QueueError(f"cannot connect to {name} at {self.where}: "
                             f"{one_line(exc)}") from None
        try:
            with self._conn.cursor() as cur:
                if self.drizzle:
                    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.db)}")
                    cur.execute("SELECT 1 FROM information_schema.tables WHERE "
                                "table_schema = %s AND table_name = %s", (self.db, self.table))
                else:
                    cur.execute("SELECT 1 FROM information_schema.tables WHERE "
                                "table_schema = DATABASE() AND table_name = %s", (self.table,))
                if cur.fetchone() is None:
                    cur.execute(self._sql_create)
                cur.execute(f"SELECT * FROM {self.qtable} LIMIT 0")
                columns = {d[0].lower() for d in cur.description or ()}
        except self._my.Error as exc:
            self.close()
            raise QueueError(f"{name} table {self.table} at {self.where}: "
                             f"{one_line(exc)}") from None
        if "when_to_run" not in columns:
            self.supports_epoch = False
            t = self.qtable
            self._sql_add = (f"INSERT INTO {t} (unique_key, function_name, priority, data) "
                             "VALUES (%s, %s, %s, %s)")
            self._sql_update = f"UPDATE {t} SET priority = %s, data = %s WHERE {KEY_MATCH}"
            self._sql_replay = f"SELECT unique_key, function_name, data, priority, 0 FROM {t}"

    def _driver_error(self) -> Type[BaseException]:
        return self._my.Error  # type: ignore[no-any-return]

    def _retry_errors(self) -> Tuple[Type[BaseException], ...]:
        return (self._my.OperationalError, self._my.InterfaceError)

    def _is_lost(self, exc: BaseException) -> bool:
        """A dropped connection is worth one immediate retry; a timed-out one is not (the
        server is hung: the caller reports it, and retries later itself)."""
        if TIMED_OUT in str(exc):
            return False
        code = exc.args[0] if exc.args else 0
        return code in LOST_CONNECTION_CODES or isinstance(exc, self._my.InterfaceError)

    # ---- the contract --------------------------------------------------------------
    def _row(self, job: StoredJob) -> tuple:
        """The INSERT arguments; raises QueueError for a job this table cannot hold."""
        try:
            unique, function = job.unique.decode(), job.function.decode()
        except UnicodeDecodeError:
            raise QueueError(NOT_UTF8) from None
        if job.when and not self.supports_epoch:
            raise QueueError(NO_EPOCH)
        row: tuple = (unique, function, job.priority, job.data)
        return row + (job.when,) if self.supports_epoch else row

    def _upsert(self, cur: Any, row: tuple) -> None:
        """INSERT one row; on a duplicate key, update the byte-identical row (QueueError
        when the duplicate is another key equal only under the collation)."""
        try:
            cur.execute(self._sql_add, row)
            return
        except self._my.IntegrityError as exc:
            if not exc.args or exc.args[0] != ER_DUP_ENTRY:
                raise
        key = row[:2]
        if cur.execute(self._sql_update, row[2:] + key) == 0:
            # Did the statement match the exact key (same values: 0 rows changed)?
            cur.execute(self._sql_exists, key)
            if cur.fetchone() is None:
                raise QueueError(COLLIDES)

    def add(self, job: StoredJob) -> None:
        row = self._row(job)
        self._run(lambda cur: self._upsert(cur, row))

    def commit(self, adds: Sequence[StoredJob], dones: Sequence[Key]) -> Refused:
        refused: Refused = {}
        rows: List[Tuple[int, tuple]] = []
        for i, job in enumerate(adds):
            try:
                rows.append((i, self._row(job)))
            except QueueError as exc:
                refused[i] = str(exc)
        keys = []
        for unique, function in dones:
            try:
                keys.append((unique.decode(), function.decode()))
            except UnicodeDecodeError:
                continue

        def write(cur: Any) -> None:
            for key in keys:
                cur.execute(self._sql_done, key)
            if not rows:
                return
            try:               # one multi-row INSERT; rolled back alone on a duplicate
                cur.executemany(self._sql_add, [row for _, row in rows])
                return
            except self._my.IntegrityError as exc:
                if not exc.args or exc.args[0] != ER_DUP_ENTRY:
                    raise
            for i, row in rows:
                try:
                    self._upsert(cur, row)
                except QueueError as exc:
                    refused[i] = str(exc)
        self._transaction(write)
        return refused

    def flush(self) -> None:
        pass

    def done(self, unique: bytes, function: bytes) -> None:
        try:
            args = (unique.decode(), function.decode())
        except UnicodeDecodeError:
            return
        self._run(lambda cur: cur.execute(self._sql_done, args))

    def replay(self) -> Iterator[StoredJob]:
        def fetch(cur: Any) -> list:
            cur.execute(self._sql_replay)
            return list(cur.fetchall())
        for unique, function, data, priority, when in self._run(fetch):
            yield StoredJob(_b(unique), _b(function), _b(data),
                            stored_priority(priority), int(when or 0))


def _b(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode()


def validate(values: Mapping[str, object]) -> None:
    DRIVER.require(values)


def _libdrizzle(settings: Settings) -> MysqlQueue:
    opt = settings.queue_text
    return MysqlQueue(opt("libdrizzle-host"), settings.queue_int("libdrizzle-port"),
                      opt("libdrizzle-user"), opt("libdrizzle-password"), opt("libdrizzle-db"),
                      opt("libdrizzle-table"), float(settings.queue_timeout), drizzle=True,
                      unix_socket=opt("libdrizzle-uds"))


def _mysql(settings: Settings) -> MysqlQueue:
    """No --mysql-user/-password/-db: empty, the server's defaults (libmysqlclient's NULL)."""
    opt = settings.queue_text
    return MysqlQueue(opt("mysql-host"), settings.queue_int("mysql-port"), opt("mysql-user"),
                      opt("mysql-password"), opt("mysql-db"), opt("mysql-table"),
                      float(settings.queue_timeout))


#: -q name -> how that name reads its options
FLAVOURS: Dict[str, Callable[[Settings], MysqlQueue]] = {"mysql": _mysql,
                                                        "libdrizzle": _libdrizzle}


def create(settings: Settings) -> MysqlQueue:
    return FLAVOURS[settings.queue_type.lower()](settings)
