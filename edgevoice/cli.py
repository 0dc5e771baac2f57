"""Command line: run, check, devices, status, devserver.

It has the concrete parts built (`edgevoice.compose`: PyAudio or WAV source, websocket
transport, systemd notifier) and turns every failure into an exit code with one clear
line, never a traceback: 0 stopped on request, 77 credentials rejected, 78 configuration
invalid, 1 other.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

from edgevoice import __version__
from edgevoice.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError, EdgeVoiceError
from edgevoice.health.logsetup import redact
from edgevoice.settings import DEFAULT_CONFIG_PATH, Settings, check_settings, load_settings

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

    run = sub.add_parser("run", help="run the daemon")
    _config_arg(run)
    run.add_argument("--url", help="override server.url (e.g. a local devserver)")
    run.add_argument("--duration", type=float, metavar="SECONDS",
                     help="stop cleanly after this many seconds (demos, soak tests)")
    run.add_argument("--summary", action="store_true",
                     help="print a summary of the run to stdout at the end")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check", help="validate the configuration and the API key source")
    _config_arg(check)
    check.set_defaults(func=_cmd_check)

    devices = sub.add_parser("devices", help="list capture devices")
    devices.set_defaults(func=_cmd_devices)

    status = sub.add_parser("status", help="print the running daemon's status file")
    _config_arg(status)
    status.set_defaults(func=_cmd_status)

    devserver = sub.add_parser("devserver", help="run the local Realtime-compatible server")
    try:
        from edgevoice.devserver.main import add_arguments
    except ImportError:
        devserver.set_defaults(func=_devserver_missing)
    else:
        add_arguments(devserver)
        devserver.set_defaults(func=_cmd_devserver)
    return parser


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, default=None,
                        help=f"YAML settings file (default {DEFAULT_CONFIG_PATH} if it exists)")


def _config_path(args: argparse.Namespace) -> Path | None:
    """The file `--config` names, else the default one if it exists (reloads re-read it)."""
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    return path


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(_config_path(args))


def _cmd_check(args: argparse.Namespace) -> int:
    from edgevoice.credentials import load_api_key

    settings = _load(args)
    load_api_key(settings.server)  # proves a key is found; never printed
    print(f"configuration OK; API key found; server {settings.server.url} "
          f"model {settings.server.model}, mode {settings.session.mode}")
    return EXIT_OK


def _cmd_devices(args: argparse.Namespace) -> int:
    from edgevoice.audio.devices import format_device_table, list_input_devices

    print(format_device_table(list_input_devices()))
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    settings = _load(args)
    path = settings.health.status_file
    if not path:
        print("edgevoice: health.status_file is not set in the configuration", file=sys.stderr)
        return EXIT_FAILURE
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"edgevoice: cannot read status file {path}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(data, indent=2, sort_keys=True))
    return EXIT_OK


def _cmd_devserver(args: argparse.Namespace) -> int:
    from edgevoice.devserver.main import run

    return run(args)


def _devserver_missing(args: argparse.Namespace) -> int:
    print("edgevoice: the devserver needs the 'devserver' extra (pip install "
          "'edgevoice[devserver]', the 'websockets' package)", file=sys.stderr)
    return EXIT_FAILURE


# -- run ---------------------------------------------------------------------------------


class _Signals:
    """Signal handlers only set flags; the supervisor's loop acts on them."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload = True


def _cmd_run(args: argparse.Namespace) -> int:
    from edgevoice.compose import build_parts
    from edgevoice.daemon.app import Daemon

    faulthandler.enable()  # a SIGABRT from the systemd watchdog dumps every thread's stack
    signals = _Signals()
    signals.install()
    path = _config_path(args)
    settings = load_settings(path)
    if args.url:
        settings = replace(settings, server=replace(settings.server, url=args.url))
        check_settings(settings)
    daemon = Daemon(settings, build_parts(), config_path=path, signals=signals)
    daemon.url_override = args.url
    started = time.monotonic()
    code = daemon.run(duration_s=args.duration)
    if args.summary:
        print(daemon.summary(time.monotonic() - started))
    return code


__all__ = ["ConfigError", "main"]
