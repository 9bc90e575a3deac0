"""The metrics port (--metrics-port): Prometheus metrics, /healthz and the status page.

Real parts: a real server driven over raw sockets, /metrics parsed by prometheus_client's
own parser, a real Prometheus scraping it, the status page loaded in headless Chromium.
The codec is also fed byte by byte in process (no server).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, FrozenSet, List, Optional, Tuple

import pytest

from gearproto import Conn, grab, submit, wait_for
from support import Factory, Server, free_low_port, only_ours, require, server_env, sync
from test_engine_inprocess import engine_options

pytestmark = only_ours

Samples = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]
PROMETHEUS = "/usr/bin/prometheus"
CHROMIUM = "/usr/bin/chromium"


def _prometheus_client() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("prometheus_client is not installed (pip install -e '.[test]')")
        pytest.skip("prometheus_client not installed; CI installs it")


@pytest.fixture(autouse=True)
def _needs_client() -> None:
    _prometheus_client()


def get(port: int, path: str, headers: Optional[Dict[str, str]] = None,
        timeout: float = 10.0) -> Tuple[int, Dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``, read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            pass
        except ConnectionResetError:      # closed with our input unread
            chunks.append(b"<reset>")
        return b"".join(chunks)


def scrape(port: int) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    status, _, body = get(port, "/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def metrics_server(factory: Factory, *args: str) -> Tuple[Server, int]:
    port = free_low_port()
    return factory("--metrics-port", str(port), *args), port


# ---- the scripted scenario: exact counters -------------------------------------------

def _wait_status(srv: Server, function: str, total: int, running: int) -> None:
    def ok() -> bool:
        with Conn(srv.port) as c:
            for line in c.admin("status").decode().splitlines():
                parts = line.split("\t")
                if parts[0] == function:
                    return (int(parts[1]), int(parts[2])) == (total, running)
        return False
    assert wait_for(ok, 10), f"{function} never reached total={total} running={running}"


@pytest.mark.parametrize("threads", ["0", "4"])
def test_scenario_counters_exact(server_factory: Factory, threads: str) -> None:
    srv, mport = metrics_server(server_factory, "-t", threads, "-j", "2")
    fn = "mfn"
    client = Conn(srv.port)
    handles = {}
    for key, cmd, unique in (("normal", "SUBMIT_JOB", "u1"), ("high", "SUBMIT_JOB_HIGH", "u2"),
                             ("low", "SUBMIT_JOB_LOW", "u3"), ("bg", "SUBMIT_JOB_BG", "u4"),
                             ("high_bg", "SUBMIT_JOB_HIGH_BG", "u5"),
                             ("low_bg", "SUBMIT_JOB_LOW_BG", "u6")):
        handles[key] = submit(client, fn, key.encode(), unique=unique, cmd=cmd)
    assert submit(client, fn, b"bg", unique="u4", cmd="SUBMIT_JOB_BG") == handles["bg"]
    admin = Conn(srv.port)
    assert admin.admin(f"cancel job {handles['low_bg'].decode()}") == b"OK\r\n"
    # queues now: high [high, high_bg], normal [normal, bg], low [low]
    worker = Conn(srv.port)
    worker.send("CAN_DO", fn)
    for expected, result in (("high", ("WORK_COMPLETE", b"ok")), ("high_bg", ("WORK_FAIL",)),
                             ("normal", ("WORK_EXCEPTION", b"boom"))):
        job = grab(worker)
        assert job.args[0] == handles[expected]
        worker.send(result[0], job.args[0], *result[1:])
    for _ in range(2):                # the bg job dies with its worker twice: -j 2 drops it
        dying = Conn(srv.port)
        dying.send("CAN_DO", fn)
        job = grab(dying)
        assert job.args[0] == handles["bg"]
        dying.close()
        _wait_status(srv, fn, 2 if _ == 0 else 1, 0)
    job = grab(worker)
    assert job.args[0] == handles["low"]
    worker.send("WORK_COMPLETE", job.args[0], b"done")
    _wait_status(srv, fn, 0, 0)

    assert wait_for(lambda: value(scrape(mport), "gearman_received_bytes_total") > 0, 5)
    s = scrape(mport)
    f = {"function": fn}
    assert value(s, "gearman_up") == 1
    assert value(s, "gearman_version_info", version="1.1.20") == 1
    for name in ("gearman_jobs", "gearman_jobs_running", "gearman_jobs_waiting"):
        assert value(s, name, **f) == 0
    assert value(s, "gearman_workers", **f) == 1
    for priority in ("high", "normal", "low"):
        for background in ("true", "false"):
            assert value(s, "gearman_jobs_submitted_total", function=fn, priority=priority,
                         background=background) == 1
    expected = {"completed": 2, "failed": 1, "exceptions": 1, "retried": 1, "dropped": 1,
                "cancelled": 1, "coalesced": 1, "rejected": 0}
    got = {k: value(s, f"gearman_jobs_{k}_total", **f) for k in expected}
    assert got == expected
    # six assignments (high, high_bg, normal, bg twice, low); four results
    assert value(s, "gearman_job_wait_seconds_count", **f) == 6
    assert value(s, "gearman_job_wait_seconds_bucket", function=fn, le="+Inf") == 6
    assert value(s, "gearman_job_run_seconds_count", **f) == 4
    assert value(s, "gearman_job_run_seconds_bucket", function=fn, le="+Inf") == 4
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in s.items()
                     if k[0] == "gearman_job_run_seconds_bucket")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)   # cumulative
    packets = {cmd: value(s, "gearman_packets_total", command=cmd) for cmd in
               ("SUBMIT_JOB", "SUBMIT_JOB_BG", "CAN_DO", "GRAB_JOB", "WORK_COMPLETE",
                "WORK_FAIL", "WORK_EXCEPTION")}
    assert packets == {"SUBMIT_JOB": 1, "SUBMIT_JOB_BG": 2, "CAN_DO": 3, "GRAB_JOB": 6,
                       "WORK_COMPLETE": 2, "WORK_FAIL": 1, "WORK_EXCEPTION": 1}
    assert value(s, "gearman_connections", kind="worker") == 1
    assert value(s, "gearman_connections", kind="admin") == 1
    assert value(s, "gearman_queue_info", backend="builtin") == 1
    assert value(s, "gearman_queue_connected") == 1
    assert value(s, "gearman_healthy") == 1
    assert value(s, "gearman_threads") == {"0": 1, "4": 6}[threads]
    assert value(s, "process_open_fds") > 0
    assert value(s, "process_resident_memory_bytes") > 0
    assert value(s, "gearman_start_time_seconds") <= time.time()
    # the admin view of the same server is unchanged: metrics connections are no peers
    rows = admin.admin("workers").decode().splitlines()
    assert len(rows) == 4, rows          # client, admin, worker and "."
    for c in (client, admin, worker):
        c.close()


def test_gauges_follow_status(server_factory: Factory) -> None:
    srv, mport = metrics_server(server_factory)
    with Conn(srv.port) as c:
        for i in range(3):
            submit(c, "gfn", f"{i}".encode(), cmd="SUBMIT_JOB_LOW_BG")
        w = Conn(srv.port)
        w.send("CAN_DO", "gfn")
        grab(w)
        s = scrape(mport)
        assert value(s, "gearman_jobs", function="gfn") == 3
        assert value(s, "gearman_jobs_running", function="gfn") == 1
        assert value(s, "gearman_jobs_waiting", function="gfn") == 2
        assert value(s, "gearman_jobs_queued", function="gfn", priority="low") == 2
        assert value(s, "gearman_workers", function="gfn") == 1
        assert c.admin("status") == b"gfn\t3\t1\t1\n.\n"
        assert c.admin("version") == b"OK 1.1.20\n"
        w.close()


def test_openmetrics_when_asked(server_factory: Factory) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    srv, mport = metrics_server(server_factory)
    with Conn(srv.port) as c:
        submit(c, "ofn", b"x", cmd="SUBMIT_JOB_BG")
    status, headers, body = get(mport, "/metrics",
                                {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"gearman_jobs", "gearman_jobs_submitted", "gearman_job_wait_seconds"} <= names
    status, headers, body = get(mport, "/metrics")
    assert headers["Content-Type"].startswith("text/plain")


# ---- /healthz ------------------------------------------------------------------------

@pytest.mark.parametrize("threads", ["0", "2"])
def test_healthz_graceful_stop(server_factory: Factory, threads: str) -> None:
    srv, mport = metrics_server(server_factory, "-t", threads)
    assert get(mport, "/healthz")[::2] == (200, b"ok\n")
    worker = Conn(srv.port)
    worker.send("CAN_DO", "hfn")
    client = Conn(srv.port)
    handle = submit(client, "hfn", b"x")
    job = grab(worker)
    srv.proc.send_signal(signal.SIGUSR1)          # graceful: wait for the running job
    assert wait_for(lambda: get(mport, "/healthz")[0] == 503, 5)
    status, _, body = get(mport, "/healthz")
    assert (status, body) == (503, b"shutting down\n")
    assert value(scrape(mport), "gearman_jobs_running", function="hfn") == 1
    with pytest.raises(OSError):                   # the Gear port no longer accepts
        socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
    worker.send("WORK_COMPLETE", job.args[0], b"r")
    assert client.expect("WORK_COMPLETE").args[0] == handle
    assert srv.proc.wait(10) == 0


def test_healthz_store_down(server_factory: Factory, tmp_path: object) -> None:
    db = os.path.join(str(tmp_path), "q.db")
    srv, mport = metrics_server(server_factory, "-q", "libsqlite3", "--libsqlite3-db", db)
    with Conn(srv.port) as c:
        submit(c, "sfn", b"kept", cmd="SUBMIT_JOB_BG")
        assert get(mport, "/healthz")[0] == 200
        with sqlite3.connect(db) as other:
            other.execute("DROP TABLE gearman_queue")
        c.send("SUBMIT_JOB_BG", "sfn", "", b"lost")
        assert c.expect("ERROR").args[0] == b"QUEUE_ERROR"
    status, _, body = get(mport, "/healthz")
    assert status == 503
    assert body.startswith(b"store down: libsqlite3: ") and body.count(b"\n") == 1, body
    s = scrape(mport)
    assert value(s, "gearman_queue_connected") == 0
    assert value(s, "gearman_queue_errors_total") == 1
    assert value(s, "gearman_queue_writes_total") == 2      # both handed to the store
    assert value(s, "gearman_queue_commits_total") == 1     # one unit committed
    assert value(s, "gearman_jobs_rejected_total", function="sfn") == 1
    assert value(s, "gearman_healthy") == 0


def test_replayed_jobs_counted(server_factory: Factory, tmp_path: object) -> None:
    db = os.path.join(str(tmp_path), "q.db")
    srv = server_factory("-q", "libsqlite3", "--libsqlite3-db", db)
    with Conn(srv.port) as c:
        for i in range(4):
            submit(c, "rfn", f"{i}".encode(), unique=f"r{i}", cmd="SUBMIT_JOB_BG")
    srv.stop()
    srv, mport = metrics_server(server_factory, "-q", "libsqlite3", "--libsqlite3-db", db)
    s = scrape(mport)
    assert value(s, "gearman_queue_replayed_jobs") == 4
    assert value(s, "gearman_jobs", function="rfn") == 4
    assert value(s, "gearman_queue_info", backend="libsqlite3") == 1


# ---- start-up ------------------------------------------------------------------------

def test_missing_prometheus_client_is_one_line(tmp_path: object) -> None:
    shim = os.path.join(str(tmp_path), "prometheus_client")
    os.makedirs(shim)
    with open(os.path.join(shim, "__init__.py"), "w") as f:
        f.write("raise ImportError('No module named prometheus_client')\n")
    env = server_env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    for extra in ([], ["--check-args"]):
        proc = subprocess.run([sys.executable, "-m", "gearmand_py", "-p", "0", "-L",
                               "127.0.0.1", "--metrics-port", "0", *extra],
                              capture_output=True, text=True, timeout=30, env=env,
                              cwd=str(tmp_path))
        assert proc.returncode == 1
        assert proc.stderr == ("gearmand: --metrics-port needs the Python package "
                               "prometheus_client (pip install 'gearmand-py[metrics]')\n")


def test_metrics_address_is_its_own(server_factory: Factory) -> None:
    from support import listening_ports

    port = free_low_port()
    srv = server_factory("--metrics-port", str(port), "--metrics-address", "127.0.0.2")
    assert port in listening_ports(srv.pid)
    with socket.create_connection(("127.0.0.2", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200 OK")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.parametrize("threads,expected", [("0", 1), ("1", 2), ("4", 6)])
def test_no_extra_thread(server_factory: Factory, threads: str, expected: int) -> None:
    srv, mport = metrics_server(server_factory, "-t", threads)
    for _ in range(3):
        scrape(mport)
        get(mport, "/status.json")
    assert len(os.listdir(f"/proc/{srv.pid}/task")) == expected


# ---- the HTTP side: keep-alive, static files, hostile input ---------------------------

def test_keep_alive_and_pipelining(server_factory: Factory) -> None:
    srv, mport = metrics_server(server_factory, "-t", "2")
    with socket.create_connection(("127.0.0.1", mport), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                  b"GET /status.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d+) ", data)
    assert statuses == [b"200", b"200", b"200", b"405", b"200"]
    assert b"<title>gearmand status</title>" in data
    assert data.rstrip().endswith(b"}")            # the JSON came last
    assert b"gearman_up" not in data               # HEAD: no body


def test_static_files_and_404(server_factory: Factory) -> None:
    srv, mport = metrics_server(server_factory)
    for path, kind in (("/", "text/html"), ("/status.js", "text/javascript"),
                       ("/status.css", "text/css")):
        status, headers, body = get(mport, path)
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
    assert get(mport, "/nope")[0] == 404
    assert b"http://" not in get(mport, "/")[2] + get(mport, "/status.js")[2]   # no CDN


def test_hostile_input_closes_only_that_connection(server_factory: Factory) -> None:
    srv, mport = metrics_server(server_factory, "-t", "2")
    slow = socket.create_connection(("127.0.0.1", mport), timeout=5)
    slow.sendall(b"GET /metr")                     # and never more
    started = time.monotonic()
    idle = socket.create_connection(("127.0.0.1", mport), timeout=5)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(1000).startswith(b"HTTP/1.1 200 OK")     # then keeps quiet
    answers = {
        "oversized head": raw(mport, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
                              + b"a" * 20000 + b"\r\n\r\n"),
        "garbage": raw(mport, b"\x00\x01\x02 garbage \xff\r\n\r\n"),
        "bad version": raw(mport, b"GET / HTTP/9.9\r\n\r\n"),
        "huge body": raw(mport, b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: "
                         b"10000000\r\n\r\n" + b"x" * 100000),
    }
    for what, answer in answers.items():
        assert re.match(rb"HTTP/1\.1 (4\d\d|505) ", answer), (what, answer[:200])
        assert answer.count(b"HTTP/1.1") == 1, what
    assert answers["oversized head"].startswith(b"HTTP/1.1 431 ")
    assert answers["garbage"].startswith(b"HTTP/1.1 400 ")
    assert answers["huge body"].startswith(b"HTTP/1.1 413 ")
    # a flood of pipelined requests: some answers, then the connection is closed
    flood = raw(mport, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 5000, timeout=10)
    assert flood.endswith(b"<reset>") or flood.endswith(b"too much pipelined input\n")
    # while the slow client hangs on, the server serves everyone else ...
    assert scrape(mport)
    with Conn(srv.port) as c:
        assert c.admin("version") == b"OK 1.1.20\n"
    # ... and closes it once its request has been incomplete for 10 s
    slow.settimeout(30)
    assert slow.recv(100) == b""
    assert 9 < time.monotonic() - started < 25
    slow.close()
    # an idle keep-alive connection (no request under way) is not a slow client
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(1000).startswith(b"HTTP/1.1 200 OK")
    idle.close()
    assert srv.alive()
    s = scrape(mport)
    assert value(s, "gearman_protocol_errors_total") >= 4


# ---- the codec, in process -----------------------------------------------------------

def test_codec_turns_requests_into_snapshot_events() -> None:
    from gearmand_py.exposition import Renderer
    from gearmand_py.messages import SNAPSHOT, VIEW_HEALTH, VIEW_METRICS
    from gearmand_py.protocol.metrics import MetricsSession
    from gearmand_py.snapshot import Snapshot, StoreRow

    session = MetricsSession(Renderer())
    events = session.feed(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert events == [(SNAPSHOT, False, (VIEW_METRICS,))]
    assert session.feed(b"") == []                  # the second waits for the first answer
    store = StoreRow("builtin", False, 0, 0, 0, 0, 1, 0, "")
    snap = Snapshot(VIEW_METRICS, True, "", "1.1.20", 0.0, 0, (), (), 0, (), 0, (), store, ())
    out = session.respond(snap)
    assert out is not None and out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"gearman_up 1.0" in out and session.backlog
    assert session.feed(b"") == [(SNAPSHOT, False, (VIEW_HEALTH,))]
    out = session.respond(snap._replace(view=VIEW_HEALTH, healthy=False, reason="store down"))
    assert out is not None and out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert out.endswith(b"\r\n\r\nstore down\n")
    assert session.feed(b"GET / HTTP/1.0\r\n\r\n") == []
    assert session.interim.startswith(b"HTTP/1.1 200 OK") and session.closing


def test_histogram_slots_follow_le() -> None:
    """A duration lands in the first bucket whose bound it does not exceed; longer than the
    last bound is +Inf only; the exposition's buckets are cumulative."""
    from gearmand_py.engine import Engine
    from gearmand_py.exposition import SnapshotCollector
    from gearmand_py.messages import VIEW_METRICS
    from gearmand_py.queues.builtin import BuiltinQueue
    from gearmand_py.snapshot import take
    from gearmand_py.state import HIST_FINITE, NORMAL, RESULT_COMPLETE

    engine = Engine(engine_options(), BuiltinQueue())
    client = engine.connect(1, 0, 5, "127.0.0.1", 1)
    worker = engine.connect(2, 0, 6, "127.0.0.1", 2)
    engine.can_do(worker, b"f", 0)
    for waited, ran in ((0.0001, 0.00005), (0.00015, 200.0)):
        engine.now = 0.0
        job = engine.submit(client, b"f", b"", b"x", NORMAL, True)
        engine.now = waited
        assert engine.grab(worker) is job
        engine.now = waited + ran
        engine.finish(job, RESULT_COMPLETE)
    stats = engine.functions[b"f"].stats
    assert stats.wait[:3] == [1, 1, 0] and sum(stats.wait) == 2
    assert stats.run[0] == 1 and stats.run[HIST_FINITE] == 1 and sum(stats.run) == 2
    assert stats.submitted == ([0, 0, 0], [0, 2, 0])
    snap = take(engine, {}, VIEW_METRICS)
    families = {f.name: f for f in SnapshotCollector(snap, _NoProcess()).collect()}
    buckets = {s.labels["le"]: s.value for s in families["gearman_job_wait_seconds"].samples
               if s.name.endswith("_bucket")}
    assert (buckets["0.0001"], buckets["0.0002"], buckets["+Inf"]) == (1, 2, 2)


