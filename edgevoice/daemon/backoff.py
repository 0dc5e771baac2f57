"""Exponential backoff with full jitter (AWS architecture blog's "full jitter").

Full jitter spreads a fleet of devices that lost the same server so they do not all
reconnect in the same second. The attempt counter is reset only after a connection has
proved stable, so a server that accepts and then drops us at once still backs off.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self,
        initial_s: float,
        max_s: float,
        multiplier: float,
        rng: random.Random | None = None,
    ) -> None:
        if initial_s <= 0 or max_s < initial_s or multiplier < 1:
            raise ValueError(
                f"backoff needs 0 < initial ({initial_s}) <= max ({max_s}) and multiplier "
                f"({multiplier}) >= 1"
            )
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.attempts = 0

    def ceiling(self) -> float:
        """The cap of the current attempt's delay, before jitter."""
        # Exponent bounded so a device offline for weeks does not overflow a float.
        exponent = min(self.attempts, 64)
        return min(self.max_s, self.initial_s * self.multiplier**exponent)

    def next_delay(self, at_least_s: float | None = None) -> float:
        ceiling = self.ceiling()
        # A floor of a tenth of the first step: full jitter may otherwise draw ~0 s, which
        # hammers the server from a whole fleet and reads as "retry in 0.0s".
        delay = self._rng.uniform(min(ceiling, self.initial_s) / 10.0, ceiling)
        self.attempts += 1
        if at_least_s is not None:
            delay = max(delay, at_least_s)
        return delay

    def reset(self) -> None:
        self.attempts = 0

    def reconfigure(self, initial_s: float, max_s: float, multiplier: float) -> None:
        """New limits from a reload; the attempt count (how far we backed off) stays."""
        if initial_s <= 0 or max_s < initial_s or multiplier < 1:
            raise ValueError("backoff needs 0 < initial <= max and multiplier >= 1")
        self.initial_s, self.max_s, self.multiplier = initial_s, max_s, multiplier
