"""Test signals, mono int16 unless said otherwise: tones, counters and speech.

``speech`` is the one speech-like generator: voiced talk over faint room noise, the same for
the devserver's VAD tests (``talk=[(0.5, 1.5)]``: exact onset and end), the daemon's fault
accounting (no 20 ms chunk ever repeats) and the capture tests (lively at any rate).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgevoice.audio.wav_source import load_wav_mono
from edgevoice.errors import AudioDeviceError

Int16Array = npt.NDArray[np.int16]
Float64Array = npt.NDArray[np.float64]

FULL_SCALE = 32767
VOICE_RMS = 4000.0
"""RMS of the voiced part of a talk interval before its syllable envelope (about -18 dBFS)."""


def tone(
    freq: float, seconds: float, rate: int, amplitude: float = 0.5, phase: float = 0.0
) -> Int16Array:
    """A sine at ``amplitude`` of full scale (32767) starting at ``phase`` radians."""
    t = np.arange(round(seconds * rate)) / rate
    return np.round(np.sin(2 * np.pi * freq * t + phase) * amplitude * FULL_SCALE).astype(
        np.int16
    )


def ramp(frames: int, start: int = 0, modulo: int = 30000) -> Int16Array:
    """Frame counter modulo ``modulo``: each sample tells its own position."""
    return ((np.arange(frames, dtype=np.int64) + start) % modulo).astype(np.int16)


def stereo(left: Int16Array, right: Int16Array) -> Int16Array:
    """Interleave two mono signals as an (n, 2) array."""
    n = min(left.size, right.size)
    return np.stack([left[:n], right[:n]], axis=1).astype(np.int16)


def speech(
    seconds: float,
    rate: int = 24000,
    *,
    seed: int = 3,
    talk: Sequence[tuple[float, float]] | None = None,
    room_rms: float = 25.0,
    text: str | None = None,
) -> Int16Array:
    """Speech-like audio: talk intervals of voiced "syllables" over faint room noise.

    * Room noise (Gaussian, ``room_rms``; 25 is about -62 dBFS) lies under everything, so
      there are no digital zeros and no two 20 ms chunks of a signal are the same: every
      chunk a server receives maps to one position in the source.
    * ``talk``: (start, end) seconds of each talk interval; by default 0.4 s of room, then
      talk spurts of 0.8-1.6 s with 0.7-1.1 s pauses (each pause ends a turn).
    * A talk interval is harmonics of a wandering pitch (110-220 Hz) shaped by two formants,
      with a syllable envelope (3-5 Hz) that starts at 55 % and never drops below 10 %, plus
      a little breath noise: loud (above -40 dBFS in every 10 ms frame, about -22 dBFS on
      average) from its first to its last millisecond, so an energy VAD finds its exact
      onset and end. Harmonics at 0.45 ``rate`` and above are left out.
    * ``text``: speak it with espeak-ng, resampled by sox, when both are installed (looped or
      cut to ``seconds``); without them, or if they fail, the synthetic signal above.
    """
    n = round(seconds * rate)
    if text is not None and (spoken := _espeak(text, rate)) is not None:
        return np.resize(spoken, n)
    rng = np.random.default_rng(seed)
    out = rng.normal(0.0, room_rms, n)
    for start_s, end_s in _talk_spurts(seconds, rng) if talk is None else talk:
        start, end = round(start_s * rate), min(n, round(end_s * rate))
        if end > start:
            out[start:end] += _voice(end - start, rate, rng)
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def _talk_spurts(seconds: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    spurts = []
    start = 0.4
    while start < seconds:
        end = min(seconds, start + rng.uniform(0.8, 1.6))
        spurts.append((start, end))
        start = end + rng.uniform(0.7, 1.1)
    return spurts


def _voice(frames: int, rate: int, rng: np.random.Generator) -> Float64Array:
    t = np.arange(frames) / rate
    pitch = rng.uniform(110.0, 220.0)
    f0 = pitch * (1 + 0.12 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi))
                  + 0.05 * np.sin(2 * np.pi * 2.3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = np.zeros(frames)
    for k in range(1, 16):
        if k * pitch * 1.17 >= 0.45 * rate:  # 1.17: the pitch's highest excursion
            break
        centre = k * pitch
        formants = np.exp(-((centre - 700) ** 2) / 2e5) + 0.5 * np.exp(
            -((centre - 1200) ** 2) / 4e5
        )
        voiced += (formants + 0.05) / k * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    voiced *= VOICE_RMS / max(1e-9, math.sqrt(float(np.mean(voiced**2))))
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(3.0, 5.0) * t)
    breath: Float64Array = rng.normal(0.0, VOICE_RMS / 12, frames)
    return voiced * syllables + breath


def _espeak(text: str, rate: int) -> Int16Array | None:
    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    if not (espeak and sox):
        return None
    with tempfile.TemporaryDirectory(prefix="edgevoice-speech-") as tmp:
        raw, out = Path(tmp) / "espeak.wav", Path(tmp) / "speech.wav"
        try:
            subprocess.run(
                [espeak, "-w", str(raw), text], check=True, capture_output=True, timeout=20
            )
            subprocess.run(
                [sox, str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out)],
                check=True,
                capture_output=True,
                timeout=20,
            )
            samples, got_rate, _channels = load_wav_mono(out)
        except (OSError, subprocess.SubprocessError, AudioDeviceError):
            return None
    return samples if got_rate == rate and samples.size else None


def fan_noise(seconds: float, rate: int = 24000, *, seed: int = 5,
              rms: float = 300.0) -> Float64Array:
    """A fan, an extractor hood, a fridge: rumble (noise below about 400 Hz) with mains
    hum at 50 and 100 Hz, and a little hiss in the voice band; stationary. ``rms`` about
    300 is -40 dBFS. Float, to be added to other signals and clipped once."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    spectrum = np.fft.rfft(rng.normal(0.0, 1.0, n))
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    rumble = np.fft.irfft(spectrum / np.sqrt(1.0 + (freqs / 400.0) ** 4), n)
    hiss_band = (freqs > 500) & (freqs < 4000)
    hiss = np.fft.irfft(np.where(hiss_band, spectrum, 0), n)
    t = np.arange(n) / rate
    out = rumble / np.std(rumble) * rms + hiss / np.std(hiss) * rms * 0.15
    out += rms * 0.8 * np.sin(2 * np.pi * 50 * t) + rms * 0.4 * np.sin(2 * np.pi * 100 * t)
    result: Float64Array = out
    return result


