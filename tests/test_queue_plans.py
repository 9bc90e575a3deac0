"""Query plans of the SQL queue backends at 100k queued jobs: every statement that looks up
one stored job (done's DELETE, MySQL's UPDATE and existence check) must use the table's
unique key, not scan the table (a full scan per finished job made draining a MySQL queue
~20x slower).  Real services, as in tests/test_queue_contract.py; the plans are read with
the database's own EXPLAIN (sqlite: EXPLAIN QUERY PLAN).
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from typing import Any, Iterator, List, Tuple

import pytest

from gearmand_py.queues import create as create_backend
from gearmand_py.queues.base import NORMAL, StoredJob
from test_queue_contract import (MY, PG_CONNINFO, drop_storage, queue_args, require_backend,
                                 settings_for)

QUEUED = 100_000
#: A stored key, and the same key in another case (collations must not confuse them).
KEY = (b"u77777", b"plan_fn")


@pytest.fixture(params=["libsqlite3", "postgres", "mysql", "libdrizzle"])
def full(request: pytest.FixtureRequest, tmp_path: "os.PathLike[str]") -> Iterator[Any]:
    """A backend holding QUEUED jobs (written with one commit)."""
    name = request.param
    require_backend(name, request)
    args = queue_args(name, "plan" + uuid.uuid4().hex[:6], str(tmp_path))
    backend = create_backend(settings_for(name, args))
    backend.open()
    try:
        jobs = [StoredJob(b"u%d" % i, KEY[1], b"", NORMAL, 0) for i in range(QUEUED)]
        assert backend.commit(jobs, []) == {}
        backend.name = name
        yield backend
    finally:
        backend.close()
        drop_storage(name, args)


def _sqlite_plan(backend: Any, sql: str, params: Tuple[Any, ...]) -> List[str]:
    db = sqlite3.connect(backend.path)
    try:
        return [str(row[-1]) for row in db.execute("EXPLAIN QUERY PLAN " + sql, params)]
    finally:
        db.close()


def _postgres_plan(backend: Any, sql: Any, params: Any) -> List[str]:
    import psycopg2
    with psycopg2.connect(PG_CONNINFO) as conn, conn.cursor() as cur:
        cur.execute(f'ANALYZE "{backend.table}"')
        cur.execute(b"EXPLAIN " + cur.mogrify(sql, params))
        return [row[0] for row in cur.fetchall()]


def _mysql_plan(backend: Any, sql: str, params: Tuple[Any, ...]) -> List[Tuple[Any, ...]]:
    import pymysql
    conn = pymysql.connect(host=MY[0], port=MY[1], user="root", database="test",
                           charset="utf8mb4", binary_prefix=True)
    try:
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("EXPLAIN " + sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def test_lookups_use_the_unique_key(full: Any) -> None:
    unique, function = KEY[0].decode(), KEY[1].decode()
    if full.name == "libsqlite3":
        plan = _sqlite_plan(full, full._sql_done, KEY)
        assert any(p.startswith("SEARCH") and "INDEX" in p for p in plan), plan
        return
    if full.name == "postgres":
        # Many done()s in one statement, as commit() sends them (parallel arrays).
        uniques = [f"u{i}" for i in range(77777, 77977)]
        plan = _postgres_plan(full, full._sql_done, (uniques, [function] * len(uniques)))
        text = "\n".join(plan)
        assert "Index" in text and "Seq Scan" not in text, text
        return
    statements = {"done": (full._sql_done, (unique, function)),
                  "exists": (full._sql_exists, (unique, function)),
                  "update": (full._sql_update, (NORMAL, b"", 0, unique, function))}
    for what, (sql, params) in statements.items():
        [row] = _mysql_plan(full, sql, params)
        assert row["key"] == "unique_key", (what, row)
        assert int(row["rows"]) < 10, (what, row)


def test_lookups_stay_byte_exact(full: Any) -> None:
    """The index-friendly comparison still tells keys apart that the collation equates."""
    other_case = StoredJob(KEY[0].upper(), KEY[1], b"", NORMAL, 0)
    if full.name in ("mysql", "libdrizzle"):
        assert full.commit([other_case], []) == {0: "unique key collides with another "
                                                    "job's under the table's collation"}
    full.commit([], [(KEY[0].upper(), KEY[1])])        # must not delete u77777
    full.commit([], [KEY])
    keys = {(j.function, j.unique) for j in full.replay()}
    assert (KEY[1], KEY[0]) not in keys and (KEY[1], b"u77778") in keys
    assert len(keys) == QUEUED - 1
