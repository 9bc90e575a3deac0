"""The job engine: functions, jobs, workers, queues, wakeups, timers and the queue backend.

Processing thread only.  Handlers (handlers.py, admin.py) call these operations; replies
are appended to ``self.out`` per I/O thread (``Reply`` tuples of messages.py) and taken by
the processor after each round.  It reads no settings: server.py gives it EngineOptions.

Counters for the metrics endpoint are plain ints bumped where the engine already works
(state.FunctionStats, queues.base.QueueStats, ``packets``); the histograms use ``now``, the
monotonic clock read once per round by the processor, so no job pays for a clock call.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import os
import time
from bisect import bisect_left
from typing import Callable, Dict, List, Optional, Set, Tuple

from .log import NOTICE
from .messages import PAUSE_READ, RESUME_READ, Reply
from .protocol.codec import pack
from .protocol.commands import Cmd
from .protocol.commands import COMMANDS
from .queues.base import QueueBackend, QueueStats, StoredJob, one_line
from .state import HIST_BOUNDS, NO_CLIENTS, Ability, Function, Job, Peer

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
    worker_wakeup: int          # -w: sleeping workers NOOPed per job; 0 = all
    job_retries: int            # -j: attempts before a job is dropped; 0 = no limit
    exceptions: bool            # --exceptions: every client gets WORK_EXCEPTION
    verbose: str                # the log level, as the admin "verbose" command shows it
    hashtable_buckets: int      # listing order of "show jobs" (gearmand's hash table)


class Engine:
    def __init__(self, options: EngineOptions, backend: QueueBackend) -> None:
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
        self.timers: List[Tuple[float, int, int, Job, int]] = []
        self._seq = 0
        self.round_robin = options.round_robin
        self.worker_wakeup = options.worker_wakeup
        self.max_retries = options.job_retries
        self.on_idle: Optional[Callable[[], None]] = None   # graceful-stop hook
        #: False for the builtin queue: nothing to store, skip building records.
        self.durable = getattr(backend, "durable", True)
        self.log_accepted = log.isEnabledFor(NOTICE)
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
        out = self.out.get(conn.io_id)
        if out is None:
            out = self.out[conn.io_id] = []
        out.append((conn.id, data))

    def close(self, conn: Peer) -> None:
        """Forget the connection and have its I/O thread close it after pending replies."""
        self.disconnect(conn)
        self.out.setdefault(conn.io_id, []).append((conn.id, None))

    def error(self, conn: Peer, code: bytes, text: bytes) -> None:
        log.warning("GEARMAN_%s:%s", code.decode(), text.decode("utf-8", "replace"))
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
        conn.listening.clear()
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
        if background:
            if conn is not None and self.durable:   # replayed jobs are already stored
                self._store(job)
            job.persisted = True
        if conn is not None:
            func.stats.submitted[background][priority] += 1
        self.jobs[handle] = job
        if key is not None:
            func.by_unique[key] = job
        func.total += 1
        if conn is not None and not background:
            job.clients = [conn]
            conn.listening[handle] = job
        func.queues[priority].append(job)
        if when and when > time.time():
            self.add_timer(time.monotonic() + (when - time.time()), TIMER_EPOCH, job, 0)
        if func.workers:
            self.wake_workers(func)
        if self.log_accepted:
            self._log_accepted(job)
        return job

    def _store(self, job: Job) -> None:
        """The durability point: add + flush before JOB_CREATED, or refuse the job."""
        if job.when and not self.backend.supports_epoch:
            raise EngineError(b"QUEUE_ERROR", b"QUEUE_ERROR")
        stats = self.queue_stats
        try:
            self.backend.add(StoredJob(job.unique, job.function.name, job.data, job.priority,
                                       job.when))
            stats.writes += 1
            self.backend.flush()
            stats.commits += 1
        except Exception as exc:  # any backend failure refuses the job
            log.error("queue add failed for %s: %s", job.handle.decode(), exc)
            self.store_failed(exc)
            job.function.stats.rejected += 1
            raise EngineError(b"QUEUE_ERROR", b"QUEUE_ERROR") from None
        stats.connected = 1

    def store_failed(self, exc: BaseException) -> None:
        """A backend call raised: count it; the store is down until a call works again."""
        stats = self.queue_stats
        stats.errors += 1
        stats.connected = 0
        stats.last_error = one_line(exc)

    def _log_accepted(self, job: Job) -> None:
        if log.isEnabledFor(NOTICE):
            log.log(NOTICE, "accepted,%s,%s,%d", job.function.name.decode("utf-8", "replace"),
                    job.unique.decode("utf-8", "replace"), job.when)

    def attach(self, job: Job, conn: Peer) -> None:
        if job.handle not in conn.listening:
            job.clients = [conn, *job.clients]
            conn.listening[job.handle] = job

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
        conn.sleeping = False
        conn.noop_sent = False
        if self.sleepers:
            self.sleepers.discard(conn)
        abilities = conn.abilities
        now = 0.0
        for idx, ability in enumerate(abilities):
            func = ability.function
            if not (func.queues[0] or func.queues[1] or func.queues[2]):
                continue
            if not now:
                now = time.time()
            job = self._take(func, now)
            if job is None:
                continue
            if self.round_robin:
                abilities.append(abilities.pop(idx))
            job.worker = conn
            job.token += 1
            conn.held[job.handle] = job
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
        return None

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
            try:
                self.backend.done(job.unique, job.function.name)
                self.queue_stats.deletes += 1
            except Exception as exc:
                log.error("queue done failed for %s: %s", job.handle.decode(), exc)
                self.store_failed(exc)

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
    def add_timer(self, deadline: float, kind: int, job: Job, token: int) -> None:
        heapq.heappush(self.timers, (deadline, self.next_seq(), kind, job, token))

    def next_deadline(self) -> Optional[float]:
        return self.timers[0][0] if self.timers else None

    def run_timers(self) -> None:
        now = self.now = time.monotonic()
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, kind, job, token = heapq.heappop(timers)
            if kind == TIMER_WORKER_TIMEOUT:
                if job.worker is not None and job.token == token and job.handle in self.jobs:
                    log.warning("Worker timeout reached on job, requeueing: %s %s",
                                job.handle.decode(), job.unique.decode("utf-8", "replace"))
                    self.requeue(job)
            elif job.handle in self.jobs and job.worker is None:
                self.wake_workers(job.function)