def keyboard_clicks(seconds: float, rate: int = 24000, *, seed: int = 7,
                    per_s: float = 6.0, amplitude: float = 8000.0) -> Float64Array:
    """Typing: a key's press and release (a 4 ms decaying burst each, 50-100 ms apart) at
    random moments, ``per_s`` keys a second; loud (peaks near -12 dBFS) and short."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    out = np.zeros(n)
    length = round(0.004 * rate)
    envelope = np.exp(-np.arange(length) / (0.0008 * rate))
    at = 0.1
    while at < seconds - 0.15:
        for offset, gain in ((0.0, 1.0), (rng.uniform(0.05, 0.1), 0.6)):
            i = round((at + offset) * rate)
            out[i:i + length] += amplitude * gain * rng.normal(0.0, 1.0, length) * envelope
        at += rng.exponential(1.0 / per_s) + 0.12
    return out


def fit_sine(y: npt.NDArray[np.floating] | npt.NDArray[np.integer], rate: int, freq: float,
             start: int = 0) -> tuple[float, float, float]:
    """Least-squares sine at ``freq`` (plus DC) on y[start:]: (amplitude, phase, residual rms).

    Sample n is taken at time n / rate, so the phase carries a converter's delay. Shared by
    the resampler's tests and its benchmark, which judge quality the same way.
    """
    seg = np.asarray(y[start:], dtype=np.float64)
    t = (np.arange(seg.shape[0]) + start) / rate
    basis = np.stack(
        [np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t), np.ones_like(t)], axis=1
    )
    coef, *_ = np.linalg.lstsq(basis, seg, rcond=None)
    residual = seg - basis @ coef
    return (
        float(math.hypot(coef[0], coef[1])),
        float(math.atan2(coef[1], coef[0])),
        float(np.sqrt(np.mean(residual**2))),
    )
