"""Job-engine records: connections, functions and jobs as the processing thread sees them.

Only the processing thread creates or mutates these objects (other threads never see them).
Also gearmand's one-at-a-time hash, used to list functions and jobs in gearmand's order,
and the per-function counters the metrics endpoint reports (``FunctionStats``): plain ints
the engine bumps where it already works; snapshot.py copies them out.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Dict, List, Optional, Sequence, Set, Tuple

HIGH, NORMAL, LOW = 0, 1, 2
PRIORITIES = (HIGH, NORMAL, LOW)
#: Bucket count of gearmand's function table (fixed in 1.1.20).
FUNCTION_BUCKETS = 991

#: Histograms (queue wait, run time) are fixed bucket counts.  Slot i < HIST_FINITE counts
#: durations d with HIST_BOUNDS[i-1] < d <= HIST_BOUNDS[i] (Prometheus' ``le``), the last
#: slot the longer ones; the slot of a duration is ``bisect_left(HIST_BOUNDS, d)``: one C
#: call, nothing allocated.
HIST_FIRST = 0.0001
HIST_FINITE = 21
HIST_BOUNDS = tuple(HIST_FIRST * 2 ** i for i in range(HIST_FINITE))

#: How a job ended, the index into FunctionStats.results.
RESULT_COMPLETE, RESULT_FAIL, RESULT_EXCEPTION = 0, 1, 2
RESULTS = ("complete", "fail", "exception")


def gearman_hash(key: bytes) -> int:
    """gearmand's signed 32-bit one-at-a-time hash (Jenkins' one-at-a-time over signed
    chars, as gearmand's libhashkit/one_at_a_time.cc); never 0."""
    v = 0
    for b in key:
        c = b - 256 if b > 127 else b          # signed char
        v = (v + c) & 0xFFFFFFFF
        v = (v + (v << 10)) & 0xFFFFFFFF
        sv = v - (1 << 32) if v & 0x80000000 else v
        v = (v ^ ((sv >> 6) & 0xFFFFFFFF)) & 0xFFFFFFFF
    v = (v + (v << 3)) & 0xFFFFFFFF
    sv = v - (1 << 32) if v & 0x80000000 else v
    v = (v ^ ((sv >> 11) & 0xFFFFFFFF)) & 0xFFFFFFFF
    v = (v + (v << 15)) & 0xFFFFFFFF
    return v or 1


def bucket_order(key: bytes, buckets: int, seq: int) -> Tuple[int, int]:
    """Sort key reproducing gearmand's listing: ascending bucket, newest first inside one."""
    return (gearman_hash(key) % buckets, -seq)


NO_CLIENTS: Tuple["Peer", ...] = ()
#: The shared "no jobs" table of a Peer's ``held`` and ``listening`` until its first job
#: (an idle connection then costs no dicts of its own).  Never inserted into: jobs go in
#: only through Peer.hold / Peer.listen, which give the peer its own dict first; pop, get
#: and clear on it are harmless.
NO_JOBS: Dict[bytes, "Job"] = {}


class Ability:
    """One CAN_DO / CAN_DO_TIMEOUT registration of a connection."""

    __slots__ = ("function", "timeout_ms")

    def __init__(self, function: "Function", timeout_ms: int) -> None:
        self.function = function
        self.timeout_ms = timeout_ms


class FunctionStats:
    """One function's counters since it was created (they go when ``drop function`` removes
    it; Prometheus takes that as a counter reset)."""

    __slots__ = ("submitted", "coalesced", "rejected", "results", "retried", "dropped",
                 "cancelled", "wait", "wait_sum", "run", "run_sum")

    def __init__(self) -> None:
        #: jobs created by client submits, [background][priority]
        self.submitted = ([0] * len(PRIORITIES), [0] * len(PRIORITIES))
        self.coalesced = 0          # submits that joined a job with the same unique key
        self.rejected = 0           # refused: queue full (maxqueue) or not stored
        self.results = [0, 0, 0]    # by RESULT_*: WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION
        self.retried = 0            # requeued after its worker left, timed out or CANT_DO
        self.dropped = 0            # ... and removed instead, having reached -j attempts
        self.cancelled = 0          # admin "cancel job"
        self.wait = [0] * (HIST_FINITE + 1)   # queued -> assigned (per assignment)
        self.wait_sum = 0.0
        self.run = [0] * (HIST_FINITE + 1)    # assigned -> WORK_COMPLETE/FAIL/EXCEPTION
        self.run_sum = 0.0


