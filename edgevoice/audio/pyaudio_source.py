"""PortAudio (pyaudio) capture in callback mode.

The PortAudio callback only downmixes the buffer to mono (a few microseconds of numpy) and
puts it on a ``queue.SimpleQueue``: a C queue, no Python lock or condition per block, the
cheapest hand-off to the capture thread Python has (one of three thread hand-offs per chunk,
most of the daemon's CPU). When ``queue_s`` of blocks wait, the oldest is dropped and
counted. Each block carries the stream's generation, so a late callback of a closed stream
can never deliver into a new one. It never waits for anything.

Failure handling, as the daemon's device policy needs it:

* open() raises ``AudioDeviceError`` with a message naming the device and, when the device is
  not found, the table of available input devices.
* read() raises ``AudioDeviceError`` once the stream stopped being active (USB microphone
  unplugged: PortAudio's ALSA thread ends). Blocks still queued are delivered first.
* A stall (the stream claims to be active, but no callback for ``stall_after_s``) is only
  logged and counted in ``stats.stalls``; read() keeps returning None and the daemon's health
  check decides what to do.
* close() closes the stream in a helper thread joined with a timeout: a C call that hangs
  (an ALSA read that never returns) cannot block shutdown. PortAudio itself belongs to the
  process-wide :class:`PortAudioHost`; every open() asks it for a re-scan, which it does
  (terminate + initialise, re-enumerating the devices: what recovers a re-plugged USB
  microphone) only while no other stream is open. If a previous close is still hung,
  open() waits for it (bounded) and otherwise raises. Without a host given, the source
  keeps a private one and terminates it on close (tests, one-off tools).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pyaudio

from edgevoice.audio.alsa_quiet import quiet_stderr
from edgevoice.audio.devices import DeviceInfo, find_input_device
from edgevoice.audio.portaudio_host import PortAudioHost
from edgevoice.audio.source import CapturedBlock, CaptureStats
from edgevoice.errors import AudioDeviceError

log = logging.getLogger(__name__)

FALLBACK_RATES = (48000, 44100, 16000)
_POLL_S = 0.1  # how often a waiting read() checks the stream's health


class FormatChecker(Protocol):
    """The part of ``pyaudio.PyAudio`` used to choose a rate (a seam for tests)."""

    def is_format_supported(
        self,
        rate: float,
        input_device: int | None = None,
        input_channels: int | None = None,
        input_format: int | None = None,
    ) -> bool: ...


def _supported(pa: FormatChecker, device: DeviceInfo, rate: int, channels: int) -> bool:
    try:
        return bool(
            pa.is_format_supported(
                rate,
                input_device=device.index,
                input_channels=channels,
                input_format=pyaudio.paInt16,
            )
        )
    except (ValueError, OSError):  # pyaudio raises ValueError for "not supported"
        return False


def choose_channels(device: DeviceInfo, requested: int | None) -> int:
    """The configured channel count if the device has it, else min(max input channels, 2)."""
    if requested is None:
        return max(1, min(device.max_input_channels, 2))
    if requested < 1:
        raise AudioDeviceError(f"audio channels must be at least 1, not {requested}")
    if requested > device.max_input_channels:
        raise AudioDeviceError(
            f"audio device #{device.index} {device.name!r} has {device.max_input_channels} "
            f"input channel(s); {requested} were configured"
        )
    return requested


def choose_rate(pa: FormatChecker, device: DeviceInfo, requested: int | None, channels: int) -> int:
    """Configured rate if supported, else the device default, else 48000/44100/16000."""
    if requested is not None:
        if _supported(pa, device, requested, channels):
            return requested
        log.warning(
            "audio device #%d %r does not support %d Hz with %d channel(s); "
            "falling back to another rate",
            device.index,
            device.name,
            requested,
            channels,
        )
    tried: list[int] = [requested] if requested is not None else []
    default = round(device.default_sample_rate)
    for rate in (default, *FALLBACK_RATES):
        if rate <= 0 or rate in tried:
            continue
        tried.append(rate)
        if _supported(pa, device, rate, channels):
            return rate
    raise AudioDeviceError(
        f"audio device #{device.index} {device.name!r} supports none of "
        f"{', '.join(str(r) for r in tried)} Hz for 16-bit capture with {channels} channel(s)"
    )


def downmix(raw: npt.NDArray[np.int16], channels: int) -> npt.NDArray[np.int16]:
    """Interleaved int16 -> mono by averaging (int32 accumulate, floor division)."""
    if channels == 1:
        return raw.copy()
    if channels == 2:
        # The same floor average as below, a quarter of the cost (4 instead of 17 µs for
        # 20 ms at 48 kHz): an arithmetic shift is a floor division by two.
        pair = raw[: raw.size & ~1]
        acc = pair[0::2].astype(np.int32)
        acc += pair[1::2]
        acc >>= 1
        halved: npt.NDArray[np.int16] = acc.astype(np.int16)
        return halved
    frames = raw.size // channels
    total = raw[: frames * channels].reshape(frames, channels).sum(axis=1, dtype=np.int32)
    mono: npt.NDArray[np.int16] = (total // channels).astype(np.int16)
    return mono


class _PendingClose:
    """A close() whose helper thread is still hung in PortAudio (so open() must wait)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None


