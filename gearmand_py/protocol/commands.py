"""The Gearman command table: one row per packet type drives parsing, packing and log names.

Pure data; imported by every thread, mutated by none.
"""

from __future__ import annotations

import enum
from typing import Dict, NamedTuple

REQ_MAGIC = b"\0REQ"
RES_MAGIC = b"\0RES"
HEADER_SIZE = 12


class Cmd(enum.IntEnum):
    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    UNUSED = 5
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


class Spec(NamedTuple):
    """argc: number of arguments; has_data: the last part is opaque data after argc NULs.

    Without data the last of the argc arguments is the rest of the payload (may hold NULs).
    to_server: a request a client or worker sends (it must carry the request magic).
    """

    argc: int
    has_data: bool
    to_server: bool


#: Packets that travel to the server (_S: requests, _B: worker results that the server
#: also forwards to clients) and those it only sends (_C).
_S = _B = True
_C = False

COMMANDS: Dict[int, Spec] = {
    Cmd.CAN_DO: Spec(1, False, _S),
    Cmd.CANT_DO: Spec(1, False, _S),
    Cmd.RESET_ABILITIES: Spec(0, False, _S),
    Cmd.PRE_SLEEP: Spec(0, False, _S),
    Cmd.UNUSED: Spec(0, False, False),
    Cmd.NOOP: Spec(0, False, _C),
    Cmd.SUBMIT_JOB: Spec(2, True, _S),
    Cmd.JOB_CREATED: Spec(1, False, _C),
    Cmd.GRAB_JOB: Spec(0, False, _S),
    Cmd.NO_JOB: Spec(0, False, _C),
    Cmd.JOB_ASSIGN: Spec(2, True, _C),
    Cmd.WORK_STATUS: Spec(3, False, _B),
    Cmd.WORK_COMPLETE: Spec(1, True, _B),
    Cmd.WORK_FAIL: Spec(1, False, _B),
    Cmd.GET_STATUS: Spec(1, False, _S),
    Cmd.ECHO_REQ: Spec(0, True, _S),
    Cmd.ECHO_RES: Spec(0, True, _C),
    Cmd.SUBMIT_JOB_BG: Spec(2, True, _S),
    Cmd.ERROR: Spec(2, False, _C),
    Cmd.STATUS_RES: Spec(5, False, _C),
    Cmd.SUBMIT_JOB_HIGH: Spec(2, True, _S),
    Cmd.SET_CLIENT_ID: Spec(1, False, _S),
    Cmd.CAN_DO_TIMEOUT: Spec(2, False, _S),
    Cmd.ALL_YOURS: Spec(0, False, _S),
    Cmd.WORK_EXCEPTION: Spec(1, True, _B),
    Cmd.OPTION_REQ: Spec(1, False, _S),
    Cmd.OPTION_RES: Spec(1, False, _C),
    Cmd.WORK_DATA: Spec(1, True, _B),
    Cmd.WORK_WARNING: Spec(1, True, _B),
    Cmd.GRAB_JOB_UNIQ: Spec(0, False, _S),
    Cmd.JOB_ASSIGN_UNIQ: Spec(3, True, _C),
    Cmd.SUBMIT_JOB_HIGH_BG: Spec(2, True, _S),
    Cmd.SUBMIT_JOB_LOW: Spec(2, True, _S),
    Cmd.SUBMIT_JOB_LOW_BG: Spec(2, True, _S),
    Cmd.SUBMIT_JOB_SCHED: Spec(7, True, _S),
    Cmd.SUBMIT_JOB_EPOCH: Spec(3, True, _S),
    Cmd.SUBMIT_REDUCE_JOB: Spec(4, True, _S),
    Cmd.SUBMIT_REDUCE_JOB_BACKGROUND: Spec(4, True, _S),
    Cmd.GRAB_JOB_ALL: Spec(0, False, _S),
    Cmd.JOB_ASSIGN_ALL: Spec(4, True, _C),
    Cmd.GET_STATUS_UNIQUE: Spec(1, False, _S),
    Cmd.STATUS_RES_UNIQUE: Spec(6, False, _C),
}

MAX_COMMAND = max(COMMANDS)

#: Log/debug names, e.g. NAMES[7] == "SUBMIT_JOB".
NAMES: Dict[int, str] = {int(c): c.name for c in Cmd}
