"""The Python load generator: roles that drive one server over many raw-protocol connections.

It is the fallback when the native generator (:mod:`.native`) cannot be built, and its
connection and submit helpers also serve ``idle`` and ``mem``.  It saturates before the
servers do, so runs that use it are marked as not measuring capacity.

Each role (foreground client, echo worker, background submitter, drain worker, ``status``
prober) runs inside a generator process started by :func:`run_roles`; one process runs one
role over several connections with its own epoll loop (single thread).  The parent process
starts the processes, waits until every one has connected (``ready``), sends ``go`` to all
at once, and collects one result dict from each, plus the server's CPU time over the same
interval.  Each role is bounded by a job count and a deadline, and every process is killed
when the parent leaves :func:`run_roles`, also on error or Ctrl-C.

Hot-loop economy (to stay as far from being the bottleneck as Python allows): one
``recv(65536)`` per readable event, all complete packets parsed in one pass, replies joined
and sent with one ``send``; output is buffered and EPOLLOUT armed only on a partial send.
"""

from __future__ import annotations

import multiprocessing
import os
import multiprocessing.connection
import resource
import select
import socket
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import proto

Result = Dict[str, Any]
RECV_SIZE = 65536  # above 64 KiB CPython's recv() gets much slower (measured)
BIG_RECV = 1 << 20  # recv_into a preallocated buffer has no such penalty: used for big packets
INITIAL_BUF = 256 << 10


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_machine() -> float:
    """Busy CPU seconds of the whole machine (all CPUs) from /proc/stat.

    Loopback TCP work done in softirq context is often charged to no process, so per-process
    CPU times under-count; this is the total that the generator and server share."""
    with open("/proc/stat", "rb") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    busy = sum(vals[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / CLK_TCK


CLK_TCK = os.sysconf("SC_CLK_TCK")


class Conn:
    """One non-blocking connection: input buffer, pending output, per-role state."""

    __slots__ = ("sock", "fd", "buf", "n", "need", "pending", "t0", "outstanding", "left",
                 "active")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray(INITIAL_BUF)  # reused: recv_into, never reallocated per read
        self.n = 0  # valid bytes at the start of buf
        self.need = proto.HEADER_SIZE
        self.pending: List[Any] = []  # bytes or memoryview, oldest first
        self.t0 = 0.0
        self.outstanding = 0
        self.left = 0
        self.active = True


Handler = Callable[[Conn, bytearray, List[Tuple[int, int, int]]], None]


class Loop:
    """A minimal epoll loop over :class:`Conn` objects, each with a packet handler."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.conns: Dict[int, Tuple[Conn, Handler]] = {}

    def add(self, conn: Conn, handler: Handler) -> None:
        self.conns[conn.fd] = (conn, handler)
        self.ep.register(conn.fd, select.EPOLLIN)

    def write(self, conn: Conn, data: bytes) -> None:
        if conn.pending:
            conn.pending.append(data)
            return
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            conn.pending.append(memoryview(data)[n:])
            self.ep.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT)

    def writev(self, conn: Conn, parts: List[Any]) -> None:
        """Send ``parts`` (bytes or memoryviews of an input buffer) with one sendmsg; any
        unsent rest is copied, so no view outlives the call."""
        if conn.pending:
            conn.pending.append(b"".join(parts))
            return
        try:
            n = conn.sock.sendmsg(parts)
        except BlockingIOError:
            n = 0
        total = sum(len(p) for p in parts)
        if n < total:
            conn.pending.append(memoryview(b"".join(parts))[n:])
            self.ep.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT)

    def _flush(self, conn: Conn) -> None:
        pending = conn.pending
        data = pending[0] if len(pending) == 1 else memoryview(b"".join(pending))
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            conn.pending = [data[n:]]
        else:
            conn.pending = []
            self.ep.modify(conn.fd, select.EPOLLIN)

    def run(self, deadline: float, finished: Callable[[], bool]) -> None:
        """Dispatch until ``finished()`` or the monotonic ``deadline``."""
        poll = self.ep.poll
        conns = self.conns
        split = proto.split
        needed = proto.needed
        EPOLLOUT = select.EPOLLOUT
        while not finished():
            wait = deadline - time.monotonic()
            if wait <= 0:
                return
            for fd, ev in poll(min(wait, 0.05)):
                conn, handler = conns[fd]
                if ev & EPOLLOUT:
                    self._flush(conn)
                    if ev == EPOLLOUT:
                        continue
                buf = conn.buf
                n = conn.n
                want = RECV_SIZE if conn.need - n <= RECV_SIZE else BIG_RECV
                if len(buf) - n < want:
                    buf.extend(bytes(max(want, len(buf))))
                k = conn.sock.recv_into(memoryview(buf)[n:], want)
                if not k:
                    raise ConnectionError("server closed a benchmark connection")
                n += k
                if n < conn.need:
                    conn.n = n
                    continue
                pkts, used = split(buf, n)
                handler(conn, buf, pkts)
                rem = n - used
                if rem and used:
                    buf[:rem] = buf[used:n]
                conn.n = rem
                conn.need = needed(buf, rem)

    def close(self) -> None:
        for conn, _ in self.conns.values():
            conn.sock.close()
        self.ep.close()


def open_shares(loop: "Loop", port: int, conns: int, jobs: int, handler: "Handler") -> None:
    """Open ``conns`` connections sharing ``jobs`` as evenly as possible (``conn.left``)."""
    per, extra = divmod(jobs, conns)
    for i in range(conns):
        conn = Conn(connect(port))
        conn.left = per + (1 if i < extra else 0)
        loop.add(conn, handler)


class Role:
    """Base for a generator role: ``setup()`` connects, ``run()`` drives until done."""

    #: Primary roles decide when a measurement ends; the others are stopped afterwards.
    primary = True

    def __init__(self, port: int, stop: Any = None) -> None:
        self.port = port
        self.stop = stop  # multiprocessing.Event set by the parent when primaries are done
        self._loop: Optional[Loop] = None

    @property
    def loop(self) -> Loop:
        """The role's epoll loop, created in the process that runs the role."""
        if self._loop is None:
            self._loop = Loop()
        return self._loop

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def setup(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def run(self, deadline: float) -> Result:  # pragma: no cover - overridden
        raise NotImplementedError


class EchoWorkers(Role):
    """Workers that answer every job with WORK_COMPLETE carrying the job's own data.

    A worker grabs, and on NO_JOB sends PRE_SLEEP and waits for NOOP, like a real worker.
    Not primary: it runs until the clients are done.
    """

    primary = False

    def __init__(self, port: int, func: bytes, n: int, stop: Any = None) -> None:
        super().__init__(port, stop)
        self.func = func
        self.n = n
        self.jobs = 0

    def setup(self) -> None:
        for _ in range(self.n):
            self.loop.add(Conn(connect(self.port)), self.on_packets)

    def on_packets(self, conn: Conn, buf: bytearray, pkts: List[Tuple[int, int, int]]) -> None:
        out: List[Any] = []
        view = None
        for cmd, a, b in pkts:
            if cmd == proto.JOB_ASSIGN:
                h = buf.index(0, a, b)
                f = buf.index(0, h + 1, b)
                out.append(proto.work_complete_header(h - a, b - f - 1))
                out.append(bytes(buf[a:h + 1]))
                if b - f - 1 > 4096:
                    if view is None:
                        view = memoryview(buf)
                    out.append(view[f + 1:b])
                else:
                    out.append(bytes(buf[f + 1:b]))
                out.append(proto.GRAB)
                self.jobs += 1
            elif cmd == proto.NO_JOB:
                out.append(proto.SLEEP)
            elif cmd == proto.NOOP:
                out.append(proto.GRAB)
        if out:
            self.loop.writev(conn, out)
        out.clear()
        if view is not None:
            view.release()

    def run(self, deadline: float) -> Result:
        go = proto.can_do(self.func) + proto.GRAB
        for conn, _ in list(self.loop.conns.values()):
            self.loop.write(conn, go)
        stop = self.stop
        self.loop.run(deadline, lambda: stop is not None and stop.is_set())
        return {"worker_jobs": self.jobs}


class FgClients(Role):
    """Foreground clients, one job in flight each: SUBMIT_JOB, JOB_CREATED, WORK_COMPLETE."""

    def __init__(self, port: int, func: bytes, n: int, payload: bytes, jobs: int,
                 stop: Any = None) -> None:
        super().__init__(port, stop)
        self.submit = proto.submit(func, payload)
        self.payload_len = len(payload)
        self.n = n
        self.jobs = jobs
        self.lat: List[float] = []
        self.done = 0
        self.failed = 0
        self.active = 0
        self.stopping = False
        self.t_end = 0.0

    def setup(self) -> None:
        open_shares(self.loop, self.port, self.n, self.jobs, self.on_packets)

    def on_packets(self, conn: Conn, buf: bytearray, pkts: List[Tuple[int, int, int]]) -> None:
        for cmd, a, b in pkts:
            if cmd == proto.JOB_CREATED:
                continue
            now = time.perf_counter()
            if cmd == proto.WORK_COMPLETE:
                h = buf.index(0, a, b)
                if b - h - 1 == self.payload_len:
                    self.lat.append(now - conn.t0)
                    self.done += 1
                else:
                    self.failed += 1
            elif cmd in proto.FAILURES:
                self.failed += 1
            else:
                continue  # WORK_DATA/STATUS/WARNING: not sent by our workers
            conn.left -= 1
            if conn.left > 0 and not self.stopping:
                conn.t0 = time.perf_counter()
                self.loop.write(conn, self.submit)
            else:
                conn.active = False
                self.active -= 1
                self.t_end = time.monotonic()

    def run(self, deadline: float) -> Result:
        conns = [c for c, _ in self.loop.conns.values()]
        self.active = 0
        for conn in conns:
            if conn.left > 0:
                conn.t0 = time.perf_counter()
                self.loop.write(conn, self.submit)
                self.active += 1
        self.t_end = time.monotonic()
        self.loop.run(deadline, lambda: self.active <= 0)
        if self.active > 0:  # time limit: stop submitting, let in-flight jobs finish
            self.stopping = True
            self.loop.run(time.monotonic() + 2.0, lambda: self.active <= 0)
            self.t_end = time.monotonic()
        return {"jobs": self.done, "failed": self.failed, "lat": self.lat,
                "t_end": self.t_end}


class BgSubmitter(Role):
    """Pipelined SUBMIT_JOB_BG: keep ``window`` submits in flight per connection; count
    JOB_CREATED (and ERROR) replies until ``jobs`` have been answered."""

    #: The reply that answers one request.
    reply = proto.JOB_CREATED

    def __init__(self, port: int, func: bytes, conns: int, window: int, payload: bytes,
                 jobs: int, stop: Any = None) -> None:
        super().__init__(port, stop)
        self.pkt = self.request(func, payload)
        self.nconns = conns
        self.window = window
        self.jobs = jobs
        self.created = 0
        self.errors = 0
        self.active = 0
        self.stopping = False
        self.t_end = 0.0

    @staticmethod
    def request(func: bytes, payload: bytes) -> bytes:
        return proto.submit(func, payload, background=True)

    def setup(self) -> None:
        open_shares(self.loop, self.port, self.nconns, self.jobs, self.on_packets)

    def on_packets(self, conn: Conn, buf: bytearray, pkts: List[Tuple[int, int, int]]) -> None:
        k = 0
        reply = self.reply
        for cmd, _a, _b in pkts:
            if cmd == reply:
                k += 1
            elif cmd == proto.ERROR:
                self.errors += 1
                k += 1
        self.created += k
        conn.outstanding -= k
        more = 0 if self.stopping else min(k, conn.left)
        if more:
            conn.left -= more
            conn.outstanding += more
            self.loop.write(conn, self.pkt * more)
        if conn.outstanding <= 0 and conn.active:
            conn.active = False
            self.active -= 1
            self.t_end = time.monotonic()

    def start(self) -> None:
        self.active = 0
        for conn, _ in self.loop.conns.values():
            first = min(self.window, conn.left)
            conn.left -= first
            conn.outstanding = first
            conn.active = first > 0
            if first:
                self.active += 1
                self.loop.write(conn, self.pkt * first)

    def run(self, deadline: float) -> Result:
        self.start()
        self.t_end = time.monotonic()
        self.loop.run(deadline, lambda: self.active <= 0)
        if self.active > 0:
            self.stopping = True
            self.loop.run(time.monotonic() + 2.0, lambda: self.active <= 0)
            self.t_end = time.monotonic()
        return {"jobs": self.created - self.errors, "errors": self.errors,
                "t_end": self.t_end}


class Pinger(BgSubmitter):
    """ECHO_REQ round trips, ``window`` in flight per connection (``func`` is unused)."""

    reply = proto.ECHO_RES

    @staticmethod
    def request(func: bytes, payload: bytes) -> bytes:
        return proto.echo(payload)


class DrainWorkers(Role):
    """Workers emptying a pre-filled queue: ``depth`` GRAB_JOBs in flight each; every
    JOB_ASSIGN is answered with WORK_COMPLETE + GRAB_JOB in one write; NO_JOB means empty."""

    def __init__(self, port: int, func: bytes, n: int, depth: int, stop: Any = None) -> None:
        super().__init__(port, stop)
        self.func = func
        self.n = n
        self.depth = depth
        self.jobs = 0
        self.active = 0
        self.stopping = False
        self.t_end = 0.0

    def setup(self) -> None:
        for _ in range(self.n):
            conn = Conn(connect(self.port))
            conn.sock.setblocking(True)
            conn.sock.sendall(proto.can_do(self.func) + proto.echo(b"x"))
            conn.sock.recv(100)  # ECHO_RES: CAN_DO has been processed
            conn.sock.setblocking(False)
            self.loop.add(conn, self.on_packets)

    def on_packets(self, conn: Conn, buf: bytearray, pkts: List[Tuple[int, int, int]]) -> None:
        out: List[bytes] = []
        for cmd, a, b in pkts:
            if cmd == proto.JOB_ASSIGN:
                self.jobs += 1
                h = buf.index(0, a, b)
                out.append(proto.work_complete_header(h - a, 0))
                out.append(bytes(buf[a:h + 1]))
                if self.stopping:
                    conn.outstanding -= 1
                else:
                    out.append(proto.GRAB)
            elif cmd == proto.NO_JOB:
                conn.outstanding -= 1
        if out:
            self.loop.write(conn, b"".join(out))
        if conn.outstanding <= 0 and conn.active:
            conn.active = False
            self.active -= 1
            self.t_end = time.monotonic()

    def run(self, deadline: float) -> Result:
        self.active = 0
        for conn, _ in self.loop.conns.values():
            conn.outstanding = self.depth
            self.active += 1
            self.loop.write(conn, proto.GRAB * self.depth)
        self.t_end = time.monotonic()
        self.loop.run(deadline, lambda: self.active <= 0)
        if self.active > 0:
            self.stopping = True
            self.loop.run(time.monotonic() + 2.0, lambda: self.active <= 0)
            self.t_end = time.monotonic()
        return {"jobs": self.jobs, "t_end": self.t_end}


class StatusProber(Role):
    """An admin connection sending ``status`` every ``interval`` seconds, timing each reply.
    Not primary: runs until the load roles finish (or its deadline)."""

    primary = False

    def __init__(self, port: int, interval: float, stop: Any = None) -> None:
        super().__init__(port, stop)
        self.interval = interval
        self.sock: Optional[socket.socket] = None

    def setup(self) -> None:
        self.sock = connect(self.port)

    def run(self, deadline: float) -> Result:
        assert self.sock is not None
        sock = self.sock
        lat: List[float] = []
        stop = self.stop
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            t0 = time.perf_counter()
            sock.sendall(b"status\n")
            buf = b""
            while not (buf == b".\n" or buf.endswith(b"\n.\n")):
                chunk = sock.recv(RECV_SIZE)
                if not chunk:
                    raise ConnectionError("server closed the admin connection")
                buf += chunk
            lat.append(time.perf_counter() - t0)
            time.sleep(self.interval)
        sock.close()
        return {"lat": lat}


def _child(role: Role, chan: multiprocessing.connection.Connection) -> None:
    """Generator process body: set up, report ready, wait for go, run, report result."""
    try:
        role.setup()
        chan.send(("ready", None))
        msg, deadline = chan.recv()
        if msg != "go":
            return
        t0 = time.monotonic()
        c0 = cpu_self()
        res = role.run(deadline)
        res["cpu"] = cpu_self() - c0
        res.setdefault("t_end", time.monotonic())
        res["t_start"] = t0
        role.close()
        chan.send(("result", res))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        try:
            chan.send(("error", traceback.format_exc()))
        except OSError:
            pass


class RunOutcome:
    """What :func:`run_roles` measured: per-role results, wall time, CPU use."""

    def __init__(self, results: List[Result], t_go: float, t_end: float, gen_cpu: float,
                 server_cpu: float, machine_cpu: float, machine_wall: float,
                 server_wait: float = 0.0) -> None:
        self.results = results
        self.t_go = t_go
        self.wall = max(t_end - t_go, 1e-9)
        self.gen_cpu = gen_cpu
        self.server_cpu = server_cpu
        self.machine_cpu = machine_cpu
        self.machine_wall = max(machine_wall, 1e-9)
        self.server_wait = server_wait

    def metrics(self, ops: int) -> Result:
        """CPU use over the measured interval, in cores and in µs per operation (``ops``
        jobs, submits or echoes): generator processes (``gen_cpu_max`` is the busiest
        single process, each being one thread), server process, and the whole machine
        (which also holds kernel loopback work charged to nobody).  Server CPU comes from
        /proc/PID/stat in clock ticks, so intervals under ~0.25 s are coarse.
        ``server_demand`` adds the time the server's threads waited for a CPU: near one
        core or more, the server always had work, whoever held the CPU."""
        per_proc = [r.get("cpu", 0.0) for r in self.results]
        return {"gen_cpu": self.gen_cpu / self.wall,
                "gen_cpu_max": max(per_proc, default=0.0) / self.wall,
                "server_cpu": self.server_cpu / self.wall,
                "server_demand": (self.server_cpu + self.server_wait) / self.wall,
                "machine_cpu": self.machine_cpu / self.machine_wall,
                "server_us": self.server_cpu / ops * 1e6 if ops else None,
                "gen_us": self.gen_cpu / ops * 1e6 if ops else None}


def run_roles(roles: Sequence[Role], server_cpu: Callable[[], float], time_limit: float,
              setup_timeout: float = 60.0,
              server_wait: Callable[[], float] = lambda: 0.0) -> RunOutcome:
    """Run each role in its own process (fork); return once every primary role is done.

    ``time_limit`` bounds the measured phase; the parent waits at most ``time_limit + 10``
    seconds for results, then kills the processes and raises.
    """
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    procs: List[Any] = []
    chans: List[multiprocessing.connection.Connection] = []
    try:
        for role in roles:
            role.stop = stop
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(target=_child, args=(role, child_end), daemon=True)
            p.start()
            child_end.close()
            procs.append(p)
            chans.append(parent_end)
        for ch in chans:
            if not ch.poll(setup_timeout):
                raise TimeoutError("generator process did not connect in time")
            msg, info = ch.recv()
            if msg == "error":
                raise RuntimeError(f"generator setup failed:\n{info}")
        cpu0 = server_cpu()
        wait0 = server_wait()
        mach0 = cpu_machine()
        t_go = time.monotonic()
        deadline = t_go + time_limit
        for ch in chans:
            ch.send(("go", deadline))
        results: List[Optional[Result]] = [None] * len(roles)
        limit = deadline + 10.0
        order = [i for i, r in enumerate(roles) if r.primary]
        order += [i for i, r in enumerate(roles) if not r.primary]
        cpu1 = None
        for i in order:
            if cpu1 is None and not roles[i].primary:
                cpu1 = server_cpu()
                wait1 = server_wait()
                mach1 = cpu_machine()
                t_mach = time.monotonic()
                stop.set()
            wait = max(limit - time.monotonic(), 0.1)
            if not chans[i].poll(wait):
                raise TimeoutError("generator process did not finish in time")
            msg, res = chans[i].recv()
            if msg == "error":
                raise RuntimeError(f"generator failed:\n{res}")
            results[i] = res
        if cpu1 is None:
            cpu1 = server_cpu()
            wait1 = server_wait()
            mach1 = cpu_machine()
            t_mach = time.monotonic()
        final = [r if r is not None else {} for r in results]
        t_end = max(r["t_end"] for r, role in zip(final, roles) if role.primary)
        gen_cpu = sum(r.get("cpu", 0.0) for r in final)
        return RunOutcome(final, t_go, t_end, gen_cpu, cpu1 - cpu0, mach1 - mach0,
                          t_mach - t_go, wait1 - wait0)
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join(timeout=2.0)
        for ch in chans:
            ch.close()


def run_inline(role: Role, time_limit: float) -> Result:
    """Run one role in this process (used to fill queues and for the memory workload)."""
    try:
        role.setup()
        t0 = time.monotonic()
        res = role.run(t0 + time_limit)
        res["t_start"] = t0
        res.setdefault("t_end", time.monotonic())
        return res
    finally:
        role.close()
