"""The text admin protocol (status, workers, show jobs, ...), byte-for-byte as gearmand 1.1.20.

Processing thread only.  ``run(engine, conn, tokens)`` appends the reply to the engine's
output; replies produced from one read leave in one write (the I/O thread joins them).
Listing order follows gearmand's hash tables (state.bucket_order).
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Tuple
from urllib.parse import quote_plus

from .engine import Engine
from .state import FUNCTION_BUCKETS, Peer, bucket_order

Tokens = Tuple[bytes, ...]
AdminCommand = Callable[[Engine, Peer, Tokens], bytes]

OK = b"OK\r\n"
END = b".\n"


def err(code: str, message: str = "") -> bytes:
    """gearmand's ``ERR CODE msg+url+encoded`` line."""
    if message:
        return b"ERR %s %s\r\n" % (code.encode(), quote_plus(message).encode())
    return b"ERR %s\r\n" % code.encode()


def unknown(token: bytes) -> bytes:
    return b"ERR UNKNOWN_COMMAND Unknown+server+command" + token + b"\r\n"


def incomplete(command: str) -> bytes:
    return err("INVALID_ARGUMENTS", "An incomplete set of arguments was sent to this command "
               + command)


def _functions_in_order(engine: Engine) -> list:
    return sorted(engine.functions.values(),
                  key=lambda f: bucket_order(f.name, FUNCTION_BUCKETS, f.seq))


def status(engine: Engine, conn: Peer, tokens: Tokens) -> bytes:
    rows = [b"%s\t%d\t%d\t%d\n" % (f.name, f.total, f.running, len(f.workers))
            for f in _functions_in_order(engine)]
    return b"".join(rows) + END


def priority_status(engine: Engine, conn: Peer, tokens: Tokens) -> bytes:
    rows = [b"%s\t%d\t%d\t%d\t%d\n" % (f.name, len(f.queues[0]), len(f.queues[1]),
                                       len(f.queues[2]), len(f.workers))
            for f in _functions_in_order(engine)]
    return b"".join(rows) + END


def workers(engine: Engine, conn: Peer, tokens: Tokens) -> bytes:
    conns = sorted(engine.conns.values(), key=lambda c: (-c.io_id, -c.seq))
    rows: List[bytes] = []
    for c in conns:
        names = b"".join(b" " + a.function.name for a in reversed(c.abilities))
        rows.append(b"%d %s %s :%s\n" % (c.fd, c.ip.encode(), c.client_id, names))
    return b"".join(rows) + END


def _jobs_in_order(engine: Engine, key: Callable[[object], bytes]) -> list:
    buckets = max(engine.options.hashtable_buckets, 1)
    return sorted(engine.jobs.values(), key=lambda j: bucket_order(key(j), buckets, j.seq))


def show(engine: Engine, conn: Peer, tokens: Tokens) -> bytes:
    args = [t.lower() for t in tokens[1:]]
    if not args:
        return unknown(tokens[0])
    if args == [b"jobs"]:
        # The last column is gearmand's "queued": a background job handed to the queue
        # module (the builtin one included); with a real store, once its add committed.
        memory = not engine.durable
        rows = [b"%s\t%d\t%d\t%d\n" % (j.handle, j.retries, int(j.ignored),
                                        int(j.persisted or memory and j.background))
                for j in _jobs_in_order(engine, lambda j: j.handle)]  # type: ignore
        return b"".join(rows) + END
    if args == [b"unique", b"jobs"]:
        def unique_key(j: object) -> bytes:
            u = j.unique  # type: ignore[attr-defined]
            return j.data if u == b"-" and j.data else u  # type: ignore[attr-defined]
        rows = [j.unique + b"\n" for j in _jobs_in_order(engine, unique_key)]
        return b"".join(rows) + END
    return err("UNKNOWN_SHOW_ARGUMENTS")


def cancel(engine: Engine, conn: Peer, tokens: Tokens) -> bytes:
    if len(tokens) < 3 or tokens[1].lower() != b"job":
        return unknown(tokens[0])
    if len(tokens) > 3:
        return err("UNKNOWN_ERROR")
    return OK if engine.cancel(tokens[2]) else err("UNKNOWN_JOB")


def create(engine: Engine, conn: Peer, tokens: Tokens) -> bytes:
    if len(tokens) != 3 or tokens[1].lower() != b"function":
        return incomplete("create")
    engine.function(tokens[2])
    return OK


def drop(engine: Engine, conn: Peer, tokens: Tokens) -> bytes:
    if len(tokens) != 3 or tokens[1].lower() != b"function":
        return incomplete("drop")
    wanted = tokens[2].lower()
    for name, func in engine.functions.items():
        if name.lower() == wanted:
            if func.workers or func.total:
                return b"ERR there are still connected workers or executing clients\r\n"
            del engine.functions[name]
            return OK
    return b"ERR function not found\r\n"


def _size(token: bytes) -> int:
    try:
        return max(int(token), 0)
    except ValueError:
        return 0


def maxqueue(engine: Engine, conn: Peer, tokens: Tokens) -> bytes:
    if len(tokens) < 2:
        return incomplete("maxqueue")
    func = engine.functions.get(tokens[1])
    if func is not None:
        sizes = [_size(t) for t in tokens[2:5]]
        if not sizes:
            func.max_queue = [0, 0, 0]
        elif len(sizes) == 1:
            func.max_queue = [sizes[0]] * 3
        elif len(sizes) == 2:
            func.max_queue = [sizes[0], sizes[1], 0]
        else:
            func.max_queue = sizes[:3]
    return OK


def getpid(engine: Engine, conn: Peer, tokens: Tokens) -> bytes:
    return b"OK %d\n" % os.getpid()


def verbose(engine: Engine, conn: Peer, tokens: Tokens) -> bytes:
    return b"OK %s\n" % engine.options.verbose.encode()


def version(engine: Engine, conn: Peer, tokens: Tokens) -> bytes:
    return b"OK %s\n" % engine.options.version.encode()


COMMANDS: Dict[bytes, AdminCommand] = {
    b"status": status,
    b"prioritystatus": priority_status,
    b"workers": workers,
    b"show": show,
    b"cancel": cancel,
    b"create": create,
    b"drop": drop,
    b"maxqueue": maxqueue,
    b"getpid": getpid,
    b"verbose": verbose,
    b"version": version,
}


def run(engine: Engine, conn: Peer, tokens: Tokens) -> None:
    """Answer one admin line."""
    command = COMMANDS.get(tokens[0].lower()) if tokens else None
    if command is None:
        reply = unknown(tokens[0] if tokens else b"")
    else:
        reply = command(engine, conn, tokens)
    engine.send(conn, reply)
