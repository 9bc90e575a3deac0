"""The ``gearmand`` command (main thread).

click provides the command object, its context (``ctx.obj`` carries the parsed options,
``ctx.exit`` the status) and ``click.echo``; the parsing itself is settings.parse, which
reproduces boost::program_options' forms and error messages exactly (click's own parser
words its errors differently and has no boost ``-xv`` cluster rules), so the command
declares no click parameters and ``-h`` prints gearmand's own layout.

Order of checks, as gearmand 1.1.20: parse the command line and the config file ->
--verbose -> --hashtable-buckets -> --check-args -> --help -> --version -> start
(app.run).  Every error: ``<argv[0]>: <message>`` on stderr, exit 1.
"""

from __future__ import annotations

import sys
import textwrap
from typing import List, Optional, Sequence

import click

from . import COMPAT_VERSION, __version__, compat
from .errors import GearmandError
from .settings import OPTIONS, SECTIONS, Option, Options, build_settings, parse

#: Where -V sends bug reports (gearmand prints its issue tracker here; this is not C gearmand).
BUG_REPORTS = "report bugs to the gearmand-py maintainers"
HELP_WIDTH = 80
HELP_COLUMN = 40


def version_text() -> str:
    """gearmand's -V output (a leading empty line, then ``gearmand <version> - ...``, the line
    tools parse), naming this implementation and where its bugs go."""
    return f"\ngearmand {COMPAT_VERSION} - {BUG_REPORTS}\n(gearmand-py {__version__})\n"


def option_spec(opt: Option) -> str:
    """boost's left column: ``-b [ --backlog ] arg (=32)``."""
    spec = f"-{opt.short} [ --{opt.name} ]" if opt.short else f"--{opt.name}"
    if opt.takes_value:
        spec += " arg"
        if opt.default is not None and opt.show_default:
            spec += f" (={opt.default})"
    return spec


def help_text() -> str:
    """Options grouped in gearmand's sections, in boost's two-column layout."""
    lines = ["Usage: gearmand [options] [@config-file]", "", "Allowed options:", ""]
    for section in SECTIONS:
        lines.append(f"{section}:")
        for opt in OPTIONS:
            if opt.section != section:
                continue
            spec = "  " + option_spec(opt)
            wrapped = textwrap.wrap(opt.help, HELP_WIDTH - HELP_COLUMN) or [""]
            if len(spec) < HELP_COLUMN - 1:
                lines.append(spec.ljust(HELP_COLUMN) + wrapped[0])
                wrapped = wrapped[1:]
            else:
                lines.append(spec)
            lines.extend(" " * HELP_COLUMN + w for w in wrapped)
        lines.append("")
    lines.append("Compatibility modes (--compat):")
    for what, old, new in compat.TABLE:
        lines += [f"  {what}", f"      1.1: {old}", f"      2.0: {new}"]
    lines.append("")
    return "\n".join(lines) + "\n"


def prog_name(argv0: Optional[str] = None) -> str:
    """``<argv[0]>`` as gearmand prints it; ``python -m gearmand_py`` shows as gearmand."""
    name = argv0 if argv0 is not None else (sys.argv[0] if sys.argv else "gearmand")
    if not name or name.endswith("__main__.py") or name == "-m":
        return "gearmand"
    return name


class GearmandCommand(click.Command):
    """A click command whose parser is gearmand's and whose help is gearmand's layout."""

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        ctx.obj = parse(args)
        ctx.params = {}
        return []

    def get_help(self, ctx: click.Context) -> str:
        return help_text()


def _run(ctx: click.Context) -> None:
    opts: Options = ctx.obj
    if opts.check_args:
        build_settings(opts)
        ctx.exit(0)
    if opts.help:
        click.echo(help_text(), nl=False)
        ctx.exit(0)
    if opts.version:
        click.echo(version_text(), nl=False)
        ctx.exit(0)
    settings = build_settings(opts)
    from .app import run   # imported late: --check-args/-h never load the server core
    ctx.exit(run(settings, warnings=opts.warnings))


command = GearmandCommand(
    name="gearmand",
    callback=click.pass_context(_run),
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry: exit with gearmand's status; errors as ``<argv0>: <msg>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    prog = prog_name()
    try:
        rc = command.main(args=args, prog_name="gearmand", standalone_mode=False)
    except GearmandError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        sys.stderr.flush()
        sys.exit(1)
    except click.ClickException as exc:   # pragma: no cover - our parser raises ConfigError
        sys.stderr.write(f"{prog}: {exc.format_message()}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(1)
    except Exception as exc:   # a bug: still one line for the operator (details in the log)
        sys.stderr.write(f"{prog}: {type(exc).__name__}: {exc}\n")
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)
