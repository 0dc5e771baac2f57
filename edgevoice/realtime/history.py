"""The conversation carried across sessions: the last turns' transcripts, to re-seed a new one.

A new session (rollover, reconnect) starts with an empty conversation. `History` registers
on the one dispatcher and keeps the last turns of every session, in conversation order;
`seed_events(carry_turns)` gives the `conversation.item.create` events (GA shape) that put
the last `carry_turns` of them into a new session as text items: user turns as
`input_text`, assistant turns as `output_text` (the API cannot create assistant audio).
They are to be sent urgent, to the new session, right after it is configured and before
any audio. A turn is one message: a user utterance and the answer to it are two turns.

What is kept, by item id (the same item seen twice, e.g. transcripts of replayed audio
the server reports again, is one turn):

- The order comes from `conversation.item.added` (beta `conversation.item.created`) of
  audio message items (user audio, assistant answers); items whose content is text are the
  seeds themselves and are not kept again. A transcript for an item never seen there is
  appended at the end.
- User turns: `conversation.item.input_audio_transcription.completed` (`transcript`).
- Assistant turns: `response.output_audio_transcript.done` (`transcript`) or
  `response.output_text.done` (`text`).
- A truncated answer (`conversation.item.truncated`, the server's acknowledgement of a
  barge-in's truncate) keeps only what was played: the transcript is cut in proportion to
  `audio_end_ms` over the audio received for the item (counted from the deltas), words
  that start before the cut kept, and marked " (interrupted)" so the model knows the
  person did not hear the rest. When the item's audio length is unknown the whole
  transcript is kept, marked the same way.
- Turns with no transcript (transcription failed or off) are not seeded.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from edgevoice.realtime import protocol
from edgevoice.realtime.dispatch import EventDispatcher
from edgevoice.realtime.protocol import ServerEvent

INTERRUPTED = " (interrupted)"
DEFAULT_KEEP = 32  # turns kept (seeds take at most this many)
_BYTES_PER_MS = protocol.OUTPUT_RATE * 2 // 1000  # PCM16 mono at the output rate
_TEXT_CONTENT = frozenset({"input_text", "output_text", "text"})


@dataclass
class Turn:
    item_id: str
    role: str  # "user" or "assistant"
    text: str = ""
    audio_bytes: int = 0  # assistant audio received for the item
    truncated_ms: int | None = None  # audio_end_ms of an acknowledged truncate

    def seen_text(self) -> str:
        """The text the person heard (assistant, truncated) or said."""
        if self.truncated_ms is None:
            return self.text.strip()
        words = re.findall(r"\s*\S+", self.text)
        total_ms = self.audio_bytes / _BYTES_PER_MS
        if total_ms > 0:
            keep = min(len(words), math.ceil(len(words) * self.truncated_ms / total_ms))
            words = words[:keep]
        kept = "".join(words).strip()
        return kept + INTERRUPTED if kept else ""


class History:
    """The last `keep` turns of the conversation, whatever session they happened in."""

    def __init__(self, keep: int = DEFAULT_KEEP) -> None:
        if keep < 0:
            raise ValueError(f"keep must be >= 0, not {keep}")
        self._keep = keep
        self._lock = threading.Lock()  # handlers of two sessions run during a rollover
        self._turns: OrderedDict[str, Turn] = OrderedDict()

    def register(self, dispatcher: EventDispatcher[Any]) -> None:
        dispatcher.on(self._on_item_added, "conversation.item.added",
                      "conversation.item.created")
        dispatcher.on(self._on_user_transcript,
                      "conversation.item.input_audio_transcription.completed")
        dispatcher.on(self._on_assistant_transcript, "response.output_audio_transcript.done")
        dispatcher.on(self._on_assistant_text, "response.output_text.done")
        dispatcher.on(self._on_audio_delta, "response.output_audio.delta")
        dispatcher.on(self._on_truncated, "conversation.item.truncated")

    def turns(self) -> list[Turn]:
        """Copies of the turns kept, oldest first (with or without text)."""
        with self._lock:
            return [dataclasses.replace(t) for t in self._turns.values()]

    def seed_events(self, carry_turns: int) -> list[dict[str, Any]]:
        """`conversation.item.create` events for the last `carry_turns` turns with text,
        oldest first (fresh event ids on every call); 0 gives none."""
        if carry_turns <= 0:
            return []
        with self._lock:
            said = [(t.role, t.seen_text()) for t in self._turns.values()]
        said = [(role, text) for role, text in said if text][-carry_turns:]
        return [seed_event(role, text) for role, text in said]

    # -- handlers ------------------------------------------------------------------------

    def _slot(self, item_id: str, role: str) -> Turn:
        """The turn of `item_id`, appended if new; the oldest dropped beyond the bound.

        Called with the lock held. Slots without text count toward the bound as well, so
        memory stays bounded whatever the server sends.
        """
        turn = self._turns.get(item_id)
        if turn is None:
            turn = Turn(item_id, role)
            self._turns[item_id] = turn
            while len(self._turns) > max(self._keep, 1):
                self._turns.popitem(last=False)
        return turn

    def _on_item_added(self, session: object, event: ServerEvent) -> None:
        item = event.data.get("item")
        if not isinstance(item, dict) or item.get("type") != "message":
            return
        item_id, role = item.get("id"), item.get("role")
        if not isinstance(item_id, str) or not item_id or role not in ("user", "assistant") \
                or self._keep == 0:
            return
        content = item.get("content")
        if isinstance(content, list) and any(
                isinstance(part, dict) and part.get("type") in _TEXT_CONTENT
                for part in content):
            return  # a text item (our own seeds): already kept as the turn it came from
        with self._lock:
            self._slot(item_id, str(role))

    def _on_user_transcript(self, session: object, event: ServerEvent) -> None:
        self._set_text(event.get_str("item_id"), "user", event.get_str("transcript"))

    def _on_assistant_transcript(self, session: object, event: ServerEvent) -> None:
        self._set_text(event.get_str("item_id"), "assistant", event.get_str("transcript"))

    def _on_assistant_text(self, session: object, event: ServerEvent) -> None:
        self._set_text(event.get_str("item_id"), "assistant", event.get_str("text"))

    def _set_text(self, item_id: str, role: str, text: str) -> None:
        if not item_id or self._keep == 0:
            return
        with self._lock:
            self._slot(item_id, role).text = text

    def _on_audio_delta(self, session: object, event: ServerEvent) -> None:
        item_id = event.get_str("item_id")
        if not item_id or self._keep == 0:
            return
        # Decoded once per event (the counters already did): 24 kHz PCM16 bytes, any format.
        n = protocol.delta_pcm24k_bytes(event)  # MalformedEvent: the dispatcher counts it
        with self._lock:
            self._slot(item_id, "assistant").audio_bytes += n

    def _on_truncated(self, session: object, event: ServerEvent) -> None:
        item_id = event.get_str("item_id")
        end = event.data.get("audio_end_ms")
        if not item_id or self._keep == 0 or not isinstance(end, int | float) \
                or isinstance(end, bool):
            return
        with self._lock:
            self._slot(item_id, "assistant").truncated_ms = max(0, int(end))


def seed_event(role: str, text: str) -> dict[str, Any]:
    """One `conversation.item.create` putting a text message of `role` into a session."""
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "conversation.item.create", "event_id": protocol.new_event_id(),
            "item": {"type": "message", "role": role,
                     "content": [{"type": kind, "text": text}]}}
