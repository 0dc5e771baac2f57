"""`edgevoice devices`: what PortAudio sees, and the name to put in the configuration.

Run by hand it uses the service's ALSA configuration (the unit sets
``ALSA_CONFIG_PATH=/usr/share/edgevoice/asound.conf``) when ``ALSA_CONFIG_PATH`` is not set
and that file exists, so it lists what the service would see.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from edgevoice.errors import EXIT_OK

SERVICE_ALSA_CONFIG = Path("/usr/share/edgevoice/asound.conf")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "devices", help="list capture and playback devices, their rates and config names",
        description="List the input and output devices PortAudio sees, with channels, "
        "default rate, which of 8000/16000/24000/44100/48000 Hz each takes for 16-bit "
        "audio, and what to write as audio.device (inputs) or playback.device (outputs). "
        f"Without ALSA_CONFIG_PATH it uses the service's ALSA configuration, "
        f"{SERVICE_ALSA_CONFIG}, when that file exists.")
    parser.set_defaults(func=run)


def use_service_alsa_config(environ: MutableMapping[str, str],
                            service_config: Path = SERVICE_ALSA_CONFIG) -> str:
    """Point ``environ`` at the service's ALSA configuration when nothing is set; say which
    configuration is in use."""
    current = environ.get("ALSA_CONFIG_PATH")
    if current:
        return f"ALSA configuration: {current} (from ALSA_CONFIG_PATH)"
    if service_config.is_file():
        environ["ALSA_CONFIG_PATH"] = str(service_config)
        return (f"ALSA configuration: {service_config} (the service's; ALSA_CONFIG_PATH "
                "was not set)")
    return "ALSA configuration: the system's (ALSA_CONFIG_PATH is not set)"


def run(args: argparse.Namespace) -> int:
    from edgevoice.audio.devices import format_survey, survey

    print(use_service_alsa_config(os.environ))
    print()
    print(format_survey(survey()))
    return EXIT_OK
