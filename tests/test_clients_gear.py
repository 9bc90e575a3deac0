"""Round trips through the PyPI ``gear`` library (OpenStack's client/worker).

gear's worker uses GRAB_JOB_UNIQ + PRE_SLEEP/NOOP, its client submits with explicit
uniques, and its admin requests read list replies up to ``\\n.\\n``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from support import IMPL, Server

gear = pytest.importorskip("gear") if not os.environ.get("CI") else __import__("gear")

Handler = Callable[["gear.WorkerJob"], None]


class GearWorker:
    """A gear.Worker running ``handler`` for each job in a thread."""

    def __init__(self, port: int, functions: dict[str, int | None], handler: Handler,
                 name: str = "gear-worker") -> None:
        self.worker = gear.Worker(name)
        self.worker.addServer("127.0.0.1", port)
        self.worker.waitForServer(10)
        for fn, timeout in functions.items():
            # gear sends the timeout bytes as given (the server reads milliseconds)
            self.worker.registerFunction(fn, timeout=None if timeout is None
                                         else str(timeout).encode())
        self.handler = handler
        self.jobs: list[gear.WorkerJob] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                job = self.worker.getJob()
            except gear.InterruptedError:
                return
            self.jobs.append(job)
            self.handler(job)

    def stop(self) -> None:
        # Interrupt getJob() while gear's poll thread still runs: shutting down with a
        # GRAB outstanding makes gear wait 5 s for a reply nobody reads.
        self.worker.stopWaitingForJobs()
        self.thread.join(10)
        self.worker.shutdown()


@pytest.fixture
def gw() -> Iterator[Callable[..., GearWorker]]:
    started: list[GearWorker] = []

    def make(*args: object, **kw: object) -> GearWorker:
        w = GearWorker(*args, **kw)  # type: ignore[arg-type]
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


@pytest.fixture
def gc() -> Iterator[Callable[[int], gear.Client]]:
    started: list[gear.Client] = []

    def make(port: int) -> gear.Client:
        c = gear.Client("gear-client")
        c.addServer("127.0.0.1", port)
        c.waitForServer(10)
        started.append(c)
        return c

    yield make
    for c in started:
        c.shutdown()


def wait_complete(*jobs: gear.Job, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not all(j.complete for j in jobs):
        assert time.monotonic() < deadline, f"jobs not complete: {jobs}"
        time.sleep(0.01)


def admin(client: gear.Client, req: gear.AdminRequest) -> bytes:
    client.active_connections[0].sendAdminRequest(req, timeout=10)
    return bytes(req.response)


def echo_handler(job: gear.WorkerJob) -> None:
    job.sendWorkComplete(b"echo:" + job.arguments)


def test_gear_foreground_with_intermediate_packets(server: Server, gw, gc) -> None:  # noqa: ANN001
    def handler(job: gear.WorkerJob) -> None:
        job.sendWorkData(b"part1\0")
        job.sendWorkWarning(b"careful")
        job.sendWorkStatus(2, 5)
        job.sendWorkComplete(b"final")

    gw(server.port, {"fg": None}, handler)
    client = gc(server.port)
    job = gear.Job(b"fg", b"input\0bytes", unique=b"fg-1")
    client.submitJob(job)
    wait_complete(job)
    assert job.failure is False
    assert job.data == [b"part1\0", b"careful", b"final"]
    assert job.warning is True
    assert (job.numerator, job.denominator) == (b"2", b"5")


def test_gear_background_and_admin(server: Server, gw, gc) -> None:  # noqa: ANN001
    client = gc(server.port)
    job = gear.Job(b"bgfn", b"payload", unique=b"bg-unique")
    client.submitJob(job, background=True)
    assert job.handle and job.handle.startswith(b"H:")
    assert admin(client, gear.StatusAdminRequest()) == b"bgfn\t1\t0\t0\n.\n"
    assert admin(client, gear.ShowUniqueJobsAdminRequest()) == b"bg-unique\n.\n"
    assert admin(client, gear.ShowJobsAdminRequest()) == job.handle + b"\t0\t0\t1\n.\n"
    ver = admin(client, gear.VersionAdminRequest())
    assert ver == (b"OK 1.1.20+ds\n" if IMPL == "c" else b"OK 1.1.20\n")
    done = threading.Event()

    def handler(j: gear.WorkerJob) -> None:
        assert (j.handle, j.arguments, j.unique) == (job.handle, b"payload", b"bg-unique")
        j.sendWorkComplete(b"")
        done.set()

    gw(server.port, {"bgfn": None}, handler)
    assert done.wait(10)
    deadline = time.monotonic() + 5
    while admin(client, gear.StatusAdminRequest()) != b"bgfn\t0\t0\t1\n.\n":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = admin(client, gear.WorkersAdminRequest())
    assert b" gear-worker : bgfn\n" in workers, workers


def test_gear_priorities(server: Server, gw, gc) -> None:  # noqa: ANN001
    client = gc(server.port)
    for prec, data in ((gear.PRECEDENCE_LOW, b"low"), (gear.PRECEDENCE_NORMAL, b"normal"),
                       (gear.PRECEDENCE_HIGH, b"high"), (gear.PRECEDENCE_HIGH, b"high2")):
        client.submitJob(gear.Job(b"prio", data), background=True, precedence=prec)
    order: list[bytes] = []
    done = threading.Event()

    def handler(job: gear.WorkerJob) -> None:
        order.append(job.arguments)
        job.sendWorkComplete(b"")
        if len(order) == 4:
            done.set()

    gw(server.port, {"prio": None}, handler)
    assert done.wait(10)
    assert order == [b"high", b"high2", b"normal", b"low"]


def test_gear_unique_coalescing(server: Server, gw, gc) -> None:  # noqa: ANN001
    c1, c2 = gc(server.port), gc(server.port)
    j1 = gear.Job(b"co", b"data", unique=b"shared")
    j2 = gear.Job(b"co", b"data", unique=b"shared")
    c1.submitJob(j1)
    c2.submitJob(j2)
    assert j1.handle == j2.handle
    b1 = gear.Job(b"co", b"x", unique=b"bgshared")
    b2 = gear.Job(b"co", b"y", unique=b"bgshared")
    c1.submitJob(b1, background=True)
    c1.submitJob(b2, background=True)
    assert b1.handle == b2.handle
    w = gw(server.port, {"co": None}, echo_handler)
    wait_complete(j1, j2)
    assert j1.data == j2.data == [b"echo:data"]
    deadline = time.monotonic() + 5
    while len(w.jobs) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.2)
    assert len(w.jobs) == 2  # one run per unique


def test_gear_exceptions(server: Server, gw, gc) -> None:  # noqa: ANN001
    def handler(job: gear.WorkerJob) -> None:
        job.sendWorkException(b"it broke")

    gw(server.port, {"exc": None}, handler)
    with_exc = gc(server.port)
    assert with_exc.setOption("exceptions") is True
    without = gc(server.port)
    j1 = gear.Job(b"exc", b"1")
    j2 = gear.Job(b"exc", b"2")
    with_exc.submitJob(j1)
    without.submitJob(j2)
    wait_complete(j1, j2)
    assert (j1.failure, j1.exception) == (True, b"it broke")
    assert (j2.failure, j2.exception) == (True, None)


def test_gear_work_fail(server: Server, gw, gc) -> None:  # noqa: ANN001
    gw(server.port, {"failing": None}, lambda job: job.sendWorkFail())
    client = gc(server.port)
    job = gear.Job(b"failing", b"x")
    client.submitJob(job)
    wait_complete(job)
    assert job.failure is True and job.data == []


def test_gear_get_status(server: Server, gw, gc) -> None:  # noqa: ANN001
    release = threading.Event()

    def handler(job: gear.WorkerJob) -> None:
        job.sendWorkStatus(1, 3)
        release.wait(10)
        job.sendWorkComplete(b"ok")

    gw(server.port, {"st": None}, handler)
    client = gc(server.port)
    job = gear.Job(b"st", b"x")
    client.submitJob(job)
    deadline = time.monotonic() + 10
    while job.numerator != b"1":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    job.numerator = job.denominator = None
    client.sendPacket(gear.Packet(gear.constants.REQ, gear.constants.GET_STATUS, job.handle),
                      job.connection)
    while job.numerator is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert (job.known, job.running, job.numerator, job.denominator) == (True, True, b"1", b"3")
    release.set()
    wait_complete(job)
    assert job.data == [b"ok"]


def test_gear_worker_death_requeues(server: Server, gw, gc) -> None:  # noqa: ANN001
    grabbed = threading.Event()
    w1 = gw(server.port, {"wd": None}, lambda job: grabbed.set(), name="dies")
    client = gc(server.port)
    job = gear.Job(b"wd", b"payload")
    client.submitJob(job)
    assert grabbed.wait(10)
    w1.stop()  # disconnects while holding the job
    gw(server.port, {"wd": None}, echo_handler, name="survivor")
    wait_complete(job)
    assert job.data == [b"echo:payload"] and job.failure is False
    assert admin(client, gear.ShowJobsAdminRequest()) == b".\n"


def test_gear_can_do_timeout(server: Server, gw, gc) -> None:  # noqa: ANN001
    """A CAN_DO_TIMEOUT worker sitting on a job loses it after the timeout (ms)."""
    held, release = threading.Event(), threading.Event()

    def sit(job: gear.WorkerJob) -> None:
        # keep the job; returning would GRAB and PRE_SLEEP, and C's PRE_SLEEP cancels the timer
        held.set()
        release.wait(15)

    gw(server.port, {"cdt": 1000}, sit, name="sits")
    client = gc(server.port)
    job = gear.Job(b"cdt", b"x", unique=b"cdt-u")
    t0 = time.monotonic()
    client.submitJob(job)
    assert held.wait(10)
    gw(server.port, {"cdt": None}, echo_handler, name="finisher")
    wait_complete(job, timeout=10)
    assert time.monotonic() - t0 >= 0.9
    assert job.data == [b"echo:x"]
    release.set()


def test_gear_cancel_job(server: Server, gc) -> None:  # noqa: ANN001
    client = gc(server.port)
    job = gear.Job(b"nobody", b"x")
    client.submitJob(job)
    assert admin(client, gear.CancelJobAdminRequest(job.handle)) == b"OK\r\n"
    wait_complete(job)
    assert job.failure is True


def test_gear_many_jobs_many_workers(server: Server, gw, gc) -> None:  # noqa: ANN001
    for i in range(4):
        gw(server.port, {"many": None}, echo_handler, name=f"w{i}")
    clients = [gc(server.port) for _ in range(5)]
    jobs = []
    for i in range(100):
        job = gear.Job(b"many", f"n{i}".encode())
        clients[i % 5].submitJob(job)
        jobs.append(job)
    wait_complete(*jobs, timeout=30)
    assert [j.data for j in jobs] == [[f"echo:n{i}".encode()] for i in range(100)]
