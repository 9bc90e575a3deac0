"""A native ``gearmand`` launcher: a small C program that embeds this Python installation.

Why: Debian's ``/etc/init.d/gearman-job-server`` stops the daemon with
``start-stop-daemon --stop --exec /usr/sbin/gearmand``, which compares ``/proc/PID/exe``
with that path.  The ``gearmand`` console script is a Python script, so its ``exe`` is the
interpreter and Debian's stop finds nothing.  The launcher's ``exe`` is the launcher
itself (``fork`` keeps it, so the ``-d`` daemon matches too) and ``comm`` is its file name.

``python -m gearmand_py.launcher --install /usr/sbin/gearmand`` compiles the C source
(:mod:`gearmand_py.launcher.source`) with the system C compiler against the running
interpreter's headers and libpython (shared if present, else the static archive), checks
that the result runs (``-V``), and renames it into place with mode 0755.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from typing import List, Optional

from .source import LAUNCHER_C, SOURCE_NAME

__all__ = ["BuildError", "BuildPlan", "plan_build", "build", "install", "LAUNCHER_C"]

LINK_MODES = ("auto", "shared", "static")


class BuildError(Exception):
    """A one-line, operator-facing reason the launcher cannot be built or installed."""


@dataclass
class BuildPlan:
    """Everything needed to compile the launcher for one Python installation."""

    cc: List[str]
    python: str
    include_dirs: List[str]
    link_mode: str                      # "shared" or "static"
    link_args: List[str] = field(default_factory=list)
    cflags: List[str] = field(default_factory=list)

    def command(self, source: str, output: str) -> List[str]:
        """The compiler command line (an argv list; no shell involved)."""
        return (self.cc + ["-O2", "-Wall"] + self.cflags
                + ["-I" + d for d in self.include_dirs]
                + ["-DGEARMAND_PY_PROGRAM=" + c_string(self.python),
                   "-o", output, source] + self.link_args)


def c_string(text: str) -> str:
    """``text`` as a C string literal (for -D; passed as one argv element, no shell)."""
    out = ['"']
    for ch in text.encode("utf-8", "surrogateescape"):
        if ch in (0x22, 0x5C):            # " and backslash
            out.append("\\" + chr(ch))
        elif 0x20 <= ch < 0x7F:
            out.append(chr(ch))
        else:
            out.append("\\%03o" % ch)
    out.append('"')
    return "".join(out)


def _var(name: str) -> str:
    value = sysconfig.get_config_var(name)
    return "" if value is None else str(value)


def _find_compiler(cc: Optional[str]) -> List[str]:
    words = shlex.split(cc or os.environ.get("CC") or "cc")
    if not words or shutil.which(words[0]) is None:
        name = words[0] if words else "cc"
        raise BuildError(f"no C compiler ({name}) found: install one "
                         "(Debian: apt-get install build-essential) or pass --cc")
    return words


def _include_dirs() -> List[str]:
    dirs: List[str] = []
    for d in (sysconfig.get_path("include"), sysconfig.get_path("platinclude"),
              _var("INCLUDEPY"), _var("CONFINCLUDEPY")):
        if d and d not in dirs and os.path.isdir(d):
            dirs.append(d)
    if not any(os.path.exists(os.path.join(d, "Python.h")) for d in dirs):
        ver = _var("VERSION") or "%d.%d" % sys.version_info[:2]
        where = sysconfig.get_path("include") or _var("INCLUDEPY")
        raise BuildError(f"Python headers not found (no {where}/Python.h): install them "
                         f"(Debian: apt-get install python3-dev, or python{ver}-dev "
                         "for that interpreter)")
    return dirs


def _lib_dirs() -> List[str]:
    dirs: List[str] = []
    libdir, multiarch = _var("LIBDIR"), _var("MULTIARCH")
    for d in (libdir, os.path.join(libdir, multiarch) if libdir and multiarch else "",
              _var("LIBPL")):
        if d and d not in dirs:
            dirs.append(d)
    return dirs


def _shared_library() -> Optional[str]:
    """Path of libpythonX.Y.so to link against (the dev symlink, else the soname file)."""
    names = ["libpython%s.so" % _var("LDVERSION")]
    for var in ("LDLIBRARY", "INSTSONAME"):
        name = _var(var)
        if ".so" in name and name not in names:
            names.append(name)
    for name in names:
        for d in _lib_dirs():
            path = os.path.join(d, name)
            if os.path.exists(path):
                return path
    return None


def _static_library() -> Optional[str]:
    name = _var("LIBRARY") or "libpython%s.a" % _var("LDVERSION")
    for d in _lib_dirs():
        path = os.path.join(d, name)
        if os.path.exists(path):
            return path
    return None


def plan_build(cc: Optional[str] = None, link: str = "auto") -> BuildPlan:
    """Work out how to compile the launcher for the running interpreter (no side effects)."""
    if link not in LINK_MODES:
        raise BuildError(f"--link must be one of {', '.join(LINK_MODES)}")
    python = sys.executable
    if not python or not os.path.isabs(python):
        raise BuildError("cannot tell which Python executable is running (sys.executable "
                         f"is {python!r}); run this with the interpreter's full path")
    compiler = _find_compiler(cc)
    includes = _include_dirs()
    syslibs = shlex.split(_var("LIBS")) + shlex.split(_var("SYSLIBS"))
    shared = _shared_library() if link in ("auto", "shared") else None
    static = _static_library() if link in ("auto", "static") and shared is None else None
    if shared is not None:
        libdir = os.path.dirname(os.path.realpath(shared))
        link_args = [shared, "-Wl,-rpath," + libdir] + syslibs
        mode = "shared"
    elif static is not None:
        # The interpreter lives in the launcher: export its symbols for extension
        # modules (LINKFORSHARED), add the libraries of built-in modules (MODLIBS), and
        # link a non-PIE executable in case the archive was not compiled with -fPIC.
        link_args = (["-no-pie", static] + shlex.split(_var("MODLIBS")) + syslibs
                     + shlex.split(_var("LINKFORSHARED")))
        mode = "static"
    else:
        ver = _var("LDVERSION") or "%d.%d" % sys.version_info[:2]
        raise BuildError(
            f"libpython{ver} not found in {' or '.join(_lib_dirs())}: install it (Debian: "
            f"apt-get install python3-dev / libpython{ver}-dev; pyenv: rebuild with "
            "PYTHON_CONFIGURE_OPTS=--enable-shared)")
    cflags = shlex.split(os.environ.get("CFLAGS", ""))
    link_args += shlex.split(os.environ.get("LDFLAGS", ""))
    return BuildPlan(cc=compiler, python=python, include_dirs=includes, link_mode=mode,
                     link_args=link_args, cflags=cflags)


def build(plan: BuildPlan, output: str) -> None:
    """Compile the launcher to ``output`` (a fresh path); BuildError with the reason."""
    with tempfile.TemporaryDirectory(prefix="gearmand-launcher-") as tmp:
        source = os.path.join(tmp, SOURCE_NAME)
        with open(source, "w") as f:
            f.write(LAUNCHER_C)
        cmd = plan.command(source, output)
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=300)
        except OSError as exc:
            raise BuildError(f"cannot run {cmd[0]}: {exc.strerror}") from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
            errors = [ln for ln in lines if "error" in ln] or lines
            reason = errors[0] if errors else f"exit status {proc.returncode}"
            if proc.stdout:
                sys.stderr.write(proc.stdout if proc.stdout.endswith("\n")
                                 else proc.stdout + "\n")
            raise BuildError(f"compiling the launcher failed: {reason.strip()}")


def smoke_test(path: str) -> str:
    """Run ``path -V``; return its version line, BuildError if it does not work."""
    env = {k: v for k, v in os.environ.items() if k != "GEARMAND_PORT"}
    try:
        proc = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=60,
                              env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"the built launcher does not run: {exc}") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise BuildError(f"the built launcher does not run ({path} -V): {reason}")
    return proc.stdout.strip().splitlines()[0]


def temp_file_in(directory: str, prefix: str, mode: int) -> str:
    """An empty temporary file in ``directory`` (made with ``mode`` if missing), for a
    build that is then moved into place with os.replace; BuildError when it cannot be."""
    try:
        os.makedirs(directory, mode=mode, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
    except OSError as exc:
        raise BuildError(f"cannot write in {directory}: {exc.strerror}") from None
    os.close(fd)
    return tmp


def install(target: str, plan: Optional[BuildPlan] = None, check: bool = True) -> str:
    """Build the launcher and atomically install it at ``target`` (mode 0755).

    The binary is compiled next to the target (same file system), checked with ``-V``
    and renamed over ``target``, so a running server keeps its old binary and the path is
    never half-written.  Returns the ``-V`` line (or "" when ``check`` is false).
    """
    plan = plan or plan_build()
    target = os.path.abspath(target)
    if os.path.isdir(target):
        raise BuildError(f"{target} is a directory; give the launcher's full path "
                         f"(e.g. {os.path.join(target, 'gearmand')})")
    directory = os.path.dirname(target)
    tmp = temp_file_in(directory, ".gearmand-launcher-", 0o755)
    try:
        build(plan, tmp)
        os.chmod(tmp, 0o755)
        version = smoke_test(tmp) if check else ""
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return version
