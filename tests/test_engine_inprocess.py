"""The job engine in process: bytes -> codec -> Processor -> Engine -> reply packets.

No threads, no sockets, no server subprocess.  ``Harness`` plays the I/O thread: it posts
CONNECT/CLOSED events, runs request bytes through the product's ``Decoder`` and hands the
events to ``Processor.handle`` as one round; ``finish_round`` gives the replies, which are
decoded with the independent test-side codec (tests/gearproto.py).  So every test covers
codec + dispatch + engine + admin together and checks exact packets and bytes.
"""

from __future__ import annotations

import heapq
import os
import re
import logging
import struct
import time
from typing import Any, Dict, List, Optional

import pytest

from gearmand_py.engine import Engine, EngineOptions, default_handle_prefix
from gearmand_py.messages import CLOSED, CONNECT, Round
from gearmand_py.processor import Processor
from gearmand_py.protocol.codec import Decoder
from gearmand_py.queues.builtin import BuiltinQueue
from gearproto import RES, Packet, pack

MAX_PACKET = 1 << 20
#: Reply item: a decoded packet, or None for "close this connection".
Item = Optional[Packet]


def parse(data: bytes) -> List[Packet]:
    """Split concatenated response packets (test-side decoder; asserts whole packets)."""
    out: List[Packet] = []
    pos = 0
    while pos < len(data):
        assert data[pos:pos + 4] == RES, f"bad magic at {pos}: {data[pos:pos + 16]!r}"
        assert len(data) - pos >= 12, f"truncated header: {data[pos:]!r}"
        num, size = struct.unpack_from(">II", data, pos + 4)
        assert pos + 12 + size <= len(data), f"truncated payload: {data[pos:]!r}"
        out.append(Packet(RES, num, data[pos + 12:pos + 12 + size]))
        pos += 12 + size
    return out


def engine_options(**overrides: Any) -> EngineOptions:
    """The engine options of a default server (1.1 mode), with ``overrides``."""
    opts: Dict[str, Any] = dict(handle_prefix="H:unit", round_robin=False,
                                priority_global=False, worker_wakeup=0, job_retries=0,
                                exceptions=False, verbose="ERROR", version="1.1.20",
                                error_log_level=logging.WARNING, hashtable_buckets=1)
    opts.update(overrides)
    return EngineOptions(**opts)


class Harness:
    """The I/O-thread side of the thread protocol, driven by the test."""

    def __init__(self, **overrides: Any) -> None:
        self.engine = Engine(engine_options(**overrides), BuiltinQueue())
        self.processor = Processor(self.engine)
        self.decoders: Dict[int, Decoder] = {}
        self.io: Dict[int, int] = {}
        self.pending: Dict[int, List[Optional[bytes]]] = {}
        self._next_id = 10

    # ---- I/O thread events ----------------------------------------------------------
    def connect(self, io_id: int = 1, ip: str = "127.0.0.1") -> int:
        """A new connection; its fd is its id, its port 40000 + id."""
        self._next_id += 1
        cid = self._next_id
        self.decoders[cid] = Decoder(MAX_PACKET)
        self.io[cid] = io_id
        self.round([(cid, [(CONNECT, False, (cid, ip, 40000 + cid))])], io_id)
        return cid

    def round(self, rnd: Round, io_id: int = 1) -> None:
        self.processor.handle(io_id, rnd)

    def send(self, cid: int, raw: bytes) -> None:
        """Bytes from the peer: through the real codec, then one processing round."""
        events = self.decoders[cid].feed(raw)
        self.round([(cid, events)], self.io[cid])

    def req(self, cid: int, cmd: str, *args: Any, magic: bytes = b"\0REQ") -> None:
        self.send(cid, pack(cmd, *args, magic=magic))

    def close(self, cid: int) -> None:
        self.round([(cid, [(CLOSED, False, ())])], self.io[cid])

    # ---- replies --------------------------------------------------------------------
    def _collect(self) -> None:
        for io_id, replies in self.processor.finish_round().items():
            for cid, data in replies:
                assert self.io[cid] == io_id, f"reply for {cid} grouped under io {io_id}"
                self.pending.setdefault(cid, []).append(data)

    def replies(self) -> Dict[int, List[Item]]:
        """Every reply since the last call, decoded per connection (None = close)."""
        self._collect()
        out: Dict[int, List[Item]] = {}
        for cid, items in self.pending.items():
            decoded: List[Item] = []
            buf = b""
            for data in items:
                if data is None:
                    decoded.extend(parse(buf))
                    buf = b""
                    decoded.append(None)
                else:
                    buf += data
            decoded.extend(parse(buf))
            out[cid] = decoded
        self.pending = {}
        return out

    def raw(self) -> Dict[int, List[Optional[bytes]]]:
        """Every reply since the last call, undecoded, per connection (None = close)."""
        self._collect()
        out, self.pending = self.pending, {}
        return out

    def text(self, cid: int) -> bytes:
        """The raw bytes sent to one connection since the last call (admin replies)."""
        self._collect()
        items = self.pending.pop(cid, [])
        assert None not in items, items
        return b"".join(d for d in items if d is not None)

    def admin(self, cid: int, line: str) -> bytes:
        self.send(cid, line.encode() + b"\r\n")
        return self.text(cid)

    # ---- shortcuts ------------------------------------------------------------------
    def submit(self, cid: int, fn: str, data: str = "", unique: str = "",
               cmd: str = "SUBMIT_JOB") -> bytes:
        self.req(cid, cmd, fn, unique, data)
        got = self.replies()
        assert list(got) == [cid], got
        [p] = got[cid]
        assert p is not None and p.name == "JOB_CREATED", got
        return p.args[0]

    def worker(self, *fns: str, io_id: int = 1) -> int:
        w = self.connect(io_id)
        for fn in fns:
            self.req(w, "CAN_DO", fn)
        assert self.replies() == {}
        return w

    def grab(self, cid: int, cmd: str = "GRAB_JOB") -> Item:
        self.req(cid, cmd)
        got = self.replies()
        assert list(got) == [cid], got
        [p] = got[cid]
        return p


