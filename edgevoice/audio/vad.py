"""Local voice-activity detectors: does this 24 kHz chunk hold speech?

The speech gate (`daemon/speech_gate.py`) asks one of these once per capture chunk and
streams only around the chunks that say yes, so the detector's two failure modes cost
differently: a false "speech" streams room noise into a paid session (and, with
`turn_detection: none`, makes a turn of it); a missed onset cuts a first syllable. The
gate's pre-roll covers the detector's latency (`confirm_ms`), so a detector may take a few
chunks to be sure.

`EnergyVad` is built in (numpy only, the default: it needs nothing outside Debian). Its
choices, and why:

- Band level, not broadband RMS: a Hann-windowed FFT of the chunk keeps 300-3400 Hz, the
  telephone voice band (the window keeps a loud hum or rumble from leaking into it). Fan
  rumble, mains hum and most HVAC noise live below it, so they neither open the gate nor
  raise the floor speech is measured against.
- Adaptive noise floor: the 10th percentile of the band levels of the last
  `FLOOR_WINDOW_S` seconds (minimum statistics). Speech is modulated (syllables, pauses
  between words), so its quiet tenth is still the room; a stationary noise that steps up
  (a fan switched on) becomes the floor within the window, so the gate cannot stay open
  on it. A person talking without any pause for most of the window would lift the floor;
  real speech does not do that.
- Hysteresis: opening needs `open_db` above the floor, staying open only `stay_db`, so a
  voice fading at the end of a sentence does not flap the gate.
- Onset confirmation: a chunk counts only when most of its 5 ms sub-frames (of the
  band-filtered signal) are loud too (a keyboard click is one or two loud sub-frames, a
  vowel is all of them), and opening needs `confirm_chunks` such chunks in a row.
- An absolute minimum (`min_dbfs`): in a dead quiet room the floor is near digital
  silence, and a breath 10 dB above it is still no speech.

`MicroVad` wraps `pymicro-vad` (the optional extra `vad`, imported only when built): a
small neural detector on 16 kHz 10 ms frames, fed through the project's resampler. It
tells speech from non-speech noise (a television's music, clatter) better than energy can.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edgevoice.audio.g711 import PCM_RATE
from edgevoice.audio.resample import StreamingResampler
from edgevoice.audio.sorted_window import SortedWindow

SUB_FRAME = 120  # 5 ms at 24 kHz: the unit a click is told from a vowel by
BAND_HZ = (300.0, 3400.0)
FLOOR_WINDOW_S = 5.0
FLOOR_PERCENTILE = 10.0
OPEN_DB = 10.0
STAY_DB = 6.0
MIN_DBFS = -60.0  # band level below this is never speech
LOUD_FRACTION = 0.75  # of a chunk's sub-frames that must be above the threshold
CONFIRM_MS = 60
MICRO_RATE = 16000
MICRO_FRAME = 160  # 10 ms at 16 kHz
MICRO_THRESHOLD = 0.5
# The model needs context: on spoken sentences its probability crossed 0.5 up to about
# 250 ms after the first syllable (measured with espeak-ng speech over a fan and typing).
MICRO_LATENCY_MS = 250
MICRO_CONFIRM_MS = 40


class VoiceDetector(Protocol):
    """One decision per chunk; `confirm_ms`: how long speech may have run before the
    first True (the gate's pre-roll reaches back that much further)."""

    confirm_ms: int

    def is_speech(self, pcm24k: npt.NDArray[np.int16]) -> bool: ...

    def reset(self) -> None: ...


def _band(n: int) -> npt.NDArray[np.bool_]:
    freqs = np.fft.rfftfreq(n, 1.0 / PCM_RATE)
    band: npt.NDArray[np.bool_] = (freqs >= BAND_HZ[0]) & (freqs <= BAND_HZ[1])
    return band


class _Onset:
    """The decision both detectors share: while open, each chunk that is speech keeps it
    open; while closed, `_confirm_chunks` speech chunks in a row open it."""

    _confirm_chunks: int
    _run: int
    _open: bool

    def _decide(self, speech: bool) -> bool:
        if self._open:
            self._open = speech
            return speech
        self._run = self._run + 1 if speech else 0
        if self._run >= self._confirm_chunks:
            self._open, self._run = True, 0
            return True
        return False


class EnergyVad(_Onset):
    """Band energy against an adaptive floor, with hysteresis and onset confirmation."""

    def __init__(self, chunk_ms: int, *, open_db: float = OPEN_DB, stay_db: float = STAY_DB,
                 min_dbfs: float = MIN_DBFS, confirm_ms: int = CONFIRM_MS) -> None:
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, not {chunk_ms}")
        if not stay_db <= open_db:
            raise ValueError(f"stay_db ({stay_db}) must not exceed open_db ({open_db})")
        self._open_db = open_db
        self._stay_db = stay_db
        self._min_dbfs = min_dbfs
        self._confirm_chunks = max(2, math.ceil(confirm_ms / chunk_ms))
        self.confirm_ms = self._confirm_chunks * chunk_ms
        # Kept sorted: the percentile is an index, not a sort of 250 values every chunk.
        self._levels = SortedWindow(max(1, round(FLOOR_WINDOW_S * 1000 / chunk_ms)))
        self._size = 0  # the chunk length the window and band below are for
        self._window = np.zeros(0)
        self._band = np.zeros(0, dtype=bool)
        self._scale = 1.0
        self._run = 0  # consecutive loud chunks while closed
        self._open = False
        self.level_dbfs = -120.0  # the last chunk's band level (for tests and tuning)

    def reset(self) -> None:
        """Forget the decision (not the floor: the room is the same after a mute)."""
        self._run = 0
        self._open = False

    @property
    def floor_dbfs(self) -> float:
        """The FLOOR_PERCENTILE of the window, as np.percentile's linear method has it."""
        if not self._levels:
            return -120.0
        return self._levels.percentile_linear(FLOOR_PERCENTILE)

    def _remember(self, level: float) -> None:
        self._levels.append(level)

    def _band_level(self, pcm: npt.NDArray[np.int16]) -> tuple[float, npt.NDArray[np.float64]]:
        """The chunk's band level (dBFS) and the chunk as floats (for `_sub_levels`)."""
        n = len(pcm)
        if n != self._size:
            self._size = n
            self._window = np.hanning(n)
            self._band = _band(n)
            # Hann window power and the one-sided spectrum: a full-scale sine in the band
            # reads about -3 dBFS, as rms_dbfs would.
            self._scale = 2.0 / (n * float(np.sum(self._window ** 2)) * 32768.0 ** 2)
        x = pcm.astype(np.float64)
        spectrum = np.fft.rfft(x * self._window)
        power = float(np.sum(np.abs(spectrum[self._band]) ** 2)) * self._scale
        return 10.0 * math.log10(max(power, 1e-12)), x

    def _sub_levels(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The 5 ms sub-frames' band levels (dBFS): only asked for a chunk whose band
        level passed the threshold (two more FFTs; a quiet room never pays for them)."""
        n = len(x)
        subs = max(1, n // SUB_FRAME)
        filtered = np.fft.irfft(np.where(self._band, np.fft.rfft(x), 0), n)
        frames = filtered[: subs * SUB_FRAME].reshape(subs, -1) if n >= SUB_FRAME else \
            filtered.reshape(1, -1)
        sub_power = np.mean(frames ** 2, axis=1) / 32768.0 ** 2
        sub_levels: npt.NDArray[np.float64] = 10.0 * np.log10(np.maximum(sub_power, 1e-12))
        return sub_levels

    def is_speech(self, pcm24k: npt.NDArray[np.int16]) -> bool:
        if len(pcm24k) == 0:
            level, x = -120.0, np.zeros(0)
        else:
            level, x = self._band_level(pcm24k)
        self.level_dbfs = level
        floor = self.floor_dbfs if self._levels else level
        self._remember(level)
        margin = self._stay_db if self._open else self._open_db
        threshold = max(floor + margin, self._min_dbfs)
        loud = (level > threshold and len(x) > 0
                and float(np.mean(self._sub_levels(x) > threshold)) >= LOUD_FRACTION)
        return self._decide(loud)


class MicroVad(_Onset):
    """pymicro-vad on 16 kHz 10 ms frames; a chunk is speech when its frames' mean
    probability reaches `threshold`, and opening needs 40 ms of such chunks in a row."""

    def __init__(self, chunk_ms: int, *, threshold: float = MICRO_THRESHOLD) -> None:
        from pymicro_vad import MicroVad as _Micro  # the optional extra `vad`

        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, not {chunk_ms}")
        self._vad: Any = _Micro()
        self._threshold = threshold
        self._resampler = StreamingResampler(PCM_RATE, MICRO_RATE)
        self._pending = np.zeros(0, dtype=np.int16)
        self._confirm_chunks = max(1, math.ceil(MICRO_CONFIRM_MS / chunk_ms))
        # The model's latency (and the resampler's 2 ms) come on top of confirmation.
        self.confirm_ms = self._confirm_chunks * chunk_ms + MICRO_LATENCY_MS
        self._run = 0
        self._open = False
        self._last = 0.0
        self.probability = 0.0  # the last chunk's mean probability (for tests and tuning)

    def reset(self) -> None:
        self._vad.reset()
        self._resampler.reset()
        self._pending = np.zeros(0, dtype=np.int16)
        self._run = 0
        self._open = False
        self._last = 0.0

    def is_speech(self, pcm24k: npt.NDArray[np.int16]) -> bool:
        samples = self._resampler.process(pcm24k)
        pending = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        probs = []
        start = 0
        while len(pending) - start >= MICRO_FRAME:
            p = float(self._vad.process_10ms(pending[start:start + MICRO_FRAME].tobytes()))
            if p >= 0.0:  # negative: the model is still filling its window
                probs.append(p)
            start += MICRO_FRAME
        self._pending = pending[start:].copy()
        if probs:
            self._last = sum(probs) / len(probs)
        self.probability = self._last
        return self._decide(self._last >= self._threshold)
