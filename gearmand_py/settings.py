"""The option table, gearmand's (boost::program_options) parser, and the frozen Settings.

One table (``OPTIONS``) drives the command line, the config file, ``--help``, the click
command (cli.py) and the man page (gearmand_py/manpage.py); the queue modules' rows come
from their own modules through the registry (gearmand_py/queues/__init__.py).  Parsing
reproduces gearmand 1.1.20's error messages (boost::program_options wording);
``build_settings`` validates and produces the frozen ``Settings`` that every thread reads.
Runs on the main thread at start-up only.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pwd
import re
import socket
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import affinity, compat, queues
from .errors import ConfigError
from .log import LEVEL_NAMES, raise_verbosity
from .options import SWITCH, Option

#: Largest packet payload accepted from a peer (bytes). Checked before buffering.
DEFAULT_MAX_PACKET_SIZE = 64 * 1024 * 1024
DEFAULT_CONFIG_FILE = "/etc/gearmand.conf"
#: Where logs go without -l.  C gearmand (Debian) writes /var/log/gearmand.log; this server
#: logs to stderr so a bare `gearmand` shows its log (systemd captures it in the journal).
#: Debian's init script and unit always pass --log-file, so they are unaffected.
DEFAULT_LOG_FILE = "stderr"
#: Where logs go with -d and without -l (stderr is /dev/null once detached): C's default.
DAEMON_LOG_FILE = "/var/log/gearmand.log"
DEFAULT_PID_FILE = "/var/gearmand.pid"
DEFAULT_SSL_CA = "/etc/ssl/certs/gearmand-ca.pem"
DEFAULT_SSL_CERT = "/etc/ssl/certs/gearmand.pem"
DEFAULT_SSL_KEY = "/etc/ssl/certs/gearmand.key"
#: Seconds a client may leave its output over the high-water mark before it is closed.
DEFAULT_CLIENT_STALL_TIMEOUT = 30
#: Seconds a TLS peer has to complete its handshake before it is closed.
DEFAULT_SSL_HANDSHAKE_TIMEOUT = 5
#: Seconds a persistent-queue write may take before its background submits are refused.
DEFAULT_QUEUE_TIMEOUT = 5
DEFAULT_PORT = "4730"
#: More I/O threads than this is a typo (gearmand would wrap -t -1 to 4294967295).
MAX_THREADS = 1024
#: A job handle prefix this long makes gearmand refuse to start.
MAX_HANDLE_PREFIX = 63
PORT_ENV = "GEARMAND_PORT"
LOG_FORMATS = ("text", "json")
#: Where the metrics port listens unless --metrics-address says otherwise.
DEFAULT_METRICS_ADDRESS = "127.0.0.1"
#: The package the metrics port renders with, and the extra that installs it.
METRICS_PACKAGE = "prometheus_client"
METRICS_MISSING = (f"--metrics-port needs the Python package {METRICS_PACKAGE} "
                   "(pip install 'gearmand-py[metrics]')")


@dataclasses.dataclass(frozen=True)
class Settings:
    port: str = "4730"
    listen: Tuple[str, ...] = ()          # empty = all addresses (0.0.0.0 and ::)
    threads: int = 4
    backlog: int = 32
    job_retries: int = 0                  # 0 = unlimited
    worker_wakeup: int = 0                # 0 = all sleepers
    round_robin: bool = False
    exceptions: bool = False
    job_handle_prefix: Optional[str] = None   # None = "H:<nodename>"
    hashtable_buckets: int = 991
    verbose: str = "ERROR"
    log_file: str = "stderr"
    log_file_is_default: bool = True      # -d without -l writes DAEMON_LOG_FILE (app.py)
    log_format: str = "text"              # --log-format: LOG_FORMATS
    syslog: bool = False
    queue_type: str = "builtin"
    protocol: Optional[str] = None
    compat: str = compat.DEFAULT          # --compat: "1.1" or "2.0" (gearmand_py/compat.py)
    priority_scope: str = "function"      # effective: --priority-scope, else the mode's
    cpu_affinity: str = affinity.AUTO     # --cpu-affinity: affinity.MODES
    http_port: str = "8080"
    keepalive: bool = False
    keepalive_idle: int = -1
    keepalive_interval: int = -1
    keepalive_count: int = -1
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    store_queue_on_shutdown: bool = False
    # queue-module options with a value (given or default), keyed by long option name
    # without the dashes, e.g. ("libsqlite3-db", "/tmp/q.db"), valued as their kind parses
    # (str, or int for a port); modules read them with queue_text()/queue_int().
    queue_options: Tuple[Tuple[str, object], ...] = ()
    # ---- process-level options (used by app.py / daemon.py only) ----
    daemon: bool = False
    pid_file: Optional[str] = None        # None = none written
    pid_file_is_default: bool = False     # gearmand ignores failures on its default path
    user: Optional[str] = None
    file_descriptors: int = 0             # 0 = leave RLIMIT_NOFILE alone
    coredump: bool = False
    ssl: bool = False                     # TLS on the Gear port (gearmand_py/tls.py)
    ssl_ca_file: str = DEFAULT_SSL_CA
    ssl_certificate: str = DEFAULT_SSL_CERT
    ssl_key: str = DEFAULT_SSL_KEY
    ssl_handshake_timeout: int = DEFAULT_SSL_HANDSHAKE_TIMEOUT
    client_stall_timeout: int = DEFAULT_CLIENT_STALL_TIMEOUT
    queue_timeout: int = DEFAULT_QUEUE_TIMEOUT
    metrics_port: Optional[int] = None    # None = no metrics port (protocol/metrics.py)
    metrics_address: str = DEFAULT_METRICS_ADDRESS

    def queue_option(self, name: str) -> object:
        """Queue option ``name``'s value, else the default its module declares (or None)."""
        for key, value in self.queue_options:
            if key == name:
                return value
        return BY_LONG[name].default

    def queue_text(self, name: str) -> str:
        """A string queue option; "" when it is neither given nor defaulted."""
        value = self.queue_option(name)
        return "" if value is None else str(value)

    def queue_int(self, name: str) -> int:
        """A numeric queue option (a port)."""
        value = self.queue_option(name)
        return value if isinstance(value, int) else int(str(value))