class _NoProcess:
    def collect(self) -> list:
        return []


# ---- real consumers: Prometheus, Chromium --------------------------------------------

def _prom_query(web: int, query: str) -> List[dict]:
    url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)["data"]["result"]
    except OSError:
        return []


def test_real_prometheus_scrapes(server_factory: Factory, tmp_path: object) -> None:
    require(PROMETHEUS, "Debian's prometheus package scrapes the endpoint")
    srv, mport = metrics_server(server_factory)
    with Conn(srv.port) as c:
        for i in range(3):
            submit(c, "promfn", f"{i}".encode(), cmd="SUBMIT_JOB_BG")
    web = free_low_port()
    conf = os.path.join(str(tmp_path), "prometheus.yml")
    with open(conf, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: gearmand\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{mport}']\n")
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={conf}", f"--web.listen-address=127.0.0.1:{web}",
         f"--storage.tsdb.path={os.path.join(str(tmp_path), 'tsdb')}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        query = 'gearman_jobs{function="promfn"}'
        assert wait_for(lambda: bool(_prom_query(web, query)), 40, 0.5), \
            "Prometheus never stored a sample"
        result = _prom_query(web, query)
        assert result[0]["value"][1] == "3"
        assert result[0]["metric"]["job"] == "gearmand"
        up = _prom_query(web, 'up{job="gearmand"}')
        assert up and up[0]["value"][1] == "1"
    finally:
        prom.terminate()
        prom.wait(10)


def _dump_dom(url: str, profile: str) -> str:
    run = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--virtual-time-budget=4000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def _row(dom: str, function: str) -> List[str]:
    m = re.search(r'<tr data-function="%s">(.*?)</tr>' % re.escape(function), dom, re.S)
    assert m, dom[-3000:]
    return re.findall(r"<td[^>]*>(.*?)</td>", m.group(1))


def test_status_page_in_chromium(server_factory: Factory, tmp_path: object) -> None:
    require(CHROMIUM, "Debian's chromium loads the status page")
    srv, mport = metrics_server(server_factory)
    client = Conn(srv.port)
    for i in range(5):
        submit(client, "pagefn", f"{i}".encode(), cmd="SUBMIT_JOB_BG")
    worker = Conn(srv.port)
    worker.send("SET_CLIENT_ID", "page-worker")
    worker.send("CAN_DO", "pagefn")
    job = grab(worker)
    profile = os.path.join(str(tmp_path), "profile")
    dom = _dump_dom(f"http://127.0.0.1:{mport}/", profile)
    cells = _row(dom, "pagefn")
    assert cells[:4] == ["pagefn", "4", "1", "1"], cells      # queued, running, workers
    assert "page-worker" in dom and 'class="badge ok"' in dom
    worker.send("WORK_COMPLETE", job.args[0], b"")
    for _ in range(3):                         # jobs run while the page polls
        job = grab(worker)
        worker.send("WORK_COMPLETE", job.args[0], b"")
    dom = _dump_dom(f"http://127.0.0.1:{mport}/", profile)
    cells = _row(dom, "pagefn")
    assert cells[:4] == ["pagefn", "1", "0", "1"], cells
    assert cells[7] == "4"                     # completed
    client.close()
    worker.close()


def test_status_json(server_factory: Factory) -> None:
    srv, mport = metrics_server(server_factory)
    with Conn(srv.port) as c:
        submit(c, "jfn", b"x", cmd="SUBMIT_JOB_HIGH_BG")
        w = Conn(srv.port)
        w.send("CAN_DO", "jfn")
        w.send("CAN_DO", "other")
        sync(w)                 # w may live on another I/O thread than c
        c.admin("status")
        status, headers, body = get(mport, "/status.json")
        doc = json.loads(body)
        assert headers["Content-Type"] == "application/json"
        fn = {f["name"]: f for f in doc["functions"]}["jfn"]
        assert (fn["total"], fn["queued"]["high"], fn["workers"]) == (1, 1, 1)
        assert [w["functions"] for w in doc["workers"]] == [["jfn", "other"]]
        assert doc["store"]["backend"] == "builtin" and doc["healthy"] is True
        w.close()
