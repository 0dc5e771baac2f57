"""Backoff and the outage backlog: the two pieces that keep memory flat and servers calm."""

from __future__ import annotations

import random
import threading

import pytest

from edgevoice.daemon.backlog import AudioChunk, ChunkBacklog, QueuedItem
from edgevoice.daemon.backoff import Backoff


def test_full_jitter_stays_under_a_growing_capped_ceiling() -> None:
    backoff = Backoff(1.0, 30.0, 2.0, rng=random.Random(7))
    ceilings = []
    for _ in range(12):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
        ceilings.append(ceiling)
    assert ceilings[:6] == [1, 2, 4, 8, 16, 30]
    assert max(ceilings) == 30.0
    # Jitter really spreads: not all delays are the ceiling.
    delays = [Backoff(1.0, 30.0, 2.0, rng=random.Random(i)).next_delay() for i in range(50)]
    assert len({round(d, 3) for d in delays}) > 40


def test_reset_and_retry_after_floor() -> None:
    backoff = Backoff(1.0, 60.0, 2.0, rng=random.Random(1))
    for _ in range(5):
        backoff.next_delay()
    assert backoff.ceiling() == 32.0
    backoff.reset()
    assert backoff.ceiling() == 1.0
    assert backoff.next_delay(at_least_s=7.5) >= 7.5


def test_backoff_survives_weeks_offline() -> None:
    backoff = Backoff(1.0, 60.0, 2.0)
    for _ in range(100_000):
        backoff.next_delay()
    assert backoff.ceiling() == 60.0


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(0.0, 1.0, 2.0)
    with pytest.raises(ValueError, match="multiplier"):
        Backoff(1.0, 2.0, 0.5)


def chunk(seq: int) -> AudioChunk:
    return AudioChunk(seq.to_bytes(2, "little") * 4, -20.0, 0.0, seq)


def test_backlog_drops_oldest_and_counts() -> None:
    backlog = ChunkBacklog(3)
    for seq in range(5):
        backlog.put(chunk(seq))
    assert backlog.dropped == 2
    got = [backlog.get(0.01) for _ in range(4)]
    assert [c.seq for c in got if isinstance(c, AudioChunk)] == [2, 3, 4]
    assert got[3] is None


def test_push_front_keeps_order_and_bound() -> None:
    backlog = ChunkBacklog(4)
    backlog.put(chunk(10))
    backlog.push_front([chunk(8), chunk(9)])
    assert [backlog.get(0)] and len(backlog) == 2
    backlog.put(chunk(11))
    backlog.put(chunk(12))
    backlog.push_front([chunk(1)])  # full: the given-back chunk is the oldest, so dropped
    assert backlog.dropped == 1
    assert [c.seq for c in iter(lambda: backlog.get(0), None)
            if isinstance(c, AudioChunk)] == [9, 10, 11, 12]


def test_get_wakes_on_put() -> None:
    backlog = ChunkBacklog(2)
    result: list[QueuedItem | None] = []
    reader = threading.Thread(target=lambda: result.append(backlog.get(10.0)))
    reader.start()
    backlog.put(chunk(1))
    reader.join(5.0)
    assert not reader.is_alive() and isinstance(result[0], AudioChunk) and result[0].seq == 1
    assert backlog.clear() == 0


def test_every_drop_is_reported_whoever_causes_it() -> None:
    reported: list[int] = []
    backlog = ChunkBacklog(3, on_drop=reported.append)
    for seq in range(4):
        backlog.put(chunk(seq))  # capture overflows the buffer: 1
    backlog.push_front([chunk(99)])  # the sender gives one back into a full buffer: 1
    backlog.resize(1)  # a reload shrinks the buffer: 2
    assert sum(reported) == backlog.dropped == 4
