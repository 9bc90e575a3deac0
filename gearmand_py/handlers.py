"""Binary request handlers: one function per Gearman command, dispatched through HANDLERS.

Processing thread only.  Each handler gets (engine, connection, args) with args already
split by the codec according to the command table.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

from .engine import MAX_CLIENT_ID, MIN_WORKER_TIMEOUT_MS, Engine, EngineError
from .protocol.codec import header as _header
from .protocol.codec import pack
from .protocol.commands import COMMANDS, Cmd
from .state import HIGH, LOW, NORMAL, RESULT_COMPLETE, RESULT_EXCEPTION, RESULT_FAIL, Job, Peer

Args = Tuple[bytes, ...]
Handler = Callable[[Engine, Peer, Args], None]

_NO_JOB = pack(Cmd.NO_JOB)
_JOB_CREATED = int(Cmd.JOB_CREATED)
#: JOB_CREATED headers by handle length (handles of one server differ only in their digits).
_CREATED_HEADERS: Dict[int, bytes] = {}
_NOOP = pack(Cmd.NOOP)
#: Longest handle/unique accepted in GET_STATUS* (gearmand's 64-byte buffers).
MAX_LOOKUP = 64
#: Longest CAN_DO_TIMEOUT number text gearmand accepts.
MAX_TIMEOUT_TEXT = 20

NOT_FOUND_DATA = b"Job does not exist on server"
NOT_FOUND_RESULT = b"Job given in work result not found"
NOT_FOUND_EXCEPTION = b"An exception was received for a job that does not exist"
#: gearmand 1.1.20's words for a WORK_FAIL handle of 64 bytes or more (sic).
HANDLE_TOO_LARGE = b"Error occurred due to GEARMAND_JOB_HANDLE_SIZE being too small from snprintf"


def _atoi(text: bytes) -> int:
    """C strtol/atoi: leading blanks, optional sign, digits; anything else ends it (0)."""
    text = text.strip()
    n = 0
    sign = 1
    i = 0
    if text[:1] in (b"-", b"+"):
        sign = -1 if text[:1] == b"-" else 1
        i = 1
    while i < len(text) and 48 <= text[i] <= 57:
        n = n * 10 + text[i] - 48
        i += 1
    return sign * n


# ---- submissions --------------------------------------------------------------------

def _submit(engine: Engine, conn: Peer, name: bytes, unique: bytes, data: bytes,
            priority: int, background: bool, when: int = 0, reducer: bytes = b"") -> None:
    """Every SUBMIT_* ends here: JOB_CREATED with the handle, or the engine's ERROR."""
    try:
        job = engine.submit(conn, name, unique, data, priority, background, when, reducer)
    except EngineError as exc:
        engine.error(conn, exc.code, exc.text)
        return
    if background and engine.durable:
        engine.acknowledge(conn, job)      # JOB_CREATED once the job is stored
        return
    handle = job.handle
    head = _CREATED_HEADERS.get(len(handle))
    if head is None:
        head = _CREATED_HEADERS[len(handle)] = _header(_JOB_CREATED, len(handle))
    engine.send(conn, head + handle)


def _submitter(priority: int, background: bool) -> Handler:
    def submit(engine: Engine, conn: Peer, args: Args) -> None:
        _submit(engine, conn, args[0], args[1], args[2], priority, background)
    return submit


def submit_epoch(engine: Engine, conn: Peer, args: Args) -> None:
    when = _atoi(args[2])
    if when > 2**63 - 1 or when < -(2**63):
        engine.close(conn)
        return
    _submit(engine, conn, args[0], args[1], args[3], NORMAL, True, max(when, 0), b"")


def _reducer(background: bool) -> Handler:
    def handle(engine: Engine, conn: Peer, args: Args) -> None:
        _submit(engine, conn, args[0], args[1], args[4], NORMAL, background, 0, args[2])
    return handle


# ---- worker side --------------------------------------------------------------------

def can_do(engine: Engine, conn: Peer, args: Args) -> None:
    engine.can_do(conn, args[0], 0)


def can_do_timeout(engine: Engine, conn: Peer, args: Args) -> None:
    text = args[1]
    if len(text) > MAX_TIMEOUT_TEXT:
        engine.close(conn)
        return
    timeout = _atoi(text)
    if timeout > 0:
        timeout = max(timeout, MIN_WORKER_TIMEOUT_MS)
    engine.can_do(conn, args[0], max(timeout, 0))


