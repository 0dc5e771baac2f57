"""A WAV file as an ``AudioSource`` (demos, tests, the offline devserver setup).

Integer PCM WAV files with 8, 16, 24 or 32 bits and any channel count are accepted; blocks
are downmixed to mono int16 at the file's rate, like the PortAudio source delivers them.
With ``realtime=True`` block *n* is released ``n * block_ms`` after open(), so a consumer
sees the pacing of a live microphone; otherwise read() returns blocks as fast as they are
asked for. With ``loop=True`` the file repeats seamlessly (a block can span the wrap);
without it the last, possibly short, block is followed by None and ``exhausted`` is True.
"""

from __future__ import annotations

import threading
import time
import wave
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from edgevoice.audio.source import CapturedBlock, CaptureStats
from edgevoice.errors import AudioDeviceError


def _to_int16(data: bytes, sampwidth: int) -> npt.NDArray[np.int16]:
    if sampwidth == 1:  # unsigned 8 bit
        return ((np.frombuffer(data, dtype=np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    if sampwidth == 2:
        return np.frombuffer(data, dtype="<i2").astype(np.int16)
    if sampwidth == 3:  # keep the two most significant bytes of each little-endian sample
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
        return raw[:, 1:].copy().view("<i2").reshape(-1).astype(np.int16)
    if sampwidth == 4:
        return (np.frombuffer(data, dtype="<i4") >> 16).astype(np.int16)
    raise ValueError(f"{sampwidth * 8}-bit samples are not supported")


def load_wav_mono(path: str | Path) -> tuple[npt.NDArray[np.int16], int, int]:
    """(mono int16 samples, rate, channels in the file); averages channels to mono."""
    try:
        with wave.open(str(path), "rb") as wav:
            channels = wav.getnchannels()
            rate = wav.getframerate()
            sampwidth = wav.getsampwidth()
            data = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise AudioDeviceError(f"cannot read WAV file {str(path)!r}: {exc}") from exc
    try:
        samples = _to_int16(data, sampwidth)
    except ValueError as exc:
        raise AudioDeviceError(f"WAV file {str(path)!r}: {exc}") from exc
    frames = samples.size // channels
    interleaved = samples[: frames * channels].reshape(frames, channels)
    mono = (interleaved.sum(axis=1, dtype=np.int32) // channels).astype(np.int16)
    return mono, rate, channels


class WavSource:
    """Serve a WAV file block by block; implements ``AudioSource``."""

    def __init__(
        self,
        path: str | Path,
        *,
        realtime: bool = True,
        loop: bool = False,
        block_ms: int = 20,
    ) -> None:
        if block_ms <= 0:
            raise ValueError(f"block_ms must be positive, not {block_ms}")
        self.path = Path(path)
        self.realtime = realtime
        self.loop = loop
        self.block_ms = block_ms
        self.stats = CaptureStats()
        self._samples: npt.NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self._rate = 0
        self._file_channels = 0
        self._pos = 0  # next frame in the file
        self._served = 0  # frames handed out since open(): the real-time schedule
        self._t0 = 0.0
        self._open = False
        self._closed = threading.Event()

    @property
    def rate(self) -> int:
        return self._rate

    @property
    def description(self) -> str:
        mode = ("real time" if self.realtime else "unpaced") + (", loop" if self.loop else "")
        if not self._rate:
            return f"WAV {str(self.path)!r} (not open)"
        return f"WAV {str(self.path)!r} {self._rate} Hz {self._file_channels} ch ({mode})"

    @property
    def exhausted(self) -> bool:
        """True once a non-looping file has been served completely."""
        return self._open and not self.loop and self._pos >= self._samples.size

    def open(self) -> None:
        samples, rate, channels = load_wav_mono(self.path)
        if samples.size == 0 and self.loop:
            raise AudioDeviceError(f"WAV file {str(self.path)!r} has no samples to loop")
        self._samples, self._rate, self._file_channels = samples, rate, channels
        self._pos = 0
        self._served = 0
        self._closed.clear()
        self._open = True
        self._t0 = time.monotonic()

    def read(self, timeout: float) -> CapturedBlock | None:
        if not self._open:
            raise AudioDeviceError(f"{self.description}: read() on a closed source")
        if self.exhausted:
            self._closed.wait(max(0.0, timeout))
            return None
        if self.realtime:
            due = self._t0 + self._served / self._rate
            delay = due - time.monotonic()
            if delay > 0:
                if delay > timeout:
                    self._closed.wait(max(0.0, timeout))
                    return None
                if self._closed.wait(delay):
                    return None  # closed meanwhile
        block = self._take(max(1, self._rate * self.block_ms // 1000))
        self._served += block.size
        self.stats.blocks += 1
        self.stats.frames += int(block.size)
        return CapturedBlock(samples=block, captured_at=time.monotonic(), input_overflow=False)

    def close(self) -> None:
        self._open = False
        self._closed.set()

    def __enter__(self) -> WavSource:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _take(self, frames: int) -> npt.NDArray[np.int16]:
        total = self._samples.size
        if not self.loop:
            end = min(self._pos + frames, total)
            block = self._samples[self._pos : end].copy()
            self._pos = end
            return block
        parts: list[npt.NDArray[np.int16]] = []
        need = frames
        while need > 0:
            end = min(self._pos + need, total)
            parts.append(self._samples[self._pos : end])
            need -= end - self._pos
            self._pos = end % total
        return np.concatenate(parts).astype(np.int16)
