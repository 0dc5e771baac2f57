"""Energy-based voice activity detection and G.711 helpers for the devserver.

The real service decides turns with a neural VAD; the devserver only needs something
deterministic that behaves the same way on the wire: speech starts when the frame energy
rises above a threshold, stops after ``silence_ms`` of quiet (the hangover), and the
reported start includes ``prefix_padding_ms`` of audio before the onset.

Positions are sample indices counted from the moment the detector was created (or
re-created after an input format change). Frames are 10 ms long, so every boundary the
detector reports is a whole number of milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from edgevoice.audio import g711

FRAME_MS = 10
"""Analysis frame length."""

SEMANTIC_SILENCE_MS = {"low": 1500, "medium": 800, "auto": 800, "high": 400}
"""Hangover used for ``semantic_vad`` (which the devserver approximates with energy)."""


def threshold_to_dbfs(threshold: float) -> float:
    """Map the API's 0..1 ``threshold`` onto a frame level in dBFS.

    0.0 -> -60 dBFS, 0.5 -> -40 dBFS (the default), 1.0 -> -20 dBFS.
    """
    t = min(max(float(threshold), 0.0), 1.0)
    return -60.0 + 40.0 * t


def level_dbfs(samples: npt.NDArray[np.int16]) -> float:
    """RMS level of int16 samples in dBFS (-inf dB is reported as -120)."""
    if samples.size == 0:
        return -120.0
    x = samples.astype(np.float64)
    rms = math.sqrt(float(np.mean(x * x)))
    if rms <= 0.0:
        return -120.0
    return max(20.0 * math.log10(rms / 32768.0), -120.0)


@dataclass(frozen=True)
class VadEvent:
    """A turn boundary, as a sample index relative to the detector's origin."""

    kind: Literal["speech_started", "speech_stopped"]
    sample: int
    start: int = 0  # for speech_stopped: where that speech began (with prefix padding)


