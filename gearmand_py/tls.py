"""TLS for the Gear port (``--ssl``): the server context, built once on the main thread.

Files come from ``--ssl-certificate``, ``--ssl-key`` and ``--ssl-ca-file``; like gearmand,
the environment variables GEARMAND_SERVER_PEM, GEARMAND_SERVER_KEY and
GEARMAND_CA_CERTIFICATE override them.  The context is made before privileges are dropped
(keys are usually root-only) and then only used by I/O threads to wrap accepted sockets.
Clients are not asked for certificates (gearmand does not verify peers either); the CA file
is loaded when present so a deployment can tighten that with its own context later.
"""

from __future__ import annotations

import os
import ssl
from typing import Optional

from .errors import ConfigError
from .settings import Settings


def server_context(settings: Settings) -> Optional[ssl.SSLContext]:
    """The TLS context for ``--ssl``, or None without it; ConfigError on a bad file."""
    if not settings.ssl:
        return None
    cert = os.environ.get("GEARMAND_SERVER_PEM") or settings.ssl_certificate
    key = os.environ.get("GEARMAND_SERVER_KEY") or settings.ssl_key
    ca = os.environ.get("GEARMAND_CA_CERTIFICATE") or settings.ssl_ca_file
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"SSL certificate {cert} / key {key}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    if ca and os.path.exists(ca):
        try:
            ctx.load_verify_locations(ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"SSL CA file {ca}: {exc}") from None
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
