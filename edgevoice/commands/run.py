"""`edgevoice run`: the daemon."""

from __future__ import annotations

import argparse
import faulthandler
import signal
import time
from dataclasses import replace
from types import FrameType
from typing import Any

from edgevoice.commands.common import config_arg, config_path
from edgevoice.settings import check_settings, load_settings


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("run", help="run the daemon")
    config_arg(parser)
    parser.add_argument("--url", help="override server.url (e.g. a local devserver)")
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="stop cleanly after this many seconds (demos, soak tests)")
    parser.add_argument("--summary", action="store_true",
                        help="print a summary of the run to stdout at the end")
    parser.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    from edgevoice.malloc_arenas import limit_malloc_arenas

    limit_malloc_arenas()  # before numpy (OpenBLAS) or the daemon starts any thread
    from edgevoice.compose import build_parts
    from edgevoice.daemon.app import Daemon

    faulthandler.enable()  # a SIGABRT from the systemd watchdog dumps every thread's stack
    signals = _Signals()
    signals.install()
    path = config_path(args)
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


