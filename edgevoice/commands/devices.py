"""`edgevoice devices`: what PortAudio sees, and the name to put in the configuration."""

from __future__ import annotations

import argparse
from typing import Any

from edgevoice.errors import EXIT_OK


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("devices", help="list capture devices")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgevoice.audio.devices import format_device_table, list_input_devices

    print(format_device_table(list_input_devices()))
    return EXIT_OK
