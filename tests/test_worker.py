"""The worker base: a loop that beats, a sleep that beats, a stop that reports a stuck thread."""

from __future__ import annotations

import logging
import threading

import pytest
from fakes import wait_until

from edgevoice.daemon.worker import BEAT_SLICE_S, Worker


class Sleeper(Worker):
    """Sleeps on purpose (like waiting for a device) for longer than a beat."""

    def __init__(self) -> None:
        super().__init__("sleeper")
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        self.sleep(30.0)


class Stuck(Worker):
    """Hangs in a call that ignores the stop event (like a C call in a driver)."""

    def __init__(self) -> None:
        super().__init__("stuck")
        self.release = threading.Event()

    def step(self) -> None:
        self.release.wait(10.0)


def test_a_sleeping_worker_keeps_beating_and_stops_at_once() -> None:
    worker = Sleeper()
    worker.start()
    try:
        first = worker.beat
        assert wait_until(lambda: worker.beat > first + 2 * BEAT_SLICE_S, 5.0)
        assert worker.steps == 1  # still inside the one long sleep
    finally:
        assert worker.stop(timeout=2.0)
    assert not worker.alive


def test_a_stuck_worker_is_reported_not_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    worker = Stuck()
    worker.start()
    try:
        with caplog.at_level(logging.WARNING, logger="edgevoice.worker"):
            assert worker.stop(timeout=0.2) is False
        assert "worker stuck did not stop within 0.2s" in caplog.text
    finally:
        worker.release.set()
        assert worker.join(5.0)


def test_a_worker_never_started_joins_at_once() -> None:
    assert Sleeper().stop(timeout=0.0)
