"""Command line of ``gearmand-bench`` (also ``python -m gearmand_py.bench``).

Parses options, runs the sweep (:mod:`.runner`) in the main thread of the parent process,
prints the table (or JSON) on stdout, and makes sure every server it started is stopped,
also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import signal
import sys
import time
from dataclasses import fields
from types import FrameType
from typing import Any, Dict, List, Optional

from . import report, runner
from .servers import C_GEARMAND, ServerSpec, parse_server, raise_fd_limit, self_spec, stop_all
from .workloads import WORKLOADS, Params

DEFAULT_THREADS = "0,1,2,4,8"
QUICK_THREADS = "0,2"

EPILOG = f"""\
workloads: {', '.join(f'{w.name} ({w.title})' for w in WORKLOADS.values())}.
fg, bg, drain and big run at every -t; idle, mem and status at --point-threads.

examples:
  gearmand-bench --server c={C_GEARMAND} --plot bench.png
  gearmand-bench --no-self --server c={C_GEARMAND} --workloads fg,bg -t 0,4
  gearmand-bench --quick --json --server c={C_GEARMAND}
  gearmand-bench --queue-args '-q libsqlite3 --libsqlite3-db={{tmpdir}}/q.db' --workloads bg
"""


def _int_list(text: str) -> List[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers: "
                                         f"{text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected non-negative integers: {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gearmand-bench", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmark gearmand-py across -t thread counts, side by side with other "
                    "Gearman servers (e.g. C gearmand), with a raw-protocol load generator.")
    p.add_argument("-t", "--threads", type=_int_list, default=None,
                   help=f"-t values for this project's server (default {DEFAULT_THREADS}; "
                        f"{QUICK_THREADS} with --quick)")
    p.add_argument("--server", action="append", default=[], metavar="NAME=CMD",
                   help="another server to run, e.g. c=/usr/sbin/gearmand (repeatable). "
                        "gearmand-style -p/-L/-t/-l/-P are appended unless CMD contains "
                        "{port}; {threads} and {tmpdir} are substituted too")
    p.add_argument("--server-threads", type=_int_list, default=None,
                   help="-t values for --server commands (default: same as --threads)")
    p.add_argument("--no-self", action="store_true",
                   help="do not run this project's server (only the --server commands)")
    p.add_argument("--baseline", default=None,
                   help="server name the ratios are relative to (default: the first listed)")
    p.add_argument("-w", "--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("-r", "--rounds", type=int, default=None,
                   help="interleaved rounds; medians are reported (default 3, 1 with --quick)")
    p.add_argument("--point-threads", type=int, default=None,
                   help="-t for idle, mem and status (default: each server's first -t)")
    p.add_argument("--quick", action="store_true",
                   help="tiny counts for smoke-testing the tool (well under 30 s)")
    p.add_argument("--procs", type=int, default=None,
                   help="generator processes per side (default 2)")
    p.add_argument("--clients", type=int, default=None, help="fg clients (default 16)")
    p.add_argument("--workers", type=int, default=None, help="fg workers (default 4)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any workload parameter: " +
                        ", ".join(f.name for f in fields(Params)))
    p.add_argument("--queue-args", default="",
                   help="extra server arguments for a durable queue, passed to every server, "
                        "e.g. '-q libsqlite3 --libsqlite3-db={tmpdir}/q.db'")
    p.add_argument("--json", action="store_true", help="print JSON on stdout instead of the "
                                                       "table")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw throughput against -t per server (needs matplotlib)")
    p.add_argument("--from-json", metavar="FILE", default=None,
                   help="do not run anything: re-render the table (or --plot) from a saved "
                        "--json output")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing cell")
    return p


def make_params(args: argparse.Namespace) -> Params:
    params = Params.quick() if args.quick else Params()
    types = {f.name: type(getattr(params, f.name)) for f in fields(Params)}
    for item in args.set:
        key, sep, val = item.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"gearmand-bench: --set wants KEY=VALUE with KEY one of "
                             f"{', '.join(types)}; got {item!r}")
        try:
            setattr(params, key, types[key](val))
        except ValueError:
            raise SystemExit(f"gearmand-bench: bad value for {key}: {val!r}") from None
    if args.procs is not None:
        params.procs = args.procs
    if args.clients is not None:
        params.fg_clients = args.clients
    if args.workers is not None:
        params.fg_workers = args.workers
    if params.procs < 1:
        raise SystemExit("gearmand-bench: --procs must be at least 1")
    return params


def _on_term(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def rerender(args: argparse.Namespace) -> None:
    """``--from-json``: table or plot from a saved run."""
    import json

    with open(args.from_json, encoding="utf-8") as f:
        doc = json.load(f)
    results = [runner.CellResult(c["workload"], c["server"], c["threads"], c["rounds"],
                                 c["errors"]) for c in doc["results"]]
    baseline = args.baseline or doc["baseline"]
    if args.json:
        print(report.to_json(results, baseline, doc["meta"]))
    else:
        print(report.table(results, baseline))
    if args.plot:
        report.plot(results, args.plot)


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.from_json:
        rerender(args)
        return
    params = make_params(args)
    threads = args.threads or _int_list(QUICK_THREADS if args.quick else DEFAULT_THREADS)
    other_threads = args.server_threads or threads
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad or not workloads:
        raise SystemExit(f"gearmand-bench: unknown workload(s) {bad}; "
                         f"choose from {','.join(WORKLOADS)}")
    extra = shlex.split(args.queue_args)
    specs: List[ServerSpec] = [] if args.no_self else [self_spec(threads, extra)]
    try:
        specs += [parse_server(s, other_threads, extra) for s in args.server]
    except ValueError as e:
        raise SystemExit(f"gearmand-bench: {e}") from None
    if not specs:
        raise SystemExit("gearmand-bench: nothing to run (--no-self and no --server)")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SystemExit(f"gearmand-bench: server names must differ: {names}")
    baseline = args.baseline or names[0]
    if baseline not in names:
        raise SystemExit(f"gearmand-bench: --baseline {baseline} is not one of {names}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("gearmand-bench: --plot needs matplotlib; install it with "
                             "pip install matplotlib (or gearmand-py[bench])") from None
    fd_limit = raise_fd_limit()
    if "idle" in workloads and fd_limit < params.idle_conns + 100:
        print(f"gearmand-bench: RLIMIT_NOFILE is {fd_limit}; idle connections capped",
              file=sys.stderr)
        params.idle_conns = max(fd_limit - 100, 10)
    signal.signal(signal.SIGTERM, _on_term)
    started = time.time()
    load_start = os.getloadavg()[0]
    try:
        results = runner.run(specs, workloads, params, rounds, args.point_threads,
                             progress=not args.no_progress, keep_going=not args.fail_fast)
    except KeyboardInterrupt:
        stop_all()
        print("\ngearmand-bench: interrupted; servers stopped", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        stop_all()
    meta: Dict[str, Any] = {
        "command": ["gearmand-bench"] + (argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1), "rounds": rounds, "quick": args.quick,
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "machine": platform.machine(), "kernel": platform.release(),
        "servers": [{"name": s.name, "cmd": s.cmd, "threads": s.threads, "extra": s.extra}
                    for s in specs],
        "params": params.as_dict(), "point_threads": args.point_threads,
        "loadavg_at_start": load_start,
    }
    if args.json:
        print(report.to_json(results, baseline, meta))
    else:
        print(report.table(results, baseline))
        print(f"\n{rounds} round(s), {meta['seconds']} s, {os.cpu_count()} CPUs; medians; "
              f"ratios against {baseline} at the same -t.")
    if args.plot:
        report.plot(results, args.plot)
        print(f"gearmand-bench: plot written to {args.plot}", file=sys.stderr)
    failed = [c for c in results if c.errors and not c.rounds]
    if failed:
        print(f"gearmand-bench: {len(failed)} cell(s) failed in every round, e.g. "
              f"{failed[0].workload} {failed[0].server} -t {failed[0].threads}: "
              f"{failed[0].errors[0][:300]}", file=sys.stderr)
        raise SystemExit(1)
