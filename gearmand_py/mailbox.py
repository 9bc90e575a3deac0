"""Mailbox: the inbox of a selector-driven thread (an I/O thread, or the main thread's
Listener): a ``SimpleQueue`` plus a self-pipe whose read end the owner's selector watches.

Any thread may ``put`` (messages are the tuples of messages.py); only the owning thread
``drain``s.  The wake byte is written only when the inbox goes from idle to non-empty (the
``_armed`` flag), so a busy consumer costs producers no syscalls.  Correctness: producers
put, then test the flag; the consumer empties the pipe, then clears the flag, then drains -
so an item is never left behind with the flag set and no wake byte pending.
"""

from __future__ import annotations

import os
import queue
from typing import Any, List


class Mailbox:
    """Inbox for a selector-driven thread; register ``fileno()`` for reading."""

    __slots__ = ("_queue", "_rfd", "_wfd", "_armed")

    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._armed = False

    def fileno(self) -> int:
        return self._rfd

    def put(self, item: Any) -> None:
        self._queue.put(item)
        if not self._armed:
            self._armed = True
            try:
                os.write(self._wfd, b"\0")
            except BlockingIOError:  # pipe full: a wake is already pending
                pass

    def drain(self) -> List[Any]:
        """Everything queued so far (owner thread only)."""
        try:
            os.read(self._rfd, 4096)
        except BlockingIOError:
            pass
        self._armed = False
        items = []
        get = self._queue.get_nowait
        try:
            while True:
                items.append(get())
        except queue.Empty:
            pass
        return items

    def close(self) -> None:
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass
