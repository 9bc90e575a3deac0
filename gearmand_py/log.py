"""Logging in gearmand's format (or JSON lines): verbosity names, destinations, SIGHUP
reopen, syslog.

Configured once by app.py on the main thread at start-up; ``reopen()`` runs on the main
thread (posted there by the SIGHUP handler).  Every other thread only calls
``logging.getLogger("gearmand")`` and its children.

Line layout, as C gearmand writes it (libgearman-server/log.cc)::

    %7s level, ' ', 'YYYY-MM-DD HH:MM:SS.uuuuuu', ' ', thread tag, ' ', message,
    then ' -> <file>:<line>' on every level except INFO, then LF.

Microseconds print as 000000 unless the server runs at --verbose DEBUG (gearmand caches
the clock once a second below DEBUG).  Thread tags: ``[  main ]``, ``[     N ]`` for I/O
thread N, ``[  proc ]``.

``--log-format json`` (an extension, for log shippers) writes one JSON object per line
instead: ``time`` (ISO 8601, local time with offset, microseconds), ``level`` (gearmand's
name), ``thread`` (``main``, ``1``.., ``proc``), ``message`` and ``fields`` (``pid``, and
``source`` ``file:line`` on every level except INFO; ``exception`` with a traceback).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import threading
import time
from typing import IO, Dict, List, Optional

try:  # pragma: no cover - always present on Linux
    import syslog as _syslog
except ImportError:  # pragma: no cover
    _syslog = None  # type: ignore[assignment]

LOGGER_NAME = "gearmand"

#: gearmand levels that logging lacks.  NOTICE sits between INFO and WARNING; ALERT and
#: FATAL above CRITICAL, in gearmand's order FATAL > ALERT > CRITICAL.
NOTICE = 25
ALERT = 55
FATAL = 60

#: gearmand verbosity name -> logging level, most severe first (the order of --verbose).
LEVELS: Dict[str, int] = {
    "FATAL": FATAL,
    "ALERT": ALERT,
    "CRITICAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "NOTICE": NOTICE,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
}
LEVEL_NAMES: List[str] = list(LEVELS)
#: logging level -> gearmand name, and the syslog priority (the gearmand level number 0-7).
_NAME_OF: Dict[int, str] = {v: k for k, v in LEVELS.items()}
_SYSLOG_PRIORITY: Dict[int, int] = {v: i for i, v in enumerate(LEVELS.values())}

for _name, _level in (("NOTICE", NOTICE), ("ALERT", ALERT), ("FATAL", FATAL)):
    logging.addLevelName(_level, _name)

#: The line written by SIGHUP after reopening, exactly as gearmand writes it (no timestamp).
SIGHUP_LINE = " NOTICE SIGHUP, reopening log file\n"
SIGHUP_MESSAGE = "SIGHUP, reopening log file"
#: --log-format values: gearmand's text lines, or JSON lines.
TEXT = "text"
JSON = "json"

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def level_for(name: str) -> int:
    """The logging level of a gearmand verbosity name (exact, case-sensitive match)."""
    return LEVELS[name]


def raise_verbosity(start: str, steps: int) -> str:
    """``-v`` repeated ``steps`` times from level ``start``: one level per v, capped at DEBUG."""
    index = min(LEVEL_NAMES.index(start) + steps, len(LEVEL_NAMES) - 1)
    return LEVEL_NAMES[index]


def gearmand_level_name(levelno: int) -> str:
    """Map any logging level onto the nearest gearmand name at or above its severity."""
    name = _NAME_OF.get(levelno)
    if name is not None:
        return name
    for level, lname in sorted(_NAME_OF.items()):
        if levelno <= level:
            return lname
    return "FATAL"


def thread_tag(name: str) -> str:
    """gearmand's tag for a thread: "main" -> ``[  main ]``, "io-3" -> ``[     3 ]``."""
    if name.startswith("io-"):
        name = name[3:]
    return "[%6s ]" % name[-6:]


class GearmandFormatter(logging.Formatter):
    """Formats records exactly like gearmand's log lines (see module docstring)."""

    def __init__(self, precise: bool = False) -> None:
        super().__init__()
        self.precise = precise

    def format(self, record: logging.LogRecord) -> str:
        name = gearmand_level_name(record.levelno)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        micros = int((record.created % 1) * 1_000_000) if self.precise else 0
        line = "%7s %s.%06d %s %s" % (name, stamp, micros, thread_tag(record.threadName or ""),
                                      record.getMessage())
        if record.levelno != logging.INFO:
            line += " -> " + source(record)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def source(record: logging.LogRecord) -> str:
    """``file:line`` of a record, relative to the package's parent directory."""
    path = record.pathname
    if path.startswith(_PACKAGE_PARENT + os.sep):
        path = path[len(_PACKAGE_PARENT) + 1:]
    return "%s:%d" % (path, record.lineno)


