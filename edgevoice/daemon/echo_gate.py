"""Half-duplex echo control: hold the microphone while the speaker plays, let a voice through.

Sits between the capture worker and the backlog (`process(chunk)` returns what to queue).
Without echo cancellation the microphone hears the answer, and the server would take the
assistant's own voice for the user's: it would interrupt itself, or answer itself. So in
``half_duplex`` mode nothing is streamed while the speaker plays and for ``tail_ms`` after
the last played sample (output latency plus the room's reverberation). Held audio is not
replaced by zeros: silence sent to the server still moves its VAD and its clock, and costs
bandwidth; sending nothing is what "not listening" means. ``none`` is for inputs without
echo (headset, XMOS/ReSpeaker-class boards, PipeWire's echo-cancel source): everything
passes and barge-in is the server VAD's job.

Local barge-in. The person must be able to interrupt, and the server cannot hear them while
the gate holds, so the gate decides itself by level: the mic is louder than the echo alone
could make it. Choices, and why:

- The echo estimate is ``reference + coupling``. The reference is the *loudest* playback
  level over the last ``tail_ms + chunk_ms``, not the current one: the microphone hears what
  was played an output latency ago and the room keeps it ringing for a while, so taking the
  window's maximum never underestimates a sound that just stopped (the end of a word, the
  end of the answer during the tail).
- The coupling (mic dB minus reference dB: speaker volume, amplifier, distance, mic gain)
  is learnt, not configured: it differs per device, per volume setting and per room. It is
  the 90th percentile of the last ``COUPLING_WINDOW_S`` seconds of held chunks that had
  something playing (reference above ``PLAYBACK_FLOOR_DBFS``; over near-silence the
  difference is only mic noise). A high percentile, not the median or a low one: speech
  played back jumps by 20 dB from syllable to pause, so mic minus reference spreads over
  many dB, and the threshold must sit above the echo's *own* loud end, or the loud words
  of the answer would interrupt it. A percentile over a window (not an EMA) is not dragged
  by one click, and it forgets a volume change within the window. Chunks already above the
  threshold are not learnt from, so a person talking over the answer does not teach the
  gate that talking is echo (one who talks just under it only raises the threshold a
  little, and is heard once the answer ends). The samples are kept across answers (by
  count, not by time): the device and the room do not change between two answers, so the
  second answer starts with a known coupling.
- Until ``MIN_COUPLING_S`` of playback has been learnt, local barge-in does not fire: a
  guessed coupling is either too low (the answer interrupts itself at the first loud
  word) or too high (never fires), and a missed barge-in only costs the person a repeat
  while a false one cuts every answer. The server VAD still works once the gate opens.
- The estimate never goes below the microphone's own noise floor (a low percentile of the
  recent mic levels) and a trigger needs at least ``SPEECH_DBFS``: during a pause in the
  answer, reference + coupling would fall far below the room noise, which is no voice.
- A voice must stay above ``estimate + barge_in_db`` for ``trigger_chunks`` consecutive
  chunks (about 60 ms, at least 2): a click, a knock or one loud echo chunk does not
  interrupt the answer; a syllable lasts longer than that.
- When it fires, the last ``preroll_ms`` of held audio goes out first (at least the
  chunks that led to the trigger), so the server hears the start of the word rather than
  its middle; the audio before that is echo and stays dropped.
- After a barge-in the gate stays open until playback has stopped and a *new* answer
  starts: ``on_barge_in`` flushes playback, but ``playing()`` and ``last_played_at``
  still describe the cut answer for a moment, and holding the mic for its tail would
  drop the person's sentence right after its first syllables.

Time: ``last_played_at`` must be on the same clock as ``clock`` (monotonic seconds). The
chunk's ``captured_at`` is not used for the decision, so a chunk from a source with another
time base cannot hold the microphone forever.

One thread calls ``process`` (the capture worker); ``playing``, ``last_played_at`` and
``playback_level_dbfs`` are read once per chunk and must be cheap and thread-safe.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edgevoice.audio.level import SILENCE_DBFS, SPEECH_DBFS
from edgevoice.audio.sorted_window import SortedWindow
from edgevoice.clock import Clock
from edgevoice.daemon.backlog import AudioChunk

log = logging.getLogger("edgevoice.echo_gate")

EchoMode = Literal["half_duplex", "none"]

COUPLING_WINDOW_S = 3.0  # playback seconds the coupling percentile covers
MIN_COUPLING_S = 0.5  # playback seconds learnt before local barge-in may fire
PLAYBACK_FLOOR_DBFS = -60.0  # quieter playback teaches nothing about the echo path
COUPLING_PERCENTILE = 0.9  # the echo's loud end, see above
NOISE_WINDOW_S = 5.0  # mic seconds the noise floor is taken from
NOISE_PERCENTILE = 0.1  # the floor: the level 10 % of recent chunks stay under
TRIGGER_MS = 60  # a voice must last this long above the threshold (at least 2 chunks)


@dataclass
class EchoGateStats:
    chunks_held: int = 0  # not streamed when captured (echo, or held until a barge-in)
    chunks_released_preroll: int = 0  # held, then sent as a barge-in's pre-roll
    local_barge_ins: int = 0  # times the level detector fired (on_barge_in calls)


def within_tail(playing: bool, last_played_at: float | None, tail_s: float,
                now: float) -> bool:
    """Playing, or less than `tail_s` after the last sample played: the speaker's sound may
    still be in the room (the echo gate holds the microphone; the capture worker takes
    each block at once)."""
    return playing or (last_played_at is not None and now < last_played_at + tail_s)


class EchoGate:
    def __init__(self, *, mode: EchoMode, tail_ms: int, barge_in_db: float | None,
                 preroll_ms: int, chunk_ms: int, playing: Callable[[], bool],
                 last_played_at: Callable[[], float | None],
                 playback_level_dbfs: Callable[[], float],
                 on_barge_in: Callable[[], None], clock: Clock = time.monotonic,
                 trigger_chunks: int | None = None) -> None:
        if mode not in ("half_duplex", "none"):
            raise ValueError(f"echo mode must be half_duplex or none, not {mode!r}")
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, not {chunk_ms}")
        if tail_ms < 0 or preroll_ms < 0:
            raise ValueError(f"tail_ms and preroll_ms must not be negative "
                             f"({tail_ms}, {preroll_ms})")
        if barge_in_db is not None and not (math.isfinite(barge_in_db) and barge_in_db > 0):
            raise ValueError(f"barge_in_db must be a positive number or None, not {barge_in_db}")
        if trigger_chunks is None:
            trigger_chunks = max(2, math.ceil(TRIGGER_MS / chunk_ms))
        if trigger_chunks < 1:
            raise ValueError(f"trigger_chunks must be at least 1, not {trigger_chunks}")
        self._mode: EchoMode = mode
        self._tail_s = tail_ms / 1000.0
        self._barge_in_db = barge_in_db
        self._chunk_s = chunk_ms / 1000.0
        self._playing = playing
        self._last_played_at = last_played_at
        self._playback_level = playback_level_dbfs
        self._on_barge_in = on_barge_in
        self._clock = clock
        self.trigger_chunks = trigger_chunks
        # The pre-roll covers at least the chunks before the trigger that were already loud.
        preroll_chunks = max(math.ceil(preroll_ms / chunk_ms - 1e-9), trigger_chunks - 1)
        self._preroll: deque[AudioChunk] = deque(maxlen=max(preroll_chunks, 1))
        self._preroll_chunks = preroll_chunks
        self._reference: deque[float] = deque(maxlen=max(1, math.ceil((tail_ms + chunk_ms)
                                                                      / chunk_ms)))
        self._coupling = SortedWindow(max(1, round(COUPLING_WINDOW_S * 1000 / chunk_ms)))
        self._min_coupling = max(1, round(MIN_COUPLING_S * 1000 / chunk_ms))
        self._noise = SortedWindow(max(1, round(NOISE_WINDOW_S * 1000 / chunk_ms)))
        self._over = 0  # consecutive held chunks above the threshold
        self._barged_in = False  # open after a barge-in until a new answer starts
        self._seen_quiet = False  # ...which is: playback stopped, then plays again
        self.stats = EchoGateStats()

    @property
    def mode(self) -> EchoMode:
        return self._mode

    @property
    def coupling_db(self) -> float | None:
        """The learnt mic-minus-playback level difference (None until enough was learnt)."""
        if len(self._coupling) < self._min_coupling:
            return None
        return self._coupling.percentile(COUPLING_PERCENTILE)

    @property
    def noise_floor_dbfs(self) -> float:
        if not self._noise:
            return SILENCE_DBFS
        return self._noise.percentile(NOISE_PERCENTILE)

    def echo_estimate_dbfs(self) -> float | None:
        """What the echo alone should read on the mic now (None: coupling not learnt yet)."""
        coupling = self.coupling_db
        if coupling is None or not self._reference:
            return None
        return max(max(self._reference) + coupling, self.noise_floor_dbfs)

    def _holding(self, now: float, playing: bool) -> bool:
        return within_tail(playing, self._last_played_at(), self._tail_s, now)

    def process(self, chunk: AudioChunk) -> list[AudioChunk]:
        """The chunks to queue now, in order (possibly none)."""
        if self._mode == "none":
            return [chunk]
        now = self._clock()
        playing = self._playing()
        self._reference.append(self._playback_level())
        self._noise.append(chunk.rms_dbfs)
        if self._barged_in:
            if not playing:
                self._seen_quiet = True
            elif self._seen_quiet:  # a new answer started: echo again
                self._barged_in = False
        if self._barged_in or not self._holding(now, playing):
            # Streaming: held audio from before was echo, and a detector run must start anew.
            self._preroll.clear()
            self._over = 0
            return [chunk]
        return self._hold(chunk)

    def _hold(self, chunk: AudioChunk) -> list[AudioChunk]:
        mic = chunk.rms_dbfs
        estimate = self.echo_estimate_dbfs()
        over = (self._barge_in_db is not None and estimate is not None
                and mic >= SPEECH_DBFS and mic > estimate + self._barge_in_db)
        if self._barge_in_db is not None and not over:
            reference = max(self._reference)
            if reference >= PLAYBACK_FLOOR_DBFS:
                self._coupling.append(mic - reference)
        self._over = self._over + 1 if over else 0
        if self._over >= self.trigger_chunks:
            preroll = list(self._preroll)[-self._preroll_chunks:] if self._preroll_chunks else []
            self._preroll.clear()
            self._over = 0
            self._barged_in = True
            self._seen_quiet = False
            self.stats.local_barge_ins += 1
            self.stats.chunks_released_preroll += len(preroll)
            try:
                self._on_barge_in()
            except Exception:  # the voice still goes out; the server VAD can do the rest
                log.exception("local barge-in: stopping the answer failed")
            return [*preroll, chunk]
        self._preroll.append(chunk)
        self.stats.chunks_held += 1
        return []
