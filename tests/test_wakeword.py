"""The wake word detector with the real shipped models on real (espeak-ng) speech in noise,
the confirmation cue, and the message when the optional extra is missing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from wake_signals import (
    RATE,
    Int16Array,
    Spoken,
    detections,
    espeak_available,
    fan_noise,
    noise_for_snr,
    say,
    to_int16,
)

from edgevoice.audio.cue import CUE_RATE, wake_cue_pcm24k
from edgevoice.audio.wakeword import MODELS, MicroWakeWordDetector, load_wake_detector
from edgevoice.errors import EXIT_CONFIG, ConfigError
from edgevoice.settings import parse_settings

pytestmark = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is not installed (make test installs it)")

SNR_DB = 10.0  # a fan close to the device, speech from across a small room
# (model, phrase, voice, words a minute): combinations measured to trigger the model.
FIRING = [
    ("okay_nabu", "okay nabu", "en", 160),
    ("okay_nabu", "okay nabu", "en-us", 145),
    ("alexa", "alexa", "en", 160),
    ("alexa", "alexa", "en+m3", 130),
]
OTHER_SPEECH = [
    "what is the weather like today",
    "please turn on the kitchen lights",
    "I think we should order a pizza tonight",
    "the meeting starts at nine o'clock tomorrow morning",
    "can you tell me a joke about computers",
    "okay, now we are done here",
    "a lexical analysis of the text",
    "do you know where my keys are",
]
HIDE_EXTRAS = textwrap.dedent('''\
    """Optional packages look uninstalled: every meta-path finder answers None for them."""
    import sys

    HIDDEN = {"pymicro_wakeword", "pymicro_vad"}


    class _Hiding:
        def __init__(self, inner):
            self._inner = inner

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in HIDDEN:
                return None
            find = getattr(self._inner, "find_spec", None)
            return find(name, path, target) if find is not None else None

        def __getattr__(self, attr):
            return getattr(self._inner, attr)


    sys.meta_path[:] = [_Hiding(f) for f in sys.meta_path]
    ''')


def _in_noise(spoken: Spoken, *, lead_s: float = 1.0, tail_s: float = 1.5,
              seed: int = 7) -> tuple[Int16Array, int, int]:
    """The phrase at SNR_DB in fan noise; returns the signal and the voice's start and end."""
    lead = round(lead_s * RATE)
    total = lead + spoken.samples.size + round(tail_s * RATE)
    mix = fan_noise(total / RATE, noise_for_snr(SNR_DB), seed=seed)
    mix[lead:lead + spoken.samples.size] += spoken.samples
    return to_int16(mix), lead + spoken.start, lead + spoken.end


@pytest.fixture(scope="module")
def background() -> Int16Array:
    """32 s of fan noise with eight spoken sentences in four voices, none a wake word."""
    parts = [fan_noise(2.0, noise_for_snr(SNR_DB), seed=11)]
    voices = ["en", "en-us", "en+m3", "en-us+f3"]
    for i, text in enumerate(OTHER_SPEECH):
        spoken = say(text, voices[i % len(voices)], 150).samples
        part = fan_noise(spoken.size / RATE + 1.5, noise_for_snr(SNR_DB), seed=20 + i)
        part[:spoken.size] += spoken
        parts.append(part)
    signal = to_int16(np.concatenate(parts))
    assert signal.size >= 30 * RATE
    return signal


@pytest.mark.parametrize(("model", "phrase", "voice", "wpm"), FIRING,
                         ids=[f"{m}-{v}-{w}" for m, _p, v, w in FIRING])
def test_fires_once_on_the_wake_word_in_noise_right_after_it(
        model: str, phrase: str, voice: str, wpm: int) -> None:
    signal, start, end = _in_noise(say(phrase, voice, wpm))
    detector = load_wake_detector(model, None)
    hits = detections(detector, signal)
    assert len(hits) == 1, hits
    # The chunk that fired ends after the voice started and at most 0.5 s after it ended,
    # so a gate keeping ~1 s of audio still holds the whole wake word.
    assert start < hits[0] <= end + RATE // 2, (start, hits[0], end)
    assert detector.last_probability > detector.cutoff
    assert detector.detections == 1


@pytest.mark.parametrize("model", ["okay_nabu", "alexa"])
def test_never_fires_on_fan_noise_and_other_speech(model: str, background: Int16Array) -> None:
    detector = load_wake_detector(model, None)
    assert detections(detector, background) == []
    # The same detector still hears its wake word afterwards: silence above was not deafness.
    _name, phrase, voice, wpm = next(f for f in FIRING if f[0] == model)
    signal, _start, _end = _in_noise(say(phrase, voice, wpm))
    assert len(detections(detector, signal)) == 1


def test_each_utterance_fires_once() -> None:
    first, s1, e1 = _in_noise(say("okay nabu", "en", 145), seed=1)
    second, s2, e2 = _in_noise(say("okay nabu", "en-us", 160), seed=2)
    third, s3, e3 = _in_noise(say("okay nabu", "en+m3", 145), seed=3)
    signal = np.concatenate([first, second, third])
    offsets = [0, first.size, first.size + second.size]
    windows = [(o + s, o + e) for o, (s, e) in zip(offsets, [(s1, e1), (s2, e2), (s3, e3)],
                                                     strict=True)]
    detector = load_wake_detector("okay_nabu", None)
    hits = detections(detector, signal)
    assert len(hits) == 3, hits
    for hit, (start, end) in zip(hits, windows, strict=True):
        assert start < hit <= end + RATE // 2


