"""The playback jitter buffer and its item accounting: pure logic, no PortAudio.

``PyAudioSink`` (audio/pyaudio_sink.py) feeds it mono int16 at the device rate from the
session reader thread (``push``/``end``) and drains it from the PortAudio callback (``pull``);
one lock covers every method, and none of them does more than copy numpy slices under it.

* **Items** play one after the other, in the order their first audio arrived. An item
  starts (and restarts after an underrun) only once ``prebuffer`` frames are queued or the
  item has ended, so its start is never clipped by a late second delta.
* **Underruns**: a callback that has to fill silence inside an item that has started and
  not ended is counted (``stats.underruns``, one per such callback); the item then waits for
  a full prebuffer again. Silence between items, or before an item's first prebuffer, is not
  an underrun.
* **Bound**: at most ``capacity`` frames are queued over all items. ``push`` never blocks
  (it runs on the thread that reads the socket): when full, the oldest queued frames are
  dropped and counted in ``stats.dropped_frames``. The server sends audio faster than real
  time, so ``capacity`` must cover the longest answer's lead over playback.
* **Played time**: every frame the callback hands to PortAudio is counted on one output
  position counter (silence included). An item's frames still inside the output latency
  (the last ``latency_frames`` of that counter) are not heard yet, so ``played_frames``
  is what the callback consumed of the item less the part of it within the latency:
  "consumed less latency" while the item plays, its whole length once the latency passed.
* ``flush`` drops everything queued and returns the item that was at the head (item id,
  content index, played ms). Audio that arrives later for a flushed item is dropped
  (the server may still be sending deltas of a cancelled response).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]

_HISTORY = 64  # finished or flushed items whose played time is still answered


STARVED_ITEM_S = 2.0  # an answer fed nothing for this long has ended, whatever was said


@dataclass
class PlaybackStats:
    rate: int = 0
    underruns: int = 0
    """Callbacks that had to fill silence inside an item that had started and not ended."""
    frames_played: int = 0
    """Frames of item audio the callback consumed (silence fill not included)."""
    items_played: int = 0
    """Items played to their end (flushed items are not counted)."""
    flushes: int = 0
    dropped_frames: int = 0
    """Frames dropped because the buffer was full (oldest first)."""
    dropped_late_frames: int = 0
    """Frames that arrived for an item already flushed."""
    silence_frames: int = 0

    @property
    def seconds_played(self) -> float:
        return self.frames_played / self.rate if self.rate > 0 else 0.0


@dataclass
class _Item:
    item_id: str
    content_index: int
    chunks: deque[Int16Array] = field(default_factory=deque)
    offset: int = 0  # frames of chunks[0] already taken
    queued: int = 0
    consumed: int = 0
    last_pos: int = 0  # output position just after its last consumed frame
    ended: bool = False
    started: bool = False
    starved_pulls: int = 0  # callbacks in a row that found it started, unended and empty


@dataclass(frozen=True)
class _Done:
    content_index: int
    consumed: int
    last_pos: int


class PlaybackBuffer:
    """Items of mono int16 at ``rate``; see the module docstring."""

    def __init__(self, rate: int, *, prebuffer_frames: int, capacity_frames: int,
                 latency_frames: int = 0) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        if capacity_frames <= 0:
            raise ValueError(f"capacity must be positive, not {capacity_frames}")
        self.rate = rate
        self.prebuffer_frames = max(0, min(prebuffer_frames, capacity_frames))
        self.capacity_frames = capacity_frames
        self.latency_frames = max(0, latency_frames)
        self.stats = PlaybackStats(rate=rate)
        self._lock = threading.Lock()
        self._items: deque[_Item] = deque()
        self._queued = 0
        self._pos = 0  # every frame handed to the output, silence included
        self._done: OrderedDict[str, _Done] = OrderedDict()
        self._flushed: OrderedDict[str, None] = OrderedDict()
        self.last_played_at: float | None = None

    # -- feeding (any thread but the callback) --------------------------------------------

    def push(self, item_id: str, content_index: int, samples: Int16Array) -> int:
        """Queue frames of ``item_id``; returns how many frames were dropped to make room
        (or because the item was flushed)."""
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise ValueError("samples must be 1-D int16")
        with self._lock:
            if item_id in self._flushed:
                self.stats.dropped_late_frames += int(samples.size)
                return int(samples.size)
            if samples.size == 0:
                self._item(item_id, content_index)
                return 0
            item = self._item(item_id, content_index)
            item.ended = False
            item.chunks.append(samples)
            item.queued += int(samples.size)
            self._queued += int(samples.size)
            return self._trim()

    def end(self, item_id: str) -> None:
        """No more audio for ``item_id``: what is queued plays without waiting."""
        with self._lock:
            for item in self._items:
                if item.item_id == item_id:
                    item.ended = True
            self._drop_finished_head()

    def flush(self) -> tuple[str, int, int] | None:
        """Drop everything queued; (item_id, content_index, played_ms) of the head item."""
        with self._lock:
            head = self._items[0] if self._items else None
            result = None
            if head is not None:
                result = (head.item_id, head.content_index,
                          self._ms(self._heard(head.consumed, head.last_pos)))
            for item in self._items:
                self._remember(item)
                self._flushed[item.item_id] = None
                self._flushed.move_to_end(item.item_id)
            while len(self._flushed) > _HISTORY:
                self._flushed.popitem(last=False)
            self._items.clear()
            self._queued = 0
            self.stats.flushes += 1
            return result

    def forget_flushed(self, item_id: str) -> None:
        """Accept audio for ``item_id`` again after a flush (rarely needed)."""
        with self._lock:
            self._flushed.pop(item_id, None)

    def set_latency(self, frames: int) -> None:
        with self._lock:
            self.latency_frames = max(0, frames)

    # -- draining (the callback) ----------------------------------------------------------

    def pull(self, frames: int, now: float) -> Int16Array:
        """``frames`` frames for the output: queued audio, silence where there is none."""
        out = np.zeros(frames, dtype=np.int16)
        with self._lock:
            pos = 0
            underrun = False
            while pos < frames and self._items:
                item = self._items[0]
                if item.queued == 0 and item.ended:
                    self._finish()
                    continue
                if item.queued == 0 and item.consumed > 0:  # begun, nothing left, not ended
                    item.starved_pulls += 1
                    if item.starved_pulls * frames >= self.rate * STARVED_ITEM_S:
                        # Its end never came (a session lost mid-answer, a response that
                        # failed): end it, or it would hold the speaker "playing" forever.
                        item.ended = True
                        continue
                else:
                    item.starved_pulls = 0
                if not item.started:
                    if item.ended or item.queued >= max(1, self.prebuffer_frames):
                        item.started = True
                    else:
                        underrun = item.consumed > 0
                        break
                if item.queued == 0:  # started, not ended, nothing left: an underrun
                    underrun = True
                    item.started = False
                    break
                take = self._take(item, out, pos, frames - pos)
                pos += take
                item.consumed += take
                item.last_pos = self._pos + pos
                self.stats.frames_played += take
                self.last_played_at = now
            self._drop_finished_head()
            self._pos += frames
            self.stats.silence_frames += frames - pos
            if underrun:
                self.stats.underruns += 1
        return out

    # -- queries --------------------------------------------------------------------------

    @property
    def playing(self) -> bool:
        with self._lock:
            return bool(self._items)

    @property
    def queued_frames(self) -> int:
        with self._lock:
            return self._queued

    def played_frames(self, item_id: str) -> int:
        """Frames of ``item_id`` heard (consumed and out of the output latency)."""
        with self._lock:
            for item in self._items:
                if item.item_id == item_id:
                    return self._heard(item.consumed, item.last_pos)
            done = self._done.get(item_id)
            return self._heard(done.consumed, done.last_pos) if done else 0

    def played_ms(self, item_id: str) -> int:
        return self._ms(self.played_frames(item_id))

    # -- internals (lock held) ------------------------------------------------------------

    def _ms(self, frames: int) -> int:
        return frames * 1000 // self.rate

    def _heard(self, consumed: int, last_pos: int) -> int:
        unheard = last_pos - (self._pos - self.latency_frames)
        return max(0, consumed - max(0, unheard))

    def _item(self, item_id: str, content_index: int) -> _Item:
        for item in self._items:
            if item.item_id == item_id:
                return item
        item = _Item(item_id, content_index)
        done = self._done.pop(item_id, None)
        if done is not None:  # more audio for an item that had played out
            item.consumed, item.last_pos = done.consumed, done.last_pos
        self._items.append(item)
        return item

    def _take(self, item: _Item, out: Int16Array, pos: int, want: int) -> int:
        taken = 0
        while taken < want and item.chunks:
            chunk = item.chunks[0]
            n = min(want - taken, chunk.size - item.offset)
            out[pos + taken:pos + taken + n] = chunk[item.offset:item.offset + n]
            taken += n
            item.offset += n
            if item.offset >= chunk.size:
                item.chunks.popleft()
                item.offset = 0
        item.queued -= taken
        self._queued -= taken
        return taken

    def _trim(self) -> int:
        excess = self._queued - self.capacity_frames
        dropped = 0
        for item in self._items:
            if excess <= 0:
                break
            while excess > 0 and item.chunks:
                chunk = item.chunks[0]
                n = min(excess, chunk.size - item.offset)
                item.offset += n
                item.queued -= n
                excess -= n
                dropped += n
                if item.offset >= chunk.size:
                    item.chunks.popleft()
                    item.offset = 0
        self._queued -= dropped
        self.stats.dropped_frames += dropped
        self._drop_finished_head()
        return dropped

    def _drop_finished_head(self) -> None:
        while self._items and self._items[0].ended and self._items[0].queued == 0:
            self._finish()

    def _finish(self) -> None:
        item = self._items.popleft()
        self._remember(item)
        self.stats.items_played += 1

    def _remember(self, item: _Item) -> None:
        self._done[item.item_id] = _Done(item.content_index, item.consumed, item.last_pos)
        self._done.move_to_end(item.item_id)
        while len(self._done) > _HISTORY:
            self._done.popitem(last=False)
