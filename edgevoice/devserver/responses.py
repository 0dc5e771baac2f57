"""Assistant responses: what an answer says, the events that frame it, cancel and truncate.

A response is planned when it is created (:func:`plan_answer`: the echo of the last user
turn, a long answer asked for with the ``long_answer`` operation, or a short prompt after
an idle timeout) and framed at once, in the order of the real service::

    response.created
    response.output_item.added          (assistant message, in_progress, no content)
    conversation.item.added             (the same item)
    response.content_part.added         (part {"type": "audio", "transcript": ""})
    response.output_audio.delta ...     (100 ms each, paced at ``speed`` x real time;
    response.output_audio_transcript.delta ...   the words interleaved as they are spoken)
    response.output_audio_transcript.done
    response.output_audio.done
    response.content_part.done
    response.output_item.done           (item completed, or incomplete when cancelled)
    conversation.item.done
    response.done                       (status completed, or cancelled + status_details)
    rate_limits.updated

A cancel (``response.cancel``, speech with ``interrupt_response``) stops the deltas at once
and runs the same closing events with what was sent so far. Text answers
(``output_modalities: ["text"]``) use ``response.output_text.delta`` / ``.done`` and a
``text`` part instead.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .records import CancelRecord, ResponseRecord, TruncationRecord, new_id
from .schema import ApiError, JsonObj, invalid_type, missing_param
from .vad import bytes_per_sample, convert, encode, format_rate

if TYPE_CHECKING:
    from .conversation import Conversation

RESPONSE_CHUNK_MS = 100
RESPONSE_SPEED = 4.0  # default pacing: audio is streamed this many times faster than real time
MAX_LONG_ANSWER_S = 600.0
TONE_HZ = 440.0
TONE_AMPLITUDE = 6000  # about -15 dBFS
IDLE_PROMPT_MS = 1000
IDLE_PROMPT = "Are you still there?"

_USAGE: JsonObj = {
    "total_tokens": 0,
    "input_tokens": 0,
    "output_tokens": 0,
    "input_token_details": {"audio_tokens": 0, "text_tokens": 0, "cached_tokens": 0},
    "output_token_details": {"audio_tokens": 0, "text_tokens": 0},
}
_RATE_LIMITS = [
    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
    {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5},
]


def bytes_per_ms(fmt_type: str) -> int:
    """Bytes of one millisecond of audio in an API format (48 for PCM16 24 kHz, 8 for G.711)."""
    return format_rate(fmt_type) * bytes_per_sample(fmt_type) // 1000


def tone(ms: int, fmt_type: str) -> bytes:
    """A steady sine tone of ``ms`` milliseconds in ``fmt_type``."""
    rate = format_rate(fmt_type)
    t = np.arange(rate * ms // 1000, dtype=np.float64) / rate
    return encode((TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16), fmt_type)


def repeat_to(audio: bytes, n_bytes: int) -> bytes:
    """``audio`` repeated and cut to exactly ``n_bytes``."""
    return (audio * -(-n_bytes // len(audio)))[:n_bytes]


def check_long_answer(seconds: float, speed: float | None) -> None:
    """ValueError unless these are valid ``long_answer`` arguments."""
    if not 0 < seconds <= MAX_LONG_ANSWER_S:
        raise ValueError(f"seconds must be in (0, {MAX_LONG_ANSWER_S:g}], not {seconds}")
    if speed is not None and not speed > 0:
        raise ValueError(f"speed must be > 0, not {speed}")


@dataclass(frozen=True)
class Plan:
    """What one response will say: audio in the output format, its transcript, its pacing."""

    audio: bytes
    text: str
    speed: float


def plan_answer(conv: Conversation, trigger: str) -> Plan:
    """The answer to give now: a pending long answer, the idle prompt, or the echo."""
    out_fmt = conv.config["audio"]["output"]["format"]["type"]
    speed = conv.host.response_speed
    echo = convert(conv.last_item_audio, conv.last_item_fmt, out_fmt)
    long = conv.host.take_long_answer()
    if long is not None:
        seconds, long_speed = long
        if long_speed is not None:
            speed = long_speed
        ms = round(seconds * 1000)
        audio = repeat_to(echo, ms * bytes_per_ms(out_fmt)) if echo else tone(ms, out_fmt)
        source = "your speech, repeated" if echo else "a tone"
        count = " ".join(str(i) for i in range(1, max(1, math.ceil(seconds)) + 1))
        return Plan(audio, f"A long answer of {seconds:g} s ({source}): {count}.", speed)
    if trigger == "idle_timeout":
        return Plan(tone(IDLE_PROMPT_MS, out_fmt), IDLE_PROMPT, speed)
    if not conv.last_item_audio:
        return Plan(b"", "Nothing to echo: no user audio has been committed yet.", speed)
    secs = conv.seconds(conv.last_item_audio, conv.last_item_fmt)
    return Plan(echo, f"Echoing {secs:.2f} s of your speech.", speed)


class Response:
    """One response: framed by :meth:`start`, streamed by :meth:`run`, closed by :meth:`finish`.

    Once finished it stays in the conversation as the assistant item it produced (for
    ``conversation.item.truncate``); the planned audio is dropped then.
    """

    def __init__(self, conv: Conversation, trigger: str, plan: Plan) -> None:
        self.conv = conv
        self.id = new_id("resp")
        self.item_id = new_id("item")
        self.previous_item_id = conv.last_item_id
        self.audio_mode = "audio" in conv.config.get("output_modalities", ["audio"])
        self.out_fmt = conv.config["audio"]["output"]["format"]["type"]
        self.bpm = bytes_per_ms(self.out_fmt)
        self.audio = plan.audio if self.audio_mode else b""
        self.total = len(self.audio)
        self.pieces: list[str] = re.findall(r"\s*\S+", plan.text)  # words, as spoken
        self.speed = plan.speed
        self.sent = 0  # bytes of audio sent
        self.spoken = 0  # pieces of the transcript sent
        self.kept: int | None = None  # bytes kept by the last truncate
        self.task: asyncio.Future[None] | None = None
        self.finished = False
        self.record = ResponseRecord(
            id=self.id,
            item_id=self.item_id,
            trigger=trigger,
            output_format=self.out_fmt if self.audio_mode else "text",
            planned_ms=self.total // self.bpm,
            speed=self.speed,
            created_at=time.monotonic(),
        )

    # -- helpers -------------------------------------------------------------------------

    @property
    def ids(self) -> JsonObj:
        return {
            "response_id": self.id,
            "item_id": self.item_id,
            "output_index": 0,
            "content_index": 0,
        }

    @property
    def available(self) -> int:
        """Bytes of audio the item holds: what was sent, or what the last truncate kept."""
        return self.sent if self.kept is None else min(self.kept, self.sent)

    def words_before(self, n_bytes: int) -> int:
        """How many transcript pieces start before byte ``n_bytes`` of the audio."""
        n = len(self.pieces)
        if self.total == 0:
            return n
        return min(n, -(-n_bytes * n // self.total))

    def transcript(self, n_pieces: int | None = None) -> str:
        return "".join(self.pieces[: self.spoken if n_pieces is None else n_pieces])

    def _item(self, status: str, content: list[JsonObj]) -> JsonObj:
        return {
            "id": self.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _body(self, status: str) -> JsonObj:
        conv = self.conv
        out = conv.config["audio"]["output"]
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": status,
            "status_details": None,
            "output": [],
            "conversation_id": "conv_" + conv.id.removeprefix("sess_"),
            "output_modalities": list(conv.config.get("output_modalities", ["audio"])),
            "max_output_tokens": conv.config.get("max_output_tokens", "inf"),
            "audio": {"output": {"format": out["format"], "voice": out["voice"]}},
            "usage": None,
            "metadata": None,
        }

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Send the framing events and start streaming."""
        emit = self.conv.emit
        emit({"type": "response.created", "response": self._body("in_progress")})
        item = self._item("in_progress", [])
        emit(
            {
                "type": "response.output_item.added",
                "response_id": self.id,
                "output_index": 0,
                "item": item,
            }
        )
        emit(
            {
                "type": "conversation.item.added",
                "previous_item_id": self.previous_item_id,
                "item": item,
            }
        )
        part = (
            {"type": "audio", "transcript": ""} if self.audio_mode else {"type": "text", "text": ""}
        )
        emit({"type": "response.content_part.added", **self.ids, "part": part})
        with self.conv.host.changing():
            self.conv.record.responses.append(self.record)
        self.task = self.conv.schedule(self.run())

    async def run(self) -> None:
        """Stream the audio, ``RESPONSE_CHUNK_MS`` per delta, at ``speed`` x real time."""
        if not self.audio_mode:
            self.spoken = len(self.pieces)
            self.conv.emit(
                {"type": "response.output_text.delta", **self.ids, "delta": self.transcript()}
            )
            self.finish("completed")
            return
        loop = asyncio.get_running_loop()
        step = self.bpm * RESPONSE_CHUNK_MS
        interval = RESPONSE_CHUNK_MS / 1000.0 / self.speed
        t0 = loop.time()
        n = 0
        for i in range(0, self.total, step):
            await asyncio.sleep(max(0.0, t0 + n * interval - loop.time()))
            self._send_chunk(self.audio[i : i + step])
            n += 1
        await asyncio.sleep(max(0.0, t0 + n * interval - loop.time()))
        self.finish("completed")

    def _send_chunk(self, chunk: bytes) -> None:
        conv = self.conv
        conv.audio_output_started = True
        conv.emit(
            {
                "type": "response.output_audio.delta",
                **self.ids,
                "delta": base64.b64encode(chunk).decode("ascii"),
            }
        )
        self.sent += len(chunk)
        words = self.words_before(self.sent)
        if words > self.spoken:
            delta = "".join(self.pieces[self.spoken : words])
            self.spoken = words
            conv.emit(
                {"type": "response.output_audio_transcript.delta", **self.ids, "delta": delta}
            )
        with conv.host.changing():
            rec = self.record
            rec.audio_bytes = self.sent
            rec.audio_ms = self.sent // self.bpm
            rec.transcript = self.transcript()
            if conv.host.keep_history:
                rec.audio_chunks.append(chunk)

    def finish(self, status: str, reason: str | None = None, event_id: str | None = None) -> None:
        """Close the response: ``completed``, or ``cancelled`` (at once) with a reason."""
        if self.finished:
            return
        self.finished = True
        if self.task is not None and status != "completed":
            self.task.cancel()
        conv, emit, ids = self.conv, self.conv.emit, self.ids
        if status == "completed" and self.audio_mode and self.spoken < len(self.pieces):
            delta = "".join(self.pieces[self.spoken :])
            self.spoken = len(self.pieces)
            emit({"type": "response.output_audio_transcript.delta", **ids, "delta": delta})
        text = self.transcript()
        if self.audio_mode:
            emit({"type": "response.output_audio_transcript.done", **ids, "transcript": text})
            emit({"type": "response.output_audio.done", **ids})
            part: JsonObj = {"type": "audio", "transcript": text}
            content: JsonObj = {"type": "output_audio", "transcript": text}
        else:
            emit({"type": "response.output_text.done", **ids, "text": text})
            part = {"type": "text", "text": text}
            content = {"type": "output_text", "text": text}
        emit({"type": "response.content_part.done", **ids, "part": part})
        item = self._item("completed" if status == "completed" else "incomplete", [content])
        emit(
            {
                "type": "response.output_item.done",
                "response_id": self.id,
                "output_index": 0,
                "item": item,
            }
        )
        emit(
            {
                "type": "conversation.item.done",
                "previous_item_id": self.previous_item_id,
                "item": item,
            }
        )
        body = self._body(status)
        if status != "completed":
            body["status_details"] = {"type": status, "reason": reason}
        body["output"] = [item]
        body["usage"] = dict(_USAGE)
        conv.response_finished(self)
        emit({"type": "response.done", "response": body})
        emit({"type": "rate_limits.updated", "rate_limits": [dict(r) for r in _RATE_LIMITS]})
        self.audio = b""
        now = time.monotonic()
        with conv.host.changing():
            rec = self.record
            rec.status, rec.reason, rec.done_at, rec.transcript = status, reason, now, text
            if status == "cancelled" and reason is not None:
                conv.record.cancels.append(
                    CancelRecord(self.id, reason, rec.audio_ms, rec.planned_ms, event_id, now)
                )
        conv.host.info("session %s: response %s %s (%s)", conv.id, self.id, status, reason)

    def abort(self) -> None:
        """The connection is gone: stop streaming, send nothing."""
        if self.finished:
            return
        self.finished = True
        if self.task is not None:
            self.task.cancel()
        self.audio = b""
        with self.conv.host.changing():
            self.record.status, self.record.reason = "cancelled", "connection_closed"
            self.record.done_at = time.monotonic()


