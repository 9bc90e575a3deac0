"""Command line, config file, --check-args, -h, -V (issue 4), against C gearmand where the
behaviour is meant to be identical.  Every case runs the real program in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import pytest


from support import C_GEARMAND, REPO, py_gearmand_cmd, require, server_env

from gearmand_py import COMPAT_VERSION
from gearmand_py.settings import (
    OPTIONS, SWITCH, Option, build_settings, parse,
)


def run(args: Sequence[str], impl: str = "py", env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    base = py_gearmand_cmd() if impl == "py" else [C_GEARMAND]
    return subprocess.run(base + list(args), capture_output=True, text=True, timeout=20,
                          env=server_env(**(env or {})), cwd=cwd, stdin=subprocess.DEVNULL)


def message(proc: subprocess.CompletedProcess) -> str:
    """stderr without the ``<argv0>: `` prefix (which names each binary differently)."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    prog, sep, text = lines[0].partition(": ")
    assert sep and "gearmand" in prog, lines[0]
    return text


def c_available() -> None:
    require(C_GEARMAND, "differential CLI tests need Debian's gearman-job-server")


# (arguments after --check-args, gearmand 1.1.20's exact message)
ERRORS: List[Tuple[List[str], str]] = [
    (["--bogus"], "unrecognised option '--bogus'"),
    (["-x"], "unrecognised option '-x'"),
    (["foo"], "unrecognised option 'foo'"),
    (["--log"], "unrecognised option '--log'"),
    (["--verb=INFO"], "unrecognised option '--verb=INFO'"),
    (["-"], "unrecognised option '-'"),
    (["--=x"], "unrecognised option '--=x'"),
    (["--", "--daemon"], "unrecognised option '--daemon'"),
    (["-d1"], "unrecognised option '-d1'"),
    (["-dx"], "unrecognised option '-dx'"),
    (["-p", "1", "-p", "2"], "option '--port' cannot be specified more than once"),
    (["-p1", "--port=2"], "option '--port' cannot be specified more than once"),
    (["-dd"], "option '--daemon' cannot be specified more than once"),
    (["-d", "-d"], "option '--daemon' cannot be specified more than once"),
    (["--syslog", "--syslog"], "option '--syslog' cannot be specified more than once"),
    (["--verbose", "INFO", "--verbose", "INFO"],
     "option '--verbose' cannot be specified more than once"),
    (["--listen", "a", "--listen", "b"], "option '--listen' cannot be specified more than once"),
    (["--check-args"], "option '--check-args' cannot be specified more than once"),
    (["-t", "abc"], "the argument ('abc') for option '--threads' is invalid"),
    (["-tabc"], "the argument ('abc') for option '--threads' is invalid"),
    (["--threads=abc"], "the argument ('abc') for option '--threads' is invalid"),
    (["-t", "1.5"], "the argument ('1.5') for option '--threads' is invalid"),
    (["-t", "0x10"], "the argument ('0x10') for option '--threads' is invalid"),
    (["-t", " 3"], "the argument (' 3') for option '--threads' is invalid"),
    (["-f", "abc"], "the argument ('abc') for option '--file-descriptors' is invalid"),
    (["-b", "99999999999"], "the argument ('99999999999') for option '--backlog' is invalid"),
    (["-b", "2147483648"], "the argument ('2147483648') for option '--backlog' is invalid"),
    (["-j", "4294967296"], "the argument ('4294967296') for option '--job-retries' is invalid"),
    (["--keepalive-idle=abc"], "the argument ('abc') for option '--keepalive-idle' is invalid"),
    (["--keepalive-count", "2147483648"],
     "the argument ('2147483648') for option '--keepalive-count' is invalid"),
    (["--hashtable-buckets=abc"],
     "the argument ('abc') for option '--hashtable-buckets' is invalid"),
    (["--mysql-port=abc"], "the argument ('abc') for option '--mysql-port' is invalid"),
    (["--mysql-port=70000"], "the argument ('70000') for option '--mysql-port' is invalid"),
    (["--config-file"], "the required argument for option '--config-file' is missing"),
    (["-p"], "the required argument for option '--port' is missing"),
    (["-t"], "the required argument for option '--threads' is missing"),
    (["-u"], "the required argument for option '--user' is missing"),
    (["--ssl-key"], "the required argument for option '--ssl-key' is missing"),
    (["--daemon=1"], "option '--daemon' does not take any arguments"),
    (["--exceptions=yes"], "option '--exceptions' does not take any arguments"),
    (["--help=1"], "option '--help' does not take any arguments"),
    (["--port="], "the argument for option '--port' should follow immediately after the "
                  "equal sign"),
    (["--verbose=bad"], "Invalid value for --verbose supplied"),
    (["--verbose=info"], "Invalid value for --verbose supplied"),
    (["--verbose"], "the required argument for option '--verbose' is missing"),
    (["--hashtable-buckets=0"], "hashtable-buckets has to be greater than 0"),
    (["--config-file=/nonexistent/gearmand.conf"], "Could not open configuration file."),
]

