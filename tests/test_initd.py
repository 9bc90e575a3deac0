"""conf/: the LSB init script driven through configtest/start/status/reload/graceful-stop/
restart/stop with temporary paths, and its one-line error when the gearman user is missing;
the defaults file, example config and logrotate snippet checked for what they promise
(issue 4).  The systemd unit and sysusers file: test_packaging.py."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Iterator, Optional

import pytest


from gearproto import Conn, wait_for
from support import (REPO, free_low_port, pid_alive, py_gearmand_cmd, read_text, require,
                     server_env)

CONF = os.path.join(REPO, "conf")
INIT = os.path.join(CONF, "gearman-job-server.init")
IS_ROOT = os.geteuid() == 0
DEBIAN_PARAMS = "--listen=localhost --daemon --log-file=/var/log/gearman-job-server/gearmand.log"

@pytest.fixture(autouse=True)
def _start_stop_daemon() -> None:
    require("start-stop-daemon", "the init script runs start-stop-daemon (dpkg)")


class Service:
    """The init script with every path in a temporary directory."""

    def __init__(self, root: str, params: Optional[str] = None) -> None:
        self.root = root
        self.port = free_low_port()
        self.piddir = os.path.join(root, "run")
        self.pid_file = os.path.join(self.piddir, "gearmand.pid")
        self.log = os.path.join(root, "gearmand.log")
        self.daemon = os.path.join(root, "gearmand")
        with open(self.daemon, "w") as f:   # DAEMON must be one executable path
            f.write("#!/bin/sh\nexport PYTHONPATH=%s\nexec %s \"$@\"\n"
                    % (REPO, " ".join(py_gearmand_cmd())))
        os.chmod(self.daemon, 0o755)
        self.user = "nobody" if IS_ROOT else ""
        self.defaults = os.path.join(root, "default")
        self.write_defaults(params if params is not None else
                            f"--listen=127.0.0.1 --port={self.port} --daemon "
                            f"--log-file={self.log} --verbose=INFO")

    def write_defaults(self, params: str) -> None:
        with open(self.defaults, "w") as f:
            f.write(f'PARAMS="{params}"\nDAEMON={self.daemon}\nPIDDIR={self.piddir}\n'
                    f'GEARMANUSER="{self.user}"\nGRACEFUL_TIMEOUT=20\n')

    def __call__(self, action: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, GEARMAND_DEFAULTS=self.defaults)
        env.pop("GEARMAND_PORT", None)
        return subprocess.run(["sh", INIT, action], capture_output=True, text=True,
                              timeout=90, env=env, stdin=subprocess.DEVNULL)

    def pid(self) -> int:
        return int(read_text(self.pid_file).strip() or 0)

    def serving(self) -> bool:
        try:
            with Conn(self.port, 5) as c:
                return c.admin("version").startswith(b"OK ")
        except OSError:
            return False


@pytest.fixture
def service() -> Iterator[Service]:
    root = tempfile.mkdtemp(prefix="gearmand-initd-")
    os.chmod(root, 0o755)            # the -u user must reach its log and pid file
    svc = Service(root)
    yield svc
    pid = svc.pid()
    if pid and pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def test_init_script_lifecycle(service: Service) -> None:
    assert service("configtest").returncode == 0
    started = service("start")
    assert started.returncode == 0, started.stdout + started.stderr
    # the launcher returned only when ready: pid file and port are there at once
    pid = service.pid()
    assert pid and pid_alive(pid)
    assert service.serving()
    assert read_text(f"/proc/{pid}/comm").strip() == "gearmand"
    if IS_ROOT:
        uid = str(pwd.getpwnam("nobody").pw_uid)
        uids = [ln.split()[1:] for ln in read_text(f"/proc/{pid}/status").splitlines()
                if ln.startswith("Uid:")][0]
        assert uids == [uid] * 4
    again = service("start")
    assert again.returncode == 0 and service.pid() == pid     # already running: no 2nd one
    status = service("status")
    assert status.returncode == 0, status.stdout
    assert service("reload").returncode == 0
    assert wait_for(lambda: " NOTICE SIGHUP, reopening log file\n" in read_text(service.log), 10)
    assert pid_alive(pid) and service.serving()
    restarted = service("restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    new_pid = service.pid()
    assert new_pid != pid and not pid_alive(pid) and pid_alive(new_pid)
    assert wait_for(service.serving, 10)
    graceful = service("graceful-stop")
    assert graceful.returncode == 0, graceful.stdout + graceful.stderr
    assert not pid_alive(new_pid)
    assert not os.path.exists(service.pid_file)
    assert service("status").returncode == 3
    assert service("start").returncode == 0
    last = service.pid()
    stopped = service("stop")
    assert stopped.returncode == 0
    assert not pid_alive(last) and not os.path.exists(service.pid_file)
    assert service("stop").returncode == 0                   # --oknodo


def test_graceful_stop_waits_for_running_job(service: Service) -> None:
    assert service("start").returncode == 0
    pid = service.pid()
    worker = Conn(service.port)
    worker.send("CAN_DO", b"slow")
    client = Conn(service.port)
    client.send("SUBMIT_JOB", b"slow", b"", b"x")
    handle = client.expect("JOB_CREATED").args[0]
    worker.send("GRAB_JOB")
    assert worker.expect("JOB_ASSIGN").args[0] == handle
    env = dict(os.environ, GEARMAND_DEFAULTS=service.defaults)
    stopping = subprocess.Popen(["sh", INIT, "graceful-stop"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(1.0)
    assert stopping.poll() is None and pid_alive(pid)      # still waiting for the job
    worker.send("WORK_COMPLETE", handle, b"ok")
    assert client.expect("WORK_COMPLETE").args[1] == b"ok"
    assert stopping.wait(30) == 0
    assert not pid_alive(pid)
    stopping.stdout.close()  # type: ignore[union-attr]
    worker.close()
    client.close()


def test_start_failure_is_reported(service: Service) -> None:
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", service.port))
        busy.listen(1)
        result = service("start")
    assert result.returncode == 1
    assert "Address already in use" in result.stderr + result.stdout
    assert not os.path.exists(service.pid_file)


def test_configtest_catches_errors(service: Service) -> None:
    service.write_defaults("--daemon --threads=abc")
    result = service("configtest")
    assert result.returncode == 1
    assert "the argument ('abc') for option '--threads' is invalid" in result.stderr
    service.write_defaults("--daemon -q nosuchqueue")
    assert service("configtest").returncode == 1


def test_debian_params_line_is_valid(service: Service) -> None:
    """Debian's /etc/default/gearman-job-server PARAMS line works unchanged."""
    service.write_defaults(DEBIAN_PARAMS)
    result = service("configtest")
    assert result.returncode == 0, result.stderr


