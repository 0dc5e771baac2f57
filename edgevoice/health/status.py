"""Status file (JSON) and Prometheus textfile metrics (made by ``health/metrics.py``), both
replaced atomically.

Readers (`edgevoice status`, node_exporter's textfile collector) must never see a half
written file, so each write goes to a temporary file in the same directory and is renamed.

Nothing secret leaves through these files: every text passes the log's redaction
(``edgevoice.health.logsetup.redact``) before it is shortened or written. The status file
carries error texts (a server's error message can echo the key), so it is written
``STATUS_FILE_MODE`` (0640: the owner and the service's group, ``edgevoice`` in the packaged
unit, never other users). Only text marked public (:class:`PublicText`, what
:func:`edgevoice.health.metrics.metrics_text` returns: numbers and labels from fixed sets,
no free text) is written 0644.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgevoice.health.logsetup import redact

__all__ = [
    "PUBLIC_FILE_MODE",
    "STATUS_FILE_MODE",
    "PublicText",
    "prometheus_text",
    "redact_data",
    "status_json",
    "status_line",
    "write_atomic",
]

STATUS_FILE_MODE = 0o640
PUBLIC_FILE_MODE = 0o644
STATUS_LINE_MAX = 250


class PublicText(str):
    """Text meant for every local user (metrics); write_atomic() writes it 0644."""

    __slots__ = ()


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Replace ``path`` with the redacted ``text``.

    ``mode``: default 0644 for :class:`PublicText`, else 0640 (never world-readable).
    """
    if mode is None:
        mode = PUBLIC_FILE_MODE if isinstance(text, PublicText) else STATUS_FILE_MODE
    data = redact(str(text))
    path.parent.mkdir(parents=True, exist_ok=True)
    # What tempfile.mkstemp does (a new file of random name, 0600, never through a link),
    # without importing tempfile: it brings shutil, bz2 and lzma, 0.56 MB resident.
    tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def redact_data(value: Any) -> Any:
    """A copy of a JSON-like value with every string (keys too) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


def status_json(snapshot: dict[str, Any]) -> str:
    # Redacted value by value: JSON escaping cannot split or hide a secret, and replacing
    # inside the serialised text could cut an escape sequence in two.
    return json.dumps(redact_data(snapshot), indent=2, sort_keys=True) + "\n"


def prometheus_text(snapshot: dict[str, Any]) -> PublicText:
    """The metrics text: :func:`edgevoice.health.metrics.metrics_text` (kept for callers)."""
    from edgevoice.health.metrics import metrics_text  # it imports this module

    return metrics_text(snapshot)


def status_line(snapshot: dict[str, Any], model: str, session_age_s: float | None) -> str:
    """One human line for systemd's STATUS= (no newlines, bounded length, redacted)."""
    c = snapshot["counters"]
    state = snapshot["state"]
    rate = snapshot.get("capture_rate") or 0
    rates = f"{rate / 1000:g}k\u219224k" if rate else "no microphone"
    waiting = snapshot.get("waiting") or ""
    if state == "streaming":
        age = f"session {session_age_s / 60:.0f}m" if session_age_s is not None else "session"
        text = f"streaming to {model} {rates}, {age}, {c['reconnects']} reconnects"
        if waiting:  # connected, but the microphone is not there (yet)
            text = f"connected to {model}, {waiting}"
    elif state == "offline":
        text = f"offline: {snapshot.get('detail', '')} ({snapshot.get('last_error', '')})"
        if waiting:
            text += f"; {waiting}"
    else:
        text = f"{state}: {waiting or rates}"
        if snapshot.get("last_error") and not waiting:
            text += f", last error: {snapshot['last_error']}"
    text += ", muted" if snapshot.get("muted") else ""
    if snapshot.get("capped"):  # the daily cap (the bill): why, and until when
        text += f"; capped: {snapshot.get('capped_reason') or 'daily cap reached'}"
    if snapshot.get("reload"):
        text += f"; {snapshot['reload']}"
    # Redact first: a cut inside the key would leave a piece of it.
    return redact(" ".join(text.split()))[:STATUS_LINE_MAX]


STATUS_FILE_NAME = "status.json"


def systemd_directory(variable: str,
                      environ: Mapping[str, str] | None = None) -> Path | None:
    """The directory systemd gave in `variable` ($RUNTIME_DIRECTORY, $STATE_DIRECTORY; it
    may list several: the first is ours), None when it is not set."""
    env = os.environ if environ is None else environ
    first = env.get(variable, "").split(":")[0]
    return Path(first) if first else None


def runtime_path(setting: str | None, name: str,
                 environ: Mapping[str, str] | None = None) -> Path | None:
    """Where an "auto" runtime file lives: $RUNTIME_DIRECTORY/<name> when systemd set the
    variable, none otherwise."""
    if setting is None:
        return None
    if setting != "auto":
        return Path(setting)
    runtime = systemd_directory("RUNTIME_DIRECTORY", environ)
    return runtime / name if runtime is not None else None
