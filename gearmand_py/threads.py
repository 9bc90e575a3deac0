"""ServiceThread: the base of the "io-N" and "proc" threads.

It names the OS thread (so ``top -H`` and /proc/PID/task/*/comm show the role) and reports a
crash to the supervisor instead of dying silently.  Runs on the thread it starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Callable, Optional

_PR_SET_NAME = 15
_libc: Optional[ctypes.CDLL]
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - not Linux/glibc
    _libc = None


def set_native_name(name: str) -> None:
    """Best effort: name the calling OS thread (15 bytes max, Linux prctl)."""
    if _libc is not None:
        try:
            _libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
        except (AttributeError, OSError):
            pass


class ServiceThread(threading.Thread):
    def __init__(self, name: str, target: Callable[[], None],
                 on_crash: Callable[[BaseException], None]) -> None:
        super().__init__(name=name, daemon=True)
        self._work = target
        self._on_crash = on_crash

    def run(self) -> None:
        set_native_name(self.name)
        try:
            self._work()
        except BaseException as exc:  # noqa: BLE001 - reported to the supervisor
            self._on_crash(exc)
