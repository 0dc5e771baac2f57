"""Session configuration of the GA Realtime API: models, defaults, validation, merge.

``validate_session_update`` checks a ``session.update`` body the way the real service does
and raises :class:`ApiError` (sent back as an ``error`` event; the old configuration stays);
``merge_session`` applies a validated update (only the fields present change).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Collection
from typing import Any

from .vad import SEMANTIC_SILENCE_MS

JsonObj = dict[str, Any]

# The built-in voices of the GA API; the real service rejects any other name.
VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)
FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")

# openai-python types/realtime/realtime_session_create_request.py: RealtimeSessionCreateRequest
REALTIME_MODELS = frozenset(
    {
        "gpt-realtime",
        "gpt-realtime-1.5",
        "gpt-realtime-2",
        "gpt-realtime-2.1",
        "gpt-realtime-2.1-mini",
        "gpt-realtime-2025-08-28",
        "gpt-4o-realtime-preview",
        "gpt-4o-realtime-preview-2024-10-01",
        "gpt-4o-realtime-preview-2024-12-17",
        "gpt-4o-realtime-preview-2025-06-03",
        "gpt-4o-mini-realtime-preview",
        "gpt-4o-mini-realtime-preview-2024-12-17",
        "gpt-realtime-mini",
        "gpt-realtime-mini-2025-10-06",
        "gpt-realtime-mini-2025-12-15",
        "gpt-audio-1.5",
        "gpt-audio-mini",
        "gpt-audio-mini-2025-10-06",
        "gpt-audio-mini-2025-12-15",
    }
)
# openai-python types/realtime/audio_transcription.py (AudioTranscription.model)
TRANSCRIPTION_MODELS = frozenset(
    {
        "whisper-1",
        "gpt-transcribe",
        "gpt-live-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-mini-transcribe-2025-12-15",
        "gpt-4o-transcribe",
        "gpt-4o-transcribe-diarize",
        "gpt-realtime-whisper",
    }
)
DEFAULT_MODEL = "gpt-realtime-2.1"
DEFAULT_TRANSCRIPTION_MODEL = "gpt-live-transcribe"
# `languages` and `keywords` are supported by these only; `delay` by WHISPER only, which
# takes no `prompt` and, in transcription sessions, needs turn_detection null.
MULTI_LANGUAGE_MODELS = frozenset({"gpt-transcribe", "gpt-live-transcribe"})
WHISPER = "gpt-realtime-whisper"
DELAYS = ("minimal", "low", "medium", "high", "xhigh")
_ISO_639_1 = re.compile(r"[a-z]{2}")


class ApiError(Exception):
    """An ``error`` event to send back; the session stays open."""

    def __init__(
        self,
        code: str,
        message: str,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.error_type = error_type


def model_not_found_message(model: str) -> str:
    return f"The model '{model}' does not exist or you do not have access to it."


def model_not_found(model: str, param: str | None = None) -> ApiError:
    """What the real service answers for an unknown or retired model."""
    return ApiError("model_not_found", model_not_found_message(model), param)


def default_transcription(model: str = DEFAULT_TRANSCRIPTION_MODEL) -> JsonObj:
    """The effective transcription object for a model when the client set no other field."""
    out: JsonObj = {"model": model, "language": None}
    if model != WHISPER:  # gpt-realtime-whisper takes no prompt
        out["prompt"] = ""
    return out


def default_turn_detection(kind: str) -> JsonObj:
    if kind == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": "auto",
            "create_response": True,
            "interrupt_response": True,
        }
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }


def default_session(kind: str, session_id: str, model: str | None, expires_at: int) -> JsonObj:
    """The session object sent in ``session.created``."""
    audio_input: JsonObj = {
        "format": {"type": "audio/pcm", "rate": 24000},
        "noise_reduction": None,
        "transcription": None,
        "turn_detection": default_turn_detection("server_vad"),
    }
    if kind == "transcription":
        audio_input["transcription"] = default_transcription()
        return {
            "object": "realtime.transcription_session",
            "id": session_id,
            "type": "transcription",
            "expires_at": expires_at,
            "include": None,
            "audio": {"input": audio_input},
        }
    return {
        "object": "realtime.session",
        "id": session_id,
        "type": "realtime",
        "model": model or DEFAULT_MODEL,
        "output_modalities": ["audio"],
        "instructions": "You are the edgevoice devserver. You echo what you hear.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "truncation": "auto",
        "expires_at": expires_at,
        "include": None,
        "audio": {
            "input": audio_input,
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "marin",
                "speed": 1.0,
            },
        },
    }


_REALTIME_FIELDS = {
    "type",
    "model",
    "output_modalities",
    "instructions",
    "audio",
    "include",
    "tracing",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "prompt",
    "truncation",
}
_TRANSCRIPTION_FIELDS = {"type", "audio", "include"}
_SERVER_VAD_FIELDS = {
    "type",
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "idle_timeout_ms",
    "create_response",
    "interrupt_response",
}
_SEMANTIC_VAD_FIELDS = {"type", "eagerness", "create_response", "interrupt_response"}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def invalid_type(path: str, expected: str, value: Any) -> ApiError:
    return ApiError(
        "invalid_type",
        f"Invalid type for '{path}': expected {expected}, but got {_type_name(value)} instead.",
        path,
    )


def _invalid_value(path: str, value: Any, supported: list[Any] | None = None) -> ApiError:
    shown = f"'{value}'" if isinstance(value, str) else json.dumps(value)
    msg = f"Invalid value: {shown}."
    if supported:
        names = [f"'{s}'" if isinstance(s, str) else str(s) for s in supported]
        msg += " Supported values are: " + ", ".join(names) + "."
    return ApiError("invalid_value", msg, path)


def unknown_param(path: str) -> ApiError:
    return ApiError("unknown_parameter", f"Unknown parameter: '{path}'.", path)


def missing_param(path: str) -> ApiError:
    return ApiError("missing_required_parameter", f"Missing required parameter: '{path}'.", path)


def _obj(value: Any, path: str, allowed: set[str]) -> JsonObj:
    if not isinstance(value, dict):
        raise invalid_type(path, "an object", value)
    for key in value:
        if key not in allowed:
            raise unknown_param(f"{path}.{key}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(value: Any, path: str, lo: int = 0, hi: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid_type(path, "an integer", value)
    if value < lo or (hi is not None and value > hi):
        raise ApiError(
            "invalid_value",
            f"Invalid '{path}': integer {value} is out of range [{lo}, {hi if hi else 'inf'}].",
            path,
        )


def _check_bool(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise invalid_type(path, "a boolean", value)


def _check_str(value: Any, path: str, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str):
        raise invalid_type(path, "a string", value)


def _check_format(value: Any, path: str) -> None:
    fmt = _obj(value, path, {"type", "rate"})
    if "type" not in fmt:
        raise missing_param(f"{path}.type")
    ftype = fmt["type"]
    if not isinstance(ftype, str):
        raise invalid_type(f"{path}.type", "a string", ftype)
    if ftype not in FORMATS:
        raise _invalid_value(f"{path}.type", ftype, list(FORMATS))
    if "rate" in fmt:
        if ftype != "audio/pcm":
            raise unknown_param(f"{path}.rate")
        rate = fmt["rate"]
        if not isinstance(rate, int) or isinstance(rate, bool):
            raise invalid_type(f"{path}.rate", "an integer", rate)
        if rate != 24000:
            raise _invalid_value(f"{path}.rate", rate, [24000])


def _check_turn_detection(value: Any, path: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid_type(path, "an object", value)
    if "type" not in value:
        raise missing_param(f"{path}.type")
    kind = value["type"]
    if kind == "server_vad":
        td = _obj(value, path, _SERVER_VAD_FIELDS)
        if "threshold" in td:
            thr = td["threshold"]
            if not _is_number(thr):
                raise invalid_type(f"{path}.threshold", "a decimal", thr)
            if not 0.0 <= float(thr) <= 1.0:
                raise ApiError(
                    "invalid_value",
                    f"Invalid '{path}.threshold': decimal above maximum value. "
                    "Expected a value between 0.0 and 1.0.",
                    f"{path}.threshold",
                )
        for key in ("prefix_padding_ms", "silence_duration_ms"):
            if key in td:
                _check_int(td[key], f"{path}.{key}", 0, 10_000)
        if td.get("idle_timeout_ms") is not None:
            _check_int(td["idle_timeout_ms"], f"{path}.idle_timeout_ms", 0)
    elif kind == "semantic_vad":
        td = _obj(value, path, _SEMANTIC_VAD_FIELDS)
        if "eagerness" in td:
            eag = td["eagerness"]
            if eag not in SEMANTIC_SILENCE_MS:
                raise _invalid_value(f"{path}.eagerness", eag, ["low", "medium", "high", "auto"])
    else:
        raise _invalid_value(f"{path}.type", kind, ["server_vad", "semantic_vad"])
    for key in ("create_response", "interrupt_response"):
        if key in value:
            _check_bool(value[key], f"{path}.{key}")


def _check_audio_input(value: Any, path: str, retired: Collection[str]) -> None:
    inp = _obj(value, path, {"format", "noise_reduction", "transcription", "turn_detection"})
    if "format" in inp:
        _check_format(inp["format"], f"{path}.format")
    if inp.get("noise_reduction") is not None:
        nr = _obj(inp["noise_reduction"], f"{path}.noise_reduction", {"type"})
        if nr.get("type") not in ("near_field", "far_field"):
            raise _invalid_value(
                f"{path}.noise_reduction.type", nr.get("type"), ["near_field", "far_field"]
            )
    if inp.get("transcription") is not None:
        _check_transcription(inp["transcription"], f"{path}.transcription", retired)
    if "turn_detection" in inp:
        _check_turn_detection(inp["turn_detection"], f"{path}.turn_detection")


def _unsupported(path: str, model: str) -> ApiError:
    return ApiError(
        "unsupported_parameter",
        f"Unsupported parameter: '{path}' is not supported with the model '{model}'.",
        path,
    )


def _check_str_list(value: Any, path: str) -> list[str]:
    if not isinstance(value, list):
        raise invalid_type(path, "an array", value)
    for i, item in enumerate(value):
        _check_str(item, f"{path}[{i}]")
    return value


def _check_transcription(value: Any, path: str, retired: Collection[str]) -> None:
    tr = _obj(value, path, {"model", "language", "prompt", "languages", "keywords", "delay"})
    model = tr.get("model", DEFAULT_TRANSCRIPTION_MODEL)
    if "model" in tr:
        _check_str(model, f"{path}.model")
        if model in retired:
            raise model_not_found(model, f"{path}.model")
    for key in ("language", "prompt"):
        if key in tr:
            _check_str(tr[key], f"{path}.{key}", nullable=True)
    if tr.get("languages") is not None:
        for i, code in enumerate(_check_str_list(tr["languages"], f"{path}.languages")):
            if not _ISO_639_1.fullmatch(code):
                raise ApiError(
                    "invalid_value",
                    f"Invalid value: '{code}'. Expected an ISO-639-1 language code (e.g. 'en').",
                    f"{path}.languages[{i}]",
                )
        if model not in MULTI_LANGUAGE_MODELS:
            raise _unsupported(f"{path}.languages", model)
    if tr.get("keywords") is not None:
        _check_str_list(tr["keywords"], f"{path}.keywords")
        if model not in MULTI_LANGUAGE_MODELS:
            raise _unsupported(f"{path}.keywords", model)
    if tr.get("delay") is not None:
        delay = tr["delay"]
        _check_str(delay, f"{path}.delay")
        if delay not in DELAYS:
            raise _invalid_value(f"{path}.delay", delay, list(DELAYS))
        if model != WHISPER:
            raise _unsupported(f"{path}.delay", model)
    if model == WHISPER and tr.get("prompt"):
        raise _unsupported(f"{path}.prompt", model)


def _check_whisper_turns(kind: str, session: JsonObj, current: JsonObj) -> None:
    """gpt-realtime-whisper transcription sessions need turn_detection null (no VAD)."""
    if kind != "transcription":
        return
    inp = session.get("audio", {}).get("input", {})
    cur = current.get("audio", {}).get("input", {})
    tr = inp["transcription"] if "transcription" in inp else cur.get("transcription")
    td = inp["turn_detection"] if "turn_detection" in inp else cur.get("turn_detection")
    if not isinstance(tr, dict) or td is None:
        return
    if tr.get("model", DEFAULT_TRANSCRIPTION_MODEL) != WHISPER:
        return
    path = "session.audio.input"
    raise ApiError(
        "invalid_value",
        f"Invalid value: '{WHISPER}' does not support turn detection; "
        f"set '{path}.turn_detection' to null.",
        f"{path}.turn_detection" if "turn_detection" in inp else f"{path}.transcription.model",
    )


def _check_audio_output(value: Any, path: str) -> None:
    out = _obj(value, path, {"format", "voice", "speed"})
    if "format" in out:
        _check_format(out["format"], f"{path}.format")
    if "voice" in out:
        voice = out["voice"]
        if isinstance(voice, dict):
            _obj(voice, f"{path}.voice", {"id"})
            _check_str(voice.get("id"), f"{path}.voice.id")
        else:
            _check_str(voice, f"{path}.voice")
            if voice not in VOICES:
                raise _invalid_value(f"{path}.voice", voice, sorted(VOICES))
    if "speed" in out:
        speed = out["speed"]
        if not _is_number(speed):
            raise invalid_type(f"{path}.speed", "a decimal", speed)
        if not 0.25 <= float(speed) <= 1.5:
            raise ApiError(
                "invalid_value",
                f"Invalid '{path}.speed': expected a value between 0.25 and 1.5.",
                f"{path}.speed",
            )


def validate_session_update(
    kind: str, session: Any, current: JsonObj, retired: Collection[str] = ()
) -> JsonObj:
    """Check a ``session.update`` body against the GA schema; returns it or raises ApiError.

    ``current`` is the effective configuration (for checks that span fields); a
    transcription model in ``retired`` is answered with ``model_not_found``.
    """
    if not isinstance(session, dict):
        raise invalid_type("session", "an object", session)
    allowed = _REALTIME_FIELDS if kind == "realtime" else _TRANSCRIPTION_FIELDS
    # Type first: a beta-shape body has no "type" and the real service says so.
    if "type" not in session:
        raise missing_param("session.type")
    stype = session["type"]
    if stype not in ("realtime", "transcription"):
        raise _invalid_value("session.type", stype, ["realtime", "transcription"])
    if stype != kind:
        raise ApiError(
            "invalid_value",
            f"Invalid value: '{stype}'. This is a '{kind}' session; "
            "the session type cannot be changed.",
            "session.type",
        )
    for key in session:
        if key not in allowed:
            raise unknown_param(f"session.{key}")
    if "audio" in session:
        audio_keys = {"input", "output"} if kind == "realtime" else {"input"}
        audio = _obj(session["audio"], "session.audio", audio_keys)
        if "input" in audio:
            _check_audio_input(audio["input"], "session.audio.input", retired)
        if "output" in audio:
            _check_audio_output(audio["output"], "session.audio.output")
    if "output_modalities" in session:
        mods = session["output_modalities"]
        if not isinstance(mods, list):
            raise invalid_type("session.output_modalities", "an array", mods)
        if len(mods) != 1 or mods[0] not in ("audio", "text"):
            raise _invalid_value("session.output_modalities", mods, [["audio"], ["text"]])
    for key in ("instructions", "model"):
        if key in session:
            _check_str(session[key], f"session.{key}")
    if "include" in session and session["include"] is not None:
        inc = session["include"]
        if not isinstance(inc, list):
            raise invalid_type("session.include", "an array", inc)
        for i, item in enumerate(inc):
            if item != "item.input_audio_transcription.logprobs":
                raise _invalid_value(
                    f"session.include[{i}]", item, ["item.input_audio_transcription.logprobs"]
                )
    if "tools" in session and not isinstance(session["tools"], list):
        raise invalid_type("session.tools", "an array", session["tools"])
    if "tool_choice" in session:
        tc = session["tool_choice"]
        if isinstance(tc, str):
            if tc not in ("auto", "none", "required"):
                raise _invalid_value("session.tool_choice", tc, ["auto", "none", "required"])
        elif not isinstance(tc, dict):
            raise invalid_type("session.tool_choice", "a string or an object", tc)
    if "max_output_tokens" in session:
        mot = session["max_output_tokens"]
        if mot != "inf":
            _check_int(mot, "session.max_output_tokens", 1, 4096)
    if "truncation" in session:
        trunc = session["truncation"]
        if isinstance(trunc, str):
            if trunc not in ("auto", "disabled"):
                raise _invalid_value("session.truncation", trunc, ["auto", "disabled"])
        elif not isinstance(trunc, dict):
            raise invalid_type("session.truncation", "a string or an object", trunc)
    if "tracing" in session:
        tracing = session["tracing"]
        if not (tracing is None or tracing == "auto" or isinstance(tracing, dict)):
            raise _invalid_value("session.tracing", tracing, ["auto"])
    if "prompt" in session and not (
        session["prompt"] is None or isinstance(session["prompt"], dict)
    ):
        raise invalid_type("session.prompt", "an object", session["prompt"])
    _check_whisper_turns(kind, session, current)
    return session


def _normalize_format(fmt: JsonObj) -> JsonObj:
    if fmt["type"] == "audio/pcm":
        return {"type": "audio/pcm", "rate": 24000}
    return {"type": fmt["type"]}


def merge_session(current: JsonObj, update: JsonObj) -> JsonObj:
    """Apply a validated update: only the fields present change."""
    new = copy.deepcopy(current)
    for key, value in update.items():
        if key != "audio":
            new[key] = copy.deepcopy(value)
            continue
        for side, fields in value.items():
            target = new["audio"].setdefault(side, {})
            for name, fval in fields.items():
                if name == "format":
                    target["format"] = _normalize_format(fval)
                elif name == "turn_detection" and fval is not None:
                    cur = target.get("turn_detection")
                    if not isinstance(cur, dict) or cur.get("type") != fval["type"]:
                        cur = default_turn_detection(fval["type"])
                    target["turn_detection"] = {**cur, **copy.deepcopy(fval)}
                elif name == "transcription" and fval is not None:
                    model = fval.get("model", DEFAULT_TRANSCRIPTION_MODEL)
                    target["transcription"] = {
                        **default_transcription(model),
                        **copy.deepcopy(fval),
                    }
                else:
                    target[name] = copy.deepcopy(fval)
    return new
