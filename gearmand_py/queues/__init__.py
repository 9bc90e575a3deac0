"""Persistent queue modules (`-q NAME`): a registry of lazily imported backends.

Each module ``gearmand_py.queues.<module>`` defines ``create(settings) -> QueueBackend``.
Names are matched lower-cased, like gearmand.  Only the processing thread uses a backend.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Dict, Optional

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import Settings
    from .base import QueueBackend

#: -q name -> (module, pip distribution that provides its driver or None)
REGISTRY: Dict[str, tuple] = {
    "builtin": ("builtin", None),
    "libsqlite3": ("sqlite", None),
    "postgres": ("postgres", "psycopg2-binary"),
    "libpq": ("postgres", "psycopg2-binary"),
    "mysql": ("mysql", "PyMySQL"),
    "libdrizzle": ("mysql", "PyMySQL"),
    "libmemcached": ("memcached", "pymemcache"),
    "libtokyocabinet": ("tokyocabinet", None),
    "redis": ("redis", "redis"),
}


def module_name(queue_type: str) -> Optional[str]:
    """The module implementing ``-q queue_type``, or None for an unknown name."""
    entry = REGISTRY.get(queue_type.lower())
    return entry[0] if entry else None


def create(settings: "Settings") -> "QueueBackend":
    """Import and build the backend named by ``settings.queue_type`` (processing thread)."""
    name = settings.queue_type.lower()
    entry = REGISTRY.get(name)
    if entry is None:
        raise ConfigError(f"Error while initializing the queue : {settings.queue_type}")
    module, dist = entry
    try:
        mod = importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(__name__):
            raise ConfigError(
                f"queue module {settings.queue_type} is not available in this build") from None
        raise ConfigError(f"queue module {settings.queue_type} needs the Python package "
                          f"{dist or exc.name} ({exc})") from None
    backend: "QueueBackend" = mod.create(settings)
    return backend
