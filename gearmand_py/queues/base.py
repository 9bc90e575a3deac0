"""The queue backend contract every `-q` module implements, and the helpers they share.

Durability point: ``commit(adds, dones)`` writes one store unit - every background job
accepted and every stored job ended in a batch of processing rounds - as ONE transaction
(pipeline, batch) and returns once it is durable; the JOB_CREATED replies of those adds
are sent only after that (messages.py, "Store units").  ``add``/``flush``/``done`` are the
same writes one at a time (start-up tools and the contract tests use them).  ``done``
covers WORK_COMPLETE/FAIL/EXCEPTION, retry drop and cancel.  ``replay()`` yields stored
jobs once at start, before connections are accepted.

Threads: ``open``/``replay`` run on the main thread before the store thread starts and
``close``/``save_on_shutdown`` after it stopped; everything else runs on the store thread
(store.py), one call at a time.  ``Driver.require`` runs on the main thread while the
options are checked (``--check-args`` included).

``QueueStats`` is what the metrics endpoint shows of the queue: plain counters that the
engine (processing thread) updates around its backend calls and the server sets at
start-up.  A backend may also define ``ping()`` (raise when its store does not answer);
``GET /healthz`` calls it when present.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Dict, Iterator, Mapping, NamedTuple, Protocol, Sequence, Tuple

from ..errors import ConfigError
from ..state import HIGH, LOW, NORMAL

__all__ = ["HIGH", "LOW", "NORMAL", "Driver", "Key", "QueueBackend", "QueueStats", "Refused",
           "StoredJob",
           "one_line", "stored_priority"]


class StoredJob(NamedTuple):
    unique: bytes
    function: bytes
    data: bytes
    priority: int   # HIGH, NORMAL or LOW
    when: int       # Unix time the job is due; 0 = now


#: A stored job's identity: (unique, function).
Key = Tuple[bytes, bytes]
#: What ``commit`` refused on its own: index into ``adds`` -> reason (one line).
Refused = Dict[int, str]


class QueueBackend(Protocol):
    #: False for modules that cannot store epoch (when > 0) jobs (redis, libmemcached).
    supports_epoch: bool
    #: False only for the in-memory builtin queue (the engine then skips add/done).
    durable: bool

    def open(self) -> None: ...

    def add(self, job: StoredJob) -> None: ...

    def flush(self) -> None: ...

    def done(self, unique: bytes, function: bytes) -> None: ...

    def commit(self, adds: Sequence[StoredJob], dones: Sequence[Key]) -> Refused:
        """Delete ``dones``, then store ``adds``, as one unit; durable when it returns.

        Raises when the unit failed: then nothing of it may be acknowledged (a backend
        without transactions may have stored part of it; those jobs replay after a
        restart).  An add the backend can never store (a key it cannot hold) is refused
        on its own: its index and reason are returned, the rest is stored.  After a
        failure the next call reconnects (network backends) within the timeouts the
        backend was created with.
        """
        ...

    def replay(self) -> Iterator[StoredJob]: ...

    def close(self) -> None: ...


class QueueStats:
    """The queue as the metrics endpoint shows it (processing thread only)."""

    __slots__ = ("backend", "writes", "commits", "deletes", "errors", "connected", "replayed",
                 "last_error")

    def __init__(self, backend: str = "builtin") -> None:
        self.backend = backend      # the -q name
        self.writes = 0             # jobs handed to the store thread to add
        self.commits = 0            # store units committed (group commits)
        self.deletes = 0            # jobs handed to the store thread to remove (done)
        self.errors = 0             # units that failed or were not answered in time
        self.connected = 1          # 0 after a failed unit, 1 again after one that worked
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
