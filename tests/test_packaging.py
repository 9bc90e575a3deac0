"""Packaging and installation as an operator on Debian 12 does it (issue 11).

* ``python -m build`` makes the sdist, then the wheel from that sdist: the sdist carries
  docs/, conf/, man/, scripts/, tests/, tox.ini, pytest.ini and LICENSE; the wheel carries
  ``gearmand_py/py.typed``, the LICENSE, man pages and service files.
* The wheel installs into a fresh venv of Debian's own ``/usr/bin/python3`` and that
  ``gearmand`` answers ``-V`` and ECHO; so does the apt-only install of docs/operations.md
  (Debian's python3-click and python3-daemon, nothing from PyPI).
* The README's install line runs verbatim on Debian's python3, with only its two prefixes
  (``/opt/gearmand-py``, ``/usr/local/bin``) moved into a temporary directory.
* The systemd unit (and its Type=forking drop-in) passes ``systemd-analyze verify`` with
  ExecStart= at the path that install produced, and ``systemd-analyze security`` rates it.

Network access to the package index is needed (pip fetches click, python-daemon and the
build backend), as for ``scripts/run-tests.sh`` itself.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from typing import Dict, Iterator, List, Tuple

import pytest

from gearproto import Closed, Conn, wait_for
from support import IN_CI, REPO, free_low_port, require

CONF = os.path.join(REPO, "conf")
DEBIAN_PYTHON = "/usr/bin/python3"
README_PREFIX = "/opt/gearmand-py"
README_BIN = "/usr/local/bin"
UNIT = "gearman-job-server.service"
FORKING_DROP_IN = "gearman-job-server-forking.conf"
#: systemd-analyze security's overall exposure (0-10) the shipped unit must stay under.
MAX_EXPOSURE = 2.0
PIP_TIMEOUT = 600
#: files and directories the sdist must carry (relative to its top directory)
SDIST_REQUIRED = ["LICENSE", "README.md", "pyproject.toml", "setup.cfg", "setup.py",
                  "tox.ini", "pytest.ini", "scripts/run-tests.sh", ".ci/run",
                  "gearmand_py/py.typed", "tests/test_packaging.py"]
SDIST_TREES = ["docs", "conf", "man", "scripts"]
#: what the wheel must carry besides the modules
WHEEL_REQUIRED = ["gearmand_py/py.typed", "gearmand_py/cli.py",
                  "gearmand_py-{v}.dist-info/licenses/LICENSE",
                  "gearmand_py-{v}.data/data/share/man/man8/gearmand.8",
                  "gearmand_py-{v}.data/data/share/gearmand-py/conf/" + UNIT,
                  "gearmand_py-{v}.data/data/share/gearmand-py/conf/gearman-job-server.sysusers"]
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                     "__pycache__", ".mypy_cache", ".ruff_cache",
                                     ".pytest_cache", ".tox")


def _version() -> str:
    from gearmand_py import __version__
    return __version__


def _require_module(module: str, why: str) -> None:
    try:
        __import__(module)
    except ImportError:
        if IN_CI:
            pytest.fail(f"python module {module} missing in CI: {why}")
        pytest.skip(f"{module} not installed ({why}); CI installs it")


def _require_debian_venv() -> None:
    require(DEBIAN_PYTHON, "Debian's own python3")
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import ensurepip, venv"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        if IN_CI:
            pytest.fail("Debian's python3-venv is missing in CI (scripts/run-tests.sh)")
        pytest.skip("python3-venv not installed; CI installs it")


def _clean_env(path: str) -> Dict[str, str]:
    """An environment with no trace of this checkout or of pyenv's Python."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PYENV", "VIRTUAL_ENV", "GEARMAND_"))}
    env["PATH"] = path
    return env


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A copy of the checkout without build products, so builds never touch the repo."""
    dst = str(tmp_path_factory.mktemp("src") / "gearmand-py")
    shutil.copytree(REPO, dst, ignore=COPY_IGNORE, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def dists(source: str, tmp_path_factory: pytest.TempPathFactory) -> Tuple[str, str]:
    """(sdist, wheel): ``python -m build`` builds the sdist, then the wheel from it."""
    _require_module("build", "pip install -e '.[test]'")
    out = str(tmp_path_factory.mktemp("dist"))
    run = subprocess.run([sys.executable, "-m", "build", "--outdir", out, source],
                         capture_output=True, text=True, timeout=PIP_TIMEOUT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    names = sorted(os.listdir(out))
    sdists = [n for n in names if n.endswith(".tar.gz")]
    wheels = [n for n in names if n.endswith(".whl")]
    assert len(sdists) == 1 and len(wheels) == 1, names
    return os.path.join(out, sdists[0]), os.path.join(out, wheels[0])


def _git_files(tree: str) -> List[str]:
    if not os.path.isdir(os.path.join(REPO, ".git")) and not os.path.isfile(
            os.path.join(REPO, ".git")):
        return []
    run = subprocess.run(["git", "-C", REPO, "ls-files", "--", tree], capture_output=True,
                         text=True, timeout=30)
    return run.stdout.split() if run.returncode == 0 else []


def test_sdist_contents(dists: Tuple[str, str]) -> None:
    sdist = dists[0]
    top = f"gearmand_py-{_version()}/"
    with tarfile.open(sdist) as tar:
        names = {n[len(top):] for n in tar.getnames() if n.startswith(top)}
    missing = [n for n in SDIST_REQUIRED if n not in names]
    for tree in SDIST_TREES:
        tracked = _git_files(tree) or [tree + "/"]
        for path in tracked:
            if path.endswith("/"):
                if not any(n.startswith(path) for n in names):
                    missing.append(path)
            elif path not in names:
                missing.append(path)
    assert not missing, f"not in {os.path.basename(sdist)}: {missing}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_contents(dists: Tuple[str, str]) -> None:
    with zipfile.ZipFile(dists[1]) as whl:
        names = set(whl.namelist())
    required = [n.format(v=_version()) for n in WHEEL_REQUIRED]
    assert not [n for n in required if n not in names], sorted(names)
    assert not [n for n in names if n.startswith("tests/")]


def _answers_echo(port: int) -> bool:
    try:
        with Conn(port, 3) as c:
            c.send("ECHO_REQ", b"installed")
            return c.expect("ECHO_RES").args == [b"installed"]
    except (OSError, AssertionError, Closed):
        return False


def _start_and_echo(argv: List[str], env: Dict[str, str], tmp: str,
                    timeout: float = 30.0) -> None:
    port = free_low_port()
    proc = subprocess.Popen(argv + ["-p", str(port), "-L", "127.0.0.1", "-l", "stderr",
                                    "-P", os.path.join(tmp, "gearmand.pid")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: _answers_echo(port) or proc.poll() is not None, timeout)
        assert proc.poll() is None, proc.communicate(timeout=5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=15)


def test_wheel_installs_and_runs_in_a_debian_python_venv(dists: Tuple[str, str],
                                                         tmp_path: object) -> None:
    _require_debian_venv()
    venv = os.path.join(str(tmp_path), "venv")
    env = _clean_env("/usr/bin:/bin")
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", venv], check=True, timeout=120, env=env)
    pip = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", dists[1]],
                         capture_output=True, text=True, timeout=PIP_TIMEOUT, env=env)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    gearmand = os.path.join(venv, "bin", "gearmand")
    where = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                            "import gearmand_py; print(gearmand_py.__file__)"],
                           capture_output=True, text=True, timeout=30, env=env, cwd="/")
    assert where.stdout.startswith(venv + "/"), where      # the wheel's copy, not the repo's
    version = subprocess.run([gearmand, "-V"], capture_output=True, text=True, timeout=30,
                             env=env, cwd="/")
    assert version.returncode == 0, version.stderr
    assert re.match(r"\ngearmand \d+\.\d+\.\d+ - ", version.stdout), version.stdout
    assert f"(gearmand-py {_version()})" in version.stdout
    typed = os.path.join(os.path.dirname(where.stdout.strip()), "py.typed")
    assert os.path.exists(typed)
    _start_and_echo([gearmand], env, str(tmp_path))


def test_apt_only_install_uses_debian_packages(source: str, tmp_path: object) -> None:
    """docs/operations.md's apt-only variant: Debian's python3-click, python3-daemon,
    python3-h11, python3-setuptools and python3-wheel, a --system-site-packages venv,
    nothing from PyPI (--no-index)."""
    _require_debian_venv()
    env = _clean_env("/usr/bin:/bin")
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import click, daemon, h11, setuptools, wheel"],
                           capture_output=True, text=True, timeout=30, env=env, cwd="/")
    if probe.returncode != 0:
        if IN_CI:
            pytest.fail("python3-click/-daemon/-h11/-setuptools/-wheel missing in CI: "
                        + probe.stderr)
        pytest.skip("Debian's python3-click/-daemon/-h11/-setuptools/-wheel not installed")
    venv = os.path.join(str(tmp_path), "venv")
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", "--system-site-packages", venv], check=True,
                   timeout=120, env=env)
    pip = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "--no-index",
                          "--no-deps", "--no-build-isolation", source], capture_output=True,
                         text=True, timeout=PIP_TIMEOUT, env=env, cwd=str(tmp_path))
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    where = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                            "import click, daemon, h11; "
                            "print(click.__file__, daemon.__file__, h11.__file__)"],
                           capture_output=True, text=True, timeout=30, env=env, cwd="/")
    assert where.stdout.count("/usr/lib/python3/dist-packages/") == 3, where
    _start_and_echo([os.path.join(venv, "bin", "gearmand")], env, str(tmp_path))


def readme_install_line() -> str:
    """The README's first command: the first indented code line of the file."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("    ") and line.strip():
                return line.strip()
    raise AssertionError("README.md has no indented command")


