"""The job engine: functions, jobs, workers, queues, wakeups, timers and the queue backend.

Processing thread only.  Handlers (handlers.py, admin.py) call these operations; replies
are appended to ``self.out`` per I/O thread (``Reply`` tuples of messages.py) and taken by
the processor after each round.  It reads no settings: server.py gives it EngineOptions.

Store units (durable ``-q`` only; the builtin queue never builds one).  The store writes of
a processing round - the add of every accepted background job, the done of every stored
job that ended - collect in one ``StoreUnit``; ``post_unit`` (end of round) hands it to
the store thread (store.py) as a STORE message and never waits.  Until its STORED outcome
arrives, a job of the unit exists (handle, coalescing, ``status``) but is not queued for
workers, and the JOB_CREATED of every submit waiting on it is held.  Committed: the jobs
are queued and the submitters get JOB_CREATED.  Failed (or refused by the backend): the
submitters get ERROR QUEUE_ERROR with a text naming the backend, attached foreground
clients WORK_FAIL, and the jobs are forgotten.  A unit not back within ``queue_timeout`` is
failed the same way (the store thread does not write the adds of a unit whose deadline
passed before its commit started); if a unit whose commit was under way at its deadline
commits after all, its jobs are stored but were never acknowledged: they are taken in as
replayed jobs are and run (at-least-once).

Counters for the metrics endpoint are plain ints bumped where the engine already works
(state.FunctionStats, queues.base.QueueStats, ``packets``); the histograms use ``now``, the
monotonic clock read once per round by the processor, so no job pays for a clock call.
"""

from __future__ import annotations

import dataclasses
from collections import deque
import heapq
import logging
import os
import time
from bisect import bisect_left
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from .log import NOTICE
from .messages import OVERDUE, PAUSE_READ, RESUME_READ, STORE, Outcome, Reply
from .protocol.codec import pack
from .protocol.commands import Cmd
from .protocol.commands import COMMANDS
from .queues.base import Key, QueueBackend, QueueStats, Refused, StoredJob
from .state import HIST_BOUNDS, NO_CLIENTS, NO_JOBS, PRIORITIES, Ability, Function, Job, Peer

log = logging.getLogger("gearmand")

#: Longest unique key accepted (gearmand's GEARMAN_MAX_UNIQUE_SIZE).
MAX_UNIQUE = 64
#: Longest SET_CLIENT_ID kept.
MAX_CLIENT_ID = 127
#: CAN_DO_TIMEOUT floor (ms), as gearmand.
MIN_WORKER_TIMEOUT_MS = 1000

_NOOP = pack(Cmd.NOOP)

TIMER_WORKER_TIMEOUT = 0
TIMER_EPOCH = 1
TIMER_STORE = 2


class EngineError(Exception):
    """A request refused with a Gearman ERROR packet: (code, text)."""

    def __init__(self, code: bytes, text: bytes) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


def default_handle_prefix() -> str:
    return "H:" + os.uname().nodename


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """The options the engine uses (built from the command line by server.py)."""

    handle_prefix: str          # job handles are "<prefix>:<n>"
    round_robin: bool           # -R: a worker's functions rotate after each assignment
    priority_global: bool       # --priority-scope=global: highest priority across functions
    worker_wakeup: int          # -w: sleeping workers NOOPed per job; 0 = all
    job_retries: int            # -j: attempts before a job is dropped; 0 = no limit
    exceptions: bool            # --exceptions: every client gets WORK_EXCEPTION
    verbose: str                # the log level, as the admin "verbose" command shows it
    version: str                # what the admin "version" command answers
    error_log_level: int        # the level ERROR replies are logged at (2.0: ERROR)
    hashtable_buckets: int      # listing order of "show jobs" (gearmand's hash table)
    # Used with a durable queue only (server.py always sets them):
    queue_name: str = ""        # -q as given (lower case): store refusals start with it
    queue_timeout: float = 0.0  # --queue-timeout: a store unit not back by then is refused


