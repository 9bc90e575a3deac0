"""Command line of ``gearmand-bench`` (also ``python -m gearmand_py.bench``).

Parses options, picks the load generator (the native one, built on first use by
:mod:`.native`, or the Python fallback with a loud warning), runs the sweep (:mod:`.runner`)
in the main thread of the parent process, prints the table (or JSON) on stdout, and makes
sure every server it started is stopped, also on Ctrl-C, SIGTERM or an error.
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
from typing import Any, Dict, List, Optional, Tuple

from . import native, report, runner
from .servers import C_GEARMAND, ServerSpec, parse_server, raise_fd_limit, self_spec, stop_all
from .workloads import GENERATED, GENERATORS, NATIVE, PYTHON, WORKLOADS, Params

AUTO = "auto"
GENERATOR_ENV = "GEARMAND_BENCH_GENERATOR"
PLOT_NEEDS = "gearmand-bench: --plot needs matplotlib (pip install 'gearmand-py[bench]')"

DEFAULT_THREADS = "0,1,2,4,8"
QUICK_THREADS = "0,2"

EPILOG = f"""\
workloads: {', '.join(f'{w.name} ({w.title})' for w in WORKLOADS.values())}.
fg, bg, drain and big run at every -t; idle, mem and status at --point-threads.

The load comes from a small C program (loadgen.c, shipped in the package) compiled with
$CC or cc on first use into $XDG_CACHE_HOME/gearmand-py/ (~/.cache/gearmand-py/).  Without
a compiler the Python generator is used and the run is marked: its capacity numbers are
not valid.

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
                   help="server name the ratios are relative to (default: the first "
                        "--server, e.g. C gearmand; the only server otherwise)")
    p.add_argument("-w", "--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("-r", "--rounds", type=int, default=None,
                   help="interleaved rounds; medians are reported (default 3, 1 with --quick)")
    p.add_argument("--point-threads", type=int, default=None,
                   help="-t for idle, mem and status (default: each server's first -t)")
    p.add_argument("--quick", action="store_true",
                   help="tiny counts for smoke-testing the tool (well under 30 s)")
    p.add_argument("--generator", choices=(AUTO,) + GENERATORS,
                   default=os.environ.get(GENERATOR_ENV, AUTO),
                   help="load generator: native (C, built on first use), python (fallback; "
                        "its capacity numbers are not valid) or auto: native when a C "
                        f"compiler is found (default; ${GENERATOR_ENV} overrides)")
    p.add_argument("--cc", default=None,
                   help="C compiler for the native generator (default $CC, else cc)")
    p.add_argument("--native-procs", type=int, default=None,
                   help="native generator processes (default 1: one epoll loop)")
    p.add_argument("--procs", type=int, default=None,
                   help="Python generator processes per side (default 2)")
    p.add_argument("--clients", type=int, default=None, help="fg clients (default 64)")
    p.add_argument("--workers", type=int, default=None, help="fg workers (default 16)")
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
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                   help="on a shared machine: before each measurement wait up to SECONDS "
                        "until the CPUs are nearly idle (default 0: do not wait)")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing cell")
    return p


_BOOL = {"0": False, "1": True}


def make_params(args: argparse.Namespace) -> Params:
    params = Params.quick() if args.quick else Params()
    types = {f.name: type(getattr(params, f.name)) for f in fields(Params)}
    for item in args.set:
        key, sep, val = item.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"gearmand-bench: --set wants KEY=VALUE with KEY one of "
                             f"{', '.join(types)}; got {item!r}")
        try:
            setattr(params, key, _BOOL[val] if types[key] is bool else types[key](val))
        except KeyError:
            raise SystemExit(f"gearmand-bench: {key} wants 0 or 1, got {val!r}") from None
        except ValueError:
            raise SystemExit(f"gearmand-bench: bad value for {key}: {val!r}") from None
    if args.procs is not None:
        params.procs = args.procs
    if args.native_procs is not None:
        params.native_procs = args.native_procs
    if args.clients is not None:
        params.fg_clients = args.clients
    if args.workers is not None:
        params.fg_workers = args.workers
    if params.procs < 1 or params.native_procs < 1:
        raise SystemExit("gearmand-bench: --procs and --native-procs must be at least 1")
    return params


