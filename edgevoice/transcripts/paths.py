"""Where the transcript files live: the unit's StateDirectory and RuntimeDirectory.

The same rules as the control socket and the mute state (`health.status.runtime_path`,
`daemon.control.mute_state_path`): systemd's `$STATE_DIRECTORY`/`$RUNTIME_DIRECTORY`
may list several directories, the first is ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edgevoice.health.status import runtime_path, systemd_directory

JSONL_NAME = "transcripts.jsonl"
SOCKET_NAME = "transcripts.sock"


def jsonl_path(setting: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """"auto": $STATE_DIRECTORY/transcripts.jsonl under systemd, ./transcripts.jsonl
    otherwise; a relative path is under $STATE_DIRECTORY when set; null: none."""
    if setting is None:
        return None
    state = systemd_directory("STATE_DIRECTORY", environ)
    path = Path(JSONL_NAME if setting == "auto" else setting)
    if state is not None and not path.is_absolute():
        return state / path
    return path


def socket_path(setting: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """"auto": $RUNTIME_DIRECTORY/transcripts.sock under systemd, none otherwise."""
    return runtime_path(setting, SOCKET_NAME, environ)
