"""The benchmark workloads: each takes a running server and returns one dict of metrics.

Runs in the parent process; throughput workloads (fg, bg, drain, ping, big, and the load
under ``status``) hand the load to generator processes, native (:mod:`.native`, the
capacity measurement) or Python (:mod:`.gen`, the fallback), chosen by
``Params.generator``; ``idle`` and ``mem`` drive the server from the parent itself (they
measure memory, not speed).  Every workload is bounded by a count and a time limit from
:class:`Params`, and every throughput result carries the server's and the generator's CPU
per job and in cores.  A workload's ``metric`` names its headline number.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, List

from . import gen, native, proto
from .servers import Server

Metrics = Dict[str, Any]


NATIVE = "native"   # loadgen.c: the capacity measurement
PYTHON = "python"   # gen.py: fallback without a C compiler; numbers are not capacity
GENERATORS = (NATIVE, PYTHON)
FLOOD_FUNC = "bench_flood"  # the function the flood workload's background submits go to
FLOOD_JOBS = 1 << 30        # the flood is bounded by the foreground run's time, not a count


@dataclass
class Params:
    """Counts and time limits; ``quick()`` gives the CI smoke-test sizes."""

    generator: str = NATIVE    # which load generator drives fg, bg, drain, big, ping, status
    loadgen: str = ""          # path of the compiled native generator (set by the cli)
    native_procs: int = 1      # native generator processes (one epoll loop each)
    procs: int = 2             # Python generator processes per side (clients / workers)
    payload: int = 100         # bytes per job for fg, bg, drain, mem
    # Background submits carry their own unique ids (native generator; the cli sets this
    # with --queue-args: C gearmand's database queues key rows on the unique id and refuse
    # a second empty one).
    unique: bool = False
    # Enough requests in flight that the server, not round-trip latency, is the limit.
    fg_clients: int = 64
    fg_workers: int = 16
    fg_jobs: int = 1_000_000
    fg_time: float = 2.0
    # bg and drain are bounded by their counts (the time limits are a safety net), so every
    # server does the same work: C gearmand's cost per job grows with the queue's length.
    bg_conns: int = 4          # connections in all
    bg_window: int = 256       # submits in flight per connection
    bg_jobs: int = 400_000
    bg_time: float = 20.0
    # flood: the fg load above while these submitters flood another function (the
    # issue-9 load: 8 clients x 16 pipelined SUBMIT_JOB_BG)
    flood_conns: int = 8
    flood_depth: int = 16
    drain_jobs: int = 100_000
    drain_workers: int = 16
    drain_depth: int = 1       # GRAB_JOBs in flight per worker
    drain_time: float = 20.0
    ping_conns: int = 64
    ping_depth: int = 1        # ECHO_REQs in flight per connection
    ping_payload: int = 4
    ping_jobs: int = 2_000_000
    ping_time: float = 2.0
    big_size: int = 1 << 20
    big_clients: int = 2
    big_workers: int = 2
    big_jobs: int = 20_000
    big_time: float = 2.0
    idle_conns: int = 10_000
    idle_time: float = 30.0
    mem_jobs: int = 100_000
    mem_time: float = 30.0
    status_jobs: int = 1_000_000
    status_time: float = 2.0
    status_interval: float = 0.002

    @classmethod
    def quick(cls) -> "Params":
        return cls(fg_clients=16, fg_workers=4, drain_workers=4, ping_conns=16,
                   fg_jobs=2_000, fg_time=0.3, bg_jobs=5_000, bg_time=2.0, drain_jobs=2_000,
                   drain_time=2.0, ping_jobs=5_000, ping_time=0.3, big_size=256 << 10,
                   big_jobs=20, big_time=0.3, idle_conns=200, idle_time=5.0, mem_jobs=5_000,
                   mem_time=5.0, status_jobs=5_000, status_time=0.3)

    def as_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _split(total: int, parts: int) -> List[int]:
    per, extra = divmod(total, max(parts, 1))
    return [per + (1 if i < extra else 0) for i in range(max(parts, 1))]


def percentile(values: List[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (0 when empty)."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]


def _finish(out: gen.RunOutcome, m: Metrics) -> Metrics:
    """Add the rate and the CPU figures (per job and in cores) to ``m``."""
    m["rate"] = m["jobs"] / out.wall
    m.update(out.metrics(m["jobs"]))
    return m


def _native_fg(server: Server, p: Params, clients: int, workers: int, payload: int,
               jobs: int, time_limit: float, func: str, status_us: int = 0,
               flood: int = 0) -> Metrics:
    """Foreground load from native processes (plus, with ``flood`` connections, one
    process flooding ``FLOOD_FUNC`` with pipelined background submits meanwhile).  With
    several processes the latency figures are the worst process's percentiles."""
    opts: List[Dict[str, Any]] = []
    n = p.native_procs
    for i, (c, w, j) in enumerate(zip(_split(clients, n), _split(workers, n),
                                      _split(jobs, n))):
        o: Dict[str, Any] = {"clients": c, "workers": w, "jobs": j, "time": time_limit,
                             "payload": payload, "func": func}
        if status_us and i == 0:
            o["status_us"] = status_us
        opts.append(o)
    if flood:
        opts.append({"mode": "bg", "clients": flood, "depth": p.flood_depth, "jobs": FLOOD_JOBS,
                     "time": time_limit, "payload": payload, "func": FLOOD_FUNC,
                     "unique": p.unique})
    out = native.run(p.loadgen, server.port, "fg", opts, server.cpu, server.wait)
    rs = [r for r in out.results if r["mode"] == "fg"]
    m: Metrics = {"jobs": sum(r["jobs"] for r in rs),
                  "failed": sum(r["failed"] + r["errors"] + r["unfinished"] for r in rs),
                  "p50_ms": max(r["p50_ms"] for r in rs), "p99_ms": max(r["p99_ms"] for r in rs)}
    if status_us:
        m.update(status_p50_ms=rs[0]["status_p50_ms"], status_p99_ms=rs[0]["status_p99_ms"],
                 probes=rs[0]["probes"])
    if flood:
        m.update(_flood_metrics([r for r in out.results if r["mode"] == "bg"], out))
    return _finish(out, m)


