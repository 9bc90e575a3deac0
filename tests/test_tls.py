"""TLS on the Gear port (--ssl): raw TLS sockets and the python `gear` library, a 1 MiB job,
a plaintext peer that cannot disturb TLS ones, and a bad certificate at start-up."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import subprocess
import threading
import time
from typing import Callable, Dict, Iterator, Tuple

import pytest

from gearproto import wait_for
from support import Server, py_gearmand_cmd, require


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    require("openssl", "TLS tests make a self-signed certificate with openssl")
    d = tmp_path_factory.mktemp("tls")
    files = {"cert": str(d / "cert.pem"), "key": str(d / "key.pem")}
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    files["key"], "-out", files["cert"], "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=60)
    return files


@pytest.fixture(params=["0", "2"])
def tls_server(request: pytest.FixtureRequest, certs: Dict[str, str],
               server_factory: Callable[..., Server]) -> Iterator[Tuple[Server, Dict[str, str]]]:
    srv = server_factory("-t", request.param, "--ssl", "--ssl-certificate", certs["cert"],
                         "--ssl-key", certs["key"], "--ssl-ca-file", certs["cert"],
                         impl="py", ready_tls=certs["cert"])
    yield srv, certs


def tls_connect(port: int, ca: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def pk(cmd: int, *args: bytes) -> bytes:
    payload = b"\0".join(args)
    return b"\0REQ" + struct.pack(">II", cmd, len(payload)) + payload


def recv_packet(s: ssl.SSLSocket) -> Tuple[int, bytes]:
    buf = b""
    while len(buf) < 12:
        chunk = s.recv(65536)
        assert chunk, "closed"
        buf += chunk
    magic, cmd, size = struct.unpack(">4sII", buf[:12])
    assert magic == b"\0RES"
    while len(buf) < 12 + size:
        chunk = s.recv(1 << 20)
        assert chunk, "closed"
        buf += chunk
    assert len(buf) == 12 + size
    return cmd, buf[12:]


def test_admin_echo_and_a_1mib_job_over_tls(tls_server: Tuple[Server, Dict[str, str]]) -> None:
    srv, certs = tls_server
    with tls_connect(srv.port, certs["cert"]) as admin:
        admin.sendall(b"version\r\n")
        assert admin.recv(100) == b"OK 1.1.20\n"
        admin.sendall(pk(16, b"ping\0with nul"))
        assert recv_packet(admin) == (17, b"ping\0with nul")
    data = os.urandom(1 << 20)
    worker = tls_connect(srv.port, certs["cert"])
    client = tls_connect(srv.port, certs["cert"])
    try:
        worker.sendall(pk(1, b"rev"))
        client.sendall(pk(7, b"rev", b"", data))
        cmd, handle = recv_packet(client)
        assert cmd == 8
        worker.sendall(pk(9))
        cmd, payload = recv_packet(worker)
        assert cmd == 11 and payload == handle + b"\0rev\0" + data
        worker.sendall(pk(13, handle, data[::-1]))
        assert recv_packet(client) == (13, handle + b"\0" + data[::-1])
    finally:
        worker.close()
        client.close()


def test_plaintext_peer_is_dropped_alone(tls_server: Tuple[Server, Dict[str, str]]) -> None:
    srv, certs = tls_server
    with tls_connect(srv.port, certs["cert"]) as good:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as plain:
            plain.sendall(b"status\r\n")
            try:                                 # handshake fails: only this one closes
                assert plain.recv(100) == b""
            except ConnectionResetError:
                pass
        good.sendall(b"version\r\n")
        assert good.recv(100) == b"OK 1.1.20\n"
    assert srv.alive()


def test_gear_library_over_tls(tls_server: Tuple[Server, Dict[str, str]]) -> None:
    gear = __import__("gear")      # a test dependency (setup.cfg [test])
    srv, certs = tls_server
    worker = gear.Worker("tls-worker")
    worker.addServer("127.0.0.1", srv.port, ssl_key=certs["key"], ssl_cert=certs["cert"],
                     ssl_ca=certs["cert"])
    worker.waitForServer()
    worker.registerFunction("upper")
    client = gear.Client("tls-client")
    client.addServer("127.0.0.1", srv.port, ssl_key=certs["key"], ssl_cert=certs["cert"],
                     ssl_ca=certs["cert"])
    client.waitForServer()

    def work() -> None:
        job = worker.getJob()
        job.sendWorkComplete(job.arguments.upper())

    t = threading.Thread(target=work, daemon=True)
    t.start()
    job = gear.TextJob("upper", "over tls")
    client.submitJob(job)
    t.join(20)
    assert not t.is_alive()
    for _ in range(200):
        if job.complete:
            break
        threading.Event().wait(0.05)
    assert job.complete and job.data == ["OVER TLS"]
    client.shutdown()
    worker.shutdown()


def test_bad_certificate_is_one_line_and_exit_1() -> None:
    cmd = py_gearmand_cmd() + ["-p", "0", "-L", "127.0.0.1", "-l", "none", "--ssl",
                               "--ssl-certificate", "/nonexistent/cert.pem",
                               "--ssl-key", "/nonexistent/key.pem"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "SSL certificate /nonexistent/cert.pem" in lines[0], r.stderr


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("threads", ["0", "2"])
def test_silent_and_garbage_peers_are_closed_after_the_handshake_timeout(
        certs: Dict[str, str], server_factory: Callable[..., Server], threads: str) -> None:
    """300 peers that never send a byte and 200 that send garbage, some of it shaped like
    the start of a TLS record (so the handshake waits for more): TLS clients keep working
    meanwhile, and every such peer is closed once --ssl-handshake-timeout passes."""
    srv = server_factory("-t", threads, "--ssl", "--ssl-certificate", certs["cert"],
                         "--ssl-key", certs["key"], "--ssl-handshake-timeout", "3", "-b", "1024",
                         impl="py", ready_tls=certs["cert"])
    with tls_connect(srv.port, certs["cert"]) as probe:   # warm: lazy imports, TLS context
        probe.sendall(b"version\r\n")
        assert probe.recv(100) == b"OK 1.1.20\n"
    time.sleep(0.3)
    baseline = open_fds(srv.pid)
    garbage = [os.urandom(64), b"\x16\x03\x01\xff\xff" + os.urandom(32),  # record, cut short
               b"\x16\x03\x03\x00\x10", b"GET / HTTP/1.0\r\n\r\n"]
    peers = []
    try:
        for _ in range(300):
            peers.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(garbage[i % len(garbage)])
            peers.append(s)
        assert wait_for(lambda: open_fds(srv.pid) > baseline + 250, 2.0)  # accepted
        start = time.monotonic()
        while time.monotonic() - start < 1.0:            # TLS clients are served meanwhile
            t0 = time.monotonic()
            with tls_connect(srv.port, certs["cert"]) as good:
                good.sendall(pk(16, b"ping"))
                assert recv_packet(good) == (17, b"ping")
            assert time.monotonic() - t0 < 0.5
        deadline = time.monotonic() + 8
        while open_fds(srv.pid) > baseline and time.monotonic() < deadline:
            time.sleep(0.1)
        assert open_fds(srv.pid) <= baseline, "peers left open after the handshake timeout"
        closed = 0
        for s in peers:                # each sees EOF (a TLS alert may come first)
            s.settimeout(2)
            try:
                while s.recv(4096):
                    pass
                closed += 1
            except ConnectionResetError:
                closed += 1
            except OSError:
                pass
        assert closed == len(peers)
    finally:
        for s in peers:
            s.close()
    with tls_connect(srv.port, certs["cert"]) as good:
        good.sendall(b"version\r\n")
        assert good.recv(100) == b"OK 1.1.20\n"
