"""One PortAudio instance for every stream of the process, terminated once at exit.

`Pa_Terminate` closes every stream of the process, so a capture stream that re-initialised
PortAudio for itself would cut an output stream opened beside it. PortAudio also has no
hot-plug: a device that appeared after `Pa_Initialize` is found only after a new
initialisation. The host therefore re-scans (terminate + initialise) only while no stream
is open; with a stream open the re-scan waits, and the caller retries later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edgevoice.audio.alsa_quiet import quiet_stderr
from edgevoice.errors import AudioDeviceError

log = logging.getLogger(__name__)

TERMINATE_LOCK_S = 1.0
RESCAN_FIRST_S = 0.5  # re-scans asked for by a missing device: this soon, doubling...
RESCAN_MAX_S = 60.0  # ... up to this (each one costs the open streams a reopen)


def _new_pyaudio() -> Any:
    import pyaudio

    return pyaudio.PyAudio()


class PortAudioHost:
    def __init__(self, factory: Callable[[], Any] = _new_pyaudio) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._pa: Any = None
        self._open_streams = 0
        self.initialisations = 0
        self._rescan_wanted = False
        self._rescan_interval = RESCAN_FIRST_S
        self._rescan_not_before = 0.0

    @property
    def open_streams(self) -> int:
        with self._lock:
            return self._open_streams

    def acquire(self, rescan: bool = False, reserve: bool = False) -> Any:
        """The PyAudio object; with `rescan`, a fresh device list if no stream is open.

        `reserve` counts a stream from now on (as `stream_opened` does), in the same step,
        so no other user's re-scan can terminate PortAudio while this one opens its stream;
        the caller releases it with `stream_closed` whether the open succeeds or fails.
        Raises AudioDeviceError when PortAudio cannot be initialised.
        """
        with self._lock:
            if self._pa is not None and rescan and self._open_streams == 0:
                self._terminate_locked()
                self._rescan_wanted = False
            if self._pa is None:
                with quiet_stderr():
                    try:
                        self._pa = self._factory()
                    except OSError as exc:
                        raise AudioDeviceError(f"cannot initialise PortAudio: {exc}") from exc
                self.initialisations += 1
            if reserve:
                self._open_streams += 1
            return self._pa

    def request_rescan(self) -> None:
        """A device is missing and streams are open, so no re-scan can happen: ask the
        owners of those streams (the capture worker) to close them for one, between two
        chunks. Asked for with a doubling interval (0.5 s to 60 s), since each re-scan
        costs the microphone a reopen; `rescan_satisfied` starts the interval over."""
        now = time.monotonic()
        with self._lock:
            if self._open_streams == 0 or now < self._rescan_not_before:
                return
            self._rescan_wanted = True
            self._rescan_not_before = now + self._rescan_interval
            self._rescan_interval = min(RESCAN_MAX_S, self._rescan_interval * 2)

    @property
    def rescan_wanted(self) -> bool:
        with self._lock:
            return self._rescan_wanted

    def rescan_satisfied(self) -> None:
        """The missing device was found."""
        with self._lock:
            self._rescan_wanted = False
            self._rescan_interval = RESCAN_FIRST_S
            self._rescan_not_before = 0.0

    def stream_opened(self) -> None:
        with self._lock:
            self._open_streams += 1

    def stream_closed(self) -> None:
        with self._lock:
            self._open_streams = max(0, self._open_streams - 1)

    def terminate(self) -> None:
        """At exit (or for a private host, when its only stream closed).

        Skipped while a stream is still open (a close hung in the driver): Pa_Terminate would
        hang with it, and the process exit releases PortAudio anyway.
        """
        # Bounded: a thread hung inside Pa_Initialize holds the lock, and exit must not
        # wait for it (systemd would have to kill us).
        if not self._lock.acquire(timeout=TERMINATE_LOCK_S):
            log.warning("not terminating PortAudio: another call into it hangs")
            return
        try:
            if self._open_streams:
                log.warning("not terminating PortAudio: %d stream(s) still open (a close "
                            "hangs in the driver)", self._open_streams)
                return
            self._terminate_locked()
        finally:
            self._lock.release()

    def _terminate_locked(self) -> None:
        pa, self._pa = self._pa, None
        if pa is not None:
            try:
                pa.terminate()
            except Exception as exc:  # noqa: BLE001 - terminating must never raise
                log.debug("terminating PortAudio failed: %s", exc)