def cant_do(engine: Engine, conn: Peer, args: Args) -> None:
    engine.cant_do(conn, args[0])


def reset_abilities(engine: Engine, conn: Peer, args: Args) -> None:
    engine.reset_abilities(conn)


def pre_sleep(engine: Engine, conn: Peer, args: Args) -> None:
    if engine.has_due_job(conn):
        engine.send(conn, _NOOP)
    else:
        engine.sleep(conn)


def _assign_packet(cmd: int, job: Job) -> bytes:
    if cmd == Cmd.GRAB_JOB:
        return pack(Cmd.JOB_ASSIGN, job.handle, job.function.name, job.data)
    if cmd == Cmd.GRAB_JOB_ALL and job.reducer:
        return pack(Cmd.JOB_ASSIGN_ALL, job.handle, job.function.name, job.unique,
                    job.reducer, job.data)
    return pack(Cmd.JOB_ASSIGN_UNIQ, job.handle, job.function.name, job.unique, job.data)


def _grabber(cmd: int) -> Handler:
    def handle(engine: Engine, conn: Peer, args: Args) -> None:
        job = engine.grab(conn)
        engine.send(conn, _NO_JOB if job is None else _assign_packet(cmd, job))
    return handle


def _held(engine: Engine, conn: Peer, handle: bytes, not_found: bytes) -> Optional[Job]:
    """The job this worker holds under ``handle``, or None after sending JOB_NOT_FOUND."""
    job = conn.held.get(handle)
    if job is None:
        engine.error(conn, b"JOB_NOT_FOUND", not_found)
    return job


def _relay(cmd: int, not_found: bytes) -> Handler:
    """WORK_DATA / WORK_WARNING: forward unchanged to the job's clients."""
    def handle(engine: Engine, conn: Peer, args: Args) -> None:
        job = _held(engine, conn, args[0], not_found)
        if job is None:
            return
        engine.forward(job, pack(cmd, *args))
    return handle


def work_status(engine: Engine, conn: Peer, args: Args) -> None:
    job = _held(engine, conn, args[0], NOT_FOUND_RESULT)
    if job is None:
        return
    job.numerator = b"%d" % (_atoi(args[1]) & 0xFFFFFFFF)
    job.denominator = b"%d" % (_atoi(args[2]) & 0xFFFFFFFF)
    engine.forward(job, pack(Cmd.WORK_STATUS, *args))


def work_complete(engine: Engine, conn: Peer, args: Args) -> None:
    job = _held(engine, conn, args[0], NOT_FOUND_RESULT)
    if job is None:
        return
    if job.clients:
        engine.forward(job, pack(Cmd.WORK_COMPLETE, args[0], args[1]))
    engine.finish(job, RESULT_COMPLETE)


def work_fail(engine: Engine, conn: Peer, args: Args) -> None:
    if len(args[0]) >= MAX_LOOKUP:
        engine.error(conn, b"ARGUMENT_TOO_LARGE", HANDLE_TOO_LARGE)
        return
    job = _held(engine, conn, args[0], NOT_FOUND_RESULT)
    if job is None:
        return
    if job.clients:
        engine.forward(job, pack(Cmd.WORK_FAIL, args[0]))
    engine.finish(job, RESULT_FAIL)


def work_exception(engine: Engine, conn: Peer, args: Args) -> None:
    job = _held(engine, conn, args[0], NOT_FOUND_EXCEPTION)
    if job is None:
        return
    if job.clients:
        exc = pack(Cmd.WORK_EXCEPTION, args[0], args[1])
        fail = pack(Cmd.WORK_FAIL, args[0])
        for client in job.clients:
            engine.send(client, exc if client.exceptions else fail)
    engine.finish(job, RESULT_EXCEPTION)


# ---- status and misc ----------------------------------------------------------------

def get_status(engine: Engine, conn: Peer, args: Args) -> None:
    handle = args[0]
    job = engine.jobs.get(handle) if len(handle) < MAX_LOOKUP else None
    if job is None or job.ignored:
        engine.send(conn, pack(Cmd.STATUS_RES, handle, b"0", b"0", b"0", b"0"))
        return
    engine.send(conn, pack(Cmd.STATUS_RES, handle, b"1",
                           b"1" if job.worker is not None else b"0",
                           job.numerator, job.denominator))