def test_missing_user_is_one_line_and_exit_6(service: Service) -> None:
    service.user = "gearmand-py-no-such-user"
    service.write_defaults(f"--listen=127.0.0.1 --port={service.port} --daemon "
                           f"--log-file={service.log}")
    for action in ("start", "configtest", "restart"):
        result = service(action)
        assert result.returncode == 6, (action, result)
        assert result.stderr.count("\n") == 1, (action, result.stderr)
        assert ("user 'gearmand-py-no-such-user' does not exist; create it with: adduser "
                "--system --group --no-create-home --home /nonexistent "
                "gearmand-py-no-such-user") in result.stderr
    assert not os.path.exists(service.pid_file) and not service.serving()


def test_usage(service: Service) -> None:
    result = service("bogus")
    assert result.returncode == 3
    assert "graceful-stop" in result.stderr


def test_defaults_file_matches_debian_and_is_plain_assignments() -> None:
    text = read_text(os.path.join(CONF, "gearman-job-server.default"))
    assert f'PARAMS="{DEBIAN_PARAMS}"' in text
    for line in text.splitlines():   # systemd EnvironmentFile= needs NAME="value" lines
        assert not line.strip() or line.startswith("#") or re.match(r'^[A-Z_]+="[^"]*"$', line)


def test_example_config_file_is_valid() -> None:
    path = os.path.join(CONF, "gearmand.conf")
    text = read_text(path)
    env = server_env()
    run = subprocess.run(py_gearmand_cmd() + ["--check-args", f"--config-file={path}"],
                         capture_output=True, text=True, timeout=30, env=env)
    assert (run.returncode, run.stderr) == (0, "")
    enabled = os.path.join(tempfile.mkdtemp(), "all.conf")
    with open(enabled, "w") as f:
        f.write(re.sub(r"(?m)^#--", "--", text))
    run = subprocess.run(py_gearmand_cmd() + ["--check-args", f"@{enabled}"],
                         capture_output=True, text=True, timeout=30, env=env)
    assert (run.returncode, run.stderr) == (0, "")
    shutil.rmtree(os.path.dirname(enabled))


def test_logrotate_snippet() -> None:
    # the systemd unit, its drop-in and the sysusers file: tests/test_packaging.py
    rotate = read_text(os.path.join(CONF, "gearman-job-server.logrotate"))
    assert "kill -HUP" in rotate and "/run/gearman/gearmand.pid" in rotate
    if shutil.which("logrotate"):
        tmp = tempfile.mkdtemp()
        try:
            state = os.path.join(tmp, "state")
            check = subprocess.run(["logrotate", "-d", "-s", state,
                                    os.path.join(CONF, "gearman-job-server.logrotate")],
                                   capture_output=True, text=True, timeout=30)
            assert "error" not in check.stderr.lower(), check.stderr
        finally:
            shutil.rmtree(tmp)