# accepted by both (exit 0, nothing printed)
ACCEPTED: List[List[str]] = [
    ["-b", "-5"], ["-j", "-1"], ["-j", "256"], ["-Rd"], ["-t", "+3"], ["-t", "010"],
    ["-h"], ["-V"], ["--ssl"], ["-Rp5"], ["--keepalive-idle=-5"], ["--mysql-port=-1"],
    ["--hashtable-buckets=-1"], ["--port", "4730", "--listen=127.0.0.1"],
    ["--verbose=DEBUG"], ["-w", "300"],
]


@pytest.mark.parametrize("args,expected", ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_error_messages_match_gearmand(args: List[str], expected: str) -> None:
    ours = run(["--check-args"] + args)
    assert ours.returncode == 1
    assert ours.stdout == ""
    assert message(ours) == expected
    assert "Traceback" not in ours.stderr


@pytest.mark.parametrize("args,expected", ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_error_messages_differential(args: List[str], expected: str) -> None:
    c_available()
    theirs = run(["--check-args"] + args, impl="c")
    assert theirs.returncode == 1
    assert message(theirs) == expected


@pytest.mark.parametrize("args", ACCEPTED, ids=[" ".join(a) for a in ACCEPTED])
def test_accepted_like_gearmand(args: List[str]) -> None:
    ours = run(["--check-args"] + args)
    assert (ours.returncode, ours.stdout, ours.stderr) == (0, "", "")
    c_available()
    theirs = run(["--check-args"] + args, impl="c")
    assert (theirs.returncode, theirs.stdout, theirs.stderr) == (0, "", "")


def test_argv0_prefix_is_the_invoked_path() -> None:
    proc = run(["--bogus"])
    prog = proc.stderr.split(": ", 1)[0]
    cmd = py_gearmand_cmd()
    assert prog == ("gearmand" if cmd[-1] == "gearmand_py" else cmd[0])


#: -q name and options -> the driver module a missing one is shadowed as, and the message
DRIVERS: List[Tuple[List[str], str, str]] = [
    (["-q", "postgres"], "psycopg2",
     "-q postgres needs the Python package psycopg2 (pip install 'gearmand-py[postgres]', or "
     "Debian's python3-psycopg2)"),
    (["-q", "LibPQ"], "psycopg2",
     "-q libpq needs the Python package psycopg2 (pip install 'gearmand-py[postgres]', or "
     "Debian's python3-psycopg2)"),
    (["-q", "mysql"], "pymysql",
     "-q mysql needs the Python package PyMySQL (pip install 'gearmand-py[mysql]', or "
     "Debian's python3-pymysql)"),
    (["-q", "libdrizzle"], "pymysql",
     "-q libdrizzle needs the Python package PyMySQL (pip install 'gearmand-py[mysql]', or "
     "Debian's python3-pymysql)"),
    (["-q", "libmemcached", "--libmemcached-servers=127.0.0.1"], "pymemcache",
     "-q libmemcached needs the Python package pymemcache (pip install "
     "'gearmand-py[memcached]', or Debian's python3-pymemcache)"),
    (["-q", "redis"], "redis",
     "-q redis needs the Python package redis (pip install 'gearmand-py[redis]', or Debian's "
     "python3-redis)"),
]


def shadow_env(tmp_path, module: str) -> Dict[str, str]:  # type: ignore[no-untyped-def]
    """PYTHONPATH with a package named ``module`` first that fails to import, as a missing
    (or broken) driver does."""
    package = tmp_path / module
    package.mkdir()
    (package / "__init__.py").write_text(f"raise ImportError('No module named {module}')\n")
    rest = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(tmp_path), REPO, rest) if p)}


