"""The supervisor: takes validated Settings to a running server and back to an exit code.

Runs on the main thread (renamed "main", gearmand's ``[  main ]`` tag).  Start-up order::

    -f (RLIMIT_NOFILE) -> -u checks (root? user exists?) -> logging (-l, --syslog)
    -> bind (-L/-p) -> -u privilege drop -> -d daemonise -> pid file (-P)
    -> signal handlers -> Server.start() (queue open + replay, threads) -> "ready"
    (the -d launcher's pipe, and READY=1 to systemd's $NOTIFY_SOCKET)
    -> Server.run() -> pid file removed -> exit code

``-d`` without ``-l`` logs to C gearmand's default file (settings.DAEMON_LOG_FILE) rather
than to a stderr that is /dev/null once detached, and says so on the terminal first.

Deviations from gearmand, on purpose: the log file is opened before binding, because the
listener logs each "Listening on" line and the operator must see a log-file fallback
message before the process detaches; it is handed to the -u user with fchown so SIGHUP can
reopen it.  The privilege drop comes after binding (gearmand drops first and so cannot use
a port below 1024 with -u).  The daemon's launcher exits only when the server is ready.

Signal handlers never do work: each posts a function to the main loop (Server.post).
SIGTERM/SIGINT stop at once, SIGUSR1 stops gracefully, SIGHUP reopens the log file; a stop
sends STOPPING=1 to systemd first.  A signal that arrives before Server.start() has
finished is held and posted after it.
"""

from __future__ import annotations

import faulthandler
import functools
import logging
import os
import signal
import sys
from typing import Any, Callable, Dict, List, Sequence

from . import daemon as proc
from . import log as logsetup
from . import protocol
from .errors import GearmandError
from .listener import Listening, bind_listeners
from .server import Server
from .settings import DAEMON_LOG_FILE, Settings
from .threads import set_native_name

log = logging.getLogger("gearmand")


class SignalRouter:
    """Signals -> server actions.  Handlers only post the action to the main loop; a signal
    that arrives before the server can take posts (binding, daemonising, queue replay) is
    held and posted as soon as Server.start() has returned."""

    #: signal -> action name (SIGTERM/SIGINT stop at once, SIGUSR1 gracefully, SIGHUP logs)
    SIGNALS: Dict[int, str] = {signal.SIGTERM: "stop", signal.SIGINT: "stop",
                               signal.SIGUSR1: "graceful", signal.SIGHUP: "reopen"}

    def __init__(self, logs: logsetup.LogConfig) -> None:
        self.logs = logs
        self.server: Any = None
        self.pending: List[str] = []
        self.systemd = proc.SystemdNotifier({})    # replaced once the process is final

    def install(self) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.request(self.SIGNALS[signum])

    def request(self, name: str) -> None:
        """Post an action from any thread or a signal handler (never runs it here)."""
        if self.server is None:
            self.pending.append(name)
        else:
            self.server.post(self.action(name))

    def action(self, name: str) -> Callable[[], None]:
        actions: Dict[str, Callable[[], None]] = {
            "stop": functools.partial(self._stop, False),
            "graceful": functools.partial(self._stop, True),
            "reopen": self.logs.reopen,
        }
        return actions[name]

    def _stop(self, graceful: bool) -> None:
        self.systemd.stopping()
        self.server.stop(graceful)

    def attach(self, server: Any) -> None:
        """The server takes posts now: post what arrived during start-up, in order."""
        self.server = server
        pending, self.pending = self.pending, []
        for name in pending:
            server.post(self.action(name))


class FatalStops(logging.Handler):
    """gearmand stops gracefully after any FATAL log line; so do we (any thread)."""

    def __init__(self, stop: Callable[[], None]) -> None:
        super().__init__(level=logsetup.FATAL)
        self.stop = stop
        self.fired = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.fired:
            self.fired = True
            self.stop()


def _name_process() -> None:
    """Show as "gearmand" in /proc/PID/comm, so ps, pgrep, pidof and start-stop-daemon
    --name find this server like the C one (the executable itself is the Python
    interpreter)."""
    set_native_name("gearmand")


def _preload(settings: Settings) -> None:
    """Import now what later steps import lazily: after -u the interpreter may no longer be
    able to read its own site-packages (e.g. a Python under /root), and a missing queue
    driver should fail before binding, not after detaching.  Importing opens no connection."""
    import importlib

    from . import queues
    if settings.daemon:
        importlib.import_module("daemon")
    module = queues.module_name(settings.queue_type)
    if module is not None:
        try:
            importlib.import_module(f"{queues.__name__}.{module}")
        except ImportError:
            pass   # Server.start() -> queues.create() reports it in its own words