@pytest.fixture
def h() -> Harness:
    return Harness()


# ---- submission and assignment -------------------------------------------------------

def test_submit_every_priority_gets_sequential_handles(h: Harness) -> None:
    c = h.connect()
    for cmd in ("SUBMIT_JOB", "SUBMIT_JOB_BG", "SUBMIT_JOB_HIGH", "SUBMIT_JOB_HIGH_BG",
                "SUBMIT_JOB_LOW", "SUBMIT_JOB_LOW_BG"):
        h.req(c, cmd, "fn", "", "x")
    assert h.replies() == {c: [("JOB_CREATED", b"H:unit:%d" % n) for n in range(1, 7)]}
    assert h.admin(c, "prioritystatus") == b"fn\t2\t2\t2\t0\n.\n"
    assert h.admin(c, "status") == b"fn\t6\t0\t0\n.\n"


def test_default_handle_prefix_is_h_nodename() -> None:
    prefix = default_handle_prefix()
    assert prefix == "H:" + os.uname().nodename
    h = Harness(handle_prefix=prefix)
    c = h.connect()
    handle = h.submit(c, "fn")
    assert handle == prefix.encode() + b":1"
    assert re.fullmatch(rb"H:[^:]+:1", handle)


def test_grab_job_assign_and_no_job(h: Harness) -> None:
    c = h.connect()
    w = h.worker("fn")
    assert h.grab(w) == ("NO_JOB",)
    handle = h.submit(c, "fn", "payload\0with nul", unique="u1")
    assert h.grab(w) == ("JOB_ASSIGN", handle, b"fn", b"payload\0with nul")
    assert h.grab(w) == ("NO_JOB",)
    h2 = h.submit(c, "fn", "d2", unique="u2")
    assert h.grab(w, "GRAB_JOB_UNIQ") == ("JOB_ASSIGN_UNIQ", h2, b"fn", b"u2", b"d2")
    assert h.admin(c, "status") == b"fn\t2\t2\t1\n.\n"


def test_worker_only_gets_its_functions(h: Harness) -> None:
    c = h.connect()
    w = h.worker("a")
    h.submit(c, "b", "x", cmd="SUBMIT_JOB_BG")
    assert h.grab(w) == ("NO_JOB",)
    h.req(w, "CAN_DO", "b")
    assert h.grab(w) == ("JOB_ASSIGN", b"H:unit:1", b"b", b"x")
    h.submit(c, "b", "y", cmd="SUBMIT_JOB_BG")
    h.req(w, "CANT_DO", "b")
    assert h.grab(w) == ("NO_JOB",)


def test_priority_order_high_normal_low_then_fifo(h: Harness) -> None:
    c = h.connect()
    order = [("SUBMIT_JOB_LOW_BG", "low1"), ("SUBMIT_JOB_BG", "norm1"),
             ("SUBMIT_JOB_HIGH_BG", "high1"), ("SUBMIT_JOB_LOW_BG", "low2"),
             ("SUBMIT_JOB_BG", "norm2"), ("SUBMIT_JOB_HIGH_BG", "high2")]
    handles = {data: h.submit(c, "fn", data, cmd=cmd) for cmd, data in order}
    w = h.worker("fn")
    got = []
    for _ in range(6):
        p = h.grab(w)
        assert p is not None and p.name == "JOB_ASSIGN"
        assert p.args[0] == handles[p.args[2].decode()]
        got.append(p.args[2])
    assert got == [b"high1", b"high2", b"norm1", b"norm2", b"low1", b"low2"]
    assert h.grab(w) == ("NO_JOB",)


def test_round_robin_rotates_a_workers_functions() -> None:
    for rr, expected in ((False, [b"a1", b"a2", b"b1", b"b2"]),
                         (True, [b"a1", b"b1", b"a2", b"b2"])):
        h = Harness(round_robin=rr)
        c = h.connect()
        for data in ("a1", "a2"):
            h.submit(c, "a", data, cmd="SUBMIT_JOB_BG")
        for data in ("b1", "b2"):
            h.submit(c, "b", data, cmd="SUBMIT_JOB_BG")
        w = h.worker("a", "b")
        got = []
        for _ in range(4):
            p = h.grab(w)
            assert p is not None and p.name == "JOB_ASSIGN"
            got.append(p.args[2])
        assert got == expected, rr


def test_reduce_job_and_grab_job_all(h: Harness) -> None:
    c = h.connect()
    h.req(c, "SUBMIT_REDUCE_JOB", "mapper", "uq", "reducer", "", "in")
    assert h.replies() == {c: [("JOB_CREATED", b"H:unit:1")]}
    w = h.worker("mapper")
    assert h.grab(w, "GRAB_JOB_ALL") == ("JOB_ASSIGN_ALL", b"H:unit:1", b"mapper", b"uq",
                                         b"reducer", b"in")
    # Without a reducer GRAB_JOB_ALL answers like GRAB_JOB_UNIQ.
    h.submit(c, "mapper", "plain", unique="u2")
    assert h.grab(w, "GRAB_JOB_ALL") == ("JOB_ASSIGN_UNIQ", b"H:unit:2", b"mapper", b"u2",
                                         b"plain")
    h.req(w, "WORK_COMPLETE", "H:unit:1", "out")
    assert h.replies() == {c: [("WORK_COMPLETE", b"H:unit:1", b"out")]}


