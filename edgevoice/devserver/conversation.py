"""One session's conversation state and the handlers for client events.

The conversation knows nothing about WebSockets: it sends server events through the
``emit`` callable it is given, runs responses through ``schedule``, and reports what it
observes to its :class:`Host` (the server).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
from collections.abc import Callable, Collection, Coroutine
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from .records import SessionRecord, new_id, summarize
from .schema import (
    ApiError,
    JsonObj,
    invalid_type,
    merge_session,
    missing_param,
    unknown_param,
    validate_session_update,
)
from .vad import (
    SEMANTIC_SILENCE_MS,
    EnergyVad,
    bytes_per_sample,
    convert,
    decode,
    format_rate,
    threshold_to_dbfs,
)

MIN_COMMIT_MS = 100
MAX_BUFFER_S = 600  # the input buffer keeps at most this much uncommitted audio
RESPONSE_CHUNK_MS = 100
RESPONSE_SPEED = 4.0  # echoed audio is streamed this many times faster than real time

Emit = Callable[[JsonObj], None]
Schedule = Callable[[Coroutine[Any, Any, None]], "asyncio.Future[None]"]


class Host(Protocol):
    """What a conversation needs from the server that carries it.

    ``changing()`` locks the observations (records, counters) and wakes waiters when the
    block ends; ``audio_received`` accounts and records one append's decoded audio
    (possibly empty); ``count`` adds one to a server-wide counter.
    """

    @property
    def keep_history(self) -> bool: ...
    @property
    def vad_threshold_dbfs(self) -> float | None: ...
    @property
    def retired_models(self) -> Collection[str]: ...
    def changing(self) -> AbstractContextManager[None]: ...
    def info(self, msg: str, *args: Any) -> None: ...
    def audio_received(self, conv: Conversation, data: bytes) -> None: ...
    def count(self, counter: str) -> None: ...


@dataclass
class _Response:
    id: str
    item_id: str
    task: asyncio.Future[None] | None = None


class Conversation:
    """Per-session state: configuration, input buffer, VAD, items and the active response."""

    def __init__(
        self,
        host: Host,
        record: SessionRecord,
        config: JsonObj,
        emit: Emit,
        schedule: Schedule = asyncio.ensure_future,
    ) -> None:
        self.host = host
        self.record = record
        self.id = record.id
        self.kind = record.type
        self.config = config
        self.emit = emit
        self.schedule = schedule
        self.fmt = "audio/pcm"
        self.vad = EnergyVad(24000)
        self.buf = bytearray()
        self.buf_start = 0  # VAD-relative sample index of buf[0]
        self.ms_base = 0  # session milliseconds at the VAD's origin
        self.speech_item: str | None = None
        self.last_item_id: str | None = None
        self.last_item_audio = b""
        self.response: _Response | None = None
        self.audio_output_started = False
        self._configure_vad()

    def session_ms(self, sample: int) -> int:
        return self.ms_base + self.vad.ms(sample)

    @property
    def turn_detection(self) -> JsonObj | None:
        td = self.config["audio"]["input"].get("turn_detection")
        return td if isinstance(td, dict) else None

    @property
    def transcribes(self) -> bool:
        return self.kind == "transcription" or bool(
            self.config["audio"]["input"].get("transcription")
        )

    def send_error(self, err: ApiError, client_event_id: str | None) -> None:
        self.emit(
            {
                "type": "error",
                "error": {
                    "type": err.error_type,
                    "code": err.code,
                    "message": err.message,
                    "param": err.param,
                    "event_id": client_event_id,
                },
            }
        )

    def close(self) -> None:
        """The connection is gone: stop the active response."""
        if self.response is not None and self.response.task is not None:
            self.response.task.cancel()

    def on_text(self, text: str) -> None:
        """Handle one text frame from the client."""
        try:
            event = json.loads(text)
        except ValueError:
            self._record_client({"type": "<invalid json>", "length": len(text)})
            self.send_error(
                ApiError(
                    "invalid_json",
                    "The server could not parse the event: it is not valid JSON.",
                ),
                None,
            )
            return
        if not isinstance(event, dict):
            self._record_client({"type": "<not an object>"})
            self.send_error(ApiError("invalid_type", "Expected an event object.", None), None)
            return
        eid = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        etype = event.get("type")
        try:
            if etype == "input_audio_buffer.append":
                self._on_append(event)
                return
            self._record_client(summarize(event))
            handler = self._dispatch.get(etype) if isinstance(etype, str) else None
            if handler is None:
                if etype is None:
                    raise missing_param("type")
                raise ApiError(
                    "invalid_value",
                    f"Invalid value: {json.dumps(etype)}. Supported values are: "
                    + ", ".join(f"'{t}'" for t in ("input_audio_buffer.append", *self._dispatch))
                    + ".",
                    "type",
                )
            handler(self, event)
        except ApiError as err:
            self.send_error(err, eid)

    def _record_client(self, summary: JsonObj) -> None:
        if not self.host.keep_history:
            return
        with self.host.changing():
            self.record.client_events.append(summary)

    # session.update

    def _on_session_update(self, event: JsonObj) -> None:
        for key in event:
            if key not in ("type", "event_id", "session"):
                raise unknown_param(key)
        if "session" not in event:
            raise missing_param("session")
        try:
            update = validate_session_update(
                self.kind, event["session"], self.config, self.host.retired_models
            )
        except ApiError as err:
            if err.code == "model_not_found":
                self.host.count("transcription_models_rejected")
            raise
        voice = update.get("audio", {}).get("output", {}).get("voice")
        if (
            voice is not None
            and self.audio_output_started
            and voice != self.config["audio"]["output"].get("voice")
        ):
            raise ApiError(
                "invalid_value",
                "Cannot update a conversation's voice if assistant audio is present.",
                "session.audio.output.voice",
            )
        old_fmt = self.config["audio"]["input"]["format"]["type"]
        self.config = merge_session(self.config, update)
        new_fmt = self.config["audio"]["input"]["format"]["type"]
        if new_fmt != old_fmt:
            # A new input format: the buffered audio means nothing any more.
            self.ms_base = self.session_ms(self.vad.position)
            self.fmt = new_fmt
            self.vad = EnergyVad(format_rate(new_fmt))
            self.buf.clear()
            self.buf_start = 0
            self.speech_item = None
        self._configure_vad()
        self.host.info("session %s updated", self.id)
        self.emit({"type": "session.updated", "session": copy.deepcopy(self.config)})

    def _configure_vad(self) -> None:
        td = self.turn_detection
        if td is None:
            if self.vad.in_speech:
                self.vad.reset()
                self.speech_item = None
            return
        if self.host.vad_threshold_dbfs is not None:
            dbfs = self.host.vad_threshold_dbfs
        else:
            dbfs = threshold_to_dbfs(float(td.get("threshold", 0.5)))
        if td["type"] == "semantic_vad":
            silence = SEMANTIC_SILENCE_MS.get(str(td.get("eagerness", "auto")), 800)
            prefix = 300
        else:
            silence = int(td.get("silence_duration_ms", 500))
            prefix = int(td.get("prefix_padding_ms", 300))
        self.vad.configure(threshold_dbfs=dbfs, silence_ms=silence, prefix_padding_ms=prefix)

    # input_audio_buffer.*

    def _on_append(self, event: JsonObj) -> None:
        audio = event.get("audio")
        data: bytes | None = None
        try:
            if "audio" not in event:
                raise missing_param("audio")
            if not isinstance(audio, str):
                raise invalid_type("audio", "a string", audio)
            try:
                data = base64.b64decode(audio, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(
                    "invalid_value", "Invalid 'audio'. Expected base64-encoded audio.", "audio"
                ) from None
            if self.fmt == "audio/pcm" and len(data) % 2:
                raise ApiError(
                    "invalid_value",
                    f"Invalid 'audio': {len(data)} bytes is not a whole number of 16-bit "
                    "PCM samples.",
                    "audio",
                )
        finally:
            self._record_client(summarize(event, len(data) if data is not None else None))
        self.host.audio_received(self, data)
        if not data:
            return
        samples = decode(data, self.fmt)
        self.buf += data
        bps = bytes_per_sample(self.fmt)
        limit = MAX_BUFFER_S * self.vad.rate * bps
        if len(self.buf) > limit:
            drop = len(self.buf) - limit
            drop -= drop % bps
            del self.buf[:drop]
            self.buf_start += drop // bps
        vad_events = self.vad.feed(samples)
        td = self.turn_detection
        if td is None:
            return
        for ev in vad_events:
            if ev.kind == "speech_started":
                self.speech_item = new_id("item")
                self.emit(
                    {
                        "type": "input_audio_buffer.speech_started",
                        "audio_start_ms": self.session_ms(ev.sample),
                        "item_id": self.speech_item,
                    }
                )
                if td.get("interrupt_response", True) and self.response is not None:
                    self._cancel_response("turn_detected")
            else:
                item_id = self.speech_item or new_id("item")
                self.speech_item = None
                self.emit(
                    {
                        "type": "input_audio_buffer.speech_stopped",
                        "audio_end_ms": self.session_ms(ev.sample),
                        "item_id": item_id,
                    }
                )
                audio_item = self._take(ev.start, ev.sample)
                self._commit_turn(item_id, audio_item, auto=bool(td.get("create_response", True)))

    def _take(self, start: int, end: int) -> bytes:
        """Remove [start, end) (VAD samples) from the buffer; audio before start is dropped."""
        bps = bytes_per_sample(self.fmt)
        a = max(0, start - self.buf_start) * bps
        b = max(0, end - self.buf_start) * bps
        audio = bytes(self.buf[a:b])
        del self.buf[:b]
        self.buf_start = max(self.buf_start, end)
        return audio

    def _commit_turn(self, item_id: str, audio: bytes, auto: bool) -> None:
        prev = self.last_item_id
        self.emit(
            {"type": "input_audio_buffer.committed", "previous_item_id": prev, "item_id": item_id}
        )
        self.emit(
            {
                "type": "conversation.item.added",
                "previous_item_id": prev,
                "item": {
                    "id": item_id,
                    "object": "realtime.item",
                    "type": "message",
                    "status": "completed",
                    "role": "user",
                    "content": [{"type": "input_audio", "transcript": None}],
                },
            }
        )
        self.last_item_id = item_id
        self.last_item_audio = audio
        secs = self._seconds(audio)
        self.host.info("session %s: user turn %s, %.2f s", self.id, item_id, secs)
        if self.transcribes:
            transcript = f"[speech {secs:.2f} s, devserver cannot transcribe]"
            self.emit(
                {
                    "type": "conversation.item.input_audio_transcription.delta",
                    "item_id": item_id,
                    "content_index": 0,
                    "delta": transcript,
                }
            )
            self.emit(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": transcript,
                    "usage": {"type": "duration", "seconds": round(secs, 3)},
                }
            )
        if auto and self.kind == "realtime" and self.response is None:
            self._start_response()

    def _seconds(self, audio: bytes) -> float:
        return len(audio) / bytes_per_sample(self.fmt) / self.vad.rate

    def _on_commit(self, event: JsonObj) -> None:
        ms = self._seconds(bytes(self.buf)) * 1000.0
        if ms < MIN_COMMIT_MS:
            raise ApiError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {ms:.2f}ms of audio.",
                None,
            )
        item_id = self.speech_item or new_id("item")
        self.speech_item = None
        audio = bytes(self.buf)
        self.buf.clear()
        self.buf_start = self.vad.position
        self.vad.reset()
        self._commit_turn(item_id, audio, auto=False)

    def _on_clear(self, event: JsonObj) -> None:
        self.buf.clear()
        self.buf_start = self.vad.position
        self.vad.reset()
        self.speech_item = None
        self.emit({"type": "input_audio_buffer.cleared"})

    # responses

    def _on_response_create(self, event: JsonObj) -> None:
        if self.kind != "realtime":
            raise ApiError(
                "invalid_value",
                "Invalid value: 'response.create'. Transcription sessions do not create responses.",
                "type",
            )
        if self.response is not None:
            raise ApiError(
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress: "
                f"{self.response.id}. Wait until the response is finished before creating a new "
                "one.",
                None,
            )
        self._start_response()

    def _on_response_cancel(self, event: JsonObj) -> None:
        if self.response is None:
            raise ApiError(
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
                None,
            )
        self._cancel_response("client_cancelled")

    def _response_obj(self, resp: _Response, status: str) -> JsonObj:
        out = self.config["audio"]["output"]
        return {
            "object": "realtime.response",
            "id": resp.id,
            "status": status,
            "status_details": None,
            "output": [],
            "conversation_id": "conv_" + self.id.removeprefix("sess_"),
            "output_modalities": list(self.config.get("output_modalities", ["audio"])),
            "max_output_tokens": self.config.get("max_output_tokens", "inf"),
            "audio": {"output": {"format": out["format"], "voice": out["voice"]}},
            "usage": None,
            "metadata": None,
        }

    def _start_response(self) -> None:
        resp = _Response(id=new_id("resp"), item_id=new_id("item"))
        self.response = resp
        self.emit({"type": "response.created", "response": self._response_obj(resp, "in_progress")})
        resp.task = self.schedule(self._run_response(resp, self.last_item_audio))

    def _cancel_response(self, reason: str) -> None:
        resp = self.response
        if resp is None:
            return
        self.response = None
        if resp.task is not None:
            resp.task.cancel()
        body = self._response_obj(resp, "cancelled")
        body["status_details"] = {"type": "cancelled", "reason": reason}
        self.emit({"type": "response.done", "response": body})

    async def _run_response(self, resp: _Response, audio: bytes) -> None:
        secs = self._seconds(audio)
        text = (
            f"Echoing {secs:.2f} s of your speech."
            if audio
            else "Nothing to echo: no user audio has been committed yet."
        )
        ids = {"response_id": resp.id, "item_id": resp.item_id, "output_index": 0}
        part = {**ids, "content_index": 0}
        item: JsonObj = {
            "id": resp.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        self.emit(
            {
                "type": "response.output_item.added",
                "response_id": resp.id,
                "output_index": 0,
                "item": item,
            }
        )
        modalities = self.config.get("output_modalities", ["audio"])
        if "audio" in modalities:
            out_fmt = self.config["audio"]["output"]["format"]["type"]
            pcm = convert(audio, self.fmt, out_fmt)
            if pcm:
                self.audio_output_started = True
            step = format_rate(out_fmt) * bytes_per_sample(out_fmt) * RESPONSE_CHUNK_MS // 1000
            pause = RESPONSE_CHUNK_MS / 1000.0 / RESPONSE_SPEED
            for i in range(0, len(pcm), step):
                self.emit(
                    {
                        "type": "response.output_audio.delta",
                        **part,
                        "delta": base64.b64encode(pcm[i : i + step]).decode("ascii"),
                    }
                )
                await asyncio.sleep(pause)
            self.emit({"type": "response.output_audio_transcript.delta", **part, "delta": text})
            self.emit({"type": "response.output_audio.done", **part})
            done = {"type": "response.output_audio_transcript.done", **part, "transcript": text}
            self.emit(done)
            content = [{"type": "output_audio", "transcript": text}]
        else:
            self.emit({"type": "response.output_text.delta", **part, "delta": text})
            self.emit({"type": "response.output_text.done", **part, "text": text})
            content = [{"type": "output_text", "text": text}]
        item = {**item, "status": "completed", "content": content}
        self.emit(
            {
                "type": "response.output_item.done",
                "response_id": resp.id,
                "output_index": 0,
                "item": item,
            }
        )
        body = self._response_obj(resp, "completed")
        body["output"] = [item]
        body["usage"] = {
            "total_tokens": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "input_token_details": {"audio_tokens": 0, "text_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"audio_tokens": 0, "text_tokens": 0},
        }
        self.response = None
        self.emit({"type": "response.done", "response": body})
        self.emit(
            {
                "type": "rate_limits.updated",
                "rate_limits": [
                    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                    {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5},
                ],
            }
        )

    # conversation.*

    def _on_truncate(self, event: JsonObj) -> None:
        for key in ("item_id", "content_index", "audio_end_ms"):
            if key not in event:
                raise missing_param(key)
        self.emit(
            {
                "type": "conversation.item.truncated",
                "item_id": event["item_id"],
                "content_index": event["content_index"],
                "audio_end_ms": event["audio_end_ms"],
            }
        )

    def _on_item_create(self, event: JsonObj) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            raise missing_param("item")
        item = {"id": item.get("id") or new_id("item"), "object": "realtime.item", **item}
        self.emit(
            {
                "type": "conversation.item.added",
                "previous_item_id": self.last_item_id,
                "item": item,
            }
        )
        self.last_item_id = str(item["id"])

    def _on_item_delete(self, event: JsonObj) -> None:
        if "item_id" not in event:
            raise missing_param("item_id")
        self.emit({"type": "conversation.item.deleted", "item_id": event["item_id"]})

    _dispatch: dict[str, Callable[[Conversation, JsonObj], None]] = {
        "session.update": _on_session_update,
        "input_audio_buffer.commit": _on_commit,
        "input_audio_buffer.clear": _on_clear,
        "response.create": _on_response_create,
        "response.cancel": _on_response_cancel,
        "conversation.item.truncate": _on_truncate,
        "conversation.item.create": _on_item_create,
        "conversation.item.delete": _on_item_delete,
    }