def truncate(conv: Conversation, event: JsonObj) -> None:
    """``conversation.item.truncate``: cut an assistant audio item at ``audio_end_ms``."""
    for key in ("item_id", "content_index", "audio_end_ms"):
        if key not in event:
            raise missing_param(key)
    item_id, index, end = event["item_id"], event["content_index"], event["audio_end_ms"]
    if not isinstance(item_id, str):
        raise invalid_type("item_id", "a string", item_id)
    for key, value in (("content_index", index), ("audio_end_ms", end)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid_type(key, "an integer", value)
    resp = conv.assistant_items.get(item_id)
    if resp is None:
        raise ApiError(
            "invalid_value",
            f"Invalid 'item_id': no assistant message with id '{item_id}'. "
            "Only assistant messages can be truncated.",
            "item_id",
        )
    if not resp.audio_mode:
        raise ApiError(
            "invalid_value",
            f"Invalid 'item_id': item '{item_id}' has no audio content to truncate.",
            "item_id",
        )
    if index != 0:
        raise ApiError(
            "invalid_value",
            f"Invalid 'content_index': {index}. The item has one content part; set this to 0.",
            "content_index",
        )
    if end < 0:
        raise ApiError(
            "invalid_value",
            f"Invalid 'audio_end_ms': integer {end} is below the minimum value 0.",
            "audio_end_ms",
        )
    have = resp.available
    if end * resp.bpm > have:
        raise ApiError(
            "invalid_value",
            f"Audio content of {have // resp.bpm}ms is already shorter than {end}ms",
            "audio_end_ms",
        )
    resp.kept = end * resp.bpm
    cut = resp.transcript(min(resp.spoken, resp.words_before(resp.kept)))
    with conv.host.changing():
        resp.record.truncated_ms = end
        resp.record.truncated_transcript = cut
        conv.record.truncations.append(
            TruncationRecord(
                item_id=item_id,
                response_id=resp.id,
                content_index=index,
                audio_end_ms=end,
                sent_ms=resp.sent // resp.bpm,
                kept_bytes=resp.kept,
                transcript=cut,
                at=time.monotonic(),
            )
        )
    conv.host.info("session %s: item %s truncated at %d ms", conv.id, item_id, end)
    conv.emit(
        {
            "type": "conversation.item.truncated",
            "item_id": item_id,
            "content_index": index,
            "audio_end_ms": end,
        }
    )