def test_epoch_job_waits_for_its_time_and_its_timer_wakes_sleepers(h: Harness) -> None:
    c = h.connect()
    w = h.worker("fn")
    h.req(c, "SUBMIT_JOB_EPOCH", "fn", "", "1", "past")       # 1970: due at once
    assert h.replies() == {c: [("JOB_CREATED", b"H:unit:1")]}
    assert h.grab(w) == ("JOB_ASSIGN", b"H:unit:1", b"fn", b"past")
    assert h.engine.timers == []
    when = int(time.time()) + 3600
    h.req(c, "SUBMIT_JOB_EPOCH", "fn", "", str(when), "future")
    assert h.replies() == {c: [("JOB_CREATED", b"H:unit:2")]}
    assert h.grab(w) == ("NO_JOB",)
    h.req(w, "PRE_SLEEP")
    assert h.replies() == {}                      # nothing due: the worker sleeps
    [(deadline, seq, kind, job, token)] = h.engine.timers
    assert job.handle == b"H:unit:2"
    assert 3590 < deadline - time.monotonic() <= 3600
    h.engine.timers[0] = (time.monotonic() - 0.001, seq, kind, job, token)
    assert h.replies() == {w: [("NOOP",)]}        # the due timer woke the sleeper
    assert h.engine.timers == []


# ---- coalescing -----------------------------------------------------------------------

def test_foreground_unique_coalesces_and_both_clients_get_results(h: Harness) -> None:
    c1, c2 = h.connect(), h.connect()
    handle = h.submit(c1, "fn", "first", unique="same")
    assert h.submit(c2, "fn", "second", unique="same") == handle
    assert h.admin(c1, "status") == b"fn\t1\t0\t0\n.\n"
    w = h.worker("fn")
    assert h.grab(w) == ("JOB_ASSIGN", handle, b"fn", b"first")
    h.req(w, "WORK_DATA", handle, "chunk")
    h.req(w, "WORK_WARNING", handle, "careful")
    h.req(w, "WORK_STATUS", handle, "1", "2")
    h.req(w, "WORK_COMPLETE", handle, "done")
    expected = [("WORK_DATA", handle, b"chunk"), ("WORK_WARNING", handle, b"careful"),
                ("WORK_STATUS", handle, b"1", b"2"), ("WORK_COMPLETE", handle, b"done")]
    assert h.replies() == {c1: expected, c2: expected}
    assert h.engine.jobs == {}
    assert h.admin(c1, "status") == b"fn\t0\t0\t1\n.\n"


def test_background_duplicate_unique_returns_same_handle(h: Harness) -> None:
    c = h.connect()
    first = h.submit(c, "fn", "a", unique="k", cmd="SUBMIT_JOB_BG")
    assert h.submit(c, "fn", "b", unique="k", cmd="SUBMIT_JOB_BG") == first
    # A different function has its own unique namespace.
    other = h.submit(c, "fn2", "a", unique="k", cmd="SUBMIT_JOB_BG")
    assert other == b"H:unit:2"
    assert h.admin(c, "show jobs") == b"H:unit:2\t0\t0\t1\nH:unit:1\t0\t0\t1\n.\n"
    w = h.worker("fn")
    assert h.grab(w) == ("JOB_ASSIGN", first, b"fn", b"a")
    assert h.grab(w) == ("NO_JOB",)


def test_foreground_joins_background_job_with_same_unique(h: Harness) -> None:
    c1, c2 = h.connect(), h.connect()
    handle = h.submit(c1, "fn", "x", unique="k", cmd="SUBMIT_JOB_BG")
    assert h.submit(c2, "fn", "x", unique="k") == handle
    w = h.worker("fn")
    h.grab(w)
    h.req(w, "WORK_COMPLETE", handle, "r")
    assert h.replies() == {c2: [("WORK_COMPLETE", handle, b"r")]}


def test_unique_dash_hashes_the_data(h: Harness) -> None:
    c = h.connect()
    a = h.submit(c, "fn", "same data", unique="-", cmd="SUBMIT_JOB_BG")
    assert h.submit(c, "fn", "same data", unique="-", cmd="SUBMIT_JOB_BG") == a
    b = h.submit(c, "fn", "other data", unique="-", cmd="SUBMIT_JOB_BG")
    assert b != a
    # "-" with no data: nothing to hash, so never coalesced.
    e1 = h.submit(c, "fn", "", unique="-", cmd="SUBMIT_JOB_BG")
    e2 = h.submit(c, "fn", "", unique="-", cmd="SUBMIT_JOB_BG")
    assert (a, b, e1, e2) == (b"H:unit:1", b"H:unit:2", b"H:unit:3", b"H:unit:4")
    # An explicit unique equal to the data is a different key from "-" + data.
    assert h.submit(c, "fn", "x", unique="same data", cmd="SUBMIT_JOB_BG") == b"H:unit:5"


def test_empty_unique_never_coalesces(h: Harness) -> None:
    c = h.connect()
    assert h.submit(c, "fn", "d", cmd="SUBMIT_JOB_BG") == b"H:unit:1"
    assert h.submit(c, "fn", "d", cmd="SUBMIT_JOB_BG") == b"H:unit:2"