# ---- the option table ------------------------------------------------------------------

def _unsigned(bits: int) -> Callable[[str], int]:
    """boost lexical_cast<unsigned>: optional sign, digits; negatives wrap modulo 2**bits."""
    limit = 1 << bits

    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise ValueError(text)
        value = int(text)
        if abs(value) >= limit:
            raise ValueError(text)
        return value % limit
    return parse


def _signed(bits: int) -> Callable[[str], int]:
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise ValueError(text)
        value = int(text)
        if not low <= value <= high:
            raise ValueError(text)
        return value
    return parse


def _string(text: str) -> str:
    return text


VALUE_PARSERS: Dict[str, Callable[[str], object]] = {
    "str": _string,
    "u32": _unsigned(32),
    "u16": _unsigned(16),
    "i32": _signed(32),
}


GENERAL = "General options"
METRICS = "Metrics"
#: Sections in gearmand 1.1.20's --help order; the queue modules' sections come from the
#: registry, in the same order (libdrizzle and libtokyocabinet, absent from Debian's, last);
#: then this implementation's own.
SECTIONS = [GENERAL, "HTTP", "Gear"] + queues.sections() + [METRICS]


def _o(name: str, short: Optional[str], kind: str, default: object, help: str,
       section: str = GENERAL, **kw: object) -> Option:
    field = kw.pop("field", name.replace("-", "_"))
    return Option(name, short, kind, default, help, section, field, **kw)  # type: ignore[arg-type]


KEEPALIVE_HELP = ("If keepalive is enabled, set the value for {} for systems that support it. "
                  "A value of -1 means that either the system does not support it or an error "
                  "occurred when trying to retrieve the default value.")

