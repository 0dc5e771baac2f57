"""Counters shared by the workers, read by status, metrics and the end-of-run summary.

Counters only ever grow (a fleet's Prometheus wants monotonic counters); the log may be
rate-limited, these never are.
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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
                "counters": asdict(self.counters),
            }


def register_counters(dispatcher: EventDispatcher[Any], stats: Stats) -> None:
    """Count server events through the one dispatch (handlers for any session type)."""

    def count(name: str) -> Any:
        def handler(session: object, event: ServerEvent) -> None:
            stats.add(name)

        handler.__qualname__ = f"count.{name}"
        return handler

    def audio(session: object, event: ServerEvent) -> None:
        stats.add("response_audio_bytes", len(decode_audio_delta(event)))

    dispatcher.on_every(count("server_events"))
    dispatcher.on(count("speech_turns"), "input_audio_buffer.speech_started")
    dispatcher.on(count("user_transcripts"),
                  "conversation.item.input_audio_transcription.completed")
    dispatcher.on(count("responses"), "response.done")
    dispatcher.on(count("server_errors"), "error")
    dispatcher.on(audio, "response.output_audio.delta")
