"""Render sweep results: a Markdown table, a JSON document, and an optional PNG plot.

Runs in the parent process after the sweep.  Ratios compare each server's median headline
metric with the baseline server's (the first listed unless ``--baseline``) at the same -t.
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
    "drain": [],
    "idle": [("bytes_per_conn", "{} B/conn"), ("open_s", "{} conn/s opened")],
    "mem": [("jobs", "{} jobs")],
    "status": [("p50_ms", "p50 {} ms"), ("probes", "{} probes"),
               ("load_jobs_s", "load {} fg jobs/s")],
}


def ratios(results: List[CellResult], baseline: str) -> Dict[int, Optional[float]]:
    """id(cell) -> headline ratio to the baseline server at the same workload and -t."""
    base: Dict[Any, float] = {}
    for c in results:
        if c.server == baseline:
            v = c.median().get(WORKLOADS[c.workload].metric)
            if v:
                base[(c.workload, c.threads)] = v
    out: Dict[int, Optional[float]] = {}
    for c in results:
        v = c.median().get(WORKLOADS[c.workload].metric)
        b = base.get((c.workload, c.threads))
        out[id(c)] = (v / b) if (v is not None and b) else None
    return out


def table(results: List[CellResult], baseline: str) -> str:
    """Markdown table: one row per workload, -t and server."""
    rat = ratios(results, baseline)
    rows = [f"| workload | -t | server | median | ratio to {baseline} | rounds | details | "
            "CPU (cores) |",
            "|---|---:|---|---:|---:|---:|---|---|"]
    order = sorted(results, key=lambda c: (list(WORKLOADS).index(c.workload), c.threads))
    for c in order:
        wl = WORKLOADS[c.workload]
        med = c.median()
        v = med.get(wl.metric)
        r = rat[id(c)]
        details = ", ".join(fmt.format(_fmt(med[k])) for k, fmt in DETAILS[c.workload]
                            if k in med)
        if c.errors:
            details = (details + "; " if details else "") + f"{len(c.errors)} failed: " + \
                c.errors[0][:80].replace("|", "/")
        cpu = ""
        if "gen_cpu" in med:
            cpu = (f"gen {med['gen_cpu']:.2f} / server {med['server_cpu']:.2f} / "
                   f"machine {med.get('machine_cpu', 0):.2f} cores")
        rows.append(f"| {c.workload} ({wl.unit}) | {c.threads} | {c.server} | "
                    f"{_fmt(v) if v is not None else 'n/a'} | "
                    f"{f'{r:.2f}x' if r is not None else ''} | {len(c.rounds)} | {details} | "
                    f"{cpu} |")
    return "\n".join(rows)


def to_json(results: List[CellResult], baseline: str, meta: Dict[str, Any]) -> str:
    rat = ratios(results, baseline)
    cells = []
    for c in results:
        wl = WORKLOADS[c.workload]
        cells.append({"workload": c.workload, "server": c.server, "threads": c.threads,
                      "metric": wl.metric, "unit": wl.unit,
                      "higher_is_better": wl.higher_is_better,
                      "value": c.median().get(wl.metric), "ratio": rat[id(c)],
                      "median": c.median(), "rounds": c.rounds, "errors": c.errors})
    return json.dumps({"meta": meta, "baseline": baseline, "results": cells}, indent=2)


def plot(results: List[CellResult], path: str) -> None:
    """Throughput against -t for each server, one panel per sweep workload."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install 'gearmand-py[bench]' "
                           "(or pip install matplotlib)") from e
    names = [w for w in WORKLOADS if WORKLOADS[w].sweep and
             any(c.workload == w and c.rounds for c in results)]
    if not names:
        raise RuntimeError("--plot: no throughput workload results to draw")
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, w in zip(axes[0], names):
        wl = WORKLOADS[w]
        servers: List[str] = []
        for c in results:
            if c.workload == w and c.server not in servers:
                servers.append(c.server)
        for s in servers:
            pts = sorted((c.threads, c.median().get(wl.metric)) for c in results
                         if c.workload == w and c.server == s and c.rounds)
            xs = [t for t, v in pts if v is not None]
            ys = [v for t, v in pts if v is not None]
            ax.plot(xs, ys, marker="o", label=s)
        ax.set_title(f"{w}: {wl.title}", fontsize=8)
        ax.set_xlabel("-t (I/O threads)")
        ax.set_ylabel(wl.unit)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
