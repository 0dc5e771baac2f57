"""One dispatch for server events: a table from event type to the handlers that want it.

Session state, logging, counting, history, playback, the speech gate and transcripts each
register handlers here instead of growing their own `if` chains. Every handler receives the session
the event came from, which matters while two sessions are open during a rollover. Beta-era
names are normalised before lookup (and at registration), so a handler registers once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from edgevoice.errors import EdgeVoiceError
from edgevoice.realtime.protocol import BETA_EVENT_NAMES, MalformedEvent, ServerEvent

log = logging.getLogger("edgevoice.dispatch")

S = TypeVar("S")  # the session type handlers receive
Handler = Callable[[S, ServerEvent], None]


class EventDispatcher(Generic[S]):
    def __init__(self) -> None:
        self._table: dict[str, list[Handler[S]]] = {}
        self._any: list[Handler[S]] = []
        self._fallback: list[Handler[S]] = []

    def on(self, handler: Handler[S], *event_types: str) -> None:
        """Call `handler` for each of `event_types`, after the handlers registered before."""
        for event_type in event_types:
            name = BETA_EVENT_NAMES.get(event_type, event_type)
            self._table.setdefault(name, []).append(handler)

    def on_every(self, handler: Handler[S]) -> None:
        """Call `handler` for every event, before the per-type handlers."""
        self._any.append(handler)

    def on_unhandled(self, handler: Handler[S]) -> None:
        """Call `handler` for events no per-type handler wants (logged and ignored)."""
        self._fallback.append(handler)

    def dispatch(self, source: S, event: ServerEvent) -> None:
        """Run every handler for `event`; one handler's bug never silences the others.

        A handler that finds a field malformed (MalformedEvent) skips the event; once every
        handler ran, the first such error is raised, so the reader counts the frame (and
        logs it, rate-limited) as malformed.
        """
        handlers = self._table.get(event.type)
        malformed: MalformedEvent | None = None
        for handler in (*self._any, *(handlers if handlers else self._fallback)):
            try:
                handler(source, event)
            except MalformedEvent as exc:
                malformed = malformed or exc
            except EdgeVoiceError as exc:  # this handler skips the event
                log.warning("%s: %s", event.type, exc)
            except Exception:
                log.exception("handler %s failed on %s", getattr(handler, "__qualname__",
                                                                 handler), event.type)
        if malformed is not None:
            raise malformed