OPTIONS: List[Option] = [
    _o("backlog", "b", "i32", 32, "Number of backlog connections for listen."),
    _o("check-args", None, SWITCH, None,
       "Check command line and configuration file arguments, then exit: status 0 when "
       "everything is valid (queue and protocol names included), 1 otherwise. Nothing is "
       "printed on success.", field=None, file_ok=False),
    _o("client-stall-timeout", None, "u32", DEFAULT_CLIENT_STALL_TIMEOUT,
       "Seconds a client may leave more than 4 MiB of output unread (while the workers "
       "feeding it are paused) before its connection is closed; its foreground jobs are "
       "then handled as a disconnect. 0 = never. (gearmand-py extension)", extension=True),
    _o("compat", None, "str", compat.DEFAULT,
       "Behave as gearmand 1.1 or 2.0 (see COMPATIBILITY MODES). (gearmand-py extension)",
       extension=True),
    _o("cpu-affinity", None, "str", affinity.AUTO,
       "'auto': with -t 2 or more, keep all threads on one CPU (the least busy one; they "
       "move together when other processes crowd it): CPython runs one thread at a time, "
       "and threads on one CPU hand over without cross-CPU wake-ups. 'none': leave it to "
       "the kernel. (gearmand-py extension)", extension=True),
    _o("daemon", "d", SWITCH, None, "Daemon, detach and run in the background."),
    _o("exceptions", None, SWITCH, None, "Enable protocol exceptions by default."),
    _o("file-descriptors", "f", "u32", None,
       "Number of file descriptors to allow for the process (total connections will be "
       "slightly less). Default is max allowed for user."),
    _o("help", "h", SWITCH, None, "Print this help menu.", field=None),
    _o("job-retries", "j", "u32", 0,
       "Number of attempts to run the job before the job server removes it. This is helpful "
       "to ensure a bad job does not crash all available workers. Default is no limit."),
    _o("job-handle-prefix", None, "str", None,
       "Prefix used to generate a job handle string. If not provided, the default "
       "\"H:<host_name>\" is used."),
    _o("hashtable-buckets", None, "u32", 991,
       "Number of buckets in the internal job hash tables. The default of 991 works well for "
       "about three million jobs in queue. If the number of jobs in the queue at any time "
       "will exceed three million, use proportionally larger values (991 * # of jobs / 3M). "
       "For example, to accommodate 2^32 jobs, use 1733003. This will consume ~26MB of extra "
       "memory. Gearmand cannot support more than 2^32 jobs in queue at this time."),
    _o("keepalive", None, SWITCH, None, "Enable keepalive on sockets."),
    _o("keepalive-idle", None, "i32", -1, KEEPALIVE_HELP.format("TCP_KEEPIDLE")),
    _o("keepalive-interval", None, "i32", -1, KEEPALIVE_HELP.format("TCP_KEEPINTVL")),
    _o("keepalive-count", None, "i32", -1, KEEPALIVE_HELP.format("TCP_KEEPCNT")),
    _o("log-file", "l", "str", DEFAULT_LOG_FILE,
       "Log file to write errors and information to. If the log-file parameter is specified "
       "as 'stderr', then output will go to stderr. If 'none', then no logfile will be "
       "generated."),
    _o("log-format", None, "str", "text",
       "Log line format: 'text' (gearmand's) or 'json' (one JSON object per line with time, "
       "level, thread, message and fields). (gearmand-py extension)", extension=True),
    _o("listen", "L", "str", None,
       "Address the server should listen on. Default is INADDR_ANY. Every address the name "
       "resolves to is bound (IPv6 included)."),
    _o("max-packet-size", None, "u32", DEFAULT_MAX_PACKET_SIZE,
       "Largest packet payload accepted from a peer, in bytes; a bigger packet closes that "
       "connection. (gearmand-py extension)", extension=True, limits=(1, (1 << 32) - 1)),
    _o("pid-file", "P", "str", DEFAULT_PID_FILE, "File to write process ID out to."),
    _o("priority-scope", None, "str", None,
       "'function': a worker's functions are walked in turn and each function's queue is "
       "served by priority; 'global': the highest priority job across all the worker's "
       "functions goes first. Default: function, or global with --compat=2.0. "
       "(gearmand-py extension)", extension=True),
    _o("protocol", "r", "str", None, "Load protocol module (only 'http')."),
    _o("round-robin", "R", SWITCH, None,
       "Assign work in round-robin order per worker connection. The default is to assign "
       "work in the order of functions added by the worker."),
    _o("queue-timeout", None, "u32", DEFAULT_QUEUE_TIMEOUT,
       "Seconds a write to the persistent queue (-q) may take: a background submit whose "
       "job is not stored by then gets ERROR QUEUE_ERROR instead of JOB_CREATED; also the "
       "queue drivers' connect and I/O timeout. (gearmand-py extension)", extension=True,
       limits=(1, 3600)),
    _o("queue-type", "q", "str", "builtin",
       "Persistent queue type to use: builtin, libsqlite3, postgres (or libpq), mysql, "
       "libdrizzle, libmemcached, libtokyocabinet, redis."),
    _o("config-file", None, "str", DEFAULT_CONFIG_FILE, "Can be specified with '@name', too",
       file_ok=True),
    _o("syslog", None, SWITCH, None, "Use syslog."),
    _o("coredump", None, SWITCH, None,
       "Whether to create a core dump for uncaught signals."),
    _o("threads", "t", "u32", 4,
       "Number of I/O threads to use. 0 means a single thread that accepts, does I/O and "
       "processes jobs. Default=4.", limits=(0, MAX_THREADS)),
    _o("user", "u", "str", None, "Switch to given user after startup."),
    _o("verbose", "v", "str", "ERROR",
       "Set verbose level (FATAL, ALERT, CRITICAL, ERROR, WARNING, NOTICE, INFO, DEBUG). "
       "A bare -v raises the level by one from ERROR per 'v' (-vv = NOTICE, -vvv = INFO)."),
    _o("version", "V", SWITCH, None, "Display the version of gearmand and exit.", field=None),
    _o("worker-wakeup", "w", "u32", 0,
       "Number of workers to wakeup for each job received. The default is to wakeup all "
       "available workers."),
    # HTTP
    _o("http-port", None, "str", "8080", "Port to listen on.", section="HTTP"),
    # Gear
    _o("port", "p", "str", DEFAULT_PORT,
       "Port the server should listen on. The environment variable GEARMAND_PORT replaces "
       "the default 4730.", section="Gear"),
    _o("ssl", None, SWITCH, None, "Enable ssl connections (TLS on the Gear port; the "
       "environment variables GEARMAND_SERVER_PEM, GEARMAND_SERVER_KEY and "
       "GEARMAND_CA_CERTIFICATE override the files).", section="Gear"),
    _o("ssl-ca-file", None, "str", DEFAULT_SSL_CA, "CA file.", section="Gear"),
    _o("ssl-certificate", None, "str", DEFAULT_SSL_CERT, "SSL certificate.", section="Gear"),
    _o("ssl-key", None, "str", DEFAULT_SSL_KEY, "SSL key for certificate.", section="Gear"),
    _o("ssl-handshake-timeout", None, "u32", DEFAULT_SSL_HANDSHAKE_TIMEOUT,
       "Seconds a TLS peer has to complete its handshake; a silent or garbage peer is closed "
       "then. (gearmand-py extension)", section="Gear", extension=True,
       limits=(1, 3600)),
    # the queue modules' rows (each gearmand_py/queues/<module>.py declares its own)
    *queues.option_rows(),
    # Metrics
    _o("metrics-port", None, "u16", None,
       "Serve Prometheus metrics (GET /metrics), a health check (GET /healthz) and a live "
       "status page (GET /) over HTTP on this port. Off unless given; needs the Python "
       "package prometheus_client. (gearmand-py extension)", section=METRICS,
       extension=True),
    _o("metrics-address", None, "str", DEFAULT_METRICS_ADDRESS,
       "Address the metrics port listens on (not -L's). (gearmand-py extension)",
       section=METRICS, extension=True),
]

