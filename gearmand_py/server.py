"""The server: wires listener, I/O loops and the processor for a ``-t`` value, runs and stops.

Threads (what /proc/PID/task shows):
  -t 0      1 thread: "main" runs one loop that accepts, does I/O and processes;
  -t 1      2 threads: "main" accepts; "io-1" does I/O and processes inline;
  -t N>=2   N+2 threads: "main" accepts; "io-1".."io-N" do I/O; "proc" processes;
plus, whatever -t, "store" (store.py) when -q names a real store (not builtin): it owns the
queue backend while the server runs.  The processing thread's inbox is created first, so
the store thread, the engine and the loops are each built whole.
``run()`` is called on the main thread and returns the exit status.  ``post(fn)`` may be
called from signal handlers: it only enqueues fn for the main thread.  What crosses threads,
and how, is described in messages.py; this module only wires the pieces and stops them in
order.
"""

from __future__ import annotations

import gc
import itertools
import logging
import queue
import threading
from typing import Any, Callable, List, Optional, Sequence

from . import affinity, compat, malloc, queues
from .engine import Engine, EngineOptions, default_handle_prefix
from .errors import QueueError
from .iothread import IOLoop
from .listener import Listener, Listening, close_all, split_graceful
from .mailbox import Mailbox
from .messages import CALL, STOP
from .processor import Processor, ProcessorThread
from .queues.base import StoredJob
from .settings import Settings
from .store import StoreThread
from .threads import ServiceThread

log = logging.getLogger("gearmand")

#: How long stop() waits for each thread to finish.
JOIN_TIMEOUT = 5.0
#: Cyclic-GC thresholds.  The engine frees jobs by reference counting; with CPython's
#: default (700, 10, 10) the collector re-scans every queued job over and over, which cost
#: ~40% of background-submit throughput with 100k jobs queued (docs/performance.md).
GC_THRESHOLDS = (50_000, 50, 100)
#: An I/O thread closes a connection whose unsent output exceeds this (at least)...
MIN_MAX_OUTPUT = 64 * 1024 * 1024
#: ... or this many of the largest packets accepted, whichever is more.
MAX_OUTPUT_PACKETS = 4
#: With the metrics port on, each I/O thread reports its byte and connection totals to the
#: processing thread this often (seconds).
STATS_INTERVAL = 1.0


def engine_options(settings: Settings) -> EngineOptions:
    """The few options the job engine uses."""
    mode = compat.MODES[settings.compat]
    return EngineOptions(
        handle_prefix=settings.job_handle_prefix or default_handle_prefix(),
        round_robin=settings.round_robin,
        priority_global=settings.priority_scope == "global",
        worker_wakeup=settings.worker_wakeup,
        job_retries=settings.job_retries, exceptions=settings.exceptions,
        verbose=settings.verbose, version=mode.version,
        error_log_level=mode.error_log_level, hashtable_buckets=settings.hashtable_buckets,
        queue_name=settings.queue_type.lower(), queue_timeout=float(settings.queue_timeout))


