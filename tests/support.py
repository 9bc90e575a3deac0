"""Test support: start real gearmand processes (this project's or C's) on loopback.

Every server binds 127.0.0.1.  This project's server gets ``-p 0``; the port it bound is read
from its log ("Listening on 127.0.0.1:<port>") or, at quieter --verbose levels, from
/proc.  C gearmand cannot report an ephemeral port, so it gets a free port below 32768
(an ephemeral port that C would be given could still be in TIME_WAIT).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import pytest

from gearmand_py.bench.servers import free_port
from gearproto import Conn

C_GEARMAND = "/usr/sbin/gearmand"
IN_CI = bool(os.environ.get("CI"))
#: Which server the shared tests run against: "py" (this project) or "c" (C gearmand).
IMPL = os.environ.get("GEARMAND_TEST_IMPL", "py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTEN_RE = re.compile(rb"Listening on 127\.0\.0\.1:(\d+)")


def py_gearmand_cmd() -> List[str]:
    """The command that runs this project's server (console script if first on PATH)."""
    exe = shutil.which("gearmand")
    if exe and not exe.startswith("/usr/bin/") and not exe.startswith("/usr/sbin/"):
        return [exe]
    return [sys.executable, "-m", "gearmand_py"]


def read_text(path: str) -> str:
    """A file's text, or "" when it does not exist (logs, pid files)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def listening_ports(pid: int) -> List[int]:
    """TCP ports a process listens on, from /proc (works at any --verbose level)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return []
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and fields[9] in inodes:   # LISTEN
                        ports.append(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return sorted(set(ports))


def free_low_port() -> int:
    """A port below 32768 that is free right now (for servers that need a fixed port)."""
    return free_port()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes the connection."""
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def server_env(**extra: str) -> Dict[str, str]:
    """Environment for a server or tool the tests run: this checkout first on PYTHONPATH,
    no GEARMAND_PORT from the caller, sbin on PATH (start-stop-daemon, C gearmand)."""
    env = dict(os.environ)
    env.pop("GEARMAND_PORT", None)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
    env.update(extra)
    return env


def require(path: str, why: str) -> None:
    """Fail in CI, skip elsewhere, when a tool the test needs is missing."""
    if os.path.exists(path) or shutil.which(path):
        return
    if IN_CI:
        pytest.fail(f"{path} missing in CI: {why}")
    pytest.skip(f"{path} not installed ({why}); CI installs it")


def _settle_probes(port: int, deadline: float) -> None:
    """Wait until the server has noticed that the readiness probe closed.

    With -t N >= 2 a close seen by one I/O thread and a test's first request on another
    reach the processing thread in either order, so a test listing ``workers`` could still
    see the probe.  Poll on a fresh connection until it is the only one listed; the last
    poll connection's own close gets a short grace period.
    """
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"workers\r\n")
                data = b""
                while not data.endswith(b".\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return
        if data.count(b"\n") <= 2:          # one row (this connection) and "."
            break
        time.sleep(0.01)
    time.sleep(0.05)


class Server:
    """A running gearmand subprocess bound to 127.0.0.1."""

    def __init__(self, args: Sequence[str] = (), impl: str = "py", timeout: float = 20.0,
                 env: Optional[dict] = None, ready_tls: Optional[str] = None) -> None:
        """``ready_tls``: the CA file to trust when the server speaks TLS (--ssl)."""
        self.impl = impl
        self.ready_tls = ready_tls
        self.tmpdir = tempfile.mkdtemp(prefix="gearmand-test-")
        self.log_path = os.path.join(self.tmpdir, "gearmand.log")
        self.pid_path = os.path.join(self.tmpdir, "gearmand.pid")
        args = list(args)
        base: List[str]
        if impl == "py":
            base = py_gearmand_cmd()
            port_args = ["-p", "0"]
        elif impl == "c":
            base = [C_GEARMAND]
            port_args = ["-p", str(free_low_port())]
        else:
            raise ValueError(impl)
        if not any(a in ("-p", "--port") or a.startswith("--port=") for a in args):
            args = port_args + args
        if not any(a in ("-L", "--listen") or a.startswith("--listen=") for a in args):
            args = ["-L", "127.0.0.1"] + args
        if not any(a in ("-l", "--log-file") or a.startswith("--log-file=") for a in args):
            args += ["-l", self.log_path]
        if not any(a.startswith("--verbose") or (a.startswith("-v") and impl == "py")
                   for a in args):
            args += ["--verbose", "INFO"]
        if not any(a in ("-P", "--pid-file") or a.startswith("--pid-file=") for a in args):
            args += ["-P", self.pid_path]
        self.args = base + args
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env)
        self.port = self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        explicit = None
        for i, a in enumerate(self.args):
            if a in ("-p", "--port") and i + 1 < len(self.args) and self.args[i + 1] != "0":
                explicit = int(self.args[i + 1])
            elif a.startswith("--port=") and a != "--port=0":
                explicit = int(a.split("=", 1)[1])
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise RuntimeError(f"server exited {self.proc.returncode}: {err.decode()!r}")
            port = explicit
            if port is None:
                try:
                    with open(self.log_path, "rb") as f:
                        m = LISTEN_RE.search(f.read())
                except FileNotFoundError:
                    m = None
                port = int(m.group(1)) if m else None
            if port is None:
                found = listening_ports(self.proc.pid)
                port = found[0] if found else None
            if port is not None:
                try:
                    with self._probe(port) as s:
                        s.sendall(b"version\r\n")
                        s.settimeout(2)
                        ready = s.recv(100).startswith(b"OK")
                except OSError:
                    ready = False
                if ready:
                    if self.ready_tls is None:
                        _settle_probes(port, deadline)
                    return port
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s: {self.args}")

    def _probe(self, port: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        if self.ready_tls is None:
            return sock
        ctx = ssl.create_default_context(cafile=self.ready_tls)
        ctx.check_hostname = False
        return ctx.wrap_socket(sock, server_hostname="localhost")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def connect(self, timeout: float = 10.0) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: ``server_factory`` fixture type: start a server with ``(*args, impl=..., **kw)``.
Factory = Callable[..., Server]
#: Tests of deliberate differences from C 1.1.20: skipped when the suite targets C.
only_ours = pytest.mark.skipif(IMPL == "c", reason="deliberate difference from C 1.1.20")


def sync(conn: Conn) -> None:
    """Round trip through the job engine: everything sent before is processed."""
    conn.send("GET_STATUS", b"H:sync:0")
    p = conn.expect("STATUS_RES")
    assert p.args[0] == b"H:sync:0"
