"""The store stage: the "store" thread, which owns the persistent queue backend while the
server runs, so that the processing thread never waits on it.

Theory of operation.  The processing thread collects the store writes of each processing
round (adds of accepted background jobs, dones of ended stored jobs) into a unit and posts
it here as ``(STORE, unit_id, adds, dones, deadline)`` (messages.py).  This thread blocks on its
inbox; when it wakes it takes EVERY unit queued so far and writes them with one
``backend.commit`` (one transaction, pipeline or batch: the group commit).  While one
commit is in flight the next batch gathers by itself, so batches grow with the load.  The
outcome of each unit goes back to the processing thread's inbox as one
``(STORED, [Outcome])`` message, and only then does it answer the submits.  A unit whose
deadline (``--queue-timeout`` after it was posted) has passed before its commit starts
has had its submits refused already: its adds are not written (its dones are).

Outages.  A failed commit refuses every add of its units (their dones are kept and go
first in the next commit: deletes are idempotent).  The first failure logs ONE line
("... lost ..."); from then on units are refused at once, without touching the store,
until a retry succeeds; retries (``commit([], dones)``, which also reconnects) run with
exponential backoff even when no unit arrives.  The first success logs ONE line
("... restored").  The backend's drivers carry timeouts, so a hung store returns an error
here instead of holding this thread forever; the processing thread refuses a unit that
has not come back within ``--queue-timeout`` by itself (engine.py).

Runs on the thread it starts ("store"); exists only when ``-q`` names a real store.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .messages import OVERDUE, STORE, STORED, Outcome
from .queues.base import Key, QueueBackend, StoredJob, one_line
from .threads import ServiceThread

log = logging.getLogger("gearmand")

#: First retry delay after the store failed (s); it doubles per failed retry ...
RETRY_MIN = 0.1
#: ... up to this.
RETRY_MAX = 2.0

Unit = Tuple[int, int, Sequence[StoredJob], Sequence[Key], float]


class StoreStage:
    """The commit logic of the store thread (no thread of its own: tests drive it)."""

    def __init__(self, backend: QueueBackend, queue_name: str, timeout: float) -> None:
        self.backend = backend
        self.queue_name = queue_name
        self.overdue = OVERDUE.format(queue=queue_name, timeout=timeout)
        #: Why the store is unusable, while it is; None when it works.
        self.down: Optional[str] = None
        self.retry_at = 0.0
        self.backoff = RETRY_MIN
        #: Dones of failed commits: they go first in the next one.
        self.carried: List[Key] = []

    def commit(self, units: Sequence[Unit]) -> List[Outcome]:
        """Write ``units`` as one commit; the outcome of each."""
        adds: List[StoredJob] = []
        dones: List[Key] = self.carried
        self.carried = []
        spans: List[Tuple[int, int, int]] = []
        overdue: List[Outcome] = []
        now = time.monotonic()
        for _, unit_id, unit_adds, unit_dones, deadline in units:
            dones.extend(unit_dones)
            if unit_adds and deadline <= now:
                overdue.append((unit_id, self.overdue, {}))
                continue
            spans.append((unit_id, len(adds), len(unit_adds)))
            adds.extend(unit_adds)
        if self.down is not None and now < self.retry_at:
            self.carried = dones
            return overdue + self._refuse_all(spans)
        try:
            refused = self.backend.commit(adds, dones)
        except Exception as exc:   # any failure refuses the whole unit
            self.carried = dones
            self._failed(one_line(exc))
            return overdue + self._refuse_all(spans)
        if self.down is not None:
            log.error("queue %s: store restored, background jobs are accepted again",
                      self.queue_name)
            self.down = None
            self.backoff = RETRY_MIN
        head = f"{self.queue_name}: "
        return overdue + [(unit_id, None, {i - start: head + refused[i]
                                           for i in range(start, start + count)
                                           if i in refused})
                          for unit_id, start, count in spans]

    def retry(self) -> None:
        """While down: try the store again (the carried dones, or just a reconnect)."""
        self.commit(())

    def wait(self) -> Optional[float]:
        """Seconds until the next retry is due; None when the store works."""
        if self.down is None:
            return None
        return max(0.0, self.retry_at - time.monotonic())

    def _failed(self, reason: str) -> None:
        if self.down is None:
            log.error("queue %s: store lost (%s); background jobs are refused until it is "
                      "back", self.queue_name, reason)
        else:
            self.backoff = min(self.backoff * 2, RETRY_MAX)
        self.down = reason
        self.retry_at = time.monotonic() + self.backoff

    def _refuse_all(self, spans: Sequence[Tuple[int, int, int]]) -> List[Outcome]:
        text = f"{self.queue_name}: store unavailable ({self.down})"
        return [(unit_id, text, {}) for unit_id, _, _ in spans]


class StoreThread(ServiceThread):
    """The "store" thread: drains ``inbox`` (STORE, STOP), commits, answers through
    ``reply`` (the processing thread's inbox ``put``)."""

    def __init__(self, backend: QueueBackend, queue_name: str, timeout: float,
                 reply: Callable[[Tuple[Any, ...]], None],
                 on_crash: Callable[[BaseException], None]) -> None:
        super().__init__("store", self._loop, on_crash)
        self.stage = StoreStage(backend, queue_name, timeout)
        self.inbox: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.reply = reply

    def _loop(self) -> None:
        get = self.inbox.get
        get_nowait = self.inbox.get_nowait
        stage = self.stage
        while True:
            try:
                msg = get(timeout=stage.wait())
            except queue.Empty:
                stage.retry()
                continue
            units: List[Unit] = []
            stopping = False
            while True:
                if msg[0] == STORE:
                    units.append(msg)
                else:                        # STOP: commit what came before it, return
                    stopping = True
                    break
                try:
                    msg = get_nowait()
                except queue.Empty:
                    break
            if units:
                self.reply((STORED, stage.commit(units)))
            if stopping:
                return