def _flood_metrics(rs: List[gen.Result], out: gen.RunOutcome) -> Metrics:
    """What the flooding submitters achieved beside the foreground load."""
    return {"flood_submits_s": sum(r["jobs"] for r in rs) / out.wall,
            "flood_errors": sum(r.get("errors", 0) for r in rs)}


def _python_fg(server: Server, p: Params, clients: int, workers: int, payload: int,
               jobs: int, time_limit: float, func: str, status_us: int = 0,
               flood: int = 0) -> Metrics:
    roles: List[gen.Role] = []
    data = b"x" * payload
    for n, j in zip(_split(clients, p.procs), _split(jobs, p.procs)):
        if n:
            roles.append(gen.FgClients(server.port, func.encode(), n, data, j))
    n_fg = len(roles)
    if flood:
        roles.append(gen.BgSubmitter(server.port, FLOOD_FUNC.encode(), flood, p.flood_depth,
                                     data, FLOOD_JOBS))
    n_flood = len(roles)
    for n in _split(workers, p.procs):
        if n:
            roles.append(gen.EchoWorkers(server.port, func.encode(), n))
    if status_us:
        roles.append(gen.StatusProber(server.port, status_us / 1e6))
    out = gen.run_roles(roles, server.cpu, time_limit, server_wait=server.wait)
    clients_rs = out.results[:n_fg]
    lat: List[float] = []
    for r in clients_rs:
        lat.extend(r.get("lat", ()))
    m: Metrics = {"jobs": sum(r.get("jobs", 0) for r in clients_rs),
                  "failed": sum(r.get("failed", 0) for r in clients_rs),
                  "p50_ms": percentile(lat, 0.50) * 1e3, "p99_ms": percentile(lat, 0.99) * 1e3}
    if status_us:
        probes = out.results[-1].get("lat", [])
        m.update(status_p50_ms=percentile(probes, 0.5) * 1e3,
                 status_p99_ms=percentile(probes, 0.99) * 1e3, probes=len(probes))
    if flood:
        m.update(_flood_metrics(out.results[n_fg:n_flood], out))
    return _finish(out, m)


