"""The HTTP front end's sans-IO session (gearmand_py.protocol.http.HttpSession), in process.

``feed`` turns request bytes into codec events; ``respond`` turns reply packets (built here
with the independent test-side packer, tests/gearproto.py) into HTTP response bytes.  Every
expectation is an exact event tuple or exact response bytes.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest

from gearmand_py.messages import PROTOCOL_ERROR
from gearmand_py.protocol.http import MAX_HEAD, HttpSession
from gearproto import CODES, RES, pack

MAX_BODY = 1000
H = b"H:unit:1"


def session() -> HttpSession:
    return HttpSession(MAX_BODY)


def res(cmd: str, *args: Any) -> bytes:
    return pack(cmd, *args, magic=RES)


def submit(cmd: str, fn: bytes, unique: bytes, body: bytes) -> Tuple[int, bool, Tuple[bytes, ...]]:
    return (CODES[cmd], True, (fn, unique, body))


def error(message: bytes) -> List[Tuple[int, bool, Tuple[bytes, ...]]]:
    return [(PROTOCOL_ERROR, False, (message,))]


def refused(s: HttpSession, events: List[Any], status: bytes) -> bool:
    """The request was refused: one PROTOCOL_ERROR event, an HTTP/1.0 error response due
    before any reply, and the session closing."""
    assert len(events) == 1 and events[0][0] == PROTOCOL_ERROR, events
    assert s.interim.startswith(b"HTTP/1.0 " + status + b"\r\n"), s.interim
    assert s.closing
    return True


def http(status: bytes, headers: bytes, body: bytes, length: int = -1) -> bytes:
    """A response as gearmand 1.1.20 sends it: status, headers, then Content-Length and
    Server for a 200, Server and Content-Length for any other status, then the body."""
    n = len(body) if length < 0 else length
    size = b"Content-Length: %d\r\n" % n
    server = b"Server: Gearman/1.1.20\r\n"
    tail = size + server if status.startswith(b"200 ") else server + size
    return b"HTTP/1.0 " + status + b"\r\n" + headers + tail + b"\r\n" + body


POST = b"POST /reverse HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello"


# ---- requests -----------------------------------------------------------------------

def test_whole_post_request() -> None:
    s = session()
    assert s.feed(POST) == [submit("SUBMIT_JOB", b"reverse", b"-", b"hello")]
    assert not s.closing


def test_same_request_byte_by_byte() -> None:
    s = session()
    for i in range(len(POST) - 1):
        assert s.feed(POST[i:i + 1]) == [], i
    assert s.feed(POST[-1:]) == [submit("SUBMIT_JOB", b"reverse", b"-", b"hello")]


def test_body_split_from_head() -> None:
    s = session()
    head, body = POST[:-5], POST[-5:]
    assert s.feed(head) == []
    assert s.feed(body[:2]) == []
    assert s.feed(body[2:]) == [submit("SUBMIT_JOB", b"reverse", b"-", b"hello")]


def test_trailing_data_is_not_a_second_request() -> None:
    s = session()
    pipelined = POST + b"GARBAGE" + b"POST /other HTTP/1.0\r\nContent-Length: 1\r\n\r\nx"
    assert s.feed(pipelined) == [submit("SUBMIT_JOB", b"reverse", b"-", b"hello")]
    assert s.feed(b"POST /again HTTP/1.0\r\nContent-Length: 0\r\n\r\n") == []
    assert s.feed(b"") == []


def test_get_ignores_content_length_and_body() -> None:
    s = session()
    assert s.feed(b"GET /fn HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello") == [
        submit("SUBMIT_JOB", b"fn", b"-", b"")]


def test_put_carries_a_body() -> None:
    s = session()
    assert s.feed(b"PUT /fn HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc") == [
        submit("SUBMIT_JOB", b"fn", b"-", b"abc")]


def test_lf_only_head() -> None:
    s = session()
    assert s.feed(b"POST /fn HTTP/1.0\nContent-Length: 2\n\nab") == [
        submit("SUBMIT_JOB", b"fn", b"-", b"ab")]


def test_function_is_the_path_without_leading_slashes_or_decoding() -> None:
    s = session()
    assert s.feed(b"GET //a%20b?q=1 HTTP/1.0\r\n\r\n") == [
        submit("SUBMIT_JOB", b"a%20b?q=1", b"-", b"")]


def test_body_binary_and_exact_length() -> None:
    s = session()
    body = bytes(range(256)) + b"\r\n\r\n"
    req = b"POST /bin HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert s.feed(req) == [submit("SUBMIT_JOB", b"bin", b"-", body)]


# ---- header mapping -------------------------------------------------------------------

@pytest.mark.parametrize("headers,cmd", [
    (b"", "SUBMIT_JOB"),
    (b"X-Gearman-Priority: high\r\n", "SUBMIT_JOB_HIGH"),
    (b"X-Gearman-Priority: low\r\n", "SUBMIT_JOB_LOW"),
    (b"X-Gearman-Priority: normal\r\n", "SUBMIT_JOB"),
    (b"X-Gearman-Priority: urgent\r\n", "SUBMIT_JOB"),
    (b"X-Gearman-Background: true\r\n", "SUBMIT_JOB_BG"),
    (b"X-Gearman-Background: false\r\n", "SUBMIT_JOB"),
    (b"X-Gearman-Background: yes\r\n", "SUBMIT_JOB"),
    (b"X-Gearman-Background: TRUE\r\nX-Gearman-Priority: High\r\n", "SUBMIT_JOB_HIGH_BG"),
    (b"x-gearman-background:  true \r\nx-gearman-priority: LOW\r\n", "SUBMIT_JOB_LOW_BG"),
])
def test_priority_and_background_headers(headers: bytes, cmd: str) -> None:
    s = session()
    req = b"POST /fn HTTP/1.0\r\n" + headers + b"Content-Length: 1\r\n\r\nx"
    assert s.feed(req) == [submit(cmd, b"fn", b"-", b"x")]


def test_unique_header() -> None:
    s = session()
    req = b"GET /fn HTTP/1.0\r\nX-Gearman-Unique: order-42\r\n\r\n"
    assert s.feed(req) == [submit("SUBMIT_JOB", b"fn", b"order-42", b"")]
    s = session()
    req = b"GET /fn HTTP/1.0\r\nx-gearman-unique:   spaced  \r\n\r\n"
    assert s.feed(req) == [submit("SUBMIT_JOB", b"fn", b"spaced", b"")]


@pytest.mark.parametrize("header", [
    b"X-Gearman-Unique: caf\xc3\xa9",
    b"X-Gearman-Priority: h\xffgh",
    b"X-Gearman-Background: \xff",
    b"Content-Length: 1\xc3\xa9",
])
def test_non_ascii_header_value_does_not_raise(header: bytes) -> None:
    s = session()
    events = s.feed(b"POST /fn HTTP/1.0\r\n" + header + b"\r\n\r\nx")
    assert len(events) == 1
    cmd = events[0][0]
    assert cmd == PROTOCOL_ERROR or cmd in (CODES["SUBMIT_JOB"], CODES["SUBMIT_JOB_BG"])


def test_non_ascii_request_target_is_refused() -> None:
    """RFC 9112 3.2: the request target is ASCII (clients percent-encode); raw UTF-8 in the
    path gets 400.  Other header values may carry any byte."""
    s = session()
    assert refused(s, s.feed(b"GET /f\xc3\xa9 HTTP/1.0\r\n\r\n"), b"400 Bad Request")
    s = session()
    assert s.feed(b"GET /f%C3%A9 HTTP/1.0\r\nX-Other: \xff\r\n\r\n") == [
        submit("SUBMIT_JOB", b"f%C3%A9", b"-", b"")]


def test_root_path_is_echo_of_the_body() -> None:
    s = session()
    assert s.feed(b"POST / HTTP/1.0\r\nContent-Length: 4\r\n\r\nping") == [
        (CODES["ECHO_REQ"], True, (b"ping",))]
    assert s.respond(res("ECHO_RES", "ping")) == http(b"404 NOT_FOUND", b"", b"")
    assert s.closing


# ---- hostile heads --------------------------------------------------------------------

def test_head_over_max_head_without_end_fails() -> None:
    s = session()
    start = b"GET /" + b"a" * (MAX_HEAD - 5)
    assert len(start) == MAX_HEAD
    assert s.feed(start) == []                      # exactly MAX_HEAD: still waiting
    assert refused(s, s.feed(b"a"), b"400 Bad Request")
    assert s.feed(b" HTTP/1.0\r\n\r\n") == []       # nothing after the failure


@pytest.mark.parametrize("line", [
    b"GARBAGE",
    b"GET /fn",
    b"GET  /fn HTTP/1.0",
    b"GET /fn HTTP/2.0",
    b"GET /fn HTTP/1.0 extra",
    b"GET /fn http/1.0",
    b"",
])
def test_bad_request_line(line: bytes) -> None:
    s = session()
    status = b"505 HTTP Version Not Supported" if b"HTTP/2" in line else b"400 Bad Request"
    assert refused(s, s.feed(line + b"\r\nHost: x\r\n\r\n"), status)
    assert s.feed(POST) == []


@pytest.mark.parametrize("value,status", [
    (b"-1", b"400 Bad Request"),
    (b"abc", b"400 Bad Request"),
    (b"", b"400 Bad Request"),
    (b"%d" % (MAX_BODY + 1), b"413 Payload Too Large"),
    (b"99999999999999999999999999", b"400 Bad Request"),     # h11: too many digits
])
def test_bad_content_length(value: bytes, status: bytes) -> None:
    s = session()
    events = s.feed(b"POST /fn HTTP/1.0\r\nContent-Length: " + value + b"\r\n\r\nx")
    assert refused(s, events, status)


def test_content_length_at_the_limit_is_accepted() -> None:
    s = session()
    body = b"b" * MAX_BODY
    req = b"POST /fn HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % MAX_BODY + body
    assert s.feed(req) == [submit("SUBMIT_JOB", b"fn", b"-", body)]


def test_content_length_with_underscore_is_rejected() -> None:
    s = session()
    events = s.feed(b"POST /fn HTTP/1.0\r\nContent-Length: 1_0\r\n\r\n0123456789")
    assert refused(s, events, b"400 Bad Request")


def test_lf_head_with_crlf_crlf_in_body() -> None:
    s = session()
    assert s.feed(b"POST /fn HTTP/1.0\nContent-Length: 4\n\n\r\n\r\n") == [
        submit("SUBMIT_JOB", b"fn", b"-", b"\r\n\r\n")]


def test_unknown_method_is_answered_405() -> None:
    s = session()
    assert s.feed(b"DELETE /fn HTTP/1.0\r\n\r\n") == [(CODES["ECHO_REQ"], True, (b"",))]
    assert s.feed(POST) == []
    assert not s.closing
    assert s.respond(res("ECHO_RES", "")) == http(b"405 METHOD_NOT_ALLOWED", b"", b"")
    assert s.closing


# ---- responses ------------------------------------------------------------------------

def test_foreground_post_response_bytes() -> None:
    s = session()
    s.feed(POST)
    assert s.respond(res("JOB_CREATED", H)) is None
    assert not s.closing
    assert s.respond(res("WORK_COMPLETE", H, "olleh")) == (
        b"HTTP/1.0 200 OK\r\n"
        b"X-Gearman-Job-Handle: H:unit:1\r\n"
        b"X-Gearman-Command: WORK_COMPLETE\r\n"
        b"Content-Length: 5\r\n"
        b"Server: Gearman/1.1.20\r\n"
        b"\r\n"
        b"olleh")
    assert s.closing


def test_background_answers_at_job_created() -> None:
    s = session()
    s.feed(b"POST /fn HTTP/1.0\r\nX-Gearman-Background: true\r\nContent-Length: 1\r\n\r\nx")
    assert s.respond(res("JOB_CREATED", H)) == http(
        b"200 OK", b"X-Gearman-Job-Handle: H:unit:1\r\nX-Gearman-Command: JOB_CREATED\r\n", b"")
    assert s.closing


def test_work_data_collected_then_joined_on_complete() -> None:
    s = session()
    s.feed(POST)
    assert s.respond(res("JOB_CREATED", H)) is None
    assert s.respond(res("WORK_DATA", H, "ab")) is None
    assert s.respond(res("WORK_STATUS", H, "1", "2")) is None
    assert s.respond(res("WORK_WARNING", H, "careful")) is None
    assert s.respond(res("WORK_DATA", H, "c\0d")) is None
    assert not s.closing
    assert s.respond(res("WORK_COMPLETE", H, "ef")) == http(
        b"200 OK", b"X-Gearman-Job-Handle: H:unit:1\r\nX-Gearman-Command: WORK_COMPLETE\r\n",
        b"abc\0def")


def test_work_fail_and_exception_responses() -> None:
    s = session()
    s.feed(POST)
    s.respond(res("JOB_CREATED", H))
    assert s.respond(res("WORK_FAIL", H)) == http(
        b"200 OK", b"X-Gearman-Job-Handle: H:unit:1\r\nX-Gearman-Command: WORK_FAIL\r\n", b"")
    s = session()
    s.feed(POST)
    s.respond(res("JOB_CREATED", H))
    s.respond(res("WORK_DATA", H, "partial "))
    assert s.respond(res("WORK_EXCEPTION", H, "boom")) == http(
        b"200 OK",
        b"X-Gearman-Job-Handle: H:unit:1\r\nX-Gearman-Command: WORK_EXCEPTION\r\n",
        b"partial boom")


def test_error_reply_is_500() -> None:
    s = session()
    s.feed(POST)
    assert s.respond(res("ERROR", "QUEUE_ERROR", "Job queue is full")) == http(
        b"500 INTERNAL_SERVER_ERROR",
        b"X-Gearman-Command: ERROR\r\nX-Gearman-Error: QUEUE_ERROR\r\n",
        b"Job queue is full")
    assert s.closing


def test_head_sends_no_body() -> None:
    s = session()
    assert s.feed(b"HEAD /fn HTTP/1.0\r\n\r\n") == [submit("SUBMIT_JOB", b"fn", b"-", b"")]
    assert s.respond(res("JOB_CREATED", H)) is None
    assert s.respond(res("WORK_COMPLETE", H, "result")) == http(
        b"200 OK", b"X-Gearman-Job-Handle: H:unit:1\r\nX-Gearman-Command: WORK_COMPLETE\r\n",
        b"", length=6)
    s = session()
    s.feed(b"HEAD /fn HTTP/1.0\r\n\r\n")
    assert s.respond(res("ERROR", "E", "text")) == http(
        b"500 INTERNAL_SERVER_ERROR", b"X-Gearman-Command: ERROR\r\nX-Gearman-Error: E\r\n",
        b"", length=4)


# ---- HTTP/1.1: keep-alive, pipelining, 100-continue, framing -----------------------------

REQ11 = b"POST /fn HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"


def test_http11_response_and_keep_alive() -> None:
    s = session()
    assert s.feed(REQ11) == [submit("SUBMIT_JOB", b"fn", b"-", b"hi")]
    assert s.respond(res("JOB_CREATED", H)) is None
    assert s.respond(res("WORK_COMPLETE", H, "ih")) == (
        b"HTTP/1.1 200 OK\r\nX-Gearman-Job-Handle: H:unit:1\r\n"
        b"X-Gearman-Command: WORK_COMPLETE\r\nContent-Length: 2\r\n"
        b"Server: Gearman/1.1.20\r\n\r\nih")
    assert not s.closing and s.backlog
    assert s.feed(REQ11) == [submit("SUBMIT_JOB", b"fn", b"-", b"hi")]   # same connection


def test_pipelined_request_waits_for_the_response() -> None:
    s = session()
    assert s.feed(REQ11 + REQ11.replace(b"/fn", b"/second")) == [
        submit("SUBMIT_JOB", b"fn", b"-", b"hi")]
    assert s.feed(b"") == []                     # busy: one request at a time
    s.respond(res("WORK_COMPLETE", H, "ok"))
    assert s.backlog
    assert s.feed(b"") == [submit("SUBMIT_JOB", b"second", b"-", b"hi")]


def test_connection_close_closes_after_the_response() -> None:
    s = session()
    s.feed(b"GET /fn HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out = s.respond(res("WORK_COMPLETE", H, ""))
    assert out is not None and out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in out
    assert s.closing


def test_chunked_body() -> None:
    s = session()
    req = (b"POST /fn HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n")
    for i in range(len(req) - 1):
        assert s.feed(req[i:i + 1]) == []
    assert s.feed(req[-1:]) == [submit("SUBMIT_JOB", b"fn", b"-", b"abcd")]


def test_chunked_body_over_the_limit_is_refused() -> None:
    s = session()
    req = (b"POST /fn HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"%x\r\n" % (MAX_BODY + 1) + b"a" * (MAX_BODY + 1) + b"\r\n0\r\n\r\n")
    assert refused(s, s.feed(req), b"413 Payload Too Large")


def test_smuggling_pair_is_refused() -> None:
    s = session()
    req = (b"POST /fn HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert refused(s, s.feed(req), b"400 Bad Request")


def test_expect_100_continue_is_answered_at_once() -> None:
    s = session()
    assert s.feed(b"POST /fn HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                  b"Expect: 100-continue\r\n\r\n") == []
    assert s.interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.interim = b""
    assert s.feed(b"hi") == [submit("SUBMIT_JOB", b"fn", b"-", b"hi")]


def test_http11_without_host_is_refused() -> None:
    s = session()
    assert refused(s, s.feed(b"GET /fn HTTP/1.1\r\n\r\n"), b"400 Bad Request")
