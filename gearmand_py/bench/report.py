"""Render sweep results: a Markdown table, a JSON document, and an optional PNG plot.

Runs in the parent process after the sweep.  Ratios compare each server's median with the
baseline server's (C gearmand when it runs, see :mod:`.cli`) at the same workload and -t:
the headline metric, and the server's CPU time per job, each with its better direction.
Each throughput row also says which side was saturated (:func:`bound`): a figure is the
server's capacity only when the server, not the generator or the machine, was the limit.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from .runner import CellResult, _fmt
from .workloads import WORKLOADS

DETAILS = {
    "fg": [("p50_ms", "p50 {} ms"), ("p99_ms", "p99 {} ms")],
    "big": [("jobs_s", "{} jobs/s"), ("p99_ms", "p99 {} ms")],
    "bg": [],
    "flood": [("alone_jobs_s", "{} jobs/s alone"), ("kept", "kept {}"),
              ("flood_submits_s", "flood {} submits/s"), ("flood_errors", "{} flood errors")],
    "drain": [],
    "ping": [("p50_ms", "p50 {} ms"), ("p99_ms", "p99 {} ms")],
    "idle": [("bytes_per_conn", "{} B/conn"), ("open_s", "{} conn/s opened")],
    "mem": [("jobs", "{} jobs")],
    "status": [("p50_ms", "p50 {} ms"), ("probes", "{} probes"),
               ("load_jobs_s", "load {} fg jobs/s")],
}

#: Saturation thresholds.  A generator process and this project's server at -t 0 are one
#: thread each, so ~0.9 core is their ceiling; the machine is full near all its CPUs.
GEN_SATURATED = 0.9
SERVER_SATURATED = 0.9
MACHINE_SATURATED = 0.9   # share of all CPUs

#: What each ``bound`` value means (the legend printed under the table).
BOUNDS = {
    "server": "the server used >= 0.9 core: its capacity",
    "server, machine full": "the server used >= 0.9 core while all CPUs were busy",
    "GENERATOR!": "a generator process used >= 0.9 core: NOT the server's capacity",
    "STARVED!": "all CPUs busy; the server had work (ran or waited for a CPU) >= 0.9 of "
                "the time but got < 0.9 core: the generator kept up, other processes took "
                "the CPU; NOT the server's capacity (compare CPU µs/job)",
    "MACHINE!": "all CPUs busy and the server below 0.9 core: NOT the server's capacity",
    "latency": "nothing saturated: bound by round-trip latency, not a capacity figure",
}


def better(higher_is_better: bool) -> str:
    return "higher is better" if higher_is_better else "lower is better"


def saturation(med: Dict[str, Any], cpus: int) -> Dict[str, bool]:
    """Which side was saturated over the measured interval (medians of the rounds)."""
    return {"generator": med.get("gen_cpu_max", med.get("gen_cpu", 0.0)) >= GEN_SATURATED,
            "server": med.get("server_cpu", 0.0) >= SERVER_SATURATED,
            "server_demand": med.get("server_demand", 0.0) >= SERVER_SATURATED,
            "machine": med.get("machine_cpu", 0.0) >= MACHINE_SATURATED * cpus}


def bound(med: Dict[str, Any], cpus: int) -> str:
    """One of :data:`BOUNDS` ("" when the row has no CPU figures, e.g. idle and mem)."""
    if "server_cpu" not in med:
        return ""
    sat = saturation(med, cpus)
    if sat["generator"]:
        return "GENERATOR!"
    if sat["server"]:
        return "server, machine full" if sat["machine"] else "server"
    if sat["machine"]:
        return "STARVED!" if sat["server_demand"] else "MACHINE!"
    return "latency"


def _ratios(results: List[CellResult], baseline: str, key: Any
            ) -> Dict[int, Optional[float]]:
    base: Dict[Any, float] = {}
    for c in results:
        if c.server == baseline:
            v = c.median().get(key(c))
            if v:
                base[(c.workload, c.threads)] = v
    out: Dict[int, Optional[float]] = {}
    for c in results:
        v = c.median().get(key(c))
        b = base.get((c.workload, c.threads))
        out[id(c)] = (v / b) if (v is not None and b) else None
    return out


def ratios(results: List[CellResult], baseline: str) -> Dict[int, Optional[float]]:
    """id(cell) -> headline ratio to the baseline server at the same workload and -t."""
    return _ratios(results, baseline, lambda c: WORKLOADS[c.workload].metric)


def cpu_ratios(results: List[CellResult], baseline: str) -> Dict[int, Optional[float]]:
    """id(cell) -> ratio of server CPU µs per job to the baseline's (lower is better)."""
    return _ratios(results, baseline, lambda c: "server_us")


def _x(r: Optional[float], higher_is_better: bool, is_base: bool) -> str:
    if is_base:
        return "(baseline)"
    return f"{r:.2f}x ({better(higher_is_better)})" if r is not None else ""


def warning_lines(note: Optional[str]) -> List[str]:
    """The header that says a run's capacity numbers are not valid (Python generator)."""
    if not note:
        return []
    return [f"**WARNING: {note}. The Python load generator saturates before the servers "
            "do: the capacity numbers (rates, ratios) below are NOT valid.**", ""]


