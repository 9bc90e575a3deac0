"""Admin text protocol: exact replies (as C gearmand 1.1.20 sends them) and differential runs
against C.

* ``test_exact_*``: byte-exact expectations (C 1.1.20's replies), run against ``server`` (ours
  by default; C with ``GEARMAND_TEST_IMPL=c``).
* ``test_differential_*``: the same scripted scenario against our server and C gearmand;
  replies are compared after normalising only what must differ (pids, fds, the host part of
  job handles, the Debian ``+ds`` version suffix).  The order-insensitive comparison and the
  exact-order comparison are separate tests so a failure says which one broke.
"""

from __future__ import annotations

import re

import pytest

from gearproto import Conn, grab, pack, submit
from support import C_GEARMAND, Factory, IMPL, Server, require, sync


LIST_END = b".\n"


# -- exact replies ----------------------------------------------------------------------

INCOMPLETE = b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"

EXACT = [
    ("status", b".\n"),
    ("STATUS", b".\n"),
    ("prioritystatus", b".\n"),
    ("show jobs", b".\n"),
    ("show unique jobs", b".\n"),
    ("create", INCOMPLETE + b"create\r\n"),
    ("create foo", INCOMPLETE + b"create\r\n"),
    ("create function", INCOMPLETE + b"create\r\n"),
    ("drop", INCOMPLETE + b"drop\r\n"),
    ("drop function", INCOMPLETE + b"drop\r\n"),
    ("drop function nope", b"ERR function not found\r\n"),
    ("maxqueue", INCOMPLETE + b"maxqueue\r\n"),
    ("maxqueue nosuchfn 3", b"OK\r\n"),
    ("maxqueue x y z w", b"OK\r\n"),
    ("show", b"ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n"),
    ("show foo", b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"),
    ("shutdown", b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"),
    ("shutdown graceful", b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"),
    ("", b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"),
    ("bogus", b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"),
    (" status", b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"),
    ("cancel", b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"),
    ("cancel job", b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"),
    ("cancel job a b", b"ERR UNKNOWN_ERROR\r\n"),
    ("cancel job H:nohost:1", b"ERR UNKNOWN_JOB\r\n"),
]


@pytest.mark.parametrize("cmd,reply", EXACT, ids=[c or "<empty>" for c, _ in EXACT])
def test_exact_reply(server: Server, cmd: str, reply: bytes) -> None:
    with Conn(server.port) as c:
        assert c.admin(cmd) == reply
        # and with LF-only line endings
        c.send_raw(cmd.encode() + b"\n")
        assert c.read_text_reply() == reply


def test_exact_version_getpid_verbose(server_factory: Factory) -> None:
    srv = server_factory("--verbose", "WARNING")
    with Conn(srv.port) as c:
        v = c.admin("version")
        if IMPL == "c":
            assert v == b"OK 1.1.20+ds\n"
        else:
            assert v == b"OK 1.1.20\n"
        assert c.admin("getpid") == f"OK {srv.pid}\n".encode()
        assert c.admin("verbose") == b"OK WARNING\n"
        assert c.admin("VeRsIoN") == v


def test_exact_status_rows(server: Server) -> None:
    w = Conn(server.port)
    w.send("CAN_DO", "sfn")
    w.send("CAN_DO", "sfn")  # duplicates count twice
    sync(w)
    with Conn(server.port) as c:
        submit(c, "sfn", b"1", cmd="SUBMIT_JOB_BG")
        submit(c, "sfn", b"2", cmd="SUBMIT_JOB_HIGH_BG")
        submit(c, "sfn", b"3", cmd="SUBMIT_JOB_LOW_BG")
        assert grab(w).name == "JOB_ASSIGN"
        assert c.admin("status") == b"sfn\t3\t1\t2\n.\n"
        assert c.admin("prioritystatus") == b"sfn\t0\t1\t1\t2\n.\n"


def test_exact_workers(server: Server) -> None:
    w = Conn(server.port)
    w.send("SET_CLIENT_ID", b"wid")
    w.send("CAN_DO", "wf1")
    w.send("CAN_DO", "wf2")
    w.send("CAN_DO", "wf1")
    sync(w)
    with Conn(server.port) as c:
        text = c.admin("workers")
    assert text.endswith(b"\n.\n")
    rows = sorted(re.sub(rb"^\d+ ", b"FD ", r) for r in text.split(b"\n")[:-2])
    # the requesting (admin) connection is listed too, id "-", no functions
    assert rows == [b"FD 127.0.0.1 - :", b"FD 127.0.0.1 wid : wf1 wf2 wf1"]


def test_exact_show_jobs_and_unique(server: Server) -> None:
    with Conn(server.port) as c:
        h1 = submit(c, "sj", b"d", b"uniq1", cmd="SUBMIT_JOB_BG")
        assert c.admin("show jobs") == h1 + b"\t0\t0\t1\n.\n"  # bg: persisted
        assert c.admin("show unique jobs") == b"uniq1\n.\n"
        assert c.admin("cancel job " + h1.decode()) == b"OK\r\n"
        if IMPL == "c":   # C keeps a cancelled queued job, ignored, until a GRAB purges it
            assert c.admin("show jobs") == h1 + b"\t0\t1\t0\n.\n"
            assert c.admin("cancel job " + h1.decode()) == b"OK\r\n"
        else:             # deliberate fix: a cancelled queued job is gone at once
            assert c.admin("show jobs") == b".\n"
            assert c.admin("status") == b"sj\t0\t0\t0\n.\n"
            assert c.admin("cancel job " + h1.decode()) == b"ERR UNKNOWN_JOB\r\n"
    with Conn(server.port) as c:
        submit(c, "sj2", b"d", b"", cmd="SUBMIT_JOB_BG")
        assert b"\n\n" in b"\n" + c.admin("show unique jobs")  # empty unique: empty line


def test_exact_create_drop_function(server: Server) -> None:
    with Conn(server.port) as c:
        assert c.admin("create function newfn") == b"OK\r\n"
        assert c.admin("status") == b"newfn\t0\t0\t0\n.\n"
        assert c.admin("drop function NEWFN") == b"OK\r\n"  # case-insensitive
        assert c.admin("status") == b".\n"
        w = Conn(server.port)
        w.send("CAN_DO", "busy")
        sync(w)
        assert c.admin("drop function busy") == (
            b"ERR there are still connected workers or executing clients\r\n")


def test_six_tokens_close_connection(server: Server) -> None:
    with Conn(server.port) as c:
        c.send_raw(b"a b c d e f\r\n")
        assert c.closed(3)
    with Conn(server.port) as c:  # server still fine
        assert c.admin("status") == b".\n"


# -- segmentation: replies to one read go out in one write ---------------------------------

def test_pipelined_commands_all_answered_in_one_segment(server: Server) -> None:
    with Conn(server.port) as c:
        c.send_raw(b"status\nversion\nworkers\r\ngetpid\r\nbogus\nshow jobs\n")
        chunks = c.read_idle(idle=0.1, total=5)
    data = b"".join(chunks)
    ver = b"OK 1.1.20+ds\n" if IMPL == "c" else b"OK 1.1.20\n"
    expected_re = (rb"\A\.\n" + re.escape(ver) + rb"\d+ 127\.0\.0\.1 - :\n\.\n"
                   + re.escape(f"OK {server.pid}\n".encode())
                   + re.escape(b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n")
                   + rb"\.\n\Z")
    assert re.match(expected_re, data), data
    assert len(chunks) == 1, chunks


def test_mod_gearman_single_read(server: Server) -> None:
    """check_gearman does one write of ``status\\nversion\\n`` and a single read()."""
    w = Conn(server.port)
    for i in range(30):
        w.send("CAN_DO", f"fn{i:02d}")
    sync(w)
    with Conn(server.port) as c:
        c.send_raw(b"status\nversion\n")
        c.sock.settimeout(5)
        data = c.sock.recv(65536)
    assert data.count(b"\n") == 32, data
    assert data.endswith(b".\nOK 1.1.20+ds\n" if IMPL == "c" else b".\nOK 1.1.20\n")


def test_admin_and_binary_share_connection(server: Server) -> None:
    with Conn(server.port) as c:
        c.send_raw(pack("ECHO_REQ", b"ping") + b"status\n" + pack("ECHO_REQ", b"pong"))
        assert c.expect("ECHO_RES").payload == b"ping"
        assert c.read_text_reply() == b".\n"
        assert c.expect("ECHO_RES").payload == b"pong"


# -- differential against C gearmand -------------------------------------------------------

def normalise(reply: bytes) -> bytes:
    reply = re.sub(rb"H:[^:\t\n]+:(\d+)", rb"H:HOST:\1", reply)
    reply = re.sub(rb"(?m)^\d+ 127\.0\.0\.1 ", b"FD 127.0.0.1 ", reply)
    reply = reply.replace(b"1.1.20+ds\n", b"1.1.20\n")
    return reply


def scenario(srv: Server) -> list[tuple[str, bytes]]:
    """A fixed script touching every admin command; returns (command, normalised reply)."""
    port = srv.port
    out: list[tuple[str, bytes]] = []
    admin = Conn(port)

    def ask(cmd: str) -> None:
        out.append((cmd, normalise(admin.admin(cmd))))

    ask("status")
    w1 = Conn(port)
    w1.send("SET_CLIENT_ID", b"worker one")
    for fn in ("alpha", "beta", "gamma"):
        w1.send("CAN_DO", fn)
    sync(w1)
    w2 = Conn(port)
    w2.send("CAN_DO", "beta")
    w2.send("CAN_DO_TIMEOUT", "delta", "60000")
    sync(w2)
    sub = Conn(port)
    for fn, cmd, data, uniq in [
        ("alpha", "SUBMIT_JOB_BG", b"a1", b"ua1"),
        ("alpha", "SUBMIT_JOB_HIGH_BG", b"a2", b"ua2"),
        ("alpha", "SUBMIT_JOB_LOW_BG", b"a3", b""),
        ("beta", "SUBMIT_JOB_BG", b"b1", b"-"),
        ("beta", "SUBMIT_JOB_BG", b"b1", b"-"),  # coalesces
        ("gamma", "SUBMIT_JOB_LOW_BG", b"g1", b"ug1"),
        ("epsilon", "SUBMIT_JOB_BG", b"e1", b"ue1"),
        ("zeta", "SUBMIT_JOB_HIGH_BG", b"z1", b"uz1"),
    ]:
        submit(sub, fn, data, uniq, cmd=cmd)
    fg = Conn(port)
    submit(fg, "delta", b"d1", b"ud1")
    ask("status")
    ask("prioritystatus")
    ask("show jobs")
    ask("show unique jobs")
    # w3 (delta only) takes the delta job; a worker with several functions would expose
    # the deliberate assignment-order difference, which is not what this test compares
    w3 = Conn(port)
    w3.send("CAN_DO", "delta")
    w3.send("GRAB_JOB_UNIQ")
    p = w3.recv()
    assert p.name == "JOB_ASSIGN_UNIQ" and p.args[1] == b"delta", p
    ask("status")
    ask("prioritystatus")
    w3.send("WORK_STATUS", p.args[0], b"1", b"4")
    sync(w3)
    ask("maxqueue epsilon 1")
    sub.send("SUBMIT_JOB_BG", "epsilon", "", b"e2")
    out.append(("submit over maxqueue", sub.recv().payload))
    ask("maxqueue epsilon")
    ask("create function omega")
    ask("drop function omega")
    ask("drop function beta")
    ask("create function Omega2")
    ask("cancel job H:nohost:99")
    # cancel the zeta job: handle number 8 in submission order
    handles = [line.split(b"\t")[0] for line in admin.admin("show jobs").split(b"\n")[:-2]]
    zeta = [h for h in handles if h.endswith(b":8")]
    assert zeta, handles
    out.append(("cancel job <zeta>", normalise(admin.admin("cancel job " + zeta[0].decode()))))
    ask("show jobs")
    ask("status")
    ask("workers")
    ask("verbose")
    ask("version")
    ask("show")
    ask("show foo")
    ask("nonsense here")
    # disconnect the fg client: its job keeps running but is ignored
    fg.close()
    w3.send("WORK_COMPLETE", p.args[0], b"r")
    sync(w3)
    ask("status")
    for c in (admin, w1, w2, w3, sub):
        c.close()
    return out


@pytest.fixture
def both(server_factory: Factory) -> tuple[Server, Server]:
    require(C_GEARMAND, "differential tests need Debian's gearman-job-server")
    return server_factory("-t", "1", impl="c"), server_factory("-t", "1")


def _sorted_lines(reply: bytes) -> list[bytes]:
    return sorted(reply.split(b"\n"))


def test_differential_content(both: tuple[Server, Server]) -> None:
    """Same lines (order ignored) for every admin reply of the scenario."""
    c_out, our_out = scenario(both[0]), scenario(both[1])
    assert [cmd for cmd, _ in c_out] == [cmd for cmd, _ in our_out]
    for (cmd, c_reply), (_, our_reply) in zip(c_out, our_out):
        assert _sorted_lines(our_reply) == _sorted_lines(c_reply), cmd


def test_differential_exact_order(both: tuple[Server, Server]) -> None:
    """Byte-for-byte, including listing order (gearmand's hash-bucket order)."""
    c_out, our_out = scenario(both[0]), scenario(both[1])
    assert our_out == c_out


def test_differential_gearadmin(both: tuple[Server, Server]) -> None:
    """gearadmin's view of the same state is identical on both servers."""
    import subprocess

    require("/usr/bin/gearadmin", "gearman-tools")
    results = []
    for srv in both:
        conns = []
        w = Conn(srv.port)
        w.send("SET_CLIENT_ID", b"gw")
        w.send("CAN_DO", "ga")
        sync(w)
        conns.append(w)
        with Conn(srv.port) as c:
            submit(c, "ga", b"x", b"gu", cmd="SUBMIT_JOB_BG")
            submit(c, "gb", b"y", b"", cmd="SUBMIT_JOB_HIGH_BG")
        outs = []
        for opt in ("--status", "--priority-status", "--show-jobs", "--show-unique-jobs",
                    "--server-verbose", "--server-version", "--workers",
                    "--create-function=gx", "--drop-function=gx", "--cancel-job=H:no:1"):
            r = subprocess.run(["gearadmin", "-h", "127.0.0.1", "-p", str(srv.port), opt],
                               capture_output=True, timeout=10, check=False)
            outs.append((opt, r.returncode, normalise(r.stdout)))
        results.append(outs)
        for c in conns:
            c.close()
    assert results[1] == results[0]
