"""Talk back: the answers' audio to a speaker, and barge-in when the person speaks over them.

`Talkback` registers on the one dispatcher, after the session's own state handlers (so
`session.response_active` and `session.speech_active` already reflect the event):

- `response.created`: remembers the session's response id (named in a later cancel).
- `response.output_audio.delta` (beta `response.audio.delta` arrives normalised): decoded
  (G.711 answers expanded to 8 kHz PCM16, `session.output_format`) and handed to
  `Speaker.play` with its rate, unless its item or its response was cancelled or
  truncated by a barge-in: then it is dropped (`deltas_dropped`), never played.
- `response.output_audio.done`: `Speaker.end_of_item` (not for a cut item).
- `input_audio_buffer.speech_started` while the speaker plays or a response is under way:
  `barge_in(session)`.
- `response.done`: forgets the session's response id.

`barge_in` (also called by the local echo detector, from the capture thread) flushes the
speaker and, through the single sender, urgent and in this order: `conversation.item.truncate`
for the item that was playing (`audio_end_ms` = the milliseconds really played) to the
session that item came from, then `response.cancel` (naming the response) while the
response is still in progress. The answers to late races (`response_cancel_not_active`,
a truncate of an item already gone or beyond the audio the server has: `invalid_value`)
are errors the session survives (`protocol.exception_for_error` returns None for them).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from edgevoice.realtime import protocol
from edgevoice.realtime.dispatch import EventDispatcher
from edgevoice.realtime.link import Outbox, SessionLink
from edgevoice.realtime.protocol import ServerEvent

log = logging.getLogger("edgevoice.talkback")

REMEMBERED_IDS = 64  # cancelled items and responses kept to drop their late deltas


class Speaker(Protocol):
    """Where the answers' audio goes (audio/pyaudio_sink.py, or a fake in tests)."""

    def play(self, item_id: str, content_index: int, pcm: bytes,
             rate: int = protocol.OUTPUT_RATE) -> None:
        """Queue mono PCM16 of one item at `rate` (24 kHz, or 8 kHz decoded G.711)."""
        ...
    def end_of_item(self, item_id: str) -> None: ...
    def flush(self) -> tuple[str, int, int] | None:
        """Stop at once, drop what is queued; (item_id, content_index, played_ms) of the
        item that was playing, None when nothing was."""
        ...
    def played_ms(self, item_id: str) -> int: ...
    @property
    def playing(self) -> bool: ...


class TalkbackSession(SessionLink, Protocol):
    """A session as Talkback needs it: a SessionLink whose response activity is known."""

    response_active: bool


@dataclass
class TalkbackCounters:
    barge_ins: int = 0  # barge-ins that stopped something (playback or a response)
    truncates: int = 0  # conversation.item.truncate sent
    cancels: int = 0  # response.cancel sent
    deltas_dropped: int = 0  # audio deltas of a cancelled or truncated item, never played
    answers_played: int = 0  # assistant audio items played to their end (not cut)