def test_unique_longer_than_64_is_refused(h: Harness) -> None:
    c = h.connect()
    h.req(c, "SUBMIT_JOB", "fn", "u" * 65, "d")
    assert h.replies() == {c: [("ERROR", b"ARGUMENT_TOO_LARGE", b"Unique value too large")]}
    assert h.submit(c, "fn", "d", unique="u" * 64) == b"H:unit:1"


# ---- results ---------------------------------------------------------------------------

def test_work_packets_go_to_every_waiting_client_only(h: Harness) -> None:
    c1, c2, bystander = h.connect(), h.connect(), h.connect()
    handle = h.submit(c1, "fn", "x", unique="u")
    h.submit(c2, "fn", "x", unique="u")
    h.submit(bystander, "fn", "y", unique="v")
    w = h.worker("fn")
    h.grab(w)
    h.req(w, "WORK_STATUS", handle, "3", "10")
    assert h.replies() == {c1: [("WORK_STATUS", handle, b"3", b"10")],
                           c2: [("WORK_STATUS", handle, b"3", b"10")]}
    h.req(bystander, "GET_STATUS", handle)
    assert h.replies() == {bystander: [("STATUS_RES", handle, b"1", b"1", b"3", b"10")]}
    h.close(c2)
    h.req(w, "WORK_COMPLETE", handle, "res\0ult")
    assert h.replies() == {c1: [("WORK_COMPLETE", handle, b"res\0ult")]}


def test_work_fail_forwarded(h: Harness) -> None:
    c = h.connect()
    handle = h.submit(c, "fn")
    w = h.worker("fn")
    h.grab(w)
    h.req(w, "WORK_FAIL", handle)
    assert h.replies() == {c: [("WORK_FAIL", handle)]}
    assert h.engine.jobs == {}


def test_work_exception_only_to_clients_that_asked(h: Harness) -> None:
    wants, plain = h.connect(), h.connect()
    h.req(wants, "OPTION_REQ", "exceptions")
    assert h.replies() == {wants: [("OPTION_RES", b"exceptions")]}
    handle = h.submit(wants, "fn", "x", unique="u")
    h.submit(plain, "fn", "x", unique="u")
    w = h.worker("fn")
    h.grab(w)
    h.req(w, "WORK_EXCEPTION", handle, "boom")
    assert h.replies() == {wants: [("WORK_EXCEPTION", handle, b"boom")],
                           plain: [("WORK_FAIL", handle)]}
    assert h.engine.jobs == {}


def test_exceptions_option_sends_exception_to_everyone() -> None:
    h = Harness(exceptions=True)
    c = h.connect()
    handle = h.submit(c, "fn")
    w = h.worker("fn")
    h.grab(w)
    h.req(w, "WORK_EXCEPTION", handle, "boom")
    assert h.replies() == {c: [("WORK_EXCEPTION", handle, b"boom")]}


def test_background_job_results_go_nowhere(h: Harness) -> None:
    c = h.connect()
    handle = h.submit(c, "fn", cmd="SUBMIT_JOB_BG")
    w = h.worker("fn")
    h.grab(w)
    h.req(w, "WORK_DATA", handle, "d")
    h.req(w, "WORK_COMPLETE", handle, "r")
    assert h.replies() == {}
    assert h.admin(c, "show jobs") == b".\n"


# ---- sleeping workers -------------------------------------------------------------------

def test_pre_sleep_then_submit_sends_one_noop(h: Harness) -> None:
    c = h.connect()
    w = h.worker("fn")
    h.req(w, "PRE_SLEEP")
    assert h.replies() == {}
    h.req(c, "SUBMIT_JOB_BG", "fn", "", "a")
    assert h.replies() == {c: [("JOB_CREATED", b"H:unit:1")], w: [("NOOP",)]}
    # Already NOOPed: a second job does not NOOP again until the worker grabs.
    h.req(c, "SUBMIT_JOB_BG", "fn", "", "b")
    assert h.replies() == {c: [("JOB_CREATED", b"H:unit:2")]}
    assert h.grab(w) == ("JOB_ASSIGN", b"H:unit:1", b"fn", b"a")


def test_pre_sleep_with_work_waiting_noops_at_once(h: Harness) -> None:
    c = h.connect()
    h.submit(c, "fn", cmd="SUBMIT_JOB_BG")
    w = h.worker("fn")
    h.req(w, "PRE_SLEEP")
    assert h.replies() == {w: [("NOOP",)]}


def test_sleeper_of_another_function_is_not_woken(h: Harness) -> None:
    c = h.connect()
    w = h.worker("other")
    h.req(w, "PRE_SLEEP")
    h.submit(c, "fn", cmd="SUBMIT_JOB_BG")
    assert h.replies() == {}


def test_all_sleepers_woken_by_default(h: Harness) -> None:
    c = h.connect()
    ws = [h.worker("fn") for _ in range(3)]
    for w in ws:
        h.req(w, "PRE_SLEEP")
    h.req(c, "SUBMIT_JOB_BG", "fn", "", "")
    assert h.replies() == {c: [("JOB_CREATED", b"H:unit:1")],
                           **{w: [("NOOP",)] for w in ws}}


def test_worker_wakeup_one_wakes_one_sleeper_in_turn() -> None:
    h = Harness(worker_wakeup=1)
    c = h.connect()
    w1, w2 = h.worker("fn"), h.worker("fn")
    h.req(w1, "PRE_SLEEP")
    h.req(w2, "PRE_SLEEP")
    h.req(c, "SUBMIT_JOB_BG", "fn", "", "1")
    assert h.replies() == {c: [("JOB_CREATED", b"H:unit:1")], w1: [("NOOP",)]}
    h.req(c, "SUBMIT_JOB_BG", "fn", "", "2")
    assert h.replies() == {c: [("JOB_CREATED", b"H:unit:2")], w2: [("NOOP",)]}
    h.req(c, "SUBMIT_JOB_BG", "fn", "", "3")
    assert h.replies() == {c: [("JOB_CREATED", b"H:unit:3")]}


