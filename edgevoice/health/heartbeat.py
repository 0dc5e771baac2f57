"""Worker heartbeats and the decision to ping the systemd watchdog.

Every worker thread calls :meth:`HeartbeatRegistry.beat` each time round its loop (a loop
that waits must wait with a timeout, so an idle worker still beats). The capture path also
reports :meth:`HeartbeatRegistry.progress` whenever captured audio actually arrives: a
capture thread can be alive and looping while the device delivers nothing.

The supervisor ticks a :class:`WatchdogGate` often (each time round its own loop). The gate
sends ``WATCHDOG=1`` when a ping is due and the process is healthy:

* every registered worker beat within ``max_age_s``, and
* every progress channel that is expected to move (the capture audio) moved within
  ``max_age_s``.

When unhealthy it stops pinging, so systemd restarts the service after ``WatchdogSec=``,
and logs once which component is stale (again when the set of stale components changes, and
once more when everything is healthy again). Waiting in reconnect backoff is healthy: the
uplink keeps beating while it waits.

Time comes from an injected clock (``time.monotonic`` by default), so tests need no sleeps.
Nothing here sleeps or polls; the caller decides when to tick (``WatchdogGate.seconds_until_due``
tells it how long it may wait).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from edgevoice.clock import Clock
from edgevoice.health.notify import Notifier

__all__ = ["Clock", "HealthVerdict", "HeartbeatRegistry", "WatchdogGate"]

log = logging.getLogger(__name__)



@dataclass
class _Progress:
    last: float
    count: int = 0
    expected: bool = True


class HeartbeatRegistry:
    """Last-beat times of the workers and last-progress times of the data paths.

    Thread-safe; every method holds the lock only for a few dictionary operations, so
    calling ``beat``/``progress`` from a hot loop is cheap.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._beats: dict[str, float] = {}
        self._progress: dict[str, _Progress] = {}

    # -- workers -----------------------------------------------------------------------

    def register(self, name: str, *, expect_progress: bool = False) -> None:
        """Start tracking ``name`` now (registration counts as its first beat).

        ``expect_progress`` also starts a progress channel of the same name that must move.
        """
        now = self._clock()
        with self._lock:
            self._beats[name] = now
            if expect_progress:
                self._set_expected(name, True, now)

    def unregister(self, name: str) -> None:
        """Stop tracking ``name`` (a worker that ends on purpose must unregister)."""
        with self._lock:
            self._beats.pop(name, None)
            self._progress.pop(name, None)

    forget = unregister

    def beat(self, name: str, *, at: float | None = None) -> None:
        """The worker ``name`` is alive (registers it on first use).

        ``at``: when it last was, on the registry's clock, for a supervisor that copies a
        worker's own last-beat timestamp instead of the worker calling in.
        """
        now = self._clock() if at is None else at
        with self._lock:
            self._beats[name] = now

    # -- progress ------------------------------------------------------------------------

    def progress(self, name: str, amount: int = 1, *, at: float | None = None) -> None:
        """Data arrived on channel ``name`` (e.g. ``amount`` captured frames).

        The first call starts the channel as expected to keep moving. ``at`` reports when the
        data arrived (registry clock); reporting the same or an older time again is not new
        progress and changes nothing.
        """
        now = self._clock() if at is None else at
        with self._lock:
            entry = self._progress.get(name)
            if entry is None:
                self._progress[name] = _Progress(last=now, count=amount)
            elif at is None or now > entry.last:
                entry.last = now
                entry.count += amount

    def expect_progress(self, name: str, expected: bool = True) -> None:
        """Declare whether channel ``name`` must keep moving.

        Turn it off while the device is deliberately closed (reopen backoff); turning it on
        again restarts the clock, so the channel gets a full ``max_age_s`` to move.
        """
        now = self._clock()
        with self._lock:
            self._set_expected(name, expected, now)

    def _set_expected(self, name: str, expected: bool, now: float) -> None:
        entry = self._progress.get(name)
        if entry is None:
            self._progress[name] = _Progress(last=now, expected=expected)
        else:
            if expected and not entry.expected:
                entry.last = now
            entry.expected = expected

    def progress_count(self, name: str) -> int:
        with self._lock:
            entry = self._progress.get(name)
            return entry.count if entry is not None else 0

    # -- queries -------------------------------------------------------------------------

    def stale(self, now: float, max_age_s: float) -> list[str]:
        """Workers whose last beat is older than ``max_age_s`` at ``now``, sorted."""
        with self._lock:
            return sorted(name for name, last in self._beats.items() if now - last > max_age_s)

    def starved(self, now: float, max_age_s: float) -> list[str]:
        """Expected progress channels that did not move within ``max_age_s``, sorted."""
        with self._lock:
            return sorted(
                name
                for name, entry in self._progress.items()
                if entry.expected and now - entry.last > max_age_s
            )

    def beat_age(self, name: str, now: float) -> float | None:
        with self._lock:
            last = self._beats.get(name)
        return None if last is None else now - last

    def progress_age(self, name: str, now: float) -> float | None:
        with self._lock:
            entry = self._progress.get(name)
        return None if entry is None else now - entry.last

    def workers(self) -> list[str]:
        with self._lock:
            return sorted(self._beats)