class Server:
    """Wires the threads for a ``-t`` value (start), runs them (run) and stops them in
    order (stop): the processing thread first, then the I/O threads."""

    def __init__(self, settings: Settings, listening: Sequence[Listening]) -> None:
        self.settings = settings
        self.listening = list(listening)
        self.exit_code = 0
        self.loops: List[IOLoop] = []
        self.listener: Optional[Listener] = None     # -t >= 1
        self.threads: List[threading.Thread] = []
        self.proc_thread: Optional[ProcessorThread] = None
        self.store_thread: Optional[StoreThread] = None    # -q other than builtin
        #: -t 0/1: the inline processor's Mailbox; closed here once the store thread,
        #: which answers into it, has stopped.
        self.mailbox: Optional[Mailbox] = None
        self.engine: Optional[Engine] = None
        self._ids = itertools.count(1)

    # ---- start-up (main thread, after daemonising) ------------------------------------
    def start(self) -> None:
        settings = self.settings
        malloc.tune()                    # before any I/O thread exists
        backend = queues.create(settings)
        try:
            backend.open()
        except Exception as exc:
            raise QueueError(f"Error while initializing the queue : {settings.queue_type}"
                             f" ({exc})") from None
        threads = max(settings.threads, 0)
        # The processing thread's inbox: the inline loop's Mailbox, or proc's SimpleQueue.
        mailbox = self.mailbox = Mailbox() if threads < 2 else None
        inbox: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        if backend.durable:
            self.store_thread = StoreThread(
                backend, settings.queue_type.lower(), float(settings.queue_timeout),
                mailbox.put if mailbox is not None else inbox.put, self._crashed)
        engine = self.engine = Engine(
            engine_options(settings), backend,
            self.store_thread.inbox.put if self.store_thread is not None else None)
        engine.queue_stats.backend = settings.queue_type
        self._replay(engine)             # before any thread runs: the backend is ours
        gc.collect()
        gc.freeze()                      # start-up objects are never garbage
        gc.set_threshold(*GC_THRESHOLDS)
        max_output = max(MAX_OUTPUT_PACKETS * settings.max_packet_size, MIN_MAX_OUTPUT)
        next_id = self._next_id
        stall = float(settings.client_stall_timeout)
        stats = STATS_INTERVAL if settings.metrics_port is not None else 0.0
        if threads == 0:
            self.loops = [IOLoop(0, max_output, processor=Processor(engine),
                                 listening=self.listening, next_conn_id=next_id,
                                 stall_timeout=stall, mailbox=mailbox,
                                 stats_interval=stats)]
        else:
            if threads == 1:
                self.loops = [IOLoop(1, max_output, processor=Processor(engine),
                                     stall_timeout=stall, mailbox=mailbox,
                                 stats_interval=stats)]
            else:
                self.loops = [IOLoop(i, max_output, post=inbox.put, stall_timeout=stall,
                                     stats_interval=stats)
                              for i in range(1, threads + 1)]
                self.proc_thread = ProcessorThread(
                    Processor(engine), inbox,
                    {loop.io_id: loop.mailbox for loop in self.loops}, self._crashed)
                self.threads.append(self.proc_thread)
            pinner = affinity.CpuPinner.create(settings.cpu_affinity, threads)
            if pinner is not None:
                pinner.pin()             # before the threads start: they inherit the CPU
            self.listener = Listener(self.listening, [loop.mailbox for loop in self.loops],
                                     next_id, pinner.tick if pinner is not None else None,
                                     affinity.TICK_INTERVAL)
            self.threads.extend(ServiceThread(f"io-{loop.io_id}", loop.run, self._crashed)
                                for loop in self.loops)
        if self.store_thread is not None:
            self.store_thread.start()
        for thread in self.threads:
            thread.start()

    def _replay(self, engine: Engine) -> None:
        """Submit the stored jobs (main thread, before any other thread starts: replay is
        complete before the first client is served)."""
        count = 0
        try:
            for stored in engine.backend.replay():
                engine.submit(None, stored.function, stored.unique, stored.data,
                              stored.priority, True, stored.when)
                count += 1
        except Exception as exc:
            raise QueueError(f"failed to reload queue: {exc}") from None
        engine.queue_stats.replayed = count
        if count:
            log.info("replayed %d jobs from the %s queue", count, self.settings.queue_type)

    def _next_id(self) -> int:
        return next(self._ids)

    # ---- running (main thread) ---------------------------------------------------------
    def run(self) -> int:
        if self.listener is None:
            self.loops[0].run()
        else:
            self.listener.run()
        self._close_all()
        return self.exit_code

    def post(self, fn: Callable[[], None]) -> None:
        """Run fn on the main thread soon (safe from signal handlers)."""
        if self.listener is not None:
            self.listener.mailbox.put((CALL, fn))
        elif self.loops:
            self.loops[0].mailbox.put((CALL, fn))

    # ---- stopping (main thread) --------------------------------------------------------
    def stop(self, graceful: bool = False) -> None:
        if graceful:
            self._close_listening(graceful=True)
            self._on_processor(self._arm_graceful)
            return
        if self.listener is not None:
            self.listener.running = False
        else:
            self.loops[0].running = False

    def _arm_graceful(self) -> None:
        """Processing thread: exit once no job remains."""
        engine = self.engine
        assert engine is not None
        engine.on_idle = lambda: self.post(self.stop)
        if not engine.jobs:
            self.post(self.stop)

    def _on_processor(self, fn: Callable[[], None]) -> None:
        if self.proc_thread is not None:
            self.proc_thread.inbox.put((CALL, fn))
        elif self.listener is not None:
            self.loops[0].mailbox.put((CALL, fn))
        else:
            fn()

    def _close_listening(self, graceful: bool = False) -> None:
        """Stop accepting: every port, or at a graceful stop those not Port.stays_open."""
        if self.listener is not None:
            self.listener.close_listening(graceful)
        elif self.loops:
            loop = self.loops[0]
            closing, loop.listening = split_graceful(loop.listening, graceful)
            for lsock, _ in closing:
                loop.unregister(lsock.fileno())
            close_all(closing)

    def _join(self, thread: threading.Thread) -> None:
        thread.join(JOIN_TIMEOUT)
        if thread.is_alive():
            log.error("thread %s did not stop in %.0fs", thread.name, JOIN_TIMEOUT)
            self.exit_code = 1

    def _crashed(self, exc: BaseException) -> None:
        log.critical("thread %s died: %r; stopping the server", threading.current_thread().name,
                     exc, exc_info=exc)
        self.exit_code = 1
        self.post(self.stop)

    def _close_all(self) -> None:
        self._close_listening()
        # The processing thread stops first and hands its last replies to the I/O threads
        # (a graceful stop fires from inside the round whose WORK_COMPLETE is still to be
        # delivered); each I/O thread's inbox is FIFO, so those replies are sent before it
        # reads its own stop message.
        if self.proc_thread is not None:
            self.proc_thread.inbox.put((STOP,))
            self._join(self.proc_thread)
        if self.listener is not None:
            for loop in self.loops:
                loop.mailbox.put((STOP,))
        for thread in self.threads:
            if thread is not self.proc_thread:
                self._join(thread)
        # Nothing posts store units any more: the store thread commits what it holds
        # (those submits are never answered; the jobs replay at the next start) and ends.
        if self.store_thread is not None:
            self.store_thread.inbox.put((STOP,))
            self._join(self.store_thread)
        if self.mailbox is not None:
            self.mailbox.close()
        if self.engine is not None:
            self._save_on_shutdown(self.engine)
            try:
                self.engine.backend.close()
            except Exception as exc:
                log.error("closing the queue failed: %s", exc)
        if self.listener is not None:
            self.listener.mailbox.close()
        log.info("Shutdown complete")

    def _save_on_shutdown(self, engine: Engine) -> None:
        """--store-queue-on-shutdown (sqlite): every thread has stopped, so the backend is
        ours; hand it the background jobs still in memory, as gearmand does at stop."""
        save = getattr(engine.backend, "save_on_shutdown", None)
        if save is None or not self.settings.store_queue_on_shutdown:
            return
        try:
            save(StoredJob(j.unique, j.function.name, j.data, j.priority, j.when)
                 for j in list(engine.jobs.values()) if j.persisted)
        except Exception as exc:
            log.error("storing the queue on shutdown failed: %s", exc)
            self.exit_code = 1
