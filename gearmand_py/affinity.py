"""``--cpu-affinity=auto``: keep every thread of a ``-t N >= 2`` server on one CPU, and move
them together when another process crowds that CPU.

Thread: the main thread (``pin`` at start-up, before the other threads exist, so they
inherit the mask; ``tick`` from the Listener's loop every ``TICK_INTERVAL`` seconds).

Why: under CPython one thread runs Python at a time, so threads on different CPUs do not
run in parallel; they hand the GIL and the wake-ups of their inboxes to each other, and
on separate CPUs each hand-over is a cross-CPU wake-up.  Measured at ``-t 4`` (native
generator, 2-CPU machine, docs/performance.md): 79 % of the server's samples were in the
kernel's task switching, about 5 context switches and 10 futex calls per foreground job;
on one CPU the server CPU per job fell from 54 to 31 µs (fg) and throughput rose 1.1-1.4x
in fg, drain, ping, bg and 1 MiB jobs.  ``-t 0`` and ``-t 1`` have one busy thread and
are left alone, as is a process whose allowed CPU set has one CPU (taskset, cgroups).

The CPU is the allowed one least busy over ``SAMPLE_S`` at start-up.  Then, every tick,
the load other processes put on our CPU (its busy time minus our own CPU time) is
compared with the least busy other allowed CPU; when ours is worse by ``MOVE_MARGIN`` of
a CPU, every thread moves there (``sched_setaffinity`` on each task of the process).
Pure decisions (``least_busy``, ``better_cpu``) are separate from the /proc reads.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Dict, Optional, Sequence, Set

log = logging.getLogger("gearmand")

AUTO = "auto"
NONE = "none"
MODES = (AUTO, NONE)
TICK_INTERVAL = 2.0   # seconds between re-checks
SAMPLE_S = 0.05       # start-up sample of the CPUs' load
MOVE_MARGIN = 0.5     # CPUs: move when others load ours this much more than the best one
_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_busy_ticks() -> Dict[int, int]:
    """Busy clock ticks per CPU since boot (/proc/stat: all but idle and iowait)."""
    busy: Dict[int, int] = {}
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"cpu") and line[3:4].isdigit():
                name, *values = line.split()
                ticks = [int(v) for v in values[:8]]
                busy[int(name[3:])] = sum(ticks) - ticks[3] - ticks[4]
    return busy


def own_ticks() -> int:
    """This process's CPU time (user + system), in clock ticks."""
    times = os.times()
    return int((times.user + times.system) * _CLK)


def least_busy(before: Dict[int, int], after: Dict[int, int], allowed: Set[int]) -> int:
    """The allowed CPU with the fewest busy ticks between two samples (lowest number on a
    tie)."""
    return min(sorted(allowed), key=lambda c: after.get(c, 0) - before.get(c, 0))


def better_cpu(current: int, busy: Dict[int, int], own: int, allowed: Set[int],
               margin_ticks: float) -> Optional[int]:
    """Where to move from ``current``, given each CPU's busy ticks over the last interval
    and ours (all spent on ``current``); None to stay."""
    others_here = busy.get(current, 0) - own
    candidates = [c for c in sorted(allowed) if c != current]
    if not candidates:
        return None
    best = min(candidates, key=lambda c: busy.get(c, 0))
    return best if others_here - busy.get(best, 0) > margin_ticks else None


class CpuPinner:
    """Pins the process's threads to one CPU and re-checks the choice on ``tick``."""

    def __init__(self, allowed: Set[int]) -> None:
        self.allowed = allowed
        self.cpu = -1
        self._busy: Dict[int, int] = {}
        self._own = 0
        self._next = 0.0

    @classmethod
    def create(cls, mode: str, threads: int) -> Optional["CpuPinner"]:
        """A pinner for ``--cpu-affinity`` and ``-t``, or None when there is nothing to do."""
        if mode != AUTO or threads < 2 or not hasattr(os, "sched_setaffinity"):
            return None
        allowed = set(os.sched_getaffinity(0))
        return cls(allowed) if len(allowed) > 1 else None

    def pin(self) -> None:
        """Start-up (main thread, before the other threads start): choose and pin."""
        try:
            before = cpu_busy_ticks()
            time.sleep(SAMPLE_S)
            after = cpu_busy_ticks()
        except OSError:
            after = before = {}
        self._move(least_busy(before, after, self.allowed))
        self._sample(time.monotonic())

    def tick(self) -> None:
        """Main thread, every TICK_INTERVAL: move every thread if our CPU got crowded."""
        now = time.monotonic()
        if now < self._next:
            return
        last_busy, last_own = self._busy, self._own
        self._sample(now)
        busy = {c: t - last_busy.get(c, t) for c, t in self._busy.items()}
        margin = MOVE_MARGIN * (TICK_INTERVAL * _CLK)
        target = better_cpu(self.cpu, busy, self._own - last_own, self.allowed, margin)
        if target is not None:
            self._move(target)

    def _sample(self, now: float) -> None:
        try:
            self._busy = cpu_busy_ticks()
        except OSError:
            self._busy = {}
        self._own = own_ticks()
        self._next = now + TICK_INTERVAL

    def _move(self, cpu: int) -> None:
        try:
            tasks: Sequence[str] = os.listdir("/proc/self/task")
        except OSError:
            tasks = ["0"]                 # no /proc: this thread (the others inherit it)
        pinned = 0
        for task in tasks:
            try:
                os.sched_setaffinity(int(task), {cpu})
                pinned += 1
            except OSError:       # a thread that just ended; or not permitted: keep going
                pass
        if not pinned:
            log.warning("--cpu-affinity=auto: cannot set the CPU affinity; threads left to "
                        "the kernel")
            self.allowed = {cpu}  # nothing to choose between from now on
        elif self.cpu != cpu:
            log.info("threads pinned to CPU %d (--cpu-affinity=auto)", cpu)
        self.cpu = cpu
