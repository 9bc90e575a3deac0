"""The native load generator: build ``loadgen.c`` once per user, run it, collect its results.

``loadgen.c`` (package data next to this module) is compiled with the system C compiler
(``$CC`` or ``cc``, found the way :mod:`gearmand_py.launcher` finds it) into
``$XDG_CACHE_HOME/gearmand-py/`` (default ``~/.cache/gearmand-py/``) under a name holding a
hash of the source, the compiler and the flags, so a changed source is rebuilt and an
unchanged one is reused.  :func:`run` starts one or more generator processes against a
server, waits until all have connected ("ready"), starts them together ("go"), reads the
JSON line each prints, and measures the server's and the machine's CPU over the same
interval.  Without a compiler :func:`binary` raises :class:`BuildError`; the command line
then falls back to the Python generator (:mod:`.gen`) and says the numbers are not valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..launcher import BuildError, _find_compiler, temp_file_in
from .gen import Result, RunOutcome, cpu_machine

__all__ = ["BuildError", "SOURCE", "binary", "cache_dir", "run"]

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loadgen.c")
CFLAGS = ["-O2", "-Wall", "-Wextra"]
BINARY_PREFIX = "loadgen-"
SETUP_TIMEOUT = 60.0
RESULT_GRACE = 10.0  # seconds past the time limit before a silent generator is killed


def cache_dir() -> str:
    """Per-user cache directory for the compiled generator."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gearmand-py")


def binary(cc: Optional[str] = None, source: str = SOURCE,
           directory: Optional[str] = None) -> str:
    """Path of the compiled generator, building it first if needed; BuildError if it
    cannot be built (no compiler, compile error, unwritable cache)."""
    compiler = _find_compiler(cc)
    try:
        with open(source, "rb") as f:
            text = f.read()
    except OSError as e:
        raise BuildError(f"cannot read the generator source {source}: {e.strerror}") from None
    key = hashlib.sha256(text + "\0".join(compiler + CFLAGS).encode()).hexdigest()[:16]
    directory = directory or cache_dir()
    path = os.path.join(directory, BINARY_PREFIX + key)
    if os.access(path, os.X_OK):
        return path
    tmp = temp_file_in(directory, ".loadgen-", 0o700)
    try:
        cmd = compiler + CFLAGS + ["-o", tmp, source]
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BuildError(f"cannot run {compiler[0]}: {e}") from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stdout.splitlines() if "error" in ln] or \
                proc.stdout.splitlines() or [f"exit status {proc.returncode}"]
            raise BuildError(f"compiling {source} failed: {lines[0].strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class _Proc:
    """One generator process and its line-oriented stdout."""

    def __init__(self, argv: List[str]) -> None:
        self.argv = argv
        self.err = tempfile.TemporaryFile()
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.err)
        self.buf = b""

    def line(self, deadline: float, what: str) -> bytes:
        """The next stdout line; RuntimeError on exit or when ``deadline`` passes."""
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"generator did not report {what} in time{self.tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"generator exited with {self.p.wait()} before "
                                       f"{what}{self.tail()}")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def tail(self) -> str:
        self.err.seek(0)
        text = self.err.read()[-600:].decode("utf-8", "replace").strip()
        return f": {text}" if text else ""

    def send(self, text: bytes) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(text)
        self.p.stdin.flush()

    def close(self) -> None:
        if self.p.stdin is not None:
            try:
                self.p.stdin.close()
            except OSError:
                pass
        try:
            self.p.wait(2.0)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        if self.p.stdout is not None:
            self.p.stdout.close()
        self.err.close()


def args(opts: Dict[str, Any]) -> List[str]:
    """loadgen options from keyword names (only the ones given)."""
    flags = {"clients": "-c", "workers": "-w", "depth": "-q", "jobs": "-n", "fill": "-F",
             "time": "-T", "payload": "-s", "func": "-f", "status_us": "-S", "unique": "-u"}
    out: List[str] = []
    for key, val in opts.items():
        if isinstance(val, bool):  # a switch
            out += [flags[key]] if val else []
        else:
            out += [flags[key], str(val)]
    return out


def run(exe: str, port: int, mode: str, per_proc: Sequence[Dict[str, Any]],
        server_cpu: Callable[[], float],
        server_wait: Callable[[], float] = lambda: 0.0) -> RunOutcome:
    """Run one generator process per ``per_proc`` options dict (``mode`` unless the dict
    names its own, so two kinds of load can run together); return once all have
    reported, with the server's CPU and run-queue wait (``server_cpu()``,
    ``server_wait()``, seconds) over the same interval."""
    procs: List[_Proc] = []
    try:
        for opts in per_proc:
            rest = {k: v for k, v in opts.items() if k != "mode"}
            procs.append(_Proc([exe, opts.get("mode", mode), "-p", str(port)] + args(rest)))
        setup_deadline = time.monotonic() + SETUP_TIMEOUT
        for p in procs:
            if p.line(setup_deadline, "ready") != b"ready":
                raise RuntimeError(f"generator said something else than ready{p.tail()}")
        limit = max(float(o.get("time", 2.0)) for o in per_proc)
        cpu0 = server_cpu()
        wait0 = server_wait()
        mach0 = cpu_machine()
        t_go = time.monotonic()
        for p in procs:
            p.send(b"go\n")
        deadline = t_go + limit + RESULT_GRACE
        results: List[Result] = []
        for p in procs:
            results.append(json.loads(p.line(deadline, "its result")))
        cpu1 = server_cpu()
        wait1 = server_wait()
        mach1 = cpu_machine()
        t_mach = time.monotonic()
    finally:
        for p in procs:
            p.close()
    t_start = min(r["t_start"] for r in results)
    t_end = max(r["t_end"] for r in results)
    return RunOutcome(results, t_start, t_end, sum(r["cpu"] for r in results), cpu1 - cpu0,
                      mach1 - mach0, t_mach - t_go, wait1 - wait0)
