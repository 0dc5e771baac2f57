"""A map that keeps its newest `size` entries: the ids the transcript parts remember."""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(OrderedDict[K, V]):
    """Setting a new key past `size` forgets the oldest: a server that never ends an item
    must not grow the daemon."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        while len(self) > self._size:
            self.popitem(last=False)