def run(settings: Settings, warnings: Sequence[str] = ()) -> int:
    """Start the server described by ``settings``; return the process exit code.

    Start-up errors raise GearmandError (cli prints ``<argv0>: <message>``, exit 1).
    """
    logsetup.rename_main_thread()
    _name_process()
    proc.set_fd_limit(settings.file_descriptors)
    user = proc.lookup_user(settings.user) if settings.user else None
    _preload(settings)
    from .cli import prog_name
    prog = prog_name()
    log_file = settings.log_file
    if settings.daemon and settings.log_file_is_default:
        log_file = DAEMON_LOG_FILE
        _tell(f"{prog}: --daemon without --log-file: logging to {log_file}")
    logs = logsetup.configure(log_file, settings.verbose, settings.syslog,
                              log_format=settings.log_format, prog=prog)
    if settings.daemon and logs.to_stderr:
        _tell(f"{prog}: the log goes to stderr, which is /dev/null once --daemon detaches: "
              "give --log-file=PATH or --syslog")
    for warning in warnings:
        log.warning("%s", warning)
    try:
        return _serve(settings, logs, user)
    except GearmandError as exc:
        if logs.file_handler is not None and not isinstance(exc, proc.DaemonStartError):
            log.error("%s", exc)       # the operator of a daemon reads the log
        raise


def _bind(settings: Settings) -> List[Listening]:
    """Every protocol plugin that is on: build its Port (TLS keys are read here, before
    -u), bind its listening sockets (at -L's addresses, or the plugin's own)."""
    listening: List[Listening] = []
    for plugin in protocol.plugins():
        service = plugin.listen_port(settings)
        if service is None:
            continue
        port = plugin.open(settings)
        log.info("Initializing %s on port %s%s", port.name, service, port.note)
        hosts = plugin.listen_hosts(settings) if plugin.listen_hosts is not None else None
        listening.extend((sock, port) for sock in bind_listeners(settings, service, hosts))
    return listening


def _serve(settings: Settings, logs: logsetup.LogConfig, user: Any) -> int:
    router = SignalRouter(logs)
    if not settings.daemon:
        router.install()         # the daemon installs them after detaching
    listening = _bind(settings)
    if user is not None:
        logs.chown(user.pw_uid, user.pw_gid)
        proc.drop_privileges(user)
    notifier = proc.Notifier()
    if settings.daemon:
        keep = [sock.fileno() for sock, _ in listening]
        if logs.fileno() is not None:
            keep.append(logs.fileno())  # type: ignore[arg-type]
        logs.before_daemon()
        notifier = proc.daemonize(keep)
        router.install()
        logs.after_daemon()
    router.systemd = proc.SystemdNotifier()
    if not settings.coredump:
        faulthandler.enable(file=_crash_fd(logs), all_threads=True)
    pid_written = False
    logging.getLogger("gearmand").addHandler(FatalStops(lambda: router.request("graceful")))
    try:
        if settings.pid_file:
            pid_written = proc.write_pid_file(settings.pid_file, settings.pid_file_is_default)
        log.info("Starting up with pid %d, verbose is set to %s", os.getpid(), settings.verbose)
        server = Server(settings, listening)
        server.start()
        router.attach(server)
    except BaseException as exc:
        notifier.failed(str(exc) if isinstance(exc, GearmandError) else repr(exc))
        if pid_written and settings.pid_file:
            proc.remove_pid_file(settings.pid_file)
        if not isinstance(exc, GearmandError):
            log.critical("start-up failed: %r", exc, exc_info=exc)
        raise
    notifier.ready()
    router.systemd.ready()
    try:
        code: int = server.run()
    finally:
        router.systemd.stopping()
        router.systemd.close()
        if pid_written and settings.pid_file:
            proc.remove_pid_file(settings.pid_file)
        logs.close()
    return code


def _tell(message: str) -> None:
    """A start-up notice for the operator's terminal (stderr), before any detaching."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _crash_fd(logs: logsetup.LogConfig) -> int:
    """Where a crash traceback goes (gearmand prints a backtrace): a private duplicate of
    the log file's descriptor, so SIGHUP reopening the log never leaves it dangling; else
    stderr."""
    fd = logs.fileno()
    return os.dup(fd) if fd is not None else sys.stderr.fileno()