@dataclass(frozen=True)
class HealthVerdict:
    """Outcome of one health evaluation."""

    stale_workers: tuple[str, ...] = ()
    starved_progress: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return not self.stale_workers and not self.starved_progress


class WatchdogGate:
    """Decides, on each :meth:`tick`, whether to send WATCHDOG=1.

    ``interval_s`` defaults to the notifier's ``watchdog_interval_s`` (half of systemd's
    WatchdogSec); with no interval the gate still evaluates and logs health but never pings.
    ``max_age_s`` (how old a beat may be) defaults to that interval, or 10 s without one.
    """

    DEFAULT_MAX_AGE_S = 10.0

    def __init__(
        self,
        registry: HeartbeatRegistry,
        notifier: Notifier,
        *,
        clock: Clock = time.monotonic,
        interval_s: float | None = None,
        max_age_s: float | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._registry = registry
        self._notifier = notifier
        self._clock = clock
        self.interval_s = interval_s if interval_s is not None else notifier.watchdog_interval_s
        if self.interval_s is not None and self.interval_s <= 0:
            raise ValueError(f"watchdog interval must be positive, got {self.interval_s}")
        if max_age_s is None:
            max_age_s = self.interval_s if self.interval_s is not None else self.DEFAULT_MAX_AGE_S
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, got {max_age_s}")
        self.max_age_s = max_age_s
        self._log = logger or log
        self._lock = threading.Lock()
        self._last_ping: float | None = None
        self._reported: HealthVerdict | None = None  # the unhealthy verdict last logged
        self.pings = 0

    @property
    def enabled(self) -> bool:
        """Whether systemd expects watchdog pings from us."""
        return self.interval_s is not None

    def evaluate(self, now: float | None = None) -> HealthVerdict:
        """Current health, without side effects."""
        at = self._clock() if now is None else now
        return HealthVerdict(
            stale_workers=tuple(self._registry.stale(at, self.max_age_s)),
            starved_progress=tuple(self._registry.starved(at, self.max_age_s)),
        )

    def tick(self) -> bool:
        """Evaluate health and ping when due and healthy. Returns True if it pinged."""
        with self._lock:
            now = self._clock()
            verdict = self.evaluate(now)
            if not verdict.healthy:
                self._report_unhealthy(verdict, now)
                return False
            if self._reported is not None:
                self._reported = None
                self._log.info(
                    "watchdog: all components healthy again",
                    extra={"edgevoice": {"EVENT": "watchdog.healthy"}},
                )
            if self.interval_s is None:
                return False
            if self._last_ping is not None and now - self._last_ping < self.interval_s:
                return False
            self._notifier.watchdog_ping()
            self._last_ping = now
            self.pings += 1
            return True

    def seconds_until_due(self) -> float | None:
        """How long the caller may wait before the next tick matters (None: no watchdog)."""
        if self.interval_s is None:
            return None
        with self._lock:
            if self._last_ping is None:
                return 0.0
            return max(0.0, self._last_ping + self.interval_s - self._clock())

    def _report_unhealthy(self, verdict: HealthVerdict, now: float) -> None:
        if verdict == self._reported:
            return
        self._reported = verdict
        parts: list[str] = []
        for name in verdict.stale_workers:
            age = self._registry.beat_age(name, now)
            parts.append(f"worker {name} silent for {age:.1f}s" if age is not None else name)
        for name in verdict.starved_progress:
            age = self._registry.progress_age(name, now)
            parts.append(f"no {name} data for {age:.1f}s" if age is not None else name)
        self._log.warning(
            "watchdog: withholding keep-alive, %s (limit %.1fs)",
            "; ".join(parts),
            self.max_age_s,
            extra={
                "edgevoice": {
                    "EVENT": "watchdog.unhealthy",
                    "STALE": ",".join(verdict.stale_workers + verdict.starved_progress),
                }
            },
        )
