"""Issue 3: gearmand-bench runs and its JSON parses (CI checks it works, not speed).

Runs ``python -m gearmand_py.bench --quick --json`` as a subprocess against C gearmand and,
when this project's server is runnable, against ours too; also unit-tests the packet code
and option handling without any server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Any, Dict, List

import pytest

from support import C_GEARMAND, require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = ["fg", "bg", "drain", "big", "idle", "mem", "status"]


def run_bench(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "gearmand_py.bench", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def check_results(doc: Dict[str, Any], servers: List[str], threads: List[int]) -> None:
    assert doc["meta"]["quick"] is True
    cells = doc["results"]
    for name in servers:
        for w in ALL:
            mine = [c for c in cells if c["server"] == name and c["workload"] == w]
            assert mine, (name, w)
            for c in mine:
                assert not c["errors"], c
                assert c["value"] is not None and c["value"] > 0, c
                assert len(c["rounds"]) == 1
                assert c["ratio"] is not None and c["ratio"] > 0
        for w in ("fg", "bg", "drain", "big"):
            got = sorted(c["threads"] for c in cells if c["server"] == name and c["workload"] == w)
            assert got == sorted(threads)
    fg = [c for c in cells if c["workload"] == "fg"]
    assert all(c["median"]["p99_ms"] >= c["median"]["p50_ms"] > 0 for c in fg)
    idle = [c for c in cells if c["workload"] == "idle"]
    assert all(c["median"]["held"] == c["median"]["opened"] for c in idle)


@pytest.mark.timeout(120)
def test_issue3_bench_quick_json_c_gearmand() -> None:
    require(C_GEARMAND, "gearmand-bench runs against C gearmand")
    proc = run_bench("--quick", "--json", "--no-self", "--server", f"c={C_GEARMAND}",
                     "-t", "0,2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    check_results(doc, ["c"], [0, 2])
    assert doc["baseline"] == "c"
    assert "round 1/1" in proc.stderr  # the progress line


def _ours_runnable() -> bool:
    return importlib.util.find_spec("gearmand_py.__main__") is not None


@pytest.mark.timeout(180)
def test_issue3_bench_quick_json_ours_and_c() -> None:
    require(C_GEARMAND, "gearmand-bench compares against C gearmand")
    if not _ours_runnable():
        pytest.skip("this project's server has no __main__ yet")
    proc = run_bench("--quick", "--json", "--server", f"c={C_GEARMAND}", "--baseline", "c")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    check_results(doc, ["py", "c"], [0, 2])
    assert doc["baseline"] == "c"


def test_issue3_bench_table_and_plot(tmp_path: Any) -> None:
    require(C_GEARMAND, "gearmand-bench runs against C gearmand")
    png = tmp_path / "bench.png"
    args = ["--quick", "--no-self", "--server", f"c={C_GEARMAND}", "-t", "0",
            "-w", "fg,bg", "--no-progress"]
    has_mpl = importlib.util.find_spec("matplotlib") is not None
    proc = run_bench(*args, "--plot", str(png))
    if not has_mpl:
        assert proc.returncode != 0 and "matplotlib" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| fg (jobs/s) | 0 | c |" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_issue3_bench_rejects_bad_options() -> None:
    for args in (["--workloads", "nope"], ["--no-self"], ["--server", "c"],
                 ["--server", "perl=/usr/bin/gearmand"], ["--set", "bogus=1"],
                 ["--threads", "a,b"]):
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
