"""The speech gate: what of the microphone goes to the server, and where a turn ends.

A stage of the capture chain (after the echo gate, before the backlog): `process(chunk)`
returns what to queue, audio and the events that close it. An always-on device otherwise
streams every second of room noise into a paid session.

Modes (`stream.gate`):

- ``always``: everything passes, unless `allowed()` (the daily cap) says no.
- ``vad``: closed, the gate keeps a ring of the last `preroll_ms` (plus the detector's
  confirmation time) and sends nothing: not zeros, nothing. When the detector hears
  speech the ring goes out first (the first syllable, from before the detector was sure),
  then every chunk until `hangover_ms` of audio after the detector last heard speech: long
  enough for the server's own VAD to see the silence that ends its turn. With
  ``semantic_vad`` (no fixed silence) the gate goes on after the hangover while the server
  says the user is still speaking (`server_speech_started` / `server_speech_stopped`).
- ``wakeword``: closed until the `WakeDetector` fires; then the utterance is sent from
  just before the wake word (`send_wake_word`; the ring keeps about 2 s) or from the
  detection on, until the turn ends. After an answer (`answer_finished`) plain speech
  opens the gate for `follow_up_s` without the wake word.

`max_utterance_s` cuts any utterance (a television, a fan the floor has not learnt yet),
so the gate never stays stuck listening; after a cut it reopens only once the detector
heard a pause.

Own turn commits: with `turn_detection: none` the gate ends each turn itself: an
`input_audio_buffer.commit` behind the audio it closes (ordered lane, so it is replayed
with it), then `response.create` in conversation mode. The server refuses a commit of less
than 100 ms (`input_audio_buffer_commit_empty`): shorter turns are cleared instead. With a
server VAD the gate only decides what is sent; a cut utterance is cleared, so the server's
VAD is not left waiting in the middle of speech that will never end.

Time in the gate is audio time (chunks counted), so a source faster than real time gives
the same decisions; only the follow-up window uses the clock (it runs while the speaker
plays, when no chunk reaches the gate). Chunks the echo gate holds (`held`) count as quiet
audio time and are never sent.

Threads: the capture worker calls `process`, `held` and `reset`; the downlink thread calls
`server_speech_started`/`server_speech_stopped`, the main loop `answer_finished`. Those
only set plain attributes (atomic under the GIL); the status reads `state`/`reason`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import numpy.typing as npt

from edgevoice.clock import Clock
from edgevoice.daemon.backlog import AudioChunk, ClientEvent, QueuedItem
from edgevoice.daemon.cue_mask import CUE_MARGIN_S
from edgevoice.realtime import protocol

if TYPE_CHECKING:
    from edgevoice.audio.vad import VoiceDetector
    from edgevoice.settings import Settings

log = logging.getLogger("edgevoice.speech_gate")

GateMode = Literal["always", "vad", "wakeword"]
TurnDetection = Literal["server_vad", "semantic_vad", "none"]

WAKE_RING_MS = 2000  # audio kept while listening for the wake word
WAKE_WORD_MS = 1200  # a wake word's length, when the detector heard no onset of it
WAKE_TAIL_MS = 300  # speech this soon after a detection is the wake word's own tail
QUESTION_WAIT_MS = 4000  # after a wake word, this long for the question to start
WAKE_LAG_MS = 300  # the wake word model fires up to this long after the word ended
ONSET_GAP_MS = 300  # a shorter pause is inside one phrase ("okay ... nabu"), not a new onset


class WakeDetector(Protocol):
    """A wake word model on the 24 kHz capture stream (`audio/wakeword.py`)."""

    phrase: str

    def process(self, pcm24k: npt.NDArray[np.int16]) -> bool:
        """True when the wake word was detected in this chunk."""
        ...

    def reset(self) -> None: ...


@dataclass
class GateStats:
    chunks_gated: int = 0  # captured, never sent because the gate was closed
    chunks_capped: int = 0  # captured while `allowed()` said no
    utterances: int = 0
    commits: int = 0
    clears: int = 0
    cuts: int = 0  # utterances ended by max_utterance_s or the cap
    wake_words: int = 0


Phase = Literal["closed", "open", "server", "capped"]


class SpeechGate:
    def __init__(self, *, mode: GateMode, chunk_ms: int, preroll_ms: int, hangover_ms: int,
                 max_utterance_s: float, turn_detection: TurnDetection, conversation: bool,
                 vad: VoiceDetector | None = None, wake: WakeDetector | None = None,
                 send_wake_word: bool = False, follow_up_s: float = 0.0,
                 allowed: Callable[[], bool] | None = None,
                 on_wake: Callable[[], float | None] | None = None,
                 count: Callable[[str, int], None] | None = None,
                 clock: Clock = time.monotonic) -> None:
        if mode not in ("always", "vad", "wakeword"):
            raise ValueError(f"gate mode must be always, vad or wakeword, not {mode!r}")
        if mode != "always" and vad is None:
            raise ValueError(f"gate mode {mode} needs a voice detector")
        if mode == "wakeword" and wake is None:
            raise ValueError("gate mode wakeword needs a wake detector")
        if chunk_ms <= 0 or preroll_ms < 0 or hangover_ms < 0 or max_utterance_s <= 0:
            raise ValueError("chunk_ms and max_utterance_s must be positive, preroll_ms and "
                             "hangover_ms not negative")
        self.mode: GateMode = mode
        self._chunk_ms = chunk_ms
        self._turn: TurnDetection = turn_detection
        self._conversation = conversation
        self._vad = vad
        self._wake = wake
        self._send_wake_word = send_wake_word
        self._follow_up_s = follow_up_s
        self._allowed = allowed
        self._on_wake = on_wake
        self._count = count
        self._clock = clock
        confirm_ms = vad.confirm_ms if vad is not None else 0
        # What goes out when the detector decides: the deciding chunk and what led to it.
        self._preroll_chunks = max(1, self._chunks(preroll_ms + confirm_ms))
        self._hangover_chunks = self._chunks(hangover_ms)
        self._max_chunks = max(1, self._chunks(max_utterance_s * 1000))
        self._tail_chunks = self._chunks(WAKE_TAIL_MS)
        self._wake_tail_chunks = self._tail_chunks  # this wake word's: with its cue
        self._question_chunks = self._chunks(QUESTION_WAIT_MS)
        ring_ms = preroll_ms + confirm_ms
        if mode == "wakeword":
            ring_ms = max(ring_ms, WAKE_RING_MS + preroll_ms)
        self._ring_chunks = max(1, self._chunks(ring_ms))
        self._ring: deque[AudioChunk] = deque(maxlen=self._ring_chunks)
        self._ring_speech: deque[bool] = deque(maxlen=self._ring_chunks)  # the decisions
        self._confirm_chunks = max(1, self._chunks(confirm_ms))
        self._gap_chunks = self._chunks(ONSET_GAP_MS)
        self._pause_run = 0  # chunks since the detector last heard speech
        self._phase: Phase = "closed"
        self._sent = 0  # chunks sent in this utterance
        self._quiet = 0  # chunks since the detector last heard speech
        self._heard = False  # speech heard in this utterance (after a wake word: its tail)
        self._since_wake: int | None = None  # chunks since the wake word, while waiting
        self._uncommitted_ms = 0  # audio sent since the last commit or clear
        self._need_pause = False  # after a cut: reopen only after the detector heard a pause
        # Chunks since the start of the detector's current phrase (short pauses inside).
        self._onset_age: int | None = None
        self._server_speaking = False
        self._follow_up_until: float | None = None
        self._wake_phrase = getattr(wake, "phrase", "") if wake is not None else ""
        self.reason = "" if mode == "always" else "no speech"
        self.stats = GateStats()

    def _chunks(self, ms: float) -> int:
        return math.ceil(ms / self._chunk_ms - 1e-9)

    # -- from other threads --------------------------------------------------------------

    def server_speech_started(self) -> None:
        """The server's VAD heard speech (input_audio_buffer.speech_started)."""
        self._server_speaking = True

    def server_speech_stopped(self) -> None:
        """The server's VAD ended the turn (input_audio_buffer.speech_stopped)."""
        self._server_speaking = False

    def answer_finished(self) -> None:
        """An answer ended (played out, or done without audio): the follow-up window."""
        if self.mode == "wakeword" and self._follow_up_s > 0:
            self._follow_up_until = self._clock() + self._follow_up_s

    # -- status --------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """open, closed, hangover, listening for wake word, follow-up or capped."""
        phase = self._phase
        if phase == "capped":
            return "capped"
        if self.mode == "always":
            return "open"
        if phase == "server":
            return "hangover"
        if phase == "open":
            return "hangover" if self._quiet > 0 and self._heard else "open"
        if self.mode == "wakeword":
            return "follow-up" if self._in_follow_up() else "listening for wake word"
        return "closed"

    @property
    def idle(self) -> bool:
        """Capped, or closed with `vad`: no chunk goes out before the detector has seen
        it, so the capture worker may take blocks in batches. Not while listening for a
        wake word: its cue must follow the word at once (a late cue is still playing when
        the question starts, and the server's speech_started then cuts it)."""
        phase = self._phase
        return phase == "capped" or (self.mode == "vad" and phase == "closed")

    def _in_follow_up(self) -> bool:
        until = self._follow_up_until
        return until is not None and self._clock() < until

    # -- the capture chain ---------------------------------------------------------------

    def reset(self) -> None:
        """A mute: forget the utterance and the ring; no event (the mute clears the
        server's buffer itself)."""
        self._drop_ring()
        if self._phase != "capped":
            self._phase = "closed"
        self._sent = self._quiet = 0
        self._heard = False
        self._since_wake = None
        self._uncommitted_ms = 0
        self._onset_age = None
        self._pause_run = 0
        self._need_pause = False
        if self._vad is not None:
            self._vad.reset()
        if self._wake is not None:
            self._wake.reset()

    def held(self, chunk: AudioChunk) -> list[QueuedItem]:
        """A stage before this one held `chunk` (the echo gate while the speaker plays,
        or the cap): audio time passes, quietly. Not counted here: the holder counts."""
        if self._allowed is not None and not self._allowed():
            return self._capped(count=False)
        if self._phase in ("open", "server"):
            return self._advance(speech=False, chunk=None)
        self._drop_ring()  # echo: no pre-roll for the next utterance
        return []

    def process(self, chunk: AudioChunk) -> list[QueuedItem]:
        """What to queue for `chunk`, in order (possibly nothing)."""
        if self._allowed is not None and not self._allowed():
            return self._capped()
        if self._phase == "capped":
            self._phase = "closed"
            self.reason = "no speech"
            log.info("the speech gate may open again (the cap allows it)",
                     extra={"edgevoice": {"EVENT": "gate.uncapped"}})
        if self.mode == "always":
            return [chunk]
        pcm = np.frombuffer(chunk.pcm, dtype=np.int16)
        assert self._vad is not None
        speech = self._vad.is_speech(pcm)
        if speech and (self._onset_age is None or self._pause_run >= self._gap_chunks):
            self._onset_age = 0
        elif self._onset_age is not None:
            self._onset_age += 1
        self._pause_run = 0 if speech else self._pause_run + 1
        if self._phase == "closed":
            return self._closed(chunk, pcm, speech)
        return self._advance(speech, chunk)

    # -- closed --------------------------------------------------------------------------

    def _closed(self, chunk: AudioChunk, pcm: npt.NDArray[np.int16],
                speech: bool) -> list[QueuedItem]:
        self._remember(chunk, speech)
        if not speech:
            self._need_pause = False
        if self.mode == "wakeword":
            assert self._wake is not None
            if self._wake.process(pcm):
                return self._woken()
            if not self._in_follow_up():
                return []
            if speech and not self._need_pause:
                self._follow_up_until = None
                return self._open(self._preroll_chunks, "follow-up speech")
            return []
        if speech and not self._need_pause:
            return self._open(self._preroll_chunks, "speech")
        return []

    def _remember(self, chunk: AudioChunk, speech: bool) -> None:
        if len(self._ring) == self._ring_chunks:
            self._gated(1)
        self._ring.append(chunk)
        self._ring_speech.append(speech)

    def _drop_ring(self) -> None:
        if self._ring:
            self._gated(len(self._ring))
            self._ring.clear()
            self._ring_speech.clear()

    def _gated(self, n: int) -> None:
        self.stats.chunks_gated += n
        if self._count is not None:
            self._count("chunks_gated", n)

    def _woken(self) -> list[QueuedItem]:
        self.stats.wake_words += 1
        log.info("wake word %r heard", self._wake_phrase,
                 extra={"edgevoice": {"EVENT": "gate.wake_word"}})
        cue_s: float | None = None
        if self._on_wake is not None:
            try:
                cue_s = self._on_wake()  # seconds of cue played, None: no cue
            except Exception:  # the cue is a courtesy; the question must still go out
                log.exception("wake word: the cue failed")
        # The microphone hears the cue (the echo gate lets it through, cue_mask.py): its
        # tones are no question, or a pause after them would end the turn before it.
        self._wake_tail_chunks = self._tail_chunks if not cue_s else max(
            self._tail_chunks, self._chunks((cue_s + CUE_MARGIN_S) * 1000))
        if self._send_wake_word:
            # From the start of the detector's current phrase (pauses between the words
            # of the wake word are no new start) when it heard one lately, else from a
            # typical wake word's length before the detection; the pre-roll on top.
            onset = self._onset_age
            back = (onset if onset is not None and onset < self._ring_chunks
                    else self._chunks(WAKE_WORD_MS))
            take = back + self._preroll_chunks
        else:
            take = self._after_wake_word()
        items = self._open(take, f"wake word {self._wake_phrase!r}")
        self._heard = False
        self._since_wake = 0
        return items

    def _after_wake_word(self) -> int:
        """How many of the last chunks to send when the wake word itself is not sent.

        The model fires up to WAKE_LAG_MS after the word ended, and a question said without
        a pause starts inside that lag. In the lag window (through the detection chunk):
        a new onset of the detector after a pause starts the question (sent from there);
        speech that ended without a new one is the word's tail (nothing sent: the
        question comes later); speech all through cannot be split: the window goes out,
        the word's tail with the question's first syllable rather than without it.
        """
        window = list(self._ring_speech)[-(self._chunks(WAKE_LAG_MS) + 1):]
        onsets = [j for j in range(1, len(window)) if window[j] and not window[j - 1]]
        if onsets:
            start = max(0, onsets[-1] - self._confirm_chunks + 1)
        elif not any(window):
            start = len(window)
        elif not window[-1]:
            start = max(j for j, s in enumerate(window) if s) + 1
        else:
            start = 0
        return len(window) - start

    def _open(self, take: int, why: str) -> list[QueuedItem]:
        ring = list(self._ring)
        self._ring.clear()
        self._ring_speech.clear()
        keep = ring[max(0, len(ring) - take):] if take > 0 else []
        if len(ring) > len(keep):
            self._gated(len(ring) - len(keep))
        self._phase = "open"
        self._sent = 0
        self._quiet = 0
        self._heard = True
        self._since_wake = None
        self.stats.utterances += 1
        self.reason = why
        log.debug("speech gate open (%s), %d chunks of pre-roll", why, len(keep),
                  extra={"edgevoice": {"EVENT": "gate.open"}})
        return self._send(keep)

    def _send(self, chunks: Sequence[AudioChunk]) -> list[QueuedItem]:
        self._sent += len(chunks)
        self._uncommitted_ms += len(chunks) * self._chunk_ms
        return [replace(c, utterance=True) for c in chunks]

    # -- open ----------------------------------------------------------------------------

    def _advance(self, speech: bool, chunk: AudioChunk | None) -> list[QueuedItem]:
        """One chunk of audio time while an utterance is open; `chunk` None: held."""
        out: list[QueuedItem] = self._send([chunk]) if chunk is not None else []
        if self._since_wake is not None:
            self._since_wake += 1
            if speech and self._since_wake > self._wake_tail_chunks:
                self._heard = True
                self._since_wake = None
        if speech:
            self._quiet = 0
            if self._phase == "server":
                self._phase = "open"
        else:
            self._quiet += 1
        if self._sent >= self._max_chunks:
            log.info("utterance cut after %.0f s (stream.max_utterance_s)",
                     self._sent * self._chunk_ms / 1000,
                     extra={"edgevoice": {"EVENT": "gate.cut"}})
            self.stats.cuts += 1
            self._need_pause = True
            return out + self._end(cut=True)
        if not self._heard:
            if self._since_wake is not None and self._since_wake >= self._question_chunks:
                log.info("no question after the wake word", extra={"edgevoice": {
                    "EVENT": "gate.no_question"}})
                return out + self._end(cut=False)
            return out
        if self._quiet < self._hangover_chunks:
            return out
        if self._turn == "semantic_vad" and self._server_speaking:
            if self._phase != "server":
                self._phase = "server"
                self.reason = "waiting for the server's end of turn"
            return out
        return out + self._end(cut=False)

    def _end(self, *, cut: bool) -> list[QueuedItem]:
        """Close the utterance; with turn_detection none, close the turn too."""
        events: list[QueuedItem] = []
        if self._turn == "none":
            if self._heard and self._uncommitted_ms >= protocol.MIN_COMMIT_MS:
                events.append(_event("input_audio_buffer.commit"))
                self.stats.commits += 1
                if self._conversation:
                    events.append(_event("response.create"))
            elif self._uncommitted_ms > 0:
                events.append(_event("input_audio_buffer.clear"))
                self.stats.clears += 1
            self._uncommitted_ms = 0
        elif cut:
            # The server's VAD may be in the middle of speech that will never end.
            events.append(_event("input_audio_buffer.clear"))
            self.stats.clears += 1
            self._uncommitted_ms = 0
        if cut:
            # Its buffer is cleared (or its session gone): no speech_stopped may come for
            # it, and a stale flag would hold every later utterance to max_utterance_s.
            self._server_speaking = False
        self._phase = "closed"
        self._sent = self._quiet = 0
        self._heard = False
        self._since_wake = None
        self.reason = "no speech"
        if self._wake is not None:
            self._wake.reset()
        log.debug("speech gate closed (%s)", "cut" if cut else "end of speech",
                  extra={"edgevoice": {"EVENT": "gate.closed"}})
        return events

    def _capped(self, count: bool = True) -> list[QueuedItem]:
        out: list[QueuedItem] = []
        if self._phase in ("open", "server"):
            self.stats.cuts += 1
            out = self._end(cut=True)
        if self._phase != "capped":
            log.warning("speech gate closed: the daily cap (stream.max_streamed_s_per_day) "
                        "is reached", extra={"edgevoice": {"EVENT": "gate.capped"}})
            self._drop_ring()
            if self._vad is not None:
                self._vad.reset()
        self._phase = "capped"
        self.reason = "daily cap reached"
        if count:
            self.stats.chunks_capped += 1
            if self._count is not None:
                self._count("chunks_capped", 1)
        return out