class JsonFormatter(logging.Formatter):
    """--log-format json: one JSON object per line (see module docstring); never multi-line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created).astimezone()
        fields: Dict[str, object] = {"pid": record.process}
        if record.levelno != logging.INFO:
            fields["source"] = source(record)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps({
            "time": stamp.isoformat(timespec="microseconds"),
            "level": gearmand_level_name(record.levelno),
            "thread": thread_tag(record.threadName or "")[1:-1].strip(),
            "message": record.getMessage(),
            "fields": fields,
        }, ensure_ascii=False)


class ReopenableFileHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Appends to a file opened with mode 0644; ``reopen()`` follows a logrotate rename."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(self._open())

    def _open(self) -> IO[str]:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace",
                         buffering=1)

    def fileno(self) -> int:
        return self.stream.fileno()

    def reopen(self) -> None:
        """Close and open the same path again (append); keep the old stream on failure."""
        self.acquire()
        try:
            try:
                stream = self._open()
            except OSError:
                return
            old, self.stream = self.stream, stream
            try:
                old.close()
            except OSError:
                pass
        finally:
            self.release()

    def write_raw(self, text: str) -> None:
        self.acquire()
        try:
            self.stream.write(text)
            self.stream.flush()
        finally:
            self.release()

    def close(self) -> None:
        self.acquire()
        try:
            try:
                self.stream.close()
            except OSError:
                pass
        finally:
            self.release()
        super().close()


class SyslogHandler(logging.Handler):
    """``openlog("gearmand", LOG_PID|LOG_NDELAY, LOG_USER)``; priority = gearmand level 0-7.

    ``suspend()`` closes libc's syslog socket before daemonising (which closes every
    descriptor it was not told about; a stale syslog descriptor could later alias a client
    socket) and ``resume()`` opens it again in the daemon."""

    def __init__(self) -> None:
        super().__init__()
        self.resume()

    def resume(self) -> None:
        if _syslog is not None:
            _syslog.openlog("gearmand", _syslog.LOG_PID | _syslog.LOG_NDELAY, _syslog.LOG_USER)

    def suspend(self) -> None:
        if _syslog is not None:
            _syslog.closelog()

    def emit(self, record: logging.LogRecord) -> None:
        if _syslog is None:  # pragma: no cover
            return
        try:
            priority = _SYSLOG_PRIORITY.get(record.levelno, 7 if record.levelno < 20 else 3)
            _syslog.syslog(priority, record.getMessage())
        except Exception:  # pragma: no cover - never let logging kill a thread
            self.handleError(record)


class LogConfig:
    """The configured destinations; owned by the main thread."""

    def __init__(self) -> None:
        self.file_handler: Optional[ReopenableFileHandler] = None
        self.handlers: List[logging.Handler] = []
        self.warning: Optional[str] = None
        self.formatter: logging.Formatter = GearmandFormatter()
        self.to_stderr = False            # lines go to stderr (lost once -d detaches)

    def fileno(self) -> Optional[int]:
        """The log file's descriptor (to keep open across daemonising), if any."""
        return self.file_handler.fileno() if self.file_handler is not None else None

    def reopen(self) -> None:
        """SIGHUP: reopen the log file and write gearmand's NOTICE line (any verbosity)."""
        if self.file_handler is not None:
            self.file_handler.reopen()
            if isinstance(self.formatter, JsonFormatter):
                record = logging.LogRecord(LOGGER_NAME, NOTICE, __file__, 0, SIGHUP_MESSAGE,
                                           None, None)
                self.file_handler.write_raw(self.formatter.format(record) + "\n")
            else:
                self.file_handler.write_raw(SIGHUP_LINE)

    def before_daemon(self) -> None:
        """Close what cannot survive python-daemon's descriptor sweep (syslog's socket)."""
        for handler in self.handlers:
            if isinstance(handler, SyslogHandler):
                handler.suspend()

    def after_daemon(self) -> None:
        for handler in self.handlers:
            if isinstance(handler, SyslogHandler):
                handler.resume()

    def close(self) -> None:
        logger = logging.getLogger(LOGGER_NAME)
        for handler in self.handlers:
            logger.removeHandler(handler)
            handler.close()
        self.handlers = []
        self.file_handler = None

    def chown(self, uid: int, gid: int) -> None:
        """Give the log file to the user we switch to, so SIGHUP can reopen it."""
        if self.file_handler is not None:
            try:
                os.fchown(self.file_handler.fileno(), uid, gid)
            except OSError:
                pass


def configure(log_file: str, verbose: str, use_syslog: bool = False,
              stderr: Optional[IO[str]] = None, log_format: str = TEXT,
              prog: str = "gearmand") -> LogConfig:
    """Install the handlers on the "gearmand" logger (main thread, once, at start-up).

    ``log_file`` is a path, ``stderr`` or ``none``.  If the path cannot be opened, gearmand's
    message (``<prog>: Could not open log file ...``) is printed on stderr and the log goes
    to stderr instead.  ``log_format`` is TEXT or JSON.
    """
    err = stderr if stderr is not None else sys.stderr
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(LEVELS[verbose])
    logger.propagate = False
    config = LogConfig()
    if log_format == JSON:
        config.formatter = JsonFormatter()
    else:
        config.formatter = GearmandFormatter(precise=LEVELS[verbose] <= logging.DEBUG)
    handler: Optional[logging.Handler] = None
    if log_file == "stderr":
        handler = logging.StreamHandler(err)
        config.to_stderr = True
    elif log_file != "none":
        try:
            config.file_handler = ReopenableFileHandler(log_file)
            handler = config.file_handler
        except OSError as exc:
            config.warning = ('Could not open log file "%s", from "%s", switching to stderr. (%s)'
                              % (log_file, _cwd(), exc.strerror))
            err.write(f"{prog}: {config.warning}\n")
            err.flush()
            handler = logging.StreamHandler(err)
            config.to_stderr = True
    if handler is not None:
        handler.setFormatter(config.formatter)
        config.handlers.append(handler)
    if use_syslog:
        config.handlers.append(SyslogHandler())
    if not config.handlers:
        config.handlers.append(logging.NullHandler())
    for h in config.handlers:
        logger.addHandler(h)
    return config


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return "?"


def rename_main_thread() -> None:
    """Name the calling (main) thread "main" so its lines carry the ``[  main ]`` tag."""
    threading.current_thread().name = "main"