FG_DRIVERS: Dict[str, Callable[..., Metrics]] = {NATIVE: _native_fg, PYTHON: _python_fg}


def _fg(server: Server, p: Params, clients: int, workers: int, payload: int, jobs: int,
        time_limit: float, func: str, status_us: int = 0, flood: int = 0) -> Metrics:
    return FG_DRIVERS[p.generator](server, p, clients, workers, payload, jobs, time_limit,
                                   func, status_us, flood)


def fg(server: Server, p: Params) -> Metrics:
    """Foreground round trips: C clients x W echo workers, one job in flight per client."""
    m = _fg(server, p, p.fg_clients, p.fg_workers, p.payload, p.fg_jobs, p.fg_time,
            "bench_fg")
    return {"jobs_s": m["rate"], **m}


def flood(server: Server, p: Params) -> Metrics:
    """Foreground jobs/s of an in-memory function while ``flood_conns`` connections flood
    another function with pipelined background submits (with ``--queue-args`` these go to
    the durable queue; foreground jobs never do).  The same foreground load first runs
    alone on the same server: ``kept`` is the share of that rate the flood leaves."""
    alone = _fg(server, p, p.fg_clients, p.fg_workers, p.payload, p.fg_jobs, p.fg_time,
                "bench_flood_fg")
    m = _fg(server, p, p.fg_clients, p.fg_workers, p.payload, p.fg_jobs, p.fg_time,
            "bench_flood_fg", flood=p.flood_conns)
    return {"jobs_s": m["rate"], "alone_jobs_s": alone["rate"],
            "kept": m["rate"] / max(alone["rate"], 1e-9), **m}


def big(server: Server, p: Params) -> Metrics:
    """1 MiB (``big_size``) foreground echo jobs; MB/s counts each job's payload once."""
    m = _fg(server, p, p.big_clients, p.big_workers, p.big_size, p.big_jobs, p.big_time,
            "bench_big")
    return {"mb_s": m["rate"] * p.big_size / 1e6, "jobs_s": m["rate"], **m}


def _windowed(server: Server, p: Params, mode: str, conns: int, depth: int, payload: int,
              jobs: int, time_limit: float, func: str) -> Metrics:
    """Pipelined requests (``bg`` submits or ``ping`` echoes), ``depth`` in flight per
    connection; counts the replies."""
    if p.generator == NATIVE:
        opts = [{"clients": c, "depth": depth, "jobs": j, "time": time_limit,
                 "payload": payload, "func": func, "unique": p.unique and mode == "bg"}
                for c, j in zip(_split(conns, p.native_procs), _split(jobs, p.native_procs))]
        out = native.run(p.loadgen, server.port, mode, opts, server.cpu, server.wait)
    else:
        role = gen.Pinger if mode == "ping" else gen.BgSubmitter
        roles: List[gen.Role] = [
            role(server.port, func.encode(), c, depth, b"x" * payload, j)
            for c, j in zip(_split(conns, p.procs), _split(jobs, p.procs)) if c and j]
        out = gen.run_roles(roles, server.cpu, time_limit, server_wait=server.wait)
    return _finish(out, {"jobs": sum(r.get("jobs", 0) for r in out.results),
                         "errors": sum(r.get("errors", 0) for r in out.results)})


