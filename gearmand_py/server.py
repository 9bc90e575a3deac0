"""The server: wires listener, I/O loops and the processor for a ``-t`` value, runs and stops.

Threads (what /proc/PID/task shows):
  -t 0      1 thread: "main" runs one loop that accepts, does I/O and processes;
  -t 1      2 threads: "main" accepts; "io-1" does I/O and processes inline;
  -t N>=2   N+2 threads: "main" accepts; "io-1".."io-N" do I/O; "proc" processes.
``run()`` is called on the main thread and returns the exit status.  ``post(fn)`` may be
called from signal handlers: it only enqueues fn for the main thread.
"""

from __future__ import annotations

import gc
import itertools
import logging
import selectors
import socket
import ssl
import threading
from typing import Callable, List, Optional, Sequence

from . import malloc, queues
from .engine import Engine
from .errors import QueueError
from .iothread import MSG_ADD, MSG_CALL, MSG_STOP, IOLoop
from .listener import accept_all
from .processor import STOP, Processor, ProcessorThread
from .queues.base import StoredJob
from .settings import Settings
from .threads import ServiceThread
from .wakeup import Mailbox

log = logging.getLogger("gearmand")

#: How long stop() waits for each thread to finish.
JOIN_TIMEOUT = 5.0
#: Cyclic-GC thresholds.  The engine frees jobs by reference counting; with CPython's
#: default (700, 10, 10) the collector re-scans every queued job over and over, which cost
#: ~40% of background-submit throughput with 100k jobs queued (tests/bench: docs/performance.md).
GC_THRESHOLDS = (50_000, 50, 100)


