"""The daily cap on streamed audio (`stream.max_streamed_s_per_day`): the bill's brake.

A session is paid by the second of audio it gets, so an always-on microphone next to a
television could stream all day. `DailyBudget` adds up the seconds the uplink sent (every
chunk, replays included: the server bills them too) per *local* calendar day; once the
day's total reaches the cap, `allows()` answers False (the speech gate closes) until local
midnight, when the count starts again from zero.

The count is kept in a small state file (`$STATE_DIRECTORY/streamed_today`: one line,
``<date> <seconds>``), written at most every `SAVE_EVERY_S` while it changes and at stop,
so a restart loop cannot reset the cap. A file that cannot be parsed is ignored with a
warning (the count starts at zero: a damaged file must not keep a device silent for ever).
A date in the file later than the clock's (a device without a real-time clock boots with
an old time until NTP answers) is kept as "today": the count only ever starts afresh when
the clock reaches a later day, never because the clock went back.

Threads: the uplink calls `add`, the capture chain calls `allows`, the main loop calls
`state`, `set_cap` (reload) and `save`; one lock covers the figures. File writes happen
only on the main loop's thread (`maybe_save`, `save`), never on the sender's.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgevoice.clock import Clock
from edgevoice.health.status import write_atomic

log = logging.getLogger("edgevoice.budget")

STATE_FILE_NAME = "streamed_today"
STATE_FILE_MODE = 0o640
SAVE_EVERY_S = 5.0  # an SD card should not be written every tick
MAX_STATE_BYTES = 256
_LINE = re.compile(r"(\d{4}-\d{2}-\d{2}) (\d+(?:\.\d+)?)")


def local_day(wall: float) -> str:
    """The local calendar date of unix time `wall` (ISO, so later days sort later)."""
    return time.strftime("%Y-%m-%d", time.localtime(wall))


def next_midnight(day: str) -> float:
    """Unix time of the local midnight that ends `day` (mktime normalises day + 1)."""
    year, month, mday = (int(part) for part in day.split("-"))
    return time.mktime((year, month, mday + 1, 0, 0, 0, 0, 0, -1))


@dataclass(frozen=True)
class BudgetState:
    """What the status, the STATUS= line and the metrics show."""

    day: str
    streamed_s: float  # seconds streamed on `day`
    cap_s: float | None
    capped: bool
    reason: str  # why the gate is closed ("" while it is not)
    reopens_at: float | None  # unix time of the local midnight that ends the cap


class DailyBudget:
    def __init__(self, cap_s: float | None, path: Path | None, *,
                 wall_clock: Clock = time.time, clock: Clock = time.monotonic,
                 save_every_s: float = SAVE_EVERY_S) -> None:
        self._lock = threading.Lock()
        self._wall_clock = wall_clock
        self._clock = clock
        self._save_every_s = save_every_s
        self._path = path
        self._cap_s = cap_s
        self._day = local_day(wall_clock())
        self._streamed_us = 0  # microseconds: 20 ms chunks add up exactly
        self._dirty = False
        self._saved_at: float | None = None
        self._save_error = ""
        self._load()
        self._roll_at = self._day_end(self._day)
        self._capped = self._over()
        if self._capped:
            self._log_capped(self.state())

    # -- the figures ---------------------------------------------------------------------

    def add(self, seconds: float) -> None:
        """The uplink sent `seconds` of audio (its thread)."""
        with self._lock:
            self._roll()
            self._streamed_us += round(seconds * 1e6)
            self._dirty = True
            opened, closed = self._transition()
        self._report(opened, closed)

    def allows(self) -> bool:
        """False while today's total is at the cap (the capture thread, per chunk)."""
        if self._cap_s is None and not self._capped:
            return True  # no cap: nothing can close (set_cap reports a change itself)
        with self._lock:
            self._roll()
            opened, closed = self._transition()
            capped = self._capped
        self._report(opened, closed)
        return not capped

    def set_cap(self, cap_s: float | None) -> None:
        """A reload changed the cap: it applies at once, in either direction."""
        with self._lock:
            if cap_s == self._cap_s:
                return
            self._cap_s = cap_s
            self._roll()
            opened, closed = self._transition()
        self._report(opened, closed)

    def state(self) -> BudgetState:
        # The transition too: muted (or no chunks), nothing else asks after midnight.
        with self._lock:
            self._roll()
            opened, closed = self._transition()
            state = self._state()
        self._report(opened, closed)
        return state

    # -- the state file ------------------------------------------------------------------

    def maybe_save(self) -> None:
        """Write the count if it changed and the last write is `save_every_s` old (main
        loop). Without a cap nothing is written: the file only matters to a cap."""
        now = self._clock()
        with self._lock:
            if not self._dirty or self._cap_s is None:
                return
            if self._saved_at is not None and now - self._saved_at < self._save_every_s:
                return
        self.save()

    def save(self) -> None:
        """Write the count now (at stop, and from `maybe_save`); errors are logged once."""
        if self._path is None:
            return
        with self._lock:
            self._roll()
            line = f"{self._day} {self._streamed_us / 1e6:.3f}\n"
            self._dirty = False
            self._saved_at = self._clock()
        try:
            write_atomic(self._path, line, mode=STATE_FILE_MODE)
        except OSError as exc:
            text = str(exc)
            if text != self._save_error:
                self._save_error = text
                log.error("cannot keep the streamed-today count in %s (a restart would "
                          "reset the daily cap): %s", self._path, text,
                          extra={"edgevoice": {"EVENT": "budget.save_failed"}})
            with self._lock:
                self._dirty = True
            return
        if self._save_error:
            self._save_error = ""
            log.info("streamed-today count written again to %s", self._path)

    def _load(self) -> None:
        path = self._path
        if path is None:
            return
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read the streamed-today count from %s, counting from zero: "
                        "%s", path, exc, extra={"edgevoice": {"EVENT": "budget.state_ignored"}})
            return
        match = _LINE.fullmatch(raw.decode("utf-8", "replace").strip()) \
            if len(raw) <= MAX_STATE_BYTES else None
        if match is None or not _valid_day(match[1]):
            log.warning("ignoring %s: not a streamed-today count (expected '<date> "
                        "<seconds>'); counting today's streamed audio from zero", path,
                        extra={"edgevoice": {"EVENT": "budget.state_ignored"}})
            return
        day, seconds = match[1], float(match[2])
        if day >= self._day:  # today, or a clock that went back: keep counting
            self._day, self._streamed_us = day, round(seconds * 1e6)

    # -- inside the lock -----------------------------------------------------------------

    def _roll(self) -> None:
        # Asked per chunk by two threads: the calendar is consulted only once the day's
        # local midnight has passed (localtime + strftime cost more than the rest).
        wall = self._wall_clock()
        if wall < self._roll_at:
            return
        today = local_day(wall)
        if today > self._day:
            self._day = today
            self._streamed_us = 0
            self._dirty = True
            self._roll_at = self._day_end(today)
        else:  # midnight by the table, not yet by the calendar (a time-zone edge)
            self._roll_at = wall + 60.0

    @staticmethod
    def _day_end(day: str) -> float:
        try:
            return next_midnight(day)
        except (OverflowError, ValueError):
            return 0.0  # unrepresentable: consult the calendar every time

    def _over(self) -> bool:
        return self._cap_s is not None and self._streamed_us >= round(self._cap_s * 1e6)

    def _transition(self) -> tuple[BudgetState | None, BudgetState | None]:
        """(reopened, closed): the state to report when `capped` just changed."""
        capped = self._over()
        if capped == self._capped:
            return None, None
        self._capped = capped
        state = self._state()
        return (None, state) if capped else (state, None)

    def _state(self) -> BudgetState:
        capped = self._capped
        reopens_at = next_midnight(self._day) if capped else None
        reason = ""
        if capped and reopens_at is not None:
            until = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(reopens_at))
            reason = (f"daily cap reached: {self._streamed_us / 1e6:.0f} s streamed on {self._day} "
                      f"(stream.max_streamed_s_per_day {self._cap_s:g}); nothing streamed "
                      f"until {until}")
        return BudgetState(self._day, self._streamed_us / 1e6, self._cap_s, capped, reason,
                           reopens_at)

    # -- the log -------------------------------------------------------------------------

    def _report(self, opened: BudgetState | None, closed: BudgetState | None) -> None:
        if closed is not None:
            self._log_capped(closed)
        if opened is not None:
            why = (f"a new day, {opened.day}" if opened.streamed_s == 0
                   else "the cap was raised or removed")
            log.info("daily cap reopened (%s): streaming again, %.0f s streamed today",
                        why, opened.streamed_s,
                        extra={"edgevoice": {"EVENT": "budget.reopened"}})

    @staticmethod
    def _log_capped(state: BudgetState) -> None:
        log.warning("%s", state.reason, extra={"edgevoice": {"EVENT": "budget.capped"}})


def _valid_day(day: str) -> bool:
    try:
        time.strptime(day, "%Y-%m-%d")
    except ValueError:
        return False
    return True
