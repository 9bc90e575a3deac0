"""glibc allocator tuning for a server that moves large payloads: ``tune`` on the main thread
at start-up, ``trim`` on an I/O thread after it freed a large backlog.

Measured with gearmand-bench (docs/performance.md): glibc serves each 1 MiB buffer with its
own mmap/munmap once the dynamic mmap threshold is not yet raised, and per-thread arenas
keep that from settling; 1 MiB jobs ran at ~230 MB/s at -t 1 and ~1,200 MB/s with a fixed
threshold and one arena.  The GIL already serialises allocation, so one arena costs nothing.
An operator's own MALLOC_* environment settings win: nothing is changed then.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Optional

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

#: Buffers below this come from the heap, not from a fresh mmap each time.
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory kept at the top of the heap before it is returned to the OS.
TRIM_THRESHOLD = 64 * 1024 * 1024
ARENAS = 1


def tune() -> bool:
    """Apply the settings above; False when not glibc or the operator set MALLOC_*."""
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    ok = True
    for param, value in ((M_ARENA_MAX, ARENAS), (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                         (M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        ok = bool(mallopt(param, value)) and ok
    return ok


def trim() -> None:
    """Return free heap memory to the OS now (after a large buffer was freed); best effort.
    Runs on whichever I/O thread freed it (the GIL serialises it with other allocation)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=None)
def _libc() -> Optional[ctypes.CDLL]:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