class Server:
    def __init__(self, settings: Settings, sockets: Sequence[socket.socket],
                 http_sockets: Sequence[socket.socket] = (),
                 tls: Optional[ssl.SSLContext] = None) -> None:
        self.settings = settings
        self.tls = tls
        self.sockets = list(sockets)
        self.http_sockets = list(http_sockets)
        self.exit_code = 0
        self.loops: List[IOLoop] = []
        self.threads: List[threading.Thread] = []
        self.proc_thread: Optional[ProcessorThread] = None
        self.processor: Optional[Processor] = None
        self.engine: Optional[Engine] = None
        self._ids = itertools.count(1)
        self._rr = 0
        self._mailbox: Optional[Mailbox] = None   # main loop's inbox (-t >= 1)
        self._running = False
        self._stopping = False

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
        engine = self.engine = Engine(settings, backend)
        self._replay(engine)
        gc.collect()
        gc.freeze()                      # start-up objects are never garbage
        gc.set_threshold(*GC_THRESHOLDS)
        threads = max(settings.threads, 0)
        max_packet = settings.max_packet_size
        if threads == 0:
            loop = IOLoop(0, max_packet, listeners=self.sockets,
                          http_listeners=self.http_sockets, next_conn_id=self._next_id,
                          tls=self.tls)
            self.processor = Processor(engine, loop.deliver_inline)
            loop.processor = self.processor
            self.loops = [loop]
            return
        self._mailbox = Mailbox()
        if threads == 1:
            loop = IOLoop(1, max_packet, tls=self.tls)
            self.processor = Processor(engine, loop.deliver_inline)
            loop.processor = self.processor
            self.loops = [loop]
        else:
            self.loops = [IOLoop(i, max_packet, tls=self.tls) for i in range(1, threads + 1)]
            loops = self.loops
            self.processor = Processor(engine, lambda io_id, items: loops[io_id - 1].deliver(
                io_id, items))
            self.proc_thread = ProcessorThread(self.processor, self._crashed)
            post = self.proc_thread.post
            for loop in self.loops:
                loop.post = lambda io_id, batch, _post=post: _post((io_id, batch))
            self.threads.append(self.proc_thread)
        self.threads.extend(ServiceThread(f"io-{loop.io_id}", loop.run, self._crashed)
                            for loop in self.loops)
        for thread in self.threads:
            thread.start()

    def _replay(self, engine: Engine) -> None:
        count = 0
        try:
            for stored in engine.backend.replay():
                engine.submit(None, stored.function, stored.unique, stored.data,
                              stored.priority, True, stored.when)
                count += 1
        except Exception as exc:
            raise QueueError(f"failed to reload queue: {exc}") from None
        if count:
            log.info("replayed %d jobs from the %s queue", count, self.settings.queue_type)

    def _next_id(self) -> int:
        return next(self._ids)

    # ---- running (main thread) ---------------------------------------------------------
    def run(self) -> int:
        self._running = True
        if not self.threads:
            self.loops[0].run()
        else:
            self._listen()
        self._close_all()
        return self.exit_code

    def _listen(self) -> None:
        assert self._mailbox is not None
        sel = selectors.DefaultSelector()
        sel.register(self._mailbox.fileno(), selectors.EVENT_READ, None)
        for lsock in self.sockets:
            sel.register(lsock, selectors.EVENT_READ, (lsock, False))
        for lsock in self.http_sockets:
            sel.register(lsock, selectors.EVENT_READ, (lsock, True))
        loops = self.loops[::-1]          # deal N, N-1, ..., 1 like gearmand
        n = len(loops)
        while self._running:
            for key, _ in sel.select():
                if key.data is None:
                    for fn in self._mailbox.drain():
                        fn()
                    if not self._running:
                        break
                    if not self.sockets and not self.http_sockets:
                        for k in list(sel.get_map().values()):
                            if k.data is not None:
                                sel.unregister(k.fileobj)
                    continue
                lsock, http = key.data
                for sock, addr in accept_all(lsock):
                    loop = loops[self._rr % n]
                    self._rr += 1
                    loop.mailbox.put((MSG_ADD, self._next_id(), sock, addr, http))
        sel.close()

    def post(self, fn: Callable[[], None]) -> None:
        """Run fn on the main thread soon (safe from signal handlers)."""
        if self._mailbox is not None:
            self._mailbox.put(fn)
        elif self.loops:
            self.loops[0].mailbox.put((MSG_CALL, fn))

    # ---- stopping (main thread) --------------------------------------------------------
    def stop(self, graceful: bool = False) -> None:
        if graceful:
            self._close_listeners()
            self._on_processor(self._arm_graceful)
            return
        self._running = False
        if not self.threads:
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
            self.proc_thread.post(fn)
        elif self.threads:
            self.loops[0].mailbox.put((MSG_CALL, fn))
        else:
            fn()

    def _close_listeners(self) -> None:
        if not self.threads and self.loops:
            loop = self.loops[0]
            for lsock in loop.listeners:
                loop.unregister(lsock.fileno())
            loop.listeners = []
        for lsock in self.sockets + self.http_sockets:
            try:
                lsock.close()
            except OSError:
                pass
        self.sockets = []
        self.http_sockets = []

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
        self._close_listeners()
        # The processing thread stops first and hands its last replies to the I/O threads
        # (a graceful stop fires from inside the batch whose WORK_COMPLETE is still to be
        # delivered); each I/O thread's inbox is FIFO, so those replies are sent before it
        # reads its own stop message.
        if self.proc_thread is not None:
            self.proc_thread.post(STOP)
            self._join(self.proc_thread)
        for loop in self.loops:
            if self.threads:
                loop.mailbox.put((MSG_STOP,))
        for thread in self.threads:
            if thread is not self.proc_thread:
                self._join(thread)
        if self.engine is not None:
            # --store-queue-on-shutdown (sqlite): every thread has stopped, so the backend
            # is ours; hand it the background jobs still in memory, as gearmand does at stop.
            save = getattr(self.engine.backend, "save_on_shutdown", None)
            if save is not None and self.settings.store_queue_on_shutdown:
                try:
                    save(StoredJob(j.unique, j.function.name, j.data, j.priority, j.when)
                         for j in list(self.engine.jobs.values()) if j.persisted)
                except Exception as exc:
                    log.error("storing the queue on shutdown failed: %s", exc)
                    self.exit_code = 1
            try:
                self.engine.backend.close()
            except Exception as exc:
                log.error("closing the queue failed: %s", exc)
        if self._mailbox is not None:
            self._mailbox.close()
        log.info("Shutdown complete")

