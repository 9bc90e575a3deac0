"""gearmand_py.mailbox.Mailbox: FIFO order, the wake-byte rule, many producers, close.

The wake rule checked here: the first put after a drain (or after creation) writes exactly
one byte to the wake pipe; later puts before the next drain write none; a drain empties the
pipe, so the read end is no longer readable.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import List, Set, Tuple

from gearmand_py.mailbox import Mailbox


def readable(mb: Mailbox) -> bool:
    r, _, _ = select.select([mb.fileno()], [], [], 0)
    return bool(r)


def pipe_bytes(mb: Mailbox) -> bytes:
    """Read (and so consume) whatever the wake pipe holds."""
    try:
        return os.read(mb.fileno(), 4096)
    except BlockingIOError:
        return b""


def test_put_drain_fifo() -> None:
    mb = Mailbox()
    try:
        items = [(n, "x" * (n % 3)) for n in range(500)]
        for item in items:
            mb.put(item)
        assert mb.drain() == items
        assert mb.drain() == []
        mb.put(("a",))
        mb.put(("b",))
        assert mb.drain() == [("a",), ("b",)]
    finally:
        mb.close()


def test_fresh_mailbox_is_not_readable() -> None:
    mb = Mailbox()
    try:
        assert not readable(mb)
        assert not os.get_blocking(mb.fileno())
        assert mb.drain() == []                  # empty drain returns at once
        assert not readable(mb)
    finally:
        mb.close()


def test_first_put_writes_one_wake_byte_later_puts_none() -> None:
    mb = Mailbox()
    try:
        mb.put(1)
        assert readable(mb)
        for n in range(2, 50):
            mb.put(n)
        assert pipe_bytes(mb) == b"\0"           # exactly one byte for 49 puts
        assert not readable(mb)
        mb.put(50)                               # still armed: no new byte
        assert not readable(mb)
        assert mb.drain() == list(range(1, 51))
    finally:
        mb.close()


def test_drain_clears_readability_and_rearms() -> None:
    mb = Mailbox()
    try:
        for round_no in range(3):
            mb.put(("m", round_no))
            mb.put(("n", round_no))
            assert readable(mb)
            assert mb.drain() == [("m", round_no), ("n", round_no)]
            assert not readable(mb)
            assert pipe_bytes(mb) == b""
        mb.put("again")
        assert pipe_bytes(mb) == b"\0"
    finally:
        mb.close()


def test_many_producers_lose_nothing_and_owner_never_misses_a_wake() -> None:
    threads_n, per_thread = 8, 10_000
    total = threads_n * per_thread
    mb = Mailbox()
    start = threading.Barrier(threads_n + 1)

    def produce(tid: int) -> None:
        start.wait()
        put = mb.put
        for seq in range(per_thread):
            put((tid, seq))

    producers = [threading.Thread(target=produce, args=(t,), daemon=True)
                 for t in range(threads_n)]
    for t in producers:
        t.start()
    got: List[Tuple[int, int]] = []
    next_seq = [0] * threads_n
    deadline = time.monotonic() + 30
    try:
        start.wait()
        while len(got) < total:
            # Drain only when the pipe says so: a lost wake byte would stall here.
            wait = deadline - time.monotonic()
            assert wait > 0, f"timed out with {len(got)} of {total} items"
            r, _, _ = select.select([mb.fileno()], [], [], min(wait, 5.0))
            assert r, f"no wake byte while {total - len(got)} items were still due"
            batch = mb.drain()
            for tid, seq in batch:
                assert seq == next_seq[tid], f"thread {tid}: got {seq}, expected {next_seq[tid]}"
                next_seq[tid] += 1
            got.extend(batch)
        for t in producers:
            t.join(5)
            assert not t.is_alive()
        assert len(got) == total
        assert next_seq == [per_thread] * threads_n
        assert mb.drain() == []
        assert not readable(mb)
    finally:
        mb.close()


def _fds_on(target: str) -> Set[int]:
    """This process's fds whose /proc link is ``target`` (e.g. "pipe:[1234]")."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == target:
                found.add(int(name))
        except OSError:                          # the listing's own fd, already closed
            pass
    return found


def test_close_closes_both_fds() -> None:
    mb = Mailbox()
    rfd = mb.fileno()
    pipe = os.readlink(f"/proc/self/fd/{rfd}")
    assert pipe.startswith("pipe:")
    ends = _fds_on(pipe)
    assert len(ends) == 2 and rfd in ends        # read end + write end of one pipe
    mb.close()
    assert _fds_on(pipe) == set()
    for fd in ends:
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue                             # closed, as it should be
        assert link != pipe
    mb.close()                                   # a second close is harmless
