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
from typing import Any, Protocol

from .records import SessionRecord, new_id, summarize
from .responses import RESPONSE_CHUNK_MS, RESPONSE_SPEED, Response, plan_answer, truncate
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
    decode,
    format_rate,
    threshold_to_dbfs,
)

__all__ = ["RESPONSE_CHUNK_MS", "RESPONSE_SPEED", "Conversation", "Host"]

MIN_COMMIT_MS = 100
MAX_BUFFER_S = 600  # the input buffer keeps at most this much uncommitted audio

Emit = Callable[[JsonObj], None]
Schedule = Callable[[Coroutine[Any, Any, None]], "asyncio.Future[None]"]


class Host(Protocol):
    """What a conversation needs from the server that carries it.

    ``changing()`` locks the observations (records, counters) and wakes waiters when the
    block ends; ``audio_received`` accounts and records one append's decoded audio
    (possibly empty); ``count`` adds one to a server-wide counter; ``response_speed`` is
    the default pacing of answers (times real time); ``take_long_answer`` hands out, once,
    a pending ``long_answer`` (seconds, speed or None).
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
    @property
    def response_speed(self) -> float: ...
    def take_long_answer(self) -> tuple[float, float | None] | None: ...


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
        self.last_item_fmt = self.fmt
        self.response: Response | None = None
        self.assistant_items: dict[str, Response] = {}
        self.idle_from: int | None = None  # session ms the idle timeout counts from
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
        if self.response is not None:
            self.response.abort()
            self.response = None

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
                self._speech_started(ev.sample, td)
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
        self._check_idle(td)

    def _speech_started(self, sample: int, td: JsonObj | None) -> str:
        """Emit speech_started at ``sample``; with interrupt_response, cancel the response."""
        self.speech_item = new_id("item")
        self.emit(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": self.session_ms(sample),
                "item_id": self.speech_item,
            }
        )
        if td is not None and td.get("interrupt_response", True):
            self._cancel_response("turn_detected")
        self.idle_from = None
        return self.speech_item

    def speech_started_now(self) -> JsonObj | None:
        """The ``speech_started_now`` operation: speech starts here, as the VAD would say.

        The VAD enters speech (so quiet audio from now on ends the turn after
        ``silence_duration_ms``, as after a false trigger); audio_start_ms includes the
        prefix padding. Nothing happens when the VAD is already in speech (None).
        """
        if self.vad.in_speech:
            return None
        td = self.turn_detection
        resp = self.response
        if td is not None:
            sample = self.vad.force_start()
        else:
            pad = self.vad.rate * self.vad.prefix_padding_ms // 1000
            sample = max(0, self.vad.position - pad)
        item_id = self._speech_started(sample, td)
        self.host.info("session %s: speech_started injected", self.id)
        return {
            "session_id": self.id,
            "item_id": item_id,
            "audio_start_ms": self.session_ms(sample),
            "cancelled": resp.id if resp is not None and self.response is None else None,
        }

    def _check_idle(self, td: JsonObj) -> None:
        """server_vad ``idle_timeout_ms``: after that much input audio with no speech since
        the last response's audio finished playing, timeout_triggered, commit and answer.

        Time is counted in input audio (the client streams in real time); the timer starts
        at response.done plus the playback length of the audio the response sent.
        """
        timeout = td.get("idle_timeout_ms")
        if (
            td["type"] != "server_vad"
            or timeout is None
            or self.idle_from is None
            or self.kind != "realtime"
            or self.response is not None
            or self.vad.in_speech
        ):
            return
        now = self.session_ms(self.vad.position)
        if now - self.idle_from < int(timeout):
            return
        item_id = new_id("item")
        self.emit(
            {
                "type": "input_audio_buffer.timeout_triggered",
                "audio_start_ms": self.idle_from,
                "audio_end_ms": now,
                "item_id": item_id,
            }
        )
        self.host.info("session %s: idle timeout after %d ms", self.id, now - self.idle_from)
        self.idle_from = None
        audio = bytes(self.buf)
        self.buf.clear()
        self.buf_start = self.vad.position
        self.vad.reset()
        self.speech_item = None
        self._commit_turn(item_id, audio, auto=False)
        self._start_response("idle_timeout")

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
        self.last_item_fmt = self.fmt
        secs = self.seconds(audio)
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
            self._start_response("vad")

    def seconds(self, audio: bytes, fmt: str | None = None) -> float:
        """Duration of input audio in ``fmt`` (default: the current input format)."""
        fmt = fmt or self.fmt
        return len(audio) / bytes_per_sample(fmt) / format_rate(fmt)

    def _on_commit(self, event: JsonObj) -> None:
        ms = self.seconds(bytes(self.buf)) * 1000.0
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
        self._start_response("client")

    def _on_response_cancel(self, event: JsonObj) -> None:
        want = event.get("response_id")
        if self.response is None or (want is not None and want != self.response.id):
            raise ApiError(
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
                None,
            )
        eid = event.get("event_id")
        self._cancel_response("client_cancelled", eid if isinstance(eid, str) else None)

    def _start_response(self, trigger: str) -> None:
        resp = Response(self, trigger, plan_answer(self, trigger))
        self.response = resp
        self.idle_from = None
        self.assistant_items[resp.item_id] = resp
        self.last_item_id = resp.item_id
        resp.start()

    def _cancel_response(self, reason: str, event_id: str | None = None) -> None:
        """Stop the active response at once: response.done cancelled (no-op without one)."""
        if self.response is not None:
            self.response.finish("cancelled", reason, event_id)

    def response_finished(self, resp: Response) -> None:
        """``resp`` is about to send response.done: the idle timer starts after playback."""
        if self.response is resp:
            self.response = None
        self.idle_from = self.session_ms(self.vad.position) + resp.sent // resp.bpm

    # conversation.*

    def _on_truncate(self, event: JsonObj) -> None:
        truncate(self, event)

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
        if isinstance(event["item_id"], str):
            self.assistant_items.pop(event["item_id"], None)
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
