"""The Gear port (``-p``, always on): Gearman binary packets and admin text lines, with TLS
when ``--ssl`` is given.  Main thread at start-up; the codec itself is codec.Decoder."""

from __future__ import annotations

import functools

from ..settings import Settings
from ..tls import server_context
from . import Plugin, Port
from .codec import Decoder


def _listen_port(settings: Settings) -> str:
    return settings.port


def _open(settings: Settings) -> Port:
    tls = server_context(settings)         # before -u: keys are usually root-only
    return Port("Gear", functools.partial(Decoder, settings.max_packet_size), tls,
                settings.ssl_handshake_timeout,
                " with SSL: " + ("true" if tls is not None else "false"))


PLUGIN = Plugin(None, _listen_port, _open)