def get_status_unique(engine: Engine, conn: Peer, args: Args) -> None:
    unique = args[0]
    job = None
    if len(unique) <= MAX_LOOKUP:
        for func in engine.functions.values():
            job = func.by_unique.get(unique)
            if job is not None:
                break
    if job is None:
        engine.send(conn, pack(Cmd.STATUS_RES_UNIQUE, unique, b"0", b"0", b"0", b"0", b"0"))
        return
    engine.send(conn, pack(Cmd.STATUS_RES_UNIQUE, unique, b"1",
                           b"1" if job.worker is not None else b"0",
                           job.numerator, job.denominator, b"%d" % len(job.clients)))


def echo(engine: Engine, conn: Peer, args: Args) -> None:
    engine.send(conn, pack(Cmd.ECHO_RES, args[0]))


def set_client_id(engine: Engine, conn: Peer, args: Args) -> None:
    conn.client_id = args[0][:MAX_CLIENT_ID]


def option_req(engine: Engine, conn: Peer, args: Args) -> None:
    if args[0].lower() == b"exceptions":
        conn.exceptions = True
        engine.send(conn, pack(Cmd.OPTION_RES, args[0]))
    else:
        engine.error(conn, b"UNKNOWN_OPTION", b"Server does not recognize given option")


def not_expected(engine: Engine, conn: Peer, args: Args) -> None:
    engine.error(conn, b"INVALID_COMMAND", b"Command not expected")


HANDLERS: Dict[int, Handler] = {
    Cmd.CAN_DO: can_do,
    Cmd.CANT_DO: cant_do,
    Cmd.RESET_ABILITIES: reset_abilities,
    Cmd.PRE_SLEEP: pre_sleep,
    Cmd.SUBMIT_JOB: _submitter(NORMAL, False),
    Cmd.SUBMIT_JOB_BG: _submitter(NORMAL, True),
    Cmd.SUBMIT_JOB_HIGH: _submitter(HIGH, False),
    Cmd.SUBMIT_JOB_HIGH_BG: _submitter(HIGH, True),
    Cmd.SUBMIT_JOB_LOW: _submitter(LOW, False),
    Cmd.SUBMIT_JOB_LOW_BG: _submitter(LOW, True),
    Cmd.SUBMIT_JOB_EPOCH: submit_epoch,
    Cmd.SUBMIT_REDUCE_JOB: _reducer(False),
    Cmd.SUBMIT_REDUCE_JOB_BACKGROUND: _reducer(True),
    Cmd.GRAB_JOB: _grabber(Cmd.GRAB_JOB),
    Cmd.GRAB_JOB_UNIQ: _grabber(Cmd.GRAB_JOB_UNIQ),
    Cmd.GRAB_JOB_ALL: _grabber(Cmd.GRAB_JOB_ALL),
    Cmd.WORK_DATA: _relay(Cmd.WORK_DATA, NOT_FOUND_DATA),
    Cmd.WORK_WARNING: _relay(Cmd.WORK_WARNING, NOT_FOUND_DATA),
    Cmd.WORK_STATUS: work_status,
    Cmd.WORK_COMPLETE: work_complete,
    Cmd.WORK_FAIL: work_fail,
    Cmd.WORK_EXCEPTION: work_exception,
    Cmd.GET_STATUS: get_status,
    Cmd.GET_STATUS_UNIQUE: get_status_unique,
    Cmd.ECHO_REQ: echo,
    Cmd.SET_CLIENT_ID: set_client_id,
    Cmd.CAN_DO_TIMEOUT: can_do_timeout,
    Cmd.OPTION_REQ: option_req,
}
# Everything a client may not send (response-only, UNUSED, ALL_YOURS, SUBMIT_JOB_SCHED).
for _cmd in COMMANDS:
    HANDLERS.setdefault(_cmd, not_expected)
# Plain int keys: a decoded command (a small int) is then found by identity.
HANDLERS = {int(cmd): handler for cmd, handler in HANDLERS.items()}

#: Request commands that must arrive with \0REQ magic.
REQUESTS = frozenset(int(c) for c, spec in COMMANDS.items() if spec.to_server)

