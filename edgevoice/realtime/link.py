"""The seams around one session: what the sender and the supervisor may ask of it.

`SessionLink` is what `RealtimeSession` offers; the daemon's uplink and supervisor depend
on it, not on the class, so their unit tests drive them with a scripted transport or a
fake session. `Outbox` is the single sender a session hands its client events to.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from edgevoice.errors import EdgeVoiceError
from edgevoice.realtime.timeline import AudioTimeline
from edgevoice.settings import SessionSettings


class SessionLink(Protocol):
    name: str
    session_id: str
    failed: threading.Event
    failure: EdgeVoiceError | None
    failed_at: float
    expired: bool
    last_event_at: float
    configured_at: float
    expires_at_wall: float | None
    reader_beat: float
    probe_sent_at: float | None
    produced_audio: bool
    timeline: AudioTimeline  # what of the microphone this session got, and when

    @property
    def settings(self) -> SessionSettings: ...

    # the connect thread
    def establish(self, cancel: threading.Event) -> None: ...
    # the sender thread only
    def send_audio(self, pcm: bytes, rms_dbfs: float,
                   captured_at: float | None = None) -> int: ...  # wire bytes sent
    def send_event(self, event: dict[str, Any]) -> None: ...
    def ping_if_due(self) -> None: ...
    # the supervisor
    def start_reader(self) -> None: ...
    def probe(self) -> None: ...
    def reconfigure(self, new: SessionSettings) -> None: ...
    def take_reload_rejection(self) -> str | None: ...
    def stalled_for(self, now: float) -> float: ...
    def is_quiet(self) -> bool: ...
    def fail(self, error: EdgeVoiceError) -> None: ...
    def close(self, code: int = 1000, reason: str = "", join_timeout_s: float = 2.0) -> None: ...
    def abort(self) -> None: ...


class Outbox(Protocol):
    """The single sender: client events reach a socket only through it.

    `urgent` events go ahead of queued audio; the others stay behind the audio already
    queued (a commit closes the audio before it). `to` None means the session the audio
    goes to at the moment of sending.
    """

    def submit(self, event: dict[str, Any], to: SessionLink | None,
               urgent: bool = True) -> None: ...