def _event(kind: str) -> ClientEvent:
    return ClientEvent({"type": kind, "event_id": protocol.new_event_id()})


def build_speech_gate(settings: Settings, *, allowed: Callable[[], bool] | None = None,
                      on_wake: Callable[[], float | None] | None = None,
                      count: Callable[[str, int], None] | None = None,
                      clock: Clock = time.monotonic) -> SpeechGate:
    """The gate `settings` ask for; a detector is imported only when it is used."""
    from edgevoice.settings import hangover_ms

    s = settings.stream
    chunk_ms = settings.audio.chunk_ms
    vad: VoiceDetector | None = None
    wake: WakeDetector | None = None
    if s.gate != "always":
        if s.vad == "micro":
            from edgevoice.audio.vad import MicroVad
            vad = MicroVad(chunk_ms)
        else:
            from edgevoice.audio.vad import EnergyVad
            vad = EnergyVad(chunk_ms)
    if s.gate == "wakeword":
        from edgevoice.audio.wakeword import load_wake_detector
        wake = load_wake_detector(s.wake_word, s.wake_threshold)
    return SpeechGate(
        mode=s.gate, chunk_ms=chunk_ms, preroll_ms=s.preroll_ms,
        hangover_ms=hangover_ms(settings), max_utterance_s=s.max_utterance_s,
        turn_detection=settings.session.turn_detection,
        conversation=settings.session.mode == "conversation", vad=vad, wake=wake,
        send_wake_word=s.send_wake_word, follow_up_s=s.follow_up_s, allowed=allowed,
        on_wake=on_wake, count=count, clock=clock)