BY_LONG: Dict[str, Option] = {o.name: o for o in OPTIONS}
BY_SHORT: Dict[str, Option] = {o.short: o for o in OPTIONS if o.short}


# ---- parsing ---------------------------------------------------------------------------

@dataclasses.dataclass
class Parsed:
    """Raw option values from one source (command line or config file)."""

    values: Dict[str, object] = dataclasses.field(default_factory=dict)
    verbose_steps: int = 0          # bare -v count

    def set(self, opt: Option, value: object) -> None:
        if opt.name in self.values:
            raise ConfigError(f"option '--{opt.name}' cannot be specified more than once")
        self.values[opt.name] = value


def _convert(opt: Option, text: str) -> object:
    try:
        value = VALUE_PARSERS[opt.kind](text)
        if opt.limits is not None and not opt.limits[0] <= value <= opt.limits[1]:  # type: ignore[operator]
            raise ValueError(text)
        return value
    except ValueError:
        raise ConfigError(f"the argument ('{text}') for option '--{opt.name}' is invalid") \
            from None


def _missing(opt: Option) -> ConfigError:
    return ConfigError(f"the required argument for option '--{opt.name}' is missing")


def _unrecognised(token: str) -> ConfigError:
    return ConfigError(f"unrecognised option '{token}'")


