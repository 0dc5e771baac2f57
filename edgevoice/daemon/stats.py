"""Counters shared by the workers, read by status, metrics and the end-of-run summary.

Counters only ever grow (a fleet's Prometheus wants monotonic counters); the log may be
rate-limited, these never are. Labelled counters take their labels from fixed sets
(`RECONNECT_REASONS`, `KNOWN_ERROR_CODES` + "other"): a hostile server could otherwise
invent an unbounded number of series.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from edgevoice.realtime.dispatch import EventDispatcher
from edgevoice.realtime.protocol import ServerEvent, decode_audio_delta


@dataclass
class Counters:
    chunks_captured: int = 0
    chunks_sent: int = 0
    audio_bytes_sent: int = 0
    chunks_dropped_outage: int = 0
    chunks_replayed: int = 0
    capture_overflows: int = 0
    capture_dropped_blocks: int = 0
    capture_reopens: int = 0
    connections: int = 0
    connect_failures: int = 0
    reconnects: int = 0
    rollovers: int = 0
    stalls: int = 0
    speech_turns: int = 0
    user_transcripts: int = 0
    responses: int = 0
    response_audio_bytes: int = 0
    server_errors: int = 0
    server_events: int = 0
    malformed_frames: int = 0  # server frames skipped as unusable (never fatal)
    send_timeouts: int = 0  # sends that did not drain: sessions failed as silent
    audio_bytes_captured: int = 0  # 24 kHz mono PCM16 bytes cut into chunks
    chunks_muted: int = 0  # captured while muted: never queued, never sent
    chunks_dropped_muted: int = 0  # queued (not yet sent) audio dropped by a mute


# Why a streaming session ended (the supervisor's classification of the failure).
RECONNECT_REASONS = ("expired", "closed", "reset", "stall", "pong_timeout", "send_timeout",
                     "frame_too_large", "rejected", "other")
# Server error codes counted by name; anything else is "other".
KNOWN_ERROR_CODES = frozenset({
    "invalid_api_key", "insufficient_quota", "account_deactivated",
    "billing_hard_limit_reached", "rate_limit_exceeded", "session_expired",
    "beta_api_shape_disabled", "model_not_found", "invalid_model", "invalid_value",
    "invalid_type", "unknown_parameter", "missing_required_parameter",
    "unsupported_parameter", "input_audio_buffer_commit_empty",
    "response_cancel_not_active", "conversation_already_has_active_response",
    "server_error",
})


@dataclass
class Stats:
    """Thread-safe holder: `add("chunks_sent")` from any worker, `snapshot()` to read."""

    counters: Counters = field(default_factory=Counters)
    state: str = "starting"
    detail: str = ""
    last_error: str = ""
    session_id: str = ""
    capture_rate: int = 0
    waiting: str = ""  # what capture waits for ("waiting for microphone 'USB' ...")
    reload: str = ""  # the last reload's rejection by the server, until the next session
    capture_level_dbfs: float | None = None  # RMS of the last captured chunk
    muted: bool = False  # `edgevoice ctl mute`: no microphone audio leaves the device
    reconnect_reasons: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(RECONNECT_REASONS, 0))
    server_error_codes: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reconnect(self, reason: str) -> None:
        """One more reconnect (also counted in `reconnects`), by a reason of the fixed set."""
        with self._lock:
            self.counters.reconnects += 1
            key = reason if reason in self.reconnect_reasons else "other"
            self.reconnect_reasons[key] += 1

    def server_error(self, code: str) -> None:
        with self._lock:
            self.counters.server_errors += 1
            key = code if code in KNOWN_ERROR_CODES else "other"
            self.server_error_codes[key] = self.server_error_codes.get(key, 0) + 1

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.counters, name, getattr(self.counters, name) + n)

    def set(self, **fields: Any) -> None:
        with self._lock:
            for key, value in fields.items():
                if not hasattr(self, key) or key.startswith("_"):
                    raise AttributeError(key)
                setattr(self, key, value)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "state": self.state,
                "detail": self.detail,
                "last_error": self.last_error,
                "session_id": self.session_id,
                "capture_rate": self.capture_rate,
                "waiting": self.waiting,
                "reload": self.reload,
                "capture_level_dbfs": self.capture_level_dbfs,
                "muted": self.muted,
                "counters": asdict(self.counters),
                "reconnects_by_reason": dict(self.reconnect_reasons),
                "server_errors_by_code": dict(self.server_error_codes),
            }


def register_counters(dispatcher: EventDispatcher[Any], stats: Stats) -> None:
    """Count server events through the one dispatch (handlers for any session type)."""

    def count(name: str) -> Any:
        def handler(session: object, event: ServerEvent) -> None:
            stats.add(name)

        handler.__qualname__ = f"count.{name}"
        return handler

    def audio(session: object, event: ServerEvent) -> None:
        # Decoding is also what finds a malformed delta when nothing plays the audio; the
        # event keeps the result, so the speaker does not decode it again.
        stats.add("response_audio_bytes", len(decode_audio_delta(event)))

    dispatcher.on_every(count("server_events"))
    dispatcher.on(count("speech_turns"), "input_audio_buffer.speech_started")
    dispatcher.on(count("user_transcripts"),
                  "conversation.item.input_audio_transcription.completed")
    dispatcher.on(count("responses"), "response.done")
    def error(session: object, event: ServerEvent) -> None:
        err = event.data.get("error")
        code = err.get("code") if isinstance(err, dict) else None
        stats.server_error(code if isinstance(code, str) else "")

    dispatcher.on(error, "error")
    dispatcher.on(audio, "response.output_audio.delta")
