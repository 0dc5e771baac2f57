"""PortAudio (pyaudio) playback in callback mode: the assistant's audio to a speaker.

The stream is opened once and stays open between answers (it plays silence then); close()
only at stop or for a device re-scan. The PortAudio callback pulls a block from the jitter
buffer (``edgevoice.audio.playback.PlaybackBuffer``, one short lock, numpy copies only),
duplicates it to every channel when the device needs more than one, measures its level
and returns it. It never waits for anything but that lock.

``play()`` runs on the session's reader thread: it resamples the delta (24 kHz PCM, or
8 kHz decoded G.711) to the device rate with one ``StreamingResampler`` per item
(``end_of_item`` flushes the filter's tail) outside the lock, then queues it. The
resamplers work in float32 (``single``): with OpenBLAS and upsampling groups of 32, 36-40 %
less resampling time than the exact float64 of the capture side (about a tenth of the
downlink's CPU); no sample differs from it by more than one LSB. It never
blocks: when ``buffer_s`` of device audio is queued the oldest frames are dropped and
counted (``stats.dropped_frames``). A flushed (reset) resampler is a new one but for its
tables, so it is kept for the next item: building one costs 0.2 ms at 48 kHz and 1.3 ms
at 44.1 kHz (147 phases) here, as much as resampling 3.5 s of answer at 44.1 kHz.

``played_ms`` is what the callback consumed of an item less the output latency PortAudio
reports (``stream.get_output_latency()``), never negative; once an item finished playing
and the latency passed, its whole length.

PortAudio itself belongs to the process-wide ``PortAudioHost``, used exactly as
``PyAudioSource`` uses it (``acquire(rescan=True, reserve=True)`` at open, ``stream_closed``
at close, in the same bounded helper thread), so opening the speaker never terminates
PortAudio under the capture stream. Without a host given the sink keeps a private one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import numpy as np
import pyaudio

from edgevoice.audio.devices import DeviceEntry, _entries, _selects
from edgevoice.audio.g711 import PCM_RATE
from edgevoice.audio.level import SILENCE_DBFS, rms_dbfs
from edgevoice.audio.playback import Int16Array, PlaybackBuffer, PlaybackStats
from edgevoice.audio.portaudio_host import PortAudioHost
from edgevoice.audio.pyaudio_source import _shutdown_stream, opening_stream
from edgevoice.audio.resample import StreamingResampler
from edgevoice.clock import Clock
from edgevoice.errors import AudioDeviceError

log = logging.getLogger(__name__)

WIRE_RATE = PCM_RATE  # the answers' rate unless a delta says otherwise (G.711: 8 kHz)
FALLBACK_RATES = (48000, 44100, 24000)
BLOCK_MS = 20
_SPARE = 2  # reset resamplers kept per rate pair (a barge-in may free a few at once)


def output_devices(pa: Any) -> list[DeviceEntry]:
    """Every device of an initialised PortAudio that has at least one output channel."""
    return _entries(pa, "output")


def _listing(devs: list[DeviceEntry]) -> str:
    return ", ".join(
        f"#{d.index} {d.name!r}{' (default)' if d.is_default else ''}" for d in devs
    ) or "none"


def find_output_device(pa: Any, spec: str | int) -> DeviceEntry:
    """Resolve index, case-insensitive name substring or ``"default"`` among outputs."""
    devs = output_devices(pa)
    text = str(spec)
    found = _selects(devs, text)
    if found is None:
        if isinstance(spec, int) or text.strip().isdigit():
            what = f"audio device index {text.strip()} is not an output device"
        elif text.strip().lower() == "default":
            what = "there is no default output device"
        else:
            what = f"no output device matches {text.strip()!r}"
        raise AudioDeviceError(f"{what}; available output devices: {_listing(devs)}")
    return found


def _supported(pa: Any, dev: DeviceEntry, rate: int, channels: int) -> bool:
    try:
        return bool(pa.is_format_supported(rate, output_device=dev.index,
                                           output_channels=channels,
                                           output_format=pyaudio.paInt16))
    except (ValueError, OSError):
        return False


def choose_output(pa: Any, dev: DeviceEntry, requested: int | None) -> tuple[int, int]:
    """(rate, channels): the requested rate, else the device default, else 48000/44100/
    24000; mono if the device takes it, else 2 channels with the signal duplicated."""
    tried: list[int] = []
    candidates = ([requested] if requested else []) + [round(dev.default_sample_rate),
                                                       *FALLBACK_RATES]
    channel_options = [1] if dev.channels < 2 else [1, 2]
    for rate in candidates:
        if rate <= 0 or rate in tried:
            continue
        tried.append(rate)
        for channels in channel_options:
            if _supported(pa, dev, rate, channels):
                if requested and rate != requested:
                    log.warning("output #%d %r does not support %d Hz; using %d Hz",
                                dev.index, dev.name, requested, rate)
                return rate, channels
    raise AudioDeviceError(
        f"audio output #{dev.index} {dev.name!r} supports none of "
        f"{', '.join(str(r) for r in tried)} Hz for 16-bit playback"
    )


class PyAudioSink:
    """Play assistant audio (mono PCM16 per item, 24 or 8 kHz) on a PortAudio output device."""

    def __init__(
        self,
        device: str | int = "default",
        rate: int | None = None,
        *,
        prebuffer_ms: int = 80,
        buffer_s: float = 5.0,
        host: PortAudioHost | None = None,
        clock: Clock = time.monotonic,
        close_timeout_s: float = 2.0,
    ) -> None:
        if buffer_s <= 0:
            raise ValueError(f"buffer_s must be positive, not {buffer_s}")
        if prebuffer_ms < 0:
            raise ValueError(f"prebuffer_ms must not be negative, not {prebuffer_ms}")
        self._device = device
        self._requested_rate = rate
        self._prebuffer_ms = prebuffer_ms
        self._buffer_s = buffer_s
        self._clock = clock
        self._close_timeout_s = close_timeout_s
        self._host = host if host is not None else PortAudioHost()
        self._private_host = host is None
        self._lock = threading.Lock()  # open/close and the resamplers
        self._resamplers: dict[str, tuple[StreamingResampler, int]] = {}
        # Reset resamplers for the next items, by (in rate, out rate); at most _SPARE each.
        self._spare: dict[tuple[int, int], list[StreamingResampler]] = {}
        self._stream: Any = None
        self._pa: Any = None
        self._entry: DeviceEntry | None = None
        self._rate = rate or 0
        self._channels = 1
        self._latency_s = 0.0
        self._level = SILENCE_DBFS
        self._callback_failed = False
        self._buffer = self._new_buffer(self._rate or 48000)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._stream is not None

    @property
    def rate(self) -> int:
        """The device rate chosen by open() (the requested one, or 0, before)."""
        return self._rate

    @property
    def is_active(self) -> bool:
        """The stream is open and PortAudio still runs it (False once the device failed or
        was unplugged: close() and open() again, with backoff)."""
        stream = self._stream
        if stream is None:
            return False
        try:
            return bool(stream.is_active())
        except (OSError, ValueError):
            return False

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def output_latency_s(self) -> float:
        return self._latency_s

    @property
    def description(self) -> str:
        entry = self._entry
        if entry is None:
            return f"audio output {self._device!r} (not open)"
        return f"output #{entry.index} {entry.name!r} {self._rate} Hz {self._channels} ch"

    @property
    def stats(self) -> PlaybackStats:
        return self._buffer.stats

    def open(self) -> None:
        if self._stream is not None:
            return
        with opening_stream(
            self._host, private_host=self._private_host, close_timeout_s=self._close_timeout_s,
            hung="PortAudio is still hung closing a previous stream; "
                 "the output cannot be opened until that call returns",
            describe=lambda: self.description, forget=self._forget_device,
        ) as opening:
            pa = opening.pa
            try:
                entry = find_output_device(pa, self._device)
            except AudioDeviceError as exc:
                # PortAudio has no hot-plug: a speaker plugged in later is listed only
                # after a re-scan, which needs the microphone closed for a moment.
                self._host.request_rescan()
                raise AudioDeviceError(
                    f"audio output {self._device!r}: {exc}") from exc
            rate, channels = choose_output(pa, entry, self._requested_rate)
            frames = max(1, rate * BLOCK_MS // 1000)
            stats = self._buffer.stats
            buffer = self._new_buffer(rate)
            buffer.stats = stats
            stats.rate = rate
            with self._lock:
                self._resamplers.clear()
                self._spare.clear()
                self._buffer = buffer
                self._entry, self._rate, self._channels = entry, rate, channels
            try:
                stream = opening.stream = pa.open(
                    format=pyaudio.paInt16,
                    channels=channels,
                    rate=rate,
                    output=True,
                    output_device_index=entry.index,
                    frames_per_buffer=frames,
                    stream_callback=self._make_callback(buffer, channels),
                    start=False,
                )
                try:
                    self._latency_s = float(stream.get_output_latency())
                except (OSError, ValueError, AttributeError):
                    self._latency_s = 0.0
                buffer.set_latency(round(self._latency_s * rate))
                stream.start_stream()
            except (OSError, ValueError) as exc:
                raise AudioDeviceError(
                    f"cannot open audio output #{entry.index} {entry.name!r} "
                    f"at {rate} Hz, {channels} ch: {exc}"
                ) from exc
        self._pa, self._stream = pa, stream
        self._host.rescan_satisfied()
        log.info("playing to %s, output latency %.0f ms, prebuffer %d ms",
                 self.description, self._latency_s * 1000, self._prebuffer_ms)

    def close(self) -> None:
        with self._lock:
            pa, stream = self._pa, self._stream
            self._pa = self._stream = None
            what = self.description
            self._resamplers.clear()
        self._buffer.flush()
        self._level = SILENCE_DBFS
        if pa is None and stream is None:
            return
        if _shutdown_stream(self._host, stream, self._private_host, self._close_timeout_s,
                            what):
            log.info("closed %s", what)

    def __enter__(self) -> PyAudioSink:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- feeding --------------------------------------------------------------------------

    def play(self, item_id: str, content_index: int, pcm: bytes, rate: int = WIRE_RATE) -> None:
        """Queue mono PCM16 of one item at `rate` (24 kHz, or 8 kHz from G.711), resampled
        to the device rate. An item keeps the rate of its first delta.

        Never blocks beyond a short lock. Call it while open: open() starts a fresh buffer,
        so audio given before it (or while closed) is not played.
        """
        if self._stream is None:
            # No speaker (unplugged, or not there yet): the answer is not kept for later,
            # and nothing counts as playing (the echo gate must not hold the microphone).
            self._buffer.stats.dropped_frames += len(pcm) // 2 * WIRE_RATE // rate
            return
        # A view of the decoded bytes, no copy (an odd trailing byte is ignored).
        view = memoryview(pcm)[: len(pcm) // 2 * 2]
        samples = np.frombuffer(view, dtype="<i2").astype(np.int16, copy=False)
        with self._lock:
            buffer = self._buffer
            entry = self._resamplers.get(item_id)
            if entry is None:
                spare = self._spare.get((rate, buffer.rate))
                resampler = spare.pop() if spare \
                    else StreamingResampler(rate, buffer.rate, single=True)
                entry = (resampler, content_index)
                self._resamplers[item_id] = entry
                while len(self._resamplers) > 16:  # items that never got end_of_item
                    self._resamplers.pop(next(iter(self._resamplers)))
            out = entry[0].process(samples)
        dropped = buffer.push(item_id, content_index, out)
        if dropped and buffer.stats.dropped_frames == dropped:
            log.warning("playback buffer full (%.1f s): dropping the oldest audio",
                        self._buffer_s)

    def end_of_item(self, item_id: str) -> None:
        with self._lock:
            buffer = self._buffer
            entry = self._resamplers.pop(item_id, None)
            tail = entry[0].flush() if entry is not None else None  # and reset
            if entry is not None:
                self._keep_spare(entry[0])
        if entry is not None and tail is not None and tail.size:
            buffer.push(item_id, entry[1], tail)
        buffer.end(item_id)

    def flush(self) -> tuple[str, int, int] | None:
        with self._lock:
            for resampler, _index in self._resamplers.values():
                resampler.reset()
                self._keep_spare(resampler)
            self._resamplers.clear()
        return self._buffer.flush()

    # -- queries --------------------------------------------------------------------------

    def played_ms(self, item_id: str) -> int:
        return self._buffer.played_ms(item_id)

    @property
    def playing(self) -> bool:
        return self._stream is not None and self._buffer.playing

    @property
    def last_played_at(self) -> float | None:
        return self._buffer.last_played_at

    @property
    def level_dbfs(self) -> float:
        return self._level

    # -- internals ------------------------------------------------------------------------

    def _keep_spare(self, resampler: StreamingResampler) -> None:
        """Keep a reset resampler for a later item (lock held)."""
        spare = self._spare.setdefault((resampler.in_rate, resampler.out_rate), [])
        if len(spare) < _SPARE:
            spare.append(resampler)

    def _forget_device(self) -> None:
        self._entry = None

    def _new_buffer(self, rate: int) -> PlaybackBuffer:
        return PlaybackBuffer(
            rate,
            prebuffer_frames=rate * self._prebuffer_ms // 1000,
            capacity_frames=max(1, math.ceil(self._buffer_s * rate)),
        )

    def _make_callback(
        self, buffer: PlaybackBuffer, channels: int
    ) -> Callable[[bytes | None, int, Mapping[str, float], int], tuple[bytes, int]]:
        clock = self._clock

        def callback(in_data: bytes | None, frame_count: int, time_info: Mapping[str, float],
                     status: int) -> tuple[bytes, int]:
            try:
                mono: Int16Array = buffer.pull(frame_count, clock())
                self._level = rms_dbfs(mono)
            except Exception:  # an exception here would abort the stream: play silence
                if not self._callback_failed:
                    self._callback_failed = True
                    log.exception("playback callback failed; playing silence")
                mono = np.zeros(frame_count, dtype=np.int16)
                self._level = SILENCE_DBFS
            if channels > 1:
                return (np.repeat(mono, channels).tobytes(), pyaudio.paContinue)
            return (mono.tobytes(), pyaudio.paContinue)

        return callback