def parse_tokens(tokens: Sequence[str], in_file: bool = False) -> Parsed:
    """Parse argv-style tokens like boost::program_options (no abbreviations).

    In a config file (``in_file``), words that do not start with '-' are ignored and
    command-line-only options (--check-args) are unrecognised, as in gearmand.  On the
    command line, ``@file`` names a config file (an extension: gearmand's help text
    promises it, its parser does not implement it).
    """
    out = Parsed()
    i = 0
    n = len(tokens)
    positional_only = False
    while i < n:
        tok = tokens[i]
        i += 1
        if positional_only or not tok.startswith("-") or tok == "-":
            if in_file:
                continue
            if tok.startswith("@") and len(tok) > 1 and not positional_only:
                out.set(BY_LONG["config-file"], tok[1:])
                continue
            raise _unrecognised(tok)
        if tok == "--":
            positional_only = True
            continue
        if tok.startswith("--"):
            name, eq, text = tok[2:].partition("=")
            opt = BY_LONG.get(name)
            if opt is None or (in_file and not opt.file_ok):
                raise _unrecognised(tok)
            if not opt.takes_value:
                if eq:
                    raise ConfigError(f"option '--{opt.name}' does not take any arguments")
                out.set(opt, True)
                continue
            if eq:
                if text == "":
                    raise ConfigError(f"the argument for option '--{opt.name}' should follow "
                                      "immediately after the equal sign")
            else:
                if i >= n:
                    raise _missing(opt)
                text = tokens[i]
                i += 1
            _store(out, opt, text)
            continue
        # short option cluster: switches, then at most one valued option taking the rest
        cluster = tok[1:]
        j = 0
        while j < len(cluster):
            opt = BY_SHORT.get(cluster[j])
            if opt is None or (in_file and not opt.file_ok):
                raise _unrecognised(tok)
            rest = cluster[j + 1:]
            if opt.name == "verbose":
                i = _short_verbose(out, rest, tokens, i)
                break
            if not opt.takes_value:
                out.set(opt, True)
                j += 1
                continue
            if rest:
                text = rest
            else:
                if i >= n:
                    raise _missing(opt)
                text = tokens[i]
                i += 1
            _store(out, opt, text)
            break
    return out


def _short_verbose(out: Parsed, rest: str, tokens: Sequence[str], i: int) -> int:
    """``-v LEVEL``/``-vLEVEL`` set the level; bare ``-v``/``-vv``… count steps up."""
    opt = BY_LONG["verbose"]
    if rest and set(rest) == {"v"}:
        out.verbose_steps += 1 + len(rest)
    elif rest:
        out.set(opt, rest)
    elif i < len(tokens) and tokens[i] in LEVEL_NAMES:
        out.set(opt, tokens[i])
        i += 1
    else:
        out.verbose_steps += 1
    if out.verbose_steps and "verbose" in out.values:
        raise ConfigError("option '--verbose' cannot be specified more than once")
    return i


def _store(out: Parsed, opt: Option, text: str) -> None:
    if opt.name == "verbose" and out.verbose_steps:
        raise ConfigError("option '--verbose' cannot be specified more than once")
    out.set(opt, _convert(opt, text))


