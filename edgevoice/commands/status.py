"""`edgevoice status`: the running daemon's status file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgevoice.commands.common import config_arg, load
from edgevoice.errors import EXIT_FAILURE, EXIT_OK


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "status", help="print the running daemon's status file")
    config_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load(args)
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
