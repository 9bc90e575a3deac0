"""Running as a service (issue 4): daemon, pid file, log file and SIGHUP rotation, signals,
-u after binding, -f, keepalive, log format (text and --log-format json), -d without -l,
systemd's sd_notify.  Real subprocesses; every wait is bounded."""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import pytest


from gearproto import Conn, submit, wait_for
from support import (C_GEARMAND, free_low_port, listening_ports, pid_alive, py_gearmand_cmd,
                     read_text, require, server_env)

LISTEN_RE = re.compile(r"Listening on 127\.0\.0\.1:(\d+) \(\d+\)")
#: gearmand's line layout (C gearmand's libgearman-server/log.cc)
LINE_RE = re.compile(r"^ *(FATAL|ALERT|CRITICAL|ERROR|WARNING|NOTICE|INFO|DEBUG) "
                     r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.(\d{6}) \[ *(main|proc|\d+) \] (.*)$")
IS_ROOT = os.geteuid() == 0


def cmd(impl: str = "py") -> List[str]:
    return py_gearmand_cmd() if impl == "py" else [C_GEARMAND]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def version_ok(port: int) -> bool:
    with Conn(port, 5) as c:
        return c.admin("version").startswith(b"OK ")


class Proc:
    """A foreground server we start ourselves (custom -l/-P paths and signals)."""

    def __init__(self, tmp: str, args: Sequence[str] = (), impl: str = "py",
                 log: Optional[str] = None, port_arg: Optional[str] = None,
                 verbose: str = "INFO") -> None:
        self.log = log or os.path.join(tmp, "gearmand.log")
        self.pid_file = os.path.join(tmp, "gearmand.pid")
        if port_arg is None and (impl == "c" or verbose not in ("INFO", "DEBUG")):
            port_arg = str(free_low_port())    # no "Listening on" line to read the port from
        self.fixed_port = int(port_arg) if port_arg is not None else None
        port = port_arg if port_arg is not None else "0"
        self.args = cmd(impl) + ["-p", port, "-L", "127.0.0.1", "-l", self.log,
                                 "-P", self.pid_file, "--verbose", verbose] + list(args)
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=server_env(), stdin=subprocess.DEVNULL)
        self.port = self.wait_port()

    def wait_port(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = LISTEN_RE.search(read_text(self.log))
            port = self.fixed_port or (int(m.group(1)) if m else None)
            if port and port_open(port):
                return port
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: "
                                     f"{self.proc.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.02)
        self.kill()
        raise AssertionError("server not ready")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for s in (self.proc.stdout, self.proc.stderr):
            if s:
                s.close()


@pytest.fixture
def own_servers():  # type: ignore[no-untyped-def]
    """Proc servers a test starts; killed at teardown."""
    started: List[Proc] = []
    yield started
    for p in started:
        p.kill()


# ---- daemon, pid file, log file, SIGHUP rotation -----------------------------------------

def launch_daemon(tmp: str, extra: Sequence[str] = (), impl: str = "py",
                  port: str = "0", pid: str = "") -> subprocess.CompletedProcess:
    log = os.path.join(tmp, "gearmand.log")
    pid = pid or os.path.join(tmp, "gearmand.pid")
    return subprocess.run(cmd(impl) + ["-d", "-p", port, "-L", "127.0.0.1", "-l", log,
                                       "-P", pid, "--verbose", "INFO"] + list(extra),
                          capture_output=True, text=True, timeout=30, env=server_env(),
                          stdin=subprocess.DEVNULL)


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    if wait_for(lambda: not pid_alive(pid), timeout):
        return True
    os.kill(pid, signal.SIGKILL)
    return False


def test_daemon_ready_pid_file_log_rotation_and_stop(tmp_path) -> None:  # type: ignore
    tmp = str(tmp_path)
    log, log1, pid_file = (os.path.join(tmp, n) for n in ("gearmand.log", "gearmand.log.1",
                                                          "gearmand.pid"))
    launched = launch_daemon(tmp)
    assert (launched.returncode, launched.stdout, launched.stderr) == (0, "", "")
    # the launcher returned only once the daemon was ready: pid file and port are there now
    pid = int(read_text(pid_file))
    try:
        assert read_text(pid_file) == f"{pid}\n"
        port = int(LISTEN_RE.search(read_text(log)).group(1))  # type: ignore[union-attr]
        assert version_ok(port)
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().split(") ", 1)[1].split()
        ppid, sid = int(fields[1]), int(fields[3])
        assert ppid == 1 or ppid != os.getpid()
        assert sid != os.getsid(0)                        # detached: a new session
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/cwd") == os.getcwd()   # no chdir, like gearmand
        # logrotate: rename, SIGHUP, the server writes gearmand's NOTICE line to a new file
        os.rename(log, log1)
        os.kill(pid, signal.SIGHUP)
        assert wait_for(lambda: " NOTICE SIGHUP, reopening log file\n" in read_text(log), 10)
        assert read_text(log).startswith(" NOTICE SIGHUP, reopening log file\n")
        assert version_ok(port)                           # still serving after SIGHUP
        assert wait_for(lambda: "Accepted connection" in read_text(log), 5)   # new lines: new file
        assert read_text(log1).count("Accepted connection") == 1              # only the first
    finally:
        assert stop_pid(pid)
    assert not os.path.exists(pid_file)
    assert not port_open(port)
    assert "Shutdown complete" in read_text(log)


def test_sighup_line_written_at_default_verbosity(tmp_path, own_servers) -> None:  # type: ignore
    p = Proc(str(tmp_path), verbose="ERROR")
    own_servers.append(p)
    assert wait_for(lambda: os.path.exists(p.pid_file), 10)
    assert read_text(p.log) == ""
    os.rename(p.log, p.log + ".1")
    p.signal(signal.SIGHUP)
    assert wait_for(lambda: read_text(p.log) == " NOTICE SIGHUP, reopening log file\n", 10)
    assert version_ok(p.port)


@pytest.mark.parametrize("extra,expected,logged", [
    # fails in Server.start() (queue open), after logging is set up: logged once
    (["-q", "libsqlite3", "--libsqlite3-db=/nonexistent-dir/q.db"],
     "Error while initializing the queue : libsqlite3", 1),
    (["-q", "nosuch"], "Error while initializing the queue : nosuch", 0),  # before logging
])
def test_daemon_start_failure_reaches_the_launcher(tmp_path, extra, expected,  # type: ignore
                                                   logged) -> None:
    launched = launch_daemon(str(tmp_path), extra)
    assert launched.returncode == 1
    assert len(launched.stderr.splitlines()) == 1
    assert launched.stderr.split(": ", 1)[1].startswith(expected)
    assert not os.path.exists(os.path.join(str(tmp_path), "gearmand.pid"))
    lines = [ln for ln in read_text(os.path.join(str(tmp_path), "gearmand.log")).splitlines()
             if " ERROR " in ln]
    assert len(lines) == logged                               # once, by the daemon
    assert all(expected in ln for ln in lines)


def test_daemon_bind_failure_reaches_the_launcher(tmp_path) -> None:  # type: ignore
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        launched = launch_daemon(str(tmp_path), port=str(port))
    assert launched.returncode == 1
    assert len(launched.stderr.splitlines()) == 1
    assert "Address already in use" in launched.stderr
    assert "Traceback" not in launched.stderr


def test_pid_file_error_message_like_gearmand(tmp_path) -> None:  # type: ignore
    bad = "/nonexistent-dir/gearmand.pid"
    expected = ("Could not open pid file for writing: /nonexistent-dir/gearmand.pid"
                "(No such file or directory) (No such file or directory)")
    ours = subprocess.run(cmd() + ["-p", "0", "-L", "127.0.0.1", "-l", "none", "-P", bad],
                          capture_output=True, text=True, timeout=30, env=server_env())
    assert ours.returncode == 1
    assert ours.stderr.split(": ", 1)[1].rstrip("\n") == expected
    daemon = launch_daemon(str(tmp_path), pid=bad)     # written by the daemon: reported
    assert daemon.returncode == 1
    assert daemon.stderr.split(": ", 1)[1].rstrip("\n") == expected
    require(C_GEARMAND, "differential")
    theirs = subprocess.run([C_GEARMAND, "-p", str(free_low_port()), "-L", "127.0.0.1",
                             "-l", "none", "-P", bad], capture_output=True, text=True,
                            timeout=30)
    assert theirs.returncode == 1
    assert theirs.stderr.split(": ", 1)[1].rstrip("\n") == expected


# ---- signals ------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("threads", ["0", "1", "4"])
def test_sigterm_sigint_stop_at_once(tmp_path, own_servers, sig, threads) -> None:  # type: ignore
    p = Proc(str(tmp_path), ["-t", threads])
    own_servers.append(p)
    assert os.path.exists(p.pid_file)
    worker = Conn(p.port)
    worker.send("CAN_DO", b"f")
    client = Conn(p.port)
    submit(client, b"f", b"data")           # a job that will never finish
    p.signal(sig)
    assert p.wait(10) == 0
    assert not os.path.exists(p.pid_file)
    assert not port_open(p.port)
    assert "Shutdown complete" in read_text(p.log)
    assert p.proc.stderr.read() == b""      # type: ignore[union-attr]
    worker.close()
    client.close()


@pytest.mark.parametrize("threads", ["0", "1", "4"])
def test_sigusr1_graceful_waits_for_jobs(tmp_path, own_servers, threads) -> None:  # type: ignore
    p = Proc(str(tmp_path), ["-t", threads])
    own_servers.append(p)
    worker = Conn(p.port)
    worker.send("CAN_DO", b"slow")
    client = Conn(p.port)
    handle = submit(client, b"slow", b"x")
    worker.send("GRAB_JOB")
    assign = worker.expect("JOB_ASSIGN")
    assert assign.args[0] == handle
    p.signal(signal.SIGUSR1)
    assert wait_for(lambda: not port_open(p.port), 10)    # new connections refused
    time.sleep(0.3)
    assert p.proc.poll() is None                           # the running job keeps it alive
    assert client.admin("version").startswith(b"OK")       # existing connections served
    worker.send("WORK_COMPLETE", handle, b"done")
    assert client.expect("WORK_COMPLETE").args[1] == b"done"
    assert p.wait(10) == 0
    assert not os.path.exists(p.pid_file)
    worker.close()
    client.close()


def test_sigusr1_without_jobs_exits_at_once(tmp_path, own_servers) -> None:  # type: ignore
    p = Proc(str(tmp_path))
    own_servers.append(p)
    p.signal(signal.SIGUSR1)
    assert p.wait(10) == 0
    assert not os.path.exists(p.pid_file)


# ---- -u, -f, keepalive ------------------------------------------------------------------------

def privileged_free_port() -> int:
    for port in range(700, 1000):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port below 1024")


def proc_status(pid: int) -> Dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


@pytest.mark.skipif(not IS_ROOT, reason="needs root (CI runs as root)")
def test_user_switch_after_binding_privileged_port(own_servers) -> None:  # type: ignore
    tmp = tempfile.mkdtemp(prefix="gearmand-u-")     # pytest's tmp_path is root-only
    os.chmod(tmp, 0o777)
    port = privileged_free_port()
    p = Proc(tmp, ["-u", "nobody"], port_arg=str(port))
    own_servers.append(p)
    assert p.port == port and version_ok(port)
    nobody = pwd.getpwnam("nobody")
    status = proc_status(p.proc.pid)
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
    assert status["Groups"].strip() == ""
    assert os.stat(p.log).st_uid == nobody.pw_uid       # SIGHUP can reopen it
    assert os.stat(p.pid_file).st_uid == nobody.pw_uid  # written after the switch
    p.signal(signal.SIGTERM)
    assert p.wait(10) == 0
    shutil.rmtree(tmp, ignore_errors=True)


def _not_root_message() -> str:
    """Our -u check run in a forked child whose uid and euid are not 0."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - child
        try:
            os.close(r)
            from gearmand_py.daemon import lookup_user
            from gearmand_py.errors import ConfigError
            os.setresuid(65534, 65534, 0)
            try:
                lookup_user("nobody")
                msg = "no error"
            except ConfigError as exc:
                msg = str(exc)
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 1000)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(child, 0)
    return data.decode()


@pytest.mark.skipif(not IS_ROOT, reason="needs root to become another user")
def test_user_switch_needs_root_like_gearmand() -> None:
    assert _not_root_message() == "Must be root to switch users."
    require(C_GEARMAND, "differential")
    nobody = pwd.getpwnam("nobody")
    theirs = subprocess.run([C_GEARMAND, "-u", "nobody", "-l", "none", "-p", "0"],
                            capture_output=True, text=True, timeout=30,
                            preexec_fn=lambda: os.setuid(nobody.pw_uid))
    assert theirs.returncode == 1
    assert theirs.stderr.split(": ", 1)[1].strip() == "Must be root to switch users."


def test_unknown_user_like_gearmand() -> None:
    ours = subprocess.run(cmd() + ["-u", "no-such-user-xyz", "-l", "none", "-p", "0"],
                          capture_output=True, text=True, timeout=30, env=server_env())
    assert ours.returncode == 1
    assert ours.stderr.split(": ", 1)[1].strip() == "Could not find user : no-such-user-xyz"
    if IS_ROOT and os.path.exists(C_GEARMAND):
        theirs = subprocess.run([C_GEARMAND, "-u", "no-such-user-xyz", "-l", "none", "-p",
                                 str(free_low_port())], capture_output=True, text=True,
                                timeout=30)
        assert theirs.returncode == 1
        assert theirs.stderr.split(": ", 1)[1].strip() == "Could not find user : no-such-user-xyz"


def open_files_limit(pid: int) -> List[str]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return line.split()[3:5]
    raise AssertionError("no open files line")


@pytest.mark.parametrize("impl", ["py", "c"])
def test_file_descriptor_limit(tmp_path, own_servers, impl) -> None:  # type: ignore
    if impl == "c":
        require(C_GEARMAND, "differential")
    p = Proc(str(tmp_path), ["-f", "4321"], impl=impl)
    own_servers.append(p)
    soft, hard = open_files_limit(p.proc.pid)
    assert soft == "4321"
    assert hard == "unlimited" or int(hard) >= 4321


def test_file_descriptor_limit_failure_message() -> None:
    expected = ("Failed to set limit for the number of file descriptors.  Try running as root "
                "or giving a smaller value to -f. (Operation not permitted)")
    ours = subprocess.run(cmd() + ["-f", "4000000000", "-l", "none", "-p", "0"],
                          capture_output=True, text=True, timeout=30, env=server_env())
    assert ours.returncode == 1
    assert ours.stderr.split(": ", 1)[1].strip() == expected
    require(C_GEARMAND, "differential")
    theirs = subprocess.run([C_GEARMAND, "-f", "4000000000", "-l", "none", "-p", "0"],
                            capture_output=True, text=True, timeout=30)
    assert theirs.returncode == 1
    assert theirs.stderr.split(": ", 1)[1].strip() == expected


SYS_pidfd_getfd = 438


def steal_fd(pid: int, fd: int) -> socket.socket:
    """A duplicate of another process's descriptor (pidfd_getfd; needs ptrace rights)."""
    pidfd = os.pidfd_open(pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        got = libc.syscall(SYS_pidfd_getfd, pidfd, fd, 0)
        if got < 0:
            pytest.skip(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
        return socket.socket(fileno=got)
    finally:
        os.close(pidfd)


def listening_fd(pid: int, port: int) -> int:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:"):
            try:
                s = steal_fd(pid, int(fd))
            except OSError:
                continue
            try:
                if s.family == socket.AF_INET and s.getsockname()[1] == port and \
                        s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    return int(fd)
            finally:
                s.close()
    raise AssertionError("listening socket not found")


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open")
@pytest.mark.parametrize("impl", ["py", "c"])
def test_keepalive_values_on_listening_socket(tmp_path, own_servers, impl) -> None:  # type: ignore
    if impl == "c":
        require(C_GEARMAND, "differential")
    p = Proc(str(tmp_path), ["--keepalive", "--keepalive-idle=77", "--keepalive-interval=11",
                             "--keepalive-count=5", "-b", "17"], impl=impl)
    own_servers.append(p)
    s = steal_fd(p.proc.pid, listening_fd(p.proc.pid, p.port))
    try:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 77
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 11
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 5
    finally:
        s.close()


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open")
def test_no_keepalive_on_listening_socket_by_default(tmp_path, own_servers) -> None:  # type: ignore
    p = Proc(str(tmp_path))
    own_servers.append(p)
    s = steal_fd(p.proc.pid, listening_fd(p.proc.pid, p.port))
    try:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    finally:
        s.close()


def test_backlog_applied(tmp_path, own_servers) -> None:  # type: ignore
    """ss shows a listening socket's backlog in its Send-Q column."""
    if not os.path.exists("/usr/bin/ss") and not os.path.exists("/bin/ss"):
        require("ss", "iproute2")
    p = Proc(str(tmp_path), ["-b", "17"])
    own_servers.append(p)
    out = subprocess.run(["ss", "-Htln", f"sport = :{p.port}"], capture_output=True,
                         text=True, timeout=10).stdout
    assert out.split()[2] == "17", out


# ---- logging --------------------------------------------------------------------------------

def test_log_lines_in_gearmand_format(tmp_path, own_servers) -> None:  # type: ignore
    p = Proc(str(tmp_path), ["-t", "2"])
    own_servers.append(p)
    assert version_ok(p.port)
    p.signal(signal.SIGTERM)
    assert p.wait(10) == 0
    lines = read_text(p.log).splitlines()
    assert lines
    for line in lines:
        m = LINE_RE.match(line)
        assert m, line
        level, micros, _tag, msg = m.groups()
        assert micros == "000000", line          # below DEBUG: the cached 1 s clock
        assert (" -> " in msg) == (level != "INFO"), line
    listen = [ln for ln in lines if "Listening on" in ln][0]
    assert re.match(r"^   INFO \S+ \S+ \[  main \] Listening on 127\.0\.0\.1:\d+ \(\d+\)$",
                    listen)
    assert any(re.search(r"Starting up with pid %d, verbose is set to INFO$" % p.proc.pid, ln)
               for ln in lines)


def test_debug_level_has_microseconds_and_source(tmp_path) -> None:  # type: ignore
    log = os.path.join(str(tmp_path), "d.log")
    proc = subprocess.Popen(cmd() + ["-p", "0", "-L", "127.0.0.1", "-l", log, "--verbose",
                                     "DEBUG", "-P", os.path.join(str(tmp_path), "p")],
                            env=server_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: LISTEN_RE.search(read_text(log)) is not None, 20)
        # a WARNING with its source location, from a peer's protocol error
        port = int(LISTEN_RE.search(read_text(log)).group(1))  # type: ignore[union-attr]
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
    finally:
        proc.terminate()
        proc.wait(10)
    lines = [LINE_RE.match(ln) for ln in read_text(log).splitlines()]
    assert all(lines)
    assert any(m.group(2) != "000000" for m in lines if m)


def test_log_file_fallback_message_like_gearmand(tmp_path) -> None:  # type: ignore
    bad = "/nonexistent-dir/gearmand.log"
    cwd = str(tmp_path)
    expected = (f'Could not open log file "{bad}", from "{cwd}", switching to stderr. '
                "(No such file or directory)")

    def first_line(argv: List[str]) -> str:
        proc = subprocess.Popen(argv, cwd=cwd, env=server_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stderr.readline()  # type: ignore[union-attr]
        finally:
            # C gearmand can miss a SIGTERM that lands this early in its start-up (its
            # wake-up pipe does not exist yet); only the first line matters here.
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            proc.stderr.close()  # type: ignore[union-attr]
        return line.rstrip("\n")

    ours = first_line(cmd() + ["-p", "0", "-L", "127.0.0.1", "-l", bad, "-P",
                               os.path.join(cwd, "p")])
    prog = cmd()[0] if len(cmd()) == 1 else "gearmand"     # argv[0], as every error has
    assert ours == f"{prog}: {expected}"
    require(C_GEARMAND, "differential")
    theirs = first_line([C_GEARMAND, "-p", str(free_low_port()), "-L", "127.0.0.1", "-l", bad,
                         "-P", os.path.join(cwd, "c.pid")])
    assert theirs == f"{C_GEARMAND}: {expected}"


def test_log_to_stderr_and_none(tmp_path) -> None:  # type: ignore
    for target in ("stderr", "none"):
        proc = subprocess.Popen(cmd() + ["-p", "0", "-L", "127.0.0.1", "-l", target,
                                         "--verbose", "INFO", "-P",
                                         os.path.join(str(tmp_path), "p")],
                                cwd=str(tmp_path), env=server_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        # signal handlers are in place once it listens (a busy machine may take seconds)
        assert wait_for(lambda p=proc: bool(listening_ports(p.pid)), 30)  # type: ignore
        proc.terminate()
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert out == ""
        if target == "stderr":
            assert LISTEN_RE.search(err) and "Shutdown complete" in err
        else:
            assert err == ""
        assert not os.path.exists(os.path.join(str(tmp_path), target))


def test_syslog_option_runs(tmp_path, own_servers) -> None:  # type: ignore
    p = Proc(str(tmp_path), ["--syslog"])
    own_servers.append(p)
    assert version_ok(p.port)
    p.signal(signal.SIGTERM)
    assert p.wait(10) == 0


def test_gearmand_port_env_picks_the_port(tmp_path) -> None:  # type: ignore
    port = free_low_port()
    log = os.path.join(str(tmp_path), "g.log")
    e = server_env()
    e["GEARMAND_PORT"] = str(port)
    proc = subprocess.Popen(cmd() + ["-L", "127.0.0.1", "-l", log, "--verbose", "INFO", "-P",
                                     os.path.join(str(tmp_path), "p")], env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: f"Listening on 127.0.0.1:{port} " in read_text(log), 20)
        assert version_ok(port)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("flags,listening", [(["-vvv"], True), (["-vv"], False),
                                             (["-v", "INFO"], True)])
def test_bare_v_sets_the_log_level(tmp_path, flags, listening) -> None:  # type: ignore
    log = os.path.join(str(tmp_path), "v.log")
    port = free_low_port()
    proc = subprocess.Popen(cmd() + ["-p", str(port), "-L", "127.0.0.1", "-l", log, "-P",
                                     os.path.join(str(tmp_path), "p")] + flags, env=server_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: port_open(port), 20)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert ("Listening on 127.0.0.1:%d " % port in read_text(log)) == listening


# ---- -d without -l, --log-format json, sd_notify ------------------------------------------

DAEMON_LOG = "/var/log/gearmand.log"


def test_daemon_without_log_file_warns_and_logs_to_var_log(tmp_path) -> None:  # type: ignore
    if not IS_ROOT:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root; /var/log/gearmand.log needs root")
        pytest.skip("needs root to write /var/log/gearmand.log")
    pid_file = os.path.join(str(tmp_path), "gearmand.pid")
    launched = subprocess.run(cmd() + ["-d", "-p", "0", "-L", "127.0.0.1", "-P", pid_file,
                                       "--verbose", "INFO"], capture_output=True, text=True,
                              timeout=30, env=server_env(), stdin=subprocess.DEVNULL)
    assert launched.returncode == 0, launched.stderr
    assert launched.stderr.endswith(
        f": --daemon without --log-file: logging to {DAEMON_LOG}\n"), launched.stderr
    assert len(launched.stderr.splitlines()) == 1
    pid = int(read_text(pid_file))
    try:
        assert f"Starting up with pid {pid}, " in read_text(DAEMON_LOG)
    finally:
        assert stop_pid(pid)


def test_daemon_logging_to_stderr_is_warned_about(tmp_path) -> None:  # type: ignore
    pid_file = os.path.join(str(tmp_path), "gearmand.pid")
    launched = subprocess.run(cmd() + ["-d", "-p", "0", "-L", "127.0.0.1", "-P", pid_file,
                                       "-l", "stderr"], capture_output=True, text=True,
                              timeout=30, env=server_env(), stdin=subprocess.DEVNULL)
    assert launched.returncode == 0, launched.stderr
    pid = int(read_text(pid_file))
    assert stop_pid(pid)
    assert launched.stderr.endswith(": the log goes to stderr, which is /dev/null once "
                                    "--daemon detaches: give --log-file=PATH or --syslog\n")
    quiet = launch_daemon(str(tmp_path))          # with -l PATH: nothing on the terminal
    assert (quiet.returncode, quiet.stderr) == (0, "")
    assert stop_pid(int(read_text(pid_file)))


JSON_KEYS = {"time", "level", "thread", "message", "fields"}


def test_log_format_json_every_line_is_an_object(tmp_path, own_servers) -> None:  # type: ignore
    p = Proc(str(tmp_path), ["--log-format", "json"], verbose="DEBUG", port_arg="0")
    own_servers.append(p)
    assert version_ok(p.port)
    os.rename(p.log, p.log + ".1")
    p.signal(signal.SIGHUP)
    assert wait_for(lambda: "SIGHUP" in read_text(p.log), 10)
    assert version_ok(p.port)
    p.signal(signal.SIGTERM)
    assert p.wait(10) == 0
    lines = (read_text(p.log + ".1") + read_text(p.log)).splitlines()
    records = [json.loads(line) for line in lines]       # every line parses on its own
    assert len(records) > 5
    for rec in records:
        assert set(rec) == JSON_KEYS, rec
        assert rec["level"] in ("FATAL", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE",
                                "INFO", "DEBUG")
        assert re.fullmatch(r"main|proc|\d+", rec["thread"]), rec
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d",
                            rec["time"]), rec
        assert rec["fields"]["pid"] == p.proc.pid
        assert ("source" in rec["fields"]) == (rec["level"] != "INFO"), rec
    messages = [r["message"] for r in records]
    assert any(m.startswith(f"Listening on 127.0.0.1:{p.port} ") for m in messages)
    sighup = [r for r in records if r["message"] == "SIGHUP, reopening log file"]
    assert [r["level"] for r in sighup] == ["NOTICE"]
    assert messages[-1] == "Shutdown complete"


def test_log_format_rejects_unknown_values() -> None:
    run = subprocess.run(cmd() + ["--check-args", "--log-format", "xml"], capture_output=True,
                         text=True, timeout=30, env=server_env())
    assert run.returncode == 1
    assert run.stderr.endswith(": the argument ('xml') for option '--log-format' is invalid\n")


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_ready_and_stopping(tmp_path, abstract) -> None:  # type: ignore
    """Type=notify: READY=1 once the port answers, STOPPING=1 when a stop begins."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"gearmand-py-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        notify = "@" + name
    else:
        notify = os.path.join(str(tmp_path), "notify")
        sock.bind(notify)
    sock.settimeout(20)
    port = free_low_port()
    e = server_env()
    e["NOTIFY_SOCKET"] = notify
    proc = subprocess.Popen(cmd() + ["-p", str(port), "-L", "127.0.0.1", "-l", "none", "-P",
                                     os.path.join(str(tmp_path), "p")], env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert sock.recv(4096) == b"READY=1"
        assert version_ok(port)                 # ready means serving
        proc.send_signal(signal.SIGUSR1)        # graceful stop (no jobs: exits at once)
        assert sock.recv(4096) == b"STOPPING=1"
        assert proc.wait(10) == 0
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):     # STOPPING=1 is sent once
            sock.recv(4096)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sock.close()
