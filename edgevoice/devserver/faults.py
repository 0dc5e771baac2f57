"""Transport-level fault injection for the devserver.

``FaultConnection`` is a websockets ``ServerConnection`` that can

* hold every outgoing byte (``frozen``/``blackholed``): nothing reaches the client, not
  even the automatic pong that websockets writes when a ping arrives, nor the echo of a
  close frame. Held bytes are written when the fault is lifted, so the WebSocket stream
  stays well-formed (late pongs are harmless to clients);
* stop reading from the socket (``blackholed``): the kernel buffers fill up and the client
  eventually blocks in ``send``, exactly like a path that silently drops packets;
* be reset: ``SO_LINGER`` 0 and an abortive close makes the kernel send a TCP RST.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection


class FaultConnection(ServerConnection):
    """ServerConnection with switches for freezing, black-holing and resetting."""

    # Set by the owning server on a per-server subclass.
    on_made: Callable[[FaultConnection], None] | None = None
    on_lost: Callable[[FaultConnection], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dv_frozen = False
        self.dv_blackholed = False
        self.dv_held: list[bytes] = []
        self.dv_session: object | None = None  # the devserver session, once the handler runs

    # -- asyncio.Protocol hooks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assembler = getattr(self, "recv_messages", None)
        if assembler is not None and hasattr(assembler, "resume"):
            # Flow control must not undo a black hole: only resume when allowed.
            assembler.resume = self._flow_resume
        cb = type(self).on_made
        if cb is not None:
            cb(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.dv_held.clear()
        cb = type(self).on_lost
        if cb is not None:
            cb(self)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Once the closing handshake is complete, close TCP like the real service does
        # instead of waiting (up to close_timeout) for the client to close it first.
        proto = self.protocol
        if (
            proto.close_sent is not None
            and proto.close_rcvd is not None
            and not self.transport.is_closing()
        ):
            self.transport.close()

    def _flow_resume(self) -> None:
        if not self.dv_blackholed:
            self.transport.resume_reading()

    # -- output gate ----------------------------------------------------------------------

    def send_data(self) -> None:
        if self.dv_frozen or self.dv_blackholed:
            self.dv_held.extend(self.protocol.data_to_send())
            return
        super().send_data()

    def _write_chunks(self, chunks: list[bytes]) -> None:
        for data in chunks:
            if self.transport.is_closing():
                return
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                try:
                    self.transport.write_eof()
                except (OSError, RuntimeError):
                    return
            else:
                self.transport.close()

    @property
    def gated(self) -> bool:
        return self.dv_frozen or self.dv_blackholed

    def set_frozen(self, frozen: bool) -> None:
        self.dv_frozen = frozen
        self._maybe_flush()

    def set_blackholed(self, blackholed: bool) -> None:
        self.dv_blackholed = blackholed
        transport = getattr(self, "transport", None)
        if transport is None or transport.is_closing():
            return
        if blackholed:
            transport.pause_reading()
        else:
            assembler = getattr(self, "recv_messages", None)
            if not getattr(assembler, "paused", False):
                transport.resume_reading()
            self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self.gated:
            return
        held, self.dv_held = self.dv_held, []
        held.extend(self.protocol.data_to_send())
        self._write_chunks(held)

    def reset(self) -> None:
        """Abort the TCP connection with an RST."""
        transport = getattr(self, "transport", None)
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def abort(self) -> None:
        """Drop the TCP connection at once (FIN or RST, no close frame)."""
        transport = getattr(self, "transport", None)
        if transport is not None:
            transport.abort()
