"""Where the transcript files live: the unit's StateDirectory and RuntimeDirectory.

The same rules as the control socket and the mute state (`health.status.runtime_path`,
`daemon.control.mute_state_path`): systemd's `$STATE_DIRECTORY`/`$RUNTIME_DIRECTORY`
may list several directories, the first is ours.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from edgevoice.health.status import runtime_path

JSONL_NAME = "transcripts.jsonl"
SOCKET_NAME = "transcripts.sock"


def jsonl_path(setting: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """"auto": $STATE_DIRECTORY/transcripts.jsonl under systemd, ./transcripts.jsonl
    otherwise; a relative path is under $STATE_DIRECTORY when set; null: none."""
    if setting is None:
        return None
    env = os.environ if environ is None else environ
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    path = Path(JSONL_NAME if setting == "auto" else setting)
    if state and not path.is_absolute():
        return Path(state) / path
    return path


def socket_path(setting: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """"auto": $RUNTIME_DIRECTORY/transcripts.sock under systemd, none otherwise."""
    return runtime_path(setting, SOCKET_NAME, environ)
