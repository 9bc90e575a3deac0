"""Round trips through PHP's gearman extension (Debian php-cli + php-gearman, libgearman).

Scripts live in tests/scripts/php_client.php and php_worker.php; each prints JSON.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from typing import Any

import pytest
from gearproto import Conn, status, wait_for
from support import Server, require

PHP = "/usr/bin/php"
SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


@pytest.fixture(autouse=True)
def _php() -> None:
    require(PHP, "PHP round trips need php-cli")
    r = subprocess.run([PHP, "-r", "exit(extension_loaded('gearman') ? 0 : 1);"],
                       capture_output=True, timeout=20, check=False)
    if r.returncode != 0:
        require("/nonexistent/php-gearman", "PHP round trips need php-gearman")


def php_client(srv: Server, *args: str, timeout: float = 30) -> Any:
    r = subprocess.run([PHP, os.path.join(SCRIPTS, "php_client.php"), str(srv.port), *args],
                       capture_output=True, timeout=timeout, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def php_worker(srv: Server, procs: list[subprocess.Popen[bytes]], count: int, *fns: str,
               wait: bool = True) -> subprocess.Popen[bytes]:
    names = [f.split(":")[0] for f in fns]
    before = {n: status(srv.port).get(n, (0, 0, 0))[2] for n in names}
    p = subprocess.Popen([PHP, os.path.join(SCRIPTS, "php_worker.php"), str(srv.port),
                          str(count), *fns], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(p)
    if wait:
        assert wait_for(lambda: all(status(srv.port).get(n, (0, 0, 0))[2] > before[n]
                                    for n in names), 15), "PHP worker did not register"
    return p


def worker_jobs(p: subprocess.Popen[bytes], timeout: float = 30) -> list[dict[str, str]]:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    jobs = [json.loads(line) for line in out.decode().splitlines()]
    for j in jobs:
        j["data"] = base64.b64decode(j["data"]).decode("latin-1")
    return jobs


def test_php_foreground_priorities(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    w = php_worker(server, procs, 3, "php_rev")
    for prio in ("normal", "high", "low"):
        assert php_client(server, "do", prio, "php_rev", f"hello-{prio}") == {
            "result": f"hello-{prio}"[::-1], "rc": 0}
    assert [j["data"] for j in worker_jobs(w)] == ["hello-normal", "hello-high", "hello-low"]


def test_php_background_priority_order(server: Server,
                                       procs: list[subprocess.Popen[bytes]]) -> None:
    handles = []
    for prio, data in (("low", "L"), ("normal", "N"), ("high", "H")):
        r = php_client(server, "bg", prio, "php_order", data)
        assert r["rc"] == 0 and r["handle"].startswith("H:")
        handles.append(r["handle"])
    assert len(set(handles)) == 3
    assert status(server.port)["php_order"] == (3, 0, 0)
    w = php_worker(server, procs, 3, "php_order", wait=False)
    jobs = worker_jobs(w)
    assert [j["data"] for j in jobs] == ["H", "N", "L"]
    assert [j["handle"] for j in jobs] == handles[::-1]


def test_php_background_unique(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    h1 = php_client(server, "bg", "normal", "php_u", "a", "the-key")["handle"]
    h2 = php_client(server, "bg", "high", "php_u", "b", "the-key")["handle"]
    assert h1 == h2
    r = php_client(server, "status_unique", "the-key")
    assert r == {"status": [True, False, 0, 0]}
    w = php_worker(server, procs, 1, "php_u", wait=False)
    jobs = worker_jobs(w)
    assert [(j["data"], j["unique"], j["handle"]) for j in jobs] == [("a", "the-key", h1)]


def test_php_intermediate_packets(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    php_worker(server, procs, 1, "php_chatty")
    r = php_client(server, "tasks", "php_chatty", "x")
    assert r == {"events": [["data", "d1"], ["warning", "w1"], ["status", 1, 2],
                            ["complete", "done"]], "ok": True, "rc": 0}


def test_php_fail_and_exception(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    php_worker(server, procs, 3, "php_fail", "php_exc")
    assert php_client(server, "tasks", "php_fail", "x")["events"] == [["fail"]]
    r = php_client(server, "tasks", "php_exc", "x", "exceptions")
    assert r["events"] == [["exception", "boom"]]
    r = php_client(server, "do", "normal", "php_exc", "x")
    assert r == {"result": "", "rc": 23}  # GEARMAN_WORK_EXCEPTION


def test_php_job_status(server: Server) -> None:
    h = php_client(server, "bg", "normal", "php_nobody", "x")["handle"]
    assert php_client(server, "status", h) == {"status": [True, False, 0, 0]}
    assert php_client(server, "status", "H:nohost:1") == {"status": [False, False, 0, 0]}


def test_php_worker_death_requeues(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    w1 = php_worker(server, procs, 1, "php_slow")
    client = subprocess.Popen([PHP, os.path.join(SCRIPTS, "php_client.php"), str(server.port),
                               "do", "normal", "php_slow", "payload"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(client)
    assert wait_for(lambda: status(server.port).get("php_slow") == (1, 1, 1), 15), \
        status(server.port)
    w1.send_signal(signal.SIGKILL)
    w1.wait(5)
    # a worker that answers php_slow without sleeping: reuse the generic handler
    assert wait_for(lambda: status(server.port).get("php_slow") == (1, 0, 0), 10)
    w = Conn(server.port)
    w.send("CAN_DO", "php_slow")
    w.send("GRAB_JOB")
    p = w.expect("JOB_ASSIGN")
    assert p.args[1:] == [b"php_slow", b"payload"]
    w.send("WORK_COMPLETE", p.args[0], b"rescued")
    out, err = client.communicate(timeout=15)
    assert json.loads(out) == {"result": "rescued", "rc": 0}, err
    w.close()


def test_php_can_do_timeout(server: Server, procs: list[subprocess.Popen[bytes]]) -> None:
    """addFunction(..., timeout) sends CAN_DO_TIMEOUT; the held job is requeued."""
    php_worker(server, procs, 1, "php_slow:1000")
    client = subprocess.Popen([PHP, os.path.join(SCRIPTS, "php_client.php"), str(server.port),
                               "do", "normal", "php_slow", "t"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(client)
    assert wait_for(lambda: status(server.port).get("php_slow", (0, 0, 0))[1] == 1, 15)
    w = Conn(server.port)
    w.send("CAN_DO", "php_slow")
    w.send("PRE_SLEEP")
    w.expect("NOOP", timeout=5)  # the requeue after ~1 s wakes us
    p = None
    for _ in range(20):  # C can NOOP a moment before the job is back in the queue
        w.send("GRAB_JOB")
        p = w.recv()
        if p.name == "JOB_ASSIGN":
            break
        time.sleep(0.05)
    assert p is not None and p.name == "JOB_ASSIGN", p
    w.send("WORK_COMPLETE", p.args[0], b"second try")
    out, err = client.communicate(timeout=15)
    assert json.loads(out) == {"result": "second try", "rc": 0}, err
    w.close()
