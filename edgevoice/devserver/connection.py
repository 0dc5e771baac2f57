"""One WebSocket connection of the devserver: the outgoing queue and how it closes.

Events are queued with a due time (the ``set_delay`` fault) and sent in order by
:meth:`Connection.sender`; a queued close ends the stream. The fault switches the control
operations use on an open session (:class:`.control.Link`) are here too.
"""

from __future__ import annotations

import asyncio
import json
import time
import wave
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed, ProtocolError

from .conversation import Conversation
from .faults import FaultConnection
from .records import SessionRecord, new_id, summarize
from .schema import ApiError, JsonObj

if TYPE_CHECKING:
    from .server import DevServer

EXPIRED_MESSAGE = "Your session hit the maximum duration of 60 minutes."
NO_FRAME_CODES = (1005, 1006, 1015)  # reserved: observable only as "no close frame"


@dataclass
class _Out:
    due: float
    text: str | None = None
    summary: JsonObj | None = None
    close: tuple[int, str] | None = None


class Connection:
    """One WebSocket connection: its conversation, outgoing queue and how it ends."""

    def __init__(
        self, server: DevServer, ws: FaultConnection, record: SessionRecord, config: JsonObj
    ) -> None:
        self.server = server
        self.ws = ws
        self.record = record
        self.id = record.id
        self.outq: asyncio.Queue[_Out] = asyncio.Queue()
        self.server_close_code: int | None = None
        self.server_close_reason = ""
        self.expired = False
        self.finished = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.wav: wave.Wave_write | None = None
        self.conv = Conversation(server, record, config, self.emit)

    # -- outgoing events -------------------------------------------------------------------

    def emit(self, event: JsonObj) -> None:
        body = {"type": event["type"], "event_id": new_id("event")}
        body.update((k, v) for k, v in event.items() if k != "type")
        self.send_text(json.dumps(body), summarize(body))

    def send_text(self, text: str, summary: JsonObj) -> None:
        self.outq.put_nowait(_Out(due=self.server.due(), text=text, summary=summary))

    def send_error(self, err: ApiError) -> None:
        self.conv.send_error(err, None)

    def close_after_queue(self, code: int, reason: str = "") -> None:
        """Close once everything queued before has been sent."""
        self.outq.put_nowait(_Out(due=self.server.due(), close=(code, reason)))

    async def sender(self) -> None:
        loop = asyncio.get_running_loop()
        srv = self.server
        while True:
            out = await self.outq.get()
            wait = out.due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if out.close is not None:
                await self._close_ws(*out.close)
                return
            if self.ws.gated:
                with srv.changing():
                    self.record.dropped_events += 1
                continue
            assert out.text is not None
            try:
                await self.ws.send(out.text)
            except ConnectionClosed:
                return
            summary = out.summary or {}
            with srv.changing():
                if srv.keep_history:
                    self.record.server_events.append(summary)
                if summary.get("type") == "session.updated":
                    self.record.n_updates += 1
                    if self.record.updated_acked_at is None:
                        self.record.updated_acked_at = time.monotonic()

    # -- faults (control.Link) -------------------------------------------------------------

    def spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def cancel_tasks(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        self.conv.close()

    def close(self, code: int, reason: str) -> None:
        self.spawn(self._close_ws(code, reason))

    def set_frozen(self, frozen: bool) -> None:
        self.ws.set_frozen(frozen)
        with self.server.changing():
            self.record.frozen = frozen

    def set_blackholed(self, blackholed: bool) -> None:
        self.ws.set_blackholed(blackholed)

    def speech_started_now(self) -> JsonObj | None:
        return self.conv.speech_started_now()

    def mark_reset(self) -> None:
        if self.server_close_code is None:
            self.server_close_code = 1006

    def expire(self, close_only: bool) -> None:
        if self.expired:
            return
        self.expired = True
        with self.server.changing():
            self.record.expired = True
        self.server.info("session %s expired (close_only=%s)", self.id, close_only)
        if not close_only:
            self.send_error(ApiError("session_expired", EXPIRED_MESSAGE))
        self.close_after_queue(1001)

    async def expiry(self, after: float) -> None:
        await asyncio.sleep(after)
        self.expire(self.server.faults.expire_close_only)

    async def _close_ws(self, code: int, reason: str) -> None:
        if self.server_close_code is None:
            self.server_close_code = code
            self.server_close_reason = reason
        if code in NO_FRAME_CODES:
            self.ws.abort()
            return
        try:
            await self.ws.close(code, reason)
        except ProtocolError:  # invalid close code: drop the connection instead
            self.server_close_code = 1006
            self.ws.abort()
