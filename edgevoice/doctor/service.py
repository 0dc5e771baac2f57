"""What the installed systemd unit gives the daemon, so `check` run by hand sees the same.

The unit's `LoadCredential=openai-api-key:<file>` names the key file systemd copies into
`$CREDENTIALS_DIRECTORY`, and its `Environment=ALSA_CONFIG_PATH=<file>` the ALSA
configuration the service uses. Both are read from the installed unit when there is one,
else the shipped defaults apply.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from edgevoice.credentials import CREDENTIAL_NAME

UNIT_FILE = Path("/lib/systemd/system/edgevoice.service")
CREDENTIAL_FILE = Path("/etc/edgevoice/openai-api-key")
ALSA_CONFIG = Path("/usr/share/edgevoice/asound.conf")
MAX_UNIT_BYTES = 256 * 1024


@dataclass(frozen=True)
class ServicePaths:
    """Where the service's credential file and ALSA configuration are (tests pass others)."""

    credential_file: Path = CREDENTIAL_FILE
    alsa_config: Path = ALSA_CONFIG
    source: str = "defaults"  # or the unit file they were read from


def service_paths(unit_file: Path = UNIT_FILE) -> ServicePaths:
    try:
        with unit_file.open("rb") as handle:
            text = handle.read(MAX_UNIT_BYTES).decode("utf-8", "replace")
    except OSError:
        return ServicePaths()
    credential, alsa = CREDENTIAL_FILE, ALSA_CONFIG
    for raw in text.splitlines():
        line = raw.strip()
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key == "LoadCredential":
            name, _, path = value.partition(":")
            if name == CREDENTIAL_NAME and path.startswith("/"):
                credential = Path(path)
        elif key == "Environment":
            try:
                words = shlex.split(value)
            except ValueError:
                continue
            for word in words:
                var, _, path = word.partition("=")
                if var == "ALSA_CONFIG_PATH" and path:
                    alsa = Path(path)
    return ServicePaths(credential, alsa, str(unit_file))
