"""The daily cap end to end: the real daemon (a WAV microphone, real time), the devserver.

A 2 s cap: the server gets 2 s of audio (plus what was already on its way: a chunk or
two) and then nothing; the status file, `edgevoice status`, the metrics (promtool) and the
log say why and until when; a restart with the same state directory stays capped; a
reload that raises the cap opens the gate at once, until the new cap. Reopening at local
midnight is tested at unit level (tests/test_budget.py): real time is too slow for it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_harness import CHUNK_MS, RATE, running_daemon, wav_config
from fakes import wait_until
from prometheus_client.parser import text_string_to_metric_families
from signals import speech

from edgevoice.daemon.budget import local_day
from edgevoice.devserver import DevServer

CAP_S = 2.0
RAISED_CAP_S = 3.5
BYTES_PER_S = RATE * 2
# What may still arrive after the cap is reached: the chunk being sent and one queued.
SLACK_S = 3 * CHUNK_MS / 1000
PROMTOOL = shutil.which("promtool")


def _received_s(server: DevServer) -> float:
    return sum(s.audio_bytes for s in server.sessions()) / BYTES_PER_S


def _status(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _metrics(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            if not sample.labels:
                out[sample.name] = sample.value
    return out


def _settled(server: DevServer) -> float:
    """The audio the server got, once it stopped growing for a second."""
    last = -1.0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = _received_s(server)
        if now == last:
            return now
        last = now
        time.sleep(1.0)
    raise AssertionError(f"audio kept arriving: {last:.2f} s")


@pytest.mark.integration
def test_the_daily_cap_stops_streaming_and_outlives_a_restart(
        server: DevServer, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    status_path = tmp_path / "status.json"
    metrics_path = tmp_path / "metrics" / "edgevoice.prom"
    config = wav_config(tmp_path, server.url, speech(60.0, seed=11), {
        "stream": {"max_streamed_s_per_day": CAP_S},
        "health": {"status_file": str(status_path), "metrics_file": str(metrics_path)},
    })
    env = {"STATE_DIRECTORY": str(state_dir)}
    with running_daemon(tmp_path, config, env=env, args=["--summary"]) as daemon:
        assert daemon.wait_log(r"daily cap reached", 30), daemon.log()[-4000:]
        received = _settled(server)
        assert CAP_S <= received <= CAP_S + SLACK_S, received
        assert wait_until(lambda: _status(status_path).get("capped") is True
                          and _status(status_path)["seconds_captured"] > received + 1.0, 10)
        status = _status(status_path)
        assert status["state"] == "streaming"  # connected: only the audio stops
        reason = status["capped_reason"]
        today = local_day(time.time())
        assert reason.startswith(f"daily cap reached: 2 s streamed on {today}"), reason
        assert "stream.max_streamed_s_per_day 2" in reason and " until " in reason
        assert status["capped_until"] > time.time()
        assert status["max_streamed_s_per_day"] == CAP_S
        assert CAP_S <= status["streamed_today_s"] <= CAP_S + SLACK_S
        # The bill: since start and for the session in use (it got all there was).
        assert status["seconds_streamed"] == pytest.approx(received, abs=0.01)
        assert status["counters"]["chunks_capped"] > 0
        assert status["streamed_ratio"] == pytest.approx(
            status["seconds_streamed"] / status["seconds_captured"], abs=0.01)
        assert status["session_seconds_streamed"] == pytest.approx(received, abs=0.01)
        assert status["session_seconds_captured"] > status["session_seconds_streamed"]
        assert 0 < status["session_streamed_ratio"] < 1
        warning = [line for line in daemon.log().splitlines() if "daily cap reached" in line]
        assert warning and "WARNING" in warning[0] and " until " in warning[0], warning
        # `edgevoice status` says so.
        shown = subprocess.run(
            [sys.executable, "-m", "edgevoice", "status", "--config", str(daemon.config_path)],
            capture_output=True, text=True, timeout=30, check=False)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "(CAPPED: daily cap reached: 2 s streamed" in shown.stdout, shown.stdout
        assert "of a 2 s daily cap; held back by the cap:" in shown.stdout, shown.stdout
        assert "this session:" in shown.stdout, shown.stdout
        # The metrics.
        assert wait_until(lambda: _metrics(metrics_path).get("edgevoice_capped") == 1, 10)
        text = metrics_path.read_text()
        metrics = _metrics(metrics_path)
        assert metrics["edgevoice_max_streamed_seconds_per_day"] == CAP_S
        assert CAP_S <= metrics["edgevoice_streamed_today_seconds"] <= CAP_S + SLACK_S
        assert metrics["edgevoice_chunks_capped_total"] > 0
        assert 0 < metrics["edgevoice_streamed_ratio"] < 1
        assert 0 < metrics["edgevoice_session_streamed_ratio"] < 1
        if PROMTOOL is not None:
            result = subprocess.run([PROMTOOL, "check", "metrics"], input=text,
                                    capture_output=True, text=True, timeout=60, check=False)
            assert result.returncode == 0 and not result.stdout.strip(), result.stdout
        assert daemon.stop() == 0
        assert "held back by the daily cap" in daemon.stdout, daemon.stdout
        assert "seconds captured / streamed" in daemon.stdout, daemon.stdout
    day, seconds = (state_dir / "streamed_today").read_text().split()
    assert day == local_day(time.time())
    assert float(seconds) == pytest.approx(received, abs=0.001)

    # A restart with the same state directory is still capped: not one chunk goes out.
    sessions_before = len(server.sessions())
    with running_daemon(tmp_path, config, env=env) as daemon:
        assert daemon.wait_log(r"daily cap reached", 15), daemon.log()[-4000:]
        assert wait_until(lambda: len(server.sessions()) > sessions_before
                          and server.sessions()[-1].updated_acked_at is not None, 15)
        time.sleep(1.5)
        assert server.sessions()[-1].audio_bytes == 0
        # A reload raising the cap applies at once, and the new cap holds.
        config["stream"]["max_streamed_s_per_day"] = RAISED_CAP_S
        daemon.config_path.write_text(yaml.safe_dump(config))
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_log(r"daily cap reopened \(the cap was raised", 10), \
            daemon.log()[-4000:]
        assert daemon.wait_log(r"daily cap reached", 30, count=2), daemon.log()[-4000:]
        total = _settled(server)
        assert RAISED_CAP_S <= total <= RAISED_CAP_S + SLACK_S, total
        assert server.sessions()[-1].audio_bytes > 0
        assert daemon.stop() == 0