class StoreUnit:
    """One processing round's store writes, and the submits that wait on them."""

    __slots__ = ("id", "jobs", "adds", "dones", "waiters", "expired")

    def __init__(self, unit_id: int) -> None:
        self.id = unit_id
        self.jobs: List[Job] = []              # adds[i] stores jobs[i]
        self.adds: List[StoredJob] = []
        self.dones: List[Key] = []
        #: background submits to answer: (client, job, its place in the client's replies)
        self.waiters: List[Tuple[Peer, Job, List[Optional[bytes]]]] = []
        self.expired = False                   # refused after queue_timeout


class Engine:
    def __init__(self, options: EngineOptions, backend: QueueBackend,
                 store: Optional[Callable[[Tuple[Any, ...]], None]] = None) -> None:
        """``store`` posts to the store thread's inbox; required for a durable backend."""
        self.options = options
        self.backend = backend
        self.handle_prefix = options.handle_prefix.encode() + b":"
        self.handle_counter = 0
        self.functions: Dict[bytes, Function] = {}
        self.jobs: Dict[bytes, Job] = {}
        self.conns: Dict[int, Peer] = {}
        self.out: Dict[int, List[Reply]] = {}
        #: Workers asleep after PRE_SLEEP that have not been sent a NOOP yet.
        self.sleepers: Set[Peer] = set()
        self.timers: List[Tuple[float, int, int, Any, int]] = []
        self._seq = 0
        self.round_robin = options.round_robin
        self.priority_global = options.priority_global
        self.worker_wakeup = options.worker_wakeup
        self.max_retries = options.job_retries
        self.on_idle: Optional[Callable[[], None]] = None   # graceful-stop hook
        #: False for the builtin queue: nothing to store, skip building records.
        self.durable = getattr(backend, "durable", True)
        self.log_accepted = log.isEnabledFor(NOTICE)
        if self.durable and store is None:
            raise ValueError("a durable queue needs the store thread")
        self.store_post = store
        #: The open unit of this round; units posted and not answered yet; the jobs whose
        #: add is in one of them.
        self.unit: Optional[StoreUnit] = None
        self.inflight: Dict[int, StoreUnit] = {}
        self.unstored: Dict[Job, StoreUnit] = {}
        self._unit_ids = 0
        self._timer_kinds: Dict[int, Callable[[Any, int], None]] = {
            TIMER_WORKER_TIMEOUT: self._worker_timeout,
            TIMER_EPOCH: self._epoch_due,
            TIMER_STORE: self._store_overdue,
        }
        #: Monotonic time of the round being run (the processor sets it once per round).
        self.now = time.monotonic()
        #: Wall-clock start, for the metrics endpoint.
        self.started = time.time()
        #: Packets handled, by command number (the processor counts them).
        self.packets = [0] * (max(COMMANDS) + 1)
        self.protocol_errors = 0
        self.queue_stats = QueueStats()

    # ---- plumbing -------------------------------------------------------------------
    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, conn: Peer, data: bytes) -> None:
        if conn.pending:                 # behind a JOB_CREATED that waits for the store
            conn.pending.append(data)
            return
        out = self.out.get(conn.io_id)
        if out is None:
            out = self.out[conn.io_id] = []
        out.append((conn.id, data))

    def _hold(self, conn: Peer) -> List[Optional[bytes]]:
        """A place in the connection's reply order for a reply not known yet (a JOB_CREATED
        that waits for its store commit): later replies queue behind it."""
        slot: List[Optional[bytes]] = [None]
        if conn.pending is None:
            conn.pending = deque()
        conn.pending.append(slot)
        return slot

    def _release(self, conn: Peer) -> None:
        """Send the connection's queued replies up to the next reply not known yet."""
        pending = conn.pending
        assert pending is not None
        conn.pending = None              # so send() below goes out
        while pending:
            item = pending[0]
            if item.__class__ is list:
                if item[0] is None:      # type: ignore[index]
                    break
                item = item[0]           # type: ignore[index]
            pending.popleft()
            self.send(conn, item)        # type: ignore[arg-type]
        conn.pending = pending or None

    def close(self, conn: Peer) -> None:
        """Forget the connection and have its I/O thread close it after pending replies."""
        self.disconnect(conn)
        self.out.setdefault(conn.io_id, []).append((conn.id, None))

    def error(self, conn: Peer, code: bytes, text: bytes) -> None:
        log.log(self.options.error_log_level, "GEARMAN_%s:%s", code.decode(),
                text.decode("utf-8", "replace"))
        self.send(conn, pack(Cmd.ERROR, code, text))

    def function(self, name: bytes) -> Function:
        func = self.functions.get(name)
        if func is None:
            func = self.functions[name] = Function(name, self.next_seq())
        return func

    # ---- connections ----------------------------------------------------------------
    def connect(self, conn_id: int, io_id: int, fd: int, ip: str, port: int) -> Peer:
        conn = Peer(conn_id, io_id, fd, ip, port, self.next_seq(), self.options.exceptions)
        self.conns[conn_id] = conn
        return conn

    def disconnect(self, conn: Peer) -> None:
        """Peer gone: requeue what it held, detach it from what it waited on."""
        self.conns.pop(conn.id, None)
        self.sleepers.discard(conn)
        self.reset_abilities(conn)
        for job in list(conn.listening.values()):
            self.detach(job, conn)
        conn.listening = NO_JOBS
        if conn.holding:
            self.drained(conn)
        if conn.pausers:                 # a paused worker left: its clients forget it
            for client in conn.pausers:
                client.holding.discard(conn)  # type: ignore[union-attr]
            conn.pausers = None

    # ---- backpressure (messages.py: CONGESTED / DRAINED, PAUSE_READ / RESUME_READ) --------
    def congested(self, client: Peer) -> None:
        """The client's unsent output passed its I/O thread's high-water mark: hold back
        what streams to it."""
        client.congested = True
        for job in list(client.listening.values()):
            self._hold_back(job, client)

    def _hold_back(self, job: Job, client: Peer) -> None:
        worker = job.worker
        if worker is None or client.holding and worker in client.holding:
            return
        if len(job.clients) > 1:
            # A shared (coalesced) job: the others keep their stream; the slow client is
            # failed out of this job (it reads WORK_FAIL once it catches up).
            log.warning("client %s:%d cannot keep up with job %s shared by %d clients; "
                        "failing it for that client", client.ip, client.port,
                        job.handle.decode(), len(job.clients))
            self.send(client, pack(Cmd.WORK_FAIL, job.handle))
            client.listening.pop(job.handle, None)
            self.detach(job, client)
            return
        if client.holding is None:
            client.holding = set()
        client.holding.add(worker)
        if not worker.pausers:
            worker.pausers = set()
            self.send_flow(worker, PAUSE_READ)
        worker.pausers.add(client)  # type: ignore[union-attr]

    def drained(self, client: Peer) -> None:
        """The client caught up (or left): resume the workers paused for it alone."""
        client.congested = False
        for worker in client.holding or ():
            pausers = worker.pausers
            if pausers is not None:
                pausers.discard(client)
                if not pausers:
                    worker.pausers = None
                    if worker.id in self.conns:
                        self.send_flow(worker, RESUME_READ)
        client.holding = None

    def send_flow(self, conn: Peer, op: int) -> None:
        self.out.setdefault(conn.io_id, []).append((conn.id, op))

    def _remove_worker(self, func: Function, conn: Peer) -> None:
        try:
            func.workers.remove(conn)
        except ValueError:
            pass

    # ---- abilities ------------------------------------------------------------------
    def can_do(self, conn: Peer, name: bytes, timeout_ms: int) -> None:
        func = self.function(name)
        conn.abilities.append(Ability(func, timeout_ms))
        func.workers.append(conn)

    def cant_do(self, conn: Peer, name: bytes) -> None:
        func = self.functions.get(name)
        if func is None:
            return
        kept = [a for a in conn.abilities if a.function is not func]
        for _ in range(len(conn.abilities) - len(kept)):
            self._remove_worker(func, conn)
        conn.abilities[:] = kept
        self.release_jobs(conn, func)

    def reset_abilities(self, conn: Peer) -> None:
        """Forget every function the worker registered; requeue the jobs it holds."""
        for ability in conn.abilities:
            self._remove_worker(ability.function, conn)
        conn.abilities.clear()
        self.release_jobs(conn, None)

    # ---- submission -----------------------------------------------------------------
    def submit(self, conn: Optional[Peer], name: bytes, unique: bytes, data: bytes,
               priority: int, background: bool, when: int = 0, reducer: bytes = b"") -> Job:
        """Create (or coalesce into) a job; raises EngineError to refuse it.

        ``conn`` is None for jobs replayed from the persistent queue (already stored).
        """
        if len(unique) > MAX_UNIQUE or len(reducer) > MAX_UNIQUE:
            raise EngineError(b"ARGUMENT_TOO_LARGE", b"Unique value too large")
        func = self.functions.get(name)
        if func is None:
            func = self.function(name)
        if not unique:
            key: Optional[bytes] = None
        else:
            if unique == b"-":
                key = b"\0" + data if data else None
            else:
                key = unique
            if key is not None:
                job = func.by_unique.get(key)
                if job is not None:
                    if conn is not None:
                        func.stats.coalesced += 1
                        if not background:
                            self.attach(job, conn)
                    if self.log_accepted:
                        self._log_accepted(job)
                    return job
        limit = func.max_queue[priority]
        if limit and func.total >= limit:
            func.stats.rejected += 1
            raise EngineError(b"QUEUE_ERROR", b"Job queue is full")
        self.handle_counter += 1
        handle = b"%s%d" % (self.handle_prefix, self.handle_counter)
        self._seq += 1
        job = Job(handle, func, unique, key, data, priority, background, when, reducer,
                  self._seq, self.now)
        if background and self.durable:
            if conn is not None:
                self._store(job)
            else:                                   # replayed: already stored
                job.persisted = True
        if conn is not None:
            func.stats.submitted[background][priority] += 1
        self.jobs[handle] = job
        if key is not None:
            func.by_unique[key] = job
        func.total += 1
        if conn is not None and not background:
            job.clients = [conn]
            conn.listen(job)
        if self.unstored and job in self.unstored:   # queued once stored
            if self.log_accepted:
                self._log_accepted(job)
            return job
        func.queues[priority].append(job)
        if when and when > time.time():
            self.add_timer(time.monotonic() + (when - time.time()), TIMER_EPOCH, job, 0)
        if func.workers:
            self.wake_workers(func)
        if self.log_accepted:
            self._log_accepted(job)
        return job

    # ---- store units (module docstring) ----------------------------------------------
    def _store(self, job: Job) -> None:
        """Put the job's add in this round's unit (it is queued once that commits)."""
        if job.when and not self.backend.supports_epoch:
            raise EngineError(b"QUEUE_ERROR", b"QUEUE_ERROR")
        unit = self.unit or self._open_unit()
        unit.jobs.append(job)
        unit.adds.append(StoredJob(job.unique, job.function.name, job.data, job.priority,
                                   job.when))
        self.unstored[job] = unit

    def _open_unit(self) -> StoreUnit:
        self._unit_ids += 1
        unit = self.unit = StoreUnit(self._unit_ids)
        return unit

    def acknowledge(self, conn: Peer, job: Job) -> None:
        """A background submit was accepted into ``job``: JOB_CREATED now if the job is
        stored, else once its unit committed."""
        unit = self.unstored.get(job)
        if unit is None:
            self.send(conn, pack(Cmd.JOB_CREATED, job.handle))
        else:
            unit.waiters.append((conn, job, self._hold(conn)))

    def post_unit(self) -> None:
        """End of round: hand the open unit to the store thread."""
        unit = self.unit
        if unit is None:
            return
        self.unit = None
        self.queue_stats.writes += len(unit.adds)
        self.queue_stats.deletes += len(unit.dones)
        deadline = time.monotonic() + self.options.queue_timeout
        if unit.adds:
            self.inflight[unit.id] = unit
            self.add_timer(deadline, TIMER_STORE, unit, 0)
        assert self.store_post is not None
        self.store_post((STORE, unit.id, unit.adds, unit.dones, deadline))

    def stored(self, outcomes: List[Outcome]) -> None:
        """STORED from the store thread: settle each unit."""
        for unit_id, error, refused in outcomes:
            unit = self.inflight.pop(unit_id, None)
            if unit is None:
                continue
            if unit.expired:
                if error is None:
                    self._late(unit, refused)
            else:
                self._settle(unit, error, refused)
                # its queue_timeout timer still holds the unit: let the jobs' data go now
                unit.jobs, unit.adds, unit.waiters = [], [], []

    def _settle(self, unit: StoreUnit, error: Optional[str], refused: Refused) -> None:
        stats = self.queue_stats
        if error is None:
            stats.commits += 1
            stats.connected = 1
        else:
            stats.errors += 1
            stats.connected = 0
            stats.last_error = error
        reasons: Dict[Job, str] = {}
        unstored = self.unstored
        for i, job in enumerate(unit.jobs):
            unstored.pop(job, None)
            why = error if error is not None else refused.get(i)
            if why is not None:
                reasons[job] = why
                job.function.stats.rejected += 1
                self._tell_clients_fail(job)
                self._forget(job)
            elif self.jobs.get(job.handle) is job:
                job.persisted = True
                self._enqueue(job)
            else:
                self._orphan(job)
        for conn, job, slot in unit.waiters:
            why = reasons.get(job)
            if why is None:
                slot[0] = pack(Cmd.JOB_CREATED, job.handle)
            else:
                slot[0] = pack(Cmd.ERROR, b"QUEUE_ERROR", why.encode("utf-8", "replace"))
            if conn.id in self.conns:
                self._release(conn)

    def _enqueue(self, job: Job) -> None:
        """Make a stored job visible to workers."""
        func = job.function
        func.queues[job.priority].append(job)
        if job.when and job.when > time.time():
            self.add_timer(time.monotonic() + (job.when - time.time()), TIMER_EPOCH, job, 0)
        if func.workers:
            self.wake_workers(func)

    def _orphan(self, job: Job) -> None:
        """A job cancelled before its add committed: delete the row, unless a newer job
        with the same key owns it by now."""
        owner = job.function.by_unique.get(job.key) if job.key is not None else None
        if owner is None:
            unit = self.unit or self._open_unit()
            unit.dones.append((job.unique, job.function.name))

    def _store_overdue(self, unit: StoreUnit, token: int) -> None:
        """TIMER_STORE: the unit did not come back within queue_timeout: refuse it."""
        if unit.expired or unit.id not in self.inflight:
            return
        unit.expired = True
        self._settle(unit, OVERDUE.format(queue=self.options.queue_name,
                                          timeout=self.options.queue_timeout), {})

    def _late(self, unit: StoreUnit, refused: Refused) -> None:
        """An expired unit committed after all: its jobs are stored, so take them in as
        replayed jobs (they run; their submitters were told QUEUE_ERROR)."""
        taken = 0
        for i, stored in enumerate(unit.adds):
            if i in refused:
                continue
            try:
                self.submit(None, stored.function, stored.unique, stored.data,
                            stored.priority, True, stored.when)
                taken += 1
            except EngineError as exc:
                log.error("job stored after its submit was refused could not be queued: %s",
                          exc.text.decode("utf-8", "replace"))
        log.warning("queue %s: %d jobs committed after their submits had timed out; they "
                    "are queued (at-least-once)", self.options.queue_name, taken)


    def _log_accepted(self, job: Job) -> None:
        if log.isEnabledFor(NOTICE):
            log.log(NOTICE, "accepted,%s,%s,%d", job.function.name.decode("utf-8", "replace"),
                    job.unique.decode("utf-8", "replace"), job.when)

    def attach(self, job: Job, conn: Peer) -> None:
        if job.handle not in conn.listening:
            job.clients = [conn, *job.clients]
            conn.listen(job)

    def detach(self, job: Job, conn: Peer) -> None:
        job.clients = [c for c in job.clients if c is not conn]
        if not job.clients and not job.background and not job.ignored:
            self._ignore(job)

    def _ignore(self, job: Job) -> None:
        """Nobody wants the result: purge a queued job lazily, let a running one finish."""
        job.ignored = True
        if job.key is not None and job.function.by_unique.get(job.key) is job:
            del job.function.by_unique[job.key]

    # ---- wakeups --------------------------------------------------------------------
    def sleep(self, conn: Peer) -> None:
        """PRE_SLEEP found nothing to do: NOOP the worker when work arrives."""
        conn.sleeping = True
        if not conn.noop_sent:
            self.sleepers.add(conn)

    def wake_workers(self, func: Function) -> None:
        """NOOP the sleeping workers of ``func`` (all, or -w of them in rotation)."""
        if not self.sleepers:
            return
        workers = func.workers
        n = len(workers)
        if not n:
            return
        limit = self.worker_wakeup
        start = func.wake_pos % n
        woken = 0
        for i in range(n):
            w = workers[(start + i) % n]
            if w.sleeping and not w.noop_sent:
                w.noop_sent = True
                self.sleepers.discard(w)
                self.send(w, _NOOP)
                woken += 1
                if limit and woken >= limit:
                    func.wake_pos = start + i + 1
                    return
        func.wake_pos = start + 1

    # ---- assignment -----------------------------------------------------------------
    def _take(self, func: Function, now: float) -> Optional[Job]:
        """The first due, wanted job of the highest non-empty priority; purges ignored."""
        for dq in func.queues:
            job = self._take_from(dq, now)
            if job is not None:
                return job
        return None

    def _take_from(self, dq: Deque[Job], now: float) -> Optional[Job]:
        """The first due, wanted job of one priority queue; purges ignored ones."""
        i = 0
        while i < len(dq):
            job = dq[i]
            if job.ignored:
                del dq[i]
                self._forget(job)
                continue
            if job.when and job.when > now:
                i += 1
                continue
            if i == 0:
                dq.popleft()
            else:
                del dq[i]
            return job
        return None

    def has_due_job(self, conn: Peer) -> bool:
        now = time.time()
        for ability in conn.abilities:
            for dq in ability.function.queues:
                for job in dq:
                    if not job.ignored and (not job.when or job.when <= now):
                        return True
        return False

    def grab(self, conn: Peer) -> Optional[Job]:
        """Assign the worker its next job, or None.  The worker's functions are walked in
        registration order (rotated after each assignment with -R); with
        ``--priority-scope=function`` the first function with a due job gives its highest
        priority job, with ``global`` the highest priority across all functions wins."""
        conn.sleeping = False
        conn.noop_sent = False
        if self.sleepers:
            self.sleepers.discard(conn)
        if self.priority_global:
            return self._grab_global(conn)
        abilities = conn.abilities
        now = 0.0
        for idx, ability in enumerate(abilities):
            func = ability.function
            if not (func.queues[0] or func.queues[1] or func.queues[2]):
                continue
            if not now:
                now = time.time()
            job = self._take(func, now)
            if job is not None:
                return self._assign(conn, idx, job)
        return None

    def _grab_global(self, conn: Peer) -> Optional[Job]:
        abilities = conn.abilities
        now = time.time()
        for priority in PRIORITIES:
            for idx, ability in enumerate(abilities):
                dq = ability.function.queues[priority]
                if dq:
                    job = self._take_from(dq, now)
                    if job is not None:
                        return self._assign(conn, idx, job)
        return None

    def _assign(self, conn: Peer, idx: int, job: Job) -> Job:
        abilities = conn.abilities
        ability = abilities[idx]
        if self.round_robin:
            abilities.append(abilities.pop(idx))
        job.worker = conn
        job.token += 1
        conn.hold(job)
        func = job.function
        func.running += 1
        stats = func.stats
        now = self.now
        waited = now - job.stamp
        stats.wait[bisect_left(HIST_BOUNDS, waited)] += 1
        stats.wait_sum += waited
        job.stamp = now
        if ability.timeout_ms > 0:
            self.add_timer(time.monotonic() + ability.timeout_ms / 1000.0,
                           TIMER_WORKER_TIMEOUT, job, job.token)
        return job

    def release_jobs(self, conn: Peer, func: Optional[Function]) -> None:
        """Requeue the jobs a worker holds (all, or those of one function), newest first."""
        for handle in reversed(list(conn.held)):
            job = conn.held[handle]
            if func is None or job.function is func:
                self.requeue(job)

    def requeue(self, job: Job) -> None:
        worker = job.worker
        if worker is not None:
            worker.held.pop(job.handle, None)
        job.worker = None
        job.function.running -= 1
        job.retries += 1
        job.numerator = job.denominator = b"0"
        if self.max_retries and job.retries >= self.max_retries:
            log.log(NOTICE, "Dropped job due to max retry count: %s %s",
                    job.handle.decode(), job.unique.decode("utf-8", "replace"))
            job.function.stats.dropped += 1
            self._tell_clients_fail(job)
            self._done(job)
            self._forget(job)
            return
        job.function.stats.retried += 1
        job.stamp = self.now
        job.function.queues[job.priority].append(job)
        self.wake_workers(job.function)

    # ---- results --------------------------------------------------------------------
    def forward(self, job: Job, packet: bytes) -> None:
        for client in job.clients:
            self.send(client, packet)
            if client.congested:
                self._hold_back(job, client)

    def finish(self, job: Job, result: int) -> None:
        """The worker ended the job (``result``: state.RESULT_*)."""
        worker = job.worker
        stats = job.function.stats
        stats.results[result] += 1
        if worker is not None:
            worker.held.pop(job.handle, None)
            job.function.running -= 1
            job.worker = None
            ran = self.now - job.stamp
            stats.run[bisect_left(HIST_BOUNDS, ran)] += 1
            stats.run_sum += ran
        self._done(job)
        self._forget(job)

    def _tell_clients_fail(self, job: Job) -> None:
        if job.clients:
            self.forward(job, pack(Cmd.WORK_FAIL, job.handle))

    def _done(self, job: Job) -> None:
        if job.persisted:
            job.persisted = False
            unit = self.unit or self._open_unit()
            unit.dones.append((job.unique, job.function.name))

    def _forget(self, job: Job) -> None:
        """Remove a job that is neither queued nor running any more."""
        if self.jobs.pop(job.handle, None) is None:
            return
        func = job.function
        func.total -= 1
        if job.key is not None and func.by_unique.get(job.key) is job:
            del func.by_unique[job.key]
        for client in job.clients:
            client.listening.pop(job.handle, None)
        job.clients = NO_CLIENTS
        if self.on_idle is not None and not self.jobs:
            self.on_idle()

    def cancel(self, handle: bytes) -> bool:
        job = self.jobs.get(handle)
        if job is None:
            return False
        job.function.stats.cancelled += 1
        self._tell_clients_fail(job)
        self._done(job)
        if not job.ignored:
            self._ignore(job)
        if job.worker is None:
            # Queued: drop it now rather than leaving a phantom in `status`.
            try:
                job.function.queues[job.priority].remove(job)
            except ValueError:
                pass
            self._forget(job)
        return True

    # ---- timers ---------------------------------------------------------------------
    def add_timer(self, deadline: float, kind: int, subject: Any, token: int) -> None:
        """``subject`` is a Job (worker timeout, epoch) or a StoreUnit (TIMER_STORE)."""
        heapq.heappush(self.timers, (deadline, self.next_seq(), kind, subject, token))

    def next_deadline(self) -> Optional[float]:
        return self.timers[0][0] if self.timers else None

    def run_timers(self) -> None:
        now = self.now = time.monotonic()
        timers = self.timers
        kinds = self._timer_kinds
        while timers and timers[0][0] <= now:
            _, _, kind, subject, token = heapq.heappop(timers)
            kinds[kind](subject, token)

    def _worker_timeout(self, job: Job, token: int) -> None:
        if job.worker is not None and job.token == token and job.handle in self.jobs:
            log.warning("Worker timeout reached on job, requeueing: %s %s",
                        job.handle.decode(), job.unique.decode("utf-8", "replace"))
            self.requeue(job)

    def _epoch_due(self, job: Job, token: int) -> None:
        if job.handle in self.jobs and job.worker is None:
            self.wake_workers(job.function)