def bg(server: Server, p: Params) -> Metrics:
    """Background submit rate: pipelined SUBMIT_JOB_BG, counting JOB_CREATED."""
    m = _windowed(server, p, "bg", p.bg_conns, p.bg_window, p.payload, p.bg_jobs, p.bg_time,
                  "bench_bg")
    return {"submits_s": m["rate"], **m}


def ping(server: Server, p: Params) -> Metrics:
    """ECHO_REQ round trips on ``ping_conns`` connections (the server's bare packet path)."""
    m = _windowed(server, p, "ping", p.ping_conns, p.ping_depth, p.ping_payload, p.ping_jobs,
                  p.ping_time, "")
    return {"echoes_s": m["rate"], **m}


def drain(server: Server, p: Params) -> Metrics:
    """Queue ``drain_jobs`` background jobs (untimed), then time W workers emptying it."""
    func = "bench_drain"
    if p.generator == NATIVE:
        opts = [{"workers": w, "depth": p.drain_depth, "time": p.drain_time, "func": func,
                 "payload": p.payload, "fill": p.drain_jobs if i == 0 else 0,
                 "unique": p.unique}
                for i, w in enumerate(_split(p.drain_workers, p.native_procs))]
        out = native.run(p.loadgen, server.port, "drain", opts, server.cpu, server.wait)
        queued, fill_s = out.results[0]["queued"], out.results[0]["fill_s"]
    else:
        fill = gen.run_inline(gen.BgSubmitter(server.port, func.encode(), 1, p.bg_window,
                                              b"x" * p.payload, p.drain_jobs), 60.0)
        queued = fill["jobs"]
        fill_s = queued / max(fill["t_end"] - fill["t_start"], 1e-9)
        roles: List[gen.Role] = [gen.DrainWorkers(server.port, func.encode(), n, p.drain_depth)
                                 for n in _split(p.drain_workers, p.procs) if n]
        out = gen.run_roles(roles, server.cpu, p.drain_time, server_wait=server.wait)
    m = _finish(out, {"jobs": sum(r.get("jobs", 0) for r in out.results), "queued": queued,
                      "fill_s": fill_s})
    return {"jobs_s": m["rate"], **m}


def _echo_round_trip(sock: socket.socket) -> None:
    sock.sendall(proto.echo(b"ping"))
    want = proto.HEADER_SIZE + 4
    got = b""
    while len(got) < want:
        chunk = sock.recv(want - len(got))
        if not chunk:
            raise ConnectionError("server closed the connection")
        got += chunk


def idle(server: Server, p: Params) -> Metrics:
    """Open ``idle_conns`` connections (paced: each batch answers an ECHO before the next,
    so the listen backlog never overflows), measure server RSS per connection, then check
    that every connection still answers ECHO."""
    with gen.connect(server.port) as probe:
        _echo_round_trip(probe)
        base = server.rss()
    socks: List[socket.socket] = []
    deadline = time.monotonic() + p.idle_time
    t0 = time.monotonic()
    batch = 16
    try:
        while len(socks) < p.idle_conns and time.monotonic() < deadline:
            new = [gen.connect(server.port) for _ in range(min(batch, p.idle_conns - len(socks)))]
            socks.extend(new)
            for s in new:
                s.sendall(proto.echo(b"ping"))
            for s in new:
                _read_exact(s, proto.HEADER_SIZE + 4)
        opened = len(socks)
        open_s = opened / max(time.monotonic() - t0, 1e-9)
        time.sleep(0.2)
        rss = server.rss()
        answered = _echo_all(socks, max(deadline - time.monotonic(), 5.0))
    finally:
        for s in socks:
            s.close()
    return {"held": answered, "opened": opened, "open_s": open_s,
            "bytes_per_conn": (rss - base) / max(opened, 1), "rss_base": base, "rss": rss}


