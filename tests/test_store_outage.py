"""Store outages (issue 9 section 2): the database goes away or hangs under a running server.

Each network backend is reached through a :class:`tcpproxy.TcpProxy` that the test cuts
(every connection reset, connects refused) or stalls (connections open, no byte moves) for
``OUTAGE_S`` seconds and then restores.  Meanwhile:

* a prober sends ECHO and admin ``status`` every 100 ms on long-lived connections and ECHO
  on a fresh connection every 500 ms; a client/worker pair runs foreground jobs of an
  in-memory function: none of that may stall for ``MAX_STALL_S`` or more;
* a submitter sends a background job every 250 ms on its own connection: each is answered
  within ``--queue-timeout`` + 1 s, by JOB_CREATED or by ``ERROR QUEUE_ERROR <-q name>...``,
  and never by JOB_CREATED before the store is back (it cannot have been stored);
* after ``restore()`` background submits succeed again within a few seconds, and the log has
  exactly one line containing ``lost`` and one containing ``restored``;
* then SIGKILL and a restart on the same storage: a worker receives every acknowledged,
  unfinished job exactly once, and replay has finished before the first client is served.

Every job has its own unique key, so what was acknowledged is known by unique.  A job
refused by timeout is in doubt: its write may still commit when the store comes back (the
stalled bytes are delivered), so it may replay too, at most once; nothing else may.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from gearproto import Closed, Conn, status, wait_for
from storeutil import NETWORK, Store, drain, start_server, store_for, wait_gone
from support import Server
from tcpproxy import TcpProxy
from test_queue_contract import memcached_server  # noqa: F401  (a fixture)

QUEUE_TIMEOUT = 2          # --queue-timeout for these servers (default 5)
OUTAGE_S = 3.0
MAX_STALL_S = 1.0          # what does not need the store never waits this long
RECOVER_S = 8.0            # submits succeed again this soon after restore()
PROBE_TIMEOUT = 5.0        # a probe that got no answer counts as a stall this long
FG = b"ofg"                # in-memory function with a worker (foreground jobs)
BG = b"obg"                # background jobs, no worker until the restart
BG_DONE = b"obgd"          # background jobs completed before the outage

MODES = ("cut", "stall")


class Latencies:
    """(start, seconds, what) samples from several threads."""

    def __init__(self) -> None:
        self.samples: List[Tuple[float, float, str]] = []
        self.lock = threading.Lock()

    def add(self, start: float, what: str) -> None:
        with self.lock:
            self.samples.append((start, time.monotonic() - start, what))

    def add_fixed(self, start: float, seconds: float, what: str) -> None:
        with self.lock:
            self.samples.append((start, seconds, what))

    def worst(self, since: float = 0.0, kind: str = "") -> Tuple[float, str]:
        with self.lock:
            rows = [(lat, what) for t, lat, what in self.samples
                    if t >= since and what.startswith(kind)]
        return max(rows, default=(0.0, "no samples"))

    def count(self, since: float, until: float, kind: str) -> int:
        with self.lock:
            return sum(1 for t, _, what in self.samples
                       if since <= t <= until and what.startswith(kind))


class Loop(threading.Thread):
    """A daemon thread running ``step`` every ``interval`` until ``stop()``."""

    def __init__(self, name: str, interval: float, lat: Latencies) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.lat = lat
        self.halt = threading.Event()
        self.failures: List[str] = []

    def step(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.monotonic()
            try:
                self.step()
            except (OSError, Closed, AssertionError) as exc:
                self.failures.append(f"{self.name}: {exc!r}")
                self.lat.add_fixed(started, max(time.monotonic() - started, PROBE_TIMEOUT),
                                   f"{self.name} failed: {exc!r}")
                self.reconnect()
            self.halt.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def reconnect(self) -> None:
        pass

    def stop(self) -> None:
        self.halt.set()
        self.join(PROBE_TIMEOUT * 2 + 5)
        assert not self.is_alive(), f"{self.name} did not stop"


class Prober(Loop):
    """ECHO and ``status`` every 100 ms; ECHO on a new connection every 5th round."""

    def __init__(self, port: int, lat: Latencies) -> None:
        super().__init__("probe", 0.1, lat)
        self.port = port
        self.round = 0
        self.echo: Optional[Conn] = None
        self.adm: Optional[Conn] = None

    def reconnect(self) -> None:
        for c in (self.echo, self.adm):
            if c is not None:
                c.close()
        self.echo = self.adm = None

    def step(self) -> None:
        if self.echo is None or self.adm is None:
            self.echo = Conn(self.port, PROBE_TIMEOUT)
            self.adm = Conn(self.port, PROBE_TIMEOUT)
        self.round += 1
        payload = b"probe%d" % self.round
        t = time.monotonic()
        self.echo.send("ECHO_REQ", payload)
        assert self.echo.expect("ECHO_RES").payload == payload
        self.lat.add(t, "probe echo")
        t = time.monotonic()
        reply = self.adm.admin("status")
        assert reply.endswith(b".\n"), reply
        self.lat.add(t, "probe status")
        if self.round % 5 == 0:
            t = time.monotonic()
            with Conn(self.port, PROBE_TIMEOUT) as fresh:
                fresh.send("ECHO_REQ", b"new")
                assert fresh.expect("ECHO_RES").payload == b"new"
            self.lat.add(t, "probe new-connection echo")


class FgClient(Loop):
    """A foreground job of FG every 100 ms, submit to WORK_COMPLETE."""

    def __init__(self, port: int, lat: Latencies) -> None:
        super().__init__("fg", 0.1, lat)
        self.port = port
        self.n = 0
        self.conn: Optional[Conn] = None

    def reconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def step(self) -> None:
        if self.conn is None:
            self.conn = Conn(self.port, PROBE_TIMEOUT)
        self.n += 1
        data = b"fg%d" % self.n
        t = time.monotonic()
        self.conn.send("SUBMIT_JOB", FG, b"fgu%d" % self.n, data)
        handle = self.conn.expect("JOB_CREATED").args[0]
        done = self.conn.expect("WORK_COMPLETE")
        assert done.args == [handle, data[::-1]], done
        self.lat.add(t, "fg job")


class FgWorker(threading.Thread):
    """Completes FG jobs (reversed data), sleeping with PRE_SLEEP between them."""

    def __init__(self, port: int) -> None:
        super().__init__(name="fg-worker", daemon=True)
        self.conn = Conn(port, PROBE_TIMEOUT)
        self.conn.send("CAN_DO", FG)
        self.halt = threading.Event()
        self.failures: List[str] = []

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self.conn.send("GRAB_JOB")
                p = self.conn.recv(PROBE_TIMEOUT)
                if p.name == "JOB_ASSIGN":
                    handle, _fn, data = p.args
                    self.conn.send("WORK_COMPLETE", handle, data[::-1])
                    continue
                assert p.name == "NO_JOB", p
                self.conn.send("PRE_SLEEP")
                while not self.halt.is_set():
                    try:
                        p = self.conn.recv(0.2)
                    except TimeoutError:
                        continue
                    assert p.name == "NOOP", p
                    break
        except (OSError, Closed, AssertionError) as exc:
            if not self.halt.is_set():
                self.failures.append(f"fg worker: {exc!r}")

    def stop(self) -> None:
        self.halt.set()
        self.join(PROBE_TIMEOUT + 2)
        self.conn.close()


class Submit:
    """One background submit on its own connection, answered (or not) on a thread."""

    def __init__(self, port: int, unique: bytes) -> None:
        self.unique = unique
        self.sent = 0.0
        self.answered: Optional[float] = None
        self.reply: Optional[Tuple[object, ...]] = None
        self.error: Optional[str] = None
        self.thread = threading.Thread(target=self._run, args=(port,), daemon=True)
        self.thread.start()

    def _run(self, port: int) -> None:
        try:
            with Conn(port, PROBE_TIMEOUT) as c:
                self.sent = time.monotonic()
                c.send("SUBMIT_JOB_BG", BG, self.unique, b"data-" + self.unique)
                p = c.recv(QUEUE_TIMEOUT + 1 + 2)
                self.answered = time.monotonic()
                self.reply = p.as_tuple()
        except (OSError, Closed, AssertionError) as exc:
            self.error = repr(exc)

    def wait(self) -> None:
        self.thread.join(QUEUE_TIMEOUT + 1 + 2 + PROBE_TIMEOUT + 2)
        assert not self.thread.is_alive()

    @property
    def latency(self) -> float:
        return (self.answered or float("inf")) - self.sent

    @property
    def acked(self) -> bool:
        return self.reply is not None and self.reply[0] == "JOB_CREATED"


def check_refusal(s: Submit, name: str) -> None:
    """An answer that is not JOB_CREATED must be ERROR QUEUE_ERROR "<-q name>..."."""
    assert s.reply is not None, f"{s.unique!r}: no answer ({s.error})"
    if s.acked:
        return
    assert s.reply[0] == "ERROR" and s.reply[1] == b"QUEUE_ERROR", \
        f"{s.unique!r}: {s.reply}"
    text = s.reply[2]
    assert isinstance(text, bytes) and text.startswith(name.encode()), \
        f"{s.unique!r}: ERROR text {text!r} does not start with {name!r}"


def submit_now(port: int, unique: bytes) -> Submit:
    s = Submit(port, unique)
    s.wait()
    return s


def log_lines(srv: Server, word: str) -> List[str]:
    return [line for line in srv.log().splitlines() if word in line]


#: (backend, mode, -t): each backend is cut and stalled; -t 0 and -t 2 alternate.
CASES = [(name, mode, "0" if (i + j) % 2 == 0 else "2")
         for i, name in enumerate(NETWORK) for j, mode in enumerate(MODES)]


@pytest.fixture
def proxied(request: pytest.FixtureRequest, tmp_path: "os.PathLike[str]"
            ) -> Iterator[Tuple[Store, TcpProxy]]:
    """A fresh store of the test's backend and a proxy in front of its service."""
    store = store_for(request.node.callspec.params["name"], request, tmp_path)
    assert store.service is not None
    with TcpProxy(store.service) as proxy:
        yield store, proxy


