"""Realtime API wire format: client event builders, server event parsing, classification.

Pure functions over dicts and strings, no I/O, so each fact of PROTOCOL.md is a unit test.
The GA shape is what we send; beta-era event names from old proxies are accepted on input.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from edgevoice.audio import g711
from edgevoice.errors import (
    AuthError,
    ConfigError,
    ConnectionLost,
    EdgeVoiceError,
    ModelRejected,
    ProtocolError,
    SessionConfigRejected,
)
from edgevoice.health.logsetup import redact
from edgevoice.realtime.models import MULTI_LANGUAGE_TRANSCRIPTION
from edgevoice.settings import ServerSettings, SessionSettings

INPUT_RATE = g711.PCM_RATE  # audio/pcm is 24 kHz mono s16le, and nothing else
OUTPUT_RATE = g711.PCM_RATE
# What the counters of audio time count in (captured, sent): 24 kHz mono PCM16, whatever
# session.input_format puts on the wire.
PCM_BYTES_PER_S = INPUT_RATE * 2
# The server refuses a smaller input_audio_buffer.commit (input_audio_buffer_commit_empty).
MIN_COMMIT_MS = 100
# session.input_format / output_format -> the GA format type (RealtimeAudioFormats).
FORMAT_TYPES = {"pcm": "audio/pcm", "pcmu": "audio/pcmu", "pcma": "audio/pcma"}
# Beta-era `input_audio_format` / `output_audio_format` names of the same formats.
LEGACY_FORMATS = {"pcm": "pcm16", "pcmu": "g711_ulaw", "pcma": "g711_alaw"}

# Beta-era names some proxies still send -> the GA name we dispatch on.
BETA_EVENT_NAMES = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
}

FATAL_CREDENTIAL_CODES = frozenset(
    {"invalid_api_key", "insufficient_quota", "account_deactivated",
     "billing_hard_limit_reached"}
)
BENIGN_ERROR_CODES = frozenset(
    {"response_cancel_not_active", "conversation_already_has_active_response"}
)
RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded"})
MODEL_ERROR_CODES = frozenset({"model_not_found", "invalid_model"})
BETA_SHAPE_CLOSE_CODE = 4000


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(10)


# json.dumps with arguments builds a JSONEncoder per call (a microsecond of the ~5 an audio
# append costs, 50 times a second); the output is the same.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(event: dict[str, Any]) -> str:
    """One client event as the text of one WebSocket text frame."""
    return _ENCODER.encode(event)


# ---------------------------------------------------------------------------------------
# Connecting


def connect_request(
    server: ServerSettings, mode: str, api_key: str
) -> tuple[str, dict[str, str]]:
    """The URL and headers for one handshake; the key only ever lives in the headers."""
    parts = urlsplit(server.url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("model", "intent")]
    if mode == "transcribe" and server.dialect == "openai":
        query.append(("intent", "transcription"))
    else:
        query.append(("model", server.model))
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
    headers = dict(server.headers)
    if server.dialect == "azure":
        headers["api-key"] = api_key
    else:
        headers["Authorization"] = f"Bearer {api_key}"
    return url, headers


# ---------------------------------------------------------------------------------------
# Client events


def session_config(session: SessionSettings) -> dict[str, Any]:
    """The GA `session` object for our settings; sent in full on every new connection."""
    turn: dict[str, Any] | None
    if session.turn_detection == "server_vad":
        turn = {
            "type": "server_vad",
            "threshold": session.vad_threshold,
            "prefix_padding_ms": session.prefix_padding_ms,
            "silence_duration_ms": session.silence_duration_ms,
        }
    elif session.turn_detection == "semantic_vad":
        turn = {"type": "semantic_vad", "eagerness": session.eagerness}
    else:
        turn = None
    transcription: dict[str, Any] = {"model": session.transcription_model}
    if session.language:
        if session.transcription_model in MULTI_LANGUAGE_TRANSCRIPTION:
            transcription["languages"] = [session.language]
        else:
            transcription["language"] = session.language
    audio_in: dict[str, Any] = {
        "format": audio_format(session.input_format),
        "noise_reduction": (
            None if session.noise_reduction == "none" else {"type": session.noise_reduction}
        ),
        "transcription": transcription,
        "turn_detection": turn,
    }
    if session.mode == "transcribe":
        return {"type": "transcription", "audio": {"input": audio_in}}
    return {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": session.instructions,
        "audio": {
            "input": audio_in,
            "output": {"format": audio_format(session.output_format),
                       "voice": session.voice},
        },
    }


def audio_format(fmt: str) -> dict[str, Any]:
    """The GA format object: audio/pcm names its (only) rate, G.711 has no rate field."""
    if fmt == "pcm":
        return {"type": "audio/pcm", "rate": INPUT_RATE}
    return {"type": FORMAT_TYPES[fmt]}


def session_update(session: SessionSettings) -> dict[str, Any]:
    return {"type": "session.update", "event_id": new_event_id(),
            "session": session_config(session)}


def session_type(session: SessionSettings) -> str:
    return "transcription" if session.mode == "transcribe" else "realtime"


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The part of `new` that differs from `old`, as a partial session object.

    The server changes only the fields present, so a reload sends just these. Sub-objects
    that the server replaces as a whole (format, turn_detection, transcription,
    noise_reduction, voice) are compared and sent whole. `type` is always carried: the
    server needs it to read the rest. Empty (besides `type`) when nothing changed.
    """
    changes: dict[str, Any] = {"type": new.get("type")}
    for key, value in new.items():
        if key == "type" or old.get(key) == value:
            continue
        if key == "audio" and isinstance(value, dict) and isinstance(old.get(key), dict):
            audio: dict[str, Any] = {}
            for side, block in value.items():
                old_block = old[key].get(side)
                if not isinstance(block, dict) or not isinstance(old_block, dict):
                    if block != old_block:
                        audio[side] = block
                    continue
                diff = {k: v for k, v in block.items() if old_block.get(k) != v}
                if diff:
                    audio[side] = diff
            if audio:
                changes["audio"] = audio
        else:
            changes[key] = value
    return changes


