"""The queue backend contract every `-q` module implements, and the helpers they share.

Durability point: ``add()`` then ``flush()`` return before JOB_CREATED is sent for a
background job.  ``done()`` runs on WORK_COMPLETE/FAIL/EXCEPTION, retry drop and cancel.
``replay()`` yields stored jobs once at start, before connections are accepted.  Backends
run on the processing thread only; ``Driver.require`` runs on the main thread while the
options are checked (``--check-args`` included).

``QueueStats`` is what the metrics endpoint shows of the queue: plain counters that the
engine (processing thread) updates around its backend calls and the server sets at
start-up.  A backend may also define ``ping()`` (raise when its store does not answer);
``GET /healthz`` calls it when present.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Iterator, Mapping, NamedTuple, Protocol

from ..errors import ConfigError
from ..state import HIGH, LOW, NORMAL

__all__ = ["HIGH", "LOW", "NORMAL", "Driver", "QueueBackend", "QueueStats", "StoredJob",
           "one_line", "stored_priority"]


class StoredJob(NamedTuple):
    unique: bytes
    function: bytes
    data: bytes
    priority: int   # HIGH, NORMAL or LOW
    when: int       # Unix time the job is due; 0 = now


class QueueBackend(Protocol):
    #: False for modules that cannot store epoch (when > 0) jobs (redis, libmemcached).
    supports_epoch: bool
    #: False only for the in-memory builtin queue (the engine then skips add/done).
    durable: bool

    def open(self) -> None: ...

    def add(self, job: StoredJob) -> None: ...

    def flush(self) -> None: ...

    def done(self, unique: bytes, function: bytes) -> None: ...

    def replay(self) -> Iterator[StoredJob]: ...

    def close(self) -> None: ...


class QueueStats:
    """The queue as the metrics endpoint shows it (processing thread only)."""

    __slots__ = ("backend", "writes", "commits", "deletes", "errors", "connected", "replayed",
                 "last_error")

    def __init__(self, backend: str = "builtin") -> None:
        self.backend = backend      # the -q name
        self.writes = 0             # jobs added (add)
        self.commits = 0            # flushes that returned (the durability point)
        self.deletes = 0            # jobs removed (done)
        self.errors = 0             # backend calls that raised
        self.connected = 1          # 0 after a failed call, 1 again after one that worked
        self.replayed = 0           # jobs read back at start-up
        self.last_error = ""        # one line: why connected is 0


def stored_priority(value: object) -> int:
    """A priority read back from storage: HIGH, NORMAL or LOW; anything else (NULL, text,
    out of range) is NORMAL, so a foreign or damaged record still replays."""
    try:
        priority = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return NORMAL
    return priority if HIGH <= priority <= LOW else NORMAL


def one_line(exc: BaseException) -> str:
    """A driver exception as one line for the operator.  PyMySQL's errors carry
    ``(code, message)``: the message is shown."""
    args = exc.args
    text = str(args[1]) if len(args) >= 2 else str(exc)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@dataclasses.dataclass(frozen=True)
class Driver:
    """The Python package a queue module talks to its server with, and how to get it."""

    module: str      # what the backend imports
    package: str     # the name an operator searches for
    extra: str       # gearmand-py[extra] installs it
    debian: str      # the Debian package that provides it

    def missing(self, queue_type: str) -> str:
        return (f"-q {queue_type} needs the Python package {self.package} "
                f"(pip install 'gearmand-py[{self.extra}]', or Debian's {self.debian})")

    def require(self, values: Mapping[str, object]) -> None:
        """Import the driver now, so a missing one is one line at start-up and under
        --check-args (importing opens no connection)."""
        try:
            importlib.import_module(self.module)
        except ImportError:
            raise ConfigError(self.missing(queue_name(values))) from None


def queue_name(values: Mapping[str, object]) -> str:
    """The ``-q`` name as the operator gave it, lower-cased (names match case-insensitively)."""
    return str(values["queue-type"]).lower()