def table(results: List[CellResult], baseline: str, cpus: int,
          generator_note: Optional[str] = None) -> str:
    """Markdown table: one row per workload, -t and server."""
    rat = ratios(results, baseline)
    crat = cpu_ratios(results, baseline)
    rows = warning_lines(generator_note) + [
        f"| workload | -t | server | median | ratio to {baseline} | server CPU µs/job | "
        f"CPU ratio to {baseline} | gen CPU µs/job | cores gen / server (+waiting for a "
        "CPU) / machine | bound | "
        "rounds | details |",
        "|---|---:|---|---:|---|---:|---|---:|---|---|---:|---|"]
    order = sorted(results, key=lambda c: (list(WORKLOADS).index(c.workload), c.threads))
    for c in order:
        wl = WORKLOADS[c.workload]
        med = c.median()
        v = med.get(wl.metric)
        base = c.server == baseline
        details = ", ".join(fmt.format(_fmt(med[k])) for k, fmt in DETAILS[c.workload]
                            if k in med)
        if "busy_before" in med:
            details = (details + ", " if details else "") + \
                f"{med['busy_before']:.2f} cores busy before"
        if c.errors:
            details = (details + "; " if details else "") + f"{len(c.errors)} failed: " + \
                c.errors[0][:80].replace("|", "/")
        cores = srv_us = gen_us = ""
        if "server_cpu" in med:
            wait = med.get("server_demand", med["server_cpu"]) - med["server_cpu"]
            cores = (f"{med.get('gen_cpu', 0):.2f} / {med['server_cpu']:.2f} "
                     f"(+{wait:.2f} waiting) / {med.get('machine_cpu', 0):.2f}")
            srv_us = _fmt(med["server_us"]) if med.get("server_us") is not None else ""
            gen_us = _fmt(med["gen_us"]) if med.get("gen_us") is not None else ""
        rows.append(f"| {c.workload} ({wl.unit}) | {c.threads} | {c.server} | "
                    f"{_fmt(v) if v is not None else 'n/a'} | "
                    f"{_x(rat[id(c)], wl.higher_is_better, base)} | {srv_us} | "
                    f"{_x(crat[id(c)], False, base) if srv_us else ''} | {gen_us} | "
                    f"{cores} | {bound(med, cpus)} | {len(c.rounds)} | {details} |")
    seen = {bound(c.median(), cpus) for c in results} - {""}
    if seen:
        rows.append("")
        rows += [f"bound: {k} = {BOUNDS[k]}" for k in BOUNDS if k in seen]
    return "\n".join(rows)


def to_json(results: List[CellResult], baseline: str, meta: Dict[str, Any]) -> str:
    rat = ratios(results, baseline)
    crat = cpu_ratios(results, baseline)
    cpus = int(meta.get("cpus") or 1)
    cells = []
    for c in results:
        wl = WORKLOADS[c.workload]
        med = c.median()
        cells.append({"workload": c.workload, "server": c.server, "threads": c.threads,
                      "metric": wl.metric, "unit": wl.unit,
                      "higher_is_better": wl.higher_is_better,
                      "better": better(wl.higher_is_better),
                      "value": med.get(wl.metric), "ratio": rat[id(c)],
                      "server_us_per_job": med.get("server_us"),
                      "gen_us_per_job": med.get("gen_us"),
                      "cpu_ratio": crat[id(c)], "cpu_ratio_better": better(False),
                      "bound": bound(med, cpus),
                      "saturated": saturation(med, cpus) if "server_cpu" in med else {},
                      "median": med, "rounds": c.rounds, "errors": c.errors})
    return json.dumps({"meta": meta, "baseline": baseline, "results": cells}, indent=2)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(results: List[CellResult], path: str) -> None:
    """Per sweep workload, one column: throughput against -t for each server (top) and the
    server's CPU µs per job (bottom; the steadier figure on a shared machine).  Call
    :func:`have_matplotlib` first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [w for w in WORKLOADS if WORKLOADS[w].sweep and
             any(c.workload == w and c.rounds for c in results)]
    if not names:
        raise RuntimeError("--plot: no throughput workload results to draw")
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.6), squeeze=False)
    for col, w in enumerate(names):
        wl = WORKLOADS[w]
        servers: List[str] = []
        for c in results:
            if c.workload == w and c.server not in servers:
                servers.append(c.server)
        for row, key, label in ((0, wl.metric, wl.unit), (1, "server_us", "server CPU µs/job")):
            ax = axes[row][col]
            for s in servers:
                pts = sorted((c.threads, c.median().get(key)) for c in results
                             if c.workload == w and c.server == s and c.rounds)
                xs = [t for t, v in pts if v is not None]
                ys = [v for t, v in pts if v is not None]
                ax.plot(xs, ys, marker="o", label=s)
            ax.set_title(f"{w}: {wl.title}" if row == 0 else
                         f"{w}: server CPU per job (lower is better)", fontsize=8)
            ax.set_xlabel("-t (I/O threads)")
            ax.set_ylabel(label)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