def split_config(data: bytes) -> List[str]:
    """gearmand's config file tokeniser: split on space, LF and CR only (not tabs)."""
    text = data.decode("utf-8", "surrogateescape")
    return [t for t in re.split(r"[ \n\r]+", text) if t]


@dataclasses.dataclass
class Options:
    """Merged option values (defaults < config file < command line) and the actions."""

    values: Dict[str, object]
    explicit: Dict[str, object]       # given on the command line or in the file
    check_args: bool = False
    help: bool = False
    version: bool = False
    warnings: List[str] = dataclasses.field(default_factory=list)


def parse(argv: Sequence[str]) -> Options:
    """Command line, then the config file; then the --verbose/--hashtable-buckets checks.

    Raises ConfigError with gearmand's message on any error.
    """
    cmd = parse_tokens(argv)
    config_path = cmd.values.get("config-file")
    file_values = Parsed()
    path = str(config_path) if config_path is not None else DEFAULT_CONFIG_FILE
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        if config_path is not None:
            raise ConfigError("Could not open configuration file.") from None
    else:
        file_values = parse_tokens(split_config(data), in_file=True)
        file_values.values.pop("config-file", None)   # no nesting, like gearmand
    explicit: Dict[str, object] = dict(file_values.values)
    explicit.update(cmd.values)
    values = {o.name: o.default for o in OPTIONS}
    values.update(explicit)
    steps = cmd.verbose_steps if "verbose" not in cmd.values else 0
    if steps == 0 and "verbose" not in cmd.values and file_values.verbose_steps:
        steps = file_values.verbose_steps
    if steps:
        values["verbose"] = raise_verbosity("ERROR", steps)
        explicit["verbose"] = values["verbose"]
    if values["verbose"] not in LEVEL_NAMES:
        raise ConfigError("Invalid value for --verbose supplied")
    if values["hashtable-buckets"] == 0:
        raise ConfigError("hashtable-buckets has to be greater than 0")
    return Options(values=values, explicit=explicit,
                   check_args=bool(cmd.values.get("check-args")),
                   help=bool(explicit.get("help")), version=bool(explicit.get("version")))


# ---- validation -> Settings --------------------------------------------------------------

def loadable_protocols() -> List[str]:
    """The names -r accepts: the protocol plugins loaded by name."""
    from .protocol import loadable   # plugins import this module
    return loadable()


def canonical_queue(name: str) -> str:
    """Validate a -q name (case-insensitive); returns it lower-cased."""
    lowered = name.lower()
    if queues.module_name(lowered) is None:
        raise ConfigError(f"Error while initializing the queue : {name}")
    return lowered


def _check_port(text: str, option: str) -> str:
    if text == "":
        try:
            return str(socket.getservbyname("gearman", "tcp"))
        except OSError:
            return DEFAULT_PORT
    if re.fullmatch(r"[0-9]+", text):
        if int(text) > 65535:
            raise ConfigError(f"the argument ('{text}') for option '--{option}' is invalid")
        return text
    try:
        socket.getservbyname(text, "tcp")
    except OSError:
        raise ConfigError(f"the argument ('{text}') for option '--{option}' is invalid") \
            from None
    return text


def _env_port(port: str, env: Dict[str, str], warnings: List[str]) -> str:
    """GEARMAND_PORT replaces the port when -p is 4730 (default or explicit), like gearmand.

    A ``tcp://host:port`` value (what Kubernetes injects for a service named gearmand) is
    ignored with a warning.
    """
    value = env.get(PORT_ENV, "")
    if port != DEFAULT_PORT or not value:
        return port
    if "://" in value:
        warnings.append(f"ignoring {PORT_ENV}={value!r}: not a port number or service name")
        return port
    return value


def _choice(values: Dict[str, object], name: str, allowed: Sequence[str]) -> str:
    value = str(values[name])
    if value not in allowed:
        raise ConfigError(f"the argument ('{value}') for option '--{name}' is invalid")
    return value


