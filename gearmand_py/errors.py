"""Exception types shared by every thread: configuration, queue backend and protocol errors."""

from __future__ import annotations


class GearmandError(Exception):
    """Base class; ``str(exc)`` is the one-line message shown to the operator."""


class ConfigError(GearmandError):
    """Bad option, port, address, user, file: the server exits 1 with this message."""


class QueueError(GearmandError):
    """The persistent queue backend failed (open, add, done, replay)."""


class ProtocolError(GearmandError):
    """A peer sent bytes that cannot be parsed; only that connection is closed."""