def without_voice(config: dict[str, Any]) -> dict[str, Any]:
    """`config` minus audio.output.voice (and the blocks that become empty)."""
    out = dict(config)
    audio = dict(out.get("audio") or {})
    output = dict(audio.get("output") or {})
    output.pop("voice", None)
    if output:
        audio["output"] = output
    else:
        audio.pop("output", None)
    if audio:
        out["audio"] = audio
    else:
        out.pop("audio", None)
    return out


def voice_of(config: dict[str, Any]) -> str | None:
    voice = ((config.get("audio") or {}).get("output") or {}).get("voice")
    return voice if isinstance(voice, str) else None


def probe_update(session: SessionSettings) -> dict[str, Any]:
    """A session.update that changes nothing: the server must still answer session.updated."""
    return {"type": "session.update", "event_id": new_event_id(),
            "session": {"type": session_type(session)}}


def audio_append(audio: bytes) -> dict[str, Any]:
    """`audio`: the bytes in the session's input format (PCM16, or G.711 codes)."""
    return {"type": "input_audio_buffer.append", "event_id": new_event_id(),
            "audio": base64.b64encode(audio).decode("ascii")}


# ---------------------------------------------------------------------------------------
# Server events


@dataclass(frozen=True)
class ServerEvent:
    type: str  # GA name, beta names normalised
    data: dict[str, Any]
    # The session's output format (session.output_format), given by the session when it
    # parses: what an audio delta's bytes are.
    audio_format: str = field(default="pcm", compare=False)
    # The decoded audio of a delta, once: every handler that wants it (the counters, the
    # speaker) shares one base64 decode per delta.
    _audio: bytes | None = field(default=None, compare=False, repr=False)
    # The base64 decode of data["delta"], when the parser already made it (`_loads`).
    _payload: bytes | None = field(default=None, compare=False, repr=False)

    def get_str(self, key: str) -> str:
        value = self.data.get(key)
        return value if isinstance(value, str) else ""