class Peer:
    """A client/worker/admin connection as the processing thread knows it (the I/O thread's
    view of the same socket is iothread.Connection; both share the connection id)."""

    __slots__ = ("id", "io_id", "fd", "ip", "port", "client_id", "abilities", "sleeping",
                 "noop_sent", "exceptions", "held", "listening", "seq", "congested", "holding",
                 "pausers", "pending", "admin")

    def __init__(self, conn_id: int, io_id: int, fd: int, ip: str, port: int, seq: int,
                 exceptions: bool) -> None:
        self.id = conn_id
        self.io_id = io_id
        self.fd = fd
        self.ip = ip
        self.port = port
        self.seq = seq
        self.client_id = b"-"
        self.abilities: List[Ability] = []      # oldest registration first
        self.sleeping = False
        self.noop_sent = False
        self.exceptions = exceptions
        self.held: Dict[bytes, Job] = NO_JOBS    # jobs assigned to this worker (hold())
        self.listening: Dict[bytes, Job] = NO_JOBS   # foreground jobs it waits on (listen())
        # Backpressure (engine.congested): the client's output is over the high-water mark;
        # the workers paused for it; the congested clients this worker is paused for.
        # The sets exist only while in use (most peers never need them).
        self.congested = False
        self.holding: Optional[Set[Peer]] = None
        self.pausers: Optional[Set[Peer]] = None
        # Replies queued behind a JOB_CREATED that waits for its store commit (engine.send):
        # packets, and one-element lists for replies not known yet.  None when empty.
        self.pending: Optional[Deque[object]] = None
        self.admin = False                       # has sent an admin text line

    def hold(self, job: "Job") -> None:
        """The worker now holds ``job`` (its own table on first use: NO_JOBS is shared)."""
        if self.held is NO_JOBS:
            self.held = {}
        self.held[job.handle] = job

    def listen(self, job: "Job") -> None:
        """The client now waits on ``job`` (its own table on first use: NO_JOBS is shared)."""
        if self.listening is NO_JOBS:
            self.listening = {}
        self.listening[job.handle] = job


class Function:
    __slots__ = ("name", "queues", "workers", "total", "running", "max_queue", "wake_pos",
                 "by_unique", "seq", "stats")

    def __init__(self, name: bytes, seq: int) -> None:
        self.name = name
        self.seq = seq
        self.queues: Tuple[Deque[Job], Deque[Job], Deque[Job]] = (deque(), deque(), deque())
        self.workers: List[Peer] = []      # one entry per registration
        self.total = 0                     # queued + running (+ ignored not yet purged)
        self.running = 0
        self.max_queue = [0, 0, 0]         # per priority; 0 = unlimited
        self.wake_pos = 0
        self.by_unique: Dict[bytes, Job] = {}
        self.stats = FunctionStats()

    def queued(self) -> int:
        q = self.queues
        return len(q[0]) + len(q[1]) + len(q[2])


class Job:
    __slots__ = ("handle", "function", "unique", "key", "data", "priority", "background",
                 "when", "reducer", "clients", "worker", "numerator", "denominator",
                 "retries", "ignored", "persisted", "token", "seq", "stamp")

    def __init__(self, handle: bytes, function: Function, unique: bytes, key: Optional[bytes],
                 data: bytes, priority: int, background: bool, when: int, reducer: bytes,
                 seq: int, stamp: float = 0.0) -> None:
        self.handle = handle
        self.function = function
        self.unique = unique
        self.key = key                     # coalescing key in function.by_unique, or None
        self.data = data
        self.priority = priority
        self.background = background
        self.when = when
        self.reducer = reducer
        self.seq = seq
        # Attached foreground clients, newest first.  Starts as the shared empty tuple (no
        # list to allocate and GC-track per queued background job); attaching replaces it.
        self.clients: Sequence[Peer] = NO_CLIENTS
        self.worker: Optional[Peer] = None
        self.numerator = b"0"
        self.denominator = b"0"
        self.retries = 0
        self.ignored = False
        self.persisted = False
        self.token = 0                     # bumped on every assignment (timer validity)
        self.stamp = stamp                 # Engine.now when (re)queued, then when assigned
