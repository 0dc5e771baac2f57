"""The daemon talks back, all real: an ALSA FIFO microphone and a paced ALSA FIFO speaker,
PyAudio both ways on one PortAudio host, the devserver answering each turn."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alsa_fixtures import FakeSpeaker, fake_microphone, fake_speaker
from daemon_harness import FAST, merge, running_daemon
from fakes import wait_until
from signals import speech
from test_playback import align, back_to_wire, snr_where

from edgevoice.devserver import DevServer
from edgevoice.devserver.records import ResponseRecord

pytestmark = pytest.mark.integration

RATE = 48000


def _config(server: DevServer, mic_device: str, spk: FakeSpeaker, tmp_path: Path,
            echo: str = "none") -> dict[str, Any]:
    return merge(FAST, {
        "audio": {"device": mic_device, "rate": RATE, "channels": 1},
        "playback": {"enabled": True, "device": spk.device, "rate": RATE, "echo": echo,
                     "buffer_s": 60.0},
        "server": {"url": server.url},
        "health": {"status_file": str(tmp_path / "status.json")},
    })


def _responses(server: DevServer) -> list[ResponseRecord]:
    return [r for s in server.sessions() for r in s.responses]


@pytest.mark.parametrize("rate", [48000, 44100])
def test_a_spoken_turn_is_answered_through_the_speaker(server: DevServer, tmp_path: Path,
                                                       rate: int) -> None:
    with fake_speaker(tmp_path / "spk", rate=rate, set_environ=False) as spk, \
            fake_microphone(tmp_path / "mic", rate=rate, channels=1,
                            signal=speech(20.0, rate, talk=[(0.5, 2.0)]),
                            set_environ=False, extra_config=spk.config_text) as mic:
        config = merge(_config(server, mic.device, spk, tmp_path),
                       {"audio": {"rate": rate}, "playback": {"rate": rate}})
        with running_daemon(tmp_path, config, env=mic.env) as daemon:
            assert server.wait_for(
                lambda s: any(r.status == "completed" for r in _responses(s)), 30), daemon.log()
            answer = next(r for r in _responses(server) if r.status == "completed")
            # Played in real time after it arrived: wait for its length, and a margin.
            time.sleep(answer.audio_ms / 1000 + 1.0)
            assert daemon.stop() == 0
        status = json.loads((tmp_path / "status.json").read_text())  # written at exit
        spk.check()
        segment = spk.reader.current
        assert segment is not None, daemon.log()
        received = segment.mono()
    assert status["seconds_played"] >= answer.audio_ms / 1000 - 0.2
    assert status["playback_underruns"] == 0
    rx24 = back_to_wire(received, rate)
    ref = np.frombuffer(answer.audio, dtype="<i2").astype(np.float64)
    snr, _lag = snr_where(rx24, ref)
    print(f"answer of {answer.audio_ms} ms played: SNR {snr:.1f} dB at {rate} Hz")
    assert snr >= 40.0


def test_speech_during_an_answer_stops_it_and_truncates_what_was_heard(
        server: DevServer, tmp_path: Path) -> None:
    with fake_speaker(tmp_path / "spk", rate=RATE, set_environ=False) as spk, \
            fake_microphone(tmp_path / "mic", rate=RATE, channels=1,
                            signal=speech(30.0, RATE, talk=[(0.5, 2.0)]),
                            set_environ=False, extra_config=spk.config_text) as mic:
        server.long_answer(8.0, speed=4.0)  # arrives in 2 s, plays for 8
        with running_daemon(tmp_path, _config(server, mic.device, spk, tmp_path),
                            env=mic.env) as daemon:
            assert server.wait_for(lambda s: any(r.audio_ms >= 8000 for r in _responses(s)),
                                   30), daemon.log()
            answer = next(r for r in _responses(server) if r.audio_ms >= 8000)
            assert wait_until(lambda: spk.reader.received_frames() > 0, 10)
            time.sleep(2.0)  # two seconds of the answer are heard
            server.speech_started_now()
            barged_at = time.monotonic()
            assert server.wait_for(lambda s: any(
                r.truncated_ms is not None for r in _responses(s)), 10), daemon.log()
            time.sleep(1.5)
            assert daemon.stop() == 0
        spk.check()
        segment = spk.reader.current
        assert segment is not None
        received, arrivals = segment.mono(), segment.arrival_times()
    truncated = next(r for r in _responses(server) if r.item_id == answer.item_id)
    assert truncated.truncated_ms is not None
    # What the speaker got of the answer: the non-silent frames up to where it stopped.
    loud = np.flatnonzero(np.abs(received.astype(np.int32)) > 64)
    assert loud.size
    stopped_at = float(arrivals[loud[-1]])
    assert stopped_at - barged_at < 0.5, "the speaker kept playing after the barge-in"
    # Where the answer starts in what the speaker got: its first second, aligned.
    ref = np.frombuffer(answer.audio, dtype="<i2").astype(np.float64)[:24000]
    start, _frac, _ = align(back_to_wire(received, RATE), ref)
    heard_ms = loud[-1] * 1000 / RATE - start * 1000 / 24000
    # audio_end_ms is what was really played: it matches the speaker within a chunk plus
    # the latency the fake speaker hides in its pipe (about 60 ms, see alsa_fixtures).
    assert abs(truncated.truncated_ms - heard_ms) <= 20 + 120, (truncated.truncated_ms,
                                                                heard_ms)
    assert truncated.truncated_ms < 8000 - 2000  # cut: not the whole answer
