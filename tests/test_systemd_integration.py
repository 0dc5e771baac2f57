"""The daemon as systemd sees it: a real notify socket, real signals, a real ALSA FIFO mic."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import yaml
from alsa_fixtures import fake_microphone
from daemon_harness import FAST, merge, running_daemon, wav_config
from fakes import wait_until
from signals import speech
from systemd_fixtures import HALF_S, NotifyRecorder, gaps, notify_env

from edgevoice.devserver import DevServer

pytestmark = pytest.mark.integration

SOURCE = speech(60.0)




def test_ready_status_pings_and_stopping(server: DevServer, notify: NotifyRecorder,
                                         tmp_path: Path) -> None:
    config = wav_config(tmp_path, server.url, SOURCE)
    with running_daemon(tmp_path, config, env=notify_env(notify)) as daemon:
        assert notify.wait_for("READY=1", timeout=15)
        assert notify.wait_for("STATUS=streaming to gpt-realtime-2.1 24k\u219224k", timeout=15)
        assert notify.wait_for("WATCHDOG=1", count=5, timeout=15)
        # Waiting in backoff is healthy: pings go on while the server is down.
        server.stop()
        down_at = time.monotonic()
        assert notify.wait_for("STATUS=offline", timeout=10, after=down_at)
        assert notify.wait_for("WATCHDOG=1", count=4, timeout=10, after=down_at + 0.5)
        daemon.proc.send_signal(signal.SIGTERM)
        assert notify.wait_for("STOPPING=1", timeout=10)
        assert daemon.wait_exit(10) == 0
        pid = daemon.proc.pid
    assert len(notify.lines("READY=1")) == 1
    assert {m.pid for m in notify.messages} == {pid}
    pings = [m.at for m in notify.lines("WATCHDOG=1")]
    assert max(gaps(pings)) <= HALF_S, gaps(pings)
    assert all("\n" not in m.payload for m in notify.lines("STATUS="))


def test_without_notify_socket_nothing_is_sent(server: DevServer, notify: NotifyRecorder,
                                               tmp_path: Path) -> None:
    config = wav_config(tmp_path, server.url, SOURCE)
    with running_daemon(tmp_path, config) as daemon:
        assert wait_until(lambda: bool(server.sessions()), 15)
        assert daemon.stop() == 0
    assert notify.messages == []


def test_watchdog_stops_when_the_microphone_stalls_and_resumes(
        server: DevServer, notify: NotifyRecorder, tmp_path: Path) -> None:
    rate, channels = 48000, 2
    with fake_microphone(tmp_path / "mic", rate=rate, channels=channels,
                         signal=speech(20.0), set_environ=False) as mic:
        assert mic.writer is not None
        config = merge(FAST, {"audio": {"device": mic.device, "rate": rate,
                                        "channels": channels},
                              "server": {"url": server.url}})
        env = {**notify_env(notify), **mic.env}
        with running_daemon(tmp_path, config, env=env) as daemon:
            assert notify.wait_for("READY=1", timeout=20), daemon.log()
            assert notify.wait_for("WATCHDOG=1", count=3, timeout=15)
            mic.writer.pause()
            paused_at = time.monotonic()
            assert daemon.wait_log(r"watchdog: withholding keep-alive, no audio data", 10)
            last_before = max(m.at for m in notify.lines("WATCHDOG=1"))
            # No ping later than half the interval after the stall began (plus a tick).
            assert last_before - paused_at <= HALF_S + 0.3
            stall_window_end = time.monotonic() + 1.5
            assert not notify.wait_for("WATCHDOG=1", timeout=1.5, after=last_before + 0.01)
            mic.writer.resume()
            assert notify.wait_for("WATCHDOG=1", timeout=10, after=stall_window_end)
            assert daemon.wait_log(r"watchdog: all components healthy again", 5)
            assert daemon.stop() == 0


def test_sighup_reload_good_and_bad(server: DevServer, notify: NotifyRecorder,
                                    tmp_path: Path) -> None:
    config = wav_config(tmp_path, server.url, SOURCE)
    with running_daemon(tmp_path, config, env=notify_env(notify)) as daemon:
        assert notify.wait_for("READY=1", timeout=15)
        assert wait_until(lambda: any(s.first_append_at for s in server.sessions()), 15)
        updates_before = server.sessions()[0].n_updates
        good = merge(config, {"session": {"instructions": "Answer in one word."}})
        daemon.config_path.write_text(yaml.safe_dump(good))
        daemon.proc.send_signal(signal.SIGHUP)
        assert notify.wait_for("READY=1", count=2, timeout=10)
        assert daemon.wait_log(r"configuration reloaded", 5)
        assert server.wait_for(lambda s: s.sessions()[0].n_updates > updates_before, 5)

        bad = merge(config, {"audio": {"chunk_ms": 7}})
        daemon.config_path.write_text(yaml.safe_dump(bad))
        daemon.proc.send_signal(signal.SIGHUP)
        assert notify.wait_for("READY=1", count=3, timeout=10)
        assert daemon.wait_log(r"reload failed, keeping the running settings: .*"
                               r"audio.chunk_ms: 7 is not one of 10, 20, 40, 50, 100", 5)
        assert daemon.proc.poll() is None
        appended = server.sessions()[0].audio_bytes
        assert server.wait_for(lambda s: s.sessions()[0].audio_bytes > appended + 9600, 5)
        assert daemon.stop() == 0
    payloads = [m.payload for m in notify.messages
                if m.payload.startswith(("RELOADING=1", "READY=1"))]
    assert payloads == ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1"]
    reloading = [m for m in notify.messages if m.payload.startswith("MONOTONIC_USEC=")]
    assert len(reloading) == 2
