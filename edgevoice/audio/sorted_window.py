"""A sliding window of levels that answers percentiles without sorting.

Noise floors and echo couplings are percentiles of the last few seconds of per-chunk
levels, asked for at every chunk (50 times a second on a Pi). Keeping a sorted copy beside
the arrival order makes each update two bisects and each percentile an index, instead of
a sort of a few hundred values per chunk.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque


class SortedWindow:
    """The last `size` values in arrival order, and the same values kept sorted."""

    def __init__(self, size: int) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._values)

    def append(self, value: float) -> None:
        if len(self._values) == self._values.maxlen:
            del self._sorted[bisect_left(self._sorted, self._values[0])]
        self._values.append(value)
        insort(self._sorted, value)

    def percentile(self, fraction: float) -> float:
        """The value `fraction` of the way up the sorted values (nearest rank; not empty)."""
        ordered = self._sorted
        return ordered[round(fraction * (len(ordered) - 1))]

    def percentile_linear(self, percent: float) -> float:
        """`np.percentile(window, percent)` (its default linear method, the same float
        arithmetic); not empty."""
        values = self._sorted
        index = (len(values) - 1) * percent / 100.0
        lo = int(index)
        a, b = values[lo], values[min(lo + 1, len(values) - 1)]
        t = index - lo
        diff = b - a
        return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t
