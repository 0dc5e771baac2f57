"""The speaker's keeper: opens the output device, and waits for it (with backoff) when it is
not there, like the capture worker does for the microphone.

The PortAudio callback does the playing; this worker only owns the device's life: a stream
that PortAudio stopped (the device went away) is closed and the device reopened by name
with backoff. PortAudio finds a re-plugged device only after a re-scan, which the shared
host does only while no other stream (the microphone) is open. Waiting for a speaker that
is unplugged or enumerates late is healthy (the worker beats while it
waits, and `waiting` tells the status line what it waits for); answers that arrive
meanwhile are dropped by the sink, not queued forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from edgevoice.clock import Clock
from edgevoice.daemon.backoff import Backoff
from edgevoice.daemon.worker import Worker
from edgevoice.errors import AudioDeviceError

log = logging.getLogger("edgevoice.playback")

LOG_EACH_ATTEMPT = 5
SUMMARY_EVERY_S = 60.0
IDLE_S = 0.25
STABLE_AFTER_S = 10.0  # open this long without failing: the reopen backoff starts over


class OutputDevice(Protocol):
    @property
    def is_open(self) -> bool: ...
    @property
    def is_active(self) -> bool: ...
    @property
    def description(self) -> str: ...
    def open(self) -> None: ...
    def close(self) -> None: ...


class PlaybackWorker(Worker):
    def __init__(self, sink: OutputDevice, device_label: str, reopen_backoff: Backoff,
                 clock: Clock = time.monotonic,
                 device_list_generation: Callable[[], int] | None = None,
                 rescan_wanted: Callable[[], bool] | None = None) -> None:
        super().__init__("playback", clock)
        self._rescan_wanted = rescan_wanted
        # PortAudio's device list changes only at a re-scan: after one, try again at once.
        self._generation = device_list_generation
        self._sink = sink
        self._label = device_label
        self._backoff = reopen_backoff
        self._failed_attempts = 0
        self._summary_at = 0.0
        self._opened_at = 0.0
        self.waiting = ""

    def step(self) -> None:
        if self._sink.is_open:
            if not self._sink.is_active:  # PortAudio stopped the stream: the device is gone
                log.error("speaker %s stopped (unplugged or failed); reopening",
                          self._sink.description,
                          extra={"edgevoice": {"EVENT": "playback.failed"}})
                self._sink.close()
                self.sleep(self._backoff.next_delay())  # a device failing at once: no spin
                return
            if (self._rescan_wanted is not None and self._rescan_wanted()
                    and not self._sink_playing()):
                log.info("closing the speaker for a device re-scan (a device is missing)",
                         extra={"edgevoice": {"EVENT": "playback.rescan"}})
                self._sink.close()
                return
            if self._opened_at and self._clock() - self._opened_at >= STABLE_AFTER_S:
                self._backoff.reset()  # it has played for a while: the next failure is news
                self._opened_at = 0.0
            self.sleep(IDLE_S)
            return
        try:
            self._sink.open()
        except AudioDeviceError as exc:
            self._open_failed(exc)
            return
        if self._failed_attempts:
            log.info("speaker available after %d failed attempts", self._failed_attempts,
                     extra={"edgevoice": {"EVENT": "playback.available"}})
        self._failed_attempts = 0
        self._opened_at = self._clock()
        self.waiting = ""
        log.info("playing to %s", self._sink.description,
                 extra={"edgevoice": {"EVENT": "playback.opened"}})

    def _open_failed(self, exc: AudioDeviceError) -> None:
        delay = self._backoff.next_delay()
        self._failed_attempts += 1
        attempt = self._failed_attempts
        self.waiting = (f"waiting for speaker {self._label!r} (attempt {attempt}, "
                        f"next in {delay:.1f}s)")
        now = self._clock()
        reason = " ".join(str(exc).split())
        if attempt <= LOG_EACH_ATTEMPT or now - self._summary_at >= SUMMARY_EVERY_S:
            self._summary_at = now
            log.error("speaker unavailable (attempt %d): %s; retry in %.1fs", attempt, reason,
                      delay, extra={"edgevoice": {"EVENT": "playback.open_failed"}})
        self._wait(delay)

    def _wait(self, seconds: float) -> None:
        """Sleep (beating), but only until PortAudio's device list was re-scanned."""
        if self._generation is None:
            self.sleep(seconds)
            return
        generation = self._generation()
        end = self._clock() + seconds
        while not self.stopping and self._clock() < end:
            if self._generation() != generation:
                return
            self.sleep(min(IDLE_S, end - self._clock()))

    def _sink_playing(self) -> bool:
        return bool(getattr(self._sink, "playing", False))

    def cleanup(self) -> None:
        self._sink.close()
