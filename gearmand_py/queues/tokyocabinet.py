"""`-q libtokyocabinet`: background jobs in a Tokyo Cabinet database (ctypes over the ADB API).

Thread: the store thread (store.py; ``open``/``replay`` run on the main thread before it
starts, ``close`` after it stopped).  No Python binding exists, so the system library
(Debian: libtokyocabinet9) is bound with ctypes: tcadbnew, tcadbopen, tcadbput, tcadbout,
tcadbsync, tcadbiterinit, tcadbiternext, tcadbget, tcadboptimize, tcadbclose, tcadbdel.

Options: ``--libtokyocabinet-file`` (required; tcadbopen syntax, e.g. ``/var/lib/q.tch``
for a hash database, with ``#``-separated tuning parameters) and
``--libtokyocabinet-optimize`` (accepted; like gearmand the file is always optimised on
open).

Layout (gearmand's, libgearman-server/plugins/queue/tokyocabinet/queue.cc): key
``<function>-<unique>``; value ``function\\0unique\\0<P><when>\\0data`` where P is one ASCII
digit (0 HIGH, 1 NORMAL, 2 LOW) immediately followed by the decimal when (``10`` = NORMAL,
now). add() is tcadbput and flush() tcadbsync (the job is on disk before JOB_CREATED);
done() is tcadbout; commit() does a unit's tcadbout and tcadbput calls, then ONE tcadbsync
(the batch is on disk before any of its JOB_CREATED; a failed unit may leave some of its
records written, never acknowledged: they replay after a restart). Replay parses the
value, not the key, so hyphenated names and any bytes survive.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import TYPE_CHECKING, Any, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError, QueueError
from ..options import SWITCH, Option, queue_row
from .base import Key, Refused, StoredJob, stored_priority

if TYPE_CHECKING:  # pragma: no cover
    from ..settings import Settings

SECTION = "libtokyocabinet"
SECTIONS = (SECTION,)
OPTIONS: Tuple[Option, ...] = (
    queue_row("libtokyocabinet-file", "str", None, "File name of the database. [see: man "
              "tcadb, tcadbopen() for name guidelines]", SECTION),
    queue_row("libtokyocabinet-optimize", SWITCH, None, "Optimize database on open. "
              "[default=true]", SECTION),
)
#: gearmand's wording ("No --file given", the module's option without its prefix), with
#: the option's full name.
NO_FILE = "No --libtokyocabinet-file given"
MISSING_LIBRARY = ("-q libtokyocabinet needs the C library libtokyocabinet "
                   "(Debian's libtokyocabinet9)")
LIBRARY_NAMES = ("libtokyocabinet.so.9", "libtokyocabinet.so")
_lib: Optional[ctypes.CDLL] = None


def library_names() -> List[str]:
    """Where to look: the usual sonames, then whatever ctypes.util finds."""
    found = ctypes.util.find_library("tokyocabinet")
    return list(LIBRARY_NAMES) + ([found] if found else [])


def open_library(names: Sequence[str]) -> ctypes.CDLL:
    """The first of ``names`` that loads; ConfigError(MISSING_LIBRARY) when none does."""
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise ConfigError(MISSING_LIBRARY)


def load_library() -> ctypes.CDLL:
    """Load libtokyocabinet once and declare the ADB prototypes."""
    global _lib
    if _lib is not None:
        return _lib
    lib = open_library(library_names())
    vp, cp, i, b = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_bool
    ip = ctypes.POINTER(ctypes.c_int)
    protos: dict = {
        "tcadbnew": (vp, []),
        "tcadbopen": (b, [vp, cp]),
        "tcadbclose": (b, [vp]),
        "tcadbdel": (None, [vp]),
        "tcadbput": (b, [vp, ctypes.c_void_p, i, ctypes.c_void_p, i]),
        "tcadbout": (b, [vp, ctypes.c_void_p, i]),
        "tcadbget": (vp, [vp, ctypes.c_void_p, i, ip]),
        "tcadbsync": (b, [vp]),
        "tcadbiterinit": (b, [vp]),
        "tcadbiternext": (vp, [vp, ip]),
        "tcadboptimize": (b, [vp, cp]),
        "tcadbrnum": (ctypes.c_uint64, [vp]),
        "tcfree": (None, [vp]),
    }
    for name, (restype, argtypes) in protos.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    _lib = lib
    return lib


def encode_value(job: StoredJob) -> bytes:
    return b"%s\0%s\0%d%d\0%s" % (job.function, job.unique, job.priority, job.when, job.data)


def decode_value(value: bytes) -> StoredJob:
    function, unique, meta, data = value.split(b"\0", 3)
    when = meta[1:]
    return StoredJob(unique, function, data, stored_priority(meta[:1]),
                     int(when) if when.isdigit() else 0)


class TokyoCabinetQueue:
    supports_epoch = True
    durable = True

    def __init__(self, path: str) -> None:
        self.lib: Any = load_library()
        self.path = path
        self._adb: Optional[int] = None

    @staticmethod
    def key(unique: bytes, function: bytes) -> bytes:
        return b"%s-%s" % (function, unique)

    def open(self) -> None:
        adb = self.lib.tcadbnew()
        if not adb:
            raise QueueError("tcadbnew failed")
        if not self.lib.tcadbopen(adb, os.fsencode(self.path)):
            self.lib.tcadbdel(adb)
            raise QueueError(f"cannot open tokyocabinet database {self.path} "
                             "(tcadbopen failed)")
        if not self.lib.tcadboptimize(adb, None):   # gearmand always optimises on open
            self.lib.tcadbclose(adb)
            self.lib.tcadbdel(adb)
            raise QueueError(f"cannot optimize tokyocabinet database {self.path}")
        self._adb = adb

    def close(self) -> None:
        adb, self._adb = self._adb, None
        if adb:
            ok = self.lib.tcadbclose(adb)
            self.lib.tcadbdel(adb)
            if not ok:
                raise QueueError(f"tcadbclose failed for {self.path}")

    def _db(self) -> int:
        if not self._adb:
            raise QueueError("the tokyocabinet queue is not open")
        return self._adb

    def add(self, job: StoredJob) -> None:
        key, value = self.key(job.unique, job.function), encode_value(job)
        if not self.lib.tcadbput(self._db(), key, len(key), value, len(value)):
            raise QueueError("tcadbput failed")

    def flush(self) -> None:
        if not self.lib.tcadbsync(self._db()):
            raise QueueError("tcadbsync failed")

    def done(self, unique: bytes, function: bytes) -> None:
        key = self.key(unique, function)
        self.lib.tcadbout(self._db(), key, len(key))   # a missing key is fine

    def commit(self, adds: Sequence[StoredJob], dones: Sequence[Key]) -> Refused:
        for unique, function in dones:
            self.done(unique, function)
        for job in adds:
            self.add(job)
        self.flush()
        return {}

    def _take(self, ptr: Optional[int], size: ctypes.c_int) -> Optional[bytes]:
        if not ptr:
            return None
        try:
            return ctypes.string_at(ptr, size.value)
        finally:
            self.lib.tcfree(ptr)

    def replay(self) -> Iterator[StoredJob]:
        adb = self._db()
        if not self.lib.tcadbiterinit(adb):
            raise QueueError("tcadbiterinit failed")
        size = ctypes.c_int(0)
        keys = []
        limit = int(self.lib.tcadbrnum(adb)) + 1
        for _ in range(limit):   # bounded by the record count
            key = self._take(self.lib.tcadbiternext(adb, ctypes.byref(size)), size)
            if key is None:
                break
            keys.append(key)
        for key in keys:
            value = self._take(self.lib.tcadbget(adb, key, len(key), ctypes.byref(size)), size)
            if value is None:
                continue
            try:
                yield decode_value(value)
            except ValueError:
                raise QueueError(f"malformed tokyocabinet record {key[:80]!r}") from None


def _file(value: object) -> str:
    """--libtokyocabinet-file, which gearmand requires (an empty name counts as none)."""
    if not value:
        raise ConfigError(NO_FILE)
    return str(value)


def validate(values: Mapping[str, object]) -> None:
    _file(values.get("libtokyocabinet-file"))
    load_library()


def create(settings: Settings) -> TokyoCabinetQueue:
    return TokyoCabinetQueue(_file(settings.queue_option("libtokyocabinet-file")))
