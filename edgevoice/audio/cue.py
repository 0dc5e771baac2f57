"""The short sound that confirms a wake word was heard (played when playback is on).

Two soft rising tones, 70 ms each with raised-cosine edges (no clicks), about -20 dBFS peak:
audible over a quiet room, far below an answer's level, and over in 0.2 s so the person can
start talking at once. 24 kHz mono s16le, the answer audio's own format, so it goes through
the same playback path. Built once and cached: it is the same every time.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

from edgevoice.audio.g711 import PCM_RATE

__all__ = ["CUE_RATE", "wake_cue_pcm24k"]

CUE_RATE = PCM_RATE  # the wire's: the cue is played like an answer
_TONES_HZ = (660.0, 880.0)
_TONE_S = 0.070
_GAP_S = 0.040
_EDGE_S = 0.015
_PEAK_DBFS = -20.0


def _tone(freq: float) -> npt.NDArray[np.float64]:
    n = round(_TONE_S * CUE_RATE)
    t = np.arange(n) / CUE_RATE
    edge = round(_EDGE_S * CUE_RATE)
    envelope = np.ones(n)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(edge) / edge)  # raised cosine 0 -> 1
    envelope[:edge] = ramp
    envelope[n - edge:] = ramp[::-1]
    return np.asarray(np.sin(2.0 * np.pi * freq * t) * envelope, dtype=np.float64)


@functools.lru_cache(maxsize=1)
def wake_cue_pcm24k() -> bytes:
    """The cue as 24 kHz mono s16le bytes (cached)."""
    gap = np.zeros(round(_GAP_S * CUE_RATE))
    wave = np.concatenate((_tone(_TONES_HZ[0]), gap, _tone(_TONES_HZ[1])))
    peak = 32767.0 * math.pow(10.0, _PEAK_DBFS / 20.0)
    return np.round(wave * peak).astype("<i2").tobytes()
