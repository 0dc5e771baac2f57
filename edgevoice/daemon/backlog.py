"""The audio between capture and the network: a bounded FIFO that doubles as outage buffer.

While a session streams it holds a chunk or two; while the network is away it fills up to
`stream.outage_buffer_s` and then drops the oldest audio (counted), so memory stays flat
for an outage of any length and the newest speech is what gets replayed.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class AudioChunk:
    pcm: bytes  # 24 kHz mono s16le, one chunk_ms
    rms_dbfs: float
    captured_at: float  # monotonic seconds of the capture callback
    seq: int  # running number since start: loss and duplicates are countable


class ChunkBacklog:
    def __init__(self, max_chunks: int) -> None:
        if max_chunks < 1:
            raise ValueError(f"backlog needs room for at least one chunk, got {max_chunks}")
        self._max = max_chunks
        self._chunks: deque[AudioChunk] = deque()
        self._cond = threading.Condition()
        self.dropped = 0  # chunks lost because the buffer was full

    def put(self, chunk: AudioChunk) -> None:
        with self._cond:
            if len(self._chunks) >= self._max:
                self._chunks.popleft()
                self.dropped += 1
            self._chunks.append(chunk)
            self._cond.notify()

    def push_front(self, chunks: Iterable[AudioChunk]) -> None:
        """Give back chunks that could not be sent, to be sent first next time."""
        with self._cond:
            for chunk in reversed(list(chunks)):
                if len(self._chunks) >= self._max:
                    self.dropped += 1  # the oldest is the one being given back: drop it
                    continue
                self._chunks.appendleft(chunk)
            self._cond.notify()

    def get(self, timeout: float) -> AudioChunk | None:
        with self._cond:
            if not self._chunks:
                self._cond.wait(timeout)
            return self._chunks.popleft() if self._chunks else None

    def clear(self) -> int:
        with self._cond:
            n = len(self._chunks)
            self._chunks.clear()
            return n

    def __len__(self) -> int:
        with self._cond:
            return len(self._chunks)
