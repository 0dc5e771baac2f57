"""Level meter and dead-input detector for mono int16 blocks.

Levels are in dBFS relative to int16 full scale (32768): a full-scale square wave is 0 dBFS
RMS, a full-scale sine -3.01 dBFS RMS. Digital silence is reported as ``SILENCE_DBFS``
(-120 dBFS) rather than -inf so the values fit JSON and Prometheus without special cases.

``DeadInputDetector`` recognises the two ways a capture chain dies without an error: the
input delivers digital silence (every sample exactly zero: a muted or disconnected codec,
a wrong mixer switch) or the very same buffer again and again (a driver or DMA ring that
stopped advancing, a file PCM repeating stale data). Real microphones always have some
noise, so neither happens with a live one. After ``warn_after_s`` seconds of such blocks it
reports the change to dead once, and the change back to alive once, at the first block
that is neither. It takes the time from an injected clock, so tests need no sleeping.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgevoice.clock import Clock

FULL_SCALE = 32768.0
SILENCE_DBFS = -120.0
# Louder than this, a chunk counts as speech: for stall detection (speech sent, no answer)
# and for the quiet moment a session switch waits for.
SPEECH_DBFS = -45.0


def to_dbfs(value: float) -> float:
    """Linear amplitude (int16 units) -> dBFS, floored at SILENCE_DBFS."""
    if value <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * math.log10(value / FULL_SCALE))


@dataclass(frozen=True)
class Level:
    rms_dbfs: float
    peak_dbfs: float
    peak: int  # largest absolute sample value, 0..32768


def rms_dbfs(samples: npt.NDArray[np.int16]) -> float:
    """RMS level of a block in dBFS (SILENCE_DBFS for silence or an empty block)."""
    if samples.size == 0:
        return SILENCE_DBFS
    wide = samples.astype(np.float64)
    return to_dbfs(math.sqrt(float(np.dot(wide, wide)) / samples.size))


def measure_level(samples: npt.NDArray[np.int16]) -> Level:
    """RMS and peak of one block; an empty block counts as silence."""
    if samples.size == 0:
        return Level(SILENCE_DBFS, SILENCE_DBFS, 0)
    wide = samples.astype(np.int64)
    peak = int(np.abs(wide).max())  # int64: abs(-32768) does not overflow
    rms = math.sqrt(float(np.dot(wide, wide)) / samples.size)
    return Level(rms_dbfs=to_dbfs(rms), peak_dbfs=to_dbfs(float(peak)), peak=peak)


class LevelMeter:
    """Per-block level plus a peak hold until ``reset_peak()`` (for status and metrics)."""

    def __init__(self) -> None:
        self.last = Level(SILENCE_DBFS, SILENCE_DBFS, 0)
        self.peak_hold = 0

    def update(self, samples: npt.NDArray[np.int16]) -> Level:
        self.last = measure_level(samples)
        self.peak_hold = max(self.peak_hold, self.last.peak)
        return self.last

    @property
    def peak_hold_dbfs(self) -> float:
        return to_dbfs(float(self.peak_hold))

    def reset_peak(self) -> None:
        self.peak_hold = 0


DIGITAL_SILENCE = "digital silence"
REPEATED_BUFFER = "repeated buffer"


RECENT_BLOCKS = 64  # about a second of 20 ms blocks: longer than any ALSA ring buffer


class DeadInputDetector:
    """Detect digital silence or a repeated buffer lasting ``warn_after_s`` seconds.

    ``update()`` returns None while nothing changes, the reason (``DIGITAL_SILENCE`` or
    ``REPEATED_BUFFER``) once when the input becomes dead, and ``""`` once when it is alive
    again; so ``if change is not None`` means "report", ``if change`` means "dead".
    """

    def __init__(self, warn_after_s: float, clock: Clock = time.monotonic) -> None:
        if warn_after_s < 0:
            raise ValueError(f"warn_after_s must not be negative, not {warn_after_s}")
        self._warn_after_s = warn_after_s
        self._clock = clock
        # Recent block digests: a stuck driver may cycle through its whole ring buffer, so
        # a repeat is "seen lately", not only "same as the previous block". Live audio
        # never repeats bit for bit (there is always noise).
        self._recent: deque[bytes] = deque(maxlen=RECENT_BLOCKS)
        self._since: float | None = None
        self._dead = False
        self._reason = ""
        self.last_change_at: float | None = None
        self.last_dead_duration_s = 0.0

    @property
    def dead(self) -> bool:
        return self._dead

    def set_warn_after(self, seconds: float) -> None:
        """A reload changed health.silence_warn_s; the current stretch keeps its start."""
        if seconds < 0:
            raise ValueError(f"warn_after_s must not be negative, not {seconds}")
        self._warn_after_s = seconds

    @property
    def reason(self) -> str:
        """Why the input looks dead right now ("" while it looks alive)."""
        return self._reason

    @property
    def dead_since(self) -> float | None:
        """Clock time the current dead-looking stretch began (None while alive)."""
        return self._since

    def classify(self, samples: npt.NDArray[np.int16]) -> str:
        """DIGITAL_SILENCE, REPEATED_BUFFER or "" for this block (updates the hash memory)."""
        data = np.ascontiguousarray(samples).tobytes()
        digest = hashlib.blake2b(data, digest_size=16).digest()
        repeated = digest in self._recent
        self._recent.append(digest)
        if samples.size and not samples.any():
            return DIGITAL_SILENCE
        if samples.size and repeated:
            return REPEATED_BUFFER
        return ""

    def update(self, samples: npt.NDArray[np.int16]) -> str | None:
        """Feed one block; returns the new state's reason exactly when it flips, else None."""
        if samples.size == 0:
            return None  # says nothing about the input
        now = self._clock()
        kind = self.classify(samples)
        if not kind:
            self._reason = ""
            since, self._since = self._since, None
            if self._dead:
                self._dead = False
                self.last_change_at = now
                self.last_dead_duration_s = now - since if since is not None else 0.0
                return ""
            return None
        self._reason = kind
        if self._since is None:
            self._since = now
        if not self._dead and now - self._since >= self._warn_after_s:
            self._dead = True
            self.last_change_at = now
            return kind
        return None
