"""G.711 on the wire, all real: `edgevoice run` streams a WAV (or the ALSA FIFO microphone)
as pcmu / pcma to the devserver, which decodes it independently (its own tables); answers
come back as G.711 and are played through the ALSA FIFO speaker."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import yaml
from alsa_fixtures import fake_microphone, fake_speaker
from daemon_harness import FAST, merge, running_daemon, wav_config
from scipy.signal import resample_poly
from signals import speech
from test_playback import snr_where

from edgevoice.audio.resample import resample
from edgevoice.devserver import DevServer
from edgevoice.devserver.records import ResponseRecord, SessionRecord
from edgevoice.devserver.vad import decode

pytestmark = pytest.mark.integration

SOURCE_S = 4.0


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} missing from the metrics file"
    return float(match.group(1))


def _effective(record: SessionRecord) -> dict[str, Any]:
    updated = [e for e in record.server_events if e["type"] == "session.updated"]
    session: dict[str, Any] = updated[-1]["session"]
    return session


@pytest.mark.parametrize(("fmt", "fmt_type"), [("pcmu", "audio/pcmu"), ("pcma", "audio/pcma")])
def test_g711_input_reaches_the_server_matching_the_source(
        server: DevServer, tmp_path: Path, fmt: str, fmt_type: str) -> None:
    source = speech(SOURCE_S, talk=[(0.5, 2.5)])
    metrics = tmp_path / "metrics.prom"
    config = wav_config(tmp_path, server.url, source, {
        "session": {"input_format": fmt},
        "health": {"metrics_file": str(metrics)}})
    want = int((SOURCE_S - 0.3) * 8000 * 2)  # PCM16 bytes at 8 kHz, decoded by the server
    with running_daemon(tmp_path, config) as daemon:
        assert server.wait_for(lambda s: bool(s.sessions()) and len(s.sessions()[0].pcm) >= want,
                               30), daemon.log()
        assert daemon.stop() == 0
    records = server.sessions()
    assert len(records) == 1, daemon.log()  # one session: no replay to account for
    record = records[0]
    assert _effective(record)["audio"]["input"]["format"] == {"type": fmt_type}
    assert (record.input_format, record.input_rate) == (fmt_type, 8000)
    assert len(record.pcm) == 2 * len(record.audio)  # one byte per sample on the wire
    received = np.frombuffer(record.pcm, dtype="<i2").astype(np.float64)
    reference = resample(source, 24000, 8000).astype(np.float64)
    snr, lag = snr_where(received, reference)
    assert lag <= 8, lag  # both went through the same 24 -> 8 kHz filter
    print(f"{fmt}: {len(received) / 8000:.2f} s at the server, SNR {snr:.1f} dB")
    assert snr >= 30.0
    # The counters: 24 kHz audio time as before, the wire bytes as the server got them.
    text = metrics.read_text()
    sent = _metric(text, "edgevoice_audio_sent_bytes_total")
    wire = _metric(text, "edgevoice_audio_wire_bytes_total")
    assert wire == record.audio_bytes
    assert abs(sent / 6 - wire) <= 20  # 1/6: a third of the samples, a byte each


def test_g711_answers_are_decoded_and_played(server: DevServer, tmp_path: Path) -> None:
    rate = 48000
    with fake_speaker(tmp_path / "spk", rate=rate, set_environ=False) as spk, \
            fake_microphone(tmp_path / "mic", rate=rate, channels=1,
                            signal=speech(20.0, rate, talk=[(0.5, 2.0)]),
                            set_environ=False, extra_config=spk.config_text) as mic:
        config = merge(FAST, {
            "audio": {"device": mic.device, "rate": rate, "channels": 1},
            "playback": {"enabled": True, "device": spk.device, "rate": rate, "echo": "none",
                         "buffer_s": 60.0},
            "server": {"url": server.url},
            "session": {"input_format": "pcmu", "output_format": "pcmu"},
            "health": {"status_file": str(tmp_path / "status.json")},
        })
        with running_daemon(tmp_path, config, env=mic.env) as daemon:
            assert server.wait_for(
                lambda s: any(r.status == "completed" for r in _responses(s)), 30), daemon.log()
            answer = next(r for r in _responses(server) if r.status == "completed")
            time.sleep(answer.audio_ms / 1000 + 1.0)  # played in real time, and a margin
            assert daemon.stop() == 0
        status = json.loads((tmp_path / "status.json").read_text())  # written at exit
        spk.check()
        segment = spk.reader.current
        assert segment is not None, daemon.log()
        played = segment.mono()
    assert answer.output_format == "audio/pcmu"
    assert len(answer.audio) == answer.audio_ms * 8  # 8 kHz, one byte per sample
    assert status["seconds_played"] >= answer.audio_ms / 1000 - 0.2
    # The answer as the server meant it (its own decoder), against what the speaker got.
    ref = decode(answer.audio, "audio/pcmu").astype(np.float64)
    got: npt.NDArray[np.float64] = resample_poly(played.astype(np.float64), 1, rate // 8000)
    snr, _lag = snr_where(got, ref)
    print(f"G.711 answer of {answer.audio_ms} ms played: SNR {snr:.1f} dB")
    assert snr >= 25.0


def test_a_reload_that_changes_a_format_moves_to_a_new_session(
        server: DevServer, tmp_path: Path) -> None:
    """Changed in place, the session would encode (and decode answers) in the new format
    before the server switched, or for ever when the server refuses the change: noise on
    the wire and on the speaker. A new session takes the new format, the old keeps its own."""
    source = speech(30.0, talk=[(0.5, 1.5)])
    config = wav_config(tmp_path, server.url, source, {})
    with running_daemon(tmp_path, config) as daemon:
        assert server.wait_for(lambda s: any(r.audio_bytes for r in s.sessions()), 15), \
            daemon.log()
        changed = merge(config, {"session": {"input_format": "pcmu", "output_format": "pcmu"}})
        daemon.config_path.write_text(yaml.safe_dump(changed))
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_log(r"configuration reloaded", 10), daemon.log()
        assert server.wait_for(lambda s: len(s.sessions()) >= 2
                               and s.sessions()[1].audio_bytes > 0, 20), daemon.log()
        assert daemon.stop() == 0
    first, second = server.sessions()[:2]
    assert first.input_format == "audio/pcm"  # never switched under its feet
    updates = [e for e in first.client_events if e.get("type") == "session.update"]
    assert len(updates) == 1, updates  # only its own configuration
    assert (second.input_format, second.input_rate) == ("audio/pcmu", 8000)
    assert _effective(second)["audio"]["output"]["format"] == {"type": "audio/pcmu"}


def _responses(server: DevServer) -> list[ResponseRecord]:
    return [r for s in server.sessions() for r in s.responses]
