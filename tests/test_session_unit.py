"""RealtimeSession's decisions while configuring, against a scripted transport (unit fake)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from fakes import (
    DirectOutbox,
    FakeClock,
    ScriptedTransport,
    error_event,
    updated_event,
    wait_until,
)

from edgevoice.errors import AuthError, ConfigError, ConnectionLost, SessionConfigRejected
from edgevoice.realtime import protocol
from edgevoice.realtime.protocol import MalformedEvent, ServerEvent
from edgevoice.realtime.session import MalformedLog, RealtimeSession, new_dispatcher
from edgevoice.settings import SessionSettings


def error(code: str, type_: str = "invalid_request_error", event_id: str = "",
          param: str = "") -> dict[str, Any]:
    return error_event(code, type_, "$event_id" if event_id == "$update" else event_id, param)


def make(after_update: list[dict[str, Any]]) -> RealtimeSession:
    transport = ScriptedTransport({"session.update": after_update})
    return RealtimeSession(transport, SessionSettings(), new_dispatcher(), DirectOutbox(),
                           update_timeout_s=0.5)


def establish(after_update: list[dict[str, Any]]) -> RealtimeSession:
    session = make(after_update)
    session.establish(threading.Event())
    return session


@pytest.mark.parametrize(("event", "expected"), [
    (error("invalid_value", event_id="$update", param="session.audio.output.voice"),
     SessionConfigRejected),
    (error("invalid_value", param="session.instructions"), SessionConfigRejected),
    (error("server_error", type_="server_error"), ConnectionLost),
    (error("rate_limit_exceeded"), ConnectionLost),
    (error("session_expired"), ConnectionLost),
    (error("invalid_api_key"), AuthError),
    (error("beta_api_shape_disabled"), ConfigError),
])
def test_errors_while_configuring_are_classified(event: dict[str, Any],
                                                 expected: type[Exception]) -> None:
    with pytest.raises(expected) as info:
        establish([event])
    if expected is SessionConfigRejected:
        assert isinstance(info.value, SessionConfigRejected) and info.value.exit_code == 78
    if expected is ConnectionLost:
        assert not isinstance(info.value, ConfigError)


def test_benign_error_then_updated_configures() -> None:
    updated = {"type": "session.updated", "event_id": "e2",
               "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}}}
    session = establish([error("response_cancel_not_active"), updated])
    assert session.session_id == "sess_1" and session.expires_at_wall == 9e9


def test_no_session_updated_is_a_timeout_not_a_config_error() -> None:
    with pytest.raises(ConnectionLost, match=r"no session.updated within 0.5s"):
        establish([])


def test_fatal_cause_wins_over_a_transient_symptom() -> None:
    session = make([])
    session.fail(ConnectionLost("send failed: broken pipe"))
    session.fail(ConfigError("close 4000"))
    assert isinstance(session.failure, ConfigError)
    session.fail(ConnectionLost("later"))
    assert isinstance(session.failure, ConfigError)


# -- malformed frames: counted, logged once per kind, never the end of the session ------


class RawTransport(ScriptedTransport):
    """A ScriptedTransport that can also deliver text that is not a valid event."""

    def push_raw(self, text: str) -> None:
        self._incoming.put(text)

    def push_malformed(self, kind: str) -> None:
        """What the real transport raises for a frame it read whole but cannot pass on."""
        self._incoming.put(f"\0{kind}")

    def recv_text(self) -> str | None:
        text = super().recv_text()
        if text is not None and text.startswith("\0"):
            raise MalformedEvent(text[1:], f"server sent a {text[1:]}")
        return text


def test_malformed_frames_while_configuring_are_skipped() -> None:
    kinds: list[str] = []
    transport = RawTransport({"session.update": [updated_event()]})
    session = RealtimeSession(transport, SessionSettings(), new_dispatcher(), DirectOutbox(),
                              update_timeout_s=1.0, on_malformed=kinds.append)
    transport.push_raw("{not json")
    transport.push_malformed("binary frame")
    transport.push_raw('{"type": "session.updated", "session": "not an object"}')
    session.establish(threading.Event())
    assert session.configured_at and not session.failed.is_set()
    assert kinds == ["not JSON", "binary frame", "bad field"]


def test_malformed_frames_while_streaming_keep_the_session(
        caplog: pytest.LogCaptureFixture) -> None:
    kinds: list[str] = []
    clock = FakeClock()
    transport = RawTransport()
    dispatcher = new_dispatcher()
    seen: list[str] = []

    def audio(session: RealtimeSession, event: ServerEvent) -> None:
        protocol.decode_audio_delta(event)

    def after(session: RealtimeSession, event: ServerEvent) -> None:
        seen.append(event.type)  # a handler after the failing one still runs

    dispatcher.on(audio, "response.output_audio.delta")
    dispatcher.on(after, "response.output_audio.delta")
    session = RealtimeSession(transport, SessionSettings(), dispatcher, DirectOutbox(),
                              update_timeout_s=1.0, clock=clock, on_malformed=kinds.append)
    session.establish(threading.Event())
    caplog.set_level(logging.WARNING, logger="edgevoice.session")
    session.start_reader()
    try:
        for _ in range(3):
            transport.push_raw("[1]")
            transport.push({"type": "response.output_audio.delta", "delta": "%%%"})
        transport.push({"type": "input_audio_buffer.speech_started"})
        assert wait_until(lambda: session.speech_active, 5)
        assert kinds == ["no type", "bad base64"] * 3
        assert seen == ["response.output_audio.delta"] * 3
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2 and "(no type)" in lines[0] and "(bad base64)" in lines[1], lines
        # The rest are summed up once a minute, from the reader loop.
        clock.advance(61)
        assert wait_until(lambda: len(caplog.records) == 3, 5)
        assert "ignored 4 more malformed server frames" in caplog.records[2].getMessage()
        assert "2 bad base64, 2 no type" in caplog.records[2].getMessage()
        assert not session.failed.is_set()
    finally:
        session.close()


def test_malformed_log_summarizes_at_most_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edgevoice.session")
    clock = FakeClock()
    malformed_log = MalformedLog("s1", clock)
    error = MalformedEvent("not JSON", "server sent malformed JSON")
    for _ in range(1000):
        malformed_log.report(error, clock())
        clock.advance(0.1)  # 100 s of garbage, ten frames a second
    malformed_log.flush(clock())  # 40 s after the first summary: not yet
    assert len(caplog.records) == 2
    clock.advance(21)
    malformed_log.flush(clock())  # the garbage stopped; what is left is still summed up
    malformed_log.flush(clock())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages  # the first, then a summary per minute
    assert "ignoring a malformed server frame (not JSON)" in messages[0]
    assert "ignored 601 more malformed server frames in the last 60s" in messages[1]
    assert "ignored 398 more malformed server frames" in messages[2]
