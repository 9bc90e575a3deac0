"""Issues 3, 8 and 11: gearmand-bench runs, its JSON parses, and its numbers say what
limited them (CI checks the tool works, not speed).

Runs ``python -m gearmand_py.bench --quick --json`` as a subprocess with the native
generator (built by the test into a temporary cache) against this project's server and C
gearmand, the Python fallback without a compiler, and ``--plot`` without matplotlib; also
unit-tests the packet code, the build cache and option handling without any server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List

import pytest

from support import C_GEARMAND, IN_CI, require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = ["fg", "bg", "drain", "ping", "big", "flood", "idle", "mem", "status"]
SWEEP = ["fg", "bg", "drain", "ping", "big", "flood"]
BOUNDS = {"server", "server, machine full", "GENERATOR!", "STARVED!", "MACHINE!", "latency"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: Any) -> str:
    """A private XDG cache, so the test builds the generator itself."""
    return str(tmp_path_factory.mktemp("xdg-cache"))


def run_bench(*args: str, timeout: float = 120.0, env: Any = None,
              cache_home: str = "") -> subprocess.CompletedProcess:
    full = dict(os.environ)
    full["PYTHONPATH"] = ROOT + os.pathsep + full.get("PYTHONPATH", "")
    full.pop("GEARMAND_BENCH_GENERATOR", None)
    if cache_home:
        full["XDG_CACHE_HOME"] = cache_home
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "gearmand_py.bench", *args],
                          capture_output=True, text=True, timeout=timeout, env=full, cwd=ROOT)


def check_results(doc: Dict[str, Any], servers: List[str], threads: List[int],
                  workloads: List[str] = ALL) -> None:
    assert doc["meta"]["quick"] is True
    cells = doc["results"]
    for name in servers:
        for w in workloads:
            mine = [c for c in cells if c["server"] == name and c["workload"] == w]
            assert mine, (name, w)
            for c in mine:
                assert not c["errors"], c
                assert c["value"] is not None and c["value"] > 0, c
                assert len(c["rounds"]) == 1
                assert c["ratio"] is not None and c["ratio"] > 0
                assert c["better"] in ("higher is better", "lower is better")
        for w in set(SWEEP) & set(workloads):
            got = sorted(c["threads"] for c in cells if c["server"] == name and c["workload"] == w)
            assert got == sorted(threads)
    for c in cells:
        if c["workload"] in ("idle", "mem"):
            assert c["bound"] == "" and c["server_us_per_job"] is None
            continue
        # Every throughput row: server CPU per job, generator CPU, and what was saturated.
        assert c["server_us_per_job"] is not None and c["server_us_per_job"] >= 0, c
        assert c["gen_us_per_job"] is not None and c["gen_us_per_job"] > 0, c
        assert c["bound"] in BOUNDS, c
        assert set(c["saturated"]) == {"generator", "server", "server_demand", "machine"}
        assert c["median"]["server_demand"] >= c["median"]["server_cpu"]
        assert c["cpu_ratio_better"] == "lower is better"
    fg = [c for c in cells if c["workload"] == "fg"]
    assert all(c["median"]["p99_ms"] >= c["median"]["p50_ms"] > 0 for c in fg)
    idle = [c for c in cells if c["workload"] == "idle"]
    assert all(c["median"]["held"] == c["median"]["opened"] for c in idle)
    mem = [c for c in cells if c["workload"] == "mem"]
    assert all(c["better"] == "lower is better" for c in mem)


@pytest.mark.timeout(120)
def test_issue9_bench_durable_queue_against_c(cache: str) -> None:
    """bg, drain and flood with a Postgres queue, against C gearmand: every submit carries
    its own unique id, so C's module (which stores an empty unique as is and refuses the
    second) answers every one; the flood reports what fg kept."""
    require(C_GEARMAND, "the durable benchmark compares against C gearmand")
    table = "bench_t{port}"
    proc = run_bench("--quick", "--json", "-t", "0", "-w", "bg,drain,flood", "--no-progress",
                     "--server", f"c={C_GEARMAND}", "--queue-args",
                     "-q Postgres --libpq-conninfo='host=127.0.0.1 user=postgres dbname=test' "
                     f"--libpq-table={table}", cache_home=cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    check_results(doc, ["py", "c"], [0], ["bg", "drain", "flood"])
    for c in doc["results"]:
        med = c["median"]
        assert med.get("errors", 0) == 0 and med.get("flood_errors", 0) == 0, c
        if c["workload"] == "bg":
            assert med["jobs"] == 5_000, c      # --quick's bg_jobs, all JOB_CREATED
        if c["workload"] == "flood":
            assert med["flood_submits_s"] > 0 and 0 < med["kept"], c
    import psycopg2
    with psycopg2.connect("host=127.0.0.1 user=postgres dbname=test") as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'bench_t%'")
        for (name,) in cur.fetchall():
            cur.execute(f'DROP TABLE "{name}"')


@pytest.mark.timeout(120)
def test_issue8_bench_native_quick_ours_and_c(cache: str) -> None:
    """The C generator builds and drives a --quick sweep of this project's server and, when
    installed (always in CI), C gearmand; ratios are ours / C."""
    servers = ["py"]
    args = ["--quick", "--json", "-t", "0,2", "--generator", "native"]
    if os.path.exists(C_GEARMAND) or IN_CI:
        require(C_GEARMAND, "gearmand-bench compares against C gearmand")
        args += ["--server", f"c={C_GEARMAND}"]
        servers.append("c")
    proc = run_bench(*args, cache_home=cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "WARNING" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["meta"]["generator"] == "native" and doc["meta"]["capacity_valid"] is True
    check_results(doc, servers, [0, 2])
    assert doc["baseline"] == servers[-1]
    assert "round 1/1" in proc.stderr  # the progress line
    built = os.listdir(os.path.join(cache, "gearmand-py"))
    assert len(built) == 1 and built[0].startswith("loadgen-"), built


def test_issue8_bench_table_marks(cache: str) -> None:
    """The table carries CPU per job, the better direction and the bound legend."""
    proc = run_bench("--quick", "-t", "0", "-w", "fg,ping", "--no-progress",
                     "--quiet-wait", "0.2", cache_home=cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cores busy before" in proc.stdout
    head = "| workload | -t | server | median | ratio to py | server CPU µs/job |"
    assert head in proc.stdout
    assert "| fg (jobs/s) | 0 | py |" in proc.stdout
    assert "bound: " in proc.stdout and "native generator" in proc.stdout


def test_issue8_bench_no_compiler_falls_back_loudly(tmp_path: Any) -> None:
    """Without a C compiler: the Python generator, and a warning on stderr, in the table
    header and in the JSON that the capacity numbers are not valid."""
    env = {"CC": "/nonexistent/cc"}
    proc = run_bench("--quick", "--json", "-t", "0", "-w", "fg,ping", "--no-progress",
                     env=env, cache_home=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "WARNING: no native load generator (no C compiler (/nonexistent/cc)" in proc.stderr
    assert "capacity numbers (rates, ratios) of this run are NOT valid" in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["meta"]["generator"] == "python" and doc["meta"]["capacity_valid"] is False
    assert "/nonexistent/cc" in doc["meta"]["generator_warning"]
    check_results(doc, ["py"], [0], ["fg", "ping"])
    run = tmp_path / "run.json"
    run.write_text(proc.stdout)
    table = run_bench("--from-json", str(run))
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("**WARNING: no native load generator")
    assert "NOT valid" in table.stdout.splitlines()[0]
    forced = run_bench("--generator", "native", "-w", "fg", "-t", "0", env=env,
                       cache_home=str(tmp_path))
    assert forced.returncode == 1 and "Traceback" not in forced.stderr
    assert "cannot build the native load generator" in forced.stderr


def test_issue8_loadgen_cache_rebuilds_on_change(tmp_path: Any) -> None:
    from gearmand_py.bench import native

    src = tmp_path / "loadgen.c"
    with open(native.SOURCE, encoding="utf-8") as f:
        text = f.read()
    src.write_text(text)
    first = native.binary(source=str(src), directory=str(tmp_path / "c"))
    assert native.binary(source=str(src), directory=str(tmp_path / "c")) == first
    src.write_text(text + "\n/* changed */\n")
    second = native.binary(source=str(src), directory=str(tmp_path / "c"))
    assert second != first and os.access(second, os.X_OK)
    warnings = subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-fsyntax-only",
                               native.SOURCE], capture_output=True, text=True, timeout=60)
    assert warnings.returncode == 0 and warnings.stderr == "", warnings.stderr
    src.write_text("int main(void) { return syntax error; }\n")
    with pytest.raises(native.BuildError, match="failed"):
        native.binary(source=str(src), directory=str(tmp_path / "c"))


def _saved_run(tmp_path: Any) -> str:
    doc = {"baseline": "c", "meta": {"cpus": 2}, "results": [
        {"workload": "fg", "server": s, "threads": 0, "errors": [],
         "rounds": [{"jobs_s": v, "server_cpu": 0.95, "gen_cpu": 0.5, "gen_cpu_max": 0.5,
                     "machine_cpu": 1.5, "server_us": 1e6 / v, "gen_us": 20.0}]}
        for s, v in (("py", 10_000.0), ("c", 25_000.0))]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_issue11_plot_without_matplotlib_one_line(tmp_path: Any) -> None:
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text(
        "raise ImportError('No module named matplotlib (test stub)')\n")
    saved = _saved_run(tmp_path)
    env = {"PYTHONPATH": str(fake) + os.pathsep + ROOT}
    for extra in (["--from-json", saved], ["-w", "fg", "-t", "0"]):
        proc = run_bench(*extra, "--plot", str(tmp_path / "x.png"), env=env)
        assert proc.returncode == 1, proc
        assert proc.stderr == ("gearmand-bench: --plot needs matplotlib "
                               "(pip install 'gearmand-py[bench]')\n"), proc.stderr
        assert proc.stdout == ""
        assert not (tmp_path / "x.png").exists()


def test_issue11_ratio_column_says_which_way_is_better(tmp_path: Any) -> None:
    proc = run_bench("--from-json", _saved_run(tmp_path))
    assert proc.returncode == 0, proc.stderr
    row = [ln for ln in proc.stdout.splitlines() if ln.startswith("| fg (jobs/s) | 0 | py")][0]
    assert "| 0.40x (higher is better) | 100 | 2.50x (lower is better) |" in row, row
    assert "| server |" in row


def test_issue3_bench_table_and_plot(tmp_path: Any, cache: str) -> None:
    pytest.importorskip("matplotlib", reason="the no-matplotlib path is tested above")
    png = tmp_path / "bench.png"
    proc = run_bench("--quick", "-t", "0", "-w", "fg,bg", "--no-progress", "--plot", str(png),
                     cache_home=cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| fg (jobs/s) | 0 | py |" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_issue3_bench_rejects_bad_options() -> None:
    for args in (["--workloads", "nope"], ["--no-self"], ["--server", "c"],
                 ["--server", "perl=/usr/bin/gearmand"], ["--set", "bogus=1"],
                 ["--threads", "a,b"], ["--generator", "fast"], ["--native-procs", "0"]):
        proc = run_bench(*args, timeout=30)
        assert proc.returncode != 0, args
        assert "Traceback" not in proc.stderr, proc.stderr


def test_issue3_bench_proto_split() -> None:
    from gearmand_py.bench import proto

    pkt = proto.HEADER.pack(proto.RES, proto.JOB_CREATED, 3) + b"H:1"
    buf = bytearray(pkt * 2 + pkt[:5])
    pkts, used = proto.split(buf, len(buf))
    assert [p[0] for p in pkts] == [proto.JOB_CREATED] * 2
    assert used == 2 * len(pkt)
    assert bytes(buf[pkts[1][1]:pkts[1][2]]) == b"H:1"
    assert proto.needed(bytearray(pkt[:5]), 5) == 12
    assert proto.needed(bytearray(pkt[:13]), 13) == len(pkt)
    with pytest.raises(ValueError):
        proto.split(bytearray(b"\0REQ" + pkt[4:]), len(pkt))
    assert proto.submit(b"f", b"d", background=True) == (
        proto.HEADER.pack(proto.REQ, proto.SUBMIT_JOB_BG, 4) + b"f\0\0d")