class MalformedEvent(ProtocolError):
    """A server frame edgevoice cannot use: counted, logged (rate-limited) and skipped.

    Never fatal: one bad frame does not prove the session dead (the stall check would).
    `kind` names the defect for the log's once-per-kind line.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


MAX_JSON_DEPTH = 64  # real events nest < 10 deep; json.loads recurses in C per level
MAX_JSON_VALUES = 100_000  # real events hold < 1000 values; 15 MiB of "[]," would be 400 MB

_NUMBER = (int, float)
# Fields edgevoice reads, by event type, and the types they must have when present.
_FIELDS: dict[str, tuple[tuple[str, tuple[type, ...]], ...]] = {
    "error": (("error", (dict,)),),
    "session.created": (("session", (dict,)),),
    "session.updated": (("session", (dict,)),),
    "response.output_audio.delta": (("delta", (str,)),),
    "response.output_audio_transcript.delta": (("delta", (str,)),),
    "response.output_text.delta": (("delta", (str,)),),
    "conversation.item.input_audio_transcription.delta": (("delta", (str,)),),
    "conversation.item.input_audio_transcription.completed": (("transcript", (str,)),),
    "response.output_audio_transcript.done": (("transcript", (str,)),),
    "response.output_text.done": (("text", (str,)),),
    "input_audio_buffer.speech_started": (("audio_start_ms", _NUMBER),),
    "input_audio_buffer.speech_stopped": (("audio_end_ms", _NUMBER),),
    "response.done": (("response", (dict,)),),
    "rate_limits.updated": (("rate_limits", (list,)),),
}
# A JSON string (escapes included), for counting structure outside strings.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def parse_server_event(text: str | bytes, audio_format: str = "pcm") -> ServerEvent:
    """One server event from the text of one frame; MalformedEvent for anything unusable.
    ``audio_format``: the session's output format, what an audio delta's bytes are.

    The structure is bounded before json.loads builds it: at most MAX_JSON_DEPTH levels
    (json.loads recurses per level) and MAX_JSON_VALUES values (each costs tens of bytes of
    objects per byte of text). Both checks are a few str.count passes for real events.
    """
    if isinstance(text, bytes):
        raise MalformedEvent("binary frame", f"server sent a binary frame ({len(text)} bytes); "
                                             "expected JSON text")
    skip_from, skip_to = _delta_string(text)
    _check_structure(text, skip_from, skip_to)
    try:
        data, payload = _loads(text, skip_from, skip_to)
    except RecursionError:
        raise MalformedEvent("too deep", f"server sent JSON nested too deeply "
                                         f"({len(text)} chars)") from None
    except ValueError as exc:
        raise MalformedEvent("not JSON", f"server sent malformed JSON ({len(text)} chars): "
                                         f"{_short(str(exc))}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise MalformedEvent("no type", f"server sent JSON without a 'type': {redact(text)[:80]!r}")
    raw_type: str = data["type"]
    event_type = BETA_EVENT_NAMES.get(raw_type, raw_type)
    for name, types in _FIELDS.get(event_type, ()):
        value = data.get(name)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise MalformedEvent(
                "bad field",
                f"{raw_type}: field {name!r} is {type(value).__name__}, expected "
                f"{' or '.join(t.__name__ for t in types)}")
    return ServerEvent(event_type, data, audio_format, _payload=payload)


# A "delta" string this long is an audio delta's base64 (transcript deltas are a few words).
_SPLICE_MIN_CHARS = 1024


def _loads(text: str, skip_from: int, skip_to: int) -> tuple[Any, bytes | None]:
    """json.loads(text), and the base64 decode of a long "delta" string if it made one.

    An audio delta is nearly all base64, which json.loads would scan for escapes and copy
    (half its time). When the text holds no backslash at all and ``"delta"`` only once (so
    that key is literal and unique), a valid base64 string there is plain JSON string
    content: the rest is parsed with the string emptied and the string put back. The
    result is json.loads' own, and an error is json.loads' own too (the whole text is
    parsed again for it); anything else goes to json.loads whole.
    """
    if skip_to - skip_from >= _SPLICE_MIN_CHARS and text.find("\\") < 0 \
            and text.count(_DELTA_WORD, 0, skip_from) + text.count(_DELTA_WORD, skip_to) == 1:
        body = text[skip_from:skip_to]
        try:
            payload = binascii.a2b_base64(body, strict_mode=True)
            data = json.loads(text[:skip_from] + text[skip_to:])
        except ValueError:  # not base64 (json.loads decides what it is), or not JSON
            return json.loads(text), None
        if isinstance(data, dict) and data.get("delta") == "":
            data["delta"] = body
            return data, payload
    return json.loads(text), None


def _check_structure(text: str, skip_from: int, skip_to: int) -> None:
    """MalformedEvent if `text` nests deeper than MAX_JSON_DEPTH or holds too many values.

    Counting the brackets and commas of the whole text over-counts (strings may hold them),
    so only when that count is over a limit are the strings cut out and the count redone;
    the depth is walked only when there are more opening brackets than the depth limit.
    The first count leaves out the ``delta`` string (`_delta_string`, from skip_from to
    skip_to): an audio delta's base64 is nearly all of its text, and counting it took a
    third of the parse. (A text that is not JSON anyway may then be refused by json.loads,
    as "not JSON", instead of here as "too deep".)
    """
    opens = _count_outside(text, "[", skip_from, skip_to) \
        + _count_outside(text, "{", skip_from, skip_to)
    values = opens + _count_outside(text, ",", skip_from, skip_to)
    if opens <= MAX_JSON_DEPTH and values <= MAX_JSON_VALUES:
        return
    bare = _JSON_STRING.sub("", text)
    opens = bare.count("[") + bare.count("{")
    values = opens + bare.count(",")
    if values > MAX_JSON_VALUES:
        raise MalformedEvent("too many values", f"server sent JSON with more than "
                                                f"{MAX_JSON_VALUES} values ({len(text)} chars)")
    if opens <= MAX_JSON_DEPTH:
        return
    depth = 0
    for match in _BRACKETS.finditer(bare):
        if match.group() in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise MalformedEvent("too deep", f"server sent JSON nested more than "
                                                 f"{MAX_JSON_DEPTH} levels deep "
                                                 f"({len(text)} chars)")
        else:
            depth -= 1


_DELTA_WORD = '"delta"'
_DELTA_KEY = _DELTA_WORD + ":"
_SPACES_QUOTE = re.compile(' *"')


def _delta_string(text: str) -> tuple[int, int]:
    """Where the characters of the first ``"delta":`` value string lie, or (0, 0).

    Skipping them when counting structure cannot hide any: if the parser is outside a
    string at the key, the quote after ``:`` opens the value string; if inside, the key's
    opening quote either closes that string (``delta`` is then a bare word, an error before
    the skipped part) or is escaped (its closing quote then ends the string and the quote
    after ``:`` opens the next one). Up to the next ``"`` the parser is inside a string, or
    has failed before it. Only spaces are allowed after the colon; anything else is counted.
    """
    key = text.find(_DELTA_KEY)
    if key < 0:
        return 0, 0
    opening = _SPACES_QUOTE.match(text, key + len(_DELTA_KEY))  # in C: 16 MiB of spaces
    if opening is None:
        return 0, 0
    end = text.find('"', opening.end())
    return opening.end(), end if end >= 0 else len(text)


def _count_outside(text: str, char: str, skip_from: int, skip_to: int) -> int:
    return text.count(char, 0, skip_from) + text.count(char, skip_to)


def _short(text: str, limit: int = 120) -> str:
    text = redact(text)  # before the cut: a cut inside a key must not leave its prefix
    return text if len(text) <= limit else text[:limit] + "..."


def decode_audio_delta(event: ServerEvent) -> bytes:
    """The PCM16 of an audio delta at `delta_rate(event)` (G.711 expanded), decoded once
    per event; MalformedEvent if not base64."""
    if event._audio is not None:
        return event._audio
    pcm = _decode_delta(event)
    object.__setattr__(event, "_audio", pcm)  # frozen: the cache is not part of its value
    return pcm


def delta_rate(event: ServerEvent) -> int:
    """The sample rate of `decode_audio_delta(event)`."""
    return g711.wire_rate(event.audio_format)


def delta_pcm24k_bytes(event: ServerEvent) -> int:
    """The length of a delta's audio as 24 kHz PCM16 bytes (counters count in those)."""
    return len(decode_audio_delta(event)) * OUTPUT_RATE // delta_rate(event)