# ---- worker failure -------------------------------------------------------------------

def test_worker_disconnect_requeues_its_job(h: Harness) -> None:
    c = h.connect()
    handle = h.submit(c, "fn", "work")
    w1 = h.worker("fn")
    assert h.grab(w1) == ("JOB_ASSIGN", handle, b"fn", b"work")
    assert h.admin(c, "status") == b"fn\t1\t1\t1\n.\n"
    h.close(w1)
    assert h.replies() == {}
    assert h.admin(c, "status") == b"fn\t1\t0\t0\n.\n"
    assert h.admin(c, "show jobs") == b"%s\t1\t0\t0\n.\n" % handle
    w2 = h.worker("fn")
    assert h.grab(w2) == ("JOB_ASSIGN", handle, b"fn", b"work")
    h.req(w2, "WORK_COMPLETE", handle, "ok")
    assert h.replies() == {c: [("WORK_COMPLETE", handle, b"ok")]}


def test_requeue_wakes_a_sleeping_worker(h: Harness) -> None:
    c = h.connect()
    h.submit(c, "fn", cmd="SUBMIT_JOB_BG")
    w1, w2 = h.worker("fn"), h.worker("fn")
    h.grab(w1)
    h.req(w2, "PRE_SLEEP")
    assert h.replies() == {}
    h.close(w1)
    assert h.replies() == {w2: [("NOOP",)]}


def test_job_retries_drops_job_after_two_worker_deaths() -> None:
    h = Harness(job_retries=2)
    c = h.connect()
    handle = h.submit(c, "fn", "x")
    w1 = h.worker("fn")
    h.grab(w1)
    h.close(w1)
    assert h.replies() == {}
    w2 = h.worker("fn")
    assert h.grab(w2) == ("JOB_ASSIGN", handle, b"fn", b"x")
    h.close(w2)
    assert h.replies() == {c: [("WORK_FAIL", handle)]}
    assert h.engine.jobs == {}
    assert h.admin(c, "status") == b"fn\t0\t0\t0\n.\n"
    w3 = h.worker("fn")
    assert h.grab(w3) == ("NO_JOB",)


def test_cant_do_releases_held_job(h: Harness) -> None:
    c = h.connect()
    handle = h.submit(c, "fn", cmd="SUBMIT_JOB_BG")
    w = h.worker("fn")
    h.grab(w)
    h.req(w, "CANT_DO", "fn")
    w2 = h.worker("fn")
    assert h.grab(w2) == ("JOB_ASSIGN", handle, b"fn", b"")
    h.req(w, "WORK_COMPLETE", handle, "late")
    assert h.replies() == {w: [("ERROR", b"JOB_NOT_FOUND",
                                b"Job given in work result not found")]}


def test_can_do_timeout_requeues_after_deadline(h: Harness) -> None:
    c = h.connect()
    handle = h.submit(c, "fn", "x")
    w1 = h.connect()
    h.req(w1, "CAN_DO_TIMEOUT", "fn", "1")        # raised to the 1000 ms floor
    before = time.monotonic()
    assert h.grab(w1) == ("JOB_ASSIGN", handle, b"fn", b"x")
    [(deadline, seq, kind, job, token)] = h.engine.timers
    assert before + 1.0 <= deadline <= time.monotonic() + 1.0
    assert job.handle == handle
    # Not due yet: nothing happens.
    h.engine.run_timers()
    assert h.replies() == {}
    assert h.admin(c, "status") == b"fn\t1\t1\t1\n.\n"
    # Shift the deadline into the past; the next round's timers requeue the job.
    h.engine.timers[0] = (time.monotonic() - 0.001, seq, kind, job, token)
    heapq.heapify(h.engine.timers)
    assert h.replies() == {}                      # finish_round ran the due timer
    assert h.engine.timers == []
    assert h.admin(c, "status") == b"fn\t1\t0\t1\n.\n"
    w2 = h.worker("fn")
    assert h.grab(w2) == ("JOB_ASSIGN", handle, b"fn", b"x")
    h.req(w1, "WORK_COMPLETE", handle, "too late")
    assert h.replies() == {w1: [("ERROR", b"JOB_NOT_FOUND",
                                 b"Job given in work result not found")]}
    h.req(w2, "WORK_COMPLETE", handle, "ok")
    assert h.replies() == {c: [("WORK_COMPLETE", handle, b"ok")]}


def test_stale_timeout_timer_does_not_requeue_reassigned_job(h: Harness) -> None:
    c = h.connect()
    handle = h.submit(c, "fn", "x")
    w1 = h.connect()
    h.req(w1, "CAN_DO_TIMEOUT", "fn", "5000")
    h.grab(w1)
    h.close(w1)                                   # requeued; its timer is now stale
    w2 = h.worker("fn")                           # plain CAN_DO: no timer of its own
    assert h.grab(w2) == ("JOB_ASSIGN", handle, b"fn", b"x")
    [(_, seq, kind, job, token)] = h.engine.timers
    h.engine.timers[0] = (0.0, seq, kind, job, token)
    h.engine.run_timers()
    assert h.engine.timers == []
    assert h.admin(c, "status") == b"fn\t1\t1\t1\n.\n"
    h.req(w2, "WORK_COMPLETE", handle, "ok")
    assert h.replies() == {c: [("WORK_COMPLETE", handle, b"ok")]}


