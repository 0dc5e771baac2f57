"""RealtimeSession over the real websocket-client transport against the local devserver."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from daemon_harness import KEY
from fakes import DirectOutbox, wait_until

from edgevoice.devserver import DevServer
from edgevoice.errors import AuthError, ConfigError, ConnectionLost, SessionConfigRejected
from edgevoice.realtime import protocol
from edgevoice.realtime.dispatch import EventDispatcher
from edgevoice.realtime.protocol import ServerEvent
from edgevoice.realtime.session import RealtimeSession, new_dispatcher
from edgevoice.realtime.transport import WebSocketTransport
from edgevoice.settings import ServerSettings, SessionSettings


class Recorder:
    def __init__(self) -> None:
        self.events: list[ServerEvent] = []
        self.audio = bytearray()
        self.lock = threading.Lock()

    def register(self, dispatcher: EventDispatcher[RealtimeSession]) -> None:
        dispatcher.on_every(self.on_server_event)
        dispatcher.on(self.on_output_audio, "response.output_audio.delta")

    def on_server_event(self, session: RealtimeSession, event: ServerEvent) -> None:
        with self.lock:
            self.events.append(event)

    def on_output_audio(self, session: RealtimeSession, event: ServerEvent) -> None:
        with self.lock:
            self.audio += protocol.decode_audio_delta(event)

    def types(self) -> list[str]:
        with self.lock:
            return [e.type for e in self.events]




def make_session(server: DevServer, session: SessionSettings | None = None,
                 key: str = KEY, headers: dict[str, str] | None = None,
                 recorder: Recorder | None = None) -> RealtimeSession:
    settings = ServerSettings(url=server.url, headers=headers or {})
    mode = (session or SessionSettings()).mode
    url, hdrs = protocol.connect_request(settings, mode, key)
    transport = WebSocketTransport(url, hdrs, connect_timeout_s=5, socket_timeout_s=0.2,
                                   ping_interval_s=1.0, pong_timeout_s=5.0)
    dispatcher = new_dispatcher()
    (recorder or Recorder()).register(dispatcher)
    return RealtimeSession(transport, session or SessionSettings(), dispatcher, DirectOutbox(),
                           update_timeout_s=5.0)


def utterance(seconds: float = 1.0) -> bytes:
    """Silence, a syllable-modulated voiced tone, silence: one VAD turn."""
    rate = 24000
    t = np.arange(int(rate * seconds)) / rate
    voiced = 0.4 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    signal = np.concatenate([np.zeros(rate // 2), voiced, np.zeros(rate)])
    return (signal * 32767).astype(np.int16).tobytes()


def test_configured_before_audio_and_turns_answered(server: DevServer) -> None:
    recorder = Recorder()
    session = make_session(server, recorder=recorder)
    session.establish(threading.Event())
    session.start_reader()
    try:
        pcm = utterance()
        chunk = 24000 * 2 * 20 // 1000
        for i in range(0, len(pcm), chunk):
            session.send_audio(pcm[i:i + chunk], -20.0)
        assert server.wait_for(lambda s: s.sessions()[0].audio_bytes == len(pcm), 10)
        assert server.wait_for(
            lambda s: "response.done" in [e["type"] for e in s.sessions()[0].server_events], 10)
        assert wait_until(lambda: "response.done" in recorder.types(), 5.0)
    finally:
        session.close()
    assert server.wait_for(lambda s: s.sessions()[0].close_code is not None, 5)
    record = server.sessions()[0]
    assert record.audio == pcm
    assert record.binary_frames == 0
    assert record.updated_acked_at is not None and record.first_append_at is not None
    assert record.updated_acked_at < record.first_append_at
    types = recorder.types()
    for expected in ("session.created", "session.updated", "input_audio_buffer.speech_started",
                     "input_audio_buffer.speech_stopped", "response.done"):
        assert expected in types
    assert len(recorder.audio) > 0  # the devserver echoes the utterance
    assert record.close_code == 1000


def test_rejected_update_is_a_config_error_naming_the_field(server: DevServer) -> None:
    session = make_session(server, SessionSettings(voice="robot"))
    with pytest.raises(SessionConfigRejected) as info:
        session.establish(threading.Event())
    session.abort()
    assert "session.audio.output.voice" in str(info.value)
    assert info.value.exit_code == 78
    assert server.sessions()[0].first_append_at is None


def test_wrong_key_is_an_auth_error_without_the_key(server: DevServer) -> None:
    session = make_session(server, key="wrong-key-value-xyz")
    with pytest.raises(AuthError) as info:
        session.establish(threading.Event())
    assert "401" in str(info.value) and "wrong-key-value-xyz" not in str(info.value)
    assert info.value.exit_code == 77


def test_beta_header_closes_4000_as_config_error(server: DevServer) -> None:
    session = make_session(server, headers={"OpenAI-Beta": "realtime=v1"})
    with pytest.raises(ConfigError, match="4000"):
        session.establish(threading.Event())


def test_handshake_429_carries_retry_after(server: DevServer) -> None:
    server.reject_handshakes(429, {"Retry-After": "7"})
    session = make_session(server)
    with pytest.raises(ConnectionLost) as info:
        session.establish(threading.Event())
    assert info.value.retry_after_s == 7.0


def test_unreachable_server_is_a_clear_transient_error() -> None:
    settings = ServerSettings(url="ws://127.0.0.1:9/v1/realtime")
    url, hdrs = protocol.connect_request(settings, "conversation", KEY)
    transport = WebSocketTransport(url, hdrs, connect_timeout_s=2, socket_timeout_s=0.2,
                                   ping_interval_s=1, pong_timeout_s=5)
    with pytest.raises(ConnectionLost, match="cannot connect: connection refused"):
        transport.connect()


def test_transcribe_mode(server: DevServer) -> None:
    recorder = Recorder()
    session = make_session(server, SessionSettings(mode="transcribe"), recorder=recorder)
    session.establish(threading.Event())
    session.start_reader()
    try:
        pcm = utterance()
        for i in range(0, len(pcm), 960):
            session.send_audio(pcm[i:i + 960], -20.0)
        assert wait_until(lambda: "conversation.item.input_audio_transcription.completed"
                     in recorder.types(), 10)
    finally:
        session.close()
    assert server.sessions()[0].type == "transcription"
    assert "response.created" not in recorder.types()


def test_server_close_and_expiry_end_the_session(server: DevServer) -> None:
    session = make_session(server)
    session.establish(threading.Event())
    session.start_reader()
    server.expire_now()
    assert session.failed.wait(5)
    assert session.expired
    assert isinstance(session.failure, ConnectionLost)
    session.close()


def test_probe_is_answered_by_a_live_session(server: DevServer) -> None:
    session = make_session(server)
    session.establish(threading.Event())
    session.start_reader()
    try:
        session.probe()
        assert wait_until(lambda: session.probe_sent_at is None, 5.0)
        server.freeze()
        session.probe()
        assert not wait_until(lambda: session.probe_sent_at is None, 1.0)
    finally:
        session.close()
