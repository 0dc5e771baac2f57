"""Where the API key comes from, in a fixed order, and never from the YAML.

Order: the systemd credential `openai-api-key` (LoadCredential=, readable only by the
service), then `server.api_key_file` (refused when group- or world-readable, the way ssh
refuses a loose private key), then the environment variable `server.api_key_env`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from edgevoice.errors import ConfigError
from edgevoice.settings import ServerSettings

CREDENTIAL_NAME = "openai-api-key"


def load_api_key(server: ServerSettings, environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    looked: list[str] = []

    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cred = Path(cred_dir) / CREDENTIAL_NAME
        if cred.is_file():
            return _read_key(cred, "systemd credential")
        looked.append(f"systemd credential {cred} (absent)")
    else:
        looked.append(f"systemd credential '{CREDENTIAL_NAME}' (no $CREDENTIALS_DIRECTORY)")

    if server.api_key_file:
        path = Path(server.api_key_file)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ConfigError(f"server.api_key_file: {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"server.api_key_file: {path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"server.api_key_file: {path} is readable by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
            )
        return _read_key(path, "server.api_key_file")
    looked.append("server.api_key_file (not set)")

    value = env.get(server.api_key_env, "").strip()
    if value:
        return value
    looked.append(f"environment variable {server.api_key_env} (not set)")
    raise ConfigError("no API key found; looked in: " + "; ".join(looked))


def _read_key(path: Path, what: str) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None
    if not key:
        raise ConfigError(f"{what}: {path} is empty")
    if any(c.isspace() for c in key):
        raise ConfigError(f"{what}: {path} holds more than one word; expected only the key")
    return key
