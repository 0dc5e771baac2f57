"""The session's audio timeline once its ring has wrapped (issue 12: it keeps a bounded
number of chunks in C doubles, oldest overwritten)."""

from __future__ import annotations

import pytest

from edgevoice.realtime.timeline import AudioTimeline, chunks_to_keep

CHUNK_MS = 20.0


def _filled(keep: int, chunks: int, first_capture: float = 1000.0) -> AudioTimeline:
    timeline = AudioTimeline(keep=keep)
    for i in range(chunks):
        timeline.add(CHUNK_MS, first_capture + i * CHUNK_MS / 1000)
    return timeline


@pytest.mark.parametrize("chunks", [1, 7, 50, 51, 137, 500])
def test_every_kept_offset_maps_to_its_capture_time(chunks: int) -> None:
    keep = 50
    timeline = _filled(keep, chunks)
    oldest = max(0, chunks - keep)
    for i in range(oldest, chunks):
        for into in (0.0, 5.0, 19.5):
            expected = 1000.0 + i * CHUNK_MS / 1000 + into / 1000
            assert timeline.captured_at(i * CHUNK_MS + into) == pytest.approx(expected)
    # Past the newest chunk: its end edge; the offset counter goes on regardless.
    assert timeline.captured_at(chunks * CHUNK_MS + 500) == pytest.approx(
        1000.0 + (chunks - 1) * CHUNK_MS / 1000 + CHUNK_MS / 1000)
    assert timeline.offset_ms == chunks * CHUNK_MS


def test_an_offset_older_than_what_is_kept_is_unknown() -> None:
    timeline = _filled(keep=50, chunks=137)  # chunks 87..136 kept
    assert timeline.captured_at(87 * CHUNK_MS - 10) is None
    assert timeline.captured_at(87 * CHUNK_MS - 0.5) == pytest.approx(1000.0 + 87 * 0.02)


def test_chunks_of_unknown_capture_time_move_the_offset_only() -> None:
    timeline = AudioTimeline(keep=4)
    timeline.add(CHUNK_MS, None)
    timeline.add(CHUNK_MS, 5.0)
    assert timeline.captured_at(30.0) == pytest.approx(5.010)
    assert timeline.captured_at(5.0) is None
    assert AudioTimeline().captured_at(0.0) is None


@pytest.mark.parametrize(("max_utterance_s", "outage_buffer_s", "chunk_ms", "keep"), [
    (30.0, 30.0, 20, 6_000),  # the defaults: two minutes
    (90.0, 30.0, 20, 9_000),  # the utterance, the outage buffer behind its replay, a minute
    (30.0, 300.0, 20, 19_500),
    (600.0, 0.0, 20, 33_000),
    (30.0, 30.0, 100, 1_200),
    (30.0, 30.0, 10, 12_000),
])
def test_a_session_keeps_its_longest_utterance_the_outage_and_the_wait_for_a_transcript(
        max_utterance_s: float, outage_buffer_s: float, chunk_ms: int, keep: int) -> None:
    assert chunks_to_keep(max_utterance_s, outage_buffer_s, chunk_ms) == keep