# ---- status, echo, errors ------------------------------------------------------------

def test_get_status_through_a_jobs_life(h: Harness) -> None:
    c = h.connect()
    h.req(c, "GET_STATUS", "H:unit:99")
    assert h.replies() == {c: [("STATUS_RES", b"H:unit:99", b"0", b"0", b"0", b"0")]}
    handle = h.submit(c, "fn", cmd="SUBMIT_JOB_BG")
    h.req(c, "GET_STATUS", handle)
    assert h.replies() == {c: [("STATUS_RES", handle, b"1", b"0", b"0", b"0")]}
    w = h.worker("fn")
    h.grab(w)
    h.req(c, "GET_STATUS", handle)
    assert h.replies() == {c: [("STATUS_RES", handle, b"1", b"1", b"0", b"0")]}
    h.req(w, "WORK_STATUS", handle, "7", "8")
    h.req(c, "GET_STATUS", handle)
    assert h.replies() == {c: [("STATUS_RES", handle, b"1", b"1", b"7", b"8")]}
    h.req(w, "WORK_COMPLETE", handle, "")
    h.req(c, "GET_STATUS", handle)
    assert h.replies() == {c: [("STATUS_RES", handle, b"0", b"0", b"0", b"0")]}


def test_get_status_unique_counts_waiting_clients(h: Harness) -> None:
    c1, c2 = h.connect(), h.connect()
    h.req(c1, "GET_STATUS_UNIQUE", "nope")
    assert h.replies() == {c1: [("STATUS_RES_UNIQUE", b"nope", b"0", b"0", b"0", b"0", b"0")]}
    handle = h.submit(c1, "fn", unique="uq")
    h.submit(c2, "fn", unique="uq")
    h.req(c1, "GET_STATUS_UNIQUE", "uq")
    assert h.replies() == {c1: [("STATUS_RES_UNIQUE", b"uq", b"1", b"0", b"0", b"0", b"2")]}
    w = h.worker("fn")
    h.grab(w)
    h.req(w, "WORK_STATUS", handle, "1", "4")
    h.replies()
    h.req(c1, "GET_STATUS_UNIQUE", "uq")
    assert h.replies() == {c1: [("STATUS_RES_UNIQUE", b"uq", b"1", b"1", b"1", b"4", b"2")]}


def test_echo(h: Harness) -> None:
    c = h.connect()
    h.req(c, "ECHO_REQ", b"\0hello\0\xff")
    h.req(c, "ECHO_REQ", b"")
    assert h.replies() == {c: [("ECHO_RES", b"\0hello\0\xff"), ("ECHO_RES", b"")]}


def test_several_packets_in_one_read_answered_in_order(h: Harness) -> None:
    c = h.connect()
    h.send(c, pack("ECHO_REQ", "a") + pack("SUBMIT_JOB_BG", "fn", "", "")
           + pack("ECHO_REQ", "b"))
    assert h.replies() == {c: [("ECHO_RES", b"a"), ("JOB_CREATED", b"H:unit:1"),
                               ("ECHO_RES", b"b")]}


def test_packet_split_across_reads(h: Harness) -> None:
    c = h.connect()
    raw = pack("ECHO_REQ", "split me")
    for i in range(len(raw) - 1):
        h.send(c, raw[i:i + 1])
    assert h.replies() == {}
    h.send(c, raw[-1:])
    assert h.replies() == {c: [("ECHO_RES", b"split me")]}


def test_work_complete_on_unknown_handle_is_job_not_found(h: Harness) -> None:
    w = h.worker("fn")
    h.req(w, "WORK_COMPLETE", "H:unit:42", "x")
    h.req(w, "WORK_DATA", "H:unit:42", "x")
    h.req(w, "WORK_EXCEPTION", "H:unit:42", "x")
    assert h.replies() == {w: [
        ("ERROR", b"JOB_NOT_FOUND", b"Job given in work result not found"),
        ("ERROR", b"JOB_NOT_FOUND", b"Job does not exist on server"),
        ("ERROR", b"JOB_NOT_FOUND",
         b"An exception was received for a job that does not exist")]}


def test_work_complete_for_job_held_by_another_worker(h: Harness) -> None:
    c = h.connect()
    handle = h.submit(c, "fn", cmd="SUBMIT_JOB_BG")
    w1, w2 = h.worker("fn"), h.worker("fn")
    h.grab(w1)
    h.req(w2, "WORK_COMPLETE", handle, "stolen")
    assert h.replies() == {w2: [("ERROR", b"JOB_NOT_FOUND",
                                 b"Job given in work result not found")]}
    assert h.admin(c, "status") == b"fn\t1\t1\t2\n.\n"


def test_response_magic_on_request_is_invalid_magic(h: Harness) -> None:
    c = h.connect()
    h.req(c, "SUBMIT_JOB", "fn", "", "x", magic=RES)
    h.req(c, "ECHO_REQ", "still open")
    assert h.replies() == {c: [("ERROR", b"INVALID_MAGIC", b"Request magic expected"),
                               ("ECHO_RES", b"still open")]}
    assert h.engine.jobs == {}


def test_response_only_command_is_not_expected(h: Harness) -> None:
    c = h.connect()
    h.req(c, "NOOP")
    h.req(c, "JOB_CREATED", "H:x:1", magic=RES)
    assert h.replies() == {c: [("ERROR", b"INVALID_COMMAND", b"Command not expected"),
                               ("ERROR", b"INVALID_COMMAND", b"Command not expected")]}


