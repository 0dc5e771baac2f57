"""RealtimeSession's decisions while configuring, against a scripted transport (unit fake)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fakes import DirectOutbox, ScriptedTransport, error_event

from edgevoice.errors import AuthError, ConfigError, ConnectionLost, SessionConfigRejected
from edgevoice.realtime.session import RealtimeSession, new_dispatcher
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