class _Bounded:
    """An insertion-ordered set of ids holding the last `size`."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> None:
        if not key:
            return
        self._ids[key] = None
        self._ids.move_to_end(key)
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._ids


class Talkback:
    """Plays the answers and interrupts them; one instance for every session."""

    def __init__(self, speaker: Speaker, outbox: Outbox, *,
                 remember: int = REMEMBERED_IDS) -> None:
        self._speaker = speaker
        self._outbox = outbox
        # One lock orders a barge-in (flush, truncate, cancel, marking) against the
        # reader's "is this delta cut? then play" so no delta is played after a flush.
        self._lock = threading.Lock()
        self._cut_items = _Bounded(remember)
        self._cut_responses = _Bounded(remember)
        self._played_items = _Bounded(remember)  # items with at least one delta played
        # The session each played item came from (its truncate goes there), bounded.
        self._item_session: OrderedDict[str, weakref.ref[TalkbackSession]] = OrderedDict()
        self._remember = remember
        self._responses: weakref.WeakKeyDictionary[TalkbackSession, str] = (
            weakref.WeakKeyDictionary())
        self.counters = TalkbackCounters()

    def register(self, dispatcher: EventDispatcher[Any]) -> None:
        """Add the handlers; call after `new_dispatcher()` registered the session state."""
        dispatcher.on(self._on_response_created, "response.created")
        dispatcher.on(self._on_audio_delta, "response.output_audio.delta")
        dispatcher.on(self._on_audio_done, "response.output_audio.done")
        dispatcher.on(self._on_speech_started, "input_audio_buffer.speech_started")
        dispatcher.on(self._on_response_done, "response.done")

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return asdict(self.counters)

    # -- handlers (the session's reader thread) ------------------------------------------

    def _on_response_created(self, session: TalkbackSession, event: ServerEvent) -> None:
        response = event.data.get("response")
        response_id = response.get("id") if isinstance(response, dict) else None
        if isinstance(response_id, str) and response_id:
            with self._lock:
                self._responses[session] = response_id

    def _on_response_done(self, session: TalkbackSession, event: ServerEvent) -> None:
        response = event.data.get("response")
        response_id = response.get("id") if isinstance(response, dict) else None
        with self._lock:
            if self._responses.get(session) in (response_id, None):
                self._responses.pop(session, None)

    def _on_audio_delta(self, session: TalkbackSession, event: ServerEvent) -> None:
        pcm = protocol.decode_audio_delta(event)  # MalformedEvent: the dispatcher counts it
        rate = protocol.delta_rate(event)  # G.711 answers arrive decoded, at 8 kHz
        item_id = event.get_str("item_id")
        index = event.data.get("content_index", 0)
        content_index = index if isinstance(index, int) and not isinstance(index, bool) else 0
        with self._lock:
            if item_id in self._cut_items or event.get_str("response_id") in self._cut_responses:
                self.counters.deltas_dropped += 1
                return
            if item_id not in self._played_items:
                self._played_items.add(item_id)
                self._item_session[item_id] = weakref.ref(session)
                while len(self._item_session) > self._remember:
                    self._item_session.popitem(last=False)
            self._speaker.play(item_id, content_index, pcm, rate)

    def _on_audio_done(self, session: TalkbackSession, event: ServerEvent) -> None:
        item_id = event.get_str("item_id")
        with self._lock:
            if item_id in self._cut_items or event.get_str("response_id") in self._cut_responses:
                return
            if item_id in self._played_items:
                self.counters.answers_played += 1
            self._speaker.end_of_item(item_id)

    def _on_speech_started(self, session: TalkbackSession, event: ServerEvent) -> None:
        if self._speaker.playing or session.response_active:
            self.barge_in(session)

    # -- barge-in (any thread) -----------------------------------------------------------

    def barge_in(self, session: TalkbackSession) -> bool:
        """Stop the answer: flush the speaker, truncate what played, cancel the response.

        Thread-safe (the reader on speech_started, the capture thread's echo detector).
        Returns whether anything was stopped; a second barge-in right after the first
        finds nothing playing and the response already cancelled, and sends nothing.
        """
        with self._lock:
            flushed = self._speaker.flush()
            truncate: tuple[dict[str, Any], TalkbackSession] | None = None
            if flushed is not None:
                item_id, content_index, played_ms = flushed
                self._cut_items.add(item_id)
                owner_ref = self._item_session.get(item_id)
                owner = owner_ref() if owner_ref is not None else None
                truncate = ({"type": "conversation.item.truncate",
                             "event_id": protocol.new_event_id(), "item_id": item_id,
                             "content_index": content_index,
                             "audio_end_ms": max(0, int(played_ms))},
                            owner if owner is not None else session)
            cancel: dict[str, Any] | None = None
            response_id = self._responses.get(session)
            if session.response_active and (response_id is None
                                            or response_id not in self._cut_responses):
                cancel = {"type": "response.cancel", "event_id": protocol.new_event_id()}
                if response_id is not None:
                    cancel["response_id"] = response_id
                    self._cut_responses.add(response_id)
            if truncate is None and cancel is None:
                return False
            self.counters.barge_ins += 1
            if truncate is not None:
                self.counters.truncates += 1
                self._outbox.submit(truncate[0], to=truncate[1], urgent=True)
            if cancel is not None:
                self.counters.cancels += 1
                self._outbox.submit(cancel, to=session, urgent=True)
        log.info("barge-in: %s%s", f"truncated {truncate[0]['item_id']} at "
                 f"{truncate[0]['audio_end_ms']} ms" if truncate else "nothing playing",
                 f", cancelled {cancel.get('response_id', 'the response')}" if cancel else "",
                 extra={"edgevoice": {"EVENT": "barge_in", "SESSION": session.session_id}})
        return True
