"""Store units in process: the engine's side of the store thread against a real sqlite file.

``StoreHarness`` is the in-process Harness (tests/test_engine_inprocess.py) with a durable
queue: the engine posts its STORE messages to a list, and the test plays the store thread
by handing them to the real ``StoreStage`` over the real sqlite backend, then gives the
outcome back to ``Processor.stored`` as the STORED message would.  So each test sees
exactly what the processing thread does between a submit and its commit: JOB_CREATED
held, jobs invisible to workers, one unit per round, a failed unit refusing every job.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import time
from typing import Any, Dict, List, Tuple

import pytest

from gearmand_py.engine import Engine
from gearmand_py.messages import STOP, STORE, STORED
from gearmand_py.processor import Processor
from gearmand_py.protocol.codec import Decoder
from gearmand_py.queues.base import NORMAL, StoredJob
from gearmand_py.queues.sqlite import SqliteQueue
from gearmand_py.store import StoreStage, StoreThread
from gearproto import pack
from test_engine_inprocess import Harness, engine_options

TABLE = "gearman_queue"


class StoreHarness(Harness):
    """The Harness with a sqlite queue and the test as the store thread."""

    def __init__(self, path: str, queue_timeout: float = 5.0) -> None:
        self.backend = SqliteQueue(path, TABLE)
        self.backend.open()
        self.posted: List[Tuple[Any, ...]] = []
        options = engine_options(queue_name="libsqlite3", queue_timeout=queue_timeout)
        self.engine = Engine(options, self.backend, self.posted.append)
        self.processor = Processor(self.engine)
        self.stage = StoreStage(self.backend, "libsqlite3", queue_timeout)
        self.decoders: Dict[int, Decoder] = {}
        self.io: Dict[int, int] = {}
        self.pending: Dict[int, List[Any]] = {}
        self._next_id = 10

    def units(self) -> List[Tuple[Any, ...]]:
        """The STORE messages posted so far (end of each round), taken."""
        self._collect()
        out = list(self.posted)
        self.posted.clear()
        assert all(m[0] == STORE for m in out), out
        return out

    def commit(self, units: List[Tuple[Any, ...]]) -> None:
        """Play the store thread: one commit of ``units``, outcome back as STORED."""
        self.processor.stored(self.stage.commit(units))

    def rows(self) -> List[Tuple[bytes, bytes]]:
        db = sqlite3.connect(self.backend.path)
        db.text_factory = bytes
        try:
            return sorted(db.execute(f"SELECT function_name, unique_key FROM {TABLE}"))
        finally:
            db.close()


@pytest.fixture
def sh(tmp_path: "os.PathLike[str]") -> StoreHarness:
    return StoreHarness(os.path.join(str(tmp_path), "q.sqlite"))


def submit_bg(h: StoreHarness, cid: int, unique: str, fn: str = "f") -> None:
    h.req(cid, "SUBMIT_JOB_BG", fn, unique, b"data-" + unique.encode())


def test_job_created_only_after_the_unit_committed(sh: StoreHarness) -> None:
    c = sh.connect()
    w = sh.worker("f")
    units = []
    for u in ("a", "b", "c"):
        submit_bg(sh, c, u)
        units += sh.units()                         # one unit per processing round
    assert sh.replies() == {}                       # no JOB_CREATED yet
    assert sh.grab(w).name == "NO_JOB"              # not visible to workers yet
    assert len(units) == 3
    assert sh.rows() == []
    sh.commit(units)                                # ONE commit for all three
    got = sh.replies()
    assert [p.name for p in got[c]] == ["JOB_CREATED"] * 3
    assert len({p.args[0] for p in got[c]}) == 3
    assert sh.rows() == [(b"f", b"a"), (b"f", b"b"), (b"f", b"c")]
    assert sh.grab(w).name == "JOB_ASSIGN"


def test_one_round_is_one_unit(sh: StoreHarness) -> None:
    c = sh.connect()
    raw = b"".join(pack("SUBMIT_JOB_BG", "f", u, b"x") for u in ("p", "q", "r"))
    sh.send(c, raw)                                 # three submits in one read
    [unit] = sh.units()
    assert [a.unique for a in unit[2]] == [b"p", b"q", b"r"] and unit[3] == []
    sh.commit([unit])
    assert [p.name for p in sh.replies()[c]] == ["JOB_CREATED"] * 3


def test_done_goes_to_the_store_with_the_next_unit(sh: StoreHarness) -> None:
    c = sh.connect()
    w = sh.worker("f")
    submit_bg(sh, c, "d")
    sh.commit(sh.units())
    sh.replies()
    p = sh.grab(w)
    sh.req(w, "WORK_COMPLETE", p.args[0], b"")
    [unit] = sh.units()
    assert unit[2] == [] and unit[3] == [(b"d", b"f")]
    assert sh.rows() == [(b"f", b"d")]
    sh.commit([unit])
    assert sh.rows() == []


def test_failed_unit_refuses_every_job_in_it(sh: StoreHarness,
                                            caplog: pytest.LogCaptureFixture) -> None:
    c1, c2 = sh.connect(), sh.connect()
    w = sh.worker("f")
    fg = sh.connect()
    submit_bg(sh, c1, "x")
    submit_bg(sh, c2, "y")
    submit_bg(sh, c2, "x")                          # coalesces into the pending job
    sh.req(fg, "SUBMIT_JOB", "f", "y", b"")         # a foreground client attaches to y
    got = sh.replies()
    assert list(got) == [fg] and got[fg][0].name == "JOB_CREATED"
    units = sh.units()
    sh.backend.close()                              # the store is gone
    with caplog.at_level(logging.ERROR, logger="gearmand"):
        sh.commit(units)
        got = sh.replies()
        for cid, n in ((c1, 1), (c2, 2)):
            assert [p.name for p in got[cid]] == ["ERROR"] * n
            for p in got[cid]:
                assert p.args[0] == b"QUEUE_ERROR"
                assert p.args[1].startswith(b"libsqlite3: store unavailable ("), p.args[1]
        assert [p.name for p in got[fg]] == ["WORK_FAIL"]
        assert sh.grab(w).name == "NO_JOB"
        assert sh.admin(c1, "status") == b"f\t0\t0\t1\n.\n"
        # the store stays down: the next unit is refused at once, with no second log line
        submit_bg(sh, c1, "z")
        sh.commit(sh.units())
        assert sh.replies()[c1][0].args[0] == b"QUEUE_ERROR"
    lost = [r for r in caplog.records if "lost" in r.getMessage()]
    assert len(lost) == 1, [r.getMessage() for r in caplog.records]


def test_store_restored_after_backoff(sh: StoreHarness,
                                      caplog: pytest.LogCaptureFixture) -> None:
    c = sh.connect()
    sh.backend.close()
    with caplog.at_level(logging.ERROR, logger="gearmand"):
        submit_bg(sh, c, "a")
        sh.commit(sh.units())
        assert sh.replies()[c][0].name == "ERROR"
        sh.backend.open()
        wait = sh.stage.wait()
        assert wait is not None and wait > 0
        time.sleep(wait)
        sh.stage.retry()
        assert sh.stage.wait() is None
        submit_bg(sh, c, "b")
        sh.commit(sh.units())
        assert sh.replies()[c][0].name == "JOB_CREATED"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("lost" in m for m in messages) == 1, messages
    assert sum("restored" in m for m in messages) == 1, messages
    assert sh.rows() == [(b"f", b"b")]


def test_unit_not_back_in_time_is_refused_then_taken_in_late(tmp_path: Any) -> None:
    h = StoreHarness(os.path.join(str(tmp_path), "q.sqlite"), queue_timeout=0.05)
    c = h.connect()
    w = h.worker("f")
    submit_bg(h, c, "slow")
    outcomes = h.stage.commit(h.units())            # the commit starts in time ...
    time.sleep(0.1)
    got = h.replies()                               # ... its answer does not (timer due)
    [p] = got[c]
    assert p.name == "ERROR" and p.args[0] == b"QUEUE_ERROR"
    assert p.args[1] == b"libsqlite3: store did not answer within 0.05 s"
    assert h.grab(w).name == "NO_JOB"
    h.processor.stored(outcomes)                    # the commit's answer lands after all
    assert h.replies().get(c) is None               # nothing more for the submitter
    assert h.rows() == [(b"f", b"slow")]
    p = h.grab(w)                                   # stored, so it runs (at-least-once)
    assert p.name == "JOB_ASSIGN" and p.args[1:] == [b"f", b"data-slow"]


def test_cancel_before_commit_deletes_the_row_afterwards(sh: StoreHarness) -> None:
    c = sh.connect()
    submit_bg(sh, c, "gone")
    units = sh.units()
    a = sh.connect()        # c's replies wait behind its JOB_CREATED: ask on another one
    [handle] = [line.split(b"\t")[0] for line in sh.admin(a, "show jobs").splitlines()[:-1]]
    assert sh.admin(a, "cancel job " + handle.decode()) == b"OK\r\n"
    sh.commit(units)
    assert sh.rows() == [(b"f", b"gone")]
    sh.commit(sh.units())                           # the done that follows
    assert sh.rows() == []


def test_builtin_queue_posts_nothing() -> None:
    h = Harness()
    c = h.connect()
    assert h.engine.durable is False and h.engine.store_post is None
    h.req(c, "SUBMIT_JOB_BG", "f", "u", b"")
    assert h.replies()[c][0].name == "JOB_CREATED"
    assert h.engine.unit is None and not h.engine.inflight


def test_store_thread_batches_what_queues_up_during_a_commit(tmp_path: Any) -> None:
    """The real thread: while one commit waits (another connection holds the sqlite file
    locked), the units that arrive are committed together, answered in one STORED."""
    path = os.path.join(str(tmp_path), "q.sqlite")
    backend = SqliteQueue(path, TABLE)
    backend.open()
    answers: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
    crashed: List[BaseException] = []
    thread = StoreThread(backend, "libsqlite3", 5.0, answers.put, crashed.append)
    thread.start()
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        job = StoredJob(b"u0", b"f", b"", NORMAL, 0)
        deadline = time.monotonic() + 60
        thread.inbox.put((STORE, 1, [job], [], deadline))
        time.sleep(0.3)                               # unit 1 is now waiting on the lock
        for unit_id in range(2, 7):
            thread.inbox.put((STORE, unit_id, [job._replace(unique=b"u%d" % unit_id)], [],
                              deadline))
        locker.execute("COMMIT")
        first = answers.get(timeout=10)
        second = answers.get(timeout=10)
    finally:
        locker.close()
        thread.inbox.put((STOP,))
        thread.join(10)
        backend.close()
    assert not crashed and not thread.is_alive()
    assert first == (STORED, [(1, None, {})])
    assert second == (STORED, [(i, None, {}) for i in range(2, 7)])


def test_unit_past_its_deadline_is_not_written(tmp_path: Any) -> None:
    """A unit still queued for the store when its submitters were refused: its adds are
    not written at all (its dones are)."""
    h = StoreHarness(os.path.join(str(tmp_path), "q.sqlite"), queue_timeout=0.05)
    c = h.connect()
    w = h.worker("f")
    submit_bg(h, c, "kept")
    h.commit(h.units())
    h.replies()
    handle = h.grab(w).args[0]
    h.req(w, "WORK_COMPLETE", handle, b"")          # a done ...
    submit_bg(h, c, "never")                        # ... and an add, in queued units
    units = h.units()
    time.sleep(0.1)
    [p] = h.replies()[c]
    assert p.args == [b"QUEUE_ERROR", b"libsqlite3: store did not answer within 0.05 s"]
    outcomes = h.stage.commit(units)
    assert [o[1] for o in outcomes if o[1]] == [
        "libsqlite3: store did not answer within 0.05 s"]
    h.processor.stored(outcomes)
    assert h.rows() == []                           # "kept" deleted, "never" not written
    assert h.grab(w).name == "NO_JOB"


def test_replies_keep_request_order_behind_a_held_job_created(sh: StoreHarness) -> None:
    """Pipelined on one connection: a new bg job (waits for the store), then an ECHO and a
    duplicate of an already stored job; the answers come in request order."""
    c = sh.connect()
    submit_bg(sh, c, "stored")
    sh.commit(sh.units())
    [first] = sh.replies()[c]
    sh.req(c, "SUBMIT_JOB_BG", "f", "new", b"data-new")
    sh.req(c, "ECHO_REQ", b"ping")
    sh.req(c, "SUBMIT_JOB_BG", "f", "stored", b"data-stored")
    assert sh.replies().get(c) is None            # all three wait for the first
    sh.commit(sh.units())
    got = sh.replies()[c]
    assert [p.name for p in got] == ["JOB_CREATED", "ECHO_RES", "JOB_CREATED"]
    assert got[2].args[0] == first.args[0]        # the duplicate's handle, in its place
