"""A local server that speaks the GA Realtime WebSocket protocol (see PROTOCOL.md).

It validates ``session.update`` the way the real service does, runs an energy VAD over the
appended audio, echoes each committed user turn back as the "assistant" answer, expires
sessions, and injects transport faults on command. Tests run it in-process
(:class:`DevServer` runs its own event loop in a daemon thread); ``edgevoice devserver``
runs it in the foreground with an HTTP control endpoint for out-of-process tests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import dataclasses
import email.utils
import hmac
import http
import json
import logging
import secrets
import threading
import time
import wave
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ProtocolError
from websockets.http11 import Request, Response

from .faults import FaultConnection
from .vad import (
    SEMANTIC_SILENCE_MS,
    EnergyVad,
    bytes_per_sample,
    convert,
    decode,
    format_rate,
    threshold_to_dbfs,
)

log = logging.getLogger("edgevoice.devserver")

# The built-in voices of the GA API; the real service rejects any other name.
VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)
ws_log = logging.getLogger("edgevoice.devserver.websockets")

T = TypeVar("T")

REALTIME_PATHS = ("/v1/realtime", "/openai/v1/realtime")
BETA_CLOSE_CODE = 4000
BETA_CLOSE_REASON = "invalid_request_error.beta_api_shape_disabled"
EXPIRED_MESSAGE = "Your session hit the maximum duration of 60 minutes."
DEFAULT_MODEL = "gpt-realtime"
MIN_COMMIT_MS = 100
MAX_BUFFER_S = 600  # the input buffer keeps at most this much uncommitted audio
RESPONSE_CHUNK_MS = 100
RESPONSE_SPEED = 4.0  # echoed audio is streamed this many times faster than real time
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # one append may carry 15 MiB of audio (base64: 20 MiB)
FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")
NO_FRAME_CODES = (1005, 1006, 1015)  # reserved: observable only as "no close frame"

JsonObj = dict[str, Any]


def new_id(prefix: str) -> str:
    """An id in the style of the real service (``event_...``, ``sess_...``, ``item_...``)."""
    return f"{prefix}_{secrets.token_hex(10)}"


# ---------------------------------------------------------------------------------------
# Observations
# ---------------------------------------------------------------------------------------


@dataclass
class SessionRecord:
    """What the server saw on one WebSocket connection (copies are handed out)."""

    id: str
    type: str  # "realtime" or "transcription"
    model: str | None
    path: str  # request path including the query
    headers: dict[str, str]  # request headers, credentials redacted, names lower-cased
    opened_at: float  # time.monotonic()
    closed_at: float | None = None
    updated_acked_at: float | None = None  # monotonic time the first session.updated was sent
    n_updates: int = 0  # session.updated events sent
    first_append_at: float | None = None
    n_appends: int = 0
    binary_frames: int = 0
    close_code: int | None = None  # code the server sent when it closed first, else received
    close_reason: str | None = None
    closed_by: str | None = None  # "server", "client" or "abort"
    expired: bool = False
    frozen: bool = False
    client_events: list[JsonObj] = field(default_factory=list)  # "audio" -> decoded length
    server_events: list[JsonObj] = field(default_factory=list)  # audio deltas -> length
    dropped_events: int = 0  # events not sent because the session was frozen/black-holed
    audio_bytes: int = 0  # bytes of audio received
    audio_chunks: tuple[bytes, ...] = field(default=(), repr=False)
    wav_path: Path | None = None

    @property
    def audio(self) -> bytes:
        """Audio received, as sent (PCM16 24 kHz mono unless G.711 was configured)."""
        return b"".join(self.audio_chunks)


@dataclass
class _Counters:
    sessions: int = 0
    appends: int = 0
    audio_bytes: int = 0
    binary_frames: int = 0
    handshakes_rejected: int = 0
    handshakes_unauthorized: int = 0


# ---------------------------------------------------------------------------------------
# Session configuration: defaults, validation (GA shape), merge
# ---------------------------------------------------------------------------------------


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
        audio_input["transcription"] = {
            "model": "gpt-4o-mini-transcribe",
            "language": None,
            "prompt": "",
        }
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


def _invalid_type(path: str, expected: str, value: Any) -> ApiError:
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


def _unknown(path: str) -> ApiError:
    return ApiError("unknown_parameter", f"Unknown parameter: '{path}'.", path)


def _missing(path: str) -> ApiError:
    return ApiError("missing_required_parameter", f"Missing required parameter: '{path}'.", path)


def _obj(value: Any, path: str, allowed: set[str]) -> JsonObj:
    if not isinstance(value, dict):
        raise _invalid_type(path, "an object", value)
    for key in value:
        if key not in allowed:
            raise _unknown(f"{path}.{key}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(value: Any, path: str, lo: int = 0, hi: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid_type(path, "an integer", value)
    if value < lo or (hi is not None and value > hi):
        raise ApiError(
            "invalid_value",
            f"Invalid '{path}': integer {value} is out of range [{lo}, {hi if hi else 'inf'}].",
            path,
        )


def _check_bool(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise _invalid_type(path, "a boolean", value)


def _check_str(value: Any, path: str, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str):
        raise _invalid_type(path, "a string", value)


def _check_format(value: Any, path: str) -> None:
    fmt = _obj(value, path, {"type", "rate"})
    if "type" not in fmt:
        raise _missing(f"{path}.type")
    ftype = fmt["type"]
    if not isinstance(ftype, str):
        raise _invalid_type(f"{path}.type", "a string", ftype)
    if ftype not in FORMATS:
        raise _invalid_value(f"{path}.type", ftype, list(FORMATS))
    if "rate" in fmt:
        if ftype != "audio/pcm":
            raise _unknown(f"{path}.rate")
        rate = fmt["rate"]
        if not isinstance(rate, int) or isinstance(rate, bool):
            raise _invalid_type(f"{path}.rate", "an integer", rate)
        if rate != 24000:
            raise _invalid_value(f"{path}.rate", rate, [24000])


def _check_turn_detection(value: Any, path: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _invalid_type(path, "an object", value)
    if "type" not in value:
        raise _missing(f"{path}.type")
    kind = value["type"]
    if kind == "server_vad":
        td = _obj(value, path, _SERVER_VAD_FIELDS)
        if "threshold" in td:
            thr = td["threshold"]
            if not _is_number(thr):
                raise _invalid_type(f"{path}.threshold", "a decimal", thr)
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


def _check_audio_input(value: Any, path: str) -> None:
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
        tr = _obj(inp["transcription"], f"{path}.transcription", {"model", "language", "prompt"})
        if "model" in tr:
            _check_str(tr["model"], f"{path}.transcription.model")
        if "language" in tr:
            _check_str(tr["language"], f"{path}.transcription.language", nullable=True)
        if "prompt" in tr:
            _check_str(tr["prompt"], f"{path}.transcription.prompt", nullable=True)
    if "turn_detection" in inp:
        _check_turn_detection(inp["turn_detection"], f"{path}.turn_detection")


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
            raise _invalid_type(f"{path}.speed", "a decimal", speed)
        if not 0.25 <= float(speed) <= 1.5:
            raise ApiError(
                "invalid_value",
                f"Invalid '{path}.speed': expected a value between 0.25 and 1.5.",
                f"{path}.speed",
            )


def validate_session_update(kind: str, session: Any, current: JsonObj) -> JsonObj:
    """Check a ``session.update`` body against the GA schema; returns it or raises ApiError."""
    if not isinstance(session, dict):
        raise _invalid_type("session", "an object", session)
    allowed = _REALTIME_FIELDS if kind == "realtime" else _TRANSCRIPTION_FIELDS
    # Type first: a beta-shape body has no "type" and the real service says so.
    if "type" not in session:
        raise _missing("session.type")
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
            raise _unknown(f"session.{key}")
    if "audio" in session:
        audio_keys = {"input", "output"} if kind == "realtime" else {"input"}
        audio = _obj(session["audio"], "session.audio", audio_keys)
        if "input" in audio:
            _check_audio_input(audio["input"], "session.audio.input")
        if "output" in audio:
            _check_audio_output(audio["output"], "session.audio.output")
    if "output_modalities" in session:
        mods = session["output_modalities"]
        if not isinstance(mods, list):
            raise _invalid_type("session.output_modalities", "an array", mods)
        if len(mods) != 1 or mods[0] not in ("audio", "text"):
            raise _invalid_value("session.output_modalities", mods, [["audio"], ["text"]])
    for key in ("instructions", "model"):
        if key in session:
            _check_str(session[key], f"session.{key}")
    if "include" in session and session["include"] is not None:
        inc = session["include"]
        if not isinstance(inc, list):
            raise _invalid_type("session.include", "an array", inc)
        for i, item in enumerate(inc):
            if item != "item.input_audio_transcription.logprobs":
                raise _invalid_value(
                    f"session.include[{i}]", item, ["item.input_audio_transcription.logprobs"]
                )
    if "tools" in session and not isinstance(session["tools"], list):
        raise _invalid_type("session.tools", "an array", session["tools"])
    if "tool_choice" in session:
        tc = session["tool_choice"]
        if isinstance(tc, str):
            if tc not in ("auto", "none", "required"):
                raise _invalid_value("session.tool_choice", tc, ["auto", "none", "required"])
        elif not isinstance(tc, dict):
            raise _invalid_type("session.tool_choice", "a string or an object", tc)
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
            raise _invalid_type("session.truncation", "a string or an object", trunc)
    if "tracing" in session:
        tracing = session["tracing"]
        if not (tracing is None or tracing == "auto" or isinstance(tracing, dict)):
            raise _invalid_value("session.tracing", tracing, ["auto"])
    if "prompt" in session and not (
        session["prompt"] is None or isinstance(session["prompt"], dict)
    ):
        raise _invalid_type("session.prompt", "an object", session["prompt"])
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
                    target["transcription"] = {
                        "model": "gpt-4o-mini-transcribe",
                        "language": None,
                        "prompt": "",
                        **copy.deepcopy(fval),
                    }
                else:
                    target[name] = copy.deepcopy(fval)
    return new


def _summarize(event: JsonObj, audio_len: int | None = None) -> JsonObj:
    """A copy of an event that is cheap to keep: audio payloads become byte counts."""
    out = dict(event)
    if "audio" in out and isinstance(out["audio"], str):
        out["audio"] = audio_len if audio_len is not None else -1
    if out.get("type") in ("response.output_audio.delta", "response.audio.delta"):
        delta = out.get("delta")
        if isinstance(delta, str):
            out["delta"] = len(delta) * 3 // 4 - delta[-2:].count("=")
    if "padding" in out and isinstance(out["padding"], str):
        out["padding"] = len(out["padding"])
    return out


# ---------------------------------------------------------------------------------------
# Per-connection state (event-loop side)
# ---------------------------------------------------------------------------------------


@dataclass
class _Out:
    due: float
    text: str | None = None
    summary: JsonObj | None = None
    close: tuple[int, str] | None = None


@dataclass
class _Response:
    id: str
    item_id: str
    task: asyncio.Task[None] | None = None


class _Session:
    def __init__(self, ws: FaultConnection, record: SessionRecord, config: JsonObj) -> None:
        self.ws = ws
        self.record = record
        self.id = record.id
        self.kind = record.type
        self.config = config
        self.outq: asyncio.Queue[_Out] = asyncio.Queue()
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
        self.server_close_code: int | None = None
        self.server_close_reason = ""
        self.expired = False
        self.finished = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.wav: wave.Wave_write | None = None

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


# ---------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------


class DevServer:
    """Realtime-compatible WebSocket server with fault injection, for demos and tests."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        expire_after_s: float = 3600.0,
        record_dir: Path | None = None,
        log: bool = False,
        control: bool = True,
        keep_history: bool = True,
        expire_close_only: bool = False,
        vad_threshold_dbfs: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self.log_enabled = log
        self.control = control
        self.keep_history = keep_history
        self.vad_threshold_dbfs = vad_threshold_dbfs
        self._expire_after = float(expire_after_s)
        self._expire_close_only = expire_close_only
        self._delay = 0.0
        self._cond = threading.Condition(threading.RLock())
        self._records: list[SessionRecord] = []
        self._audio: dict[str, list[bytes]] = {}  # session id -> received chunks
        self._counters = _Counters()
        self._sessions: dict[str, _Session] = {}
        self._conns: set[FaultConnection] = set()
        self._rejects: deque[tuple[int, dict[str, str]]] = deque()
        self._freeze_new = False
        self._blackholed = False
        self._unhole: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._server: Server | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/v1/realtime"

    def start(self) -> None:
        """Start serving in a daemon thread; returns once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("DevServer already started")
        self._ready.clear()
        self._thread = threading.Thread(target=self._thread_main, name="devserver", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10.0):
            raise RuntimeError("devserver did not start within 10 s")
        if self._start_error is not None:
            self._thread.join(timeout=1.0)
            raise RuntimeError(f"devserver failed to start: {self._start_error}") from (
                self._start_error
            )

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection and the listening socket, then join the thread."""
        loop, stop_event, thread = self._loop, self._stop_event, self._thread
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop_event.set)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> DevServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.serve(on_ready=self._ready.set))
        except Exception as exc:  # noqa: BLE001 - reported to start()
            self._start_error = exc
        finally:
            self._ready.set()

    async def serve(
        self,
        on_ready: Callable[[], None] | None = None,
        stop_event: asyncio.Event | None = None,
    ) -> None:
        """Serve until ``stop_event`` is set (or :meth:`stop` is called)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop_event = stop_event or asyncio.Event()
        conn_cls = cast(
            type[FaultConnection],
            type(
                "DevServerConnection",
                (FaultConnection,),
                {"on_made": self._conn_made, "on_lost": self._conn_lost},
            ),
        )
        server = await serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,
            open_timeout=None,
            ping_interval=None,
            close_timeout=5,
            max_size=MAX_MESSAGE_BYTES,
            max_queue=64,
            logger=ws_log,
            create_connection=conn_cls,
        )
        self._server = server
        try:
            sock = server.sockets[0]
            self.port = int(sock.getsockname()[1])
            self._info("devserver listening on %s", self.url)
            if on_ready is not None:
                on_ready()
            await self._stop_event.wait()
        finally:
            await self._shutdown(server)

    async def _shutdown(self, server: Server) -> None:
        self._info("devserver stopping")
        self._blackholed = False
        if self._unhole is not None:
            self._unhole.set()
        for s in list(self._sessions.values()):
            if s.server_close_code is None:
                s.server_close_code = 1006 if s.ws.gated else 1001
                s.server_close_reason = ""
        for conn in list(self._conns):
            if conn.gated or conn.dv_session is None:
                conn.abort()
        server.close(close_connections=True)
        try:
            await asyncio.wait_for(server.wait_closed(), timeout=2.0)
        except TimeoutError:
            for conn in list(self._conns):
                conn.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=1.0)
        self._server = None

    def _conn_made(self, conn: FaultConnection) -> None:
        self._conns.add(conn)

    def _conn_lost(self, conn: FaultConnection) -> None:
        self._conns.discard(conn)

    def _info(self, msg: str, *args: Any) -> None:
        log.log(logging.INFO if self.log_enabled else logging.DEBUG, msg, *args)

    # -- thread plumbing -------------------------------------------------------------------

    def _call(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("DevServer is not running")
        if threading.get_ident() == self._loop_thread:
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        with self._cond:
            yield
            self._cond.notify_all()

    # -- observations ----------------------------------------------------------------------

    def sessions(self) -> list[SessionRecord]:
        """Snapshot of every connection's record, in connection order."""
        with self._cond:
            return [
                dataclasses.replace(
                    r,
                    headers=dict(r.headers),
                    client_events=[dict(e) for e in r.client_events],
                    server_events=[dict(e) for e in r.server_events],
                    audio_chunks=tuple(self._audio.get(r.id, ())),
                )
                for r in self._records
            ]

    def received_audio(self) -> bytes:
        """All sessions' received audio concatenated in connection order."""
        with self._cond:
            return b"".join(b"".join(self._audio.get(r.id, ())) for r in self._records)

    def stats(self) -> JsonObj:
        with self._cond:
            c = self._counters
            return {
                "sessions": c.sessions,
                "open_sessions": sum(1 for r in self._records if r.closed_at is None),
                "appends": c.appends,
                "audio_bytes": c.audio_bytes,
                "binary_frames": c.binary_frames,
                "handshakes_rejected": c.handshakes_rejected,
                "handshakes_unauthorized": c.handshakes_unauthorized,
                "frozen": any(r.frozen and r.closed_at is None for r in self._records),
                "blackholed": self._blackholed,
                "delay_s": self._delay,
                "expire_after_s": self._expire_after,
            }

    def wait_for(self, predicate: Callable[[DevServer], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` is true (re-checked on every server event)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    # -- faults (public, thread-safe) ------------------------------------------------------

    def close_all(self, code: int, reason: str = "") -> None:
        """Close every open session with this code (1005/1006/1015: drop TCP, no frame)."""
        self._call(lambda: self._op_close_all(code, reason))

    def freeze(self, new_sessions: bool = False) -> None:
        """Open sessions go silent: keep reading, send nothing (not even pongs)."""
        self._call(lambda: self._op_freeze(True, new_sessions))

    def unfreeze(self) -> None:
        self._call(lambda: self._op_freeze(False, False))

    def blackhole(self) -> None:
        """Stop reading and writing on every connection; new handshakes hang."""
        self._call(self._op_blackhole)

    def unblackhole(self) -> None:
        self._call(self._op_unblackhole)

    def reset_all(self) -> None:
        """Abort every TCP connection with an RST."""
        self._call(lambda: self._op_reset_all(None))

    def reject_handshakes(
        self, status: int, headers: dict[str, str] | None = None, count: int = 1
    ) -> None:
        """Answer the next ``count`` WebSocket handshakes with this HTTP status."""
        self._call(lambda: self._op_reject(status, headers or {}, count))

    def expire_now(self, close_only: bool = False) -> None:
        """session_expired error (unless ``close_only``) and close 1001, for all sessions."""
        self._call(lambda: self._op_expire_all(close_only))

    def set_expire_after(self, seconds: float, close_only: bool | None = None) -> None:
        """Maximum duration of sessions opened from now on."""

        def op() -> None:
            self._expire_after = float(seconds)
            if close_only is not None:
                self._expire_close_only = close_only

        self._call(op)

    def send_malformed(self) -> None:
        self._call(self._op_send_malformed)

    def send_huge(self, n_bytes: int) -> None:
        self._call(lambda: self._op_send_huge(n_bytes))

    def send_error(
        self, code: str, message: str = "", error_type: str = "invalid_request_error"
    ) -> None:
        self._call(lambda: self._op_send_error(code, message, error_type))

    def set_delay(self, seconds: float) -> None:
        """Delay every event queued from now on by this much (order is kept)."""

        def op() -> None:
            self._delay = max(0.0, float(seconds))

        self._call(op)

    # -- faults (event-loop side) ----------------------------------------------------------

    def _open_sessions(self) -> list[_Session]:
        return [s for s in self._sessions.values() if s.record.closed_at is None]

    def _op_close_all(self, code: int, reason: str) -> None:
        self._info("fault: close_all %d %r", code, reason)
        for s in self._open_sessions():
            self._spawn(s, self._close_ws(s, code, reason))

    def _op_freeze(self, frozen: bool, new_sessions: bool) -> None:
        self._info("fault: %s", "freeze" if frozen else "unfreeze")
        self._freeze_new = new_sessions if frozen else False
        with self._changing():
            for s in self._open_sessions():
                s.ws.set_frozen(frozen)
                s.record.frozen = frozen

    def _op_blackhole(self) -> None:
        self._info("fault: blackhole")
        self._blackholed = True
        self._unhole = asyncio.Event()
        for s in self._open_sessions():
            s.ws.set_blackholed(True)
        self._notify()

    def _op_unblackhole(self) -> None:
        self._info("fault: unblackhole")
        self._blackholed = False
        if self._unhole is not None:
            self._unhole.set()
        for conn in list(self._conns):
            if conn.dv_blackholed:
                conn.set_blackholed(False)
        self._notify()

    def _op_reset_all(self, exclude: ServerConnection | None) -> None:
        self._info("fault: reset_all")
        for s in self._open_sessions():
            if s.server_close_code is None:
                s.server_close_code = 1006
        for conn in list(self._conns):
            if conn is not exclude:
                conn.reset()

    def _op_reject(self, status: int, headers: dict[str, str], count: int) -> None:
        self._info("fault: reject next %d handshakes with %d", count, status)
        for _ in range(count):
            self._rejects.append((int(status), dict(headers)))

    def _op_expire_all(self, close_only: bool) -> None:
        for s in self._open_sessions():
            self._expire(s, close_only)

    def _op_send_malformed(self) -> None:
        for s in self._open_sessions():
            self._enqueue(s, "{this is not json", {"type": "<malformed>"})

    def _op_send_huge(self, n_bytes: int) -> None:
        for s in self._open_sessions():
            head = {"type": "devserver.huge", "event_id": new_id("event"), "padding": ""}
            overhead = len(json.dumps(head))
            head["padding"] = "x" * max(0, int(n_bytes) - overhead)
            self._enqueue(s, json.dumps(head), _summarize(head))

    def _op_send_error(self, code: str, message: str, error_type: str) -> None:
        for s in self._open_sessions():
            self._send_error(s, ApiError(code, message or code, None, error_type), None)

    def _notify(self) -> None:
        with self._changing():
            pass

    # -- HTTP: handshake checks and the control endpoint -----------------------------------

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/control" or url.path.startswith("/control/"):
            if not self.control:
                return _http_response(404, {"error": "control endpoint disabled"})
            return self._control_request(conn, url.path, url.query)

        if self._blackholed and isinstance(conn, FaultConnection):
            conn.set_blackholed(True)
            unhole = self._unhole
            if unhole is not None:
                waiter: asyncio.Future[Any] = asyncio.ensure_future(unhole.wait())
                lost: asyncio.Future[Any] = conn.connection_lost_waiter
                try:
                    await asyncio.wait(
                        [waiter, lost],
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    waiter.cancel()
            if conn.connection_lost_waiter.done():
                return None

        if self._rejects:
            status, extra = self._rejects.popleft()
            with self._changing():
                self._counters.handshakes_rejected += 1
            self._info("handshake rejected with %d (injected)", status)
            body = {
                "error": {
                    "message": f"devserver: injected HTTP {status}",
                    "type": "server_error" if status >= 500 else "invalid_request_error",
                    "code": "rate_limit_exceeded" if status == 429 else None,
                    "param": None,
                }
            }
            return _http_response(status, body, extra)

        if url.path not in REALTIME_PATHS:
            return _http_response(404, _error_body(f"Invalid URL (GET {url.path})", None))

        key = _request_key(request.headers)
        if not key:
            with self._changing():
                self._counters.handshakes_unauthorized += 1
            return _http_response(
                401,
                _error_body(
                    "You didn't provide an API key. Provide it in the Authorization header "
                    "(Bearer auth) or in the api-key header.",
                    "missing_api_key",
                ),
            )
        if self.api_key is not None and not hmac.compare_digest(
            key.encode(), self.api_key.encode()
        ):
            with self._changing():
                self._counters.handshakes_unauthorized += 1
            shown = key[:3] + "*" * 4 + key[-4:] if len(key) > 8 else "****"
            return _http_response(
                401, _error_body(f"Incorrect API key provided: {shown}.", "invalid_api_key")
            )
        return None

    def _control_request(self, conn: ServerConnection, path: str, query: str) -> Response:
        name = path[len("/control") :].strip("/")
        args = {k: v[-1] for k, v in parse_qs(query).items()}
        headers: dict[str, str] = {}
        for item in parse_qs(query).get("header", []):
            hname, _, hvalue = item.partition(":")
            headers[hname.strip()] = hvalue.strip()
        if "retry_after" in args:
            headers["Retry-After"] = args["retry_after"]

        def flag(key: str) -> bool:
            return args.get(key, "0").lower() in ("1", "true", "yes", "on")

        try:
            result: Any = None
            if name == "stats":
                result = self.stats()
            elif name == "sessions":
                with self._cond:
                    result = [
                        {
                            f.name: getattr(r, f.name)
                            for f in dataclasses.fields(r)
                            if f.name
                            not in ("audio_chunks", "client_events", "server_events", "wav_path")
                        }
                        | {"wav_path": str(r.wav_path) if r.wav_path else None}
                        for r in self._records
                    ]
            elif name == "close_all":
                self._op_close_all(int(args.get("code", "1000")), args.get("reason", ""))
            elif name == "freeze":
                self._op_freeze(True, flag("new_sessions"))
            elif name == "unfreeze":
                self._op_freeze(False, False)
            elif name == "blackhole":
                self._op_blackhole()
            elif name == "unblackhole":
                self._op_unblackhole()
            elif name == "reset_all":
                self._op_reset_all(conn)
            elif name == "reject_handshakes":
                self._op_reject(int(args["status"]), headers, int(args.get("count", "1")))
            elif name == "expire_now":
                self._op_expire_all(flag("close_only"))
            elif name == "set_expire_after":
                self._expire_after = float(args["seconds"])
                if "close_only" in args:
                    self._expire_close_only = flag("close_only")
            elif name == "send_malformed":
                self._op_send_malformed()
            elif name == "send_huge":
                self._op_send_huge(int(args["n_bytes"]))
            elif name == "send_error":
                self._op_send_error(
                    args["code"],
                    args.get("message", ""),
                    args.get("type", "invalid_request_error"),
                )
            elif name == "set_delay":
                self._delay = max(0.0, float(args["seconds"]))
            else:
                return _http_response(404, {"ok": False, "error": f"unknown control {name!r}"})
        except (KeyError, ValueError) as exc:
            return _http_response(400, {"ok": False, "error": f"bad argument: {exc}"})
        return _http_response(200, {"ok": True, "control": name, "result": result})

    # -- connection handler ----------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        assert isinstance(ws, FaultConnection)
        request = ws.request
        assert request is not None
        url = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        kind = "transcription" if query.get("intent") == "transcription" else "realtime"
        model = query.get("model") or (None if kind == "transcription" else DEFAULT_MODEL)
        sid = new_id("sess")
        headers = {
            k.lower(): ("<redacted>" if k.lower() in ("authorization", "api-key") else v)
            for k, v in request.headers.raw_items()
        }
        created = time.time()
        expire_after = self._expire_after
        expires_at = int(created + expire_after)
        record = SessionRecord(
            id=sid,
            type=kind,
            model=model,
            path=request.path,
            headers=headers,
            opened_at=time.monotonic(),
        )
        s = _Session(ws, record, default_session(kind, sid, model, expires_at))
        self._configure_vad(s)
        ws.dv_session = s
        with self._changing():
            self._records.append(record)
            self._counters.sessions += 1
        self._sessions[sid] = s
        self._info("session %s opened (%s, %s)", sid, kind, request.path)
        sender = asyncio.create_task(self._sender(s))
        try:
            if "openai-beta" in headers:
                s.server_close_code = BETA_CLOSE_CODE
                s.server_close_reason = BETA_CLOSE_REASON
                await ws.close(BETA_CLOSE_CODE, BETA_CLOSE_REASON)
                return
            if self._freeze_new:
                ws.set_frozen(True)
                with self._changing():
                    record.frozen = True
            if self._blackholed:
                ws.set_blackholed(True)
            self._emit(s, {"type": "session.created", "session": copy.deepcopy(s.config)})
            self._spawn(s, self._expiry(s, expire_after))
            while True:
                try:
                    message = await ws.recv()
                except ConnectionClosed:
                    break
                if isinstance(message, bytes):
                    with self._changing():
                        record.binary_frames += 1
                        self._counters.binary_frames += 1
                    self._info("session %s: binary frame -> close 1000", sid)
                    s.server_close_code = 1000
                    s.server_close_reason = ""
                    await ws.close(1000)
                    break
                self._on_text(s, message)
        finally:
            sender.cancel()
            for task in list(s.tasks):
                task.cancel()
            if s.response is not None and s.response.task is not None:
                s.response.task.cancel()
            with contextlib.suppress(ConnectionClosed, asyncio.CancelledError):
                await ws.wait_closed()
            self._finish(s)

    def _finish(self, s: _Session) -> None:
        """Record how the session ended (once; the closing handshake is over)."""
        if s.finished:
            return
        s.finished = True
        proto = s.ws.protocol
        rcvd = proto.close_rcvd
        if s.server_close_code is not None:
            code, reason, by = s.server_close_code, s.server_close_reason, "server"
            if code in NO_FRAME_CODES:
                by = "abort"
        elif rcvd is not None:
            code, reason, by = rcvd.code, rcvd.reason, "client"
        else:
            code, reason, by = 1006, "", "abort"
        if s.wav is not None:
            with contextlib.suppress(OSError):
                s.wav.close()
            s.wav = None
        with self._changing():
            s.record.close_code = code
            s.record.close_reason = reason
            s.record.closed_by = by
            s.record.closed_at = time.monotonic()
            s.record.frozen = False
        self._sessions.pop(s.id, None)
        self._info("session %s closed: %d %r (%s)", s.id, code, reason, by)

    def _spawn(self, s: _Session, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        s.tasks.add(task)
        task.add_done_callback(s.tasks.discard)

    async def _close_ws(self, s: _Session, code: int, reason: str) -> None:
        if s.server_close_code is None:
            s.server_close_code = code
            s.server_close_reason = reason
        if code in NO_FRAME_CODES:
            s.ws.abort()
            return
        try:
            await s.ws.close(code, reason)
        except ProtocolError:  # invalid close code: drop the connection instead
            s.server_close_code = 1006
            s.ws.abort()

    async def _expiry(self, s: _Session, after: float) -> None:
        await asyncio.sleep(after)
        self._expire(s, self._expire_close_only)

    def _expire(self, s: _Session, close_only: bool) -> None:
        if s.expired:
            return
        s.expired = True
        with self._changing():
            s.record.expired = True
        self._info("session %s expired (close_only=%s)", s.id, close_only)
        if not close_only:
            self._send_error(s, ApiError("session_expired", EXPIRED_MESSAGE), None)
        s.outq.put_nowait(_Out(due=self._due(), close=(1001, "")))

    # -- outgoing events -------------------------------------------------------------------

    def _due(self) -> float:
        return asyncio.get_running_loop().time() + self._delay

    def _emit(self, s: _Session, event: JsonObj) -> None:
        body = {"type": event["type"], "event_id": new_id("event")}
        body.update((k, v) for k, v in event.items() if k != "type")
        self._enqueue(s, json.dumps(body), _summarize(body))

    def _enqueue(self, s: _Session, text: str, summary: JsonObj) -> None:
        s.outq.put_nowait(_Out(due=self._due(), text=text, summary=summary))

    def _send_error(self, s: _Session, err: ApiError, client_event_id: str | None) -> None:
        self._emit(
            s,
            {
                "type": "error",
                "error": {
                    "type": err.error_type,
                    "code": err.code,
                    "message": err.message,
                    "param": err.param,
                    "event_id": client_event_id,
                },
            },
        )

    async def _sender(self, s: _Session) -> None:
        loop = asyncio.get_running_loop()
        while True:
            out = await s.outq.get()
            wait = out.due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if out.close is not None:
                await self._close_ws(s, *out.close)
                return
            if s.ws.gated:
                with self._changing():
                    s.record.dropped_events += 1
                continue
            assert out.text is not None
            try:
                await s.ws.send(out.text)
            except ConnectionClosed:
                return
            summary = out.summary or {}
            with self._changing():
                if self.keep_history:
                    s.record.server_events.append(summary)
                if summary.get("type") == "session.updated":
                    s.record.n_updates += 1
                    if s.record.updated_acked_at is None:
                        s.record.updated_acked_at = time.monotonic()

    # -- client events ---------------------------------------------------------------------

    def _on_text(self, s: _Session, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            self._record_client(s, {"type": "<invalid json>", "length": len(text)})
            self._send_error(
                s,
                ApiError(
                    "invalid_json",
                    "The server could not parse the event: it is not valid JSON.",
                ),
                None,
            )
            return
        if not isinstance(event, dict):
            self._record_client(s, {"type": "<not an object>"})
            self._send_error(s, ApiError("invalid_type", "Expected an event object.", None), None)
            return
        eid = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        etype = event.get("type")
        try:
            if etype == "input_audio_buffer.append":
                self._on_append(s, event)
                return
            self._record_client(s, _summarize(event))
            handler = self._dispatch.get(etype) if isinstance(etype, str) else None
            if handler is None:
                if etype is None:
                    raise _missing("type")
                raise ApiError(
                    "invalid_value",
                    f"Invalid value: {json.dumps(etype)}. Supported values are: "
                    + ", ".join(f"'{t}'" for t in ("input_audio_buffer.append", *self._dispatch))
                    + ".",
                    "type",
                )
            handler(self, s, event)
        except ApiError as err:
            self._send_error(s, err, eid)

    def _record_client(self, s: _Session, summary: JsonObj) -> None:
        if not self.keep_history:
            return
        with self._changing():
            s.record.client_events.append(summary)

    # session.update

    def _on_session_update(self, s: _Session, event: JsonObj) -> None:
        for key in event:
            if key not in ("type", "event_id", "session"):
                raise _unknown(key)
        if "session" not in event:
            raise _missing("session")
        update = validate_session_update(s.kind, event["session"], s.config)
        voice = update.get("audio", {}).get("output", {}).get("voice")
        if (
            voice is not None
            and s.audio_output_started
            and voice != s.config["audio"]["output"].get("voice")
        ):
            raise ApiError(
                "invalid_value",
                "Cannot update a conversation's voice if assistant audio is present.",
                "session.audio.output.voice",
            )
        old_fmt = s.config["audio"]["input"]["format"]["type"]
        s.config = merge_session(s.config, update)
        new_fmt = s.config["audio"]["input"]["format"]["type"]
        if new_fmt != old_fmt:
            # A new input format: the buffered audio means nothing any more.
            s.ms_base = s.session_ms(s.vad.position)
            s.fmt = new_fmt
            s.vad = EnergyVad(format_rate(new_fmt))
            s.buf.clear()
            s.buf_start = 0
            s.speech_item = None
        self._configure_vad(s)
        self._info("session %s updated", s.id)
        self._emit(s, {"type": "session.updated", "session": copy.deepcopy(s.config)})

    def _configure_vad(self, s: _Session) -> None:
        td = s.turn_detection
        if td is None:
            if s.vad.in_speech:
                s.vad.reset()
                s.speech_item = None
            return
        if self.vad_threshold_dbfs is not None:
            dbfs = self.vad_threshold_dbfs
        else:
            dbfs = threshold_to_dbfs(float(td.get("threshold", 0.5)))
        if td["type"] == "semantic_vad":
            silence = SEMANTIC_SILENCE_MS.get(str(td.get("eagerness", "auto")), 800)
            prefix = 300
        else:
            silence = int(td.get("silence_duration_ms", 500))
            prefix = int(td.get("prefix_padding_ms", 300))
        s.vad.configure(threshold_dbfs=dbfs, silence_ms=silence, prefix_padding_ms=prefix)

    # input_audio_buffer.*

    def _on_append(self, s: _Session, event: JsonObj) -> None:
        audio = event.get("audio")
        data: bytes | None = None
        try:
            if "audio" not in event:
                raise _missing("audio")
            if not isinstance(audio, str):
                raise _invalid_type("audio", "a string", audio)
            try:
                data = base64.b64decode(audio, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(
                    "invalid_value", "Invalid 'audio'. Expected base64-encoded audio.", "audio"
                ) from None
            if s.fmt == "audio/pcm" and len(data) % 2:
                raise ApiError(
                    "invalid_value",
                    f"Invalid 'audio': {len(data)} bytes is not a whole number of 16-bit "
                    "PCM samples.",
                    "audio",
                )
        finally:
            self._record_client(s, _summarize(event, len(data) if data is not None else None))
        now = time.monotonic()
        with self._changing():
            rec = s.record
            rec.n_appends += 1
            if rec.first_append_at is None:
                rec.first_append_at = now
            rec.audio_bytes += len(data)
            if self.keep_history and data:
                self._audio.setdefault(rec.id, []).append(data)
            self._counters.appends += 1
            self._counters.audio_bytes += len(data)
        if not data:
            return
        self._write_wav(s, data)
        samples = decode(data, s.fmt)
        s.buf += data
        bps = bytes_per_sample(s.fmt)
        limit = MAX_BUFFER_S * s.vad.rate * bps
        if len(s.buf) > limit:
            drop = len(s.buf) - limit
            drop -= drop % bps
            del s.buf[:drop]
            s.buf_start += drop // bps
        vad_events = s.vad.feed(samples)
        td = s.turn_detection
        if td is None:
            return
        for ev in vad_events:
            if ev.kind == "speech_started":
                s.speech_item = new_id("item")
                self._emit(
                    s,
                    {
                        "type": "input_audio_buffer.speech_started",
                        "audio_start_ms": s.session_ms(ev.sample),
                        "item_id": s.speech_item,
                    },
                )
                if td.get("interrupt_response", True) and s.response is not None:
                    self._cancel_response(s, "turn_detected")
            else:
                item_id = s.speech_item or new_id("item")
                s.speech_item = None
                self._emit(
                    s,
                    {
                        "type": "input_audio_buffer.speech_stopped",
                        "audio_end_ms": s.session_ms(ev.sample),
                        "item_id": item_id,
                    },
                )
                audio_item = self._take(s, ev.start, ev.sample)
                self._commit_turn(
                    s, item_id, audio_item, auto=bool(td.get("create_response", True))
                )

    def _take(self, s: _Session, start: int, end: int) -> bytes:
        """Remove [start, end) (VAD samples) from the buffer; audio before start is dropped."""
        bps = bytes_per_sample(s.fmt)
        a = max(0, start - s.buf_start) * bps
        b = max(0, end - s.buf_start) * bps
        audio = bytes(s.buf[a:b])
        del s.buf[:b]
        s.buf_start = max(s.buf_start, end)
        return audio

    def _commit_turn(self, s: _Session, item_id: str, audio: bytes, auto: bool) -> None:
        prev = s.last_item_id
        self._emit(
            s,
            {"type": "input_audio_buffer.committed", "previous_item_id": prev, "item_id": item_id},
        )
        self._emit(
            s,
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
            },
        )
        s.last_item_id = item_id
        s.last_item_audio = audio
        secs = self._seconds(s, audio)
        self._info("session %s: user turn %s, %.2f s", s.id, item_id, secs)
        if s.transcribes:
            transcript = f"[speech {secs:.2f} s, devserver cannot transcribe]"
            self._emit(
                s,
                {
                    "type": "conversation.item.input_audio_transcription.delta",
                    "item_id": item_id,
                    "content_index": 0,
                    "delta": transcript,
                },
            )
            self._emit(
                s,
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": transcript,
                    "usage": {"type": "duration", "seconds": round(secs, 3)},
                },
            )
        if auto and s.kind == "realtime" and s.response is None:
            self._start_response(s)

    def _seconds(self, s: _Session, audio: bytes) -> float:
        return len(audio) / bytes_per_sample(s.fmt) / s.vad.rate

    def _on_commit(self, s: _Session, event: JsonObj) -> None:
        ms = self._seconds(s, bytes(s.buf)) * 1000.0
        if ms < MIN_COMMIT_MS:
            raise ApiError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {ms:.2f}ms of audio.",
                None,
            )
        item_id = s.speech_item or new_id("item")
        s.speech_item = None
        audio = bytes(s.buf)
        s.buf.clear()
        s.buf_start = s.vad.position
        s.vad.reset()
        self._commit_turn(s, item_id, audio, auto=False)

    def _on_clear(self, s: _Session, event: JsonObj) -> None:
        s.buf.clear()
        s.buf_start = s.vad.position
        s.vad.reset()
        s.speech_item = None
        self._emit(s, {"type": "input_audio_buffer.cleared"})

    # responses

    def _on_response_create(self, s: _Session, event: JsonObj) -> None:
        if s.kind != "realtime":
            raise ApiError(
                "invalid_value",
                "Invalid value: 'response.create'. Transcription sessions do not create responses.",
                "type",
            )
        if s.response is not None:
            raise ApiError(
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress: "
                f"{s.response.id}. Wait until the response is finished before creating a new "
                "one.",
                None,
            )
        self._start_response(s)

    def _on_response_cancel(self, s: _Session, event: JsonObj) -> None:
        if s.response is None:
            raise ApiError(
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
                None,
            )
        self._cancel_response(s, "client_cancelled")

    def _response_obj(self, s: _Session, resp: _Response, status: str) -> JsonObj:
        out = s.config["audio"]["output"]
        return {
            "object": "realtime.response",
            "id": resp.id,
            "status": status,
            "status_details": None,
            "output": [],
            "conversation_id": "conv_" + s.id.removeprefix("sess_"),
            "output_modalities": list(s.config.get("output_modalities", ["audio"])),
            "max_output_tokens": s.config.get("max_output_tokens", "inf"),
            "audio": {"output": {"format": out["format"], "voice": out["voice"]}},
            "usage": None,
            "metadata": None,
        }

    def _start_response(self, s: _Session) -> None:
        resp = _Response(id=new_id("resp"), item_id=new_id("item"))
        s.response = resp
        self._emit(
            s, {"type": "response.created", "response": self._response_obj(s, resp, "in_progress")}
        )
        resp.task = asyncio.ensure_future(self._run_response(s, resp, s.last_item_audio))

    def _cancel_response(self, s: _Session, reason: str) -> None:
        resp = s.response
        if resp is None:
            return
        s.response = None
        if resp.task is not None:
            resp.task.cancel()
        body = self._response_obj(s, resp, "cancelled")
        body["status_details"] = {"type": "cancelled", "reason": reason}
        self._emit(s, {"type": "response.done", "response": body})

    async def _run_response(self, s: _Session, resp: _Response, audio: bytes) -> None:
        secs = self._seconds(s, audio)
        text = (
            f"Echoing {secs:.2f} s of your speech."
            if audio
            else "Nothing to echo: no user audio has been committed yet."
        )
        ids = {"response_id": resp.id, "item_id": resp.item_id, "output_index": 0}
        item: JsonObj = {
            "id": resp.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        self._emit(
            s,
            {
                "type": "response.output_item.added",
                "response_id": resp.id,
                "output_index": 0,
                "item": item,
            },
        )
        modalities = s.config.get("output_modalities", ["audio"])
        if "audio" in modalities:
            out_fmt = s.config["audio"]["output"]["format"]["type"]
            pcm = convert(audio, s.fmt, out_fmt)
            if pcm:
                s.audio_output_started = True
            step = format_rate(out_fmt) * bytes_per_sample(out_fmt) * RESPONSE_CHUNK_MS // 1000
            pause = RESPONSE_CHUNK_MS / 1000.0 / RESPONSE_SPEED
            for i in range(0, len(pcm), step):
                self._emit(
                    s,
                    {
                        "type": "response.output_audio.delta",
                        **ids,
                        "content_index": 0,
                        "delta": base64.b64encode(pcm[i : i + step]).decode("ascii"),
                    },
                )
                await asyncio.sleep(pause)
            self._emit(
                s,
                {
                    "type": "response.output_audio_transcript.delta",
                    **ids,
                    "content_index": 0,
                    "delta": text,
                },
            )
            self._emit(s, {"type": "response.output_audio.done", **ids, "content_index": 0})
            self._emit(
                s,
                {
                    "type": "response.output_audio_transcript.done",
                    **ids,
                    "content_index": 0,
                    "transcript": text,
                },
            )
            content = [{"type": "output_audio", "transcript": text}]
        else:
            self._emit(
                s, {"type": "response.output_text.delta", **ids, "content_index": 0, "delta": text}
            )
            self._emit(
                s, {"type": "response.output_text.done", **ids, "content_index": 0, "text": text}
            )
            content = [{"type": "output_text", "text": text}]
        item = {**item, "status": "completed", "content": content}
        self._emit(
            s,
            {
                "type": "response.output_item.done",
                "response_id": resp.id,
                "output_index": 0,
                "item": item,
            },
        )
        body = self._response_obj(s, resp, "completed")
        body["output"] = [item]
        body["usage"] = {
            "total_tokens": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "input_token_details": {"audio_tokens": 0, "text_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"audio_tokens": 0, "text_tokens": 0},
        }
        s.response = None
        self._emit(s, {"type": "response.done", "response": body})
        self._emit(
            s,
            {
                "type": "rate_limits.updated",
                "rate_limits": [
                    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                    {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5},
                ],
            },
        )

    # conversation.*

    def _on_truncate(self, s: _Session, event: JsonObj) -> None:
        for key in ("item_id", "content_index", "audio_end_ms"):
            if key not in event:
                raise _missing(key)
        self._emit(
            s,
            {
                "type": "conversation.item.truncated",
                "item_id": event["item_id"],
                "content_index": event["content_index"],
                "audio_end_ms": event["audio_end_ms"],
            },
        )

    def _on_item_create(self, s: _Session, event: JsonObj) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            raise _missing("item")
        item = {"id": item.get("id") or new_id("item"), "object": "realtime.item", **item}
        self._emit(
            s,
            {"type": "conversation.item.added", "previous_item_id": s.last_item_id, "item": item},
        )
        s.last_item_id = str(item["id"])

    def _on_item_delete(self, s: _Session, event: JsonObj) -> None:
        if "item_id" not in event:
            raise _missing("item_id")
        self._emit(s, {"type": "conversation.item.deleted", "item_id": event["item_id"]})

    _dispatch: dict[str, Callable[[DevServer, _Session, JsonObj], None]] = {
        "session.update": _on_session_update,
        "input_audio_buffer.commit": _on_commit,
        "input_audio_buffer.clear": _on_clear,
        "response.create": _on_response_create,
        "response.cancel": _on_response_cancel,
        "conversation.item.truncate": _on_truncate,
        "conversation.item.create": _on_item_create,
        "conversation.item.delete": _on_item_delete,
    }

    # recording

    def _write_wav(self, s: _Session, data: bytes) -> None:
        if self.record_dir is None or s.finished:
            return
        if s.wav is None:
            try:
                self.record_dir.mkdir(parents=True, exist_ok=True)
                path = self.record_dir / f"{s.id}.wav"
                wav = wave.open(str(path), "wb")  # noqa: SIM115 - closed when the session ends
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(format_rate(s.fmt))
            except OSError as exc:
                log.warning("cannot record session %s: %s", s.id, exc)
                self.record_dir = None
                return
            s.wav = wav
            with self._changing():
                s.record.wav_path = path
        with contextlib.suppress(OSError):
            s.wav.writeframes(decode(data, s.fmt).astype("<i2").tobytes())


# ---------------------------------------------------------------------------------------
# HTTP helpers
# ---------------------------------------------------------------------------------------


def _request_key(headers: Headers) -> str | None:
    auth = headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("api-key")
    if api_key and api_key.strip():
        return api_key.strip()
    return None


def _error_body(message: str, code: str | None) -> JsonObj:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "code": code,
            "param": None,
        }
    }


def _http_response(status: int, body: Any, extra: dict[str, str] | None = None) -> Response:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    payload = (json.dumps(body) + "\n").encode()
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(payload))),
            ("Content-Type", "application/json"),
        ]
    )
    for name, value in (extra or {}).items():
        headers[name] = value
    return Response(status, phrase, headers, payload)