def _decode_delta(event: ServerEvent) -> bytes:
    data = event._payload
    if data is None:
        data = _decode_base64(event)
    if event.audio_format != "pcm":
        return g711.decode(event.audio_format, data).astype("<i2", copy=False).tobytes()
    return data[:-1] if len(data) % 2 else data  # whole samples; no copy in the usual case


def _decode_base64(event: ServerEvent) -> bytes:
    try:
        # What b64decode(validate=True) calls on 3.11, without its copy of the text to bytes.
        data = binascii.a2b_base64(event.get_str("delta"), strict_mode=True)
    except ValueError as exc:  # binascii.Error
        raise MalformedEvent("bad base64", f"{event.type}: delta is not base64: {exc}") from None
    return data


@dataclass(frozen=True)
class ServerError:
    type: str
    code: str
    message: str
    param: str
    event_id: str  # the client event it refers to, when the server says

    @classmethod
    def from_event(cls, event: ServerEvent) -> ServerError:
        err = event.data.get("error")
        if not isinstance(err, dict):
            err = {}

        def text(key: str) -> str:
            value = err.get(key)
            return str(value) if value is not None else ""

        return cls(text("type"), text("code"), text("message"), text("param"), text("event_id"))


class ErrorClass(enum.Enum):
    CREDENTIALS = "credentials"  # exit 77
    CONFIG = "config"  # exit 78
    MODEL = "model"  # exit 78 on a first connection, else a long backoff
    RATE_LIMITED = "rate_limited"
    SESSION_EXPIRED = "session_expired"
    BENIGN = "benign"
    OTHER = "other"  # logged, session goes on


