"""`-q builtin`: the in-memory queue; nothing is stored (processing thread)."""

from __future__ import annotations

from typing import Iterator

from ..settings import Settings
from .base import StoredJob


class BuiltinQueue:
    supports_epoch = True
    durable = False

    def open(self) -> None:
        pass

    def add(self, job: StoredJob) -> None:
        pass

    def flush(self) -> None:
        pass

    def done(self, unique: bytes, function: bytes) -> None:
        pass

    def replay(self) -> Iterator[StoredJob]:
        return iter(())

    def close(self) -> None:
        pass


def create(settings: Settings) -> BuiltinQueue:
    return BuiltinQueue()
