"""Keep the wake cue from closing the microphone on the question that follows it.

The cue (`audio/cue.py`) goes through the speaker like an answer. In half duplex the echo
gate holds the microphone while the speaker plays and for `echo_tail_ms` after: for the
cue that would be 0.2 s of beep plus the tail, exactly when the person starts the question
that follows the wake word (people do not wait for the beep). So the echo gate sees the
speaker through this mask: from `cue_started` until the cue has surely played out
(`length + margin`), the speaker counts as not playing, and a `last_played_at` inside that
window is replaced by the one from before the cue. A real answer played later moves
`last_played_at` past the window and is held as always. The cue itself then reaches the
server with the question: a short beep, far quieter than a voice.

Thread-safe by construction: `cue_started` (capture thread) writes two floats, the echo
gate (the same thread) reads them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgevoice.clock import Clock

CUE_MARGIN_S = 0.5  # prebuffer, output latency and scheduling on top of the cue's length


class CueMask:
    def __init__(self, playing: Callable[[], bool], last_played_at: Callable[[], float | None],
                 clock: Clock = time.monotonic) -> None:
        self._playing = playing
        self._last_played_at = last_played_at
        self._clock = clock
        self._until: float | None = None
        self._before: float | None = None

    def cue_started(self, length_s: float) -> None:
        """Call just before the cue is queued to the speaker."""
        self._before = self._last_played_at()
        self._until = self._clock() + length_s + CUE_MARGIN_S

    def playing(self) -> bool:
        until = self._until
        if until is not None and self._clock() < until:
            return False
        return self._playing()

    def last_played_at(self) -> float | None:
        value = self._last_played_at()
        until = self._until
        if until is not None and value is not None and value <= until:
            return self._before
        return value