@pytest.mark.parametrize("name,mode,threads", CASES,
                         ids=[f"{n}-{m}-t{t}" for n, m, t in CASES])
def test_store_outage(server_factory: Callable[..., Server],
                      proxied: Tuple[Store, TcpProxy], name: str, mode: str,
                      threads: str) -> None:
    store, proxy = proxied
    extra = ("-t", threads, "--queue-timeout", str(QUEUE_TIMEOUT))
    srv = start_server(server_factory, store, *extra, port=proxy.port)
    port = srv.port

    # -- before: the store works; three jobs are completed, five wait -------------------
    acked: Dict[bytes, Submit] = {}
    for i in range(5):
        s = submit_now(port, b"pre%d" % i)
        assert s.acked, (s.reply, s.error)
        acked[s.unique] = s
    with Conn(port) as c:
        for i in range(3):
            c.send("SUBMIT_JOB_BG", BG_DONE, b"done%d" % i, b"x")
            c.expect("JOB_CREATED")
    with Conn(port) as w:
        w.send("CAN_DO", BG_DONE)
        for _ in range(3):
            w.send("GRAB_JOB")
            handle = w.expect("JOB_ASSIGN").args[0]
            w.send("WORK_COMPLETE", handle, b"")
    wait_gone(store, [(BG_DONE, b"done%d" % i) for i in range(3)])

    lat = Latencies()
    worker = FgWorker(port)
    worker.start()
    loops: List[Loop] = [Prober(port, lat), FgClient(port, lat)]
    for loop in loops:
        loop.start()
    try:
        assert_wait(lambda: lat.count(0, float("inf"), "fg job") >= 3, 5,
                    "foreground jobs do not run before the outage")

        # -- the outage ----------------------------------------------------------------
        t_out = time.monotonic()
        getattr(proxy, mode)()
        during: List[Submit] = []
        i = 0
        while time.monotonic() < t_out + OUTAGE_S:
            during.append(Submit(port, b"out%d" % i))
            i += 1
            time.sleep(0.25)
        t_restore = time.monotonic()
        proxy.restore()
        for s in during:
            s.wait()

        # -- recovery: a submit succeeds again ----------------------------------------
        recovered: Optional[Submit] = None
        after: List[Submit] = []
        while time.monotonic() < t_restore + RECOVER_S and recovered is None:
            s = submit_now(port, b"rec%d" % len(after))
            after.append(s)
            if s.acked:
                recovered = s
            else:
                time.sleep(0.2)
        time.sleep(0.3)
    finally:
        for loop in loops:
            loop.stop()
        worker.stop()

    # -- nothing that does not need the store waited ----------------------------------
    failures = [f for loop in loops for f in loop.failures] + worker.failures
    assert not failures, failures[:5]
    worst, what = lat.worst(since=t_out)
    assert worst < MAX_STALL_S, f"{what} took {worst:.2f}s during/after the {mode}"
    fg_during = lat.count(t_out, t_restore, "fg job")
    assert fg_during >= OUTAGE_S / 0.1 / 2, f"only {fg_during} fg jobs ran during the {mode}"
    assert lat.count(t_out, t_restore, "probe status") >= OUTAGE_S / 0.1 / 2

    # -- every background submit was answered in time, and correctly -----------------
    for s in during + after:
        assert s.error is None and s.reply is not None, f"{s.unique!r}: {s.error}"
        assert s.latency <= QUEUE_TIMEOUT + 1, \
            f"{s.unique!r} answered after {s.latency:.2f}s: {s.reply}"
        check_refusal(s, name)
        assert s.answered is not None
        if s.acked:
            assert s.answered > t_restore, \
                f"{s.unique!r} acknowledged during the {mode}, before the store was back"
    refused = [s for s in during + after if not s.acked]
    assert refused, f"no submit was refused during the {mode}"
    assert recovered is not None, \
        f"no submit succeeded within {RECOVER_S}s after restore: {after[-1].reply}"
    for i in range(3):              # and it stays up
        s = submit_now(port, b"post%d" % i)
        assert s.acked, (s.reply, s.error)
        acked[s.unique] = s
    acked.update({s.unique: s for s in during + after if s.acked})

    # -- one line on loss, one on recovery --------------------------------------------
    wait_for(lambda: len(log_lines(srv, "restored")) >= 1, 3)
    lost, restored = log_lines(srv, "lost"), log_lines(srv, "restored")
    notable = [line for line in srv.log().splitlines()
               if "accepted," not in line and line.startswith((" ERROR", "WARNING", "  ERROR"))]
    assert len(lost) == 1 and len(restored) == 1, \
        f"{len(lost)} 'lost' and {len(restored)} 'restored' lines: {lost[:3]} {restored[:3]}; " \
        f"errors and warnings: {notable[-8:]}"

    # -- crash and replay: every acknowledged, unfinished job once ---------------------
    srv.stop(signal.SIGKILL)
    srv = start_server(server_factory, store, *extra)
    first = status(srv.port)
    replayed = drain(srv.port, [BG, BG_DONE, FG], idle=0.3)
    uniques = Counter(u for _, u, _ in replayed)
    assert [u for u, n in uniques.items() if n > 1] == [], "replayed twice"
    missing = sorted(set(acked) - set(uniques))
    assert not missing, f"acknowledged jobs lost: {missing}"
    in_doubt = {s.unique for s in refused}
    unknown = sorted(set(uniques) - set(acked) - in_doubt)
    assert not unknown, f"replayed jobs never acknowledged nor in doubt: {unknown}"
    assert first.get(BG.decode(), (0,))[0] == len(replayed), \
        f"first status after the restart {first} before all {len(replayed)} were replayed"
    assert all(fn == BG for fn, _, _ in replayed), replayed


def assert_wait(pred: Callable[[], bool], timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, why
        time.sleep(0.05)

