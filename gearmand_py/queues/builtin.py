"""`-q builtin`: the in-memory queue; nothing is stored (processing thread)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Mapping, Tuple

from ..options import Option
from .base import StoredJob

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import Settings

#: gearmand's --help shows this section with no options in it.
SECTIONS = ("builtin",)
OPTIONS: Tuple[Option, ...] = ()


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


def validate(values: Mapping[str, object]) -> None:
    """Nothing to check."""


def create(settings: Settings) -> BuiltinQueue:
    return BuiltinQueue()
