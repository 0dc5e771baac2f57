"""From server events to transcript records, with wall-clock times.

Registered on the one dispatcher (handlers get the session the event came from, which
matters during a rollover). Kept per item id, bounded:

- User speech (server VAD): `input_audio_buffer.speech_started` (`audio_start_ms`) and
  `speech_stopped` (`audio_end_ms`), or `timeout_triggered` (both); offsets in the
  session's input audio.
- Own commits (`turn_detection: none`): each `input_audio_buffer.committed` for an item
  with no speech events takes the session's next commit mark (`timeline.commits()`, in
  the order they were sent, as the server acknowledges them) and covers the audio from the
  commit before it.
- The assistant: the first delta (audio, transcript or text) of an item starts it, its
  `response.output_audio.done` (or the transcript's done) ends it: when the answer arrived,
  not when the speaker played it.

Offsets map to capture time through `session.timeline` (monotonic, the clock the capture
callback stamps), and capture time to wall time as `wall_clock() - (clock() - captured)`.
A user transcript is dropped when its item id was delivered, or when its capture span was
(`spans.DeliveredSpans`: the same audio replayed to the next session); empty transcripts
are not delivered.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from edgevoice.clock import Clock
from edgevoice.realtime.dispatch import EventDispatcher
from edgevoice.realtime.protocol import ServerEvent
from edgevoice.realtime.timeline import AudioTimeline
from edgevoice.settings import SessionSettings
from edgevoice.transcripts.bounded import BoundedDict
from edgevoice.transcripts.record import Role, Transcript
from edgevoice.transcripts.spans import DeliveredSpans

log = logging.getLogger("edgevoice.transcripts")

KEEP_ITEMS = 256  # items whose speech or answer times are kept until their transcript
END_EPSILON_MS = 0.001  # an end offset maps into the chunk before it, not the next one


class TimedSession(Protocol):
    """What the router needs of a session (RealtimeSession has it)."""

    session_id: str
    timeline: AudioTimeline

    @property
    def settings(self) -> SessionSettings: ...


class TranscriptRouter:
    def __init__(self, *, realtime_model: Callable[[], str], clock: Clock = time.monotonic,
                 wall_clock: Clock = time.time) -> None:
        self._realtime_model = realtime_model
        self._clock = clock
        self._wall_clock = wall_clock
        # Where records go (Delivery.submit); None: nowhere, events are only tracked.
        self.output: Callable[[Transcript], Any] | None = None
        self._lock = threading.Lock()  # two sessions' readers during a rollover
        self._speech: BoundedDict[str, list[float | None]] = BoundedDict(KEEP_ITEMS)
        self._committed: BoundedDict[str, tuple[float, float]] = BoundedDict(KEEP_ITEMS)
        self._last_mark: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._answers: BoundedDict[str, list[float | None]] = BoundedDict(KEEP_ITEMS)
        self._delivered = DeliveredSpans()
        self.duplicates = 0  # user transcripts of audio delivered before (replays)

    def register(self, dispatcher: EventDispatcher[Any]) -> None:
        dispatcher.on(self._on_speech_started, "input_audio_buffer.speech_started")
        dispatcher.on(self._on_speech_stopped, "input_audio_buffer.speech_stopped")
        dispatcher.on(self._on_timeout, "input_audio_buffer.timeout_triggered")
        dispatcher.on(self._on_committed, "input_audio_buffer.committed")
        dispatcher.on(self._on_user_transcript,
                      "conversation.item.input_audio_transcription.completed")
        dispatcher.on(self._on_answer_delta, "response.output_audio.delta",
                      "response.output_audio_transcript.delta", "response.output_text.delta")
        dispatcher.on(self._on_answer_audio_done, "response.output_audio.done")
        dispatcher.on(self._on_answer_transcript, "response.output_audio_transcript.done")
        dispatcher.on(self._on_answer_text, "response.output_text.done")

    # -- user speech ---------------------------------------------------------------------

    def _on_speech_started(self, session: TimedSession, event: ServerEvent) -> None:
        self._set_speech(event, start=_ms(event, "audio_start_ms"))

    def _on_speech_stopped(self, session: TimedSession, event: ServerEvent) -> None:
        self._set_speech(event, end=_ms(event, "audio_end_ms"))

    def _on_timeout(self, session: TimedSession, event: ServerEvent) -> None:
        self._set_speech(event, start=_ms(event, "audio_start_ms"),
                         end=_ms(event, "audio_end_ms"))

    def _set_speech(self, event: ServerEvent, start: float | None = None,
                    end: float | None = None) -> None:
        item_id = event.get_str("item_id")
        if not item_id:
            return
        with self._lock:
            span = self._speech.get(item_id) or [None, None]
            span[0] = start if start is not None else span[0]
            span[1] = end if end is not None else span[1]
            self._speech[item_id] = span

    def _on_committed(self, session: TimedSession, event: ServerEvent) -> None:
        item_id = event.get_str("item_id")
        with self._lock:
            if not item_id or item_id in self._speech:
                return  # the server's VAD committed it: its speech events say more
            last = self._last_mark.get(session, -1.0)
            marks = session.timeline.commits()
            mark = next((m for m in marks if m > last), None)
            if mark is None:
                return
            self._last_mark[session] = mark
            before = [m for m in marks if m < mark]
            self._committed[item_id] = (before[-1] if before else 0.0, mark)

    def _on_user_transcript(self, session: TimedSession, event: ServerEvent) -> None:
        output = self.output
        text = event.get_str("transcript").strip()
        item_id = event.get_str("item_id")
        if output is None or not text or not item_id:
            return
        with self._lock:
            if self._delivered.seen_item(item_id):
                return
            offsets = self._offsets(item_id)
            captured = None if offsets is None else _capture_span(session.timeline, *offsets)
            if captured is not None and self._delivered.is_duplicate(*captured):
                self.duplicates += 1
                self._delivered.add(item_id, None)
                log.info("transcript of replayed audio not delivered again (item %s, "
                         "session %s)", item_id, session.session_id,
                         extra={"edgevoice": {"EVENT": "transcript.duplicate"}})
                return
            self._delivered.add(item_id, captured)
        settings = session.settings
        start, end = (None, None) if captured is None else (self._wall(captured[0]),
                                                            self._wall(captured[1]))
        output(Transcript(text=text, role="user", item_id=item_id,
                          session_id=session.session_id, start=start, end=end,
                          language=settings.language, model=settings.transcription_model))

    def _offsets(self, item_id: str) -> tuple[float, float] | None:
        speech = self._speech.pop(item_id, None)
        if speech is not None and speech[0] is not None and speech[1] is not None:
            return speech[0], speech[1]
        return self._committed.pop(item_id, None)

    def _wall(self, captured: float) -> float:
        return self._wall_clock() - (self._clock() - captured)

    # -- the assistant -------------------------------------------------------------------

    def _on_answer_delta(self, session: TimedSession, event: ServerEvent) -> None:
        item_id = event.get_str("item_id")
        if item_id and self.output is not None:
            with self._lock:
                if item_id not in self._answers:
                    self._answers[item_id] = [self._wall_clock(), None]

    def _on_answer_audio_done(self, session: TimedSession, event: ServerEvent) -> None:
        item_id = event.get_str("item_id")
        with self._lock:
            times = self._answers.get(item_id)
            if times is not None:
                times[1] = self._wall_clock()

    def _on_answer_transcript(self, session: TimedSession, event: ServerEvent) -> None:
        self._answer(session, event.get_str("item_id"), event.get_str("transcript"))

    def _on_answer_text(self, session: TimedSession, event: ServerEvent) -> None:
        self._answer(session, event.get_str("item_id"), event.get_str("text"))

    def _answer(self, session: TimedSession, item_id: str, text: str) -> None:
        output = self.output
        text = text.strip()
        if output is None or not item_id or not text:
            return
        now = self._wall_clock()
        with self._lock:
            if self._delivered.seen_item(item_id):
                return
            self._delivered.add(item_id, None)
            start, end = self._answers.pop(item_id, None) or (now, now)
        role: Role = "assistant"
        output(Transcript(text=text, role=role, item_id=item_id,
                          session_id=session.session_id, start=start or now,
                          end=end or now, language=session.settings.language,
                          model=self._realtime_model()))


def _ms(event: ServerEvent, key: str) -> float | None:
    value = event.data.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _capture_span(timeline: AudioTimeline, start_ms: float,
                  end_ms: float) -> tuple[float, float] | None:
    """Capture times of the first and the last sample of [start_ms, end_ms)."""
    start = timeline.captured_at(start_ms)
    end = timeline.captured_at(max(start_ms, end_ms - END_EPSILON_MS))
    if start is None or end is None:
        return None
    return start, max(start, end)