_pending = _PendingClose()


def wait_for_pending_close(timeout: float) -> bool:
    """Wait up to ``timeout`` for a hung close to finish; True if none is pending any more."""
    with _pending.lock:
        thread = _pending.thread
    if thread is None:
        return True
    thread.join(timeout)
    if thread.is_alive():
        return False
    with _pending.lock:
        if _pending.thread is thread:
            _pending.thread = None
    return True


def _shutdown_stream(host: PortAudioHost, stream: Any, terminate: bool, timeout: float,
                     what: str) -> bool:
    """Close ``stream`` (and a private host) in a helper thread; False if it timed out.

    Releases the host's count for this source (reserved in open()) once the close returned.
    """

    def work() -> None:
        try:
            if stream is not None:
                stream.close()  # Pa_CloseStream aborts an active stream
        except Exception as exc:  # noqa: BLE001 - a helper thread must log, not die loudly
            log.debug("closing the PortAudio stream of %s failed: %s", what, exc)
        finally:
            host.stream_closed()
            if terminate:
                host.terminate()

    thread = threading.Thread(target=work, name="edgevoice-portaudio-close", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        log.warning(
            "closing %s did not finish within %.1f s (hung in PortAudio); "
            "leaving it behind, the next open() waits for it",
            what,
            timeout,
        )
        with _pending.lock:
            _pending.thread = thread
        return False
    return True


class _Opening:
    """The PyAudio object an open() uses, and the stream once ``pa.open`` returned it."""

    def __init__(self, pa: Any) -> None:
        self.pa = pa
        self.stream: Any = None


@contextmanager
def opening_stream(host: PortAudioHost, *, private_host: bool, close_timeout_s: float,
                   hung: str, describe: Callable[[], str],
                   forget: Callable[[], None]) -> Iterator[_Opening]:
    """The frame of ``PyAudioSource.open`` and ``PyAudioSink.open``.

    Waits (bounded) for a hung close, else raises ``AudioDeviceError(hung)``; reserves the
    host with a re-scan; runs the body with ALSA's stderr quiet. If the body raises, closes
    ``opening.stream`` (bounded, which also releases the reservation and a private host),
    calls ``forget`` and re-raises.
    """
    if not wait_for_pending_close(close_timeout_s):
        raise AudioDeviceError(hung)
    opening = _Opening(host.acquire(rescan=True, reserve=True))
    with quiet_stderr():
        try:
            yield opening
        except BaseException:
            _shutdown_stream(host, opening.stream, private_host, close_timeout_s, describe())
            forget()
            raise


class PyAudioSource:
    """Capture from a PortAudio input device; implements ``AudioSource``."""

    def __init__(
        self,
        device: str | int = "default",
        rate: int | None = None,
        channels: int | None = None,
        block_ms: int = 20,
        queue_s: float = 2.0,
        *,
        close_timeout_s: float = 2.0,
        stall_after_s: float | None = None,
        host: PortAudioHost | None = None,
    ) -> None:
        if block_ms <= 0:
            raise ValueError(f"block_ms must be positive, not {block_ms}")
        if queue_s <= 0:
            raise ValueError(f"queue_s must be positive, not {queue_s}")
        self._device = device
        self._requested_rate = rate
        self._requested_channels = channels
        self._block_ms = block_ms
        self._max_blocks = max(1, math.ceil(queue_s * 1000.0 / block_ms))
        self._close_timeout_s = close_timeout_s
        self._stall_after_s = (
            stall_after_s if stall_after_s is not None else max(0.5, 10 * block_ms / 1000.0)
        )
        self.stats = CaptureStats()
        self._host = host if host is not None else PortAudioHost()
        self._private_host = host is None
        self._lock = threading.Lock()  # open/close/stall state; never taken per block
        # (generation, block); block None only for the wake-up close() sends a reader.
        self._queue: queue.SimpleQueue[tuple[int, CapturedBlock | None]] = queue.SimpleQueue()
        self._pa: Any = None
        self._stream: Any = None
        self._info: DeviceInfo | None = None
        self._rate = rate or 0
        self._channels = channels or 0
        self._generation = 0
        self._opened_at = 0.0
        self._last_callback = 0.0
        self._stalled = False

    # -- AudioSource -------------------------------------------------------------------

    @property
    def rate(self) -> int:
        """Rate of the delivered blocks: the configured one (or 0) until open() chose it."""
        return self._rate

    @property
    def channels(self) -> int:
        """Channels captured from the device (before the downmix to mono)."""
        return self._channels

    @property
    def block_frames(self) -> int:
        """Frames per PortAudio buffer (block_ms at the chosen rate)."""
        return max(1, self._rate * self._block_ms // 1000)

    @property
    def description(self) -> str:
        info = self._info
        if info is None:
            return f"audio device {self._device!r} (not open)"
        return f"#{info.index} {info.name!r} {self._rate} Hz {self._channels} ch"

    @property
    def stalled(self) -> bool:
        """True while no callback arrived for ``stall_after_s`` although the stream is active."""
        return self._stalled

    @property
    def last_block_at(self) -> float | None:
        """time.monotonic() of the last callback, None if none since open()."""
        return self._last_callback or None

    def open(self) -> None:
        if self._stream is not None:
            return
        with opening_stream(
            self._host, private_host=self._private_host, close_timeout_s=self._close_timeout_s,
            hung="PortAudio is still hung closing the previous capture stream; "
                 "it cannot be initialised again until that call returns",
            describe=lambda: self.description, forget=self._forget_device,
        ) as opening:
            pa = opening.pa
            try:
                info = find_input_device(pa, self._device)
            except AudioDeviceError:
                # Listed only after a re-scan, which an open speaker stream prevents.
                self._host.request_rescan()
                raise
            channels = choose_channels(info, self._requested_channels)
            rate = choose_rate(pa, info, self._requested_rate, channels)
            frames = max(1, rate * self._block_ms // 1000)
            with self._lock:
                self._generation += 1
                self._drain()
                self._info, self._rate, self._channels = info, rate, channels
                self._last_callback = 0.0
                self._stalled = False
            callback = self._make_callback(self._generation, channels)
            try:
                opening.stream = pa.open(
                    format=pyaudio.paInt16,
                    channels=channels,
                    rate=rate,
                    input=True,
                    input_device_index=info.index,
                    frames_per_buffer=frames,
                    stream_callback=callback,
                    start=False,
                )
                self._opened_at = time.monotonic()
                opening.stream.start_stream()
            except (OSError, ValueError) as exc:
                raise AudioDeviceError(
                    f"cannot open audio input #{info.index} {info.name!r} "
                    f"at {rate} Hz, {channels} ch: {exc}"
                ) from exc
        self._pa, self._stream = pa, opening.stream
        log.info("capturing from %s, %d ms blocks", self.description, self._block_ms)

    def read(self, timeout: float) -> CapturedBlock | None:
        deadline = time.monotonic() + max(0.0, timeout)
        blocks = self._queue
        while True:
            stream = self._stream
            try:
                generation, block = blocks.get_nowait()
            except queue.Empty:
                generation, block = -1, None
                wait = min(deadline - time.monotonic(), _POLL_S)
                if stream is not None and wait > 0:
                    try:
                        generation, block = blocks.get(timeout=wait)
                    except queue.Empty:
                        generation = -1
            if block is not None and generation == self._generation:
                if self._stalled:
                    with self._lock:
                        resumed, self._stalled = self._stalled, False
                    if resumed:
                        log.info("audio from %s resumed", self.description)
                return block
            if block is not None or generation >= 0:
                continue  # a closed stream's block, or close()'s wake-up: look again
            if stream is None:
                raise AudioDeviceError(f"{self.description}: read() on a closed source")
            self._check_stream(stream)
            if time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        with self._lock:
            pa, stream = self._pa, self._stream
            what = self.description
            self._pa = self._stream = None
            self._generation += 1  # late callbacks of this stream are ignored
            self._drain()
            self._queue.put((self._generation, None))  # wakes a waiting read()
        if pa is None and stream is None:
            return
        if _shutdown_stream(self._host, stream, self._private_host, self._close_timeout_s,
                            what):
            log.info("closed %s", what)

    def __enter__(self) -> PyAudioSource:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _forget_device(self) -> None:
        with self._lock:
            self._info = None

    def _drain(self) -> None:
        """Forget every queued block (called with the lock held)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _make_callback(
        self, generation: int, channels: int
    ) -> Callable[[bytes | None, int, Mapping[str, float], int], tuple[None, int]]:
        overflow_flag = int(pyaudio.paInputOverflow)
        blocks, stats, max_blocks = self._queue, self.stats, self._max_blocks
        monotonic, frombuffer, int16 = time.monotonic, np.frombuffer, np.int16
        cont = (None, pyaudio.paContinue)

        def callback(
            in_data: bytes | None, frame_count: int, time_info: Mapping[str, float], status: int
        ) -> tuple[None, int]:
            # PortAudio's thread, once per buffer: no lock, no condition. Only this
            # thread writes blocks/frames/overflows/dropped_blocks.
            now = monotonic()
            if in_data is None or generation != self._generation:
                return cont
            mono = downmix(frombuffer(in_data, dtype=int16), channels)
            overflow = bool(status & overflow_flag)
            stats.blocks += 1
            stats.frames += mono.size
            if overflow:
                stats.overflows += 1
            if blocks.qsize() >= max_blocks:
                try:
                    # The oldest; if read() took that one just now, the next (so one
                    # more than needed, and only while read() is queue_s behind).
                    blocks.get_nowait()
                    stats.dropped_blocks += 1
                except queue.Empty:
                    pass
            self._last_callback = now
            blocks.put((generation, CapturedBlock(mono, now, overflow)))
            return cont

        return callback

    def _check_stream(self, stream: Any) -> None:
        try:
            active = bool(stream.is_active())
        except (OSError, ValueError) as exc:
            raise AudioDeviceError(f"{self.description}: capture stream failed: {exc}") from exc
        if not active:
            if not self._queue.empty():
                return  # deliver what is left before reporting the end
            raise AudioDeviceError(
                f"{self.description}: capture stream stopped (device unplugged or failed)"
            )
        now = time.monotonic()
        last = self._last_callback or self._opened_at
        if not self._stalled and now - last > self._stall_after_s:
            with self._lock:
                if not self._queue.empty() or self._stream is not stream:
                    return
                self._stalled = True
                self.stats.stalls += 1
            log.warning(
                "no audio from %s for %.1f s although the stream is active (stall)",
                self.description,
                now - last,
            )
