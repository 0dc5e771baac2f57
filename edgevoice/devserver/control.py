"""Fault injection and inspection: one table of operations, two ways in.

Every operation is an entry of :data:`OPS`: a handler taking parsed arguments, and a
parser that turns the query string of ``GET /control/<name>?args`` into those arguments.
The HTTP control channel (:func:`control_request`) and the :class:`DevServer` methods
that tests call (:func:`run`) both go through the table, on the server's event loop.

Operations (arguments; HTTP query names are the same unless noted):

* ``stats``, ``sessions``: observations.
* ``close_all`` (code=1000, reason=""): close every open session; 1005/1006/1015 drop TCP.
* ``freeze`` (new_sessions=0), ``unfreeze``: open sessions send nothing, not even pongs.
* ``blackhole``, ``unblackhole``: stop reading and writing; new handshakes hang.
* ``reset_all``: abort every TCP connection with an RST (not the control request's own).
* ``reject_handshakes`` (status, count=1, headers; HTTP: ``header=Name: value``
  repeatable, ``retry_after``): answer the next handshakes with that HTTP status.
* ``expire_now`` (close_only=0); ``set_expire_after`` (seconds, close_only).
* ``send_malformed``; ``send_huge`` (n_bytes); ``send_error`` (code, message="",
  error_type; HTTP: ``type``).
* ``set_delay`` (seconds): delay every event queued from now on.
* ``retire_model`` (name), ``unretire_model`` (name): the model no longer exists; sessions
  asking for it get ``error`` model_not_found and close 1008, a retired transcription model
  in ``session.update`` is rejected with model_not_found.
* ``reject_model_http`` (status=404, count=1): the next handshakes are answered with HTTP
  400 or 404 and a ``model_not_found`` JSON body naming the requested model.
* ``long_answer`` (seconds, speed=None): the next response (of any session) lasts
  ``seconds`` (0 < s <= 600): the last user turn's audio repeated, or a 440 Hz tone when
  there is none; streamed at ``speed`` x real time (1 = real time; default: the server's
  ``response_speed``, 4). One-shot; a second call replaces a pending one.
* ``speech_started_now``: every open session whose VAD is not already in speech emits
  ``input_audio_buffer.speech_started`` now (audio_start_ms = current input position less
  the prefix padding, a fresh item_id) and its VAD enters speech; with turn detection
  and ``interrupt_response`` the active response is cancelled (``turn_detected``).
  Returns one ``{session_id, item_id, audio_start_ms, cancelled}`` per session it hit.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import parse_qs

from .faults import FaultConnection
from .records import SessionRecord, new_id, summarize
from .responses import check_long_answer
from .schema import ApiError, JsonObj

Args = dict[str, Any]
MODEL_HTTP_STATUSES = (400, 404)


@dataclass
class FaultState:
    """The switches the operations turn; the server consults them."""

    expire_after: float = 3600.0
    expire_close_only: bool = False
    delay: float = 0.0
    freeze_new: bool = False
    blackholed: bool = False
    unhole: asyncio.Event | None = None
    rejects: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    model_rejects: deque[int] = field(default_factory=deque)
    retired_models: set[str] = field(default_factory=set)
    long_answer: tuple[float, float | None] | None = None  # (seconds, speed) of the next answer


class Link(Protocol):
    """One open session, as the operations see it."""

    @property
    def record(self) -> SessionRecord: ...
    def close(self, code: int, reason: str) -> None: ...
    def set_frozen(self, frozen: bool) -> None: ...
    def set_blackholed(self, blackholed: bool) -> None: ...
    def expire(self, close_only: bool) -> None: ...
    def send_text(self, text: str, summary: JsonObj) -> None: ...
    def send_error(self, err: ApiError) -> None: ...
    def mark_reset(self) -> None: ...
    def speech_started_now(self) -> JsonObj | None: ...


class Target(Protocol):
    """The server, as the operations see it."""

    @property
    def faults(self) -> FaultState: ...
    def open_links(self) -> Sequence[Link]: ...
    def connections(self) -> Sequence[FaultConnection]: ...
    def changing(self) -> AbstractContextManager[None]: ...
    def info(self, msg: str, *args: Any) -> None: ...
    def stats(self) -> JsonObj: ...
    def sessions(self) -> list[SessionRecord]: ...


# ---------------------------------------------------------------------------------------
# Handlers (event-loop side)
# ---------------------------------------------------------------------------------------


def _close_all(t: Target, a: Args) -> None:
    t.info("fault: close_all %d %r", a["code"], a["reason"])
    for link in t.open_links():
        link.close(int(a["code"]), str(a["reason"]))


def _set_frozen(t: Target, frozen: bool, new_sessions: bool) -> None:
    t.info("fault: %s", "freeze" if frozen else "unfreeze")
    t.faults.freeze_new = new_sessions if frozen else False
    with t.changing():
        for link in t.open_links():
            link.set_frozen(frozen)


def _blackhole(t: Target, a: Args) -> None:
    t.info("fault: blackhole")
    with t.changing():
        t.faults.blackholed = True
        t.faults.unhole = asyncio.Event()
        for link in t.open_links():
            link.set_blackholed(True)


def _unblackhole(t: Target, a: Args) -> None:
    t.info("fault: unblackhole")
    with t.changing():
        t.faults.blackholed = False
        if t.faults.unhole is not None:
            t.faults.unhole.set()
        for conn in t.connections():
            if conn.dv_blackholed:
                conn.set_blackholed(False)


def _reset_all(t: Target, a: Args) -> None:
    t.info("fault: reset_all")
    for link in t.open_links():
        link.mark_reset()
    origin = a.get("origin")
    for conn in t.connections():
        if conn is not origin:
            conn.reset()


def _reject_handshakes(t: Target, a: Args) -> None:
    status, count = int(a["status"]), int(a.get("count", 1))
    t.info("fault: reject next %d handshakes with %d", count, status)
    for _ in range(count):
        t.faults.rejects.append((status, dict(a.get("headers") or {})))


def _set_expire_after(t: Target, a: Args) -> None:
    t.faults.expire_after = float(a["seconds"])
    if a.get("close_only") is not None:
        t.faults.expire_close_only = bool(a["close_only"])


def _send_huge(t: Target, a: Args) -> None:
    for link in t.open_links():
        head = {"type": "devserver.huge", "event_id": new_id("event"), "padding": ""}
        overhead = len(json.dumps(head))
        head["padding"] = "x" * max(0, int(a["n_bytes"]) - overhead)
        link.send_text(json.dumps(head), summarize(head))


def _send_error(t: Target, a: Args) -> None:
    code, message = str(a["code"]), str(a.get("message") or a["code"])
    error_type = str(a.get("error_type") or "invalid_request_error")
    for link in t.open_links():
        link.send_error(ApiError(code, message, None, error_type))


def _set_delay(t: Target, a: Args) -> None:
    t.faults.delay = max(0.0, float(a["seconds"]))


def _retire_model(t: Target, a: Args) -> None:
    t.info("fault: model %s retired", a["name"])
    with t.changing():
        t.faults.retired_models.add(str(a["name"]))


def _unretire_model(t: Target, a: Args) -> None:
    with t.changing():
        t.faults.retired_models.discard(str(a["name"]))


def _reject_model_http(t: Target, a: Args) -> None:
    status, count = int(a.get("status", 404)), int(a.get("count", 1))
    if status not in MODEL_HTTP_STATUSES:
        raise ValueError(f"status must be one of {MODEL_HTTP_STATUSES}, not {status}")
    t.info("fault: next %d handshakes answer %d model_not_found", count, status)
    for _ in range(count):
        t.faults.model_rejects.append(status)


def _long_answer(t: Target, a: Args) -> JsonObj:
    seconds = float(a["seconds"])
    speed = None if a.get("speed") is None else float(a["speed"])
    check_long_answer(seconds, speed)
    t.info("fault: next answer lasts %.1f s (speed %s)", seconds, speed)
    with t.changing():
        t.faults.long_answer = (seconds, speed)
    return {"seconds": seconds, "speed": speed}


def _speech_started_now(t: Target, a: Args) -> list[JsonObj]:
    t.info("fault: speech_started_now")
    hits = (link.speech_started_now() for link in t.open_links())
    return [hit for hit in hits if hit is not None]


def _sessions(t: Target, a: Args) -> list[JsonObj]:
    return [r.to_json() for r in t.sessions()]


def _each(action: Callable[[Link, Args], None]) -> Callable[[Target, Args], None]:
    def run(t: Target, a: Args) -> None:
        for link in t.open_links():
            action(link, a)

    return run


# ---------------------------------------------------------------------------------------
# Arguments from a query string
# ---------------------------------------------------------------------------------------


class Query:
    """The arguments of ``/control/<name>?...``; a missing required one raises KeyError."""

    def __init__(self, query: str) -> None:
        self.values = parse_qs(query)

    def has(self, key: str) -> bool:
        return key in self.values

    def text(self, key: str, default: str | None = None) -> str:
        if key in self.values:
            return self.values[key][-1]
        if default is None:
            raise KeyError(key)
        return default

    def integer(self, key: str, default: int | None = None) -> int:
        return int(self.text(key, None if default is None else str(default)))

    def number(self, key: str) -> float:
        return float(self.text(key))

    def flag(self, key: str) -> bool:
        return self.text(key, "0").lower() in ("1", "true", "yes", "on")

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.values.get("header", []):
            name, _, value = item.partition(":")
            out[name.strip()] = value.strip()
        if self.has("retry_after"):
            out["Retry-After"] = self.text("retry_after")
        return out


def _no_args(q: Query) -> Args:
    return {}


@dataclass(frozen=True)
class Op:
    run: Callable[[Target, Args], Any]
    parse: Callable[[Query], Args] = _no_args


OPS: dict[str, Op] = {
    "stats": Op(lambda t, a: t.stats()),
    "sessions": Op(_sessions),
    "close_all": Op(
        _close_all, lambda q: {"code": q.integer("code", 1000), "reason": q.text("reason", "")}
    ),
    "freeze": Op(
        lambda t, a: _set_frozen(t, True, bool(a.get("new_sessions"))),
        lambda q: {"new_sessions": q.flag("new_sessions")},
    ),
    "unfreeze": Op(lambda t, a: _set_frozen(t, False, False)),
    "blackhole": Op(_blackhole),
    "unblackhole": Op(_unblackhole),
    "reset_all": Op(_reset_all),
    "reject_handshakes": Op(
        _reject_handshakes,
        lambda q: {
            "status": q.integer("status"),
            "headers": q.headers(),
            "count": q.integer("count", 1),
        },
    ),
    "expire_now": Op(
        _each(lambda link, a: link.expire(bool(a.get("close_only")))),
        lambda q: {"close_only": q.flag("close_only")},
    ),
    "set_expire_after": Op(
        _set_expire_after,
        lambda q: {
            "seconds": q.number("seconds"),
            "close_only": q.flag("close_only") if q.has("close_only") else None,
        },
    ),
    "send_malformed": Op(
        _each(lambda link, a: link.send_text("{this is not json", {"type": "<malformed>"}))
    ),
    "send_huge": Op(_send_huge, lambda q: {"n_bytes": q.integer("n_bytes")}),
    "send_error": Op(
        _send_error,
        lambda q: {
            "code": q.text("code"),
            "message": q.text("message", ""),
            "error_type": q.text("type", "invalid_request_error"),
        },
    ),
    "set_delay": Op(_set_delay, lambda q: {"seconds": q.number("seconds")}),
    "retire_model": Op(_retire_model, lambda q: {"name": q.text("name")}),
    "unretire_model": Op(_unretire_model, lambda q: {"name": q.text("name")}),
    "reject_model_http": Op(
        _reject_model_http,
        lambda q: {"status": q.integer("status", 404), "count": q.integer("count", 1)},
    ),
    "long_answer": Op(
        _long_answer,
        lambda q: {
            "seconds": q.number("seconds"),
            "speed": q.number("speed") if q.has("speed") else None,
        },
    ),
    "speech_started_now": Op(_speech_started_now),
}


def run(target: Target, name: str, args: Args | None = None) -> Any:
    """Run one operation with already-parsed arguments (on the event loop)."""
    return OPS[name].run(target, dict(args or {}))


def control_request(
    target: Target, name: str, query: str, origin: object = None
) -> tuple[int, JsonObj]:
    """``GET /control/<name>?<query>``: the HTTP status and JSON body to answer."""
    op = OPS.get(name)
    if op is None:
        return 404, {"ok": False, "error": f"unknown control {name!r}"}
    try:
        args = op.parse(Query(query))
        args["origin"] = origin
        result = op.run(target, args)
    except (KeyError, ValueError) as exc:
        return 400, {"ok": False, "error": f"bad argument: {exc}"}
    return 200, {"ok": True, "control": name, "result": result}


# ---------------------------------------------------------------------------------------
# The DevServer's Python face of the table
# ---------------------------------------------------------------------------------------


class FaultMethods:
    """Public fault methods of :class:`DevServer` (thread-safe: each runs on its loop)."""

    def _on_loop(self, fn: Callable[[], Any]) -> Any:
        raise NotImplementedError

    def _op(self, name: str, args: Args | None = None) -> Any:
        return self._on_loop(lambda: run(cast(Target, self), name, args))

    def close_all(self, code: int, reason: str = "") -> None:
        """Close every open session with this code (1005/1006/1015: drop TCP, no frame)."""
        self._op("close_all", {"code": code, "reason": reason})

    def freeze(self, new_sessions: bool = False) -> None:
        """Open sessions go silent: keep reading, send nothing (not even pongs)."""
        self._op("freeze", {"new_sessions": new_sessions})

    def unfreeze(self) -> None:
        self._op("unfreeze")

    def blackhole(self) -> None:
        """Stop reading and writing on every connection; new handshakes hang."""
        self._op("blackhole")

    def unblackhole(self) -> None:
        self._op("unblackhole")

    def reset_all(self) -> None:
        """Abort every TCP connection with an RST."""
        self._op("reset_all")

    def reject_handshakes(
        self, status: int, headers: dict[str, str] | None = None, count: int = 1
    ) -> None:
        """Answer the next ``count`` WebSocket handshakes with this HTTP status."""
        self._op("reject_handshakes", {"status": status, "headers": headers or {}, "count": count})

    def expire_now(self, close_only: bool = False) -> None:
        """session_expired error (unless ``close_only``) and close 1001, for all sessions."""
        self._op("expire_now", {"close_only": close_only})

    def set_expire_after(self, seconds: float, close_only: bool | None = None) -> None:
        """Maximum duration of sessions opened from now on."""
        self._op("set_expire_after", {"seconds": seconds, "close_only": close_only})

    def send_malformed(self) -> None:
        self._op("send_malformed")

    def send_huge(self, n_bytes: int) -> None:
        self._op("send_huge", {"n_bytes": n_bytes})

    def send_error(
        self, code: str, message: str = "", error_type: str = "invalid_request_error"
    ) -> None:
        self._op("send_error", {"code": code, "message": message, "error_type": error_type})

    def set_delay(self, seconds: float) -> None:
        """Delay every event queued from now on by this much (order is kept)."""
        self._op("set_delay", {"seconds": seconds})

    def retire_model(self, name: str) -> None:
        """From now on ``name`` does not exist: sessions asking for it are refused."""
        self._op("retire_model", {"name": name})

    def unretire_model(self, name: str) -> None:
        self._op("unretire_model", {"name": name})

    def reject_model_http(self, status: int = 404, count: int = 1) -> None:
        """Answer the next ``count`` handshakes with HTTP 400/404 ``model_not_found``."""
        self._op("reject_model_http", {"status": status, "count": count})

    def long_answer(self, seconds: float, speed: float | None = None) -> None:
        """The next response's audio lasts ``seconds``, streamed at ``speed`` x real time
        (None: the server's ``response_speed``). ValueError for bad arguments."""
        self._op("long_answer", {"seconds": seconds, "speed": speed})

    def speech_started_now(self) -> list[JsonObj]:
        """Every open session says speech started now (cancelling an interruptible answer);
        returns ``{session_id, item_id, audio_start_ms, cancelled}`` per session hit."""
        result: list[JsonObj] = self._op("speech_started_now")
        return result