def _on_term(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def choose_generator(choice: str, cc: Optional[str] = None
                     ) -> Tuple[str, str, Optional[str]]:
    """(generator, loadgen path, warning): the native generator when it builds, else the
    Python one with the reason its numbers are not valid (stderr gets it at once)."""
    if choice == PYTHON:
        note = "the Python load generator was requested (--generator python)"
    else:
        try:
            return NATIVE, native.binary(cc), None
        except native.BuildError as e:
            if choice == NATIVE:
                raise SystemExit(f"gearmand-bench: cannot build the native load generator: "
                                 f"{e}") from None
            note = f"no native load generator ({e})"
    for line in (f"WARNING: {note}.",
                 "WARNING: falling back to the Python load generator, which saturates before "
                 "the servers do:",
                 "WARNING: the capacity numbers (rates, ratios) of this run are NOT valid."):
        print(f"gearmand-bench: {line}", file=sys.stderr)
    return PYTHON, "", note


def draw(results: List[runner.CellResult], path: str) -> None:
    try:
        report.plot(results, path)
    except RuntimeError as e:
        raise SystemExit(f"gearmand-bench: {e}") from None
    print(f"gearmand-bench: plot written to {path}", file=sys.stderr)


def rerender(args: argparse.Namespace) -> None:
    """``--from-json``: table or plot from a saved run."""
    import json

    try:
        with open(args.from_json, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"gearmand-bench: cannot read {args.from_json}: {e}") from None
    results = [runner.CellResult(c["workload"], c["server"], c["threads"], c["rounds"],
                                 c["errors"]) for c in doc["results"]]
    baseline = args.baseline or doc["baseline"]
    meta = doc["meta"]
    if args.json:
        print(report.to_json(results, baseline, meta))
    else:
        print(report.table(results, baseline, int(meta.get("cpus") or os.cpu_count() or 1),
                           meta.get("generator_warning")))
    if args.plot:
        draw(results, args.plot)


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.plot and not report.have_matplotlib():
        raise SystemExit(PLOT_NEEDS)
    if args.from_json:
        rerender(args)
        return
    if args.generator not in (AUTO,) + GENERATORS:
        raise SystemExit(f"gearmand-bench: ${GENERATOR_ENV} must be one of "
                         f"{', '.join((AUTO,) + GENERATORS)}; got {args.generator!r}")
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
    params.unique = params.unique or bool(extra)
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
    # Ratios are "this project / the other server": the first --server is the baseline.
    baseline = args.baseline or (names[1] if not args.no_self and len(names) > 1 else names[0])
    if baseline not in names:
        raise SystemExit(f"gearmand-bench: --baseline {baseline} is not one of {names}")
    note: Optional[str] = None
    if GENERATED.intersection(workloads):
        params.generator, params.loadgen, note = choose_generator(args.generator, args.cc)
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
                             progress=not args.no_progress, keep_going=not args.fail_fast,
                             quiet_wait=args.quiet_wait)
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
        "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg()[0],
        "quiet_wait": args.quiet_wait,
        "generator": params.generator, "capacity_valid": note is None,
        "generator_warning": note,
    }
    if args.json:
        print(report.to_json(results, baseline, meta))
    else:
        print(report.table(results, baseline, os.cpu_count() or 1, note))
        print(f"\n{rounds} round(s), {meta['seconds']} s, {os.cpu_count()} CPUs, load "
              f"{load_start:.2f} at start; {params.generator} generator; medians; ratios "
              f"against {baseline} at the same -t.")
    if note:
        print(f"gearmand-bench: WARNING: {note}: capacity numbers NOT valid", file=sys.stderr)
    if args.plot:
        draw(results, args.plot)
    failed = [c for c in results if c.errors and not c.rounds]
    if failed:
        print(f"gearmand-bench: {len(failed)} cell(s) failed in every round, e.g. "
              f"{failed[0].workload} {failed[0].server} -t {failed[0].threads}: "
              f"{failed[0].errors[0][:300]}", file=sys.stderr)
        raise SystemExit(1)
