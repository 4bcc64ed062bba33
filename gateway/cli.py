"""The ``onvif-gateway`` command line.

Each subsystem contributes its own subcommands through ``register(subparsers)`` in its
``commands`` module (listed in ``COMMAND_MODULES``), so this file stays a thin frame.

Exit codes (documented in ``onvif-gateway --help``):
  0 success; 1 the command ran and found problems (non-compliant cameras, failed check);
  2 usage or configuration error; 3 a runtime failure (cannot bind, nftables missing, ...);
  130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from gateway import __version__

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3
EXIT_INTERRUPTED = 130

# Modules providing ``register(subparsers) -> None``; order is the order in --help.
COMMAND_MODULES = (
    "gateway.commands",
    "gateway.sim.commands",
    "gateway.policy.commands",
    "gateway.egress.commands",
    "gateway.onvif.commands",
    "gateway.admin.commands",
)

EPILOG = """\
exit codes:
  0    success
  1    the command ran and found problems (e.g. non-compliant cameras, invalid config)
  2    usage error or unreadable configuration
  3    runtime failure (cannot bind a port, nftables missing, camera unreachable)
  130  interrupted (Ctrl-C) before the command finished its work; 'run' and 'demo' run
       until stopped, so SIGINT or SIGTERM is their normal end (exit 0)

Start with 'onvif-gateway demo' to see simulated cameras served through the gateway,
or 'onvif-gateway init' to write a commented starter configuration.
"""

Handler = Callable[[argparse.Namespace], int]


def console(stream: TextIO | None = None, *, wide: bool = False) -> Console:
    """A rich console for tables and progress: colours only on a terminal and never with
    NO_COLOR set; plain text (no escape codes) when piped. Tables fit the terminal's width
    ($COLUMNS when set, e.g. an 80-column SSH session), 160 columns on a pipe, and have no
    limit with ``wide``."""
    from rich.console import Console

    out = stream or sys.stdout
    tty = out.isatty()
    width: int | None = None if tty else 160
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        width = int(columns)
    if wide:
        width = 10_000
    return Console(
        file=out,
        no_color=not tty or "NO_COLOR" in os.environ,
        force_terminal=tty,
        highlight=False,
        width=width,
        soft_wrap=wide,
    )


class _VersionAction(argparse.Action):
    """``--version``: the version, and whether the relay path's C part was built (installs
    and the container build check it), looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from gateway.rtp import spans

        print(f"onvif-gateway {__version__} (span walks: {spans.IMPLEMENTATION})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onvif-gateway",
        description="Serve legacy Hikvision/Dahua cameras to a VMS as isolated ONVIF devices.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print the version and the relay's build, exit"
    )
    parser.add_argument("--log-json", action="store_true", help="log as JSON lines")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # subsystem not present in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    from gateway import log

    log.setup(json_lines=args.log_json, verbose=args.verbose)
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:
        # An expected failure of the machine (missing or unreadable file, full disk, port in
        # use): one line that names it, never a traceback.
        print(f"onvif-gateway {args.command}: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_RUNTIME
    except sqlite3.Error as exc:  # the state database: full disk, read-only, corrupt
        print(f"onvif-gateway {args.command}: state database: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except Exception as exc:  # a bug: say so in one line; -v shows where
        if args.verbose:
            raise
        print(
            f"onvif-gateway {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(run with -v for the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_RUNTIME


def describe_os_error(exc: OSError) -> str:
    """``exc`` as one line: what failed and on which file, without Python's decoration."""
    what = exc.strerror or str(exc) or type(exc).__name__
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{what}: {' -> '.join(names)}" if names else what


if __name__ == "__main__":
    sys.exit(main())
