"""Frozen server settings (built by cli.py from the option table; read by every thread)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

#: Largest packet payload accepted from a peer (bytes). Checked before buffering.
DEFAULT_MAX_PACKET_SIZE = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Settings:
    port: str = "4730"
    listen: Tuple[str, ...] = ()          # empty = all addresses (0.0.0.0 and ::)
    threads: int = 4
    backlog: int = 32
    job_retries: int = 0                  # 0 = unlimited
    worker_wakeup: int = 0                # 0 = all sleepers
    round_robin: bool = False
    exceptions: bool = False
    job_handle_prefix: Optional[str] = None   # None = "H:<nodename>"
    hashtable_buckets: int = 991
    verbose: str = "ERROR"
    log_file: str = "stderr"
    syslog: bool = False
    queue_type: str = "builtin"
    protocol: Optional[str] = None
    http_port: str = "8080"
    keepalive: bool = False
    keepalive_idle: int = -1
    keepalive_interval: int = -1
    keepalive_count: int = -1
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    store_queue_on_shutdown: bool = False
    # queue-module options, keyed by long option name without dashes prefix, e.g.
    # ("libsqlite3-db", "/tmp/q.db"); modules look up what they need.
    queue_options: Tuple[Tuple[str, str], ...] = ()

    def queue_option(self, name: str, default: Optional[str] = None) -> Optional[str]:
        for key, value in self.queue_options:
            if key == name:
                return value
        return default
