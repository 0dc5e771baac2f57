"""Status file (JSON) and Prometheus textfile metrics, both replaced atomically.

Readers (`edgevoice status`, node_exporter's textfile collector) must never see a half
written file, so each write goes to a temporary file in the same directory and is renamed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def status_json(snapshot: dict[str, Any]) -> str:
    return json.dumps(snapshot, indent=2, sort_keys=True) + "\n"


def prometheus_text(snapshot: dict[str, Any]) -> str:
    lines = []
    for name, value in sorted(snapshot["counters"].items()):
        metric = f"edgevoice_{name}_total"
        lines.append(f"# TYPE {metric} counter")
        lines.append(f"{metric} {value}")
    state = snapshot.get("state", "")
    lines.append("# TYPE edgevoice_streaming gauge")
    lines.append(f"edgevoice_streaming {1 if state == 'streaming' else 0}")
    return "\n".join(lines) + "\n"


def status_line(snapshot: dict[str, Any], model: str, session_age_s: float | None) -> str:
    """One human line for systemd's STATUS= (no newlines, bounded length)."""
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
    if snapshot.get("reload"):
        text += f"; {snapshot['reload']}"
    return " ".join(text.split())[:250]
