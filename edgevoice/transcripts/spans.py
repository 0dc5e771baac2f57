"""What was delivered already, in capture time: the guard against replayed audio.

After a reconnect the next session gets the audio kept for a replay again and transcribes
it again under a new item id. Item ids cannot tell, the microphone's clock can: every user
transcript covers a span of capture time (monotonic seconds), and a transcript whose span
lies mostly (`DUPLICATE_SHARE`) inside spans delivered before is the same speech heard
twice. "Mostly", not "at all": the server's prefix padding makes neighbouring utterances
overlap by a few hundred milliseconds, and a new utterance that begins inside replayed
audio is mostly new.
"""

from __future__ import annotations

from collections import deque

from edgevoice.transcripts.bounded import BoundedDict

KEEP_SPANS = 256  # utterances remembered (replays reach back at most the outage buffer)
KEEP_IDS = 1024
DUPLICATE_SHARE = 0.5


class DeliveredSpans:
    def __init__(self, keep_spans: int = KEEP_SPANS, keep_ids: int = KEEP_IDS,
                 duplicate_share: float = DUPLICATE_SHARE) -> None:
        self._spans: deque[tuple[float, float]] = deque(maxlen=keep_spans)
        self._ids: BoundedDict[str, None] = BoundedDict(keep_ids)
        self._share = duplicate_share

    def seen_item(self, item_id: str) -> bool:
        return item_id in self._ids

    def covered(self, start: float, end: float) -> float:
        """The share (0..1) of [start, end] inside spans delivered before; a span of no
        length counts as covered when it lies inside one."""
        if end <= start:
            return 1.0 if any(a <= start <= b for a, b in self._spans) else 0.0
        pieces = sorted((max(a, start), min(b, end)) for a, b in self._spans
                        if b > start and a < end)
        total, reach = 0.0, start
        for a, b in pieces:
            lo = max(a, reach)
            if b > lo:
                total += b - lo
                reach = b
        return total / (end - start)

    def is_duplicate(self, start: float, end: float) -> bool:
        return self.covered(start, end) > self._share

    def add(self, item_id: str, span: tuple[float, float] | None) -> None:
        self._ids[item_id] = None
        if span is not None:
            self._spans.append(span)
