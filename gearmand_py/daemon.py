"""Process plumbing for start-up: -f (RLIMIT_NOFILE), -u (privilege drop), -d, -P, and
systemd's readiness protocol (sd_notify).

Everything here runs on the main thread (before any server thread exists, except the
SystemdNotifier's STOPPING=1, sent from the main loop when a stop begins).

Daemonising (``-d``) uses python-daemon, with a ready pipe on top so that the launching
process behaves like gearmand's parent: it waits, and exits 0 only once the daemon reports
"ready" (ports bound, queue replayed), or exits 1 with the daemon's one-line error on its
own stderr.  The launcher forks; its child enters ``DaemonContext`` (which forks twice more,
calls setsid(), points stdio at /dev/null and closes every descriptor except the listening
sockets, the log file and the pipe's write end).  The working directory is kept, as
gearmand does not chdir, so relative -l/-P/queue paths keep working.
"""

from __future__ import annotations

import errno
import os
import pwd
import resource
import socket
import sys
from typing import Iterable, Mapping, Optional, Union

from .errors import ConfigError

FD_LIMIT_MESSAGE = ("Failed to set limit for the number of file descriptors.  Try running as "
                    "root or giving a smaller value to -f. ({})")
READY = b"R"
FAILED = b"E"
#: systemd's readiness protocol (sd_notify(3)): the socket's path, and the states we send.
NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
SD_READY = b"READY=1"
SD_STOPPING = b"STOPPING=1"


class DaemonStartError(ConfigError):
    """Raised in the launching process: the daemon reported (and logged) this error."""


def set_fd_limit(count: int) -> None:
    """-f N: soft RLIMIT_NOFILE = N; the hard limit is raised only if it is lower.

    Without -f the soft limit is raised to the hard limit, as gearmand's help promises
    ("Default is max allowed for user"; C 1.1.20 leaves the soft limit alone), so a
    default 1024 does not cap the number of clients.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if count <= 0:
        if soft != hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            except (OSError, ValueError):
                pass
        return
    if hard != resource.RLIM_INFINITY and hard < count:
        hard = count
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))
    except OSError as exc:
        raise ConfigError(FD_LIMIT_MESSAGE.format(exc.strerror)) from None
    except ValueError as exc:   # CPython maps EPERM and EINVAL to ValueError
        code = errno.EPERM if "not allowed" in str(exc) else errno.EINVAL
        raise ConfigError(FD_LIMIT_MESSAGE.format(os.strerror(code))) from None


def lookup_user(name: str) -> pwd.struct_passwd:
    """-u USER, checked before binding: gearmand's messages for not-root / unknown user."""
    if os.getuid() != 0 and os.geteuid() != 0:
        raise ConfigError("Must be root to switch users.")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"Could not find user : {name}") from None


def drop_privileges(user: pwd.struct_passwd) -> None:
    """setgroups([]), setgid, setuid — after binding, so privileged ports work."""
    try:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    except OSError as exc:
        raise ConfigError(f"Could not switch to user {user.pw_name} ({exc.strerror})") \
            from None


class Notifier:
    """The daemon's end of the ready pipe (write end); a no-op when not daemonised."""

    def __init__(self, fd: Optional[int] = None) -> None:
        self.fd = fd

    def _send(self, payload: bytes) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, payload)
        except OSError:
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.fd = None

    def ready(self) -> None:
        self._send(READY)

    def failed(self, message: str) -> None:
        self._send(FAILED + message.encode("utf-8", "replace"))


class SystemdNotifier:
    """sd_notify(3) without libsystemd, for ``Type=notify`` units: one datagram per state to
    the AF_UNIX socket named by $NOTIFY_SOCKET (a leading '@' means the abstract namespace).
    A no-op when the variable is unset or names something else (e.g. vsock)."""

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get(NOTIFY_SOCKET_ENV, "")
        self.address: Optional[Union[str, bytes]] = None
        self.sock: Optional[socket.socket] = None
        self.stopping_sent = False
        if path.startswith("@"):
            self.address = b"\0" + os.fsencode(path[1:])
        elif path.startswith("/"):
            self.address = path
        else:
            return
        try:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError:
            self.address = None

    def send(self, state: bytes) -> None:
        if self.sock is None or self.address is None:
            return
        try:
            self.sock.sendto(state, self.address)
        except OSError:
            pass    # systemd gone or not listening: the server runs on regardless

    def ready(self) -> None:
        self.send(SD_READY)

    def stopping(self) -> None:
        """STOPPING=1, once, when a stop (immediate or graceful) begins."""
        if not self.stopping_sent:
            self.stopping_sent = True
            self.send(SD_STOPPING)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _wait_for_daemon(read_fd: int, child: int) -> None:
    """The launcher: block until the daemon says ready or failed (or dies), then exit."""
    chunks = []
    while True:
        try:
            data = os.read(read_fd, 4096)
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        if not data:
            break
        chunks.append(data)
    os.close(read_fd)
    try:
        os.waitpid(child, 0)
    except ChildProcessError:  # pragma: no cover
        pass
    message = b"".join(chunks)
    if message.startswith(READY):
        sys.stdout.flush()
        os._exit(0)
    if message.startswith(FAILED):
        raise DaemonStartError(message[1:].decode("utf-8", "replace"))
    raise DaemonStartError("the daemon exited during start-up")


def daemonize(preserve: Iterable[int]) -> Notifier:
    """-d: detach (python-daemon); returns the daemon's Notifier.  Only the daemon returns:
    the launcher exits 0 on "ready" or raises ConfigError with the daemon's error."""
    import daemon  # python-daemon; imported only when -d is used

    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child > 0:
        os.close(write_fd)
        _wait_for_daemon(read_fd, child)
    os.close(read_fd)
    umask = os.umask(0)
    os.umask(umask)
    context = daemon.DaemonContext(
        working_directory=os.getcwd(), umask=umask, prevent_core=False, detach_process=True,
        files_preserve=list(preserve) + [write_fd], signal_map={})
    context.open()
    return Notifier(write_fd)


def write_pid_file(path: str, is_default: bool) -> bool:
    """-P: unlink, then create ``<pid>\\n``.  A failure on gearmand's compiled-in default path
    is ignored (returns False); on any other path it is an error, in gearmand's words."""
    try:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
    except OSError as exc:
        if is_default:
            return False
        raise ConfigError(f"Could not open pid file for writing: {path}({exc.strerror}) "
                          f"({exc.strerror})") from None
    return True


def remove_pid_file(path: str) -> None:
    """Remove the pid file at clean exit, but only if it still names this process."""
    try:
        with open(path, "rb") as f:
            if f.read().strip() != str(os.getpid()).encode():
                return
        os.unlink(path)
    except OSError:
        pass
