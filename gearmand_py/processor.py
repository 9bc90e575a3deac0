"""The processing side: dispatches parsed requests to the job engine and ships replies.

Theory of operation.  I/O threads post ``(io_id, events)`` batches, one per selector round;
a batch is a list of ``(conn_id, events)`` with events
``(cmd, is_request_magic, args)`` as the codec makes them.  ``Processor.handle`` runs a batch
against the Engine (which owns every job table), and ``flush`` hands each I/O thread all of
its replies from the batch in one message - one wake byte per thread per batch.  Timers
(CAN_DO_TIMEOUT, epoch jobs) come from the engine's deadline heap, used as the wait timeout.

With ``-t N >= 2`` a ProcessorThread runs this on its own thread ("proc"), fed through a
``queue.SimpleQueue``; with ``-t 0`` and ``-t 1`` the I/O loop calls it inline.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import admin
from .engine import Engine, Output
from .handlers import HANDLERS, REQUESTS
from .protocol.codec import PROTOCOL_ERROR, TEXT
from .protocol.commands import NAMES
from .state import Conn
from .threads import ServiceThread

log = logging.getLogger("gearmand")

#: Pseudo-commands posted by I/O threads alongside parsed requests.
CONNECT = -2      # args: (fd, ip, port)
CLOSED = -3       # peer closed or the I/O thread dropped the connection

#: What I/O threads post: per connection, the events its bytes decoded to.
Batch = Tuple[int, List[Tuple[int, bool, Tuple[Any, ...]]]]
Deliver = Callable[[int, List[Output]], None]


class Processor:
    """Engine + request dispatch.  Runs on exactly one thread."""

    def __init__(self, engine: Engine, deliver: Deliver) -> None:
        self.engine = engine
        self.deliver = deliver
        self._special: Dict[int, Callable[[int, int, Tuple[Any, ...]], None]] = {
            CONNECT: self._connect,
            CLOSED: self._closed,
            PROTOCOL_ERROR: self._protocol_error,
            TEXT: self._text,
        }

    def handle(self, io_id: int, batch: Sequence[Batch]) -> None:
        engine = self.engine
        conns = engine.conns
        special = self._special
        debug = log.isEnabledFor(logging.DEBUG)
        for conn_id, events in batch:
            cmd = 0
            try:
                for cmd, is_req, args in events:
                    if cmd > 0:
                        conn = conns.get(conn_id)
                        if conn is None:
                            break
                        if debug:
                            log.debug("%s from %s:%d", NAMES.get(cmd, cmd), conn.ip, conn.port)
                        if not is_req and cmd in REQUESTS:
                            engine.error(conn, b"INVALID_MAGIC", b"Request magic expected")
                        else:
                            HANDLERS[cmd](engine, conn, args)
                    else:
                        special[cmd](io_id, conn_id, args)
            except Exception:  # a bug must cost one connection, not the server
                log.exception("internal error handling command %s; closing connection",
                              NAMES.get(cmd, cmd))
                conn = conns.get(conn_id)
                if conn is not None:
                    engine.close(conn)

    def _connect(self, io_id: int, conn_id: int, args: Tuple[Any, ...]) -> None:
        self.engine.connect(conn_id, io_id, *args)

    def _closed(self, io_id: int, conn_id: int, args: Tuple[Any, ...]) -> None:
        conn = self.engine.conns.get(conn_id)
        if conn is not None:
            self.engine.disconnect(conn)

    def _protocol_error(self, io_id: int, conn_id: int, args: Tuple[Any, ...]) -> None:
        conn = self.engine.conns.get(conn_id)
        if conn is None:
            return
        log.warning("protocol failure, closing connection %s:%d: %s", conn.ip, conn.port,
                    args[0].decode("utf-8", "replace"))
        self.engine.close(conn)

    def _text(self, io_id: int, conn_id: int, args: Tuple[Any, ...]) -> None:
        conn: Optional[Conn] = self.engine.conns.get(conn_id)
        if conn is not None:
            admin.run(self.engine, conn, args)

    def run_timers(self) -> None:
        engine = self.engine
        if engine.timers and engine.timers[0][0] <= time.monotonic():
            engine.run_timers()

    def timeout(self) -> Optional[float]:
        """Seconds until the next timer, for the owner's wait call (None = no timer)."""
        deadline = self.engine.next_deadline()
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    def flush(self) -> None:
        out = self.engine.out
        if out:
            self.engine.out = {}
            deliver = self.deliver
            for io_id, items in out.items():
                deliver(io_id, items)


STOP = object()


class ProcessorThread(ServiceThread):
    """The "proc" thread of ``-t N >= 2``: owns the Processor and drains its inbox."""

    def __init__(self, processor: Processor, on_crash: Callable[[BaseException], None]) -> None:
        super().__init__("proc", self._loop, on_crash)
        self.processor = processor
        self.inbox: "queue.SimpleQueue[Any]" = queue.SimpleQueue()

    def post(self, item: Any) -> None:
        self.inbox.put(item)

    def _loop(self) -> None:
        proc = self.processor
        inbox = self.inbox
        get = inbox.get
        get_nowait = inbox.get_nowait
        handle = proc.handle
        while True:
            try:
                item = get(timeout=proc.timeout())
            except queue.Empty:
                item = None
            while item is not None:
                if item is STOP:
                    proc.flush()
                    return
                if callable(item):
                    item()
                else:
                    handle(item[0], item[1])
                try:
                    item = get_nowait()
                except queue.Empty:
                    item = None
            proc.run_timers()
            proc.flush()