def _read_exact(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            raise ConnectionError("server closed an idle connection")
        got += chunk
    return got


def _echo_all(socks: List[socket.socket], time_limit: float) -> int:
    """Send ECHO on every socket at once; count complete ECHO_RES replies."""
    want = proto.HEADER_SIZE + 4
    ep = select.epoll()
    got: Dict[int, int] = {}
    by_fd: Dict[int, socket.socket] = {}
    try:
        for s in socks:
            s.setblocking(False)
            fd = s.fileno()
            by_fd[fd] = s
            got[fd] = 0
            ep.register(fd, select.EPOLLIN)
            s.send(proto.echo(b"ping"))
        answered = 0
        deadline = time.monotonic() + time_limit
        while answered < len(socks) and time.monotonic() < deadline:
            for fd, _ev in ep.poll(0.2):
                data = by_fd[fd].recv(4096)
                if not data:
                    ep.unregister(fd)
                    continue
                got[fd] += len(data)
                if got[fd] >= want:
                    answered += 1
                    ep.unregister(fd)
        return answered
    finally:
        ep.close()


def mem(server: Server, p: Params) -> Metrics:
    """RSS growth per queued background job: ``mem_jobs`` jobs of ``payload`` bytes."""
    with gen.connect(server.port) as probe:
        _echo_round_trip(probe)
        time.sleep(0.1)
        base = server.rss()
    res = gen.run_inline(gen.BgSubmitter(server.port, b"bench_mem", 1, 256, b"x" * p.payload,
                                         p.mem_jobs), p.mem_time)
    time.sleep(0.1)
    rss = server.rss()
    return {"bytes_per_job": (rss - base) / max(res["jobs"], 1), "jobs": res["jobs"],
            "rss_base": base, "rss": rss}


def status(server: Server, p: Params) -> Metrics:
    """``status`` admin latency (one probe every ``status_interval`` s) while the foreground
    workload (fg_clients x fg_workers echo jobs) keeps the server busy for ``status_time``.
    A steady job flow rather than a growing background queue: the load lasts the whole
    interval with bounded memory on fast and slow servers alike."""
    m = _fg(server, p, p.fg_clients, p.fg_workers, p.payload, p.status_jobs, p.status_time,
            "bench_status", max(int(p.status_interval * 1e6), 1))
    return {"p99_ms": m.pop("status_p99_ms"), "p50_ms": m.pop("status_p50_ms"),
            "load_jobs_s": m["rate"], "load_p99_ms": m.pop("p99_ms"),
            **{k: v for k, v in m.items() if k != "p50_ms"}}


@dataclass(frozen=True)
class Workload:
    name: str
    run: Callable[[Server, Params], Metrics]
    metric: str
    unit: str
    higher_is_better: bool
    sweep: bool          # run at every -t (else only at the point -t)
    title: str


WORKLOADS: Dict[str, Workload] = {w.name: w for w in (
    Workload("fg", fg, "jobs_s", "jobs/s", True, True,
             "foreground round trips (clients x echo workers)"),
    Workload("bg", bg, "submits_s", "submits/s", True, True, "background submits, pipelined"),
    Workload("drain", drain, "jobs_s", "jobs/s", True, True, "drain a queue through workers"),
    Workload("ping", ping, "echoes_s", "echoes/s", True, True,
             "ECHO_REQ round trips, one in flight per connection"),
    Workload("big", big, "mb_s", "MB/s", True, True, "1 MiB foreground echo payloads"),
    Workload("flood", flood, "jobs_s", "jobs/s", True, True,
             "foreground jobs while background submits flood another function"),
    Workload("idle", idle, "held", "conns", True, False,
             "idle connections held, all answering"),
    Workload("mem", mem, "bytes_per_job", "B/job", False, False,
             "RSS per queued 100-byte background job"),
    Workload("status", status, "p99_ms", "ms p99", False, False,
             "`status` latency under the foreground load"),
)}

#: The workloads a load generator drives (idle and mem drive the server from the parent).
GENERATED = frozenset(WORKLOADS) - {"idle", "mem"}