@pytest.mark.parametrize("check_args", [True, False], ids=["check-args", "start"])
@pytest.mark.parametrize("args,module,expected", DRIVERS,
                         ids=[" ".join(a[:2]) for a, _, _ in DRIVERS])
def test_missing_driver_is_one_line(tmp_path, args: List[str], module: str,  # type: ignore
                                    expected: str, check_args: bool) -> None:
    """Also without --check-args: the server stops before binding, with no traceback."""
    first = ["--check-args"] if check_args else ["-p", "0", "-L", "127.0.0.1", "-l", "none"]
    proc = run(first + args + ["--config-file=/dev/null"], env=shadow_env(tmp_path, module))
    assert (proc.returncode, proc.stdout) == (1, "")
    assert message(proc) == expected


def test_missing_queue_option_stops_the_server_too() -> None:
    for args, expected in [(["-q", "libtokyocabinet"], "No --libtokyocabinet-file given"),
                           (["-q", "libmemcached"], "No --libmemcached-servers given")]:
        proc = run(["-p", "0", "-L", "127.0.0.1", "-l", "none", "--config-file=/dev/null"]
                   + args)
        assert (proc.returncode, proc.stdout) == (1, ""), args
        assert message(proc) == expected


def test_missing_tokyocabinet_library_message() -> None:
    """An installed C library cannot be hidden from ctypes, so the lookup that validate()
    runs is given a name that cannot load."""
    from gearmand_py.errors import ConfigError
    from gearmand_py.queues import tokyocabinet
    with pytest.raises(ConfigError) as info:
        tokyocabinet.open_library(["libgearmand-py-no-such-library.so.9"])
    assert str(info.value) == ("-q libtokyocabinet needs the C library libtokyocabinet "
                               "(Debian's libtokyocabinet9)")


def test_help_and_check_args_import_no_driver() -> None:
    """The option table gathers every queue module's rows without loading any driver."""
    code = ("import sys; from gearmand_py import cli, settings; cli.help_text(); "
            "settings.build_settings(settings.parse(['--config-file=/dev/null']), env={}); "
            "print(sorted(m for m in ('psycopg2', 'pymysql', 'pymemcache', 'redis') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=20, env=server_env())
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "[]\n", "")


def test_no_option_starts_a_server_before_validation() -> None:
    """A start-up error after parsing (bad queue name) exits 1 with one line, nothing bound."""
    proc = run(["-p", "0", "-L", "127.0.0.1", "-l", "none", "-q", "nosuchqueue"])
    assert proc.returncode == 1
    assert message(proc) == "Error while initializing the queue : nosuchqueue"


# ---- deliberate extensions (documented differences from the 1.1.20 binary) -------------

EXTENSION_ERRORS: List[Tuple[List[str], str]] = [
    (["-q", "foo"], "Error while initializing the queue : foo"),
    (["-r", "foo"], "Unknown protocol module : foo"),
    (["-r", "HTTP"], "Unknown protocol module : HTTP"),
    (["-q", "libsqlite3"], "missing required --libsqlite3-db=<dbfile> argument"),
    (["-q", "libtokyocabinet"], "No --libtokyocabinet-file given"),
    (["-q", "libtokyocabinet", "--libtokyocabinet-file", ""], "No --libtokyocabinet-file given"),
    (["-q", "libmemcached"], "No --libmemcached-servers given"),
    (["-q", "libmemcached", "--libmemcached-servers=,"], "No --libmemcached-servers given"),
    (["-q", "libmemcached", "--libmemcached-servers=h:x"],
     "invalid --libmemcached-servers entry: h:x"),
    (["-vv", "--verbose", "INFO"], "option '--verbose' cannot be specified more than once"),
    (["--verbose", "INFO", "-v"], "option '--verbose' cannot be specified more than once"),
    (["-v", "bogus"], "unrecognised option 'bogus'"),
    (["-vinfo"], "Invalid value for --verbose supplied"),
    (["-t", "-1"], "the argument ('-1') for option '--threads' is invalid"),
    (["-t", "1025"], "the argument ('1025') for option '--threads' is invalid"),
    (["-u", "no-such-user-here"], "Could not find user : no-such-user-here"),
    (["-p", "no-such-service-here"],
     "the argument ('no-such-service-here') for option '--port' is invalid"),
    (["-p", "70000"], "the argument ('70000') for option '--port' is invalid"),
    (["--max-packet-size=0"], "the argument ('0') for option '--max-packet-size' is invalid"),
    (["--job-handle-prefix=" + "x" * 64],
     "Could not create gearmand library instance. (--job-handle-prefix is longer than 63 "
     "bytes)"),
    (["@/nonexistent/gearmand.conf"], "Could not open configuration file."),
]


