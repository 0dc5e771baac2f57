"""One Realtime session on one connection: configure it, stream into it, read from it.

A session is configured from the settings every time (nothing assumes the server
remembers) and audio is sent only after `session.updated` confirmed the input format
(24 kHz PCM, or G.711 encoded here). The
session never writes to its socket itself: every client event goes through the `Outbox`
(the uplink thread, which owns the send side). Its reader thread owns `recv` and hands
each event to the one `EventDispatcher`; the session's own state is kept by the first
handlers registered there (`new_dispatcher`). Whatever ends the session is stored as
`failure` and signalled through `failed`, so the supervisor decides, in one place, what to
do about it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from edgevoice.audio.g711 import WireEncoder
from edgevoice.audio.level import SPEECH_DBFS
from edgevoice.clock import Clock
from edgevoice.errors import (
    AuthError,
    ConfigError,
    ConnectionLost,
    EdgeVoiceError,
    ProtocolError,
)
from edgevoice.realtime import protocol
from edgevoice.realtime.dispatch import EventDispatcher
from edgevoice.realtime.link import Outbox
from edgevoice.realtime.protocol import MalformedEvent, ServerError, ServerEvent
from edgevoice.realtime.timeline import KEEP_CHUNKS, AudioTimeline
from edgevoice.realtime.transport import Transport
from edgevoice.settings import SessionSettings

log = logging.getLogger("edgevoice.session")

SENT_TYPES_KEPT = 256  # event ids remembered to name the event a server error refers to
MALFORMED_SUMMARY_S = 60.0  # malformed frames: one summary line at most this often


def fields(**values: object) -> dict[str, object]:
    """Structured journal fields (EDGEVOICE_*) for a log call's `extra`."""
    return {"edgevoice": {k: v for k, v in values.items() if v not in (None, "")}}


class MalformedLog:
    """The journal's view of malformed server frames: bounded whatever the server sends.

    The first frame of each kind is logged with its detail; later ones are only counted and
    summed up in one line at most every `every_s` (from the reader loop, so a summary also
    comes when the garbage has stopped).
    """

    def __init__(self, name: str, clock: Clock, every_s: float = MALFORMED_SUMMARY_S) -> None:
        self._name = name
        self._every_s = every_s
        self._seen: set[str] = set()
        self._pending: dict[str, int] = {}
        self._since = clock()

    def report(self, exc: MalformedEvent, now: float, session_id: str = "") -> None:
        if exc.kind not in self._seen:
            self._seen.add(exc.kind)
            log.warning("ignoring a malformed server frame (%s): %s; more of this kind are "
                        "counted and summarized at most once a minute", exc.kind, exc,
                        extra=fields(EVENT="malformed", SESSION=session_id))
            return
        if not self._pending:
            self._since = max(self._since, now - self._every_s)
        self._pending[exc.kind] = self._pending.get(exc.kind, 0) + 1
        self.flush(now, session_id)

    def flush(self, now: float, session_id: str = "") -> None:
        if not self._pending or now - self._since < self._every_s:
            return
        total = sum(self._pending.values())
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self._pending.items()))
        log.warning("%s: ignored %d more malformed server frames in the last %.0fs (%s)",
                    self._name, total, now - self._since, kinds,
                    extra=fields(EVENT="malformed", SESSION=session_id))
        self._pending.clear()
        self._since = now


