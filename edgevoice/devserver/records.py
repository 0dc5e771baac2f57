"""What the devserver observes: one record per WebSocket connection, and global counters."""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .schema import JsonObj
from .vad import bytes_per_sample, format_rate


def new_id(prefix: str) -> str:
    """An id in the style of the real service (``event_...``, ``sess_...``, ``item_...``)."""
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass
class ResponseRecord:
    """One response of a session: how it ended and the audio it streamed."""

    id: str
    item_id: str  # the assistant message item
    trigger: str  # "client" (response.create), "vad" (end of a turn) or "idle_timeout"
    output_format: str  # "audio/pcm", "audio/pcmu", "audio/pcma"; "text" for text answers
    planned_ms: int  # length of the whole answer's audio
    speed: float  # pacing: audio streamed at this many times real time
    created_at: float  # time.monotonic()
    status: str = "in_progress"  # then "completed" or "cancelled"
    reason: str | None = None  # "client_cancelled", "turn_detected" or "connection_closed"
    done_at: float | None = None
    audio_bytes: int = 0  # bytes of audio sent in response.output_audio.delta
    audio_ms: int = 0  # ... as milliseconds at the output rate
    transcript: str = ""  # transcript (or text) sent so far
    truncated_ms: int | None = None  # audio_end_ms of the last accepted truncate
    truncated_transcript: str | None = None  # the words spoken before truncated_ms
    audio_chunks: list[bytes] = field(default_factory=list, repr=False)  # if keep_history

    @property
    def audio(self) -> bytes:
        """The audio sent for the item (all of it, truncation or not), in the output format."""
        return b"".join(self.audio_chunks)

    @property
    def kept_audio(self) -> bytes:
        """The audio the item holds: what was sent, cut at ``truncated_ms`` if truncated."""
        if self.truncated_ms is None or self.output_format == "text":
            return self.audio
        fmt = self.output_format
        per_ms = format_rate(fmt) * bytes_per_sample(fmt) // 1000
        return self.audio[: self.truncated_ms * per_ms]

    def copy(self) -> ResponseRecord:
        return dataclasses.replace(self, audio_chunks=list(self.audio_chunks))

    def to_json(self) -> JsonObj:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["audio_chunks"]
        return out


@dataclass
class TruncationRecord:
    """An accepted ``conversation.item.truncate``."""

    item_id: str
    response_id: str
    content_index: int
    audio_end_ms: int
    sent_ms: int  # audio of the item sent when it was truncated
    kept_bytes: int  # bytes of audio kept (audio_end_ms at the output rate)
    transcript: str  # the transcript cut to the words spoken before audio_end_ms
    at: float  # time.monotonic()


@dataclass
class CancelRecord:
    """A response cancelled by ``response.cancel``, speech (server VAD) or speech_started_now."""

    response_id: str
    reason: str  # "client_cancelled" or "turn_detected"
    audio_ms: int  # audio of the response sent when it was cancelled
    planned_ms: int
    event_id: str | None  # the client's response.cancel event_id, if any
    at: float  # time.monotonic()


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
    # The input format of the last append and its rate; the audio decoded from it (G.711
    # expanded to PCM16 at 8 kHz, PCM16 as received) is what the VAD heard.
    input_format: str = "audio/pcm"
    input_rate: int = 24000
    pcm_chunks: tuple[bytes, ...] = field(default=(), repr=False)
    wav_path: Path | None = None
    responses: list[ResponseRecord] = field(default_factory=list)
    truncations: list[TruncationRecord] = field(default_factory=list)
    cancels: list[CancelRecord] = field(default_factory=list)

    @property
    def audio(self) -> bytes:
        """Audio received, as sent (PCM16 24 kHz mono unless G.711 was configured)."""
        return b"".join(self.audio_chunks)

    @property
    def pcm(self) -> bytes:
        """Audio received, decoded to PCM16 mono at ``input_rate`` (if keep_history)."""
        return b"".join(self.pcm_chunks)

    def response(self, id_or_item: str) -> ResponseRecord:
        """The response with this id, or the one that produced this item (KeyError if none)."""
        for resp in self.responses:
            if id_or_item in (resp.id, resp.item_id):
                return resp
        raise KeyError(id_or_item)

    def to_json(self) -> JsonObj:
        """The record without audio payloads (the ``sessions`` control operation)."""
        skip = ("audio_chunks", "pcm_chunks", "client_events", "server_events")
        out = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip
        }
        out["wav_path"] = str(self.wav_path) if self.wav_path else None
        out["responses"] = [r.to_json() for r in self.responses]
        out["truncations"] = [dataclasses.asdict(t) for t in self.truncations]
        out["cancels"] = [dataclasses.asdict(c) for c in self.cancels]
        return out


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
