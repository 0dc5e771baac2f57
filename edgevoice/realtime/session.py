"""One Realtime session on one connection: configure it, stream into it, read from it.

A session is configured from the settings every time (nothing assumes the server
remembers) and audio is sent only after `session.updated` confirmed 24 kHz PCM. The
reader thread owns `recv`; whatever ends the session is stored as `failure` and signalled
through `failed`, so the supervisor decides, in one place, what to do about it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from edgevoice.errors import (
    AuthError,
    ConfigError,
    ConnectionLost,
    EdgeVoiceError,
    ProtocolError,
    SessionConfigRejected,
)
from edgevoice.realtime import protocol
from edgevoice.realtime.protocol import ErrorClass, ServerError, ServerEvent
from edgevoice.realtime.transport import Clock, Transport
from edgevoice.settings import SessionSettings

log = logging.getLogger("edgevoice.session")

SPEECH_DBFS = -45.0  # a chunk louder than this counts as "speech sent" for stall checks


class SessionObserver(Protocol):
    """What the session reports upward (counters, playback); implemented by the daemon."""

    def on_server_event(self, event: ServerEvent) -> None: ...
    def on_output_audio(self, pcm: bytes) -> None: ...


def _fields(**values: object) -> dict[str, object]:
    return {"edgevoice": {k: v for k, v in values.items() if v not in (None, "")}}


class RealtimeSession:
    def __init__(
        self,
        transport: Transport,
        settings: SessionSettings,
        observer: SessionObserver,
        *,
        update_timeout_s: float,
        clock: Clock = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        name: str = "session",
        log_all_events: bool = False,
    ) -> None:
        self._log_all_events = log_all_events
        self._transport = transport
        self._settings = settings
        self._observer = observer
        self._update_timeout_s = update_timeout_s
        self._clock = clock
        self._wall_clock = wall_clock
        self.name = name
        self.session_id = ""
        self.expires_at_wall: float | None = None  # unix seconds, from session.created
        self.configured_at = 0.0
        self.failed = threading.Event()
        self.failure: EdgeVoiceError | None = None
        self.failed_at = 0.0
        self.expired = False  # session_expired or 1001: roll over at once
        self.speech_active = False
        self.response_active = False
        now = clock()
        self.last_event_at = now
        self.last_speech_sent_at = 0.0
        self.probe_sent_at: float | None = None
        self._probe_id = ""
        self._sent_types: OrderedDict[str, str] = OrderedDict()  # event_id -> type
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self.reader_beat = now  # heartbeat for the watchdog
        self.bytes_sent = 0

    # -- establishing ------------------------------------------------------------------

    def establish(self, cancel: threading.Event) -> None:
        """Connect, await session.created, send our session.update, await session.updated.

        Raises the error class the supervisor acts on. `cancel` aborts the wait early.
        """
        self._transport.connect()
        created = self._await(lambda e: e.type == "session.created", "session.created", cancel)
        session = created.data.get("session")
        if isinstance(session, dict):
            self.session_id = str(session.get("id", ""))
            expires = session.get("expires_at")
            if isinstance(expires, int | float) and expires > 0:
                self.expires_at_wall = float(expires)
        update = protocol.session_update(self._settings)
        self._send(update)
        updated = self._await(
            lambda e: e.type == "session.updated", "session.updated", cancel,
            update_id=update["event_id"],
        )
        effective = updated.data.get("session")
        if not isinstance(effective, dict):
            raise ProtocolError("session.updated carries no session object")
        protocol.check_effective_input(effective)
        self.configured_at = self._clock()
        self.last_event_at = self.configured_at
        log.info(
            "session %s configured (%s, expires in %s)",
            self.session_id or "?", self._settings.mode, self._expires_text(),
            extra=_fields(EVENT="session.updated", SESSION=self.session_id),
        )

    def _expires_text(self) -> str:
        if self.expires_at_wall is None:
            return "unknown"
        return f"{max(0.0, self.expires_at_wall - self._wall_clock()) / 60:.0f} min"

    def _await(
        self,
        match: Callable[[ServerEvent], bool],
        what: str,
        cancel: threading.Event,
        update_id: str = "",
    ) -> ServerEvent:
        deadline = self._clock() + self._update_timeout_s
        while not cancel.is_set():
            if self._clock() > deadline:
                raise ConnectionLost(
                    f"no {what} within {self._update_timeout_s:g}s after connecting"
                )
            text = self._transport.recv_text()
            if text is None:
                continue
            event = protocol.parse_server_event(text)
            self.last_event_at = self._clock()
            self._observer.on_server_event(event)
            if match(event):
                return event
            if event.type == "error":
                error = ServerError.from_event(event)
                self._log_server_error(error)
                klass = protocol.classify_error(error)
                if klass is ErrorClass.CREDENTIALS:
                    raise AuthError(f"server rejected the credentials: {error.code}: "
                                    f"{error.message}")
                if klass is ErrorClass.RATE_LIMITED:
                    raise ConnectionLost(f"rate limited: {error.message}")
                if klass is ErrorClass.SESSION_EXPIRED:
                    raise ConnectionLost("session expired while configuring", close_code=1001)
                if klass is ErrorClass.CONFIG:
                    raise ConfigError(_rejection_text(error))
                # A rejection of our update names it, or is a request error without an id;
                # a server_error without one is the server's trouble, not our settings'.
                if update_id and klass is ErrorClass.OTHER and (
                        error.event_id == update_id
                        or (not error.event_id and error.type == "invalid_request_error")):
                    raise SessionConfigRejected(_rejection_text(error))
            else:
                self._log_event(event)
        raise ConnectionLost("cancelled while connecting")

    # -- streaming -----------------------------------------------------------------------

    def start_reader(self) -> None:
        self._reader = threading.Thread(target=self._read_loop, name=f"downlink-{self.name}",
                                        daemon=True)
        self._reader.start()

    def send_audio(self, pcm: bytes, rms_dbfs: float) -> None:
        self._send(protocol.audio_append(pcm), remember=False)
        self.bytes_sent += len(pcm)
        if rms_dbfs > SPEECH_DBFS:
            self.last_speech_sent_at = self._clock()

    def send(self, event: dict[str, Any]) -> None:
        self._send(event)

    def _send(self, event: dict[str, Any], remember: bool = True) -> None:
        if remember:
            self._sent_types[event["event_id"]] = event["type"]
            while len(self._sent_types) > 256:
                self._sent_types.popitem(last=False)
        self._transport.send_event(event)

    def probe(self) -> None:
        """Ask for a session.updated; a live session always answers one."""
        event = protocol.probe_update(self._settings)
        self._probe_id = event["event_id"]
        self.probe_sent_at = self._clock()
        self._send(event)

    def stalled_for(self, now: float) -> float:
        """Seconds the server has been silent while we sent speech, 0 if not stalled."""
        if self.last_speech_sent_at <= self.last_event_at:
            return 0.0
        return now - self.last_event_at

    def is_quiet(self) -> bool:
        return not self.speech_active and not self.response_active

    def fail(self, error: EdgeVoiceError) -> None:
        """Record what ended the session; a fatal cause (bad key, bad config) found a moment
        after a transient symptom of it (the send that failed on the closing socket) wins."""
        if not self.failed.is_set():
            self.failure = error
            self.failed_at = self._clock()
            self.failed.set()
        elif isinstance(error, AuthError | ConfigError) and \
                isinstance(self.failure, ConnectionLost):
            self.failure = error

    def close(self, code: int = 1000, reason: str = "", join_timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._transport.close(code, reason)
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(join_timeout_s)
            if self._reader.is_alive():
                log.warning("reader of %s did not stop within %.1fs", self.name,
                            join_timeout_s)

    def abort(self) -> None:
        self._stop.set()
        self._transport.abort()

    def _read_loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.reader_beat = self._clock()
                text = self._transport.recv_text()
                if text is None:
                    continue
                try:
                    event = protocol.parse_server_event(text)
                except ProtocolError as exc:
                    # One bad frame does not prove the session dead; the stall check will.
                    log.warning("%s", exc, extra=_fields(EVENT="malformed",
                                                         SESSION=self.session_id))
                    continue
                self.last_event_at = self._clock()
                self._handle(event)
        except EdgeVoiceError as exc:
            if not self._stop.is_set():
                if isinstance(exc, ConnectionLost) and exc.close_code == 1001:
                    self.expired = True
                self.fail(exc)
        except Exception as exc:
            log.exception("reader of %s crashed", self.name)
            self.fail(ConnectionLost(f"reader crashed: {type(exc).__name__}"))
        finally:
            self.reader_beat = self._clock()

    def _handle(self, event: ServerEvent) -> None:
        self._observer.on_server_event(event)
        kind = event.type
        if kind == "error":
            error = ServerError.from_event(event)
            self._log_server_error(error)
            klass = protocol.classify_error(error)
            if klass is ErrorClass.CREDENTIALS:
                self.fail(AuthError(f"server rejected the credentials: {error.code}: "
                                    f"{error.message}"))
            elif klass is ErrorClass.CONFIG:
                self.fail(ConfigError(_rejection_text(error)))
            elif klass is ErrorClass.SESSION_EXPIRED:
                self.expired = True
                self.fail(ConnectionLost(f"session expired: {error.message}", close_code=1001))
            elif klass is ErrorClass.RATE_LIMITED:
                self.fail(ConnectionLost(f"rate limited: {error.message}"))
            elif error.event_id and error.event_id == self._probe_id:
                self.probe_sent_at = None  # an answer all the same: the session is alive
            return
        if kind == "session.updated":
            session = event.data.get("session")
            if isinstance(session, dict):
                try:
                    protocol.check_effective_input(session)
                except ConfigError as exc:
                    self.fail(exc)
            self.probe_sent_at = None
        elif kind == "input_audio_buffer.speech_started":
            self.speech_active = True
        elif kind in ("input_audio_buffer.speech_stopped", "input_audio_buffer.timeout_triggered"):
            self.speech_active = False
        elif kind == "response.created":
            self.response_active = True
        elif kind == "response.done":
            self.response_active = False
        elif kind == "response.output_audio.delta":
            self._observer.on_output_audio(protocol.decode_audio_delta(event))
        self._log_event(event)

    # -- logging -------------------------------------------------------------------------

    def _log_event(self, event: ServerEvent) -> None:
        kind = event.type
        fields = _fields(EVENT=kind, SESSION=self.session_id)
        if kind == "input_audio_buffer.speech_started":
            log.info("speech started at %.2fs", _ms(event, "audio_start_ms"), extra=fields)
        elif kind == "input_audio_buffer.speech_stopped":
            log.info("speech stopped at %.2fs", _ms(event, "audio_end_ms"), extra=fields)
        elif kind == "conversation.item.input_audio_transcription.completed":
            log.info("user: %s", event.get_str("transcript").strip(), extra=fields)
        elif kind == "conversation.item.input_audio_transcription.failed":
            err = event.data.get("error") or {}
            log.warning("transcription failed: %s", err.get("message", "?"), extra=fields)
        elif kind == "response.output_audio_transcript.done":
            log.info("assistant: %s", event.get_str("transcript").strip(), extra=fields)
        elif kind == "response.output_text.done":
            log.info("assistant (text): %s", event.get_str("text").strip(), extra=fields)
        elif kind == "response.done":
            response = event.data.get("response") or {}
            status = response.get("status", "") if isinstance(response, dict) else ""
            log.info("response done (%s)", status or "?", extra=fields)
        elif kind in ("session.created", "session.updated") or kind in _QUIET_EVENTS:
            log.debug("%s", kind, extra=fields)
        else:
            log.debug("unhandled server event %s", kind, extra=fields)

    def _log_server_error(self, error: ServerError) -> None:
        caused_by = self._sent_types.get(error.event_id, "")
        level = logging.DEBUG if error.code in protocol.BENIGN_ERROR_CODES else logging.ERROR
        log.log(
            level,
            "server error %s (%s): %s%s%s",
            error.code or "?", error.type or "?", error.message or "(no message)",
            f" [param {error.param}]" if error.param else "",
            f" [caused by {caused_by} {error.event_id}]" if caused_by
            else (f" [client event {error.event_id}]" if error.event_id else ""),
            extra=_fields(EVENT="error", SESSION=self.session_id, ERROR_CODE=error.code),
        )


_QUIET_EVENTS = frozenset({
    "input_audio_buffer.committed", "input_audio_buffer.cleared",
    "conversation.item.created", "conversation.item.added", "conversation.item.done",
    "conversation.item.input_audio_transcription.delta", "response.created",
    "response.output_item.added", "response.output_item.done",
    "response.content_part.added", "response.content_part.done",
    "response.output_audio.delta", "response.output_audio.done",
    "response.output_audio_transcript.delta", "response.output_text.delta",
    "rate_limits.updated",
})


def _ms(event: ServerEvent, key: str) -> float:
    value = event.data.get(key)
    return float(value) / 1000.0 if isinstance(value, int | float) else 0.0


def _rejection_text(error: ServerError) -> str:
    field = error.param or "session"
    return f"{field}: server rejected session.update: {error.message or error.code} " \
           f"({error.code or error.type})"