@pytest.mark.parametrize("args,expected", EXTENSION_ERRORS,
                         ids=[" ".join(a)[:40] for a, _ in EXTENSION_ERRORS])
def test_extension_errors(args: List[str], expected: str) -> None:
    proc = run(["--check-args"] + args)
    assert proc.returncode == 1
    assert message(proc) == expected


@pytest.mark.parametrize("args", [
    ["-v"], ["-vv"], ["-vvv"], ["-v", "-v"], ["-v", "INFO"], ["-vINFO"], ["-dv"],
    ["-q", "LIBPQ"], ["-q", "Postgres"], ["-q", "libdrizzle"], ["-q", "mysql"], ["-q", "redis"],
    ["-q", "libtokyocabinet", "--libtokyocabinet-file=/tmp/x.tch"],
    ["-q", "libmemcached", "--libmemcached-servers=127.0.0.1:11211, localhost"],
    ["-q", "libsqlite3", "--libsqlite3-db=/tmp/x.db"], ["-r", "http"], ["-t", "0"],
    ["--libdrizzle-mysql", "--libdrizzle-host=h"], ["--libtokyocabinet-optimize"],
    ["-u", "nobody"], ["-p", "http"], ["-p", ""],
])
def test_extensions_accepted(args: List[str]) -> None:
    proc = run(["--check-args"] + args)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


@pytest.mark.parametrize("args,level", [
    ([], "ERROR"), (["-v"], "WARNING"), (["-vv"], "NOTICE"), (["-vvv"], "INFO"),
    (["-v", "-v", "-v", "-v"], "DEBUG"), (["-vvvvvvvvvv"], "DEBUG"), (["-v", "FATAL"], "FATAL"),
    (["-vDEBUG"], "DEBUG"), (["--verbose=NOTICE"], "NOTICE"),
])
def test_bare_v_raises_one_level_per_v(args: List[str], level: str) -> None:
    settings = build_settings(parse(args + ["--config-file=/dev/null"]), env={})
    assert settings.verbose == level


# ---- --check-args for every option ------------------------------------------------------

SAMPLE_VALUES = {
    "port": "4731", "http-port": "8081", "queue-type": "builtin", "protocol": "http",
    "verbose": "INFO", "user": "nobody", "config-file": "/dev/null", "log-file": "none",
    "listen": "127.0.0.1", "pid-file": "/tmp/gearmand-test.pid", "threads": "2",
    "hashtable-buckets": "7", "max-packet-size": "1024", "file-descriptors": "1024",
    "compat": "2.0", "priority-scope": "global", "cpu-affinity": "none",
    "log-format": "json",
}
#: in gearmand-py only (Debian's gearmand lacks these modules or this extension)
NOT_IN_C = {o.name for o in OPTIONS if o.extension or o.section in ("libdrizzle",
                                                                    "libtokyocabinet")}


def option_args(opt: Option, long: bool) -> List[str]:
    flag = f"--{opt.name}" if long or not opt.short else f"-{opt.short}"
    if opt.kind == SWITCH:
        return [flag]
    value = SAMPLE_VALUES.get(opt.name, "7" if opt.kind != "str" else "x")
    return [f"{flag}={value}"] if long else [flag, value]


CHECKABLE = [o for o in OPTIONS if o.name != "check-args"]


@pytest.mark.parametrize("opt", CHECKABLE, ids=[o.name for o in CHECKABLE])
def test_check_args_accepts_every_option(opt: Option) -> None:
    forms = [option_args(opt, True)] + ([option_args(opt, False)] if opt.short else [])
    for args in forms:
        proc = run(["--check-args"] + args)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), args
    if opt.name in NOT_IN_C:
        return
    c_available()
    for args in forms:
        if args[0] == "-v":
            continue   # gearmand 1.1.20 has no -v (-v LEVEL is our extension)
        proc = run(["--check-args"] + args, impl="c")
        assert proc.returncode == 0, (args, proc.stderr)


