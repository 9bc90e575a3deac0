"""``python -m gearmand_py.launcher``: build and install the native ``gearmand`` launcher.

    python3 -m gearmand_py.launcher --install /usr/sbin/gearmand
    python3 -m gearmand_py.launcher --print-command [--install PATH]
    python3 -m gearmand_py.launcher --write-source gearmand-launcher.c

Run it with the interpreter gearmand-py is installed in (a venv's python for a venv
install): the launcher runs that installation.  Errors: one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import List, Optional, Sequence

from . import LINK_MODES, BuildError, install, plan_build
from .source import LAUNCHER_C, SOURCE_NAME

PROG = "python -m gearmand_py.launcher"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Build a native gearmand launcher (a small C program embedding this "
                    "Python) so /proc/PID/exe is the launcher and Debian's init script "
                    "(start-stop-daemon --exec) can stop and find the server.")
    p.add_argument("--install", metavar="PATH",
                   help="compile and atomically install the launcher at PATH (mode 0755), "
                        "e.g. /usr/sbin/gearmand or /usr/local/sbin/gearmand")
    p.add_argument("--print-command", action="store_true",
                   help=f"print the compile command (source file {SOURCE_NAME}, see "
                        "--write-source) and exit")
    p.add_argument("--write-source", metavar="FILE",
                   help="write the launcher's C source to FILE ('-' for stdout) and exit")
    p.add_argument("--cc", metavar="CC", help="C compiler (default: $CC, else cc)")
    p.add_argument("--link", choices=LINK_MODES, default="auto",
                   help="link libpython shared (default when present) or static")
    p.add_argument("--no-check", action="store_true",
                   help="do not run the built launcher with -V before installing it")
    return p


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if not (args.install or args.print_command or args.write_source):
        _parser().print_usage(sys.stderr)
        sys.stderr.write(f"{PROG}: give --install PATH, --print-command or --write-source\n")
        return 2
    try:
        if args.write_source:
            if args.write_source == "-":
                sys.stdout.write(LAUNCHER_C)
            else:
                with open(args.write_source, "w") as f:
                    f.write(LAUNCHER_C)
            if not args.print_command:
                return 0
        plan = plan_build(cc=args.cc, link=args.link)
        if args.print_command:
            source = args.write_source if args.write_source not in (None, "-") \
                else SOURCE_NAME
            cmd: List[str] = plan.command(source, args.install or "gearmand")
            print(shlex.join(cmd))
            return 0
        version = install(args.install, plan, check=not args.no_check)
    except BuildError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"{PROG}: {exc.filename or ''}: {exc.strerror}\n")
        return 1
    detail = f": {version}" if version else ""
    print(f"installed {args.install} ({plan.link_mode} libpython, runs {plan.python}){detail}")
    return 0


def main() -> None:
    """``python -m gearmand_py.launcher``."""
    sys.exit(run())


if __name__ == "__main__":
    main()
