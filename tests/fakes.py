"""Fakes and waiting helpers shared by the tests.

``wait_until`` and ``FakeClock``; the session's seams (``DirectOutbox``, ``ScriptedTransport``)
and an ``EventRecorder`` for the one dispatcher.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from edgevoice.errors import ConnectionLost
from edgevoice.realtime.dispatch import EventDispatcher
from edgevoice.realtime.link import SessionLink
from edgevoice.realtime.protocol import ServerEvent

POLL_S = 0.02
"""How long ``wait_until`` sleeps between two looks at its predicate."""


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` every ``POLL_S`` until it is true or ``timeout`` seconds passed.

    Returns the predicate's last answer (it is asked once more at the deadline), so callers
    write ``assert wait_until(..., 5), "what did not happen"`` or, to show that something
    does *not* happen within a time, ``assert not wait_until(..., 1)``.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: wait() is an interruptible sleep
    while time.monotonic() < deadline:
        if predicate():
            return True
        pause.wait(min(POLL_S, max(0.0, deadline - time.monotonic())))
    return predicate()


class FakeClock:
    """A clock the test moves: call it for the time, ``advance()`` it or set ``now``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- the session's seams: a single sender that sends at once, a transport that is a script --


class DirectOutbox:
    """The single sender, reduced to "send now on the calling thread" (unit tests only)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def submit(self, event: dict[str, Any], to: SessionLink | None,
               urgent: bool = True) -> None:
        assert to is not None, "DirectOutbox needs the session to send to"
        self.sent.append(event)
        to.send_event(event)


class ScriptedTransport:
    """A Transport that answers from a script instead of a network.

    `replies` maps a client event type to the server events sent back when it arrives
    (`"$event_id"` in an error's event_id is replaced by the client event's id).
    `push()` queues a server event at any time; `fail_sends` makes every send raise like a
    dead socket; `connect_gate`, when given, holds connect() until it is set.
    """

    def __init__(self, replies: dict[str, list[dict[str, Any]]] | None = None,
                 session_id: str = "sess_1", expires_at: float = 9e9,
                 connect_gate: threading.Event | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.replies = replies if replies is not None else {
            "session.update": [updated_event()]}
        self._incoming: queue.Queue[str] = queue.Queue()
        self._session_id = session_id
        self._expires_at = expires_at
        self._connect_gate = connect_gate
        self.connected = False
        self.closed = False
        self.fail_sends = False
        self.connect_error: Exception | None = None  # raised by connect() when set
        self.pings = 0
        self._lock = threading.Lock()

    def push(self, event: dict[str, Any]) -> None:
        self._incoming.put(json.dumps(event))

    def types_sent(self) -> list[str]:
        with self._lock:
            return [e["type"] for e in self.sent]

    def connect(self) -> None:
        if self.connect_error is not None:
            raise self.connect_error
        gate = self._connect_gate
        if gate is not None:
            deadline = time.monotonic() + 10.0
            while not gate.wait(0.02):
                if self.closed or time.monotonic() > deadline:
                    raise ConnectionLost("scripted connect aborted before it was released")
        if self.closed:
            raise ConnectionLost("aborted while connecting")
        self.connected = True
        self.push({"type": "session.created", "event_id": "e0",
                   "session": {"id": self._session_id, "expires_at": self._expires_at}})

    def send_event(self, event: dict[str, Any]) -> None:
        if self.fail_sends or self.closed:
            raise ConnectionLost("send failed: scripted dead socket")
        with self._lock:
            self.sent.append(event)
        for scripted in self.replies.get(event["type"], []):
            reply = scripted
            err = scripted.get("error")
            if isinstance(err, dict) and err.get("event_id") == "$event_id":
                reply = {**scripted, "error": {**err, "event_id": event["event_id"]}}
            self.push(reply)

    def ping_if_due(self) -> None:
        self.pings += 1

    def recv_text(self) -> str | None:
        try:
            return self._incoming.get(timeout=0.02)
        except queue.Empty:
            if self.closed:
                raise ConnectionLost("scripted connection closed", close_code=1006) from None
            return None

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def updated_event(rate: int = 24000) -> dict[str, Any]:
    return {"type": "session.updated", "event_id": "e_up",
            "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": rate}}}}}


def error_event(code: str, type_: str = "invalid_request_error", event_id: str = "",
                param: str = "") -> dict[str, Any]:
    return {"type": "error", "event_id": "e1",
            "error": {"type": type_, "code": code, "message": code, "param": param,
                      "event_id": event_id}}


class EventRecorder:
    """Registers on a dispatcher and keeps every event with the session it came from."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, ServerEvent]] = []

    def register(self, dispatcher: EventDispatcher[Any]) -> None:
        dispatcher.on_every(self._record)

    def _record(self, session: Any, event: ServerEvent) -> None:
        with self.lock:
            self.events.append((getattr(session, "name", "?"), event))

    def types(self) -> list[str]:
        with self.lock:
            return [e.type for _, e in self.events]
