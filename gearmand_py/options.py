"""One row of the option table: what settings.py parses and what each queue module declares.

A leaf module (no imports from this package), so settings.py and gearmand_py/queues/ can
both use it without an import cycle.  Used on the main thread at start-up only.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

#: The kind of an option that takes no value; the other kinds ("str", "u32", "u16", "i32")
#: are the keys of settings.VALUE_PARSERS.
SWITCH = "switch"


@dataclasses.dataclass(frozen=True)
class Option:
    name: str                       # long name, no dashes
    short: Optional[str]            # one letter or None
    kind: str                       # SWITCH or a key of settings.VALUE_PARSERS
    default: object                 # None = no default
    help: str
    section: str
    field: Optional[str] = None     # Settings field; None for queue options / actions
    show_default: bool = True       # boost prints "arg (=X)"
    file_ok: bool = True            # accepted inside a config file
    extension: bool = False         # not in gearmand 1.1.20 (documented as ours)
    queue: bool = False             # a queue module option (goes to Settings.queue_options)
    limits: Optional[Tuple[int, int]] = None   # our sanity range, checked after wrapping

    @property
    def takes_value(self) -> bool:
        return self.kind != SWITCH


def queue_row(name: str, kind: str, default: object, help: str, section: str,
              show_default: bool = True) -> Option:
    """A queue module's option: read by the module through Settings.queue_option()."""
    return Option(name, None, kind, default, help, section, None, show_default=show_default,
                  queue=True)
