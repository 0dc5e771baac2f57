"""Which moment of the microphone each millisecond of a session's input audio came from.

The server speaks of input audio in milliseconds since its session began
(`audio_start_ms`, `audio_end_ms`). With a speech gate the audio a session got has gaps,
and after a reconnect it starts with replayed audio, so the offset alone says neither when
something was said nor whether it was heard before. The sender records every chunk here;
transcripts map the server's offsets back to capture time (and from that, wall time).
"""

from __future__ import annotations

import bisect
import math
import threading
from array import array

# Transcripts come within seconds of an utterance's end, and an utterance is cut at
# stream.max_utterance_s (30 s by default). After a reconnect the replayed utterance goes out
# first and the outage buffer right behind it, at the link's speed, before its transcript
# comes. So the timeline covers the longest utterance, the outage buffer and a minute, two
# minutes at least. Kept in C doubles (24 bytes a chunk: 144 kB for two minutes of 20 ms
# chunks, the defaults); three deques of Python floats took about 100 bytes a chunk.
KEEP_MIN_S = 120.0
TRANSCRIPT_WAIT_S = 60.0


def chunks_to_keep(max_utterance_s: float, outage_buffer_s: float, chunk_ms: int) -> int:
    """How many chunks a session's timeline keeps for these settings."""
    seconds = max(KEEP_MIN_S, max_utterance_s + outage_buffer_s + TRANSCRIPT_WAIT_S)
    return math.ceil(seconds * 1000 / chunk_ms)


KEEP_CHUNKS = chunks_to_keep(0.0, 0.0, 20)  # without settings (tests, the doctor): 2 minutes


class _Chunks:
    """The last `keep` chunks, as three arrays of C doubles used as one ring: a chunk's
    session offset (ms, ascending), the capture time of its first sample, its duration."""

    __slots__ = ("captured", "durations", "head", "keep", "starts")

    def __init__(self, keep: int) -> None:
        self.starts = array("d")
        self.captured = array("d")
        self.durations = array("d")
        self.head = 0  # the oldest chunk's index in the arrays, once they are full
        self.keep = keep

    def __len__(self) -> int:
        return len(self.starts)

    def index(self, i: int) -> int:
        """The arrays' index of the i-th oldest chunk (0 <= i < len)."""
        return (self.head + i) % len(self.starts)

    def append(self, start_ms: float, captured_at: float, duration_ms: float) -> None:
        if len(self.starts) < self.keep:
            self.starts.append(start_ms)
            self.captured.append(captured_at)
            self.durations.append(duration_ms)
        else:
            head = self.head
            self.starts[head] = start_ms
            self.captured[head] = captured_at
            self.durations[head] = duration_ms
            self.head = (head + 1) % self.keep


class AudioTimeline:
    def __init__(self, keep: int = KEEP_CHUNKS) -> None:
        self._lock = threading.Lock()
        self._chunks = _Chunks(keep)
        self._offset_ms = 0.0
        self._commits: list[float] = []  # offsets at which a commit was sent

    @property
    def offset_ms(self) -> float:
        """Input audio the session got so far (its own timeline)."""
        with self._lock:
            return self._offset_ms

    def add(self, duration_ms: float, captured_at: float | None) -> None:
        """Called by the sender after each chunk; `captured_at` None: unknown (tests)."""
        with self._lock:
            if captured_at is not None:
                self._chunks.append(self._offset_ms, captured_at, duration_ms)
            self._offset_ms += duration_ms

    def mark_commit(self) -> None:
        with self._lock:
            self._commits.append(self._offset_ms)
            del self._commits[:-64]

    def commits(self) -> list[float]:
        with self._lock:
            return list(self._commits)

    def captured_at(self, offset_ms: float) -> float | None:
        """Capture time (monotonic) of the sample at `offset_ms`, or None when it is not
        (or no longer) known. An offset in no chunk maps to the nearest chunk's edge."""
        with self._lock:
            chunks = self._chunks
            if not len(chunks):
                return None
            starts = chunks.starts
            # Past the last chunk starting at or before offset_ms, in the ring's order.
            lo = bisect.bisect_right(range(len(chunks)), offset_ms,
                                     key=lambda k: starts[chunks.index(k)])
            if lo == 0:
                oldest = chunks.index(0)
                return None if offset_ms < starts[oldest] - 1 else chunks.captured[oldest]
            i = chunks.index(lo - 1)
            into = min(max(offset_ms - starts[i], 0.0), chunks.durations[i])
            return chunks.captured[i] + into / 1000.0
