"""--cpu-affinity: with -t N >= 2 every thread of the server shares one CPU, and they move
together when another process crowds it; -t 0/1, --cpu-affinity=none and a process already
restricted to one CPU are left alone.  Real server processes; the masks are read from
/proc/PID/task/*/status.  The decisions themselves are unit-tested on numbers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable, Dict, List

import pytest

from gearmand_py.affinity import better_cpu, least_busy
from support import Server, only_ours, server_env

pytestmark = only_ours
CPUS = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to choose from")


def masks(pid: int) -> Dict[str, str]:
    """Thread name -> Cpus_allowed_list of every task of ``pid``."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/comm") as f:
            name = f.read().strip()
        with open(f"/proc/{pid}/task/{task}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    out[f"{name}/{task}"] = line.split(":", 1)[1].strip()
    return out


def test_least_busy_picks_the_idlest_allowed_cpu() -> None:
    before = {0: 100, 1: 100, 2: 100}
    after = {0: 180, 1: 120, 2: 110}
    assert least_busy(before, after, {0, 1, 2}) == 2
    assert least_busy(before, after, {0, 1}) == 1          # 2 is not allowed
    assert least_busy({}, {}, {3, 1}) == 1                   # no data: the lowest


def test_better_cpu_moves_only_when_others_crowd_ours() -> None:
    margin = 100.0
    # Our CPU is busy with our own work only: stay.
    assert better_cpu(0, {0: 200, 1: 10}, own=190, allowed={0, 1}, margin_ticks=margin) is None
    # Another process takes 150 ticks of ours, the other CPU is idle: move.
    assert better_cpu(0, {0: 340, 1: 10}, own=190, allowed={0, 1}, margin_ticks=margin) == 1
    # Both crowded alike: stay.
    assert better_cpu(0, {0: 340, 1: 150}, own=190, allowed={0, 1}, margin_ticks=margin) \
        is None
    assert better_cpu(0, {0: 999}, own=0, allowed={0}, margin_ticks=margin) is None


@needs_two
def test_threads_share_one_cpu_at_t4(server_factory: Callable[..., Server]) -> None:
    srv = server_factory("-t", "4")
    m = masks(srv.pid)
    assert len(m) == 6, m                                   # main, proc, io-1..io-4
    assert len(set(m.values())) == 1 and "-" not in next(iter(m.values())) \
        and "," not in next(iter(m.values())), m
    with open(srv.log_path) as f:
        assert "threads pinned to CPU" in f.read()


@needs_two
@pytest.mark.parametrize("args", [["-t", "1"], ["-t", "0"], ["-t", "4", "--cpu-affinity",
                                                               "none"]])
def test_left_alone(server_factory: Callable[..., Server], args: List[str]) -> None:
    srv = server_factory(*args)
    for name, mask in masks(srv.pid).items():
        got = sorted(c for part in mask.split(",") for c in _expand(part))
        assert got == CPUS, (name, mask)


def _expand(part: str) -> List[int]:
    lo, _, hi = part.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


@needs_two
def test_moves_off_a_crowded_cpu(server_factory: Callable[..., Server]) -> None:
    srv = server_factory("-t", "2")
    [cpu] = {mask for mask in masks(srv.pid).values()}
    # A busy process on the server's CPU: within a few ticks every thread moves off it.
    hog = subprocess.Popen(["taskset", "-c", cpu, sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            now = set(masks(srv.pid).values())
            if len(now) == 1 and cpu not in now:
                break
            time.sleep(0.2)
        now = set(masks(srv.pid).values())
        assert len(now) == 1 and cpu not in now, (cpu, now)
    finally:
        hog.kill()
        hog.wait()
    with open(srv.log_path) as f:
        assert f.read().count("threads pinned to CPU") == 2


def test_one_allowed_cpu_is_left_alone(tmp_path: "os.PathLike[str]") -> None:
    """Started under taskset to one CPU (an operator's choice), the server keeps that mask
    and does not try to pin."""
    log = os.path.join(str(tmp_path), "g.log")
    proc = subprocess.Popen(["taskset", "-c", str(CPUS[-1]), sys.executable, "-m",
                             "gearmand_py", "-t", "3", "-p", "0", "-L", "127.0.0.1", "-l", log,
                             "--verbose", "INFO"], env=server_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_tasks(proc.pid)) < 5:
            time.sleep(0.05)
        time.sleep(0.3)
        m = masks(proc.pid)
        assert len(m) == 5 and set(m.values()) == {str(CPUS[-1])}, m
        with open(log) as f:
            assert "pinned" not in f.read()
    finally:
        proc.terminate()
        proc.wait(10)


def _tasks(pid: int) -> List[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
