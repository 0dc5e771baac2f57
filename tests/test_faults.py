"""Fault injection: one test per row of DESIGN.md's failure policy, with the real parts.

The daemon runs as a subprocess (`python -m edgevoice run`) streaming a WAV source to an
in-process devserver on 127.0.0.1; faults are injected through the devserver. Each test
asserts the outcome in the table, the exit code where there is one, and counts the audio
the server side lost or received twice (see daemon_harness.account_audio).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from daemon_harness import KEY, RATE, account_audio, running_daemon, wav_config
from fakes import wait_until
from signals import speech

from edgevoice.devserver import DevServer

pytestmark = pytest.mark.integration

SOURCE = speech(90.0, RATE)


def streaming_sessions(server: DevServer) -> int:
    return sum(1 for s in server.sessions() if s.first_append_at is not None)


def audio_of(server: DevServer) -> list[bytes]:
    return [s.audio for s in server.sessions()]


def test_credentials_rejected_at_handshake_exits_77(server: DevServer, tmp_path: Path) -> None:
    server.reject_handshakes(401, count=100)
    with running_daemon(tmp_path, wav_config(tmp_path, server.url, SOURCE)) as daemon:
        assert daemon.wait_exit(20) == 77
        log = daemon.log()
    assert log.count("credentials rejected") == 1
    assert "Traceback" not in log


def test_invalid_api_key_error_event_exits_77(server: DevServer, tmp_path: Path) -> None:
    with running_daemon(tmp_path, wav_config(tmp_path, server.url, SOURCE)) as daemon:
        assert daemon.wait_log(r"streaming to", 15)
        server.send_error("invalid_api_key", "Incorrect API key provided.")
        assert daemon.wait_exit(15) == 77


def test_beta_shape_close_4000_exits_78(server: DevServer, tmp_path: Path) -> None:
    with running_daemon(tmp_path, wav_config(tmp_path, server.url, SOURCE)) as daemon:
        assert daemon.wait_log(r"streaming to", 15)
        server.close_all(4000, "invalid_request_error.beta_api_shape_disabled")
        assert daemon.wait_exit(15) == 78
        assert "beta_api_shape_disabled" in daemon.log()


def test_rejected_session_update_exits_78_naming_the_field(server: DevServer,
                                                          tmp_path: Path) -> None:
    config = wav_config(tmp_path, server.url, SOURCE, {"session": {"voice": "robot"}})
    with running_daemon(tmp_path, config) as daemon:
        assert daemon.wait_exit(20) == 78
        assert "session.audio.output.voice" in daemon.log()
    assert all(s.first_append_at is None for s in server.sessions())


@pytest.mark.parametrize("code", [1001, 1006, 1011, 1012, 1013])
def test_transient_close_reconnects_without_losing_audio(server: DevServer, tmp_path: Path,
                                                         code: int) -> None:
    with running_daemon(tmp_path, wav_config(tmp_path, server.url, SOURCE)) as daemon:
        assert wait_until(lambda: streaming_sessions(server) == 1, 15)
        assert server.wait_for(lambda s: s.sessions()[0].audio_bytes > 48000 * 2, 10)
        server.close_all(code, "test")
        assert wait_until(lambda: streaming_sessions(server) == 2, 15)
        assert server.wait_for(lambda s: s.sessions()[-1].audio_bytes > 48000 * 2, 10)
        assert daemon.stop() == 0
    account = account_audio(SOURCE, audio_of(server))
    assert account.unknown == 0
    assert account.lost == 0, account
    assert account.duplicated <= 13, account  # at most the 250 ms replay guard
    assert not server.sessions()[-1].binary_frames


def test_tcp_reset_reconnects(server: DevServer, tmp_path: Path) -> None:
    with running_daemon(tmp_path, wav_config(tmp_path, server.url, SOURCE)) as daemon:
        assert wait_until(lambda: streaming_sessions(server) == 1, 15)
        server.reset_all()
        assert wait_until(lambda: streaming_sessions(server) == 2, 15)
        assert server.wait_for(lambda s: s.sessions()[-1].audio_bytes > 48000, 10)
        assert daemon.stop() == 0
    account = account_audio(SOURCE, audio_of(server))
    assert account.lost == 0 and account.unknown == 0, account


@pytest.mark.parametrize("status", [500, 503])
def test_handshake_5xx_retries(server: DevServer, tmp_path: Path, status: int) -> None:
    server.reject_handshakes(status, count=3)
    with running_daemon(tmp_path, wav_config(tmp_path, server.url, SOURCE)) as daemon:
        assert wait_until(lambda: streaming_sessions(server) == 1, 20)
        assert daemon.log().count(f"connection failed: HTTP {status} at handshake") == 3
        assert daemon.stop() == 0
    # Everything captured while the handshakes failed was buffered and replayed.
    account = account_audio(SOURCE, audio_of(server))
    assert account.lost == 0 and account.per_session[0][0] == 0, account


def test_rate_limited_handshake_waits_retry_after(server: DevServer, tmp_path: Path) -> None:
    server.reject_handshakes(429, {"Retry-After": "3"}, count=1)
    started = time.monotonic()
    with running_daemon(tmp_path, wav_config(tmp_path, server.url, SOURCE)) as daemon:
        assert wait_until(lambda: streaming_sessions(server) == 1, 20)
        waited = time.monotonic() - started
        assert daemon.stop() == 0
        assert "rate limited" in daemon.log()
    assert waited >= 3.0


def test_benign_and_unknown_events_keep_the_session(server: DevServer,
                                                    tmp_path: Path) -> None:
    with running_daemon(tmp_path, wav_config(tmp_path, server.url, SOURCE)) as daemon:
        assert wait_until(lambda: streaming_sessions(server) == 1, 15)
        server.send_error("response_cancel_not_active", "no active response")
        server.send_malformed()
        server.send_huge(2_000_000)
        server.set_delay(0.3)
        before = server.sessions()[0].audio_bytes
        assert server.wait_for(lambda s: s.sessions()[0].audio_bytes > before + 48000 * 2, 10)
        assert daemon.stop() == 0
        log = daemon.log()
    assert len(server.sessions()) == 1
    assert "malformed JSON" in log
    assert " ended: " not in log and "Traceback" not in log


def test_frozen_session_is_detected_and_replaced(server: DevServer, tmp_path: Path) -> None:
    """Stall: the server keeps reading but sends nothing, not even pongs."""
    with running_daemon(tmp_path, wav_config(tmp_path, server.url, SOURCE)) as daemon:
        assert wait_until(lambda: streaming_sessions(server) == 1, 15)
        frozen_at = time.monotonic()
        server.freeze()
        assert wait_until(lambda: streaming_sessions(server) == 2, 20)
        recovered_in = time.monotonic() - frozen_at
        assert server.wait_for(lambda s: s.sessions()[-1].audio_bytes > 48000, 10)
        assert daemon.stop() == 0
        log = daemon.log()
    # stall_timeout 2 s + probe timeout 2 s, or pong timeout 2 s; plus backoff <= 1 s.
    assert recovered_in < 8.0, log
    account = account_audio(SOURCE, audio_of(server))
    assert account.lost == 0 and account.unknown == 0, account


def test_black_hole_is_detected_and_replaced(server: DevServer, tmp_path: Path) -> None:
    """TCP black hole: nothing read, nothing answered; pongs stop."""
    with running_daemon(tmp_path, wav_config(tmp_path, server.url, SOURCE)) as daemon:
        assert wait_until(lambda: streaming_sessions(server) == 1, 15)
        holed_at = time.monotonic()
        server.blackhole()
        assert daemon.wait_log(r"session sess_\w+ ended: no pong", 15), daemon.log()
        detected_in = time.monotonic() - holed_at
        server.unblackhole()
        assert wait_until(lambda: streaming_sessions(server) >= 2, 20)
        assert daemon.stop() == 0
    assert detected_in < 6.0


def test_outage_buffer_replays_speech_from_the_outage(tmp_path: Path) -> None:
    first = DevServer(api_key=KEY)
    first.start()
    port = first.port
    try:
        config = wav_config(tmp_path, first.url, SOURCE)
        with running_daemon(tmp_path, config) as daemon:
            assert wait_until(lambda: streaming_sessions(first) == 1, 15)
            assert first.wait_for(lambda s: s.sessions()[0].audio_bytes > 48000 * 2, 10)
            first.stop()
            down_at = time.monotonic()
            assert daemon.wait_log(r"connection failed", 10)
            pause = 4.0 - (time.monotonic() - down_at)
            if pause > 0:
                time.sleep(pause)  # the outage itself: server down for 4 s
            second = DevServer(port=port, api_key=KEY)
            second.start()
            try:
                assert wait_until(lambda: streaming_sessions(second) == 1, 15)
                assert second.wait_for(lambda s: s.sessions()[0].audio_bytes > 24000 * 2 * 6,
                                       15)
                assert daemon.stop() == 0
                log = daemon.log()
            finally:
                second.stop()
    finally:
        first.stop()
    account = account_audio(SOURCE, audio_of(first) + audio_of(second))
    assert account.lost == 0 and account.unknown == 0, account
    # The second server got the outage's audio first: its first chunk follows the first's last.
    assert account.per_session[1][0] <= account.per_session[0][1] + 1
    assert "chunks buffered to replay" in log


def test_session_rollover_keeps_every_chunk(tmp_path: Path) -> None:
    """Sessions expire every 5 s; the next one is opened 2.5 s early and switched quietly."""
    server = DevServer(api_key=KEY, expire_after_s=5.0)
    server.start()
    try:
        config = wav_config(tmp_path, server.url, SOURCE,
                            {"reconnect": {"rollover_margin_s": 2.5}})
        with running_daemon(tmp_path, config) as daemon:
            assert wait_until(lambda: streaming_sessions(server) >= 4, 40), daemon.log()
            assert daemon.stop() == 0
            log = daemon.log()
    finally:
        server.stop()
    account = account_audio(SOURCE, audio_of(server))
    assert account.lost == 0 and account.duplicated == 0 and account.unknown == 0, account
    assert log.count("uplink switched to session") >= 3
    # Every session was configured before its first append.
    for record in server.sessions():
        if record.first_append_at is not None:
            assert record.updated_acked_at is not None
            assert record.updated_acked_at < record.first_append_at
            assert record.n_updates >= 1


def test_expiry_error_then_close_takes_the_rollover_path(server: DevServer,
                                                         tmp_path: Path) -> None:
    with running_daemon(tmp_path, wav_config(tmp_path, server.url, SOURCE)) as daemon:
        assert wait_until(lambda: streaming_sessions(server) == 1, 15)
        server.expire_now()
        assert wait_until(lambda: streaming_sessions(server) == 2, 10)
        assert daemon.stop() == 0
        log = daemon.log()
    assert "session expired" in log
    account = account_audio(SOURCE, audio_of(server))
    assert account.lost == 0, account


def test_sigterm_with_black_holed_server_exits_0_within_5s(server: DevServer,
                                                          tmp_path: Path) -> None:
    with running_daemon(tmp_path, wav_config(tmp_path, server.url, SOURCE)) as daemon:
        assert wait_until(lambda: streaming_sessions(server) == 1, 15)
        server.blackhole()
        started = time.monotonic()
        code = daemon.stop(signal.SIGTERM, timeout=10)
        took = time.monotonic() - started
    assert code == 0 and took < 5.0


def test_sigint_closes_with_1000(server: DevServer, tmp_path: Path) -> None:
    with running_daemon(tmp_path, wav_config(tmp_path, server.url, SOURCE)) as daemon:
        assert wait_until(lambda: streaming_sessions(server) == 1, 15)
        assert daemon.stop(signal.SIGINT) == 0
    assert server.wait_for(lambda s: s.sessions()[0].close_code is not None, 5)
    assert server.sessions()[0].close_code == 1000


def test_many_failures_are_logged_once_then_quietly(tmp_path: Path) -> None:
    config = wav_config(tmp_path, "ws://127.0.0.1:9/v1/realtime", SOURCE,
                        {"reconnect": {"initial_s": 0.05, "max_s": 0.1}})
    with running_daemon(tmp_path, config) as daemon:
        assert daemon.wait_log(r"keep retrying quietly", 20)
        assert daemon.wait_log(r"retry in", 0)
        time.sleep(1.0)  # several more attempts happen in this second, none logged
        assert daemon.stop() == 0
        log = daemon.log()
    assert log.count("connection failed: cannot connect: connection refused") == 5
    assert log.count("keep retrying quietly") == 1
    assert "Traceback" not in log
