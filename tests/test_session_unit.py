"""RealtimeSession's decisions while configuring, against a scripted transport (unit fake)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from edgevoice.errors import AuthError, ConfigError, ConnectionLost, SessionConfigRejected
from edgevoice.realtime.protocol import ServerEvent
from edgevoice.realtime.session import RealtimeSession
from edgevoice.settings import SessionSettings


class ScriptedTransport:
    """Answers session.update with the scripted events; records what was sent."""

    def __init__(self, after_update: list[dict[str, Any]]) -> None:
        self.sent: list[dict[str, Any]] = []
        self._queue: list[str] = [json.dumps({"type": "session.created", "event_id": "e0",
                                              "session": {"id": "sess_1", "expires_at": 9e9}})]
        self._after_update = after_update
        self.closed = False

    def connect(self) -> None:
        pass

    def send_event(self, event: dict[str, Any]) -> None:
        self.sent.append(event)
        if event["type"] == "session.update":
            for item in self._after_update:
                reply = item
                if item.get("error", {}).get("event_id") == "$update":
                    reply = {**item, "error": {**item["error"], "event_id": event["event_id"]}}
                self._queue.append(json.dumps(reply))

    def recv_text(self) -> str | None:
        return self._queue.pop(0) if self._queue else None

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class Quiet:
    def on_server_event(self, event: ServerEvent) -> None:
        pass

    def on_output_audio(self, pcm: bytes) -> None:
        pass


def error(code: str, type_: str = "invalid_request_error", event_id: str = "",
          param: str = "") -> dict[str, Any]:
    return {"type": "error", "event_id": "e1",
            "error": {"type": type_, "code": code, "message": code, "param": param,
                      "event_id": event_id}}


def establish(after_update: list[dict[str, Any]]) -> RealtimeSession:
    session = RealtimeSession(ScriptedTransport(after_update), SessionSettings(), Quiet(),
                              update_timeout_s=0.5)
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
    session = RealtimeSession(ScriptedTransport([]), SessionSettings(), Quiet(),
                              update_timeout_s=0.5)
    session.fail(ConnectionLost("send failed: broken pipe"))
    session.fail(ConfigError("close 4000"))
    assert isinstance(session.failure, ConfigError)
    session.fail(ConnectionLost("later"))
    assert isinstance(session.failure, ConfigError)
