"""The queue backend contract every `-q` module implements (processing thread only).

Durability point: ``add()`` then ``flush()`` return before JOB_CREATED is sent for a
background job.  ``done()`` runs on WORK_COMPLETE/FAIL/EXCEPTION, retry drop and cancel.
``replay()`` yields stored jobs once at start, before connections are accepted.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Protocol

HIGH, NORMAL, LOW = 0, 1, 2


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
