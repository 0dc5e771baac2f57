"""One WebSocket connection over websocket-client, reduced to what a session needs.

Our own loop (no `run_forever`): the reader wakes at least every `socket_timeout_s`, so a
silent peer or a stop request is noticed; every call is bounded by a timeout. Handshake
and socket failures are turned into the error classes the supervisor acts on.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import ssl
import struct
import threading
import time
from typing import Any, Protocol

import websocket

from edgevoice.clock import Clock
from edgevoice.errors import (
    AuthError,
    ConfigError,
    ConnectionLost,
    EndpointRejected,
    ModelRejected,
    ProtocolError,
)
from edgevoice.realtime.protocol import BETA_SHAPE_CLOSE_CODE, describe_close, encode


class Transport(Protocol):
    """The seam between a session and the network; tests may substitute a fake."""

    @property
    def closed(self) -> bool: ...
    def connect(self) -> None: ...
    def send_event(self, event: dict[str, Any]) -> None: ...
    def ping_if_due(self) -> None: ...
    def recv_text(self) -> str | None: ...
    def close(self, code: int = 1000, reason: str = "") -> None: ...
    def abort(self) -> None: ...


class WebSocketTransport:
    """websocket-client `WebSocket` with liveness bookkeeping."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        connect_timeout_s: float,
        socket_timeout_s: float,
        ping_interval_s: float,
        pong_timeout_s: float,
        ca_file: str | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._url = url
        self._headers = headers
        self._connect_timeout_s = connect_timeout_s
        self._socket_timeout_s = socket_timeout_s
        self._ping_interval_s = ping_interval_s
        self._pong_timeout_s = pong_timeout_s
        self._clock = clock
        sslopt: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED, "check_hostname": True}
        if ca_file:
            sslopt["ca_certs"] = ca_file
        # enable_multithread: one thread sends while another receives.
        self._ws = websocket.WebSocket(enable_multithread=True, sslopt=sslopt)
        self._closed = threading.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self._last_ping_sent = 0.0
        self._last_pong = 0.0
        self.frames_sent = 0
        self.bytes_sent = 0

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def connect(self) -> None:
        try:
            self._ws.connect(  # type: ignore[no-untyped-call]
                self._url,
                header=[f"{k}: {v}" for k, v in self._headers.items()],
                timeout=self._connect_timeout_s,
                suppress_origin=True,
                # A redirect would carry our Authorization header to another host.
                redirect_limit=0,
            )
        except websocket.WebSocketBadStatusException as exc:
            self._closed.set()
            raise _handshake_error(exc) from None
        except ssl.SSLCertVerificationError as exc:
            self._closed.set()
            raise ConnectionLost(
                f"TLS certificate rejected ({exc.verify_message}); if the clock is wrong, "
                "certificates look expired"
            ) from None
        except (OSError, websocket.WebSocketException) as exc:
            self._closed.set()
            raise ConnectionLost(f"cannot connect: {_describe_os_error(exc)}") from None
        response = getattr(self._ws, "handshake_response", None)
        status = getattr(response, "status", 101)
        if status != 101:
            location = (getattr(response, "headers", None) or {}).get("location", "?")
            self.abort()
            raise EndpointRejected(
                f"server.url: the server redirects (HTTP {int(status)}) to {location}; "
                "edgevoice does not follow redirects with the API key: set that URL"
            )
        self._ws.settimeout(self._socket_timeout_s)
        now = self._clock()
        self._last_pong = now
        self._last_ping_sent = now

    def send_event(self, event: dict[str, Any]) -> None:
        """Send one client event as a text frame (never binary: see PROTOCOL.md)."""
        text = encode(event)
        if self.closed:
            raise ConnectionLost(describe_close(self.close_code, self.close_reason),
                                 close_code=self.close_code)
        try:
            self._ws.send(text, websocket.ABNF.OPCODE_TEXT)
        except (OSError, websocket.WebSocketException) as exc:
            self._closed.set()
            raise ConnectionLost(f"send failed: {_describe_os_error(exc)}") from None
        self.frames_sent += 1
        self.bytes_sent += len(text)

    def recv_text(self) -> str | None:
        """The next text frame, or None when the socket timeout passed without one.

        Pongs are recorded here, and a pong older than the limit (while a ping is out) is a
        dead connection. The pings themselves go out from the sending thread
        (`ping_if_due`), which owns the send side.
        """
        self._check_pong()
        try:
            opcode, frame = self._ws.recv_data_frame(control_frame=True)
        except websocket.WebSocketTimeoutException:
            return None
        except (OSError, websocket.WebSocketException) as exc:
            if isinstance(exc, TimeoutError | socket.timeout):
                return None
            self._closed.set()
            if isinstance(exc, websocket.WebSocketConnectionClosedException) \
                    and self.close_code is not None:
                raise self._close_error() from None
            raise ConnectionLost(f"receive failed: {_describe_os_error(exc)}",
                                 close_code=1006) from None
        if opcode == websocket.ABNF.OPCODE_TEXT:
            data = frame.data
            return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        if opcode == websocket.ABNF.OPCODE_PONG:
            self._last_pong = self._clock()
            return None
        if opcode == websocket.ABNF.OPCODE_PING:
            return None  # websocket-client already answered it
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self._record_close(frame.data)
            self._closed.set()
            raise self._close_error()
        if opcode == websocket.ABNF.OPCODE_BINARY:
            raise ProtocolError(f"server sent a binary frame ({len(frame.data)} bytes)")
        return None

    def _check_pong(self) -> None:
        now = self._clock()
        if now - self._last_pong > self._pong_timeout_s and \
                self._last_ping_sent > self._last_pong:
            self._closed.set()
            raise ConnectionLost(
                f"no pong for {now - self._last_pong:.0f}s (limit {self._pong_timeout_s:g}s)",
                close_code=1006, silent=True,
            )

    def ping_if_due(self) -> None:
        """Send a WebSocket ping when the interval has passed; called by the sender only."""
        if self.closed:
            return
        now = self._clock()
        if now - self._last_ping_sent >= self._ping_interval_s:
            self._last_ping_sent = now
            try:
                self._ws.ping()
            except (OSError, websocket.WebSocketException) as exc:
                self._closed.set()
                raise ConnectionLost(f"ping failed: {_describe_os_error(exc)}") from None

    def _record_close(self, payload: bytes) -> None:
        if len(payload) >= 2:
            self.close_code = struct.unpack("!H", payload[:2])[0]
            self.close_reason = payload[2:].decode("utf-8", "replace")
        else:
            self.close_code = 1005

    def _close_error(self) -> Exception:
        text = "server closed the connection: " + describe_close(self.close_code,
                                                                 self.close_reason)
        if self.close_code == BETA_SHAPE_CLOSE_CODE:
            return ConfigError(
                text + " (the server refuses the beta interface; remove any OpenAI-Beta "
                "header from server.headers)"
            )
        return ConnectionLost(text, close_code=self.close_code)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame, then drop the socket without waiting for the answer.

        Waiting for the peer's close would cost up to a second per session when it is a
        black hole, and nothing we need comes after our close.
        """
        if not self._closed.is_set():
            self._closed.set()
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self._ws.send_close(code, reason.encode())
        self.abort()

    def abort(self) -> None:
        """Wake any thread blocked on the socket; used when the peer is a black hole."""
        self._closed.set()
        sock = self._ws.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


def _handshake_error(exc: Any) -> Exception:
    status = int(getattr(exc, "status_code", 0) or 0)
    headers = getattr(exc, "resp_headers", None) or {}
    body = _short_body(getattr(exc, "resp_body", None))
    detail = f"HTTP {status} at handshake" + (f": {body}" if body else "")
    if status in (401, 403):
        return AuthError(f"credentials rejected ({detail}); check the API key")
    if status == 429:
        retry_after = _parse_retry_after(headers.get("retry-after"))
        return ConnectionLost(f"rate limited ({detail})", retry_after_s=retry_after)
    if status in (400, 404):
        if "model" in body.lower():
            return ModelRejected(f"server.model: the server rejected the model ({detail})")
        return EndpointRejected(f"server.url/server.model rejected ({detail})")
    return ConnectionLost(detail)


def _short_body(body: object) -> str:
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        err = json.loads(text).get("error", {})
        text = f"{err.get('code') or err.get('type')}: {err.get('message')}"
    except (ValueError, AttributeError):
        pass
    return " ".join(text.split())[:200]


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; rare here, the backoff still applies


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"name resolution failed ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout | websocket.WebSocketTimeoutException):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror or errno.errorcode.get(exc.errno, exc.errno)}"
    text = str(exc) or type(exc).__name__
    return text[:200]