def test_unknown_option(h: Harness) -> None:
    c = h.connect()
    h.req(c, "OPTION_REQ", "bogus")
    assert h.replies() == {c: [("ERROR", b"UNKNOWN_OPTION",
                                b"Server does not recognize given option")]}


def test_protocol_error_closes_after_earlier_replies(h: Harness) -> None:
    c = h.connect()
    h.send(c, pack("ECHO_REQ", "first") + b"\0XYZ" + b"\0" * 8)
    assert h.replies() == {c: [("ECHO_RES", b"first"), None]}
    assert c not in h.engine.conns
    h.req(c, "ECHO_REQ", "ignored")               # the decoder has failed: nothing more
    assert h.replies() == {}


def test_protocol_error_from_worker_requeues_its_job(h: Harness) -> None:
    c = h.connect()
    handle = h.submit(c, "fn", "x")
    w1 = h.worker("fn")
    h.grab(w1)
    h.send(w1, struct.pack(">4sII", b"\0REQ", 999, 0))   # invalid command number
    assert h.replies() == {w1: [None]}
    w2 = h.worker("fn")
    assert h.grab(w2) == ("JOB_ASSIGN", handle, b"fn", b"x")


def test_client_disconnect_drops_queued_foreground_job(h: Harness) -> None:
    c = h.connect()
    h.submit(c, "fn", "x", unique="u")
    h.close(c)
    w = h.worker("fn")
    assert h.grab(w) == ("NO_JOB",)
    assert h.engine.jobs == {}
    # Its unique key is free again.
    c2 = h.connect()
    assert h.submit(c2, "fn", "y", unique="u") == b"H:unit:2"


def test_io_threads_get_their_own_replies(h: Harness) -> None:
    c = h.connect(io_id=1)
    w = h.worker("fn", io_id=2)
    h.req(w, "PRE_SLEEP")
    h.req(c, "SUBMIT_JOB_BG", "fn", "", "")
    out = h.processor.finish_round()
    assert sorted(out) == [1, 2]
    assert out[1] == [(c, struct.pack(">4sII", RES, 8, 8) + b"H:unit:1")]
    assert out[2] == [(w, struct.pack(">4sII", RES, 6, 0))]
    assert h.processor.finish_round() == {}


# ---- admin -----------------------------------------------------------------------------

def test_admin_status_rows(h: Harness) -> None:
    a = h.connect()
    assert h.admin(a, "status") == b".\n"
    c = h.connect()
    h.submit(c, "fn", cmd="SUBMIT_JOB_BG")
    h.submit(c, "fn", cmd="SUBMIT_JOB_BG")
    h.worker("fn")
    w = h.worker("fn")
    h.grab(w)
    assert h.admin(a, "status") == b"fn\t2\t1\t2\n.\n"
    assert h.admin(a, "STATUS") == b"fn\t2\t1\t2\n.\n"
    assert h.admin(a, "prioritystatus") == b"fn\t0\t1\t0\t2\n.\n"


def test_admin_create_and_drop_function(h: Harness) -> None:
    a = h.connect()
    assert h.admin(a, "create function newfn") == b"OK\r\n"
    assert h.admin(a, "status") == b"newfn\t0\t0\t0\n.\n"
    assert h.admin(a, "drop function NEWFN") == b"OK\r\n"
    assert h.admin(a, "status") == b".\n"
    assert h.admin(a, "drop function nope") == b"ERR function not found\r\n"
    h.worker("busy")
    assert h.admin(a, "drop function busy") == (
        b"ERR there are still connected workers or executing clients\r\n")


def test_admin_workers(h: Harness) -> None:
    a = h.connect()                               # id/fd 11
    w = h.connect(ip="10.1.2.3")                  # id/fd 12
    h.req(w, "SET_CLIENT_ID", "worker-7")
    h.req(w, "CAN_DO", "alpha")
    h.req(w, "CAN_DO", "beta")
    assert (a, w) == (11, 12)
    assert h.admin(a, "workers") == (b"12 10.1.2.3 worker-7 : beta alpha\n"
                                     b"11 127.0.0.1 - :\n.\n")
    h.close(w)
    assert h.admin(a, "workers") == b"11 127.0.0.1 - :\n.\n"


def test_admin_workers_lists_higher_io_threads_first_then_newest(h: Harness) -> None:
    a = h.connect(io_id=1)                        # 11
    b = h.connect(io_id=2)                        # 12
    c = h.connect(io_id=1)                        # 13
    assert (a, b, c) == (11, 12, 13)
    assert h.admin(a, "workers") == (b"12 127.0.0.1 - :\n13 127.0.0.1 - :\n"
                                     b"11 127.0.0.1 - :\n.\n")


def test_admin_show_jobs_and_unique_jobs(h: Harness) -> None:
    a = h.connect()
    h1 = h.submit(a, "fn", "data1", unique="-", cmd="SUBMIT_JOB_BG")
    h2 = h.submit(a, "fn", "d", unique="uniq2", cmd="SUBMIT_JOB_BG")
    h3 = h.submit(a, "fn", "d")
    # hashtable_buckets=1: one bucket, newest first.
    assert h.admin(a, "show jobs") == b"%s\t0\t0\t0\n%s\t0\t0\t1\n%s\t0\t0\t1\n.\n" % (
        h3, h2, h1)
    assert h.admin(a, "SHOW UNIQUE JOBS") == b"\nuniq2\n-\n.\n"
    assert h.admin(a, "show") == b"ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n"
    assert h.admin(a, "show foo") == b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"