def test_check_args_prints_nothing_even_with_help_and_version() -> None:
    proc = run(["--check-args", "--help", "-V"])
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


# ---- -h and -V ----------------------------------------------------------------------------

def test_help_lists_every_option_in_gearmand_sections() -> None:
    proc = run(["-h"])
    assert proc.returncode == 0 and proc.stderr == ""
    out = proc.stdout
    for opt in OPTIONS:
        spec = f"-{opt.short} [ --{opt.name} ]" if opt.short else f"--{opt.name}"
        assert f"  {spec}" in out, opt.name
    positions = [out.index(f"\n{s}:\n") for s in
                 ("General options", "HTTP", "Gear", "builtin", "libmemcached", "libsqlite3",
                  "Postgres", "redis", "MySQL")]
    assert positions == sorted(positions)
    assert "-b [ --backlog ] arg (=32)" in out
    assert "-t [ --threads ] arg (=4)" in out
    assert "--config-file arg (=/etc/gearmand.conf)" in out
    assert all(len(line) <= 80 for line in out.splitlines())


def test_help_sections_match_gearmand() -> None:
    """Every option C gearmand's --help shows is in ours, in the same section."""
    c_available()
    theirs = run(["--help"], impl="c").stdout
    ours = run(["--help"]).stdout

    def sections(text: str) -> Dict[str, str]:
        found: Dict[str, str] = {}
        section = ""
        for line in text.splitlines():
            if line.endswith(":") and not line.startswith(" "):
                section = line[:-1]
            elif line.startswith("  -"):
                spec = line.split("  ", 2)[1] if line.startswith("  --") else line[2:]
                long = [w for w in spec.replace("[", " ").split() if w.startswith("--")][0]
                found[long] = section
        return found

    c_sections = sections(theirs)
    our_sections = sections(ours)
    assert c_sections
    for long, section in c_sections.items():
        assert our_sections.get(long) == section, long


def test_version_line_format() -> None:
    proc = run(["-V"])
    assert proc.returncode == 0
    # tools parse "gearmand <version> - ..." on the second line; bugs go to this project
    assert proc.stdout.startswith(
        f"\ngearmand {COMPAT_VERSION} - report bugs to the gearmand-py maintainers\n")
    assert "github.com/gearman" not in proc.stdout
    c_available()
    theirs = run(["-V"], impl="c").stdout
    assert theirs.startswith(f"\ngearmand {COMPAT_VERSION}")
    version_re = re.compile(r"^gearmand (\d+\.\d+\.\d+)[^ ]* - ")
    assert version_re.match(theirs.splitlines()[1]).group(1) == \
        version_re.match(proc.stdout.splitlines()[1]).group(1)  # type: ignore[union-attr]


# ---- config file and @file -------------------------------------------------------------------

def write(tmp_path, text: str) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / "gearmand.conf"
    path.write_bytes(text.encode())
    return str(path)


CONFIG_CASES: List[Tuple[str, List[str], int, Optional[str]]] = [
    ("--port 1 --port 2", [], 1, "option '--port' cannot be specified more than once"),
    ("--bogus", [], 1, "unrecognised option '--bogus'"),
    ("--check-args", ["-h"], 1, "unrecognised option '--check-args'"),
    ("foo --threads=abc", [], 1, "the argument ('abc') for option '--threads' is invalid"),
    ("# comment\n--verbose=bad", [], 1, "Invalid value for --verbose supplied"),
    ("--verbose=INFO", ["--verbose=bad"], 1, "Invalid value for --verbose supplied"),
    ("--verbose=bad", ["--verbose=INFO"], 0, None),
    ("--threads", [], 1, "the required argument for option '--threads' is missing"),
    ("--daemon=1", [], 1, "option '--daemon' does not take any arguments"),
    ("-d1", [], 1, "unrecognised option '-d1'"),
    ("--config-file=/nonexistent", [], 0, None),
    ("-p 5 -d", ["-d"], 0, None),
    ("# a comment line\r\n--port 4731\r\n--threads 2\r\n", [], 0, None),
    ("", [], 0, None),
]


