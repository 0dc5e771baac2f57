"""Which moment of the microphone each millisecond of a session's input audio came from.

The server speaks of input audio in milliseconds since its session began
(`audio_start_ms`, `audio_end_ms`). With a speech gate the audio a session got has gaps,
and after a reconnect it starts with replayed audio, so the offset alone says neither when
something was said nor whether it was heard before. The sender records every chunk here;
transcripts map the server's offsets back to capture time (and from that, wall time).
"""

from __future__ import annotations

import bisect
import threading
from collections import deque

KEEP_CHUNKS = 30_000  # ten minutes of 20 ms chunks: transcripts come within seconds


class AudioTimeline:
    def __init__(self, keep: int = KEEP_CHUNKS) -> None:
        self._lock = threading.Lock()
        self._starts: deque[float] = deque(maxlen=keep)  # session offset (ms) of each chunk
        self._captured: deque[float] = deque(maxlen=keep)  # capture time of its first sample
        self._durations: deque[float] = deque(maxlen=keep)
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
                self._starts.append(self._offset_ms)
                self._captured.append(captured_at)
                self._durations.append(duration_ms)
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
            if not self._starts:
                return None
            i = bisect.bisect_right(self._starts, offset_ms) - 1
            if i < 0:
                return None if offset_ms < self._starts[0] - 1 else self._captured[0]
            into = min(max(offset_ms - self._starts[i], 0.0), self._durations[i])
            return self._captured[i] + into / 1000.0
