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
  130  interrupted (Ctrl-C)

Start with 'onvif-gateway demo' to see simulated cameras served through the gateway,
or 'onvif-gateway init' to write a commented starter configuration.
"""

Handler = Callable[[argparse.Namespace], int]


def console(stream: TextIO | None = None) -> Console:
    """A rich console for tables and progress: colours only on a terminal and never with
    NO_COLOR set; plain text (no escape codes) when piped."""
    from rich.console import Console

    out = stream or sys.stdout
    tty = out.isatty()
    return Console(
        file=out,
        no_color=not tty or "NO_COLOR" in os.environ,
        force_terminal=tty,
        highlight=False,
        width=None if tty else 160,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onvif-gateway",
        description="Serve legacy Hikvision/Dahua cameras to a VMS as isolated ONVIF devices.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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


if __name__ == "__main__":
    sys.exit(main())
