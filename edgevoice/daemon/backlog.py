"""The one queue in front of the sender: audio in order, control events in two lanes.

The ordered lane carries audio chunks and the events that belong to the audio
(`input_audio_buffer.commit`, then `response.create`), so they stay behind the audio they
close. It doubles as the outage buffer: while a session streams it holds a chunk or two;
while the network is away it fills up to `stream.outage_buffer_s` and then drops the oldest
audio (counted), so memory stays flat for an outage of any length and the newest speech is
what gets replayed.

The urgent lane carries events that interrupt (`response.cancel`, a truncate, a clear, the
stall probe, a reload's `session.update`, a new session's configuration): they go ahead of
every queued chunk, so they never wait behind an outage replay.

Muted (`edgevoice ctl mute`), the backlog holds no audio at all: `set_muted(True)` drops
every queued chunk at once, and while muted `put` and `push_front` refuse audio chunks (the
capture worker counts what it could not queue, `on_mute_drop` is told of chunks dropped
here). Control events still pass.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgevoice.realtime.link import SessionLink

log = logging.getLogger("edgevoice.backlog")

URGENT_MAX = 64  # more than this many interrupting events queued means nobody sends them


@dataclass(frozen=True)
class AudioChunk:
    pcm: bytes  # 24 kHz mono s16le, one chunk_ms
    rms_dbfs: float
    captured_at: float  # monotonic seconds of the capture callback
    seq: int  # running number since start: loss and duplicates are countable
    # Sent by the speech gate inside an utterance: a rollover waits for its end.
    utterance: bool = False


@dataclass(frozen=True, eq=False)
class ClientEvent:
    """A control event for the sender; `to` None means the session audio goes to."""

    event: dict[str, Any]
    to: SessionLink | None = None
    urgent: bool = False


QueuedItem = AudioChunk | ClientEvent


class ChunkBacklog:
    def __init__(self, max_chunks: int,
                 on_drop: Callable[[int], None] | None = None,
                 on_mute_drop: Callable[[int], None] | None = None) -> None:
        if max_chunks < 1:
            raise ValueError(f"backlog needs room for at least one chunk, got {max_chunks}")
        self._max = max_chunks
        self._chunks: deque[QueuedItem] = deque()
        self._urgent: deque[ClientEvent] = deque()
        self._cond = threading.Condition()
        self._woken = False
        self.dropped = 0  # chunks lost because the buffer was full
        self._on_drop = on_drop  # told of every drop (the chunks_dropped_outage counter)
        self._on_mute_drop = on_mute_drop  # told of audio dropped because of the mute
        self._muted = False

    @property
    def muted(self) -> bool:
        return self._muted

    def set_muted(self, muted: bool) -> int:
        """Mute or unmute; muting drops every queued audio chunk at once: returns how many
        (also told to `on_mute_drop`). The ordered events that close that audio (the speech
        gate's commit, response.create) go with it: the mute clears the server's buffer, so
        they would commit nothing and ask for an answer to nothing. Urgent events stay."""
        with self._cond:
            self._muted = muted
            if not muted:
                return 0
            kept = [item for item in self._chunks
                    if isinstance(item, ClientEvent) and item.urgent]
            dropped = sum(isinstance(item, AudioChunk) for item in self._chunks)
            self._chunks = deque(kept)
            if dropped:
                self._mute_dropped(dropped)
            return dropped

    def _mute_dropped(self, n: int) -> None:
        """Called with the lock held."""
        if self._on_mute_drop is not None:
            self._on_mute_drop(n)

    @property
    def max_chunks(self) -> int:
        return self._max

    def resize(self, max_chunks: int) -> None:
        """A reload changed stream.outage_buffer_s: drop the oldest beyond the new size."""
        with self._cond:
            self._max = max(1, max_chunks)
            while len(self._chunks) > self._max:
                self._chunks.popleft()
                self._dropped(1)

    def put(self, item: QueuedItem) -> bool:
        """Queue `item`; False (not queued) for an audio chunk while muted."""
        with self._cond:
            if self._muted and isinstance(item, AudioChunk):
                return False
            if len(self._chunks) >= self._max:
                self._chunks.popleft()
                self._dropped(1)
            self._chunks.append(item)
            self._cond.notify()
            return True

    def put_urgent(self, event: ClientEvent) -> None:
        with self._cond:
            if len(self._urgent) >= URGENT_MAX:
                lost = self._urgent.popleft()
                log.warning("sender is not draining control events; dropped %s",
                            lost.event.get("type"))
            self._urgent.append(event)
            self._cond.notify()

    def push_front(self, chunks: Iterable[QueuedItem]) -> None:
        """Give back items that could not be sent, to be sent first next time."""
        with self._cond:
            for chunk in reversed(list(chunks)):
                if self._muted and isinstance(chunk, AudioChunk):
                    self._mute_dropped(1)  # audio given back while muted never goes out
                    continue
                if len(self._chunks) >= self._max:
                    self._dropped(1)  # the oldest is the one being given back: drop it
                    continue
                self._chunks.appendleft(chunk)
            self._cond.notify()

    def _dropped(self, n: int) -> None:
        """Called with the lock held."""
        self.dropped += n
        if self._on_drop is not None:
            self._on_drop(n)

    def get(self, timeout: float, ordered: bool = True) -> QueuedItem | None:
        """The next urgent event, else (with `ordered`) the next chunk or ordered event.

        Returns None after `timeout`, or early when `wake()` was called.
        """
        with self._cond:
            if not self._has(ordered) and not self._woken and timeout > 0:
                self._cond.wait(timeout)
            self._woken = False
            if self._urgent:
                return self._urgent.popleft()
            if ordered and self._chunks:
                return self._chunks.popleft()
            return None

    def _has(self, ordered: bool) -> bool:
        return bool(self._urgent) or (ordered and bool(self._chunks))

    def wake(self) -> None:
        """Make a waiting (or the next) get() return at once: the sender's target changed."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def clear(self) -> int:
        with self._cond:
            n = len(self._chunks)
            self._chunks.clear()
            return n

    def urgent_pending(self) -> int:
        with self._cond:
            return len(self._urgent)

    def __len__(self) -> int:
        with self._cond:
            return len(self._chunks)
