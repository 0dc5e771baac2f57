"""`edgevoice check`: is this setup usable? One line per check, a verdict, and the fix.

The checks are in `edgevoice.doctor`. Exit 0 when every check passed or warned, else the
exit code of the first failing check (77 credentials, 78 configuration, 1 other); that
check's line also goes to stderr, as every other command reports its error there.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from edgevoice.commands.common import config_arg, config_path

DEFAULT_SECONDS = 3.0
MAX_SECONDS = 60.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be > 0 and <= {MAX_SECONDS:g}, not {text}")
    return value


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "check", help="check the configuration, the API key, the microphone and the server",
        description="Check the setup as the service would run it: configuration, models, "
                    "API key, microphone (level over --seconds), server (DNS, TCP, TLS, "
                    "clock, handshake, one session.update; no audio is sent).")
    config_arg(parser)
    parser.add_argument("--json", action="store_true",
                        help='print {"checks": [{name, verdict, detail, fix}], "exit_code"}')
    parser.add_argument("--seconds", type=_seconds, default=DEFAULT_SECONDS, metavar="N",
                        help=f"listen to the microphone this long (default {DEFAULT_SECONDS:g})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgevoice.doctor.runner import run_checks
    from edgevoice.doctor.verdicts import exit_code, first_failure, render_json, render_text
    from edgevoice.health.logsetup import redact

    checks = run_checks(config_path(args), args.seconds)
    print(render_json(checks) if args.json else render_text(checks), flush=True)
    failure = first_failure(checks)
    if failure is not None:
        print(f"edgevoice: {failure.name}: {redact(' '.join(failure.detail.split()))}",
              file=sys.stderr)
    return exit_code(checks)
