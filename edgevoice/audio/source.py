"""The capture seam: what every audio source hands to the capture worker.

``AudioSource`` is a Protocol so the daemon and its tests can swap the PortAudio source for a
WAV file or a fake without patching. All sources deliver mono int16 blocks at the device's
native rate; resampling happens downstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class CapturedBlock:
    """One buffer from the device, already downmixed to mono."""

    samples: npt.NDArray[np.int16]  # mono, native device rate
    captured_at: float  # time.monotonic() when the callback ran
    input_overflow: bool  # PortAudio paInputOverflow flag for this buffer


@dataclass
class CaptureStats:
    """Cumulative counters of a source (they survive close()/open())."""

    blocks: int = 0
    frames: int = 0
    overflows: int = 0  # PortAudio overflow flags
    dropped_blocks: int = 0  # our queue was full: the oldest block was dropped
    stalls: int = 0  # times the callbacks stopped while the stream claimed to be active


@runtime_checkable
class AudioSource(Protocol):
    """A capture device as the capture worker sees it."""

    stats: CaptureStats

    @property
    def rate(self) -> int:
        """Sample rate of the delivered blocks; valid after open()."""
        ...

    @property
    def description(self) -> str:
        """Human description, e.g. ``"#3 'USB Audio: - (hw:1,0)' 48000 Hz 2 ch"``."""
        ...

    def open(self) -> None:
        """Start capturing; raises AudioDeviceError with a message a human can act on."""
        ...

    def read(self, timeout: float) -> CapturedBlock | None:
        """Next block, None after ``timeout`` seconds without one.

        Raises AudioDeviceError when the stream died (device gone). A stall (no data while
        the stream claims to run) is not an error here: read() keeps returning None.
        """
        ...

    def close(self) -> None:
        """Stop and release the device; returns within a bounded time even if C hangs."""
        ...
