"""The capture worker: microphone blocks in, 24 kHz chunks of `chunk_ms` out.

It owns the device's life: a PortAudio error or a vanished device closes the source,
re-initialises PortAudio and reopens by name with backoff, inside the running process.
It also watches what the microphone delivers: digital silence or one buffer repeated is
reported once when it starts and once when it ends, because a dead microphone that
nobody notices is the most common silent failure of these devices.

Waiting for a device that is not there (a USB microphone that enumerates late, or was
unplugged) is healthy: the worker keeps beating while it waits, every attempt is logged
(the first few one by one, then one line a minute with the count), and `waiting` says
what it waits for, for the status line.

Each chunk passes two stages before the backlog: the echo gate (half duplex), then the
speech gate (`stream.gate`: what of the room is streamed at all, and where turns end).

Muted (`edgevoice ctl mute`: the backlog refuses audio) the worker goes on reading, so the
device stays open and the watchdog fed; the chunks it cuts are counted (`chunks_muted`) and
thrown away.

Idle (`CaptureConfig.idle_wake_s` > 0; the daemon sets it): while nothing the worker reads
could go out at once (the `vad` speech gate closed, or capped) and the speaker is quiet,
the worker wakes once per `idle_wake_s` and takes the blocks that arrived meanwhile,
instead of once per block. A wake-up is most of what a chunk costs
(`benchmarks/bench_floor.py`: the same work costs several times more after a 20 ms sleep
than back to back), and a device spends most of its day idle. The gate still sees every
block, in order, so it decides exactly as before and the same audio goes out; what changes
is when: an onset is acted on up to `idle_wake_s` later. Every block is taken as it
arrives while listening for a wake word (its cue must come at once), once the gate is
open, while muted (the mute applies to a block when it is processed), and while an answer
plays or its echo tail lasts (a barge-in must be heard at once; the echo gate judges its
tail by the time a block is processed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from edgevoice.audio.level import DeadInputDetector, rms_dbfs
from edgevoice.audio.resample import StreamingResampler
from edgevoice.audio.source import AudioSource
from edgevoice.clock import Clock
from edgevoice.daemon.backlog import AudioChunk, ChunkBacklog, QueuedItem
from edgevoice.daemon.backoff import Backoff
from edgevoice.daemon.speech_gate import SpeechGate
from edgevoice.daemon.stats import Stats
from edgevoice.daemon.worker import Worker
from edgevoice.errors import AudioDeviceError
from edgevoice.realtime.protocol import INPUT_RATE

log = logging.getLogger("edgevoice.capture")

LOG_EACH_ATTEMPT = 5  # reopen attempts logged one by one; after that one line a minute
SUMMARY_EVERY_S = 60.0
BATCH_MAX_BLOCKS = 500  # blocks taken per idle wake-up at most (only an unpaced file gets there)


@dataclass(frozen=True)
class CaptureConfig:
    """What a reload may change about capture; applied between two chunks."""

    make_source: Callable[[], AudioSource]
    device_label: str  # for "waiting for microphone 'USB'"
    chunk_ms: int
    silence_warn_s: float
    # While idle, wake once per this many seconds (0: once per block; see the module doc).
    # At most half the source's queue (audio.queue_s), or a late wake-up drops blocks.
    idle_wake_s: float = 0.0


class CaptureWorker(Worker):
    def __init__(
        self,
        config: CaptureConfig,
        backlog: ChunkBacklog,
        stats: Stats,
        *,
        reopen_backoff: Backoff,
        clock: Clock = time.monotonic,
        gate: Callable[[AudioChunk], Sequence[AudioChunk]] | None = None,
        rescan_wanted: Callable[[], bool] | None = None,
        speech_gate: SpeechGate | None = None,
        speaker_busy: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__("capture", clock)
        if config.idle_wake_s < 0:
            raise ValueError(f"idle_wake_s must not be negative, not {config.idle_wake_s}")
        self._gate = gate
        self._speaker_busy = speaker_busy
        # After the echo gate: what of the room goes out at all (stream.gate).
        self._speech_gate = speech_gate
        self._new_speech_gate: SpeechGate | None = None
        self._was_muted = False
        self._rescan_wanted = rescan_wanted
        self._config = config
        self._new_config: CaptureConfig | None = None
        self._config_lock = threading.Lock()
        self._backlog = backlog
        self._stats = stats
        self._chunk_samples = INPUT_RATE * config.chunk_ms // 1000
        self._backoff = reopen_backoff
        self._source: AudioSource | None = None
        self._pending = np.zeros(0, dtype=np.int16)
        self._seq = 0
        self._seen_overflows = 0
        self._seen_drops = 0
        self.beat = clock()
        self.last_audio_at = clock()
        self.opened = threading.Event()  # first successful open
        self.description = ""
        self.waiting = ""  # what the worker waits for, for the status line
        self._failed_attempts = 0
        self._summary_at = 0.0
        self._summarised = 0

    @property
    def is_open(self) -> bool:
        return self._source is not None

    @property
    def next_seq(self) -> int:
        return self._seq

    def reconfigure(self, config: CaptureConfig) -> None:
        """A reload changed `audio.*`: close and reopen between two chunks."""
        with self._config_lock:
            self._new_config = config

    @property
    def speech_gate(self) -> SpeechGate | None:
        return self._speech_gate

    def set_speech_gate(self, gate: SpeechGate) -> None:
        """A reload changed the gate's settings: the new gate takes over between two
        chunks (an utterance under way ends with the old one's state)."""
        with self._config_lock:
            self._new_speech_gate = gate

    def set_silence_warn(self, seconds: float) -> None:
        """A reload changed health.silence_warn_s: applies at once, no reopen."""
        with self._config_lock:
            self._config = replace(self._config, silence_warn_s=seconds)
            if self._new_config is not None:
                self._new_config = replace(self._new_config, silence_warn_s=seconds)
            detector = getattr(self, "_detector", None)
            if detector is not None:
                detector.set_warn_after(seconds)

    def step(self) -> None:
        with self._config_lock:
            new, self._new_config = self._new_config, None
            gate, self._new_speech_gate = self._new_speech_gate, None
        if gate is not None:
            self._speech_gate = gate
        if new is not None:
            log.info("reload: reopening the capture device with the new audio settings",
                     extra={"edgevoice": {"EVENT": "capture.reconfigure"}})
            self._close_source()
            self._config = new
            self._chunk_samples = INPUT_RATE * new.chunk_ms // 1000
            self._backoff.reset()
            self._failed_attempts = 0
        if self._source is None:
            self._open()
            return
        if self._rescan_wanted is not None and self._rescan_wanted():
            # Another device (the speaker) is missing: PortAudio can only list it anew while
            # no stream is open. Close between two chunks; the next step reopens.
            log.info("closing the microphone for a device re-scan (a device is missing)",
                     extra={"edgevoice": {"EVENT": "capture.rescan"}})
            self._close_source()
            return
        self._read_once(self._source)

    def cleanup(self) -> None:
        self._close_source()

    def _open(self) -> None:
        config = self._config
        source = config.make_source()
        try:
            source.open()
        except AudioDeviceError as exc:
            self._open_failed(config, exc)
            return
        if self._failed_attempts:
            log.info("capture device available after %d failed attempts",
                     self._failed_attempts,
                     extra={"edgevoice": {"EVENT": "capture.available"}})
        self._failed_attempts = 0
        self.waiting = ""
        self._source = source
        self._backoff.reset()
        self._resampler = StreamingResampler(source.rate, INPUT_RATE)
        self._detector = DeadInputDetector(config.silence_warn_s, clock=self._clock)
        self._seen_overflows = source.stats.overflows
        self._seen_drops = source.stats.dropped_blocks
        self.description = source.description
        self._stats.set(capture_rate=source.rate)
        self.last_audio_at = self._clock()
        log.info("capturing from %s", source.description,
                 extra={"edgevoice": {"EVENT": "capture.opened"}})
        self.opened.set()

    def _open_failed(self, config: CaptureConfig, exc: AudioDeviceError) -> None:
        delay = self._backoff.next_delay()
        self._failed_attempts += 1
        attempt = self._failed_attempts
        now = self._clock()
        next_in = f"{delay:.1f}s" if delay < 10 else f"{delay:.0f}s"
        self.waiting = (f"waiting for microphone {config.device_label!r} (attempt {attempt}, "
                        f"next in {next_in})")
        self._stats.set(last_error=f"microphone: {exc}")
        reason = " ".join(str(exc).split())
        if attempt <= LOG_EACH_ATTEMPT:
            log.error("capture device unavailable (attempt %d): %s; retry in %.1fs",
                      attempt, reason, delay,
                      extra={"edgevoice": {"EVENT": "capture.open_failed"}})
            self._summary_at = now
            self._summarised = attempt
        elif now - self._summary_at >= SUMMARY_EVERY_S:
            log.error("capture device still unavailable: %d attempts in the last %.0fs, "
                      "%d in all (%s); retrying every %.0fs at most",
                      attempt - self._summarised, now - self._summary_at, attempt, reason,
                      self._backoff.max_s,
                      extra={"edgevoice": {"EVENT": "capture.open_failed"}})
            self._summary_at = now
            self._summarised = attempt
        self.sleep(delay)

    def _read_once(self, source: AudioSource) -> None:
        idle_wake_s = self._config.idle_wake_s
        if idle_wake_s <= 0 or not self._idle():
            self._take(source, timeout=0.25)
            return
        if self.sleep(idle_wake_s):
            return
        # Everything that arrived meanwhile: a block left queued would wait a whole period
        # more, and blocks arriving faster than taken would overflow the source's queue.
        # Bounded only for a source that never runs dry (a file read faster than real time).
        for _ in range(BATCH_MAX_BLOCKS):
            if not self._take(source, timeout=0.0) or not self._idle() or self.stopping:
                return  # none left, the gate opened (a wake-up per block again), or a stop

    def _idle(self) -> bool:
        """Nothing read now could go out at once, and the speaker is quiet: a barge-in must
        be heard as it happens, and the echo gate judges its tail by the time a block is
        processed. Not while muted: the mute is judged then too, so a block captured
        before an unmute but taken after it would go out."""
        gate = self._speech_gate  # first: while streaming, the one question asked per block
        if gate is None or not gate.idle or self._backlog.muted:
            return False
        return self._speaker_busy is None or not self._speaker_busy()

    def _take(self, source: AudioSource, timeout: float) -> bool:
        """Read and process one block; False when none came within `timeout` (or the
        device failed and was closed)."""
        try:
            block = source.read(timeout=timeout)
        except AudioDeviceError as exc:
            log.error("capture device failed: %s; reopening", exc,
                      extra={"edgevoice": {"EVENT": "capture.failed"}})
            self._stats.add("capture_reopens")
            self._stats.set(last_error=f"microphone: {exc}")
            self._close_source()
            return False
        self._account(source)
        if block is None:
            return False
        self.last_audio_at = self._clock()
        change = self._detector.update(block.samples)
        if change is not None:
            self._report_dead_input(change)
        out = self._resampler.process(block.samples)
        self._emit(out, block.captured_at)
        return True

    def _report_dead_input(self, reason: str) -> None:
        if reason:
            log.warning("microphone delivers %s for %.0fs: check the device and its mixer",
                        reason, self._config.silence_warn_s,
                        extra={"edgevoice": {"EVENT": "capture.dead_input"}})
        else:
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
            level = rms_dbfs(piece)
            chunk = AudioChunk(piece.tobytes(), level, captured_at, self._seq)
            counts = {"chunks_captured": 1, "audio_bytes_captured": piece.nbytes}
            # The echo gate holds the microphone while the speaker plays (and gives back a
            # pre-roll when someone talks over the answer).
            if self._backlog.muted:  # privacy first: not even the echo gate's pre-roll
                if not self._was_muted and self._speech_gate is not None:
                    self._speech_gate.reset()  # its ring and utterance belong to before
                self._was_muted = True
                counts["chunks_muted"] = 1
            else:
                self._was_muted = False
                refused = 0
                for ready in self._gated(chunk):
                    if not self._backlog.put(ready) and isinstance(ready, AudioChunk):
                        refused += 1  # muted meanwhile: captured, never queued
                if refused:
                    counts["chunks_muted"] = refused
            self._seq += 1
            # One lock for the chunk's counters and level (the uplink takes it per chunk too).
            self._stats.add_many(counts, capture_level_dbfs=round(level, 1))
        # Muted, the part of a chunk left over is dropped too: no sample captured while
        # muted goes out with the first chunk after an unmute.
        self._pending = (np.zeros(0, dtype=np.int16) if self._backlog.muted
                         else pending[start:].copy())

    def _gated(self, chunk: AudioChunk) -> Sequence[QueuedItem]:
        """The echo gate first (it may give back a pre-roll), then the speech gate; a
        chunk the echo gate holds still passes audio time in the speech gate."""
        released = self._gate(chunk) if self._gate is not None else (chunk,)
        speech_gate = self._speech_gate
        if speech_gate is None:
            return released
        out: list[QueuedItem] = []
        if not released:
            out.extend(speech_gate.held(chunk))
        for ready in released:
            out.extend(speech_gate.process(ready))
        return out

    def _close_source(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.close()
            # The resampler's history belongs to the stream that ended.
            self._pending = np.zeros(0, dtype=np.int16)
