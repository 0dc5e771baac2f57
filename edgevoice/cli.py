"""Command line: run, check, devices, status, devserver.

It has the concrete parts built (`edgevoice.compose`: PyAudio or WAV source, websocket
transport, systemd notifier) and turns every failure into an exit code with one clear
line, never a traceback: 0 stopped on request, 77 credentials rejected, 78 configuration
invalid, 1 other.
"""

from __future__ import annotations

import argparse
import logging
import sys

from edgevoice import __version__
from edgevoice.commands import check, devices, status
from edgevoice.commands import run as run_command
from edgevoice.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EdgeVoiceError
from edgevoice.health.logsetup import redact

log = logging.getLogger("edgevoice")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(args.func(args))
    except EdgeVoiceError as exc:
        print(f"edgevoice: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgevoice",
        description="Stream a microphone into a Realtime speech session, reliably.",
    )
    parser.add_argument("--version", action="version", version=f"edgevoice {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    for command in (run_command, check, devices, status):
        command.register(sub)

    devserver = sub.add_parser("devserver", help="run the local Realtime-compatible server")
    try:
        from edgevoice.devserver.main import add_arguments
    except ImportError:
        devserver.set_defaults(func=_devserver_missing)
    else:
        add_arguments(devserver)
        devserver.set_defaults(func=_cmd_devserver)
    return parser


def _cmd_devserver(args: argparse.Namespace) -> int:
    from edgevoice.devserver.main import run

    return run(args)


def _devserver_missing(args: argparse.Namespace) -> int:
    print("edgevoice: the devserver needs the 'devserver' extra (pip install "
          "'edgevoice[devserver]', the 'websockets' package)", file=sys.stderr)
    return EXIT_FAILURE


__all__ = ["main"]
