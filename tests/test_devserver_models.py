"""The devserver on models: defaults, unknown and retired models, transcription options."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import websocket
from test_devserver import Client, closed_sessions, only_session

from edgevoice.devserver import DevServer
from edgevoice.devserver.main import add_arguments

pytestmark = [pytest.mark.timeout(60), pytest.mark.any_key]

MODEL_CLOSE_REASON = "invalid_request_error.model_not_found"
TRANSCRIPTION = "session.audio.input.transcription"


def control(srv: DevServer, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/control/{path}", timeout=5) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


def not_found(model: str) -> str:
    return f"The model '{model}' does not exist or you do not have access to it."


def assert_refused(client: Client, model: str) -> None:
    """Accepted, then one error event model_not_found, then close 1008."""
    event = client.next_event()
    assert event is not None
    assert event["type"] == "error"
    assert event["error"] == {
        "type": "invalid_request_error",
        "code": "model_not_found",
        "message": not_found(model),
        "param": None,
        "event_id": None,
    }
    assert client.wait_close() == 1008
    assert client.close_reason == MODEL_CLOSE_REASON
    assert client.types() == ["error"]


def update(client: Client, session: dict[str, Any], event_id: str = "evt_update") -> None:
    client.send({"type": "session.update", "event_id": event_id, "session": session})


def transcription_update(**transcription: Any) -> dict[str, Any]:
    return {"type": "transcription", "audio": {"input": {"transcription": transcription}}}


def realtime_transcription_update(**transcription: Any) -> dict[str, Any]:
    return {"type": "realtime", "audio": {"input": {"transcription": transcription}}}


def assert_rejected(client: Client, code: str, param: str, event_id: str = "evt_update") -> None:
    error = client.wait_type("error")["error"]
    assert (error["code"], error["param"], error["event_id"]) == (code, param, event_id)
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert "session.updated" not in client.types()


# --- defaults --------------------------------------------------------------------------


def test_default_models(server: DevServer) -> None:
    client = Client(server, query="")
    session = client.wait_type("session.created")["session"]
    assert session["model"] == "gpt-realtime-2.1"
    # A transcription object without a model gets the default transcription model.
    update(client, realtime_transcription_update(language="en"))
    transcription = client.wait_type("session.updated")["session"]["audio"]["input"][
        "transcription"
    ]
    assert transcription["model"] == "gpt-live-transcribe"
    assert transcription["language"] == "en"
    client.close()
    assert only_session(server).model == "gpt-realtime-2.1"

    transcribe = Client(server, query="intent=transcription")
    session = transcribe.wait_type("session.created")["session"]
    assert session["audio"]["input"]["transcription"]["model"] == "gpt-live-transcribe"
    transcribe.close()


# --- unknown and retired models --------------------------------------------------------


def test_unknown_model_gets_model_not_found_then_close_1008(server: DevServer) -> None:
    client = Client(server, query="model=gpt-realtime-9")
    assert_refused(client, "gpt-realtime-9")
    assert server.wait_for(closed_sessions(1), 5)
    record = only_session(server)
    assert (record.model, record.close_code, record.closed_by) == (
        "gpt-realtime-9",
        1008,
        "server",
    )
    assert record.close_reason == MODEL_CLOSE_REASON
    stats = server.stats()
    assert stats["models_rejected"] == 1
    assert stats["sessions"] == 1
    # Every realtime model the SDK types list is known.
    for model in ("gpt-realtime", "gpt-realtime-2.1-mini", "gpt-audio-1.5"):
        ok = Client(server, query=f"model={model}")
        assert ok.wait_type("session.created")["session"]["model"] == model
        ok.close()
    assert server.stats()["models_rejected"] == 1


def test_azure_path_takes_any_deployment_but_not_a_retired_one() -> None:
    srv = DevServer(retired_models=["old-deployment"])
    srv.start()
    try:
        dep = Client(srv, path="/openai/v1/realtime", query="model=my-deployment")
        assert dep.wait_type("session.created")["session"]["model"] == "my-deployment"
        dep.close()
        old = Client(srv, path="/openai/v1/realtime", query="model=old-deployment")
        assert_refused(old, "old-deployment")
        assert srv.stats()["models_rejected"] == 1
    finally:
        srv.stop()


def test_retired_models_from_the_constructor() -> None:
    srv = DevServer(retired_models=("gpt-realtime", "gpt-4o-mini-transcribe"))
    srv.start()
    try:
        assert srv.retired_models == frozenset({"gpt-realtime", "gpt-4o-mini-transcribe"})
        assert_refused(Client(srv, query="model=gpt-realtime"), "gpt-realtime")
        current = Client(srv, query="model=gpt-realtime-2.1")
        current.wait_type("session.created")
        # A retired transcription model in session.update: error, no session.updated.
        update(current, realtime_transcription_update(model="gpt-4o-mini-transcribe"))
        assert_rejected(current, "model_not_found", f"{TRANSCRIPTION}.model")
        update(current, realtime_transcription_update(model="gpt-transcribe"), "evt_ok")
        current.wait_type("session.updated")
        current.close()
        stats = srv.stats()
        assert stats["models_rejected"] == 1
        assert stats["transcription_models_rejected"] == 1
        assert stats["retired_models"] == ["gpt-4o-mini-transcribe", "gpt-realtime"]
    finally:
        srv.stop()


def test_retire_model_control_op(server: DevServer) -> None:
    assert control(server, "retire_model?name=gpt-realtime-2")["ok"]
    server.retire_model("whisper-1")
    assert server.stats()["retired_models"] == ["gpt-realtime-2", "whisper-1"]
    assert_refused(Client(server, query="model=gpt-realtime-2"), "gpt-realtime-2")

    transcribe = Client(server, query="intent=transcription")
    created = transcribe.wait_type("session.created")["session"]
    update(transcribe, transcription_update(model="whisper-1"), "evt_whisper")
    error = transcribe.wait_type("error")["error"]
    assert error["code"] == "model_not_found"
    assert error["param"] == f"{TRANSCRIPTION}.model"
    assert error["message"] == not_found("whisper-1")
    assert error["event_id"] == "evt_whisper"
    # The old configuration silently stays.
    update(transcribe, {"type": "transcription"}, "evt_probe")
    updated = transcribe.wait_type("session.updated")["session"]
    assert transcribe.types().count("session.updated") == 1
    assert updated["audio"] == created["audio"]
    transcribe.close()
    assert server.stats()["transcription_models_rejected"] == 1

    server.unretire_model("gpt-realtime-2")
    again = Client(server, query="model=gpt-realtime-2")
    assert again.wait_type("session.created")
    again.close()
    with pytest.raises(urllib.error.HTTPError) as info:
        control(server, "retire_model")  # name is required
    assert info.value.code == 400


def test_reject_model_http_answers_404_naming_the_model(server: DevServer) -> None:
    server.reject_model_http()
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        Client(server, query="model=gpt-realtime-2.1-mini")
    assert info.value.status_code == 404
    body = json.loads(info.value.resp_body or b"{}")
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"] == not_found("gpt-realtime-2.1-mini")
    assert server.sessions() == []

    assert control(server, "reject_model_http?status=400&count=2")["ok"]
    for _ in range(2):
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            Client(server)
        assert info.value.status_code == 400
    ok = Client(server)
    assert ok.wait_type("session.created")
    ok.close()
    stats = server.stats()
    assert stats["handshakes_model_rejected"] == 3
    assert stats["handshakes_rejected"] == 0
    with pytest.raises(urllib.error.HTTPError) as bad:
        control(server, "reject_model_http?status=500")
    assert bad.value.code == 400
    with pytest.raises(ValueError, match="status"):
        server.reject_model_http(status=503)


def test_retired_model_cli_option() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--retired-model", "gpt-realtime", "--retired-model", "whisper-1"])
    assert args.retired_model == ["gpt-realtime", "whisper-1"]
    assert parser.parse_args([]).retired_model == []


# --- transcription options -------------------------------------------------------------


def test_languages_and_keywords_are_accepted_for_gpt_live_transcribe(server: DevServer) -> None:
    client = Client(server, query="intent=transcription")
    client.wait_type("session.created")
    update(
        client,
        transcription_update(
            model="gpt-live-transcribe", languages=["en", "de"], keywords=["edgevoice", "ALSA"]
        ),
    )
    transcription = client.wait_type("session.updated")["session"]["audio"]["input"][
        "transcription"
    ]
    assert transcription["model"] == "gpt-live-transcribe"
    assert transcription["languages"] == ["en", "de"]
    assert transcription["keywords"] == ["edgevoice", "ALSA"]
    client.close()

    realtime = Client(server)
    realtime.wait_type("session.created")
    update(realtime, realtime_transcription_update(model="gpt-transcribe", languages=["fr"]))
    realtime.wait_type("session.updated")
    realtime.close()


@pytest.mark.parametrize(
    ("transcription", "code", "param"),
    [
        ({"model": "whisper-1", "languages": ["en"]}, "unsupported_parameter", "languages"),
        ({"model": "whisper-1", "keywords": ["edge"]}, "unsupported_parameter", "keywords"),
        ({"languages": ["en"], "model": "gpt-4o-transcribe"}, "unsupported_parameter", "languages"),
        ({"model": "gpt-live-transcribe", "languages": "en"}, "invalid_type", "languages"),
        (
            {"model": "gpt-live-transcribe", "languages": ["english"]},
            "invalid_value",
            "languages[0]",
        ),
        ({"model": "gpt-live-transcribe", "keywords": [1]}, "invalid_type", "keywords[0]"),
        ({"model": "gpt-live-transcribe", "delay": "low"}, "unsupported_parameter", "delay"),
        ({"model": "gpt-realtime-whisper", "delay": "slow"}, "invalid_value", "delay"),
        ({"model": "gpt-realtime-whisper", "prompt": "tech"}, "unsupported_parameter", "prompt"),
        ({"model": "gpt-live-transcribe", "speakers": 2}, "unknown_parameter", "speakers"),
    ],
)
def test_transcription_options_are_checked_against_the_model(
    server: DevServer, transcription: dict[str, Any], code: str, param: str
) -> None:
    client = Client(server)
    client.wait_type("session.created")
    update(client, realtime_transcription_update(**transcription))
    assert_rejected(client, code, f"{TRANSCRIPTION}.{param}")
    client.close()


def test_gpt_realtime_whisper_needs_turn_detection_null(server: DevServer) -> None:
    client = Client(server, query="intent=transcription")
    client.wait_type("session.created")  # turn detection defaults to server_vad
    update(client, transcription_update(model="gpt-realtime-whisper", delay="low"), "evt_vad")
    assert_rejected(client, "invalid_value", f"{TRANSCRIPTION}.model", "evt_vad")
    session = {
        "type": "transcription",
        "audio": {
            "input": {
                "transcription": {"model": "gpt-realtime-whisper", "delay": "low"},
                "turn_detection": None,
            }
        },
    }
    update(client, session, "evt_ok")
    audio_in = client.wait_type("session.updated")["session"]["audio"]["input"]
    assert audio_in["turn_detection"] is None
    assert audio_in["transcription"]["delay"] == "low"
    assert "prompt" not in audio_in["transcription"]
    # Turning VAD back on while whisper transcribes is refused, naming turn_detection.
    vad = {"type": "transcription", "audio": {"input": {"turn_detection": {"type": "server_vad"}}}}
    update(client, vad, "evt_vad_again")
    error = client.wait_type("error")["error"]
    assert (error["code"], error["param"]) == (
        "invalid_value",
        "session.audio.input.turn_detection",
    )
    client.close()
