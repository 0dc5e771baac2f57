"""Which models are current, which are retired and when, and what each transcription model takes.

A fleet installed with a model that has an announced shutdown stops working on that day,
unattended; the daemon says so once at start (and `check` will), long before. The dates are
OpenAI's announcements as PROTOCOL facts record them (ARCHITECTURE.md, "Protocol facts").
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from edgevoice.settings import DEFAULT_REALTIME_MODEL, DEFAULT_TRANSCRIPTION_MODEL

_REALTIME_SHUTDOWN = datetime.date(2027, 1, 20)
_TRANSCRIPTION_SHUTDOWN = datetime.date(2027, 2, 26)

# (exact name or prefix ending in "-", shutdown date); a prefix covers dated snapshots.
_RETIRING_REALTIME: tuple[tuple[str, datetime.date], ...] = (
    ("gpt-realtime", _REALTIME_SHUTDOWN),
    ("gpt-realtime-2025-08-28", _REALTIME_SHUTDOWN),
    ("gpt-realtime-mini", _REALTIME_SHUTDOWN),
    ("gpt-realtime-mini-", _REALTIME_SHUTDOWN),
    ("gpt-audio-mini", _REALTIME_SHUTDOWN),
    ("gpt-audio-mini-", _REALTIME_SHUTDOWN),
)
_RETIRING_TRANSCRIPTION: tuple[tuple[str, datetime.date], ...] = (
    ("whisper-1", _TRANSCRIPTION_SHUTDOWN),
    ("gpt-4o-transcribe", _TRANSCRIPTION_SHUTDOWN),
    ("gpt-4o-transcribe-", _TRANSCRIPTION_SHUTDOWN),
    ("gpt-4o-mini-transcribe", _TRANSCRIPTION_SHUTDOWN),
    ("gpt-4o-mini-transcribe-", _TRANSCRIPTION_SHUTDOWN),
)

# Transcription models that take `languages` (a list) instead of `language`.
MULTI_LANGUAGE_TRANSCRIPTION = frozenset({"gpt-transcribe", "gpt-live-transcribe"})


@dataclass(frozen=True)
class Retirement:
    model: str
    setting: str  # the settings key that names it
    shutdown: datetime.date

    def warning(self) -> str:
        current = (DEFAULT_REALTIME_MODEL if self.setting == "server.model"
                   else DEFAULT_TRANSCRIPTION_MODEL)
        return (f"{self.setting}: {self.model} is deprecated and shuts down on "
                f"{self.shutdown.isoformat()}; move to a current model (for example "
                f"{current})")


def _lookup(model: str, table: tuple[tuple[str, datetime.date], ...]) -> datetime.date | None:
    for name, date in table:
        if model == name or (name.endswith("-") and model.startswith(name)):
            return date
    return None


def retirements(realtime_model: str | None, transcription_model: str | None) -> list[Retirement]:
    """The configured models with an announced shutdown (Azure deployment names never match)."""
    found: list[Retirement] = []
    if realtime_model:
        date = _lookup(realtime_model, _RETIRING_REALTIME)
        if date is not None:
            found.append(Retirement(realtime_model, "server.model", date))
    if transcription_model:
        date = _lookup(transcription_model, _RETIRING_TRANSCRIPTION)
        if date is not None:
            found.append(Retirement(transcription_model, "session.transcription_model", date))
    return found