def classify_error(error: ServerError) -> ErrorClass:
    if error.code in FATAL_CREDENTIAL_CODES:
        return ErrorClass.CREDENTIALS
    if error.code == "session_expired":
        return ErrorClass.SESSION_EXPIRED
    if error.code in RATE_LIMIT_CODES:
        return ErrorClass.RATE_LIMITED
    if error.code in BENIGN_ERROR_CODES:
        return ErrorClass.BENIGN
    if error.code == "beta_api_shape_disabled":
        return ErrorClass.CONFIG
    if error.code in MODEL_ERROR_CODES:
        return ErrorClass.MODEL
    return ErrorClass.OTHER


def exception_for_error(error: ServerError, pending_update_id: str = "") -> EdgeVoiceError | None:
    """What a server `error` means for the session, in one place for configuring and streaming.

    None: the session goes on (the error is logged and counted by the dispatch handlers).
    `pending_update_id` is the session.update being waited for while configuring: an
    invalid-request error that names it (or names no event at all) is a rejection of our
    session shape; a server_error without an id is the server's trouble, not our settings'.
    """
    klass = classify_error(error)
    message = error.message or error.code or error.type or "no message"
    if klass is ErrorClass.CREDENTIALS:
        return AuthError(f"server rejected the credentials: {error.code}: {message}")
    if klass is ErrorClass.CONFIG:
        return ConfigError(rejection_text(error))
    if klass is ErrorClass.MODEL:
        setting = ("session.transcription_model" if "transcription" in error.param
                   else "server.model")
        return ModelRejected(f"{setting}: the server rejected the model: {message} "
                             f"({error.code})")
    if klass is ErrorClass.SESSION_EXPIRED:
        return ConnectionLost(f"session expired: {message}", close_code=1001)
    if klass is ErrorClass.RATE_LIMITED:
        return ConnectionLost(f"rate limited: {message}")
    if klass is ErrorClass.OTHER and pending_update_id and (
            error.event_id == pending_update_id
            or (not error.event_id and error.type == "invalid_request_error")):
        return SessionConfigRejected(rejection_text(error))
    return None


