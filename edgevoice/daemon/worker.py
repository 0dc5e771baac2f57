"""The one shape of every long-lived worker thread: a loop, a stop event, a heartbeat.

`step()` does one bounded piece of work (it must wait with a timeout, so the loop comes
round and beats even when idle). Waits longer than a beat go through `sleep()`, which wakes
early on stop and keeps the heartbeat fresh: a worker waiting for a device on purpose is
healthy, a worker stuck in a C call is not. Shutdown is two-phase (`request_stop` on every
worker first, then `join` each with what is left of one budget), so slow workers stop in
parallel (see Supervisor._shutdown) and a thread that will not die is reported, never
waited for forever.
"""

from __future__ import annotations

import logging
import threading
import time

from edgevoice.clock import Clock

log = logging.getLogger("edgevoice.worker")

BEAT_SLICE_S = 0.25  # a sleeping worker beats at least this often


class Worker:
    def __init__(self, name: str, clock: Clock = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.beat = clock()

    # -- the loop ------------------------------------------------------------------------

    def step(self) -> None:
        """One bounded iteration of the worker's job."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Called once on the worker's thread when the loop ends."""

    def wake(self) -> None:
        """Interrupt whatever the worker waits on (a queue), so it sees the stop at once."""

    def _main(self) -> None:
        try:
            while not self._stop.is_set():
                self.beat = self._clock()
                self.step()
        except Exception:
            log.exception("worker %s crashed", self.name)
            raise
        finally:
            try:
                self.cleanup()
            finally:
                self.beat = self._clock()

    def sleep(self, seconds: float) -> bool:
        """Wait up to `seconds`, beating; True if a stop was requested meanwhile."""
        end = self._clock() + max(0.0, seconds)
        while not self._stop.is_set():
            left = end - self._clock()
            if left <= 0:
                return False
            self.beat = self._clock()
            self._stop.wait(min(left, BEAT_SLICE_S))
        return True

    # -- control -------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()
        self.wake()

    def join(self, timeout: float) -> bool:
        """Wait for the thread; False (and a warning) if it is still alive after `timeout`."""
        if self._thread.ident is None:
            return True  # never started
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            log.warning("worker %s did not stop within %.1fs (a call hangs; leaving it "
                        "behind)", self.name, timeout,
                        extra={"edgevoice": {"EVENT": "worker.stuck"}})
            return False
        return True

    def stop(self, timeout: float) -> bool:
        self.request_stop()
        return self.join(timeout)