class RealtimeSession:
    def __init__(
        self,
        transport: Transport,
        settings: SessionSettings,
        dispatcher: EventDispatcher[RealtimeSession],
        outbox: Outbox,
        *,
        update_timeout_s: float,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        name: str = "session",
        on_malformed: Callable[[str], None] | None = None,
        timeline_keep: int = KEEP_CHUNKS,
    ) -> None:
        self._transport = transport
        self._settings = settings
        self._dispatcher = dispatcher
        self._outbox = outbox
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
        self.produced_audio = False  # the voice cannot change any more
        now = clock()
        self.last_event_at = now
        self.last_speech_sent_at = 0.0
        self.timeline = AudioTimeline(timeline_keep)
        self.probe_sent_at: float | None = None
        self._probe_id = ""
        self._lock = threading.Lock()
        self._applied: dict[str, Any] | None = None  # the configuration the server has
        self._pending_update_id = ""  # the session.update establish() waits for
        self._reload_ids: set[str] = set()
        self._reload_rejection: str | None = None
        self._voice_deferred = False
        self._sent_types: OrderedDict[str, str] = OrderedDict()  # event_id -> type
        self._encoder: WireEncoder | None = None  # the sender thread's, made on first audio
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self.reader_beat = now  # heartbeat for the watchdog
        # Every malformed frame, by kind, to the caller's counter; the log is rate-limited.
        self._on_malformed = on_malformed
        self._malformed_log = MalformedLog(name, clock)

    @property
    def settings(self) -> SessionSettings:
        with self._lock:
            return self._settings

    # -- establishing ------------------------------------------------------------------

    def establish(self, cancel: threading.Event) -> None:
        """Connect, await session.created, have our session.update sent, await session.updated.

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
        with self._lock:
            settings = self._settings
        config = protocol.session_config(settings)
        update: dict[str, Any] = {"type": "session.update",
                                  "event_id": protocol.new_event_id(), "session": config}
        self._pending_update_id = update["event_id"]
        self._outbox.submit(update, to=self)
        updated = self._await(lambda e: e.type == "session.updated", "session.updated", cancel)
        self._pending_update_id = ""
        effective = updated.data.get("session")
        if not isinstance(effective, dict):
            raise ProtocolError("session.updated carries no session object")
        protocol.check_effective_formats(effective, settings)
        with self._lock:
            self._applied = config
            changed_meanwhile = self._settings is not settings
        self.configured_at = self._clock()
        self.last_event_at = self.configured_at
        log.info(
            "session %s configured (%s, expires in %s)",
            self.session_id or "?", settings.mode, self._expires_text(),
            extra=fields(EVENT="session.updated", SESSION=self.session_id),
        )
        if changed_meanwhile:  # a reload arrived while we were configuring
            self.reconfigure(self.settings)

    def _expires_text(self) -> str:
        if self.expires_at_wall is None:
            return "unknown"
        return f"{max(0.0, self.expires_at_wall - self._wall_clock()) / 60:.0f} min"

    def _await(
        self, match: Callable[[ServerEvent], bool], what: str, cancel: threading.Event
    ) -> ServerEvent:
        deadline = self._clock() + self._update_timeout_s
        while not cancel.is_set():
            if self.failed.is_set() and self.failure is not None:
                raise self.failure
            if self._clock() > deadline:
                raise ConnectionLost(
                    f"no {what} within {self._update_timeout_s:g}s after connecting"
                )
            event = self._receive()
            if event is None:
                continue
            if self.failed.is_set() and self.failure is not None:
                raise self.failure
            if match(event):
                return event
        raise ConnectionLost("cancelled while connecting")

    # -- reloading -----------------------------------------------------------------------

    def reconfigure(self, new: SessionSettings) -> None:
        """Apply changed session settings: only the fields that changed go to the server.

        The voice cannot change once the model has produced audio (the server would reject
        the whole update), so then it is left for the next session and said so once. Before
        the session is configured, establish() picks the new settings up itself.
        """
        with self._lock:
            self._settings = new
            applied = self._applied
            if applied is None:
                return
            target = protocol.session_config(new)
            changes = protocol.config_changes(applied, target)
            new_voice = protocol.voice_of(changes)
            # A response under way may be speaking already (its first delta in flight).
            if new_voice is not None and (self.produced_audio or self.response_active):
                changes = protocol.without_voice(changes)
                target = protocol.without_voice(target)
                old_voice = protocol.voice_of(applied)
                if old_voice is not None:
                    target.setdefault("audio", {}).setdefault("output", {})["voice"] = old_voice
                deferred = not self._voice_deferred
                self._voice_deferred = True
            else:
                deferred = False
            if set(changes) == {"type"}:
                changes = {}
            else:
                self._applied = {**applied, **target}
            update: dict[str, Any] | None = None
            if changes:
                update = {"type": "session.update", "event_id": protocol.new_event_id(),
                          "session": changes}
                self._reload_ids.add(update["event_id"])
        if deferred:
            log.info("reload: the voice change to %r applies from the next session (this one "
                     "has produced audio, and its voice cannot change)", new_voice,
                     extra=fields(EVENT="reload_deferred", SESSION=self.session_id))
        if update is not None:
            log.info("reload: sending the changed session fields (%s) to session %s",
                     ", ".join(_changed_paths(update["session"])), self.session_id,
                     extra=fields(EVENT="reload_update", SESSION=self.session_id))
            self._outbox.submit(update, to=self)

    def take_reload_rejection(self) -> str | None:
        """The text of a rejected reload update, once (the supervisor puts it in the status)."""
        with self._lock:
            text, self._reload_rejection = self._reload_rejection, None
            return text

    # -- streaming -----------------------------------------------------------------------

    def start_reader(self) -> None:
        self._reader = threading.Thread(target=self._read_loop, name=f"downlink-{self.name}",
                                        daemon=True)
        self._reader.start()

    def send_audio(self, pcm: bytes, rms_dbfs: float, captured_at: float | None = None) -> int:
        """Called by the sender thread only. `pcm` is 24 kHz PCM16 (the capture pipeline's
        format), encoded here to `settings.input_format` (the session's own encoder keeps
        the 24 -> 8 kHz filter state, so a new session starts fresh); `captured_at`
        (monotonic) maps the session's audio offsets back to the microphone (`timeline`).
        Returns the audio bytes put on the wire (before base64)."""
        fmt = self.settings.input_format
        if self._encoder is None or self._encoder.format != fmt:
            self._encoder = WireEncoder(fmt)
        wire = self._encoder.encode(pcm)
        self._transport.send_event(protocol.audio_append(wire))
        self.timeline.add(len(pcm) * 1000 / (2 * protocol.INPUT_RATE), captured_at)
        if rms_dbfs > SPEECH_DBFS:
            self.last_speech_sent_at = self._clock()
        return len(wire)

    def send_event(self, event: dict[str, Any]) -> None:
        """Called by the sender thread only; remembers the type to explain server errors."""
        event_id = event.setdefault("event_id", protocol.new_event_id())
        if event.get("type") == "input_audio_buffer.commit":
            self.timeline.mark_commit()
        with self._lock:
            self._sent_types[event_id] = str(event.get("type", "?"))
            while len(self._sent_types) > SENT_TYPES_KEPT:
                self._sent_types.popitem(last=False)
        self._transport.send_event(event)

    def ping_if_due(self) -> None:
        """Called by the sender thread only."""
        self._transport.ping_if_due()

    def sent_type(self, event_id: str) -> str:
        with self._lock:
            return self._sent_types.get(event_id, "")

    def probe(self) -> None:
        """Ask for a session.updated; a live session always answers one."""
        event = protocol.probe_update(self.settings)
        self._probe_id = event["event_id"]
        self.probe_sent_at = self._clock()
        self._outbox.submit(event, to=self)

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
        """Close frame and join the reader; only once the sender no longer uses the session."""
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

    def _receive(self) -> ServerEvent | None:
        """Read, parse and dispatch one event (None after the socket timeout).

        Untrusted input never ends a session: a malformed frame is counted and logged once
        per kind, and is no sign of life either (only garbage arriving still stalls).
        """
        try:
            text = self._transport.recv_text()
            if text is None:
                return None
            # Every handler decodes a delta by the session's format, which the event carries.
            event = protocol.parse_server_event(text, self.settings.output_format)
            self.last_event_at = self._clock()
            self._dispatcher.dispatch(self, event)
            return event
        except MalformedEvent as exc:
            self._malformed(exc)
            return None

    def _read_loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.reader_beat = self._clock()
                self._malformed_log.flush(self.reader_beat, self.session_id)
                self._receive()
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

    def _malformed(self, exc: MalformedEvent) -> None:
        if self._on_malformed is not None:
            self._on_malformed(exc.kind)
        self._malformed_log.report(exc, self._clock(), self.session_id)

    # -- state handlers (registered first in every dispatcher) ---------------------------

    def _on_error(self, event: ServerEvent) -> None:
        error = ServerError.from_event(event)
        with self._lock:
            is_reload = bool(error.event_id) and error.event_id in self._reload_ids
        klass = protocol.classify_error(error)
        if is_reload and klass is not protocol.ErrorClass.CREDENTIALS:
            # Whatever the server says about a reload's update (a bad value, a retired
            # model, a rate limit), it keeps the old configuration: report, stream on.
            text = f"reload rejected: {error.param or 'session'}, {error.message or error.code}"
            with self._lock:
                self._reload_rejection = text
            log.error("%s", text, extra=fields(EVENT="reload_rejected", SESSION=self.session_id,
                                               ERROR_CODE=error.code))
            return
        failure = protocol.exception_for_error(error, self._pending_update_id)
        if failure is not None:
            if isinstance(failure, ConnectionLost) and failure.close_code == 1001:
                self.expired = True
            self.fail(failure)
            return
        if error.event_id and error.event_id == self._probe_id:
            self.probe_sent_at = None  # an answer all the same: the session is alive

    def _on_updated(self, event: ServerEvent) -> None:
        session = event.data.get("session")
        if isinstance(session, dict) and self.configured_at:
            try:
                protocol.check_effective_formats(session, self.settings)
            except ConfigError as exc:
                self.fail(exc)
        self.probe_sent_at = None


def _set(attribute: str, value: bool) -> Callable[[RealtimeSession, ServerEvent], None]:
    def handler(session: RealtimeSession, event: ServerEvent) -> None:
        setattr(session, attribute, value)

    handler.__qualname__ = f"session.{attribute}={value}"
    return handler


def new_dispatcher() -> EventDispatcher[RealtimeSession]:
    """A dispatcher whose first handlers keep each session's own state.

    Registered before anything else, so logging, counting and (later) playback see the
    session as the event left it.
    """
    dispatcher: EventDispatcher[RealtimeSession] = EventDispatcher()
    dispatcher.on(RealtimeSession._on_error, "error")
    dispatcher.on(RealtimeSession._on_updated, "session.updated")
    dispatcher.on(_set("speech_active", True), "input_audio_buffer.speech_started")
    dispatcher.on(_set("speech_active", False), "input_audio_buffer.speech_stopped",
                  "input_audio_buffer.timeout_triggered")
    dispatcher.on(_set("response_active", True), "response.created")
    dispatcher.on(_set("response_active", False), "response.done")
    dispatcher.on(_set("produced_audio", True), "response.output_audio.delta")
    return dispatcher


def _changed_paths(changes: dict[str, Any], prefix: str = "session") -> list[str]:
    paths: list[str] = []
    for key, value in changes.items():
        if key == "type":
            continue
        if key == "audio" and isinstance(value, dict):
            for side, block in value.items():
                if isinstance(block, dict):
                    paths.extend(f"{prefix}.audio.{side}.{k}" for k in block)
        else:
            paths.append(f"{prefix}.{key}")
    return paths
