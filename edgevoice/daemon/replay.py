"""How much of what a session was sent must be replayed if it dies: the one rule, shared by
the supervisor (which asks for the replay) and the uplink (which keeps the record).

The Realtime API acknowledges no append, so what a lost session read is only bounded by
what the server said last and by when the connection broke.
"""

from __future__ import annotations

from edgevoice.errors import ConnectionLost, EdgeVoiceError
from edgevoice.realtime.link import SessionLink

REPLAY_GUARD_S = 0.25  # audio in flight when a connection closes or resets
# Kept beyond what `earliest_unread` allows: a failure can be recorded (its failed_at taken)
# a moment before the uplink sees it (a thread switch: 5 ms, more on a loaded Pi), and the
# record must still hold that moment's audio.
REPLAY_MARGIN_S = 0.5


def unread_since(session: SessionLink, error: EdgeVoiceError) -> float:
    """From when on the lost session probably never read what it was sent.

    No ack exists for appends, so this is a bound, not knowledge: after a close or
    reset, the audio in flight when it happened (REPLAY_GUARD_S); after a silent death,
    everything since the server's last sign of life. The price is a possible duplicate
    of that much audio, which is better than a hole in the user's speech.
    """
    silent = isinstance(error, ConnectionLost) and error.silent
    return session.last_event_at if silent else session.failed_at - REPLAY_GUARD_S


def earliest_unread(session: SessionLink, now: float) -> float:
    """The earliest `unread_since` a failure of a live session from `now` on can give:
    `last_event_at` only grows, and `failed_at` will be `now` or later. What was sent
    before it can never be replayed, so the record need not keep it."""
    return min(session.last_event_at, now - REPLAY_GUARD_S)