def rejection_text(error: ServerError) -> str:
    field = error.param or "session"
    return (f"{field}: server rejected session.update: {error.message or error.code} "
            f"({error.code or error.type})")


def check_effective_input(session: dict[str, Any], input_format: str = "pcm",
                          output_format: str | None = None) -> None:
    """Refuse to stream unless the server reads our bytes, and writes its answers, in the
    formats we asked for (`session.input_format`, `session.output_format`).

    A mismatch would not fail loudly: the server would transcribe noise, or drop us after
    the first packet; answers in another format would play as noise. Beta-era proxies
    answer with `input_audio_format: pcm16` (24 kHz) or `g711_ulaw` / `g711_alaw`.
    `output_format` None: no output to check (transcription sessions).
    """
    audio = session.get("audio")
    if isinstance(audio, dict):
        _check_format_block(audio, "input", input_format, required=True)
        if output_format is not None:
            _check_format_block(audio, "output", output_format,
                                required=output_format != "pcm")
        return
    for side, wanted in (("input", input_format), ("output", output_format)):
        legacy = session.get(f"{side}_audio_format")
        if wanted is not None and legacy not in (None, LEGACY_FORMATS[wanted]):
            raise ConfigError(
                f"session.{side}_audio_format: server uses {legacy!r}, edgevoice "
                f"{'sends' if side == 'input' else 'expects'} {LEGACY_FORMATS[wanted]}"
            )


def check_effective_formats(session: dict[str, Any], settings: SessionSettings) -> None:
    """`check_effective_input` for what `settings` asked (no output when transcribing)."""
    output = None if settings.mode == "transcribe" else settings.output_format
    check_effective_input(session, settings.input_format, output)


def _check_format_block(audio: dict[str, Any], side: str, wanted: str, *,
                        required: bool) -> None:
    block = audio.get(side)
    fmt = block.get("format") if isinstance(block, dict) else None
    setting = f"session.{side}_format"
    verb = "sends" if side == "input" else "expects"
    if not isinstance(fmt, dict):
        if not required:
            return
        raise ConfigError(
            f"server session.updated lacks session.audio.{side}.format; cannot confirm "
            f"the {side} format ({setting}: {wanted})"
        )
    want_type = FORMAT_TYPES[wanted]
    if fmt.get("type") != want_type:
        raise ConfigError(
            f"session.audio.{side}.format.type: server uses {fmt.get('type')!r}, "
            f"edgevoice {verb} {want_type!r} ({setting}: {wanted})"
        )
    if wanted == "pcm":
        rate = fmt.get("rate", INPUT_RATE)
        if rate != INPUT_RATE:
            raise ConfigError(
                f"session.audio.{side}.format.rate: server uses {rate!r}, edgevoice "
                f"{verb} {INPUT_RATE}"
            )


def describe_close(code: int | None, reason: str) -> str:
    names = {1000: "normal", 1001: "going away", 1005: "no status", 1006: "abnormal",
             1011: "server error", 1012: "service restart", 1013: "try again later",
             4000: "beta API shape disabled"}
    if code is None:
        return "connection closed without a close frame"
    label = names.get(code, "")
    text = f"close {code}" + (f" ({label})" if label else "")
    return text + (f": {reason}" if reason else "")
