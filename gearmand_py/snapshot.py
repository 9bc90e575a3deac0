"""Snapshots: the engine's counters and state copied into plain tuples for the metrics port.

``take`` runs on the processing thread when a SNAPSHOT event arrives (messages.py): it
copies what ``status``, ``prioritystatus`` and ``workers`` show, the per-function counters
(state.FunctionStats), the queue's (queues.base.QueueStats) and the I/O threads' latest
IO_STATS reports into the NamedTuples below, and the processor sends the result to the I/O
thread that asked.  There protocol/metrics.py renders it (Prometheus text, JSON): the
processing thread only copies integers, once per scrape.  Nothing here is shared: a
Snapshot is immutable and changes hands once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, NamedTuple, Tuple

from . import COMPAT_VERSION
from .messages import VIEW_HEALTH, VIEW_STATUS
from .protocol.commands import NAMES

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .state import Function, Peer

#: Connection kinds as the processing thread classifies its peers.
PEER_KINDS = ("client", "worker", "admin")


class IoStats(NamedTuple):
    """One I/O thread's totals since start (the args of its IO_STATS event)."""

    bytes_in: int
    bytes_out: int
    open: Tuple[Tuple[str, int], ...]        # (Port.name, connections open now)
    accepted: Tuple[Tuple[str, int], ...]    # (Port.name, connections adopted since start)


class FunctionRow(NamedTuple):
    name: str                       # the function name, undecodable bytes backslash-escaped
    total: int                      # queued + running, as ``status``
    running: int
    workers: int                    # registrations, as ``status``
    queued: Tuple[int, int, int]    # by priority (high, normal, low), as ``prioritystatus``
    submitted: Tuple[Tuple[int, ...], Tuple[int, ...]]   # [background][priority]
    coalesced: int
    rejected: int
    results: Tuple[int, int, int]   # by state.RESULT_*
    retried: int
    dropped: int
    cancelled: int
    wait: Tuple[int, ...]           # histogram slots (state.HIST_*)
    wait_sum: float
    run: Tuple[int, ...]
    run_sum: float


class WorkerRow(NamedTuple):
    fd: int
    ip: str
    client_id: str
    functions: Tuple[str, ...]      # oldest registration first
    sleeping: bool
    running: int                    # jobs it holds


class StoreRow(NamedTuple):
    backend: str
    durable: bool
    writes: int
    commits: int
    deletes: int
    errors: int
    connected: int
    replayed: int
    last_error: str


class Snapshot(NamedTuple):
    view: int                       # messages.VIEW_*
    healthy: bool
    reason: str                     # why not healthy ("" when healthy)
    version: str                    # what the admin ``version`` command answers
    started: float                  # wall-clock start of the server
    jobs: int                       # jobs in memory
    functions: Tuple[FunctionRow, ...]
    connections: Tuple[Tuple[str, int], ...]   # (PEER_KINDS entry, count)
    sleeping: int                   # workers asleep after PRE_SLEEP
    packets: Tuple[Tuple[str, int], ...]       # (command name, packets handled), non-zero
    protocol_errors: int
    io: Tuple[IoStats, ...]         # one per I/O thread that has reported
    store: StoreRow
    workers: Tuple[WorkerRow, ...]  # VIEW_STATUS only


def _text(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


def _function(f: "Function") -> FunctionRow:
    s = f.stats
    q = f.queues
    return FunctionRow(_text(f.name), f.total, f.running, len(f.workers),
                       (len(q[0]), len(q[1]), len(q[2])),
                       (tuple(s.submitted[0]), tuple(s.submitted[1])), s.coalesced,
                       s.rejected, (s.results[0], s.results[1], s.results[2]), s.retried,
                       s.dropped, s.cancelled, tuple(s.wait), s.wait_sum, tuple(s.run),
                       s.run_sum)


def _kind(peer: "Peer") -> int:
    """Index into PEER_KINDS: a worker has registered a function, an admin connection has
    sent a text command, anything else (HTTP included) is a client."""
    if peer.abilities:
        return 1
    return 2 if peer.admin else 0


def _worker(peer: "Peer") -> WorkerRow:
    return WorkerRow(peer.fd, peer.ip, _text(peer.client_id),
                     tuple(_text(a.function.name) for a in peer.abilities), peer.sleeping,
                     len(peer.held))


def _health(engine: "Engine") -> Tuple[bool, str]:
    """Healthy unless shutting down or the store failed: its last commit (or a unit not
    answered within --queue-timeout) failed.  The backend belongs to the store thread, so
    it is never asked from here."""
    stats = engine.queue_stats
    if engine.on_idle is not None:
        return False, "shutting down"
    if engine.durable and not stats.connected:
        return False, f"store down: {stats.backend}: {stats.last_error or 'not answering'}"
    return True, ""


def take(engine: "Engine", io: Dict[int, IoStats], view: int) -> Snapshot:
    """The snapshot ``view`` asks for (processing thread)."""
    healthy, reason = _health(engine)
    if view == VIEW_HEALTH:
        return Snapshot(view, healthy, reason, COMPAT_VERSION, engine.started, 0, (), (), 0,
                        (), 0, (), _store(engine), ())
    kinds = [0] * len(PEER_KINDS)
    sleeping = 0
    for peer in engine.conns.values():
        kinds[_kind(peer)] += 1
        sleeping += peer.sleeping
    workers: Tuple[WorkerRow, ...] = ()
    if view == VIEW_STATUS:
        workers = tuple(_worker(p) for p in engine.conns.values() if p.abilities)
    packets = tuple((NAMES.get(cmd, str(cmd)), n) for cmd, n in enumerate(engine.packets) if n)
    return Snapshot(view, healthy, reason, COMPAT_VERSION, engine.started, len(engine.jobs),
                    tuple(_function(f) for f in engine.functions.values()),
                    tuple(zip(PEER_KINDS, kinds)), sleeping, packets,
                    engine.protocol_errors, tuple(io[k] for k in sorted(io)),
                    _store(engine), workers)


def _store(engine: "Engine") -> StoreRow:
    s = engine.queue_stats
    return StoreRow(s.backend, engine.durable, s.writes, s.commits, s.deletes, s.errors,
                    s.connected, s.replayed, s.last_error)
