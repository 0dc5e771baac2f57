"""Command line: run, check, devices, status, devserver.

It has the concrete parts built (`edgevoice.compose`: PyAudio or WAV source, websocket
transport, systemd notifier) and turns every failure into an exit code with one clear
line, never a traceback: 0 stopped on request, 77 credentials rejected, 78 configuration
invalid, 1 other.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Any

from edgevoice import __version__
from edgevoice.commands import check, ctl, devices, status
from edgevoice.commands import run as run_command
from edgevoice.errors import EXIT_FAILURE, EXIT_OK, EdgeVoiceError
from edgevoice.health.logsetup import redact

log = logging.getLogger("edgevoice")


EXIT_USAGE = 2  # what argparse exits with for a usage error


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(_command(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        # No command is a usage error: the help, on stderr, and argparse's exit code.
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except EdgeVoiceError as exc:
        print(f"edgevoice: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK


def _command(argv: list[str]) -> str | None:
    """The command word: the first argument that is not an option (the top level has only
    --help and --version, which take no value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line (also rendered as the man page, debian/make-manpage.py).

    `command`: the one about to run. Another command than the devserver skips the
    devserver's options: defining them imports `edgevoice.devserver.main` (asyncio and the
    server's modules, about 2 MB and 25 ms at every start of the daemon)."""
    parser = _Parser(
        prog="edgevoice",
        description="Stream a microphone into a Realtime speech session, reliably.",
    )
    parser.add_argument("--version", action="version", version=f"edgevoice {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    for module in (run_command, check, devices, status, ctl):
        module.register(sub)

    devserver = sub.add_parser(
        "devserver", help="run the local Realtime-compatible server (websockets >= 13)")
    if command is None or command not in sub.choices or command == "devserver":
        from edgevoice.devserver.main import add_arguments  # options only: no websockets

        add_arguments(devserver)
    devserver.set_defaults(func=_cmd_devserver)
    return parser


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size finds it: $COLUMNS, else stdout's
    terminal, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's own help layout, told the width. Without one it imports shutil to ask
    for it, at every add_argument (shutil brings zlib, bz2 and lzma: 0.45 MB resident for
    the daemon's whole life, which builds this parser at each start)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         width if width is not None else _columns() - 2)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands' parsers (of the same class) share _Formatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def _cmd_devserver(args: argparse.Namespace) -> int:
    # Checked when the server is asked for, not at every start of the command line.
    missing = _devserver_missing_reason()
    if missing is not None:
        print(missing, file=sys.stderr)
        return EXIT_FAILURE
    try:
        from edgevoice.devserver.main import run
    except ImportError as exc:
        print(f"edgevoice: the devserver cannot be imported: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return run(args)


DEVSERVER_WEBSOCKETS = (13, 0)
"""The devserver uses websockets' asyncio API (websockets.asyncio), new in websockets 13."""


def _devserver_missing_reason() -> str | None:
    """Why the devserver cannot run here (the message), or None. Checked before importing
    it: Debian 12's python3-websockets 10.4 imports, but has no websockets.asyncio."""
    try:
        import websockets
    except ImportError:
        found_text = "websockets is not installed"
    else:
        version = str(getattr(websockets, "__version__", "0"))
        found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])  # "14.0rc1"
        if found >= DEVSERVER_WEBSOCKETS:
            return None
        found_text = f"websockets {version} is installed"
    return (f"edgevoice: the devserver needs websockets >= 13 (the 'devserver' extra), but "
            f"{found_text}. Debian 12's python3-websockets 10.4 is too old: use a virtualenv "
            "(python3 -m venv --system-site-packages /opt/ev && /opt/ev/bin/pip install "
            "'websockets>=13', then /opt/ev/bin/python3 -m edgevoice devserver) or "
            "pip install 'edgevoice[devserver]'")


__all__ = ["build_parser", "main"]