@pytest.fixture(scope="module")
def readme_install(source: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run the README's install line on Debian's python3 (prefixes in a temporary
    directory) until its final ``gearmand`` answers ECHO; yields the bin directory that
    stands for /usr/local/bin."""
    _require_debian_venv()
    line = readme_install_line()
    assert line.startswith("python3 -m venv ") and line.endswith("&& gearmand"), line
    assert README_PREFIX in line and README_BIN + "/gearmand" in line, line
    root = str(tmp_path_factory.mktemp("readme"))
    prefix, bindir = os.path.join(root, "opt"), os.path.join(root, "bin")
    os.mkdir(bindir)
    command = line.replace(README_PREFIX, prefix).replace(README_BIN, bindir)
    port = free_low_port()
    env = _clean_env(f"{bindir}:/usr/bin:/bin")           # python3 is Debian's own
    env["GEARMAND_PORT"] = str(port)                       # the bare `gearmand`'s port
    proc = subprocess.Popen(["sh", "-c", command], cwd=source, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        ok = wait_for(lambda: _answers_echo(port) or proc.poll() is not None, PIP_TIMEOUT,
                      interval=0.5)
        if proc.poll() is not None or not ok:
            out = proc.communicate(timeout=10)[0] if proc.poll() is not None else b""
            raise AssertionError(f"README line did not start a server: {command}\n"
                                 + out.decode(errors="replace")[-4000:])
        assert _answers_echo(port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)
        if proc.stdout:
            proc.stdout.close()
    yield bindir


def test_readme_install_line_runs_on_debian_python(readme_install: str) -> None:
    link = os.path.join(readme_install, "gearmand")
    assert os.path.islink(link) and os.access(link, os.X_OK)
    assert "/opt/bin/gearmand" in os.readlink(link)
    version = subprocess.run([link, "-V"], capture_output=True, text=True, timeout=30,
                             env=_clean_env("/usr/bin:/bin"), cwd="/")
    assert version.returncode == 0 and "gearmand-py" in version.stdout, version


def _unit_dir(tmp: str, bindir: str) -> str:
    """The unit and its forking drop-in, with /usr/local/bin moved to ``bindir``."""
    units = os.path.join(tmp, "units")
    os.makedirs(os.path.join(units, UNIT + ".d"))
    for src, dst in ((UNIT, UNIT), (FORKING_DROP_IN, os.path.join(UNIT + ".d", "forking.conf"))):
        with open(os.path.join(CONF, src), encoding="utf-8") as f:
            text = f.read()
        assert README_BIN + "/gearmand " in text, src
        with open(os.path.join(units, dst), "w", encoding="utf-8") as f:
            f.write(text.replace(README_BIN + "/gearmand", bindir + "/gearmand"))
    return units


def _analyze(units: str, *args: str) -> subprocess.CompletedProcess:
    # a trailing ':' keeps systemd's own search path after ours
    env = dict(os.environ, SYSTEMD_UNIT_PATH=units + ":")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=units)


def test_systemd_unit_verifies_against_the_readme_install(readme_install: str,
                                                          tmp_path: object) -> None:
    require("systemd-analyze", "apt-get install systemd")
    units = _unit_dir(str(tmp_path), readme_install)
    check = _analyze(units, "verify", "--man=no", UNIT)
    assert (check.returncode, check.stdout, check.stderr) == (0, "", ""), check
    # the same check fails when ExecStart= names nothing executable (it can fail)
    broken = _unit_dir(os.path.join(str(tmp_path), "broken"),
                       os.path.join(str(tmp_path), "nowhere"))
    check = _analyze(broken, "verify", "--man=no", UNIT)
    assert check.returncode != 0 and "is not executable" in check.stderr, check


def test_systemd_unit_security_exposure(readme_install: str, tmp_path: object) -> None:
    require("systemd-analyze", "apt-get install systemd")
    units = _unit_dir(str(tmp_path), readme_install)
    report = _analyze(units, "security", "--offline=true", "--no-pager", UNIT)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report.stdout)
    assert m, report.stdout + report.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, report.stdout


def test_unit_and_drop_in_promises() -> None:
    """The settings the docs rely on: notify + foreground, on-failure restarts, the sandbox
    keeps the pid/log/queue directories writable, forking drop-in for --daemon."""
    def fields(name: str) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        with open(os.path.join(CONF, name), encoding="utf-8") as f:
            for line in f:
                if "=" in line and not line.startswith(("#", "[")):
                    key, value = line.rstrip("\n").split("=", 1)
                    out.setdefault(key, []).append(value)
        return out
    unit = fields(UNIT)
    assert unit["Type"] == ["notify"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["User"] == ["gearman"]
    assert "--daemon" not in unit["ExecStart"][0] and "-d" not in unit["ExecStart"][0].split()
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["ProtectSystem"] == ["strict"] and unit["NoNewPrivileges"] == ["yes"]
    assert unit["RuntimeDirectory"] == ["gearman"]                 # /run/gearman (pid file)
    assert unit["LogsDirectory"] == ["gearman-job-server"]         # Debian's log directory
    assert unit["StateDirectory"] == ["gearman"]                   # /var/lib/gearman queues
    drop_in = fields(FORKING_DROP_IN)
    assert drop_in["Type"] == ["forking"]
    assert drop_in["ExecStart"][0] == ""                            # resets the notify one
    assert "$PARAMS" in drop_in["ExecStart"][1]
    assert drop_in["PIDFile"] == ["/run/gearman/gearmand.pid"]
    assert "--daemon" in drop_in["Environment"][0]


def test_sysusers_file_creates_the_gearman_user(tmp_path: object) -> None:
    require("systemd-sysusers", "apt-get install systemd")
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "etc"))
    run = subprocess.run(["systemd-sysusers", f"--root={root}",
                          os.path.join(CONF, "gearman-job-server.sysusers")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    with open(os.path.join(root, "etc", "passwd")) as f:
        users = {line.split(":")[0]: line.strip().split(":") for line in f}
    with open(os.path.join(root, "etc", "group")) as f:
        groups = {line.split(":")[0]: line.strip().split(":") for line in f}
    gearman = users["gearman"]
    assert int(gearman[2]) < 1000 and gearman[3] == groups["gearman"][2]   # system user
    assert gearman[5] == "/nonexistent" and gearman[6].endswith("nologin")