def test_threshold_override() -> None:
    signal, _start, _end = _in_noise(say("okay nabu", "en", 160))
    shipped = json.loads((Path(_package_dir()) / "models" / "okay_nabu.json").read_text())
    default = load_wake_detector("okay_nabu", None)
    assert default.cutoff == shipped["micro"]["probability_cutoff"]
    assert len(detections(default, signal)) == 1
    never = load_wake_detector("okay_nabu", 1.0)  # the averaged score cannot exceed 1
    assert never.cutoff == 1.0
    assert detections(never, signal) == []
    # A lower threshold fires too (and still once).
    assert len(detections(load_wake_detector("okay_nabu", 0.5), signal)) == 1


def test_chunk_size_does_not_change_the_result() -> None:
    signal, _start, _end = _in_noise(say("alexa", "en", 160))
    results = []
    for chunk_ms in (10, 20, 50, 7):
        detector = load_wake_detector("alexa", None)
        chunk = RATE * chunk_ms // 1000
        at = [detector.last_detection_s for i in range(0, signal.size, chunk)
              if detector.process(signal[i:i + chunk])]
        results.append((at, detector.last_probability))
    assert len(results[0][0]) == 1
    assert all(r == results[0] for r in results), results


def test_reset_forgets_the_stream() -> None:
    signal, _start, _end = _in_noise(say("alexa", "en", 160))
    detector = load_wake_detector("alexa", None)
    half = signal.size // 2
    detector.process(signal[:half])
    detector.reset()
    assert detector.audio_s == 0.0
    again = detections(detector, signal)
    fresh = detections(load_wake_detector("alexa", None), signal)
    assert again == fresh and len(fresh) == 1


def test_names_and_phrases() -> None:
    phrases = {}
    for model in MODELS:
        detector = load_wake_detector(model, None)
        assert isinstance(detector, MicroWakeWordDetector)
        assert detector.name == model
        phrases[model] = detector.phrase
        detector.close()
    assert phrases == {"okay_nabu": "Okay Nabu", "hey_jarvis": "Hey Jarvis",
                       "hey_mycroft": "Hey Mycroft", "alexa": "Alexa"}
    with pytest.raises(ConfigError, match=r"stream\.wake_word"):
        load_wake_detector("hey_siri", None)
    with pytest.raises(ConfigError, match=r"stream\.wake_threshold"):
        load_wake_detector("alexa", 0.0)


def test_missing_extra_is_a_config_error_worded_like_the_settings_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymicro_wakeword", None)  # import raises, find_spec None
    with pytest.raises(ConfigError) as loader:
        load_wake_detector("okay_nabu", None)
    with pytest.raises(ConfigError) as settings:
        parse_settings("stream:\n  gate: wakeword\n", source="test")
    assert loader.value.exit_code == EXIT_CONFIG
    assert str(loader.value) in str(settings.value)
    for needle in ("stream.gate: wakeword", "`wakeword`", "pymicro-wakeword>=2,<3"):
        assert needle in str(loader.value)


@pytest.mark.parametrize(("command", "stream", "needles"), [
    ("check", {"gate": "wakeword"}, ("stream.gate: wakeword", "`wakeword`")),
    ("run", {"gate": "wakeword"}, ("stream.gate: wakeword", "`wakeword`")),
    ("run", {"gate": "vad", "vad": "micro"}, ("stream.vad: micro", "`vad`")),
])
def test_missing_extra_exits_78_with_one_line(tmp_path: Path, command: str,
                                              stream: dict[str, str],
                                              needles: tuple[str, ...]) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_EXTRAS)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"stream": stream,
                                      "server": {"api_key_env": "EDGEVOICE_TEST_KEY"}}))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["PYTHONPATH"] = os.pathsep.join([str(hide), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    env["EDGEVOICE_TEST_KEY"] = "sk-" + "x" * 40
    proc = subprocess.run([sys.executable, "-m", "edgevoice", command, "--config", str(config)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
                          check=False)
    assert proc.returncode == EXIT_CONFIG, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_the_cue_is_short_soft_and_click_free() -> None:
    cue = wake_cue_pcm24k()
    assert cue is wake_cue_pcm24k()  # built once
    samples = np.frombuffer(cue, dtype="<i2").astype(np.float64)
    assert CUE_RATE == 24000
    assert 0.1 <= samples.size / CUE_RATE <= 0.3
    peak_dbfs = 20 * math.log10(np.abs(samples).max() / 32768)
    assert -23.0 <= peak_dbfs <= -17.0
    # Raised-cosine edges, no clicks: each tone fades in and out over several ms.
    peak = np.abs(samples).max()
    assert np.abs(samples[:48]).max() < 0.05 * peak  # first 2 ms
    assert np.abs(samples[-48:]).max() < 0.05 * peak  # last 2 ms
    # Two tones with a gap between them: two runs of loud 5 ms frames.
    frames = np.abs(samples[: samples.size // 120 * 120]).reshape(-1, 120).max(axis=1)
    loud = (frames > 0.3 * frames.max()).astype(np.int8)
    assert int(np.count_nonzero(np.diff(np.concatenate(([0], loud))) == 1)) == 2


def _package_dir() -> str:
    import pymicro_wakeword

    return str(Path(pymicro_wakeword.__file__).parent)
