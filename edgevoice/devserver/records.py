"""What the devserver observes: one record per WebSocket connection, and global counters."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .schema import JsonObj


def new_id(prefix: str) -> str:
    """An id in the style of the real service (``event_...``, ``sess_...``, ``item_...``)."""
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass
class SessionRecord:
    """What the server saw on one WebSocket connection (copies are handed out)."""

    id: str
    type: str  # "realtime" or "transcription"
    model: str | None
    path: str  # request path including the query
    headers: dict[str, str]  # request headers, credentials redacted, names lower-cased
    opened_at: float  # time.monotonic()
    closed_at: float | None = None
    updated_acked_at: float | None = None  # monotonic time the first session.updated was sent
    n_updates: int = 0  # session.updated events sent
    first_append_at: float | None = None
    n_appends: int = 0
    binary_frames: int = 0
    close_code: int | None = None  # code the server sent when it closed first, else received
    close_reason: str | None = None
    closed_by: str | None = None  # "server", "client" or "abort"
    expired: bool = False
    frozen: bool = False
    client_events: list[JsonObj] = field(default_factory=list)  # "audio" -> decoded length
    server_events: list[JsonObj] = field(default_factory=list)  # audio deltas -> length
    dropped_events: int = 0  # events not sent because the session was frozen/black-holed
    audio_bytes: int = 0  # bytes of audio received
    audio_chunks: tuple[bytes, ...] = field(default=(), repr=False)
    wav_path: Path | None = None

    @property
    def audio(self) -> bytes:
        """Audio received, as sent (PCM16 24 kHz mono unless G.711 was configured)."""
        return b"".join(self.audio_chunks)


@dataclass
class Counters:
    sessions: int = 0
    appends: int = 0
    audio_bytes: int = 0
    binary_frames: int = 0
    handshakes_rejected: int = 0  # injected by reject_handshakes
    handshakes_unauthorized: int = 0
    handshakes_model_rejected: int = 0  # HTTP 400/404 model_not_found (reject_model_http)
    models_rejected: int = 0  # sessions refused with error model_not_found + close 1008
    transcription_models_rejected: int = 0  # session.update naming a retired model


def summarize(event: JsonObj, audio_len: int | None = None) -> JsonObj:
    """A copy of an event that is cheap to keep: audio payloads become byte counts."""
    out = dict(event)
    if "audio" in out and isinstance(out["audio"], str):
        out["audio"] = audio_len if audio_len is not None else -1
    if out.get("type") in ("response.output_audio.delta", "response.audio.delta"):
        delta = out.get("delta")
        if isinstance(delta, str):
            out["delta"] = len(delta) * 3 // 4 - delta[-2:].count("=")
    if "padding" in out and isinstance(out["padding"], str):
        out["padding"] = len(out["padding"])
    return out