#: --job-retries=-1 arrives as this (gearmand reads an unsigned number).
_MINUS_ONE = (1 << 32) - 1


def _job_retries(value: int) -> int:
    """gearmand keeps the low byte (-j 256 = 0 = no limit); -1 means no limit too (1.1.20
    turned it into 255 by accident; upstream's next release makes -1 the default)."""
    return 0 if value == _MINUS_ONE else value & 0xFF


def build_settings(opts: Options, env: Optional[Dict[str, str]] = None) -> Settings:
    """Validate every value and build the frozen Settings (raises ConfigError)."""
    v = opts.values
    env = dict(os.environ) if env is None else env
    port = _check_port(_env_port(str(v["port"]), env, opts.warnings), "port")
    threads = int(v["threads"])  # type: ignore[call-overload]
    prefix = v["job-handle-prefix"]
    if prefix is not None and len(str(prefix).encode()) > MAX_HANDLE_PREFIX:
        raise ConfigError("Could not create gearmand library instance. "
                          f"(--job-handle-prefix is longer than {MAX_HANDLE_PREFIX} bytes)")
    protocol = v["protocol"]
    if protocol is not None and protocol not in loadable_protocols():
        raise ConfigError(f"Unknown protocol module : {protocol}")
    http_port = _check_port(str(v["http-port"]), "http-port")
    mode = _choice(v, "compat", list(compat.MODES))
    _choice(v, "cpu-affinity", affinity.MODES)
    scope = v["priority-scope"]
    if scope is not None:
        scope = _choice(v, "priority-scope", compat.PRIORITY_SCOPES)
    queue_type = canonical_queue(str(v["queue-type"]))
    queues.validate(v)
    if v["metrics-port"] is not None:
        try:
            importlib.import_module(METRICS_PACKAGE)
        except ImportError:
            raise ConfigError(METRICS_MISSING) from None
    user = v["user"]
    if user is not None:
        try:
            pwd.getpwnam(str(user))
        except KeyError:
            raise ConfigError(f"Could not find user : {user}") from None
    log_file = str(v["log-file"])
    if v["log-format"] not in LOG_FORMATS:
        raise ConfigError(f"the argument ('{v['log-format']}') for option '--log-format' is "
                          "invalid")
    pid_file = v["pid-file"]
    queue_options = tuple((o.name, v[o.name]) for o in OPTIONS
                          if o.queue and v.get(o.name) is not None)
    fields: Dict[str, object] = {}
    for o in OPTIONS:
        if o.field and o.field in SETTINGS_FIELDS and v.get(o.name) is not None:
            fields[o.field] = v[o.name]
    fields.update(
        port=port, http_port=http_port, threads=threads, queue_type=queue_type,
        listen=(str(v["listen"]),) if v["listen"] is not None else (),
        job_retries=_job_retries(int(v["job-retries"])),  # type: ignore[call-overload]
        worker_wakeup=int(v["worker-wakeup"]) & 0xFF,  # type: ignore[call-overload]
        log_file=log_file, log_file_is_default="log-file" not in opts.explicit,
        pid_file=str(pid_file) if pid_file else None,
        pid_file_is_default="pid-file" not in opts.explicit,
        compat=mode, priority_scope=scope or compat.MODES[mode].priority_scope,
        daemon=bool(v["daemon"]),
        round_robin=bool(v["round-robin"]) or compat.MODES[mode].round_robin,
        exceptions=bool(v["exceptions"]), syslog=bool(v["syslog"]),
        keepalive=bool(v["keepalive"]), coredump=bool(v["coredump"]), ssl=bool(v["ssl"]),
        ssl_ca_file=str(v["ssl-ca-file"]), ssl_certificate=str(v["ssl-certificate"]),
        ssl_key=str(v["ssl-key"]),
        store_queue_on_shutdown=bool(v["store-queue-on-shutdown"]),
        file_descriptors=int(v["file-descriptors"] or 0),  # type: ignore[call-overload]
        queue_options=queue_options,
    )
    return Settings(**fields)  # type: ignore[arg-type]


SETTINGS_FIELDS = {f.name for f in dataclasses.fields(Settings)}
