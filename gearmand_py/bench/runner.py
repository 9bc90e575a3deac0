"""The sweep: every (workload, server, -t) cell, interleaved over rounds, with medians.

Runs in the parent process.  Round r runs, for each workload, every server configuration
in turn (A B A B ... across rounds), each on a freshly started server that is stopped right
after, so no workload sees another's leftovers.  A progress line goes to stderr.  On a
shared machine ``quiet_wait`` makes each cell first wait (up to that many seconds) until the
other processes leave the CPUs mostly idle; each round records the busy cores it saw last.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, TextIO, Tuple

from .gen import cpu_machine
from .servers import Server, ServerSpec
from .workloads import WORKLOADS, Params

QUIET_CORES = 0.3     # busy cores (all processes) that count as a quiet machine
QUIET_SAMPLE = 0.5    # seconds per sample

Cell = Tuple[str, str, int]  # (workload, server name, threads)


@dataclass
class CellResult:
    workload: str
    server: str
    threads: int
    rounds: List[Dict[str, Any]] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)

    def median(self) -> Dict[str, Any]:
        """Per-metric median over the rounds that succeeded."""
        out: Dict[str, Any] = {}
        if not self.rounds:
            return out
        for key in self.rounds[0]:
            vals = [r[key] for r in self.rounds if isinstance(r.get(key), (int, float))]
            if vals:
                out[key] = statistics.median(vals)
        return out


class Progress:
    """One updating line on stderr (a plain line per step when stderr is not a tty)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, enabled: bool = True) -> None:
        self.total = total
        self.n = 0
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self.t0 = time.monotonic()

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        line = f"[{self.n}/{self.total} {time.monotonic() - self.t0:5.0f}s] {text}"
        if self.tty:
            self.stream.write("\r\033[K" + line[:150])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def plan(specs: List[ServerSpec], workloads: List[str], point_threads: Optional[int]
         ) -> List[Cell]:
    """Cells of one round in run order: per workload, each server and -t in turn."""
    cells: List[Cell] = []
    for w in workloads:
        sweep = WORKLOADS[w].sweep
        for spec in specs:
            ts = spec.threads if sweep else [
                point_threads if point_threads is not None else spec.threads[0]]
            for t in ts:
                cells.append((w, spec.name, t))
    # Interleave servers at equal -t: A0 B0 A1 B1 ... rather than A0 A1 ... B0 B1.
    cells.sort(key=lambda c: (workloads.index(c[0]), c[2]))
    return cells


def wait_quiet(max_wait: float) -> float:
    """Sample the machine's busy cores until a sample is below :data:`QUIET_CORES` or
    ``max_wait`` seconds pass; returns the last sample (cores busy before the cell)."""
    deadline = time.monotonic() + max_wait
    while True:
        c0, t0 = cpu_machine(), time.monotonic()
        time.sleep(QUIET_SAMPLE)
        busy = (cpu_machine() - c0) / (time.monotonic() - t0)
        if busy < QUIET_CORES or time.monotonic() >= deadline:
            return busy


def run(specs: List[ServerSpec], workloads: List[str], params: Params, rounds: int,
        point_threads: Optional[int] = None, progress: bool = True,
        keep_going: bool = True, quiet_wait: float = 0.0) -> List[CellResult]:
    """Run the sweep; a failing cell is recorded (and, with ``keep_going``, skipped)."""
    by_name = {s.name: s for s in specs}
    cells = plan(specs, workloads, point_threads)
    results: Dict[Cell, CellResult] = {c: CellResult(*c) for c in cells}
    prog = Progress(len(cells) * rounds, enabled=progress)
    for r in range(rounds):
        for cell in cells:
            w, name, t = cell
            wl = WORKLOADS[w]
            prog.show(f"round {r + 1}/{rounds} {w} {name} -t {t} ...")
            try:
                busy = wait_quiet(quiet_wait) if quiet_wait > 0 else None
                with Server(by_name[name], t) as srv:
                    m = wl.run(srv, params)
                    m["server_threads_seen"] = srv.nthreads()
                if busy is not None:
                    m["busy_before"] = busy
                results[cell].rounds.append(m)
                prog.n += 1
                prog.show(f"round {r + 1}/{rounds} {w} {name} -t {t}: "
                          f"{_fmt(m[wl.metric])} {wl.unit}")
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - recorded, reported, maybe fatal
                prog.n += 1
                msg = f"{type(e).__name__}: {e}".strip()
                results[cell].errors.append(msg)
                prog.show(f"round {r + 1}/{rounds} {w} {name} -t {t}: FAILED {msg[:200]}")
                if progress and prog.tty:
                    sys.stderr.write("\n")
                if not keep_going:
                    raise
    prog.done()
    return list(results.values())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return f"{v:,}" if isinstance(v, int) else str(v)
