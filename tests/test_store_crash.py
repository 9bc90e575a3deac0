"""SIGKILL under load (issue 9 section 3): what was acknowledged runs after the restart, once.

Per persistent backend: four connections pipeline hundreds of background jobs of mixed
priority over two functions, with foreground jobs and duplicates (same unique, from another
connection: same handle) mixed in; a worker completes some, another grabs one and holds it;
a second pipelined batch adds new jobs, duplicates of queued jobs, of the held job (same
handle) and of completed jobs (a new job); the server is killed with SIGKILL as soon as the
last JOB_CREATED has arrived.  After a restart on the same storage, the first ``status``
already counts every replayed job (replay ends before the first client is served) and a
worker receives exactly the acknowledged, unfinished background jobs (the held one
included), each once, with their data, in priority order per function (every backend of
ours stores the priority: docs/queues.md).  Foreground jobs are never replayed.

The simpler one-connection case is ``test_queue_server.test_replay_after_sigkill``.
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from typing import Callable, Dict, List, Set, Tuple

import pytest
from gearproto import Conn, pack, status
from storeutil import Store, drain, start_server, store_for, wait_gone
from support import Server
from test_queue_contract import memcached_server  # noqa: F401  (a fixture)

BACKENDS = ("libsqlite3", "postgres", "mysql", "redis", "libmemcached", "libtokyocabinet")
#: Backends whose storage another process can read while the server runs (tokyocabinet
#: locks its file).
READABLE = ("libsqlite3", "postgres", "mysql", "redis", "libmemcached")
F1, F2, FH = b"cf1", b"cf2", b"cfh"       # no '-': memcached keys split at the first one
CONNS = 4
BATCH_A = 70                               # per connection
BATCH_B = 20
COMPLETE = 40                              # jobs of F1/F2 a worker completes
BG_CMDS = {"SUBMIT_JOB_HIGH_BG": 0, "SUBMIT_JOB_BG": 1, "SUBMIT_JOB_LOW_BG": 2}
FG_CMDS = ("SUBMIT_JOB", "SUBMIT_JOB_HIGH", "SUBMIT_JOB_LOW")
#: Packets a client connection may receive between its JOB_CREATED answers (its
#: foreground jobs being worked).
WORK_PACKETS = ("WORK_COMPLETE", "WORK_DATA", "WORK_STATUS", "WORK_WARNING", "WORK_FAIL",
                "WORK_EXCEPTION")

Request = Tuple[str, bytes, bytes, bytes]   # command, function, unique, data


class Expect:
    """What the test knows: the background jobs acknowledged and not finished."""

    def __init__(self) -> None:
        #: unique -> (function, priority rank, data) of acknowledged background jobs
        self.live: Dict[bytes, Tuple[bytes, int, bytes]] = {}
        self.handles: Dict[bytes, bytes] = {}          # unique -> handle (bg and fg)
        self.fg: Set[bytes] = set()
        self.lock = threading.Lock()

    def acked(self, req: Request, handle: bytes) -> None:
        cmd, fn, unique, data = req
        with self.lock:
            if unique in self.handles and unique in self.live:
                assert self.handles[unique] == handle, \
                    f"duplicate {unique!r} got {handle!r}, first {self.handles[unique]!r} " \
                    "(or JOB_CREATED out of request order: test_job_created_in_request_order)"
            self.handles[unique] = handle
            if cmd in BG_CMDS:
                self.live.setdefault(unique, (fn, BG_CMDS[cmd], data))
            else:
                self.fg.add(unique)


def pipeline(conn: Conn, reqs: List[Request], expect: Expect,
             errors: List[str]) -> None:
    """Send every request in one write, then read one JOB_CREATED per request in order."""
    try:
        conn.send_raw(b"".join(pack(*r) for r in reqs))
        for req in reqs:
            while True:
                p = conn.recv(30)
                if p.name not in WORK_PACKETS:
                    break
            assert p.name == "JOB_CREATED", f"{req[:3]}: {p!r}"
            expect.acked(req, p.args[0])
    except Exception as exc:   # reported by the main thread
        errors.append(f"{req[:3]!r}: {exc!r}")


def run_batches(conns: List[Conn], batches: List[List[Request]], expect: Expect) -> None:
    errors: List[str] = []
    threads = [threading.Thread(target=pipeline, args=(c, b, expect, errors), daemon=True)
               for c, b in zip(conns, batches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a pipeline did not finish in 60s"
    assert not errors, errors[:5]


@pytest.mark.parametrize("name", BACKENDS)
def test_sigkill_after_last_ack(server_factory: Callable[..., Server],
                                request: pytest.FixtureRequest,
                                tmp_path: "os.PathLike[str]", name: str) -> None:
    store: Store = store_for(name, request, tmp_path)
    rng = random.Random(f"crash-{name}")
    extra = ("-t", "0" if BACKENDS.index(name) % 2 else "2")
    srv = start_server(server_factory, store, *extra)
    expect = Expect()
    conns = [Conn(srv.port, 30) for _ in range(CONNS)]

    # -- batch A: background jobs, foreground jobs and cross-connection duplicates -----
    first: Dict[bytes, Request] = {}
    batches: List[List[Request]] = []
    for k in range(CONNS):
        reqs: List[Request] = []
        for i in range(BATCH_A):
            fn = F1 if i % 2 else F2
            cmd = rng.choice(list(BG_CMDS))
            unique = b"a%dx%d" % (k, i)
            req = (cmd, fn, unique, b"data-%s" % unique)
            first[unique] = req
            reqs.append(req)
            if i % 10 == 3:
                reqs.append((rng.choice(FG_CMDS), F1, b"fa%dx%d" % (k, i), b"fg"))
            if i % 7 == 5:            # a duplicate of another connection's job
                reqs.append(first.get(b"a%dx%d" % ((k + 3) % CONNS, i - 2), req))
        batches.append(reqs)
    for i, cmd in enumerate(BG_CMDS):    # the held job comes from these
        batches[0].append((cmd, FH, b"h%d" % i, b"held-%d" % i))
    run_batches(conns, batches, expect)
    assert len(expect.live) == CONNS * BATCH_A + 3

    # -- a worker completes some jobs, another grabs one and holds it ------------------
    completed: List[bytes] = []
    with Conn(srv.port) as w:
        w.send("CAN_DO", F1)
        w.send("CAN_DO", F2)
        for _ in range(COMPLETE):
            w.send("GRAB_JOB_UNIQ")
            p = w.expect("JOB_ASSIGN_UNIQ")
            handle, _fn, unique, _data = p.args
            completed.append(unique)
            w.send("WORK_COMPLETE", handle, b"ok")
        w.send("GRAB_JOB_UNIQ")     # answered after every WORK_COMPLETE was handled
        assert w.recv().name in ("JOB_ASSIGN_UNIQ", "NO_JOB")
    holder = Conn(srv.port)
    holder.send("CAN_DO", FH)
    holder.send("GRAB_JOB_UNIQ")
    held = holder.expect("JOB_ASSIGN_UNIQ")
    held_handle, _, held_unique, _ = held.args
    assert held_unique == b"h0", held            # the HIGH one
    finished_bg = [u for u in completed if u in expect.live]
    assert finished_bg, completed
    with expect.lock:
        for u in finished_bg:
            del expect.live[u]
    # Every done() has been stored before the next job is acknowledged (one store, in
    # order); where another process can read the storage, check it directly too.
    with Conn(srv.port) as c:
        c.send("SUBMIT_JOB_BG", F2, b"barrier", b"b")
        expect.acked(("SUBMIT_JOB_BG", F2, b"barrier", b"b"), c.expect("JOB_CREATED").args[0])
    if name in READABLE:
        wait_gone(store, [(first[u][1], u) for u in finished_bg])

    # -- batch B: new jobs, duplicates of queued, held and completed jobs --------------
    queued = [u for u in first if u in expect.live]
    batches = []
    resubmitted: Dict[bytes, Request] = {}
    for k in range(CONNS):
        reqs = []
        for i in range(BATCH_B):
            unique = b"b%dx%d" % (k, i)
            reqs.append((rng.choice(list(BG_CMDS)), F1 if i % 2 else F2, unique,
                         b"data-%s" % unique))
            if i % 5 == 0:
                reqs.append(first[rng.choice(queued)])            # same handle
                reqs.append((rng.choice(FG_CMDS), F2, b"fb%dx%d" % (k, i), b"fg"))
        if k < len(finished_bg):                                  # a new job again
            old = first[finished_bg[k]]
            new_cmd = [c for c in BG_CMDS if c != old[0]][k % 2]
            again = (new_cmd, old[1], old[2], b"again-%s" % old[2])
            resubmitted[old[2]] = again
            reqs.append(again)
        reqs.append(("SUBMIT_JOB_BG", FH, held_unique, b"held-dup"))   # the held job
        batches.append(reqs)
    old_handles = {u: expect.handles[u] for u in resubmitted}
    run_batches(conns, batches, expect)
    # ---- kill -9 right after the last acknowledgement --------------------------------
    srv.proc.kill()
    srv.proc.wait(10)

    for u in resubmitted:
        assert expect.handles[u] != old_handles[u], f"completed {u!r} got its old handle"
    assert expect.handles[held_unique] == held_handle, "the held job's duplicate"
    live = dict(expect.live)
    for c in [*conns, holder]:
        c.close()

    # -- restart: exactly the acknowledged, unfinished jobs, once, by priority ---------
    srv = start_server(server_factory, store, *extra)
    first_status = status(srv.port)
    want = Counter(fn.decode() for fn, _, _ in live.values())
    got_status = {fn: first_status.get(fn, (0,))[0] for fn in want}
    assert got_status == dict(want), \
        f"first status after the restart {first_status}, want {dict(want)}"
    replayed = drain(srv.port, [F1, F2, FH], timeout=60, idle=0.5)
    counts = Counter(u for _, u, _ in replayed)
    assert [u for u, n in counts.items() if n > 1] == [], "jobs replayed more than once"
    lost = sorted(set(live) - set(counts))
    assert not lost, f"{len(lost)} acknowledged unfinished jobs lost: {lost[:10]}"
    extra_jobs = sorted(set(counts) - set(live))
    assert not extra_jobs, f"{len(extra_jobs)} jobs replayed that were finished, " \
        f"foreground or never acknowledged: {extra_jobs[:10]}"
    for fn, unique, data in replayed:
        assert (fn, data) == (live[unique][0], live[unique][2]), (fn, unique, data)
    for fn in (F1, F2, FH):
        ranks = [live[u][1] for f, u, _ in replayed if f == fn]
        assert ranks == sorted(ranks), f"{fn!r} replayed out of priority order: {ranks}"
    srv.stop()
    leftover = store.stored()
    assert leftover == {}, f"{len(leftover)} rows left after every job completed"



@pytest.mark.parametrize("name", BACKENDS)
def test_job_created_in_request_order(server_factory: Callable[..., Server],
                                      request: pytest.FixtureRequest,
                                      tmp_path: "os.PathLike[str]", name: str) -> None:
    """A pipelining client matches JOB_CREATED to its submits by order (the protocol has
    no request ids), so a duplicate of a stored job is answered after the new jobs sent
    before it, even though it needs no store write."""
    store = store_for(name, request, tmp_path)
    srv = start_server(server_factory, store, "-t", "2")
    with Conn(srv.port, 30) as c:
        c.send("SUBMIT_JOB_BG", F1, b"y", b"d")
        old = c.expect("JOB_CREATED").args[0]
        reqs = [("SUBMIT_JOB_BG", F1, b"x%d" % i, b"d") for i in range(20)]
        reqs.insert(10, ("SUBMIT_JOB_BG", F1, b"y", b"d"))
        reqs.append(("SUBMIT_JOB", F2, b"fg", b"d"))
        c.send_raw(b"".join(pack(*r) for r in reqs))
        handles = [c.expect("JOB_CREATED").args[0] for _ in reqs]
    assert handles.index(old) == 10, f"the duplicate answered at {handles.index(old)} of " \
        f"{len(handles)}: {handles[:3]}..."
    fresh = handles[:10] + handles[11:]
    assert len(set(fresh)) == len(fresh) and old not in fresh, handles
