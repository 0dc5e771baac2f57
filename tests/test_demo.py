"""`make demo` as a user runs it: sample -> ALSA PCM -> daemon -> devserver, then a summary,
and the answers played to a speaker (here the WAV file the demo falls back to)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def _sounding_seconds(samples: np.ndarray, rate: int) -> float:
    """Seconds of 100 ms windows whose peak is above -60 dBFS (the speaker's silence between
    answers is digital zeros; words have short pauses, hence whole windows)."""
    win = rate // 10
    n = len(samples) // win
    peaks = np.abs(samples[: n * win].reshape(n, win).astype(np.int32)).max(axis=1)
    return float((peaks > 32).sum()) / 10


def test_demo_streams_two_turns_plays_the_answers_and_leaves_nothing_behind(
        tmp_path: Path) -> None:
    # TMPDIR: the demo's temporary directory and its default answers file go to tmp_path.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "edgevoice.demo", "--speaker", "file"],
                            capture_output=True, text=True, timeout=120, check=False, env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert re.search(r"speech turns\s+2\b", out), out
    assert re.search(r"responses received\s+2\b", out), out
    assert re.search(r"server errors\s+0\b", out), out
    assert "Traceback" not in out
    assert "ALSA lib" not in out  # PortAudio's start-up noise is kept out
    leftover = subprocess.run(["pgrep", "-f", "edgevoice (run|devserver).*edgevoice-demo|"
                               "edgevoice devserver --port 0 --quiet --api-key demo"],
                              capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == "", leftover.stdout

    # The daemon played the answers: the summary says how much, and so does the speaker.
    played = re.search(r"seconds played\s+(\d+\.\d) s", out)
    assert played is not None, out
    played_s = float(played.group(1))
    assert played_s > 0, out
    assert re.search(r"barge-ins\s+\d+\b", out), out
    assert re.search(r"playback underruns\s+\d+\b", out), out

    said = re.search(r"demo: the answers are in (.+) \((\d+\.\d) s\)", out)
    assert said is not None, out
    answers = Path(said.group(1))
    assert answers == tmp_path / "edgevoice-demo-answers.wav"  # kept after the demo
    assert answers.is_file()
    left = [p for p in tmp_path.glob("edgevoice-demo-*") if p.is_dir()]
    assert left == []  # its temporary directory is gone, the answers stay
    with wave.open(str(answers)) as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert (rate, channels) == (48000, 1)
    assert len(samples) / rate == pytest.approx(float(said.group(2)), abs=0.1)
    sounding = _sounding_seconds(samples, rate)
    # About the answers' length: what the daemon says it played (including the answers'
    # own quiet moments and what the speaker still held at the stop) less their pauses.
    assert 0.6 * played_s <= sounding <= played_s + 0.5, (sounding, played_s, out)
