"""The daily cap on streamed audio (edgevoice/daemon/budget.py), on a fake wall clock.

Local midnight is tested here, at unit level, in a time zone set for the test (UTC+9, so
local and UTC midnight differ): waiting for a real midnight end to end is too slow. The
end-to-end test (the real daemon, the devserver) is tests/test_budget_e2e.py.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from fakes import FakeClock
from test_metrics import PROMTOOL, full_snapshot, promtool, samples, value

from edgevoice.commands.status import render_text
from edgevoice.daemon.backlog import AudioChunk, ChunkBacklog
from edgevoice.daemon.budget import DailyBudget, local_day, next_midnight
from edgevoice.daemon.stats import Stats
from edgevoice.daemon.uplink import Uplink
from edgevoice.health.metrics import metric_names, metrics_text
from edgevoice.health.status import status_line
from edgevoice.realtime.link import SessionLink

TZ = "XJT-9"  # POSIX rule (no tzdata needed): local time is UTC+9 all year, named "XJT"
# 2026-11-29 14:59:00 UTC is 23:59:00 local time.
BEFORE_MIDNIGHT = 1_795_964_340.0
LOCAL_MIDNIGHT = BEFORE_MIDNIGHT + 60.0


@pytest.fixture(autouse=True)
def local_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", TZ)
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if getattr(r, "edgevoice", {}).get("EVENT") == name]


def test_the_test_clock_is_where_it_says() -> None:
    assert time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(BEFORE_MIDNIGHT)) == \
        "2026-11-29 23:59:00 XJT"
    assert time.gmtime(BEFORE_MIDNIGHT).tm_hour == 14  # UTC midnight is not local midnight
    assert next_midnight("2026-11-29") == LOCAL_MIDNIGHT
    assert next_midnight("2026-12-31") == time.mktime((2027, 1, 1, 0, 0, 0, 0, 0, -1))


def test_counts_and_closes_at_the_cap(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edgevoice")
    wall = FakeClock(BEFORE_MIDNIGHT - 3600)
    budget = DailyBudget(10.0, None, wall_clock=wall, clock=FakeClock())
    for _ in range(499):
        budget.add(0.02)
    state = budget.state()
    assert budget.allows() and not state.capped and state.reason == ""
    assert state.streamed_s == pytest.approx(9.98) and state.day == "2026-11-29"
    assert not events(caplog, "budget.capped")
    budget.add(0.02)
    assert not budget.allows()
    state = budget.state()
    assert state.capped and state.reopens_at == LOCAL_MIDNIGHT
    assert "daily cap reached: 10 s streamed on 2026-11-29" in state.reason
    assert "stream.max_streamed_s_per_day 10" in state.reason
    assert "until 2026-11-30 00:00 XJT" in state.reason
    (warning,) = events(caplog, "budget.capped")  # once, not per chunk
    assert warning.levelno == logging.WARNING and warning.getMessage() == state.reason
    budget.add(0.02)  # a chunk that was already on its way still counts
    assert budget.state().streamed_s == pytest.approx(10.02)
    assert len(events(caplog, "budget.capped")) == 1


def test_reopens_at_local_midnight(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edgevoice")
    wall = FakeClock(BEFORE_MIDNIGHT)
    budget = DailyBudget(5.0, None, wall_clock=wall, clock=FakeClock())
    budget.add(5.0)
    assert not budget.allows()
    wall.advance(59.9)  # 23:59:59.9 local
    assert not budget.allows() and budget.state().capped
    assert not events(caplog, "budget.reopened")
    wall.advance(0.1)  # 00:00:00 local (15:00 UTC)
    assert budget.allows()
    state = budget.state()
    assert not state.capped and state.streamed_s == 0 and state.day == "2026-11-30"
    (reopened,) = events(caplog, "budget.reopened")
    assert "a new day, 2026-11-30" in reopened.getMessage()
    budget.add(4.0)
    assert budget.allows()


def test_the_status_reopens_at_midnight_without_a_chunk(
        caplog: pytest.LogCaptureFixture) -> None:
    """Muted, or a microphone that delivers nothing: no chunk asks `allows()` after
    midnight, yet the status (the main loop's `state()`) must not say "capped until the
    next midnight" for the new day."""
    caplog.set_level(logging.INFO, "edgevoice")
    wall = FakeClock(BEFORE_MIDNIGHT)
    budget = DailyBudget(5.0, None, wall_clock=wall, clock=FakeClock())
    budget.add(5.0)
    assert budget.state().capped
    wall.advance(60.0)  # 00:00:00 local
    state = budget.state()
    assert not state.capped and state.reason == "" and state.reopens_at is None
    assert state.day == "2026-11-30" and state.streamed_s == 0
    (reopened,) = events(caplog, "budget.reopened")
    assert "a new day, 2026-11-30" in reopened.getMessage()


def test_kept_across_a_new_instance(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edgevoice")
    path = tmp_path / "state" / "streamed_today"
    wall = FakeClock(BEFORE_MIDNIGHT - 600)
    first = DailyBudget(8.0, path, wall_clock=wall, clock=FakeClock())
    first.add(6.5)
    first.save()
    assert path.read_text() == "2026-11-29 6.500\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)
    # A restart: the count goes on from the file, so a restart loop cannot reset the cap.
    second = DailyBudget(8.0, path, wall_clock=wall, clock=FakeClock())
    assert second.state().streamed_s == 6.5 and second.allows()
    second.add(1.5)
    second.save()
    assert len(events(caplog, "budget.capped")) == 1  # 8 s of 8
    third = DailyBudget(8.0, path, wall_clock=wall, clock=FakeClock())
    assert not third.allows()  # capped from the start, and says so
    assert len(events(caplog, "budget.capped")) == 2  # second's add, third's start
    # The next day the file's count is yesterday's: it starts from zero.
    wall.now = LOCAL_MIDNIGHT + 1
    fourth = DailyBudget(8.0, path, wall_clock=wall, clock=FakeClock())
    assert fourth.allows() and fourth.state().streamed_s == 0


def test_a_clock_that_went_back_keeps_the_count(tmp_path: Path) -> None:
    """A device without a real-time clock boots with an older time until NTP answers."""
    path = tmp_path / "streamed_today"
    path.write_text("2026-11-29 9.000\n")
    wall = FakeClock(BEFORE_MIDNIGHT - 5 * 86400)
    budget = DailyBudget(9.0, path, wall_clock=wall, clock=FakeClock())
    assert not budget.allows() and budget.state().day == "2026-11-29"
    wall.now = BEFORE_MIDNIGHT  # NTP: the same day after all
    assert not budget.allows()


@pytest.mark.parametrize("content", [b"garbage\n", b"2026-11-29\n", b"2026-13-45 3.0\n",
                                     b"2026-11-29 -3\n", b"\xff\xfe", b"",
                                     b"2026-11-29 " + b"9" * 400])
def test_a_corrupt_state_file_is_ignored_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes) -> None:
    caplog.set_level(logging.INFO, "edgevoice")
    path = tmp_path / "streamed_today"
    path.write_bytes(content)
    budget = DailyBudget(5.0, path, wall_clock=FakeClock(BEFORE_MIDNIGHT), clock=FakeClock())
    assert budget.allows() and budget.state().streamed_s == 0
    (warning,) = events(caplog, "budget.state_ignored")
    assert warning.levelno == logging.WARNING and str(path) in warning.getMessage()
    budget.add(1.0)
    budget.save()  # replaced by a good one
    assert path.read_text() == "2026-11-29 1.000\n"


def test_written_at_most_every_few_seconds(tmp_path: Path) -> None:
    path = tmp_path / "streamed_today"
    mono = FakeClock()
    budget = DailyBudget(100.0, path, wall_clock=FakeClock(BEFORE_MIDNIGHT), clock=mono,
                         save_every_s=5.0)
    budget.maybe_save()
    assert not path.exists()  # nothing counted yet: nothing to write
    budget.add(1.0)
    budget.maybe_save()
    assert path.read_text() == "2026-11-29 1.000\n"
    budget.add(1.0)
    mono.advance(4.9)
    budget.maybe_save()
    assert path.read_text() == "2026-11-29 1.000\n"
    mono.advance(0.1)
    budget.maybe_save()
    assert path.read_text() == "2026-11-29 2.000\n"
    # Without a cap nothing is written (an SD card is not worn for a figure nobody needs).
    path.unlink()
    budget.set_cap(None)
    budget.add(1.0)
    mono.advance(10)
    budget.maybe_save()
    assert not path.exists()


def test_a_write_error_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edgevoice")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    mono = FakeClock()
    budget = DailyBudget(100.0, blocker / "streamed_today",
                         wall_clock=FakeClock(BEFORE_MIDNIGHT), clock=mono, save_every_s=1)
    for _ in range(3):
        budget.add(1.0)
        mono.advance(2)
        budget.maybe_save()
    assert len(events(caplog, "budget.save_failed")) == 1


def test_a_reload_changes_the_cap_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edgevoice")
    budget = DailyBudget(None, None, wall_clock=FakeClock(BEFORE_MIDNIGHT), clock=FakeClock())
    budget.add(30.0)
    assert budget.allows() and budget.state().cap_s is None  # counted without a cap too
    budget.set_cap(20.0)
    assert not budget.allows()
    assert len(events(caplog, "budget.capped")) == 1
    budget.set_cap(40.0)
    assert budget.allows()
    (reopened,) = events(caplog, "budget.reopened")
    assert "the cap was raised or removed" in reopened.getMessage()
    budget.set_cap(25.0)
    assert not budget.allows()
    budget.set_cap(None)
    assert budget.allows() and not budget.state().capped


def test_threads_add_while_another_reads() -> None:
    """The uplink adds, the capture thread asks: nothing counted is lost."""
    budget = DailyBudget(1e9, None, wall_clock=FakeClock(BEFORE_MIDNIGHT), clock=FakeClock())
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            assert budget.allows()

    def adder() -> None:
        for _ in range(5000):
            budget.add(1.0)

    threads = [threading.Thread(target=adder) for _ in range(4)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stop.set()
    watcher.join(30)
    assert budget.state().streamed_s == 20000.0


def test_local_day_follows_the_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    assert local_day(BEFORE_MIDNIGHT) == "2026-11-29"
    monkeypatch.setenv("TZ", "UTC0")
    time.tzset()
    assert local_day(BEFORE_MIDNIGHT) == "2026-11-29"
    assert local_day(LOCAL_MIDNIGHT) == "2026-11-29"  # 15:00 UTC: still the same day there
    monkeypatch.setenv("TZ", TZ)
    time.tzset()
    assert local_day(LOCAL_MIDNIGHT) == "2026-11-30"
    assert os.environ["TZ"] == TZ


def test_the_status_line_says_why() -> None:
    budget = DailyBudget(2.0, None, wall_clock=FakeClock(BEFORE_MIDNIGHT), clock=FakeClock())
    budget.add(2.0)
    state = budget.state()
    snap = {"state": "streaming", "capture_rate": 48000, "counters": {"reconnects": 0},
            "capped": state.capped, "capped_reason": state.reason}
    line = status_line(snap, "gpt-realtime-2.1", 60.0)
    assert line.startswith("streaming to gpt-realtime-2.1")
    assert "; capped: daily cap reached: 2 s streamed" in line
    assert line.endswith("until 2026-11-30 00:00 XJT")
    snap["capped"] = False
    assert "capped" not in status_line(snap, "gpt-realtime-2.1", 60.0)


def test_the_bill_in_the_metrics() -> None:
    """The bill's rows: values as in the snapshot, none without a cap or a session, and
    promtool accepts the text (the same check as tests/test_metrics.py)."""
    snap = full_snapshot()
    snap.update(capped=True, capped_reason="daily cap reached: ...", streamed_today_s=1800.0)
    text = metrics_text(snap)
    parsed = samples(text)
    assert value(parsed, "edgevoice_capped") == 1
    assert value(parsed, "edgevoice_streamed_today_seconds") == 1800.0
    assert value(parsed, "edgevoice_max_streamed_seconds_per_day") == 1800.0
    assert value(parsed, "edgevoice_streamed_ratio") == 0.25
    assert value(parsed, "edgevoice_session_captured_seconds") == 40.0
    assert value(parsed, "edgevoice_session_streamed_seconds") == 9.5
    assert value(parsed, "edgevoice_session_streamed_ratio") == 0.2375
    assert value(parsed, "edgevoice_chunks_capped_total") == snap["counters"]["chunks_capped"]
    if PROMTOOL is not None:
        result = promtool("check", "metrics", stdin=text)
        assert result.returncode == 0 and not result.stdout.strip(), result.stdout
    # No cap, no session, nothing captured yet: those gauges are left out, not 0.
    snap.update(max_streamed_s_per_day=None, streamed_ratio=None, session_seconds_captured=None,
                session_seconds_streamed=None, session_streamed_ratio=None, capped=False)
    names = metric_names(metrics_text(snap))
    assert "edgevoice_capped" in names and "edgevoice_streamed_today_seconds" in names
    assert not names & {"edgevoice_max_streamed_seconds_per_day", "edgevoice_streamed_ratio",
                        "edgevoice_session_captured_seconds", "edgevoice_session_streamed_ratio",
                        "edgevoice_session_streamed_seconds"}


def test_the_bill_in_edgevoice_status() -> None:
    data = {"state": "streaming", "chunk_ms": 20, "seconds_captured": 100.0,
            "seconds_streamed": 25.0, "session_seconds_captured": 40.0,
            "session_seconds_streamed": 10.0, "streamed_today_s": 1800.0,
            "max_streamed_s_per_day": 1800.0, "capped": True,
            "capped_reason": "daily cap reached: 1800 s streamed on 2026-11-29 (...)",
            "counters": {"chunks_capped": 150}}
    verdict = {"running": True, "stale": False, "age_s": 0.5}
    lines = render_text(data, verdict, Path("/run/edgevoice/status.json")).splitlines()
    assert "  state:            streaming (CAPPED: daily cap reached: 1800 s streamed on " \
           "2026-11-29 (...))" in lines
    assert "  captured:         100.00 s captured, 25.00 s streamed (25.0 %)" in lines
    assert "  this session:     40.00 s captured, 10.00 s streamed (25.0 %)" in lines
    assert "  today:            1800.00 s streamed of a 1800 s daily cap; held back by the " \
           "cap: 3.00 s, 150 chunks" in lines
    data.update(capped=False, max_streamed_s_per_day=None, session_seconds_captured=None,
                counters={})
    text = render_text(data, verdict, Path("/run/edgevoice/status.json"))
    assert "CAPPED" not in text and "this session" not in text
    assert "  today:            1800.00 s streamed (no daily cap)" in text.splitlines()


class _Session:
    """The part of a session the uplink uses to send audio (unit test of the uplink's
    hooks only; the real session is in tests/test_budget_e2e.py)."""

    def __init__(self) -> None:
        self.session_id = "sess_unit"
        self.failed = threading.Event()
        self.last_event_at = 0.0  # the replay record's bound (never a failure here)
        self.sent: list[bytes] = []

    def send_audio(self, pcm: bytes, rms_dbfs: float, captured_at: float | None = None) -> int:
        self.sent.append(pcm)
        return len(pcm)

    def ping_if_due(self) -> None:
        pass

    def is_quiet(self) -> bool:
        return True


def test_the_uplink_counts_what_it_sends_and_drops_audio_queued_before_the_cap() -> None:
    """A cap of 3 chunks with 5 queued (an outage buffer): 3 go out, 2 are dropped and
    counted; none is sent again once the cap is reached."""
    chunk_s = 0.02
    budget = DailyBudget(3 * chunk_s, None, wall_clock=FakeClock(BEFORE_MIDNIGHT),
                         clock=FakeClock())
    stats = Stats()
    backlog = ChunkBacklog(100)
    uplink = Uplink(backlog, stats, clock=FakeClock(),
                    on_audio_sent=lambda n: budget.add(n / 48000), audio_allowed=budget.allows)
    session = _Session()
    uplink.attach(cast(SessionLink, session), replay_until_seq=-1)
    for seq in range(5):
        backlog.put(AudioChunk(bytes([seq]) * 960, -30.0, 0.0, seq))
    for _ in range(5):
        uplink.step(timeout=0.0)
    assert session.sent == [bytes([seq]) * 960 for seq in range(3)]
    counters = stats.snapshot()["counters"]
    assert counters["chunks_sent"] == 3 and counters["chunks_capped"] == 2
    assert budget.state().capped and budget.state().streamed_s == pytest.approx(0.06)
    assert len(backlog) == 0
