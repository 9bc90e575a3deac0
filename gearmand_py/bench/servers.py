"""Start, probe and stop the Gearman servers under test (parent process, main thread).

Each server runs as a child process in its own session, bound to 127.0.0.1 on a free port
below 32768 (C gearmand cannot report an ephemeral port), with its log, pid file and any
queue files in a private temporary directory.  Every started server is registered in
``_LIVE`` so that :func:`stop_all` (called from ``finally`` blocks, ``atexit`` and the
SIGTERM handler) can kill what is left after an error or Ctrl-C.
"""

from __future__ import annotations

import atexit
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import List, Set

CLK_TCK = os.sysconf("SC_CLK_TCK")
C_GEARMAND = "/usr/sbin/gearmand"


@dataclass(frozen=True)
class ServerSpec:
    """A server to benchmark: a display name, a command and the -t values to sweep.

    ``cmd`` may contain ``{port}``, ``{threads}``, ``{tmpdir}`` placeholders; when it has no
    ``{port}`` the gearmand-style flags ``-p PORT -L 127.0.0.1 -t N -l LOG -P PIDFILE`` are
    appended.  ``extra`` (e.g. the ``--queue-args``) is appended after them, with the same
    placeholders substituted.
    """

    name: str
    cmd: List[str]
    threads: List[int]
    extra: List[str] = field(default_factory=list)

    def argv(self, port: int, threads: int, tmpdir: str) -> List[str]:
        subs = {"port": str(port), "threads": str(threads), "tmpdir": tmpdir}
        templated = any("{port}" in a for a in self.cmd)
        argv = [a.format(**subs) for a in self.cmd]
        if not templated:
            argv += ["-p", str(port), "-L", "127.0.0.1", "-t", str(threads),
                     "-l", os.path.join(tmpdir, "gearmand.log"),
                     "-P", os.path.join(tmpdir, "gearmand.pid")]
        return argv + [a.format(**subs) for a in self.extra]


def self_spec(threads: List[int], extra: List[str]) -> ServerSpec:
    """This project's server, run from the same source tree as the benchmark."""
    return ServerSpec("py", [sys.executable, "-m", "gearmand_py"], threads, extra)


def parse_server(text: str, threads: List[int], extra: List[str]) -> ServerSpec:
    """``NAME=CMD`` from the command line."""
    name, sep, cmd = text.partition("=")
    if not sep or not name or not cmd.strip():
        raise ValueError(f"--server wants NAME=COMMAND, got {text!r}")
    argv = shlex.split(cmd)
    if argv[0] == "/usr/bin/gearmand":
        raise ValueError("/usr/bin/gearmand is the Perl Gearman::Server wrapper on Debian; "
                         "C gearmand is /usr/sbin/gearmand")
    return ServerSpec(name, argv, threads, extra)


def free_port() -> int:
    """A loopback TCP port below 32768 that is free right now."""
    for _ in range(500):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768 on 127.0.0.1")


_LIVE: Set["Server"] = set()


def _die_with_parent() -> None:
    """In the server child before exec: get SIGKILL if the benchmark dies (PR_SET_PDEATHSIG),
    so a killed benchmark never leaves servers behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Server:
    """One running server process."""

    def __init__(self, spec: ServerSpec, threads: int, timeout: float = 30.0) -> None:
        self.spec = spec
        self.threads = threads
        self.tmpdir = tempfile.mkdtemp(prefix=f"gearmand-bench-{spec.name}-")
        self.port = free_port()
        self.argv = spec.argv(self.port, threads, self.tmpdir)
        env = dict(os.environ)
        if spec.name == "py":
            # Run the server from the same tree as the benchmark, installed or not.
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self._stderr = open(os.path.join(self.tmpdir, "stderr"), "wb")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=self._stderr, stderr=self._stderr,
                                         env=env, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        except OSError as e:
            self._stderr.close()
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            raise RuntimeError(f"cannot start {spec.name}: {e}") from e
        _LIVE.add(self)
        self._wait_ready(timeout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _tail(self) -> str:
        parts = []
        for fname in ("stderr", "gearmand.log"):
            try:
                with open(os.path.join(self.tmpdir, fname), "rb") as f:
                    parts.append(f.read()[-800:].decode("utf-8", "replace"))
            except OSError:
                pass
        return " | ".join(p.strip() for p in parts if p.strip())

    def _wait_ready(self, timeout: float) -> None:
        """Send ``version`` until ``OK`` comes back (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self._tail()
                self.stop()
                raise RuntimeError(f"{self.spec.name} -t {self.threads} exited with "
                                   f"{self.proc.returncode}: {shlex.join(self.argv)}: {tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"version\r\n")
                    if s.recv(100).startswith(b"OK"):
                        return
            except OSError:
                pass
            time.sleep(0.01)
        tail = self._tail()
        self.stop()
        raise RuntimeError(f"{self.spec.name} -t {self.threads} not ready after {timeout}s: "
                           f"{shlex.join(self.argv)}: {tail}")

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS from /proc/PID/status)."""
        with open(f"/proc/{self.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu(self) -> float:
        """User + system CPU seconds used so far (all threads)."""
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def wait(self) -> float:
        """Seconds the server's threads have spent runnable but waiting for a CPU (the
        run-queue delay in /proc/PID/task/*/schedstat; 0 where the kernel lacks it)."""
        total = 0
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return 0.0
        for tid in tids:
            try:
                with open(f"/proc/{self.pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # a thread that exited, or no schedstat
        return total / 1e9

    def nthreads(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/task"))
        except OSError:
            return 0

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; remove the temporary directory."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                self.proc.wait()
        self._stderr.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        _LIVE.discard(self)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all() -> None:
    """Stop every server this process started and has not stopped yet."""
    for srv in list(_LIVE):
        srv.stop(timeout=2.0)


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (inherited by servers and
    generator processes); returns the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


atexit.register(stop_all)