class EnergyVad:
    """Frame-energy VAD with onset confirmation, hysteresis and a silence hangover."""

    def __init__(
        self,
        rate: int = 24000,
        *,
        threshold_dbfs: float = -40.0,
        silence_ms: int = 500,
        prefix_padding_ms: int = 300,
        min_speech_ms: int = 30,
        hysteresis_db: float = 6.0,
    ) -> None:
        if rate % (1000 // FRAME_MS) != 0:
            raise ValueError(f"rate {rate} is not a multiple of {1000 // FRAME_MS}")
        self.rate = rate
        self.frame = rate * FRAME_MS // 1000
        self.threshold_dbfs = threshold_dbfs
        self.silence_ms = silence_ms
        self.prefix_padding_ms = prefix_padding_ms
        self.min_speech_ms = min_speech_ms
        self.hysteresis_db = hysteresis_db
        self._pending = np.zeros(0, dtype=np.int16)
        self._processed = 0  # samples analysed (always whole frames)
        self._floor = 0  # speech cannot start before this sample (last commit/clear)
        self.in_speech = False
        self._onset: int | None = None  # first loud frame of a candidate onset
        self._loud_run = 0  # consecutive loud frames while idle
        self._quiet_run = 0  # consecutive quiet frames while in speech
        self.speech_start: int | None = None

    def configure(
        self,
        *,
        threshold_dbfs: float | None = None,
        silence_ms: int | None = None,
        prefix_padding_ms: int | None = None,
    ) -> None:
        """Change parameters; the current state (in or out of speech) is kept."""
        if threshold_dbfs is not None:
            self.threshold_dbfs = threshold_dbfs
        if silence_ms is not None:
            self.silence_ms = max(0, int(silence_ms))
        if prefix_padding_ms is not None:
            self.prefix_padding_ms = max(0, int(prefix_padding_ms))

    @property
    def position(self) -> int:
        """Samples received so far (analysed or still pending)."""
        return self._processed + int(self._pending.size)

    def ms(self, sample: int) -> int:
        """Milliseconds corresponding to a sample index."""
        return sample * 1000 // self.rate

    def reset(self) -> None:
        """Forget any speech in progress; later speech starts no earlier than now."""
        self.in_speech = False
        self._onset = None
        self._loud_run = 0
        self._quiet_run = 0
        self.speech_start = None
        self._floor = self.position

    def force_start(self) -> int:
        """Enter speech now, as if an onset had just been confirmed (no event is returned).

        Returns where that speech begins: the current position less the prefix padding,
        never before the last commit or clear.
        """
        pad = self.rate * self.prefix_padding_ms // 1000
        begin = max(self.position - pad, self._floor, 0)
        self.in_speech = True
        self.speech_start = begin
        self._onset = None
        self._loud_run = 0
        self._quiet_run = 0
        return begin

    def feed(self, samples: npt.NDArray[np.int16]) -> list[VadEvent]:
        """Analyse more audio; returns the turn boundaries found in it."""
        if samples.size:
            self._pending = np.concatenate((self._pending, samples.astype(np.int16)))
        events: list[VadEvent] = []
        n_frames = int(self._pending.size) // self.frame
        if n_frames == 0:
            return events
        frames = self._pending[: n_frames * self.frame].reshape(n_frames, self.frame)
        self._pending = self._pending[n_frames * self.frame :].copy()
        min_loud = max(1, math.ceil(self.min_speech_ms / FRAME_MS))
        for frame in frames:
            start = self._processed
            self._processed += self.frame
            db = level_dbfs(frame)
            if not self.in_speech:
                if db >= self.threshold_dbfs:
                    if self._onset is None:
                        self._onset = start
                    self._loud_run += 1
                    if self._loud_run >= min_loud:
                        pad = self.rate * self.prefix_padding_ms // 1000
                        pad -= pad % self.frame
                        begin = max(self._onset - pad, self._floor, 0)
                        self.in_speech = True
                        self.speech_start = begin
                        self._quiet_run = 0
                        events.append(VadEvent("speech_started", begin, begin))
                else:
                    self._onset = None
                    self._loud_run = 0
            elif db >= self.threshold_dbfs - self.hysteresis_db:
                self._quiet_run = 0
            else:
                self._quiet_run += 1
                if self._quiet_run * FRAME_MS >= self.silence_ms:
                    end = self._processed
                    begin = self.speech_start if self.speech_start is not None else self._floor
                    self.in_speech = False
                    self._onset = None
                    self._loud_run = 0
                    self._quiet_run = 0
                    self.speech_start = None
                    self._floor = end
                    events.append(VadEvent("speech_stopped", end, begin))
        return events


# --- G.711 -----------------------------------------------------------------------------


def _ulaw_table() -> npt.NDArray[np.int16]:
    out = np.zeros(256, dtype=np.int16)
    for i in range(256):
        u = ~i & 0xFF
        sign = u & 0x80
        exponent = (u >> 4) & 0x07
        mantissa = u & 0x0F
        magnitude = ((mantissa << 3) + 0x84) << exponent
        magnitude -= 0x84
        out[i] = -magnitude if sign else magnitude
    return out


def _alaw_table() -> npt.NDArray[np.int16]:
    out = np.zeros(256, dtype=np.int16)
    for i in range(256):
        a = i ^ 0x55
        sign = a & 0x80
        exponent = (a >> 4) & 0x07
        mantissa = a & 0x0F
        magnitude = (mantissa << 4) + 8 if exponent == 0 else (mantissa << 4) + 264 << exponent - 1
        out[i] = magnitude if sign else -magnitude
    return out


_TABLES = {"audio/pcmu": _ulaw_table(), "audio/pcma": _alaw_table()}


def format_rate(fmt_type: str) -> int:
    """Sample rate of an input/output format type."""
    return 24000 if fmt_type == "audio/pcm" else 8000


def bytes_per_sample(fmt_type: str) -> int:
    return 2 if fmt_type == "audio/pcm" else 1


def decode(data: bytes, fmt_type: str) -> npt.NDArray[np.int16]:
    """Bytes in ``fmt_type`` to linear int16 samples (at the format's own rate)."""
    if fmt_type == "audio/pcm":
        usable = len(data) - len(data) % 2
        return np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)
    table = _TABLES[fmt_type]
    return table[np.frombuffer(data, dtype=np.uint8)]


def encode(samples: npt.NDArray[np.int16], fmt_type: str) -> bytes:
    """Linear int16 samples to bytes in ``fmt_type`` (G.711 as ITU-T G.711 encodes it, like
    the real service; decoding above stays this module's own, so a client encoder bug is
    not mirrored by the server)."""
    if fmt_type == "audio/pcm":
        return samples.astype("<i2").tobytes()
    samples = samples.astype(np.int16, copy=False)
    if fmt_type == "audio/pcmu":
        return g711.ulaw_encode(samples).tobytes()
    return g711.alaw_encode(samples).tobytes()


def convert(data: bytes, src: str, dst: str) -> bytes:
    """Convert audio between the API formats (linear resampling where rates differ)."""
    if src == dst:
        return bytes(data)
    samples = decode(data, src)
    r_src, r_dst = format_rate(src), format_rate(dst)
    if r_src != r_dst and samples.size:
        n_out = samples.size * r_dst // r_src
        t_out = np.arange(n_out, dtype=np.float64) * (r_src / r_dst)
        resampled = np.interp(t_out, np.arange(samples.size, dtype=np.float64), samples)
        samples = np.clip(np.round(resampled), -32768, 32767).astype(np.int16)
    return encode(samples, dst)
