"""Rendering of snapshots for the metrics port: Prometheus/OpenMetrics text, the status
page's JSON, the health answer and the page's static files.

Runs on the I/O thread that owns the metrics connection (protocol/metrics.py calls it with
the snapshot.Snapshot the processor sent), so rendering costs the processing thread
nothing.  ``SnapshotCollector`` is a prometheus_client custom collector over one Snapshot,
built per scrape; nothing is registered in a shared registry.  The ``Renderer`` is built
once at start-up on the main thread (imported only when --metrics-port is given, since
prometheus_client is an optional dependency) and holds read-only data only.

Metric names follow gearman-exporter (``gearman_up``, ``gearman_version_info``,
``gearman_jobs``, ``gearman_jobs_running``, ``gearman_jobs_waiting``, ``gearman_workers``)
so its dashboards work unchanged; docs/operations.md lists the rest.
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, Iterator, List, Sequence, Tuple

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from .snapshot import FunctionRow, Snapshot
from .state import HIST_BOUNDS, PRIORITIES, RESULTS

Answer = Tuple[int, List[Tuple[bytes, bytes]], bytes]

#: Names of the priorities (state.HIGH, NORMAL, LOW) in labels.
PRIORITY_NAMES = ("high", "normal", "low")
#: The status page: URL path -> (file in gearmand_py/web/, content type).
STATIC: Dict[bytes, Tuple[str, bytes]] = {
    b"/": ("index.html", b"text/html; charset=utf-8"),
    b"/status.js": ("status.js", b"text/javascript; charset=utf-8"),
    b"/status.css": ("status.css", b"text/css; charset=utf-8"),
}
WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
TEXT = b"text/plain; charset=utf-8"
JSON = b"application/json"
#: The buckets' ``le`` labels, then +Inf.
LE = tuple(repr(bound) for bound in HIST_BOUNDS) + ("+Inf",)

#: (metric suffix, FunctionStats field in FunctionRow, help) of the plain per-function
#: counters.
COUNTERS: Tuple[Tuple[str, str, str], ...] = (
    ("jobs_coalesced", "coalesced", "Submits that joined a job with the same unique key."),
    ("jobs_rejected", "rejected", "Submits refused: queue full (maxqueue) or not stored."),
    ("jobs_retried", "retried",
     "Jobs requeued after their worker disconnected, timed out or sent CANT_DO."),
    ("jobs_dropped", "dropped", "Jobs removed after -j attempts."),
    ("jobs_cancelled", "cancelled", "Jobs cancelled by the admin command."),
)
#: state.RESULT_* -> (metric suffix, help).
RESULT_METRICS = {
    "complete": ("jobs_completed", "Jobs ended by WORK_COMPLETE."),
    "fail": ("jobs_failed", "Jobs ended by WORK_FAIL."),
    "exception": ("jobs_exceptions", "Jobs ended by WORK_EXCEPTION."),
}


def _cumulative(slots: Sequence[int]) -> List[Tuple[str, float]]:
    out = []
    total = 0
    for le, count in zip(LE, slots):
        total += count
        out.append((le, float(total)))
    return out


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


class SnapshotCollector:
    """A prometheus_client collector over one Snapshot (plus the process metrics)."""

    def __init__(self, snap: Snapshot, process: ProcessCollector) -> None:
        self.snap = snap
        self.process = process

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        yield GaugeMetricFamily("gearman_up", "is gearman up", value=1)
        info = GaugeMetricFamily("gearman_version_info", "gearman version",
                                 labels=["version"])
        info.add_metric([snap.version], 1)
        yield info
        yield from self._status(snap.functions)
        yield from self._counters(snap.functions)
        yield from self._histograms(snap.functions)
        yield from self._server(snap)
        yield from self._queue(snap)
        yield from self.process.collect()

    def _status(self, rows: Sequence[FunctionRow]) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("gearman_jobs", "number of jobs queued or running",
                                 labels=["function"])
        running = GaugeMetricFamily("gearman_jobs_running", "number of running jobs",
                                    labels=["function"])
        waiting = GaugeMetricFamily("gearman_jobs_waiting",
                                    "number of jobs waiting for an available worker",
                                    labels=["function"])
        workers = GaugeMetricFamily("gearman_workers", "number of capable workers",
                                    labels=["function"])
        queued = GaugeMetricFamily("gearman_jobs_queued",
                                   "Jobs waiting for a worker, by priority (prioritystatus).",
                                   labels=["function", "priority"])
        for row in rows:
            jobs.add_metric([row.name], row.total)
            running.add_metric([row.name], row.running)
            waiting.add_metric([row.name], row.total - row.running)
            workers.add_metric([row.name], row.workers)
            for priority in PRIORITIES:
                queued.add_metric([row.name, PRIORITY_NAMES[priority]], row.queued[priority])
        yield from (jobs, running, waiting, workers, queued)

    def _counters(self, rows: Sequence[FunctionRow]) -> Iterator[Metric]:
        submitted = CounterMetricFamily(
            "gearman_jobs_submitted", "Jobs created by client submits (coalesced submits "
            "excluded).", labels=["function", "priority", "background"])
        for row in rows:
            for priority in PRIORITIES:
                for background in (False, True):
                    submitted.add_metric(
                        [row.name, PRIORITY_NAMES[priority], "true" if background else "false"],
                        row.submitted[background][priority])
        yield submitted
        for index, result in enumerate(RESULTS):
            suffix, help_text = RESULT_METRICS[result]
            family = CounterMetricFamily("gearman_" + suffix, help_text, labels=["function"])
            for row in rows:
                family.add_metric([row.name], row.results[index])
            yield family
        for suffix, field, help_text in COUNTERS:
            family = CounterMetricFamily("gearman_" + suffix, help_text, labels=["function"])
            for row in rows:
                family.add_metric([row.name], getattr(row, field))
            yield family

    def _histograms(self, rows: Sequence[FunctionRow]) -> Iterator[Metric]:
        wait = HistogramMetricFamily(
            "gearman_job_wait_seconds", "Time from submit (or requeue) to assignment to a "
            "worker.", labels=["function"])
        run = HistogramMetricFamily(
            "gearman_job_run_seconds", "Time from assignment to WORK_COMPLETE, WORK_FAIL or "
            "WORK_EXCEPTION.", labels=["function"])
        for row in rows:
            wait.add_metric([row.name], _cumulative(row.wait), row.wait_sum)
            run.add_metric([row.name], _cumulative(row.run), row.run_sum)
        yield wait
        yield run

    def _server(self, snap: Snapshot) -> Iterator[Metric]:
        healthy = GaugeMetricFamily("gearman_healthy", "1 when GET /healthz answers 200.",
                                    value=int(snap.healthy))
        started = GaugeMetricFamily("gearman_start_time_seconds",
                                    "Start time of the server, seconds since the epoch.",
                                    value=snap.started)
        threads = GaugeMetricFamily("gearman_threads", "Threads of the server process.",
                                    value=_thread_count())
        in_memory = GaugeMetricFamily("gearman_jobs_in_memory",
                                      "Jobs held by the server (every function).",
                                      value=snap.jobs)
        peers = GaugeMetricFamily("gearman_connections", "Gearman connections by kind: "
                                  "worker (registered a function), admin (sent a text "
                                  "command), client (the others, HTTP included).",
                                  labels=["kind"])
        for kind, count in snap.connections:
            peers.add_metric([kind], count)
        sleeping = GaugeMetricFamily("gearman_workers_sleeping",
                                     "Workers asleep after PRE_SLEEP.", value=snap.sleeping)
        open_now: Dict[str, int] = {}
        accepted: Dict[str, int] = {}
        received = sent = 0
        for io in snap.io:
            received += io.bytes_in
            sent += io.bytes_out
            for name, count in io.open:
                open_now[name] = open_now.get(name, 0) + count
            for name, count in io.accepted:
                accepted[name] = accepted.get(name, 0) + count
        ports = GaugeMetricFamily("gearman_port_connections",
                                  "Open connections by listening port (Gear, HTTP, Metrics).",
                                  labels=["port"])
        ports_total = CounterMetricFamily("gearman_port_connections_accepted",
                                          "Connections accepted by listening port.",
                                          labels=["port"])
        for name in sorted(accepted):
            ports.add_metric([name], open_now.get(name, 0))
            ports_total.add_metric([name], accepted[name])
        bytes_in = CounterMetricFamily("gearman_received_bytes",
                                       "Bytes read from every connection.", value=received)
        bytes_out = CounterMetricFamily("gearman_sent_bytes",
                                        "Bytes sent to every connection.", value=sent)
        packets = CounterMetricFamily("gearman_packets", "Gearman packets handled, by command.",
                                      labels=["command"])
        for name, count in snap.packets:
            packets.add_metric([name], count)
        errors = CounterMetricFamily("gearman_protocol_errors",
                                     "Connections closed for unparseable input.",
                                     value=snap.protocol_errors)
        yield from (healthy, started, threads, in_memory, peers, sleeping, ports, ports_total,
                    bytes_in, bytes_out, packets, errors)

    def _queue(self, snap: Snapshot) -> Iterator[Metric]:
        store = snap.store
        info = GaugeMetricFamily("gearman_queue_info", "The persistent queue (-q) in use.",
                                 labels=["backend"])
        info.add_metric([store.backend], 1)
        yield info
        yield CounterMetricFamily("gearman_queue_writes", "Jobs written to the queue.",
                                  value=store.writes)
        yield CounterMetricFamily("gearman_queue_commits",
                                  "Queue flushes completed (the durability point).",
                                  value=store.commits)
        yield CounterMetricFamily("gearman_queue_deletes", "Jobs removed from the queue.",
                                  value=store.deletes)
        yield CounterMetricFamily("gearman_queue_errors", "Queue operations that failed.",
                                  value=store.errors)
        yield GaugeMetricFamily("gearman_queue_connected",
                                "1 unless the last queue operation failed.",
                                value=store.connected)
        yield GaugeMetricFamily("gearman_queue_replayed_jobs",
                                "Jobs read back from the queue at start-up.",
                                value=store.replayed)


class Renderer:
    """Turns snapshots into response (status, headers, body); one per metrics Port."""

    def __init__(self) -> None:
        self.process = ProcessCollector(registry=None)
        self.files: Dict[bytes, Answer] = {}
        for path, (name, content_type) in STATIC.items():
            with open(os.path.join(WEB_DIR, name), "rb") as f:
                self.files[path] = (200, [(b"Content-Type", content_type)], f.read())

    def metrics(self, snap: Snapshot, accept: str) -> Answer:
        encoder, content_type = choose_encoder(accept)
        body = encoder(SnapshotCollector(snap, self.process))  # type: ignore[arg-type]
        return 200, [(b"Content-Type", content_type.encode())], body

    def status(self, snap: Snapshot) -> Answer:
        return 200, [(b"Content-Type", JSON)], json.dumps(status_document(snap)).encode()

    def health(self, snap: Snapshot) -> Answer:
        if snap.healthy:
            return 200, [(b"Content-Type", TEXT)], b"ok\n"
        return 503, [(b"Content-Type", TEXT)], snap.reason.encode("utf-8", "replace") + b"\n"

    def static(self, path: bytes) -> Answer:
        found = self.files.get(path)
        if found is None:
            return 404, [(b"Content-Type", TEXT)], b"not found: try /metrics, /healthz or /\n"
        return found


def status_document(snap: Snapshot) -> dict:
    """The JSON view the status page polls."""
    functions = []
    for row in snap.functions:
        functions.append({
            "name": row.name, "total": row.total, "running": row.running,
            "waiting": row.total - row.running, "workers": row.workers,
            "queued": dict(zip(PRIORITY_NAMES, row.queued)),
            "submitted": sum(map(sum, row.submitted)), "coalesced": row.coalesced,
            "rejected": row.rejected, **dict(zip(RESULTS, row.results)),
            "retried": row.retried, "dropped": row.dropped, "cancelled": row.cancelled,
            "wait_count": sum(row.wait), "wait_sum": row.wait_sum,
            "run_count": sum(row.run), "run_sum": row.run_sum,
        })
    ports: Dict[str, int] = {}
    for io in snap.io:
        for name, count in io.open:
            ports[name] = ports.get(name, 0) + count
    return {
        "version": snap.version, "started": snap.started, "now": time.time(),
        "healthy": snap.healthy, "reason": snap.reason, "jobs": snap.jobs,
        "functions": sorted(functions, key=lambda f: f["name"]),
        "workers": [{"fd": w.fd, "ip": w.ip, "client_id": w.client_id,
                     "functions": list(w.functions), "sleeping": w.sleeping,
                     "running": w.running} for w in snap.workers],
        "connections": dict(snap.connections), "sleeping": snap.sleeping, "ports": ports,
        "bytes_in": sum(io.bytes_in for io in snap.io),
        "bytes_out": sum(io.bytes_out for io in snap.io),
        "store": snap.store._asdict(),
    }
