"""`-q mysql` and `-q libdrizzle`: background jobs in a MySQL/MariaDB table (PyMySQL).

Thread: the processing thread only (``open``/``replay`` run on the main thread before it
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

The connection is in autocommit mode, so add() has committed when it returns.  Every
statement is parameterised (gearmand's libdrizzle module built its SQL as text).  A lost
connection is re-opened once and the statement retried (gearmand pings first).  A duplicate
(unique, function) replaces the row; because the columns use the server's default,
case-insensitive collation, a *different* key that collides under it (``A`` vs ``a``)
refuses the new job rather than overwriting the other one.  A table without when_to_run
(older layout) makes epoch jobs refused, for both names.  unique/function must be UTF-8.
``localhost`` (or no host) means the local Unix socket when it exists, as with
libmysqlclient; an empty ``--libdrizzle-uds`` counts as none.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Mapping, Tuple, Type

from ..errors import QueueError
from ..options import SWITCH, Option, queue_row
from .base import Driver, StoredJob, one_line, stored_priority
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
CONNECT_TIMEOUT_S = 5
SOCKETS = ("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock", "/tmp/mysql.sock")
ER_DUP_ENTRY = 1062


#: MySQL client errors meaning the connection is gone (CR_SERVER_GONE_ERROR, CR_SERVER_LOST,
#: CR_SERVER_LOST_EXTENDED) or was never there (0).
LOST_CONNECTION_CODES = (0, 2006, 2013, 2055)


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class MysqlQueue(DbApiQueue):
    supports_epoch = True
    durable = True

    def __init__(self, host: str, port: int, user: str, password: str, db: str, table: str,
                 drizzle: bool = False, unix_socket: str = "") -> None:
        import pymysql

        self._my = pymysql
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
                            "WHERE BINARY unique_key = %s AND BINARY function_name = %s")
        self._sql_done = (f"DELETE FROM {t} WHERE BINARY unique_key = %s "
                          "AND BINARY function_name = %s")
        self._sql_replay = (f"SELECT unique_key, function_name, data, priority, when_to_run "
                            f"FROM {t}")
        when_type = "BIGINT" if drizzle else "INT"
        self._sql_create = (f"CREATE TABLE {t}(unique_key VARCHAR(64),function_name "
                            f"VARCHAR(255),priority INT,data LONGBLOB,when_to_run {when_type},"
                            "unique key (unique_key, function_name))")

    # ---- lifecycle -----------------------------------------------------------------
    def _connect(self) -> Any:
        kwargs: dict = dict(user=self.user, password=self.password, autocommit=True,
                            charset="utf8mb4", connect_timeout=CONNECT_TIMEOUT_S,
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
            self._sql_update = (f"UPDATE {t} SET priority = %s, data = %s WHERE "
                                "BINARY unique_key = %s AND BINARY function_name = %s")
            self._sql_replay = f"SELECT unique_key, function_name, data, priority, 0 FROM {t}"

    def _driver_error(self) -> Type[BaseException]:
        return self._my.Error  # type: ignore[no-any-return]

    def _retry_errors(self) -> Tuple[Type[BaseException], ...]:
        return (self._my.OperationalError, self._my.InterfaceError)

    def _is_lost(self, exc: BaseException) -> bool:
        code = exc.args[0] if exc.args else 0
        return code in LOST_CONNECTION_CODES or isinstance(exc, self._my.InterfaceError)

    # ---- the contract --------------------------------------------------------------
    def add(self, job: StoredJob) -> None:
        try:
            unique, function = job.unique.decode(), job.function.decode()
        except UnicodeDecodeError:
            raise QueueError("unique and function must be UTF-8 for MySQL") from None
        epoch = self.supports_epoch
        if job.when and not epoch:
            raise QueueError("this table has no when_to_run column")

        def insert(cur: Any) -> None:
            args: tuple = (unique, function, job.priority, job.data)
            try:
                cur.execute(self._sql_add, args + ((job.when,) if epoch else ()))
                return
            except self._my.IntegrityError as exc:
                if not exc.args or exc.args[0] != ER_DUP_ENTRY:
                    raise
            upd: tuple = (job.priority, job.data) + ((job.when,) if epoch else ())
            if cur.execute(self._sql_update, upd + (unique, function)) == 0:
                # Did the statement match the exact key (same values: 0 rows changed)?
                cur.execute(f"SELECT 1 FROM {self.qtable} WHERE BINARY unique_key = %s "
                            "AND BINARY function_name = %s", (unique, function))
                if cur.fetchone() is None:
                    raise QueueError("unique key collides with another job's under the "
                                     "table's collation")
        self._run(insert)

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
                      opt("libdrizzle-table"), drizzle=True, unix_socket=opt("libdrizzle-uds"))


def _mysql(settings: Settings) -> MysqlQueue:
    """No --mysql-user/-password/-db: empty, the server's defaults (libmysqlclient's NULL)."""
    opt = settings.queue_text
    return MysqlQueue(opt("mysql-host"), settings.queue_int("mysql-port"), opt("mysql-user"),
                      opt("mysql-password"), opt("mysql-db"), opt("mysql-table"))


#: -q name -> how that name reads its options
FLAVOURS: Dict[str, Callable[[Settings], MysqlQueue]] = {"mysql": _mysql,
                                                        "libdrizzle": _libdrizzle}


def create(settings: Settings) -> MysqlQueue:
    return FLAVOURS[settings.queue_type.lower()](settings)
