"""The local Realtime-compatible server: protocol fidelity and fault injection."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websocket
from signals import speech

from edgevoice.devserver import DevServer, SessionRecord
from edgevoice.devserver.vad import EnergyVad, convert, decode

pytestmark = [pytest.mark.timeout(60), pytest.mark.any_key]

KEY = "sk-devserver-test-0000"
RATE = 24000
BYTES_PER_MS = RATE * 2 // 1000


# --- helpers ---------------------------------------------------------------------------


class Client:
    """websocket-client connection that parses events and remembers them."""

    def __init__(
        self,
        srv: DevServer,
        *,
        key: str | None = KEY,
        query: str = "model=gpt-realtime",
        path: str = "/v1/realtime",
        headers: list[str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        hdrs = list(headers or [])
        if key is not None:
            hdrs.append(f"Authorization: Bearer {key}")
        url = f"ws://127.0.0.1:{srv.port}{path}" + (f"?{query}" if query else "")
        self.ws = websocket.create_connection(url, header=hdrs, timeout=timeout)
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.n = 0

    def send(self, event: dict[str, Any]) -> None:
        self.ws.send(json.dumps(event))

    def next_event(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next event, or None when the server closed (close code kept)."""
        self.ws.settimeout(timeout)
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                self.close_reason = data[2:].decode()
                return None
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            text = data.decode()
            self.raw.append(text)
            try:
                event = json.loads(text)
            except ValueError:
                event = {"type": "<not json>", "text": text}
            self.events.append(event)
            return dict(event)

    def wait_type(self, etype: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(max(0.05, deadline - time.monotonic()))
            if event is None:
                raise AssertionError(f"closed {self.close_code} while waiting for {etype}")
            if event["type"] == etype:
                return event

    def wait_close(self, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while self.next_event(max(0.05, deadline - time.monotonic())) is not None:
            pass
        assert self.close_code is not None
        return self.close_code

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def close(self) -> None:
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self.ws.close(timeout=1)


def realtime_update(**audio_input: Any) -> dict[str, Any]:
    inp: dict[str, Any] = {"format": {"type": "audio/pcm", "rate": 24000}}
    inp.update(audio_input)
    return {
        "type": "session.update",
        "event_id": "evt_update_1",
        "session": {"type": "realtime", "instructions": "be brief", "audio": {"input": inp}},
    }


def append(pcm: bytes, event_id: str = "evt_append") -> dict[str, Any]:
    return {
        "type": "input_audio_buffer.append",
        "event_id": event_id,
        "audio": base64.b64encode(pcm).decode(),
    }


def speech_signal() -> tuple[bytes, int, int]:
    """0.5 s of room noise, 1 s of talk (loud from its first to its last ms), 1 s of room."""
    pcm = speech(2.5, RATE, seed=7, talk=[(0.5, 1.5)]).astype("<i2").tobytes()
    return pcm, 500, 1500  # onset and end of the talk, ms


def send_audio(client: Client, pcm: bytes, chunk_ms: int = 20) -> None:
    step = chunk_ms * BYTES_PER_MS
    for i in range(0, len(pcm), step):
        client.send(append(pcm[i : i + step], f"evt_a{i}"))


def only_session(srv: DevServer) -> SessionRecord:
    sessions = srv.sessions()
    assert len(sessions) == 1
    return sessions[0]


def closed_sessions(n: int) -> Any:
    return lambda srv: sum(1 for r in srv.sessions() if r.closed_at is not None) >= n


# --- handshake -------------------------------------------------------------------------


def test_handshake_without_key_is_401(server: DevServer) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        Client(server, key=None)
    assert info.value.status_code == 401
    assert server.sessions() == []


def test_handshake_with_wrong_key_is_401_when_a_key_is_configured() -> None:
    srv = DevServer(api_key=KEY)
    srv.start()
    try:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            Client(srv, key="sk-wrong")
        assert info.value.status_code == 401
        ok = Client(srv)  # the right key, as a Bearer token
        assert ok.wait_type("session.created")
        ok.close()
        azure = Client(
            srv,
            key=None,
            path="/openai/v1/realtime",
            query="model=dep",
            headers=[f"api-key: {KEY}"],
        )
        assert azure.wait_type("session.created")["session"]["model"] == "dep"
        azure.close()
        assert srv.stats()["handshakes_unauthorized"] == 1
    finally:
        srv.stop()


def test_unknown_path_is_404(server: DevServer) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        Client(server, path="/openai/realtime", query="api-version=2024-10-01-preview")
    assert info.value.status_code == 404


def test_beta_header_is_closed_with_4000(server: DevServer) -> None:
    client = Client(server, headers=["OpenAI-Beta: realtime=v1"])
    assert client.next_event() is None
    assert client.close_code == 4000
    assert client.close_reason == "invalid_request_error.beta_api_shape_disabled"
    assert client.events == []


# --- session configuration -------------------------------------------------------------


def test_session_created_carries_expires_at(server: DevServer) -> None:
    client = Client(server)
    created = client.wait_type("session.created")
    session = created["session"]
    assert created["event_id"].startswith("event_")
    assert session["id"].startswith("sess_")
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert abs(session["expires_at"] - (time.time() + 3600)) < 5
    client.close()

    transcription = Client(server, query="intent=transcription")
    session = transcription.wait_type("session.created")["session"]
    assert session["type"] == "transcription"
    assert "output" not in session["audio"]
    transcription.close()


def test_valid_update_is_acknowledged_with_the_effective_config(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    update = realtime_update(
        turn_detection={"type": "server_vad", "silence_duration_ms": 700},
        transcription={"model": "gpt-4o-mini-transcribe", "language": "en"},
    )
    client.send(update)
    session = client.wait_type("session.updated")["session"]
    td = session["audio"]["input"]["turn_detection"]
    assert td["silence_duration_ms"] == 700
    assert td["prefix_padding_ms"] == 300  # untouched fields keep their values
    assert session["audio"]["input"]["transcription"]["language"] == "en"
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["instructions"] == "be brief"
    assert server.wait_for(lambda s: only_session(s).updated_acked_at is not None, 5)
    # Only the fields present change.
    client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "x"}})
    session = client.wait_type("session.updated")["session"]
    assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 700
    assert session["instructions"] == "x"
    client.close()


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        (
            {
                "type": "realtime",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 22050}}},
            },
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        (
            {"type": "realtime", "modalities": ["audio", "text"]},
            "unknown_parameter",
            "session.modalities",
        ),
        (
            {"type": "realtime", "input_audio_format": "pcm16"},
            "unknown_parameter",
            "session.input_audio_format",
        ),
        (
            {"type": "realtime", "turn_detection": None},
            "unknown_parameter",
            "session.turn_detection",
        ),
        ({"type": "realtime", "voice": "alloy"}, "unknown_parameter", "session.voice"),
        ({"modalities": ["audio"]}, "missing_required_parameter", "session.type"),
        ({"type": "transcription"}, "invalid_value", "session.type"),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/wav"}}}},
            "invalid_value",
            "session.audio.input.format.type",
        ),
        (
            {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}},
            "invalid_value",
            "session.audio.input.turn_detection.type",
        ),
    ],
)
def test_rejected_update_gets_an_error_and_no_session_updated(
    server: DevServer, session: dict[str, Any], code: str, param: str
) -> None:
    client = Client(server)
    created = client.wait_type("session.created")["session"]
    client.send({"type": "session.update", "event_id": "evt_bad", "session": session})
    error = client.wait_type("error")["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] == param
    assert error["event_id"] == "evt_bad"
    assert error["message"]
    # The old configuration stays; the next valid update is the first acknowledged one.
    client.send({"type": "session.update", "event_id": "evt_ok", "session": {"type": "realtime"}})
    updated = client.wait_type("session.updated")["session"]
    assert client.types().count("session.updated") == 1
    assert updated["audio"] == created["audio"]
    client.close()


def test_g711_formats_are_accepted(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    client.send(realtime_update(format={"type": "audio/pcmu"}))
    session = client.wait_type("session.updated")["session"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    client.close()


# --- client events ---------------------------------------------------------------------


def test_bad_appends_get_errors_and_the_session_stays_open(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    client.send(append(b"\x01\x02\x03", "evt_odd"))
    error = client.wait_type("error")["error"]
    assert (error["code"], error["param"], error["event_id"]) == (
        "invalid_value",
        "audio",
        "evt_odd",
    )
    client.send({"type": "input_audio_buffer.append", "event_id": "evt_b64", "audio": "!!!"})
    error = client.wait_type("error")["error"]
    assert (error["code"], error["param"], error["event_id"]) == (
        "invalid_value",
        "audio",
        "evt_b64",
    )
    client.ws.send("this is not json")
    assert client.wait_type("error")["error"]["code"] == "invalid_json"
    client.send({"type": "no.such.event", "event_id": "evt_unknown"})
    error = client.wait_type("error")["error"]
    assert error["type"] == "invalid_request_error"
    assert error["event_id"] == "evt_unknown"
    client.send({"type": "response.cancel", "event_id": "evt_cancel"})
    assert client.wait_type("error")["error"]["code"] == "response_cancel_not_active"
    client.send({"type": "input_audio_buffer.commit", "event_id": "evt_commit"})
    assert client.wait_type("error")["error"]["code"] == "input_audio_buffer_commit_empty"
    client.send({"type": "session.update", "session": {"type": "realtime"}})
    client.wait_type("session.updated")
    client.close()


def test_binary_frame_is_closed_with_a_bare_1000(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    client.ws.send_binary(b"\x00\x01\x02\x03")
    assert client.wait_close() == 1000
    assert client.close_reason == ""
    assert "error" not in client.types()
    assert server.wait_for(closed_sessions(1), 5)
    record = only_session(server)
    assert record.binary_frames == 1
    assert record.close_code == 1000


def test_manual_turns_with_turn_detection_off(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    client.send(realtime_update(turn_detection=None))
    assert (
        client.wait_type("session.updated")["session"]["audio"]["input"]["turn_detection"] is None
    )
    pcm, _, _ = speech_signal()
    send_audio(client, pcm[: 300 * BYTES_PER_MS])
    client.send({"type": "input_audio_buffer.commit", "event_id": "evt_commit"})
    committed = client.wait_type("input_audio_buffer.committed")
    assert "input_audio_buffer.speech_started" not in client.types()
    client.send({"type": "response.create", "event_id": "evt_resp"})
    client.send({"type": "response.create", "event_id": "evt_resp2"})
    error = client.wait_type("error")["error"]
    assert error["code"] == "conversation_already_has_active_response"
    assert error["event_id"] == "evt_resp2"
    done = client.wait_type("response.done")
    assert done["response"]["status"] == "completed"
    audio = b"".join(
        base64.b64decode(e["delta"])
        for e in client.events
        if e["type"] == "response.output_audio.delta"
    )
    assert audio == pcm[: 300 * BYTES_PER_MS]
    assert committed["item_id"].startswith("item_")
    record = only_session(server)
    appends = [e for e in record.client_events if e["type"] == "input_audio_buffer.append"]
    assert appends[0]["audio"] == 20 * BYTES_PER_MS  # audio replaced by its decoded length
    client.close()


def test_vad_turn_in_conversation_mode_echoes_the_utterance(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    client.send(realtime_update(transcription={"model": "gpt-4o-mini-transcribe"}))
    client.wait_type("session.updated")
    pcm, onset_ms, end_ms = speech_signal()
    send_audio(client, pcm)

    started = client.wait_type("input_audio_buffer.speech_started")
    stopped = client.wait_type("input_audio_buffer.speech_stopped")
    committed = client.wait_type("input_audio_buffer.committed")
    transcript = client.wait_type("conversation.item.input_audio_transcription.completed")
    client.wait_type("response.created")
    done = client.wait_type("response.done")

    start, stop = started["audio_start_ms"], stopped["audio_end_ms"]
    assert start == onset_ms - 300  # prefix padding
    assert end_ms + 500 <= stop <= end_ms + 600  # silence_duration_ms hangover
    item = started["item_id"]
    assert stopped["item_id"] == committed["item_id"] == transcript["item_id"] == item
    assert committed["previous_item_id"] is None
    seconds = (stop - start) / 1000
    assert transcript["transcript"] == f"[speech {seconds:.2f} s, devserver cannot transcribe]"

    audio = b"".join(
        base64.b64decode(e["delta"])
        for e in client.events
        if e["type"] == "response.output_audio.delta"
    )
    assert audio == pcm[start * BYTES_PER_MS : stop * BYTES_PER_MS]
    deltas = [e for e in client.events if e["type"] == "response.output_audio.delta"]
    assert len(deltas) == -(-len(audio) // (100 * BYTES_PER_MS))  # ~100 ms per delta
    text = f"Echoing {seconds:.2f} s of your speech."
    assert client.wait_type("rate_limits.updated")
    assert done["response"]["status"] == "completed"
    order = client.types()
    for name in (
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
    ):
        assert order.index("response.created") < order.index(name) < order.index("response.done")
    assert (
        next(e for e in client.events if e["type"] == "response.output_audio_transcript.done")[
            "transcript"
        ]
        == text
    )
    assert server.received_audio() == pcm
    client.close()


def test_vad_turn_in_transcription_mode_sends_no_response(server: DevServer) -> None:
    client = Client(server, query="intent=transcription")
    client.wait_type("session.created")
    client.send(
        {
            "type": "session.update",
            "session": {
                "type": "transcription",
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}
                },
            },
        }
    )
    client.wait_type("session.updated")
    pcm, _, end_ms = speech_signal()
    send_audio(client, pcm)
    stopped = client.wait_type("input_audio_buffer.speech_stopped")
    assert end_ms + 300 <= stopped["audio_end_ms"] <= end_ms + 400
    client.wait_type("conversation.item.input_audio_transcription.completed")
    client.send({"type": "session.update", "session": {"type": "transcription"}})
    client.wait_type("session.updated")  # everything the turn produced came before this
    assert not [t for t in client.types() if t.startswith("response.")]
    client.close()


def test_energy_vad_ignores_quiet_audio() -> None:
    vad = EnergyVad(24000)
    rng = np.random.default_rng(3)
    quiet = np.round(rng.normal(0, 30, RATE * 3)).astype(np.int16)  # about -60 dBFS
    assert vad.feed(quiet) == []
    assert not vad.in_speech


def test_g711_round_trip() -> None:
    t = np.arange(2400) / RATE
    x = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    for fmt in ("audio/pcmu", "audio/pcma"):
        y = decode(convert(x.astype("<i2").tobytes(), "audio/pcm", fmt), fmt)
        assert y.size == x.size // 3
        # Through G.711 and 24 -> 8 kHz: the shape survives (correlation near 1).
        ref = x[::3].astype(np.float64)
        assert float(np.corrcoef(ref, y.astype(np.float64))[0, 1]) > 0.99


# --- expiry ----------------------------------------------------------------------------


def test_session_expiry_sends_session_expired_then_1001(server: DevServer) -> None:
    server.set_expire_after(1.0)
    client = Client(server)
    created = client.wait_type("session.created")["session"]
    assert created["expires_at"] <= time.time() + 1.5
    error = client.wait_type("error", timeout=5)["error"]
    assert error["code"] == "session_expired"
    assert error["message"] == "Your session hit the maximum duration of 60 minutes."
    assert client.wait_close() == 1001
    assert server.wait_for(closed_sessions(1), 5)
    assert only_session(server).expired


def test_expire_now_close_only(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    server.expire_now(close_only=True)
    assert client.wait_close() == 1001
    assert "error" not in client.types()


# --- faults ----------------------------------------------------------------------------


def test_close_all_with_a_code(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    server.close_all(1011, "devserver fault")
    assert client.wait_close() == 1011
    assert client.close_reason == "devserver fault"
    assert server.wait_for(closed_sessions(1), 5)
    assert only_session(server).close_code == 1011


def test_freeze_sends_nothing_not_even_pongs(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    server.freeze()
    client.ws.ping("are you there")
    client.send(
        {"type": "session.update", "event_id": "evt_probe", "session": {"type": "realtime"}}
    )
    # The server read and processed the probe, but nothing comes back.
    assert server.wait_for(lambda s: only_session(s).dropped_events >= 1, 5)
    client.ws.settimeout(0.3)
    with pytest.raises(websocket.WebSocketTimeoutException):
        client.ws.recv_data(control_frame=True)
    assert only_session(server).frozen
    server.unfreeze()
    client.ws.settimeout(5)
    opcode, data = client.ws.recv_data(control_frame=True)  # the held pong, late
    assert opcode == websocket.ABNF.OPCODE_PONG
    assert data == b"are you there"
    client.send({"type": "session.update", "session": {"type": "realtime"}})
    client.wait_type("session.updated")
    assert client.types().count("session.updated") == 1  # the frozen one was dropped
    client.close()


def test_blackhole_stops_reading_and_hangs_new_handshakes(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    server.blackhole()
    client.ws.settimeout(1.0)
    chunk = json.dumps(append(b"\x00\x00" * 120_000))  # 240 KB of "audio" per event
    with pytest.raises(websocket.WebSocketTimeoutException):
        for _ in range(400):  # far more than loopback socket buffers hold
            client.ws.send(chunk)
    appends_before = server.stats()["appends"]
    with pytest.raises((websocket.WebSocketTimeoutException, TimeoutError)):
        Client(server, timeout=0.5)
    assert server.stats()["appends"] == appends_before
    client.ws.shutdown()  # type: ignore[no-untyped-call]
    server.unblackhole()
    fresh = Client(server)
    assert fresh.wait_type("session.created")
    fresh.close()


def test_reset_all_aborts_with_rst(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    server.reset_all()
    with pytest.raises((ConnectionResetError, websocket.WebSocketConnectionClosedException)):
        client.next_event(timeout=5)
    assert server.wait_for(closed_sessions(1), 5)
    record = only_session(server)
    assert (record.close_code, record.closed_by) == (1006, "abort")


def test_reject_handshakes_with_retry_after(server: DevServer) -> None:
    server.reject_handshakes(429, {"Retry-After": "3"})
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        Client(server)
    assert info.value.status_code == 429
    assert (info.value.resp_headers or {})["retry-after"] == "3"
    server.reject_handshakes(503, count=2)
    for _ in range(2):
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            Client(server)
        assert info.value.status_code == 503
    ok = Client(server)
    assert ok.wait_type("session.created")
    ok.close()
    assert server.stats()["handshakes_rejected"] == 3


def test_malformed_huge_and_arbitrary_error_frames(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    server.send_malformed()
    assert client.wait_type("<not json>")["text"] == "{this is not json"
    server.send_huge(2_000_000)
    huge = client.wait_type("devserver.huge")
    assert len(client.raw[-1]) == 2_000_000
    assert huge["event_id"].startswith("event_")
    server.send_error("rate_limit_exceeded", "slow down", "rate_limit_error")
    error = client.wait_type("error")["error"]
    assert (error["code"], error["type"], error["message"]) == (
        "rate_limit_exceeded",
        "rate_limit_error",
        "slow down",
    )
    client.close()


def test_delay_holds_back_every_event(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    server.set_delay(0.3)
    sent = time.monotonic()
    client.send({"type": "session.update", "session": {"type": "realtime"}})
    client.wait_type("session.updated")
    assert time.monotonic() - sent >= 0.3
    client.close()


def test_close_all_1006_drops_the_connection(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    server.close_all(1006)
    with pytest.raises((ConnectionResetError, websocket.WebSocketConnectionClosedException)):
        client.next_event(timeout=5)


# --- control endpoint, recording, CLI --------------------------------------------------


def _control(srv: DevServer, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/control/{path}", timeout=5) as r:
        assert r.status == 200
        result: dict[str, Any] = json.loads(r.read())
        return result


def test_http_control_endpoint(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    send_audio(client, b"\x01\x00" * 2400)
    assert server.wait_for(lambda s: s.stats()["appends"] == 5, 5)
    stats = _control(server, "stats")["result"]
    assert stats["sessions"] == 1
    assert stats["appends"] == 5
    assert stats["audio_bytes"] == 4800
    assert stats["binary_frames"] == 0
    assert _control(server, "close_all?code=1012&reason=restart")["ok"]
    assert client.wait_close() == 1012
    _control(server, "reject_handshakes?status=503&retry_after=7")
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        Client(server)
    assert info.value.status_code == 503
    assert (info.value.resp_headers or {})["retry-after"] == "7"
    with pytest.raises(urllib.error.HTTPError) as http_error:
        _control(server, "no_such_fault")
    assert http_error.value.code == 404
    sessions = _control(server, "sessions")["result"]
    assert sessions[0]["audio_bytes"] == 4800


def test_control_endpoint_can_be_disabled() -> None:
    srv = DevServer(control=False)
    srv.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            _control(srv, "stats")
        assert info.value.code == 404
    finally:
        srv.stop()


def test_record_dir_writes_a_wav_per_session(tmp_path: Path) -> None:
    srv = DevServer(record_dir=tmp_path)
    srv.start()
    try:
        client = Client(srv)
        client.wait_type("session.created")
        pcm, _, _ = speech_signal()
        send_audio(client, pcm[: 500 * BYTES_PER_MS])
        client.close()
        assert srv.wait_for(closed_sessions(1), 5)
        record = only_session(srv)
        assert record.wav_path is not None
        with wave.open(str(record.wav_path), "rb") as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
            assert wav.readframes(wav.getnframes()) == pcm[: 500 * BYTES_PER_MS]
    finally:
        srv.stop()


def test_cli_prints_the_url_and_stops_on_sigterm() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgevoice.devserver.main", "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("devserver listening on ws://127.0.0.1:")
        assert line.endswith("/v1/realtime")
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime",
            header=[f"Authorization: Bearer {KEY}"],
        )
        assert json.loads(ws.recv())["type"] == "session.created"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        ws.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stop_returns_with_open_and_frozen_sessions() -> None:
    srv = DevServer()
    srv.start()
    clients: list[Client] = []
    try:
        clients = [Client(srv) for _ in range(3)]
        for c in clients:
            c.wait_type("session.created")
        srv.freeze()
    finally:
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 5
        for c in clients:
            c.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
