"""The processing side: runs I/O threads' event rounds against the job engine.

Theory of operation.  An I/O thread hands over one ``Round`` per selector round (a list of
``(conn_id, events)``, see messages.py).  ``Processor.handle`` runs it against the Engine,
which owns every job table and collects its replies per I/O thread; ``finish_round`` runs
the timers that fell due (CAN_DO_TIMEOUT, epoch jobs) and hands back every reply of the
round, grouped by I/O thread, so each thread gets them in one message and one wake byte;
it also posts the round's store unit, if any, to the store thread (engine.py, "store
units"), whose outcome comes back as a STORED message to ``stored``.

Metrics: the processor counts packets by command (one list increment each), stamps every
round with the monotonic clock (engine.now, for the wait and run-time histograms), keeps
each I/O thread's latest IO_STATS report and answers SNAPSHOT events with a
snapshot.Snapshot, which the asking I/O thread renders.

With ``-t N >= 2`` a ProcessorThread runs this on its own thread ("proc"), fed through a
``queue.SimpleQueue`` and answering through the I/O threads' mailboxes; with ``-t 0`` and
``-t 1`` the I/O loop calls the Processor inline.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import admin, snapshot
from .engine import Engine
from .handlers import HANDLERS, REQUESTS
from .mailbox import Mailbox
from .messages import (CALL, CLOSED, CONGESTED, CONNECT, CREDIT, CREDIT_MIN, DRAINED, EVENTS,
                       IO_STATS, PROTOCOL_ERROR, REPLIES, SNAPSHOT, STOP, STORED, TEXT,
                       Outcome, Reply, Round)
from .protocol.commands import NAMES
from .threads import ServiceThread

log = logging.getLogger("gearmand")


class Processor:
    """Engine + request dispatch.  Runs on exactly one thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: The latest IO_STATS report of each I/O thread, by io_id.
        self.io_stats: Dict[int, snapshot.IoStats] = {}
        self._pseudo: Dict[int, Callable[[int, int, Tuple[Any, ...]], None]] = {
            CONNECT: self._connect,
            CLOSED: self._closed,
            CONGESTED: self._congested,
            DRAINED: self._drained,
            PROTOCOL_ERROR: self._protocol_error,
            TEXT: self._text,
            SNAPSHOT: self._snapshot,
            IO_STATS: self._io_stats,
        }

    def handle(self, io_id: int, rnd: Round) -> None:
        engine = self.engine
        engine.now = time.monotonic()
        conns = engine.conns
        packets = engine.packets
        pseudo = self._pseudo
        debug = log.isEnabledFor(logging.DEBUG)
        for conn_id, events in rnd:
            cmd = 0
            try:
                for cmd, is_req, args in events:
                    if cmd > 0:
                        conn = conns.get(conn_id)
                        if conn is None:
                            break
                        packets[cmd] += 1
                        if debug:
                            log.debug("%s from %s:%d", NAMES.get(cmd, cmd), conn.ip, conn.port)
                        if not is_req and cmd in REQUESTS:
                            engine.error(conn, b"INVALID_MAGIC", b"Request magic expected")
                        else:
                            HANDLERS[cmd](engine, conn, args)
                    else:
                        pseudo[cmd](io_id, conn_id, args)
            except Exception:  # a bug must cost one connection, not the server
                log.exception("internal error handling command %s; closing connection",
                              NAMES.get(cmd, cmd))
                conn = conns.get(conn_id)
                if conn is not None:
                    engine.close(conn)

    def _connect(self, io_id: int, conn_id: int, args: Tuple[Any, ...]) -> None:
        self.engine.connect(conn_id, io_id, *args)

    def _closed(self, io_id: int, conn_id: int, args: Tuple[Any, ...]) -> None:
        peer = self.engine.conns.get(conn_id)
        if peer is not None:
            self.engine.disconnect(peer)

    def _congested(self, io_id: int, conn_id: int, args: Tuple[Any, ...]) -> None:
        peer = self.engine.conns.get(conn_id)
        if peer is not None:
            self.engine.congested(peer)

    def _drained(self, io_id: int, conn_id: int, args: Tuple[Any, ...]) -> None:
        peer = self.engine.conns.get(conn_id)
        if peer is not None:
            self.engine.drained(peer)

    def _protocol_error(self, io_id: int, conn_id: int, args: Tuple[Any, ...]) -> None:
        self.engine.protocol_errors += 1
        peer = self.engine.conns.get(conn_id)
        if peer is None:
            return
        log.warning("protocol failure, closing connection %s:%d: %s", peer.ip, peer.port,
                    args[0].decode("utf-8", "replace"))
        self.engine.close(peer)

    def _text(self, io_id: int, conn_id: int, args: Tuple[Any, ...]) -> None:
        peer = self.engine.conns.get(conn_id)
        if peer is not None:
            peer.admin = True
            admin.run(self.engine, peer, args)

    def _snapshot(self, io_id: int, conn_id: int, args: Tuple[Any, ...]) -> None:
        """A metrics connection asks for a view (messages.VIEW_*): answer with a Snapshot."""
        snap = snapshot.take(self.engine, self.io_stats, args[0])
        self.engine.out.setdefault(io_id, []).append((conn_id, snap))

    def _io_stats(self, io_id: int, conn_id: int, args: Tuple[Any, ...]) -> None:
        self.io_stats[io_id] = snapshot.IoStats(*args)

    def timeout(self) -> Optional[float]:
        """Seconds until the next timer, for the owner's wait call (None = no timer)."""
        deadline = self.engine.next_deadline()
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    def stored(self, outcomes: List[Outcome]) -> None:
        """STORED: the store thread's outcome of some units (their replies go out with
        this round's)."""
        self.engine.stored(outcomes)

    def finish_round(self) -> Dict[int, List[Reply]]:
        """Run the timers that are due; post the round's store unit; take the round's
        replies, keyed by I/O thread."""
        engine = self.engine
        if engine.timers and engine.timers[0][0] <= time.monotonic():
            engine.run_timers()
        if engine.unit is not None:
            engine.post_unit()
        out = engine.out
        if out:
            engine.out = {}
        return out


