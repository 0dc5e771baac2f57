"""The local voice-activity detectors on generated rooms: a fan, typing, speech.

Both detectors, the built-in energy one and pymicro-vad (the optional extra, installed in
the test venv), must open on speech soon after its first syllable and stay closed on
stationary noise and on keyboard clicks, chunk by chunk as the capture worker feeds them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from signals import fan_noise, keyboard_clicks, speech

from edgevoice.audio.vad import FLOOR_WINDOW_S, EnergyVad, MicroVad, VoiceDetector

RATE = 24000
CHUNK_MS = 20
CHUNK = RATE * CHUNK_MS // 1000

DETECTORS: dict[str, Callable[[], VoiceDetector]] = {
    "energy": lambda: EnergyVad(CHUNK_MS),
    "micro": lambda: MicroVad(CHUNK_MS),
}


def decisions(detector: VoiceDetector, signal: npt.NDArray[np.float64]) -> list[bool]:
    pcm = np.clip(np.round(signal), -32768, 32767).astype(np.int16)
    return [detector.is_speech(pcm[i:i + CHUNK]) for i in range(0, len(pcm) - CHUNK + 1,
                                                                   CHUNK)]


def sentence() -> npt.NDArray[np.float64]:
    return speech(3.0, RATE, text="Please turn on the kitchen lights and set a timer."
                  ).astype(np.float64)


@pytest.mark.parametrize("name", DETECTORS)
def test_stays_closed_on_a_fan_and_on_typing(name: str) -> None:
    room = fan_noise(20.0, RATE, rms=300.0)  # a loud fan: -40 dBFS with hum
    assert not any(decisions(DETECTORS[name](), room))
    typing = room + keyboard_clicks(20.0, RATE, amplitude=12000.0, per_s=8.0)
    assert not any(decisions(DETECTORS[name](), typing))


@pytest.mark.parametrize("name", DETECTORS)
def test_opens_on_speech_over_the_fan_soon_after_its_onset(name: str) -> None:
    detector = DETECTORS[name]()
    voice = sentence()
    start = 4 * RATE
    room = fan_noise(10.0, RATE, rms=150.0) + keyboard_clicks(10.0, RATE, amplitude=4000.0)
    room[start:start + len(voice)] += voice
    loud = np.nonzero(np.abs(voice) > 1000)[0]
    onset = start + int(loud[0])
    said = decisions(detector, room)
    first = said.index(True) * CHUNK
    assert first >= onset - CHUNK, "opened before the speech began"
    # The gate's pre-roll reaches back confirm_ms before the end of the deciding chunk
    # (the onset may fall anywhere in the first chunk: one chunk of slack).
    assert first - onset <= detector.confirm_ms * RATE // 1000, (
        f"decided {1000 * (first - onset) / RATE:.0f} ms after the onset, "
        f"confirm_ms {detector.confirm_ms}")
    during = said[onset // CHUNK:(start + len(voice)) // CHUNK]
    assert sum(during) >= len(during) // 3, "speech mostly not heard"
    assert not any(said[:(onset - CHUNK) // CHUNK])


@pytest.mark.parametrize("name", DETECTORS)
def test_synthetic_talk_spurts_are_speech(name: str) -> None:
    talk = [(1.0, 2.5), (4.0, 5.0)]
    signal = speech(6.0, RATE, talk=talk).astype(np.float64) + fan_noise(6.0, RATE, rms=100)
    said = decisions(DETECTORS[name](), signal)
    for a, b in talk:
        assert any(said[round(a * 1000 / CHUNK_MS):round(b * 1000 / CHUNK_MS)])
    assert not any(said[: round(0.9 * 1000 / CHUNK_MS)])


def test_energy_ignores_rumble_below_the_voice_band() -> None:
    t = np.arange(10 * RATE) / RATE
    rumble = 6000.0 * np.sin(2 * np.pi * 80.0 * t) * (t > 5.0)  # a motor starts: -18 dBFS
    quiet = fan_noise(10.0, RATE, rms=60.0)
    assert not any(decisions(EnergyVad(CHUNK_MS), quiet + rumble))


def test_energy_learns_a_louder_fan_instead_of_staying_open() -> None:
    """A noise that steps up (a fan switched on) may open the gate for a moment, but the
    floor follows it within its window: the detector cannot stay stuck on speech."""
    quiet = fan_noise(30.0, RATE, rms=40.0, seed=1)
    hiss = np.random.default_rng(2).normal(0.0, 1500.0, 30 * RATE) * (np.arange(30 * RATE)
                                                                       >= 5 * RATE)
    said = decisions(EnergyVad(CHUNK_MS), quiet + hiss)
    settled = round((5.0 + FLOOR_WINDOW_S) * 1000 / CHUNK_MS)
    assert not any(said[settled:])


def test_energy_hysteresis_keeps_a_fading_voice() -> None:
    """Opening needs open_db over the floor, staying only stay_db: a voice that fades by
    a few dB after the onset is still speech."""
    vad = EnergyVad(CHUNK_MS, open_db=10.0, stay_db=6.0)
    rng = np.random.default_rng(4)
    floor = rng.normal(0.0, 100.0, 4 * RATE)
    band_rms = 100.0 * np.sqrt((3400 - 300) / 12000)  # the white noise's share in the band
    t = np.arange(RATE) / RATE
    tone = np.sin(2 * np.pi * 700 * t) * band_rms * np.sqrt(2)
    loud = tone * 10 ** (14 / 20)  # 14 dB over the noise in the band: opens
    fading = tone * 10 ** (8 / 20)  # 8 dB: between stay_db and open_db
    said = decisions(vad, np.concatenate((floor, floor[:RATE] + loud, floor[:RATE] + fading)))
    n = RATE // CHUNK
    assert any(said[4 * n:5 * n])
    assert all(said[5 * n + 2:6 * n]), "closed while the voice was over stay_db"
    fresh = EnergyVad(CHUNK_MS, open_db=10.0, stay_db=6.0)
    assert not any(decisions(fresh, np.concatenate((floor, floor[:RATE] + fading))))


def test_energy_floor_is_the_percentile_of_its_window() -> None:
    """The floor is kept sorted incrementally (no sort per chunk); it must equal
    np.percentile over exactly the last FLOOR_WINDOW_S of band levels, before and after
    the window fills, with repeated levels too."""
    vad = EnergyVad(20)
    window = round(FLOOR_WINDOW_S * 1000 / 20)
    rng = np.random.default_rng(7)
    seen: list[float] = []
    for i in range(window * 2 + 17):
        level = float(rng.choice([-70.0, -55.5, -40.0])) if i % 3 == 0 else \
            float(rng.normal(-50.0, 8.0))
        vad._remember(level)
        seen.append(level)
        expected = float(np.percentile(np.array(seen[-window:]), 10.0))
        assert vad.floor_dbfs == pytest.approx(expected, abs=1e-12)


def test_energy_quiet_chunks_skip_the_sub_frame_analysis() -> None:
    """The two extra FFTs run only for a chunk above the threshold: the idle room's cost."""
    vad = EnergyVad(20)
    calls = 0
    original = vad._sub_levels

    def counting(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        nonlocal calls
        calls += 1
        return original(x)

    vad._sub_levels = counting  # type: ignore[method-assign]
    for chunk in np.array_split(fan_noise(5.0, 24000, seed=3).astype(np.int16), 250):
        assert not vad.is_speech(chunk)
    assert calls < 5  # only the odd noise peak over the threshold
    for chunk in np.array_split(speech(2.0, 24000, seed=4, talk=[(0.2, 1.8)]), 100):
        vad.is_speech(chunk)
    assert calls > 20
