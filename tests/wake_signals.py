"""Signals for the wake word tests: espeak-ng phrases in a chosen voice, and fan-like noise.

``signals.speech(text=...)`` speaks with espeak-ng's default voice only; the shipped wake
word models react to some voices and rates and not to others (measured at -26 dBFS speech,
10-20 dB SNR in fan noise: "okay nabu" fires with en, en-gb, en-us, en+m3 at 145-160 words a
minute, not with en-us+f3; "alexa" with all of these at 130-160), so these tests choose the
voice. The espeak output (22050 Hz) is brought to 24 kHz with the project's own
resampler, so sox is not needed here.
"""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import wave
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgevoice.audio.resample import resample
from edgevoice.audio.wakeword import MicroWakeWordDetector

Int16Array = npt.NDArray[np.int16]
Float64Array = npt.NDArray[np.float64]

RATE = 24000
SPEECH_RMS = 1600.0  # active speech about -26 dBFS: a person 1-2 m from a USB microphone


@dataclass(frozen=True)
class Spoken:
    """A phrase as float samples at 24 kHz, with where the voice starts and ends."""

    samples: Float64Array
    start: int  # first sample of the voice
    end: int  # one past its last sample


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def say(text: str, voice: str = "en", wpm: int = 150, rms: float = SPEECH_RMS) -> Spoken:
    """``text`` spoken by espeak-ng, scaled so its voiced part has ``rms``."""
    out = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text],
        check=True, capture_output=True, timeout=30,
    ).stdout
    with wave.open(io.BytesIO(out)) as wav:
        rate = wav.getframerate()
        raw = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    x = resample(raw, rate, RATE).astype(np.float64)
    frames = x[: x.size // 240 * 240].reshape(-1, 240)
    frame_rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.flatnonzero(frame_rms > 0.05 * frame_rms.max())
    start, end = int(loud[0]) * 240, (int(loud[-1]) + 1) * 240
    active = frame_rms[frame_rms > 0.1 * frame_rms.max()]
    gain = rms / math.sqrt(float(np.mean(active**2)))
    return Spoken(x * gain, start, end)


def fan_noise(seconds: float, rms: float, seed: int = 1) -> Float64Array:
    """A fan or ventilation unit: noise falling with frequency (about 1/f from 50 Hz) with a
    motor hum at 100 and 200 Hz and a slow swell; no two 20 ms chunks alike."""
    n = round(seconds * RATE)
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.normal(0.0, 1.0, n))
    freqs = np.fft.rfftfreq(n, 1.0 / RATE)
    spectrum /= np.sqrt(np.maximum(freqs, 50.0) / 50.0)
    x = np.fft.irfft(spectrum, n)
    t = np.arange(n) / RATE
    x = x / x.std()
    x += 0.4 * np.sin(2 * np.pi * 100.0 * t) + 0.2 * np.sin(2 * np.pi * 200.0 * t + 1.0)
    x *= 1.0 + 0.15 * np.sin(2 * np.pi * 0.3 * t)
    return np.asarray(x * (rms / x.std()), dtype=np.float64)


def noise_for_snr(snr_db: float) -> float:
    """The noise RMS that puts speech of SPEECH_RMS at ``snr_db``."""
    return SPEECH_RMS / 10 ** (snr_db / 20.0)


def to_int16(x: Float64Array) -> Int16Array:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def detections(detector: MicroWakeWordDetector, signal: Int16Array,
               chunk: int = 480) -> list[int]:
    """End sample of every chunk in which the detector fired."""
    return [min(i + chunk, signal.size) for i in range(0, signal.size, chunk)
            if detector.process(signal[i:i + chunk])]