class ProcessorThread(ServiceThread):
    """The "proc" thread of ``-t N >= 2``: owns the Processor and drains its inbox.

    ``inbox`` receives EVENTS, CALL, STORED and STOP messages; replies go to
    ``outboxes[io_id]``.
    """

    def __init__(self, processor: Processor, inbox: "queue.SimpleQueue[Any]",
                 outboxes: Mapping[int, Mailbox],
                 on_crash: Callable[[BaseException], None]) -> None:
        super().__init__("proc", self._loop, on_crash)
        self.processor = processor
        self.inbox = inbox
        self.outboxes = outboxes
        self.running = True
        #: Input bytes of each I/O thread's handled EVENTS not yet credited back.
        self.credit: Dict[int, int] = {}
        self._on_message: Dict[int, Callable[[Tuple[Any, ...]], None]] = {
            CALL: self._on_call,
            STORED: self._on_stored,
            STOP: self._on_stop,
        }

    def _on_call(self, msg: Tuple[Any, ...]) -> None:
        msg[1]()

    def _on_stored(self, msg: Tuple[Any, ...]) -> None:
        self.processor.stored(msg[1])

    def _on_stop(self, msg: Tuple[Any, ...]) -> None:
        self.running = False

    def _send_replies(self) -> None:
        outboxes = self.outboxes
        credit = self.credit
        for io_id, replies in self.processor.finish_round().items():
            outboxes[io_id].put((REPLIES, replies, credit.pop(io_id, 0)))
        if credit:
            for io_id, owed in list(credit.items()):
                if owed >= CREDIT_MIN:
                    del credit[io_id]
                    outboxes[io_id].put((CREDIT, owed))

    def _loop(self) -> None:
        proc = self.processor
        get = self.inbox.get
        get_nowait = self.inbox.get_nowait
        handle = proc.handle
        on_message = self._on_message
        credit = self.credit
        while True:
            try:
                msg = get(timeout=proc.timeout())
            except queue.Empty:
                msg = None
            while msg is not None:
                kind = msg[0]
                if kind == EVENTS:
                    io_id = msg[1]
                    handle(io_id, msg[2])
                    credit[io_id] = credit.get(io_id, 0) + msg[3]
                else:
                    on_message[kind](msg)
                    if not self.running:        # STOP
                        self._send_replies()
                        return
                try:
                    msg = get_nowait()
                except queue.Empty:
                    msg = None
            self._send_replies()