@pytest.mark.parametrize("text,args,rc,expected", CONFIG_CASES,
                         ids=[repr(c[0])[:30] for c in CONFIG_CASES])
def test_config_file_like_gearmand(tmp_path, text, args, rc, expected) -> None:  # type: ignore
    path = write(tmp_path, text)
    impls = ["py"]
    if os.path.exists(C_GEARMAND):
        impls.append("c")
    for impl in impls:
        cmd = ([] if "-h" in args else ["--check-args"]) + [f"--config-file={path}"] + args
        if "-h" in args:
            cmd = [f"--config-file={path}"] + args
        proc = run(cmd, impl=impl)
        assert proc.returncode == rc, (impl, proc.stderr)
        if expected is not None:
            assert message(proc) == expected, impl


def test_command_line_wins_over_config_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, "--threads=7 --verbose=INFO\n-j 3 --listen=127.0.0.1 -R\n")
    settings = build_settings(parse([f"--config-file={path}", "-t", "2", "--listen", "::1"]),
                              env={})
    assert (settings.threads, settings.verbose, settings.job_retries) == (2, "INFO", 3)
    assert settings.listen == ("::1",) and settings.round_robin


def test_at_file_is_a_config_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, "--threads=7 --job-retries=3")
    settings = build_settings(parse([f"@{path}", "-j", "5"]), env={})
    assert (settings.threads, settings.job_retries) == (7, 5)
    proc = run(["--check-args", f"@{path}"])
    assert (proc.returncode, proc.stderr) == (0, "")
    bad = write(tmp_path, "--threads=abc")
    proc = run(["--check-args", f"@{bad}"])
    assert message(proc) == "the argument ('abc') for option '--threads' is invalid"
    proc = run(["--check-args", f"@{bad}", f"--config-file={bad}"])
    assert message(proc) == "option '--config-file' cannot be specified more than once"


def test_tab_is_not_a_separator(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, "--job-handle-prefix=a\t--verbose=INFO")
    settings = build_settings(parse([f"--config-file={path}"]), env={})
    assert settings.job_handle_prefix == "a\t--verbose=INFO"
    assert settings.verbose == "ERROR"


def test_missing_default_config_file_is_fine(tmp_path) -> None:  # type: ignore
    if os.path.exists("/etc/gearmand.conf"):
        pytest.skip("/etc/gearmand.conf exists on this machine")
    proc = run(["--check-args"])
    assert (proc.returncode, proc.stderr) == (0, "")


def test_file_values_replace_defaults_and_queue_options(tmp_path) -> None:  # type: ignore
    path = write(tmp_path, "-q libsqlite3 --libsqlite3-db=/tmp/q.db --store-queue-on-shutdown")
    settings = build_settings(parse([f"--config-file={path}"]), env={})
    assert settings.queue_type == "libsqlite3"
    assert settings.queue_option("libsqlite3-db") == "/tmp/q.db"
    assert settings.queue_option("libsqlite3-table") == "gearman_queue"
    assert settings.queue_option("redis-prefix") == "_gear_"
    assert settings.store_queue_on_shutdown


# ---- GEARMAND_PORT -----------------------------------------------------------------------

@pytest.mark.parametrize("args,env,port,warned", [
    ([], {"GEARMAND_PORT": "4999"}, "4999", False),
    (["-p", "4730"], {"GEARMAND_PORT": "4999"}, "4999", False),   # explicit 4730 too
    (["-p", "4731"], {"GEARMAND_PORT": "4999"}, "4731", False),
    ([], {"GEARMAND_PORT": ""}, "4730", False),
    ([], {}, "4730", False),
    ([], {"GEARMAND_PORT": "tcp://10.0.0.7:4730"}, "4730", True),  # Kubernetes service env
])
def test_gearmand_port_env(args: List[str], env: Dict[str, str], port: str,
                           warned: bool) -> None:
    opts = parse(args + ["--config-file=/dev/null"])
    settings = build_settings(opts, env=env)
    assert settings.port == port
    assert bool(opts.warnings) == warned


def test_gearmand_port_env_check_args_silent() -> None:
    proc = run(["--check-args"], env={"GEARMAND_PORT": "tcp://10.0.0.7:4730"})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    proc = run(["--check-args"], env={"GEARMAND_PORT": "no-such-service-here"})
    assert message(proc) == "the argument ('no-such-service-here') for option '--port' is invalid"
