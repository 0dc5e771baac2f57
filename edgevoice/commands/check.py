"""`edgevoice check`: is this configuration usable?"""

from __future__ import annotations

import argparse
from typing import Any

from edgevoice.commands.common import config_arg, load
from edgevoice.errors import EXIT_OK


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "check", help="validate the configuration and the API key source")
    config_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgevoice.credentials import load_api_key

    settings = load(args)
    load_api_key(settings.server)  # proves a key is found; never printed
    print(f"configuration OK; API key found; server {settings.server.url} "
          f"model {settings.server.model}, mode {settings.session.mode}")
    return EXIT_OK
