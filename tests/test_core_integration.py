"""The core as a user meets it: reload after an answer, a late microphone, event logging,
a model the server no longer serves. Real daemon process, devserver, notify socket, ALSA."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from alsa_fixtures import fake_microphone
from daemon_harness import FAST, merge, running_daemon, wav_config
from fakes import wait_until
from signals import speech
from systemd_fixtures import HALF_S, NotifyRecorder, gaps, notify_env

from edgevoice.devserver import DevServer
from edgevoice.devserver.records import SessionRecord
from edgevoice.errors import EXIT_CONFIG

pytestmark = pytest.mark.integration

SOURCE = speech(90.0, seed=5)


def _answered(record: SessionRecord) -> bool:
    return any(e["type"] == "response.output_audio.delta" for e in record.server_events)


def _effective(record: SessionRecord) -> dict[str, Any]:
    updated = [e for e in record.server_events if e["type"] == "session.updated"]
    session: dict[str, Any] = updated[-1]["session"]
    return session


def _updates(record: SessionRecord) -> list[dict[str, Any]]:
    return [e["session"] for e in record.client_events if e["type"] == "session.update"]


def test_reload_after_a_spoken_answer_applies_instructions_now_and_voice_next_session(
        server: DevServer, notify: NotifyRecorder, tmp_path: Path) -> None:
    config = wav_config(tmp_path, server.url, SOURCE)
    with running_daemon(tmp_path, config, env=notify_env(notify)) as daemon:
        assert server.wait_for(lambda s: bool(s.sessions()) and _answered(s.sessions()[0]),
                               30), daemon.log()
        changed = merge(config, {"session": {"instructions": "Answer in one word.",
                                             "voice": "cedar"}})
        daemon.config_path.write_text(yaml.safe_dump(changed))
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_log(r"configuration reloaded", 10), daemon.log()
        assert server.wait_for(
            lambda s: _effective(s.sessions()[0]).get("instructions") == "Answer in one word.",
            10), daemon.log()
        first = server.sessions()[0]
        assert _updates(first)[-1] == {"type": "realtime",
                                       "instructions": "Answer in one word."}
        assert not [e for e in first.server_events if e["type"] == "error"]
        assert _effective(first)["audio"]["output"]["voice"] == "marin"
        assert daemon.wait_log(r"reload: the voice change to 'cedar' applies from the next "
                               r"session", 5)
        # The next session (here: the server restarts this one) gets the new voice.
        server.close_all(1012, "restart")
        assert server.wait_for(lambda s: len(s.sessions()) >= 2
                               and s.sessions()[1].updated_acked_at is not None, 15)
        second = server.sessions()[1]
        assert _effective(second)["audio"]["output"]["voice"] == "cedar"
        assert _effective(second)["instructions"] == "Answer in one word."
        assert daemon.stop() == 0
    assert "reload rejected" not in daemon.log()


def test_reload_rejected_by_the_server_is_reported_and_shown_in_the_status(
        server: DevServer, notify: NotifyRecorder, tmp_path: Path) -> None:
    # A quiet room: no turn, no answer, so the voice may still change (but not to a voice
    # the server does not have).
    config = wav_config(tmp_path, server.url, speech(30.0, talk=[]))
    with running_daemon(tmp_path, config, env=notify_env(notify)) as daemon:
        assert wait_until(lambda: any(s.first_append_at for s in server.sessions()), 15)
        changed = merge(config, {"session": {"voice": "no-such-voice"}})
        daemon.config_path.write_text(yaml.safe_dump(changed))
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_log(r"reload rejected: session.audio.output.voice, ", 10), \
            daemon.log()
        assert notify.wait_for("STATUS=", timeout=5)
        assert wait_until(lambda: any("reload rejected" in m.payload
                                      for m in notify.lines("STATUS=")), 5)
        assert daemon.proc.poll() is None  # not fatal: the session streams on
        appended = server.sessions()[0].audio_bytes
        assert server.wait_for(lambda s: s.sessions()[0].audio_bytes > appended + 9600, 5)
        assert daemon.stop() == 0


def test_a_late_microphone_is_waited_for_with_the_watchdog_fed(
        server: DevServer, notify: NotifyRecorder, tmp_path: Path) -> None:
    """The USB microphone enumerates 15 s after the daemon started (WatchdogSec=2s)."""
    rate, channels = 48000, 1
    mic_dir = tmp_path / "mic"
    with fake_microphone(mic_dir, rate=rate, channels=channels, signal=speech(20.0, rate),
                         set_environ=False) as mic:
        assert mic.writer is not None
        mic.writer.stop(timeout=5.0)
        mic.infile.unlink()  # not there yet: PortAudio does not list the device
        config = merge(FAST, {"audio": {"device": mic.device, "rate": rate,
                                        "channels": channels},
                              "server": {"url": server.url}})
        with running_daemon(tmp_path, config, env={**notify_env(notify), **mic.env}) \
                as daemon:
            started = time.monotonic()
            assert notify.wait_for("READY=1", timeout=10), daemon.log()
            assert daemon.wait_log(r"capture device unavailable \(attempt 1\)", 10)
            assert wait_until(lambda: any("waiting for microphone 'edgevoice_test' (attempt"
                                          in m.payload for m in notify.lines("STATUS=")), 10)
            appeared = started + 15.0
            time.sleep(max(0.0, appeared - time.monotonic()))
            with fake_microphone(mic_dir, rate=rate, channels=channels,
                                 signal=speech(20.0, rate), set_environ=False) as late:
                assert late.env == mic.env
                assert wait_until(lambda: bool(server.sessions())
                                  and server.sessions()[0].audio_bytes >= 24000 * 2, 30), \
                    daemon.log()
                assert daemon.wait_log(r"capture device available after \d+ failed attempts",
                                       5)
                assert daemon.stop() == 0
                late.check_writer()
    log = daemon.log()
    assert "withholding keep-alive" not in log, log
    pings = [m.at for m in notify.lines("WATCHDOG=1")]
    print(f"late microphone: {len(pings)} watchdog pings, largest gap "
          f"{max(gaps(pings)):.2f}s, first after {pings[0] - started:.2f}s")
    assert pings and pings[0] - started <= HALF_S + 1.0
    assert max(gaps(pings)) <= HALF_S, gaps(pings)  # never a gap while it waited
    attempts = log.count("capture device unavailable (attempt")
    assert 1 <= attempts <= 5  # the first few one by one, then a summary a minute
    for line in log.splitlines():
        if "capture device unavailable" in line:
            assert "retry in 0.0s" not in line
            assert line.rstrip().endswith("[event=capture.open_failed]"), line


@pytest.mark.parametrize("log_all", [False, True])
def test_log_all_events_lifts_every_event_type_to_info(server: DevServer, tmp_path: Path,
                                                       log_all: bool) -> None:
    config = wav_config(tmp_path, server.url, SOURCE,
                        {"logging": {"level": "info", "log_all_events": log_all}})
    with running_daemon(tmp_path, config) as daemon:
        assert server.wait_for(lambda s: bool(s.sessions()) and _answered(s.sessions()[0]),
                               30), daemon.log()
        assert daemon.wait_log(r"response done", 10)
        assert daemon.stop() == 0
    log = daemon.log()
    assert "speech started at" in log  # info either way
    framing = ("edgevoice.session: response.created", "edgevoice.session: rate_limits.updated",
               "edgevoice.session: response.output_audio.delta")
    for line in framing:
        assert (line in log) is log_all, line


def test_a_model_the_server_no_longer_serves_stops_the_daemon_with_78(tmp_path: Path) -> None:
    with DevServer(api_key=None, retired_models=("gpt-realtime",)) as server:
        config = wav_config(tmp_path, server.url, SOURCE, {"server": {"model": "gpt-realtime"}})
        with running_daemon(tmp_path, config) as daemon:
            assert daemon.wait_exit(20) == EXIT_CONFIG
        log = daemon.log()
    assert "server.model: gpt-realtime is deprecated and shuts down on 2027-01-20" in log
    assert "server.model: the server rejected the model" in log
    assert "model_not_found" in log
    assert "Traceback" not in log


def test_a_current_model_starts_without_a_deprecation_warning(server: DevServer,
                                                              tmp_path: Path) -> None:
    config = wav_config(tmp_path, server.url, SOURCE)
    with running_daemon(tmp_path, config) as daemon:
        assert wait_until(lambda: any(s.first_append_at for s in server.sessions()), 15)
        assert daemon.stop() == 0
    assert "deprecated" not in daemon.log()
    assert server.sessions()[0].model == "gpt-realtime-2.1"


def test_a_redirect_on_the_first_connection_exits_78_naming_the_target(tmp_path: Path) -> None:
    import socket

    elsewhere = socket.create_server(("127.0.0.1", 0))
    elsewhere.settimeout(0.1)
    target = f"ws://127.0.0.1:{elsewhere.getsockname()[1]}/v1/realtime"
    try:
        with DevServer(api_key=None) as server:
            server.reject_handshakes(302, headers={"Location": target}, count=100)
            config = wav_config(tmp_path, server.url, SOURCE)
            with running_daemon(tmp_path, config) as daemon:
                assert daemon.wait_exit(20) == EXIT_CONFIG
            log = daemon.log()
        assert f"server.url: the server redirects (HTTP 302) to {target}" in log
        with pytest.raises(TimeoutError):
            elsewhere.accept()  # the key was never taken there
    finally:
        elsewhere.close()
