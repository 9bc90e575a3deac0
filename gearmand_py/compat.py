"""Compatibility modes (``--compat``): behave as C gearmand 1.1 (the default) or as 2.0.

Upstream gearmand 2.0.0 changed behaviour operators notice without adding flags.  A mode
is the set of those choices; each piece that has a flag of its own (``--priority-scope``,
``-R``) can still be set on its own.  Pure data, read at start-up on the main thread.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, List, Tuple


@dataclasses.dataclass(frozen=True)
class Mode:
    version: str            # what admin "version" and the HTTP Server header say
    priority_scope: str     # "function" or "global" (when --priority-scope is not given)
    round_robin: bool       # always rotate a worker's functions (-R does nothing then)
    http11_close: bool      # HTTP/1.1 requests: gearmand 2.0's bytes + Connection: close
    error_log_level: int    # the level an ERROR reply is logged at


MODES: Dict[str, Mode] = {
    "1.1": Mode("1.1.20", "function", False, False, logging.WARNING),
    "2.0": Mode("2.0.0", "global", True, True, logging.ERROR),
}
DEFAULT = "1.1"
PRIORITY_SCOPES = ("function", "global")

#: What -h and the man page show: (behaviour, 1.1, 2.0).
TABLE: List[Tuple[str, str, str]] = [
    ("priority across a worker's functions", "per function (--priority-scope=function)",
     "global: HIGH of any function first"),
    ("several functions with queued jobs", "registration order unless -R",
     "always rotating (as -R)"),
    ("admin version / HTTP Server header", "1.1.20", "2.0.0"),
    ("HTTP/1.1 request", "HTTP/1.1 reply, keep-alive",
     "HTTP/1.1 reply, Connection: close"),
    ("ERROR replies logged at", "WARNING", "ERROR"),
]
