"""What the journal says about server events, as handlers on the one dispatcher.

Transcripts, turns and errors are logged at info or error; the framing events of every
answer at debug. `logging.log_all_events` (read on every event, so a reload applies at
once) lifts every event type to info for bring-up.
"""

from __future__ import annotations

import logging

from edgevoice.realtime.dispatch import EventDispatcher
from edgevoice.realtime.protocol import BENIGN_ERROR_CODES, ServerError, ServerEvent
from edgevoice.realtime.session import RealtimeSession, fields

log = logging.getLogger("edgevoice.session")

# Framing events of every answer: debug level unless log_all_events.
QUIET_EVENTS = frozenset({
    "session.created", "session.updated",
    "input_audio_buffer.committed", "input_audio_buffer.cleared",
    "conversation.item.created", "conversation.item.added", "conversation.item.done",
    "conversation.item.input_audio_transcription.delta", "response.created",
    "response.output_item.added", "response.output_item.done",
    "response.content_part.added", "response.content_part.done",
    "response.output_audio.delta", "response.output_audio.done",
    "response.output_audio_transcript.delta", "response.output_text.delta",
    "rate_limits.updated",
})


class EventLog:
    """Registers the logging handlers; `log_all_events` may be changed at any time."""

    def __init__(self, log_all_events: bool = False) -> None:
        self.log_all_events = log_all_events

    def register(self, dispatcher: EventDispatcher[RealtimeSession]) -> None:
        dispatcher.on(self._error, "error")
        dispatcher.on(self._speech_started, "input_audio_buffer.speech_started")
        dispatcher.on(self._speech_stopped, "input_audio_buffer.speech_stopped")
        dispatcher.on(self._user_transcript,
                      "conversation.item.input_audio_transcription.completed")
        dispatcher.on(self._transcription_failed,
                      "conversation.item.input_audio_transcription.failed")
        dispatcher.on(self._assistant_transcript, "response.output_audio_transcript.done")
        dispatcher.on(self._assistant_text, "response.output_text.done")
        dispatcher.on(self._response_done, "response.done")
        dispatcher.on(self._framing, *QUIET_EVENTS)
        dispatcher.on_unhandled(self._unhandled)

    def _error(self, session: RealtimeSession, event: ServerEvent) -> None:
        error = ServerError.from_event(event)
        caused_by = session.sent_type(error.event_id)
        level = logging.DEBUG if error.code in BENIGN_ERROR_CODES else logging.ERROR
        log.log(
            level,
            "server error %s (%s): %s%s%s",
            error.code or "?", error.type or "?", error.message or "(no message)",
            f" [param {error.param}]" if error.param else "",
            f" [caused by {caused_by} {error.event_id}]" if caused_by
            else (f" [client event {error.event_id}]" if error.event_id else ""),
            extra=fields(EVENT="error", SESSION=session.session_id, ERROR_CODE=error.code),
        )

    def _speech_started(self, session: RealtimeSession, event: ServerEvent) -> None:
        log.info("speech started at %.2fs", _seconds(event, "audio_start_ms"),
                 extra=fields(EVENT=event.type, SESSION=session.session_id))

    def _speech_stopped(self, session: RealtimeSession, event: ServerEvent) -> None:
        log.info("speech stopped at %.2fs", _seconds(event, "audio_end_ms"),
                 extra=fields(EVENT=event.type, SESSION=session.session_id))

    def _user_transcript(self, session: RealtimeSession, event: ServerEvent) -> None:
        log.info("user: %s", _one_line(event.get_str("transcript")),
                 extra=fields(EVENT=event.type, SESSION=session.session_id))

    def _transcription_failed(self, session: RealtimeSession, event: ServerEvent) -> None:
        err = event.data.get("error")
        message = err.get("message", "?") if isinstance(err, dict) else "?"
        log.warning("transcription failed: %s", message,
                    extra=fields(EVENT=event.type, SESSION=session.session_id))

    def _assistant_transcript(self, session: RealtimeSession, event: ServerEvent) -> None:
        log.info("assistant: %s", _one_line(event.get_str("transcript")),
                 extra=fields(EVENT=event.type, SESSION=session.session_id))

    def _assistant_text(self, session: RealtimeSession, event: ServerEvent) -> None:
        log.info("assistant (text): %s", _one_line(event.get_str("text")),
                 extra=fields(EVENT=event.type, SESSION=session.session_id))

    def _response_done(self, session: RealtimeSession, event: ServerEvent) -> None:
        response = event.data.get("response")
        status = response.get("status", "") if isinstance(response, dict) else ""
        log.info("response done (%s)", status or "?",
                 extra=fields(EVENT=event.type, SESSION=session.session_id))

    def _framing(self, session: RealtimeSession, event: ServerEvent) -> None:
        self._quiet(session, event, "%s")

    def _unhandled(self, session: RealtimeSession, event: ServerEvent) -> None:
        self._quiet(session, event, "unhandled server event %s")

    def _quiet(self, session: RealtimeSession, event: ServerEvent, message: str) -> None:
        """Debug level unless log_all_events. Every audio delta comes here: the line's
        fields are built only when the level is on."""
        level = logging.INFO if self.log_all_events else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, message, event.type,
                    extra=fields(EVENT=event.type, SESSION=session.session_id))


def _seconds(event: ServerEvent, key: str) -> float:
    value = event.data.get(key)
    return float(value) / 1000.0 if isinstance(value, int | float) else 0.0


def _one_line(text: str) -> str:
    """Server text for one journal line: an escape sequence or a lone surrogate in it would
    reach a terminal, or make journald keep the whole line as a blob."""
    return " ".join("".join(c if c.isprintable() else "\ufffd" for c in part)
                    for part in text.split())
