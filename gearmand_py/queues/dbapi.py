"""Shared plumbing of the SQL-server queue modules (postgres, mysql/libdrizzle).

One DB-API connection per backend, used by one thread at a time (the store thread while
the server runs): ``_run(fn)`` runs ``fn(cursor)`` and, when the connection was lost
(server restart, idle timeout), connects once more and retries; ``_unit(fn)`` does the
same and, after any failure, drops the connection so that the next call starts on a fresh
one (a timed-out connection is in an unknown state, a failed transaction is rolled back);
``_transaction(fn)`` is a ``_unit`` that runs ``fn`` between BEGIN and COMMIT;
``close()`` forgets the connection.  Subclasses say how to connect,
which exception classes the driver raises and what counts as a lost connection.
"""

from __future__ import annotations

from typing import Any, Callable, Tuple, Type, TypeVar

T = TypeVar("T")


class DbApiQueue:
    _conn: Any = None

    def _connect(self) -> Any:
        raise NotImplementedError

    def _driver_error(self) -> Type[BaseException]:
        """The driver's base Error class."""
        raise NotImplementedError

    def _retry_errors(self) -> Tuple[Type[BaseException], ...]:
        """Errors after which a reconnect may help (OperationalError, InterfaceError)."""
        raise NotImplementedError

    def _is_lost(self, exc: BaseException) -> bool:
        """True when ``exc`` means the connection is gone (not a bad statement)."""
        raise NotImplementedError

    def _usable(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except self._driver_error():
                pass

    def _run(self, fn: Callable[[Any], T]) -> T:
        """Run fn(cursor); after a lost connection, reconnect once and retry."""
        for attempt in (0, 1):
            try:
                if not self._usable():
                    self._conn = self._connect()
                with self._conn.cursor() as cur:
                    return fn(cur)
            except self._retry_errors() as exc:
                if attempt or not self._is_lost(exc):
                    raise
                self.close()
        raise AssertionError("unreachable")

    def _transaction(self, fn: Callable[[Any], T]) -> T:
        """Run fn(cursor) as one transaction (group commit); see the module docstring."""
        def txn(cur: Any) -> T:
            cur.execute("BEGIN")
            result = fn(cur)
            cur.execute("COMMIT")
            return result
        return self._unit(txn)

    def _unit(self, fn: Callable[[Any], T]) -> T:
        """``_run(fn)`` for a write that must be whole: after any failure the connection is
        dropped (rolling back what it began), so the next call starts on a fresh one."""
        try:
            return self._run(fn)
        except BaseException:
            self.close()
            raise
