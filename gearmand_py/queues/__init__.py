"""Persistent queue modules (`-q NAME`): the registry of backends and their option rows.

Each module ``gearmand_py.queues.<module>`` declares ``SECTIONS`` (its --help sections),
``OPTIONS`` (its option rows, defaults included), ``validate(values)`` (required options,
driver present; raises ConfigError) and ``create(settings) -> QueueBackend``.  Modules
import their driver (psycopg2, PyMySQL, ...) only in ``validate``/``create``, so building
the option table for --help imports none.  Names are matched lower-cased, like gearmand.
The option table and the checks run on the main thread; a backend is used by the
processing thread only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Protocol, Tuple, cast

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..options import Option
    from ..settings import Settings
    from .base import QueueBackend

#: The modules, in the order gearmand's --help shows their sections.
MODULES = ("builtin", "memcached", "sqlite", "postgres", "redis", "mysql", "tokyocabinet")

#: -q name -> module
REGISTRY: Dict[str, str] = {
    "builtin": "builtin",
    "libsqlite3": "sqlite",
    "postgres": "postgres",
    "libpq": "postgres",
    "mysql": "mysql",
    "libdrizzle": "mysql",
    "libmemcached": "memcached",
    "libtokyocabinet": "tokyocabinet",
    "redis": "redis",
}


class QueueModule(Protocol):
    SECTIONS: Tuple[str, ...]
    OPTIONS: Tuple["Option", ...]

    def validate(self, values: Mapping[str, object]) -> None: ...

    def create(self, settings: "Settings") -> "QueueBackend": ...


def _load(module: str) -> QueueModule:
    return cast(QueueModule, importlib.import_module(f"{__name__}.{module}"))


def sections() -> List[str]:
    """The queue modules' --help sections, in gearmand's order."""
    return [s for m in MODULES for s in _load(m).SECTIONS]


def option_rows() -> List["Option"]:
    """Every queue module's option rows (settings.OPTIONS gathers them)."""
    return [o for m in MODULES for o in _load(m).OPTIONS]


def module_name(queue_type: str) -> Optional[str]:
    """The module implementing ``-q queue_type``, or None for an unknown name."""
    return REGISTRY.get(queue_type.lower())


def _module_for(queue_type: str) -> QueueModule:
    module = module_name(queue_type)
    if module is None:
        raise ConfigError(f"Error while initializing the queue : {queue_type}")
    return _load(module)


def validate(values: Mapping[str, object]) -> None:
    """Check the options and the driver of the module ``values["queue-type"]`` names."""
    _module_for(str(values["queue-type"])).validate(values)


def create(settings: "Settings") -> "QueueBackend":
    """Build the backend named by ``settings.queue_type`` (opened later by the caller)."""
    return _module_for(settings.queue_type).create(settings)
