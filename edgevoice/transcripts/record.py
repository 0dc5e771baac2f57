"""One delivered transcript and its JSON line.

Times are ISO 8601 in UTC with milliseconds (`2026-11-29T20:01:02.345+00:00`): readable in
a file, sortable as text, and `datetime.fromisoformat` parses them; null when the audio's
capture time is not known (the timeline no longer holds it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class Transcript:
    text: str
    role: Role
    item_id: str
    session_id: str
    start: float | None  # wall clock, unix seconds (written as ISO 8601)
    end: float | None
    language: str | None  # session.language when set
    model: str  # the transcription model (user) or the realtime model (assistant)

    def line(self) -> bytes:
        """The JSON line (UTF-8, newline-terminated) the sinks write."""
        data = asdict(self)
        data["start"] = iso(self.start)
        data["end"] = iso(self.end)
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        # "replace": a lone surrogate from the server's JSON (`"\\ud800"`) is no UTF-8 and
        # would raise here, on the writer thread, ending every later delivery.
        return text.encode("utf-8", "replace") + b"\n"


def iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="milliseconds")