def test_admin_cancel_job(h: Harness) -> None:
    a, c = h.connect(), h.connect()
    handle = h.submit(c, "fn", "x")
    assert h.admin(a, "cancel job " + handle.decode()) == b"OK\r\n"
    assert h.replies() == {c: [("WORK_FAIL", handle)]}
    assert h.admin(a, "cancel job " + handle.decode()) == b"ERR UNKNOWN_JOB\r\n"
    assert h.admin(a, "status") == b"fn\t0\t0\t0\n.\n"
    assert h.admin(a, "cancel job a b") == b"ERR UNKNOWN_ERROR\r\n"
    assert h.admin(a, "cancel job") == b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"
    w = h.worker("fn")
    assert h.grab(w) == ("NO_JOB",)


def test_admin_maxqueue_and_queue_full(h: Harness) -> None:
    a, c = h.connect(), h.connect()
    assert h.admin(a, "maxqueue nosuchfn 3") == b"OK\r\n"
    assert h.admin(a, "maxqueue") == (b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments"
                                      b"+was+sent+to+this+command+maxqueue\r\n")
    assert h.admin(a, "create function fn") == b"OK\r\n"
    assert h.admin(a, "maxqueue fn 2") == b"OK\r\n"
    h.submit(c, "fn", "1", unique="k1", cmd="SUBMIT_JOB_BG")
    h.submit(c, "fn", "2", cmd="SUBMIT_JOB_HIGH_BG")
    h.req(c, "SUBMIT_JOB_LOW", "fn", "", "3")
    assert h.replies() == {c: [("ERROR", b"QUEUE_ERROR", b"Job queue is full")]}
    # A duplicate unique coalesces: no new job, so the limit does not apply.
    assert h.submit(c, "fn", "other", unique="k1", cmd="SUBMIT_JOB_BG") == b"H:unit:1"
    assert h.admin(a, "maxqueue fn") == b"OK\r\n"       # no sizes: unlimited again
    assert h.submit(c, "fn", "3") == b"H:unit:3"


def test_admin_maxqueue_per_priority(h: Harness) -> None:
    a, c = h.connect(), h.connect()
    h.admin(a, "create function fn")
    assert h.admin(a, "maxqueue fn 0 1 5") == b"OK\r\n"
    assert h.submit(c, "fn", cmd="SUBMIT_JOB_HIGH_BG") == b"H:unit:1"   # high: unlimited
    h.req(c, "SUBMIT_JOB_BG", "fn", "", "")                             # normal: 1 < 1+1
    assert h.replies() == {c: [("ERROR", b"QUEUE_ERROR", b"Job queue is full")]}
    assert h.submit(c, "fn", cmd="SUBMIT_JOB_LOW_BG") == b"H:unit:2"
    assert h.admin(a, "prioritystatus") == b"fn\t1\t0\t1\t0\n.\n"


def test_admin_version_verbose_getpid() -> None:
    h = Harness(verbose="WARNING")
    a = h.connect()
    assert h.admin(a, "version") == b"OK 1.1.20\n"
    assert h.admin(a, "verbose") == b"OK WARNING\n"
    assert h.admin(a, "getpid") == b"OK %d\n" % os.getpid()


@pytest.mark.parametrize("line,reply", [
    ("bogus", b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"),
    ("", b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"),
    (" status", b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"),
    ("shutdown graceful", b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"),
    ("create foo", b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this"
                   b"+command+create\r\n"),
])
def test_admin_errors(h: Harness, line: str, reply: bytes) -> None:
    a = h.connect()
    assert h.admin(a, line) == reply


def test_admin_lines_in_one_read_answered_in_order(h: Harness) -> None:
    a = h.connect()
    h.send(a, b"version\nbogus\r\nstatus\n")
    assert h.text(a) == (b"OK 1.1.20\nERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"
                         b".\n")


def test_admin_six_tokens_close_the_connection(h: Harness) -> None:
    a = h.connect()
    h.send(a, b"version\na b c d e f\n")
    assert h.raw() == {a: [b"OK 1.1.20\n", None]}
    assert a not in h.engine.conns


def test_idle_peers_share_the_empty_job_tables(h: Harness) -> None:
    """An idle connection owns no job tables (state.NO_JOBS is shared); a client or worker
    gets its own on first use, and the shared one stays empty whatever happens."""
    from gearmand_py.state import NO_JOBS
    idle, c, c2 = h.connect(), h.connect(), h.connect()
    peers = h.engine.conns
    assert peers[idle].held is NO_JOBS and peers[idle].listening is NO_JOBS
    handle = h.submit(c, "fn", "work", unique="u")
    assert h.submit(c2, "fn", "more", unique="u") == handle       # attach
    assert peers[c].listening is not NO_JOBS and peers[c].listening == {handle: ANY_JOB}
    w = h.worker("fn")
    assert peers[w].held is NO_JOBS
    assert h.grab(w) == ("JOB_ASSIGN", handle, b"fn", b"work")
    assert peers[w].held is not NO_JOBS and list(peers[w].held) == [handle]
    h.close(w)                                                     # requeue
    w2 = h.worker("fn")
    assert h.grab(w2) == ("JOB_ASSIGN", handle, b"fn", b"work")
    h.req(w2, "WORK_COMPLETE", handle, "ok")
    h.close(c2)
    h.replies()
    assert peers[idle].held is NO_JOBS and peers[idle].listening is NO_JOBS
    assert NO_JOBS == {}


class _AnyJob:
    def __eq__(self, other: object) -> bool:
        return other.__class__.__name__ == "Job"


ANY_JOB = _AnyJob()
