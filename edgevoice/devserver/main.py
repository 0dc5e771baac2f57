"""``edgevoice devserver``: run the local Realtime-compatible server in the foreground.

The CLI delegates here::

    sub = subparsers.add_parser("devserver", help=...)
    devserver_main.add_arguments(sub)
    ...
    return devserver_main.run(args)

or, standalone, ``python -m edgevoice.devserver.main [options]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from .responses import RESPONSE_SPEED


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the devserver options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="the only API key accepted (default: any non-empty key)",
    )
    parser.add_argument(
        "--expire-after",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="maximum session duration (default 3600)",
    )
    parser.add_argument(
        "--expire-close-only",
        action="store_true",
        help="at expiry close with 1001 without the session_expired error event",
    )
    parser.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each session's received audio to DIR/<session id>.wav",
    )
    parser.add_argument(
        "--vad-dbfs",
        type=float,
        default=None,
        metavar="DBFS",
        help="fixed VAD threshold in dBFS (default: from turn_detection.threshold, 0.5=-40)",
    )
    parser.add_argument(
        "--retired-model",
        action="append",
        default=[],
        metavar="NAME",
        help="treat model NAME as retired (error model_not_found, close 1008); repeatable",
    )
    parser.add_argument(
        "--response-speed",
        type=_positive,
        default=RESPONSE_SPEED,
        metavar="X",
        help=f"stream answers at X times real time (default {RESPONSE_SPEED:g}; 1 = real time)",
    )
    parser.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve GET /control/<fault> on the same port (default on)",
    )
    parser.add_argument("--quiet", action="store_true", help="log nothing but warnings")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 0 when stopped on request, 1 when it cannot start."""
    from .server import DevServer, ws_log  # websockets: only when the server runs

    quiet = bool(getattr(args, "quiet", False))
    logger = logging.getLogger("edgevoice.devserver")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s devserver: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    ws_log.setLevel(logging.WARNING)

    server = DevServer(
        args.host,
        args.port,
        api_key=args.api_key or None,
        expire_after_s=args.expire_after,
        record_dir=args.record,
        log=not quiet,
        control=bool(getattr(args, "control", True)),
        keep_history=False,
        expire_close_only=bool(getattr(args, "expire_close_only", False)),
        vad_threshold_dbfs=getattr(args, "vad_dbfs", None),
        retired_models=getattr(args, "retired_model", None) or (),
        response_speed=getattr(args, "response_speed", RESPONSE_SPEED),
    )

    def ready() -> None:
        print(f"devserver listening on {server.url}", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.serve(on_ready=ready, stop_event=stop)

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"devserver: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def run_devserver(argv: list[str]) -> int:
    """Parse ``argv`` (without the program name) and run."""
    parser = argparse.ArgumentParser(
        prog="edgevoice devserver", description="Local Realtime-compatible server."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_devserver(sys.argv[1:]))
