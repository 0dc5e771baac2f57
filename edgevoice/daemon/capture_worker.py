"""The capture worker: microphone blocks in, 24 kHz chunks of `chunk_ms` out.

It owns the device's life: a PortAudio error or a vanished device closes the source,
re-initialises PortAudio and reopens by name with backoff, inside the running process.
It also watches what the microphone delivers: digital silence or one buffer repeated is
reported once when it starts and once when it ends, because a dead microphone that
nobody notices is the most common silent failure of these devices.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from edgevoice.audio.level import DeadInputDetector, rms_dbfs
from edgevoice.audio.resample import StreamingResampler
from edgevoice.audio.source import AudioSource
from edgevoice.daemon.backlog import AudioChunk, ChunkBacklog
from edgevoice.daemon.backoff import Backoff
from edgevoice.daemon.stats import Stats
from edgevoice.errors import AudioDeviceError
from edgevoice.realtime.protocol import INPUT_RATE
from edgevoice.realtime.transport import Clock

log = logging.getLogger("edgevoice.capture")


class CaptureWorker:
    def __init__(
        self,
        make_source: Callable[[], AudioSource],
        backlog: ChunkBacklog,
        stats: Stats,
        *,
        chunk_ms: int,
        silence_warn_s: float,
        reopen_backoff: Backoff,
        clock: Clock = time.monotonic,
    ) -> None:
        self._make_source = make_source
        self._backlog = backlog
        self._stats = stats
        self._chunk_samples = INPUT_RATE * chunk_ms // 1000
        self._silence_warn_s = silence_warn_s
        self._backoff = reopen_backoff
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._source: AudioSource | None = None
        self._pending = np.zeros(0, dtype=np.int16)
        self._seq = 0
        self._seen_overflows = 0
        self._seen_drops = 0
        self.beat = clock()
        self.last_audio_at = clock()
        self.opened = threading.Event()  # first successful open: READY may be sent
        self.input_dead = False
        self.description = ""

    @property
    def is_open(self) -> bool:
        return self._source is not None

    @property
    def next_seq(self) -> int:
        return self._seq

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.beat = self._clock()
                if self._source is None:
                    self._open()
                    continue
                self._read_once(self._source)
        finally:
            self._close_source()

    def _open(self) -> None:
        source = self._make_source()
        try:
            source.open()
        except AudioDeviceError as exc:
            delay = self._backoff.next_delay()
            if self._backoff.attempts <= 3 or self._backoff.attempts % 20 == 0:
                log.error("capture device unavailable (attempt %d): %s; retry in %.1fs",
                          self._backoff.attempts, exc, delay,
                          extra={"edgevoice": {"EVENT": "capture.open_failed"}})
            self._stats.set(last_error=f"microphone: {exc}")
            self._stop.wait(delay)
            return
        self._source = source
        self._backoff.reset()
        self._resampler = StreamingResampler(source.rate, INPUT_RATE)
        self._detector = DeadInputDetector(self._silence_warn_s, clock=self._clock)
        self._seen_overflows = source.stats.overflows
        self._seen_drops = source.stats.dropped_blocks
        self.description = source.description
        self._stats.set(capture_rate=source.rate)
        self.last_audio_at = self._clock()
        log.info("capturing from %s", source.description,
                 extra={"edgevoice": {"EVENT": "capture.opened"}})
        self.opened.set()

    def _read_once(self, source: AudioSource) -> None:
        try:
            block = source.read(timeout=0.25)
        except AudioDeviceError as exc:
            log.error("capture device failed: %s; reopening", exc,
                      extra={"edgevoice": {"EVENT": "capture.failed"}})
            self._stats.add("capture_reopens")
            self._stats.set(last_error=f"microphone: {exc}")
            self._close_source()
            return
        self._account(source)
        if block is None:
            return
        self.last_audio_at = self._clock()
        change = self._detector.update(block.samples)
        if change is not None:
            self._report_dead_input(change)
        out = self._resampler.process(block.samples)
        self._emit(out, block.captured_at)

    def _report_dead_input(self, reason: str) -> None:
        if reason:
            self.input_dead = True
            log.warning("microphone delivers %s for %.0fs: check the device and its mixer",
                        reason, self._silence_warn_s,
                        extra={"edgevoice": {"EVENT": "capture.dead_input"}})
        else:
            self.input_dead = False
            log.info("microphone delivers a live signal again",
                     extra={"edgevoice": {"EVENT": "capture.live_input"}})

    def _account(self, source: AudioSource) -> None:
        stats = source.stats
        if stats.overflows != self._seen_overflows:
            self._stats.add("capture_overflows", stats.overflows - self._seen_overflows)
            self._seen_overflows = stats.overflows
        if stats.dropped_blocks != self._seen_drops:
            self._stats.add("capture_dropped_blocks", stats.dropped_blocks - self._seen_drops)
            self._seen_drops = stats.dropped_blocks

    def _emit(self, samples: npt.NDArray[np.int16], captured_at: float) -> None:
        pending = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        n = self._chunk_samples
        start = 0
        while len(pending) - start >= n:
            piece = pending[start:start + n]
            start += n
            dropped_before = self._backlog.dropped
            self._backlog.put(AudioChunk(piece.tobytes(), rms_dbfs(piece), captured_at,
                                         self._seq))
            self._seq += 1
            self._stats.add("chunks_captured")
            if self._backlog.dropped != dropped_before:
                self._stats.add("chunks_dropped_outage", self._backlog.dropped - dropped_before)
        self._pending = pending[start:].copy()

    def _close_source(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.close()
            # The resampler's history belongs to the stream that ended.
            self._pending = np.zeros(0, dtype=np.int16)
