"""One WebSocket connection over websocket-client, reduced to what a session needs.

Our own loop (no `run_forever`): the reader wakes at least every `socket_timeout_s`, so a
silent peer or a stop request is noticed; every call is bounded by a timeout. Handshake
and socket failures are turned into the error classes the supervisor acts on.

Nothing the server does can hold or flood us (websocket-client 1.2.3, Debian 12's, up to
the current release):

- One deadline per attempt: the name lookup (on a helper thread, abandoned when it hangs),
  the TCP connect, TLS, the upgrade request and its answer, and an error body all finish
  within `connect_timeout_s`. We open the socket ourselves and hand it to websocket-client
  wrapped in `_GuardedSocket`, which cuts every wait at the deadline and reads at most
  MAX_HANDSHAKE_HEAD of response head and MAX_ERROR_BODY of error body.
- A message larger than `max_frame_bytes` (fragments added up) is refused from its frame
  header, before its payload is read (`_BoundedFrames`, websocket-client's frame reader
  with a check after the length), and the connection closed with 1009.
- A long frame is read in slices: `recv_text` returns None (no frame yet) after
  `socket_timeout_s` even while bytes keep trickling in, so the reader's heartbeat stays
  fresh; websocket-client keeps the partial frame and the next call goes on with it.
  Text is decoded by us (websocket-client's UTF-8 check is pure Python: 0.2 s per MiB).
- A send that does not drain (no progress within `socket_timeout_s`, or one frame not out
  within `send_timeout_s`) is a peer that stopped reading: `ConnectionLost(silent=True)`,
  so everything it may not have read is replayed. websocket-client answers pings (and a
  close) from the reading thread: those answers are skipped rather than wait more than
  `socket_timeout_s` for a sender stuck on such a peer (`_WebSocket`), so the reader beats.
- Frames the session cannot use (binary, text that is not UTF-8) raise `MalformedEvent`
  after being read whole: the stream stays in step and the session goes on.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import websocket
from websocket import _http, _url
from websocket._abnf import frame_buffer

from edgevoice.clock import Clock
from edgevoice.errors import (
    AuthError,
    ConfigError,
    ConnectionLost,
    EndpointRejected,
    ModelRejected,
)
from edgevoice.health.logsetup import redact
from edgevoice.realtime.protocol import (
    BETA_SHAPE_CLOSE_CODE,
    MalformedEvent,
    describe_close,
    encode,
)

MAX_HANDSHAKE_HEAD = 64 * 1024  # status line and headers of the upgrade answer
MAX_ERROR_BODY = 16 * 1024  # of a refused upgrade's body: enough for the error JSON
MAX_PENDING_LOOKUPS = 4  # name lookups abandoned by timed-out attempts, still running
CLOSE_TOO_BIG = 1009
READ_AHEAD = 64 * 1024  # per socket read of frames; a 100 ms answer delta is 6.5 KB

_lookups = threading.BoundedSemaphore(MAX_PENDING_LOOKUPS)

# What websocket-client sets on the sockets it opens itself (we open ours).
_SOCKET_OPTIONS: list[tuple[int, int, int]] = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
                                               (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
for _name, _value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
    if hasattr(socket, _name):
        _SOCKET_OPTIONS.append((socket.IPPROTO_TCP, getattr(socket, _name), _value))


class Transport(Protocol):
    """The seam between a session and the network; tests may substitute a fake.

    `recv_text` returns the text of the next frame, None when none came within the socket
    timeout, and raises `MalformedEvent` for a frame it read whole but cannot pass on.
    """

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
        max_frame_bytes: int = 16 * 1024 * 1024,
        send_timeout_s: float | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._url = url
        self._headers = headers
        self._connect_timeout_s = connect_timeout_s
        self._socket_timeout_s = socket_timeout_s
        self._ping_interval_s = ping_interval_s
        self._pong_timeout_s = pong_timeout_s
        # A frame not out by then: the peer stopped reading, however slowly it trickles.
        self._send_timeout_s = send_timeout_s if send_timeout_s is not None else \
            max(socket_timeout_s, pong_timeout_s)
        self._ca_file = ca_file
        self._clock = clock
        # enable_multithread: one thread sends while another receives. UTF-8 is checked by
        # recv_text (in C); websocket-client's own check is pure Python.
        self._ws = _WebSocket(enable_multithread=True, skip_utf8_validation=True)
        self._ws.lock_wait_s = socket_timeout_s
        self._ws.frame_buffer = _BoundedFrames(self._sliced(self._ws.frame_buffer.recv),
                                               max_frame_bytes)
        self._guard: _GuardedSocket | None = None
        self._connecting: socket.socket | None = None  # for abort() while connecting
        self._slice_until = 0.0
        self._closed = threading.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self._last_ping_sent = 0.0
        self._last_pong = 0.0

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- connecting ----------------------------------------------------------------------

    def connect(self) -> None:
        attempt = _Attempt(self._connect_timeout_s)
        guard: _GuardedSocket | None = None
        try:
            guard = _GuardedSocket(self._open(attempt), attempt)
            self._ws.connect(  # type: ignore[no-untyped-call]
                self._url,
                socket=guard,
                header=[f"{k}: {v}" for k, v in self._headers.items()],
                suppress_origin=True,
                # A redirect would carry our Authorization header to another host.
                redirect_limit=0,
            )
        except (OSError, websocket.WebSocketException, ConnectionLost, _Expired,
                _HandshakeTooLarge, ValueError, IndexError) as exc:  # 1.2.3: a bad status line
            self._closed.set()
            error = _connect_error(exc, attempt, guard)
            if guard is not None:
                guard.end_handshake()
                guard.close()
            raise error from None
        finally:
            self._connecting = None
        self._guard = guard
        guard.end_handshake()
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

    def _open(self, attempt: _Attempt) -> socket.socket:
        """A connected socket (through the proxy websocket-client would use, TLS done)."""
        parts = urlsplit(self._url)
        secure = parts.scheme == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        proxy_host, proxy_port, proxy_auth = _proxy_for(host, secure)
        address = (proxy_host, int(proxy_port or 80)) if proxy_host else (host, port)
        attempt.phase = f"resolving {address[0]}"
        addresses = _resolve(address[0], address[1], attempt, self._closed)
        sock = self._connect_tcp(addresses, attempt)
        try:
            if proxy_host:
                attempt.phase = f"opening a tunnel through proxy {proxy_host}"
                tunnel = _GuardedSocket(sock, attempt)
                _http._tunnel(cast(Any, tunnel), host, port, proxy_auth)
                tunnel.end_handshake()
            if secure:
                attempt.phase = f"TLS handshake with {host}"
                tls = self._tls_context().wrap_socket(sock, server_hostname=host,
                                                      do_handshake_on_connect=False)
                sock = tls
                self._connecting = tls
                tls.settimeout(attempt.left_or_expire())
                tls.do_handshake()
        except BaseException:
            sock.close()
            raise
        return sock

    def _connect_tcp(self, addresses: list[Any], attempt: _Attempt) -> socket.socket:
        error: OSError | None = None
        for family, kind, proto, _, address in addresses:
            attempt.phase = f"connecting to {_format_address(address)}"
            left = attempt.left_or_expire()
            if self._closed.is_set():
                raise ConnectionLost("aborted while connecting")
            sock = socket.socket(family, kind, proto)
            self._connecting = sock
            try:
                for option in _SOCKET_OPTIONS:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(*option)
                sock.settimeout(left)
                sock.connect(address)
            except OSError as exc:
                sock.close()
                if isinstance(exc, TimeoutError):
                    raise
                error = exc
                continue
            return sock
        raise error or OSError(errno.EADDRNOTAVAIL, "no address to connect to")

    def _tls_context(self) -> ssl.SSLContext:
        cafile, capath = self._ca_file, None
        bundle = os.environ.get("WEBSOCKET_CLIENT_CA_BUNDLE")  # as websocket-client does
        if not cafile and bundle:
            cafile, capath = (bundle, None) if os.path.isfile(bundle) else (None, bundle)
        return ssl.create_default_context(cafile=cafile, capath=capath)

    # -- sending (the sender thread; close frames from whoever closes) -------------------

    def send_event(self, event: dict[str, Any]) -> None:
        """Send one client event as a text frame (never binary: see PROTOCOL.md)."""
        text = encode(event)
        if self.closed:
            raise ConnectionLost(describe_close(self.close_code, self.close_reason),
                                 close_code=self.close_code)
        self._bounded_send("send", lambda: self._ws.send_text_frame(text))

    def ping_if_due(self) -> None:
        """Send a WebSocket ping when the interval has passed; called by the sender only."""
        if self.closed:
            return
        now = self._clock()
        if now - self._last_ping_sent >= self._ping_interval_s:
            self._last_ping_sent = now
            self._bounded_send("ping", self._ws.ping)

    def _bounded_send(self, what: str, send: Callable[[], object]) -> None:
        guard = self._guard
        started = time.monotonic()
        if guard is not None:
            guard.begin_send(started + self._send_timeout_s)
        try:
            send()
        except (OSError, websocket.WebSocketException) as exc:
            self._closed.set()
            if _is_timeout(exc) or (guard is not None and guard.send_timed_out):
                # The bytes may sit unread in the buffers: replay since the last sign of life.
                raise ConnectionLost(
                    f"{what} timed out after {time.monotonic() - started:.1f}s: the server "
                    "stopped reading", silent=True) from None
            raise ConnectionLost(f"{what} failed: {_describe_os_error(exc)}") from None
        finally:
            if guard is not None:
                guard.end_send()

    # -- receiving (the reader thread) ---------------------------------------------------

    def recv_text(self) -> str | None:
        """The next text frame, or None when the socket timeout passed without one.

        Pongs are recorded here, and a pong older than the limit (while a ping is out) is a
        dead connection. The pings themselves go out from the sending thread
        (`ping_if_due`), which owns the send side.
        """
        self._check_pong()
        self._slice_until = time.monotonic() + self._socket_timeout_s
        try:
            opcode, frame = self._ws.recv_data_frame(control_frame=True)
        except _FrameTooLarge as exc:
            raise self._refuse_message(exc) from None
        except (OSError, websocket.WebSocketException) as exc:
            if _is_timeout(exc):
                self._check_send_stall()
                return None
            self._closed.set()
            if isinstance(exc, websocket.WebSocketConnectionClosedException) \
                    and self.close_code is not None:
                raise self._close_error() from None
            raise ConnectionLost(f"receive failed: {_describe_os_error(exc)}",
                                 close_code=1006) from None
        if opcode == websocket.ABNF.OPCODE_TEXT:
            data: bytes | str = frame.data
            if isinstance(data, str):
                return data
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MalformedEvent("not UTF-8", f"server sent a text frame that is not "
                                                  f"UTF-8 ({len(data)} bytes, {exc.reason} "
                                                  f"at byte {exc.start})") from None
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
            raise MalformedEvent("binary frame", f"server sent a binary frame "
                                                 f"({len(frame.data)} bytes); expected text")
        return None

    def _sliced(self, recv: Callable[[int], bytes]) -> Callable[[int], bytes]:
        """The frame reader's socket reads, read ahead, handing control back once a slice
        is over.

        websocket-client reads a frame's header and its length in separate small reads,
        then the payload: three trips through its socket layer and the kernel per frame.
        One read takes what has arrived (up to READ_AHEAD bytes, several frames when the
        server sends faster than real time) and the frame reader's requests are served
        from it, never more than they ask for: 4 to 5 µs less per answer delta here.
        websocket-client keeps what it read of a frame when a read raises a timeout, so a
        long frame is finished over several recv_text calls, each within one slice.
        """
        ahead = b""  # read from the socket, not yet all given to the frame reader
        at = 0  # of ahead, what was given

        def read(bufsize: int) -> bytes:
            nonlocal ahead, at
            if at >= len(ahead):
                if time.monotonic() >= self._slice_until:
                    raise websocket.WebSocketTimeoutException("slice over; frame continues")
                data = recv(max(bufsize, READ_AHEAD))
                if len(data) <= bufsize:
                    return data
                ahead, at = data, 0
            start = at
            at = start + bufsize
            return ahead[start:at]  # fewer bytes at its end: the reader asks again

        return read

    def _refuse_message(self, exc: _FrameTooLarge) -> ConnectionLost:
        """Close with 1009 without reading the payload; the session fails transient."""
        self.close_code, self.close_reason = CLOSE_TOO_BIG, "frame too large"
        if not self._closed.is_set():
            self._closed.set()
            self._send_close_if_free(CLOSE_TOO_BIG, b"frame too large")
        return ConnectionLost(
            f"frame too large: the server announced a {exc.size}-byte message, over "
            f"server.max_frame_bytes ({exc.limit}); closed with {CLOSE_TOO_BIG}",
            close_code=CLOSE_TOO_BIG)

    def _send_close_if_free(self, code: int, reason: bytes) -> None:
        """A close frame, unless a sender has held the socket for a socket timeout (blocked
        on a peer that does not read): closing never waits for a stuck send."""
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self._ws.send_close(code, reason)

    def _check_send_stall(self) -> None:
        """websocket-client answers pings and closes from the reader: a timeout there too
        means a peer that stopped reading."""
        guard = self._guard
        if guard is not None and guard.send_timed_out:
            self._closed.set()
            raise ConnectionLost("a send timed out: the server stopped reading", silent=True)

    def _check_pong(self) -> None:
        now = self._clock()
        if now - self._last_pong > self._pong_timeout_s and \
                self._last_ping_sent > self._last_pong:
            self._closed.set()
            raise ConnectionLost(
                f"no pong for {now - self._last_pong:.0f}s (limit {self._pong_timeout_s:g}s)",
                close_code=1006, silent=True,
            )

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

    # -- ending --------------------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame, then drop the socket without waiting for the answer.

        Waiting for the peer's close would cost up to a second per session when it is a
        black hole, and nothing we need comes after our close. Nor is a sender blocked on a
        peer that stopped reading waited for longer than the socket timeout.
        """
        if not self._closed.is_set():
            self._closed.set()
            self._send_close_if_free(code, reason.encode())
        self.abort()

    def abort(self) -> None:
        """Wake any thread blocked on the socket; used when the peer is a black hole."""
        self._closed.set()
        for sock in (self._connecting, self._ws.sock):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


class _WebSocket(websocket.WebSocket):
    """websocket-client's WebSocket whose own answers never wait long for a stuck sender.

    It answers pings and a server's close from the reading thread; while the sender is
    blocked on a peer that does not read (for up to its send deadline), those answers are
    skipped after `lock_wait_s` instead, so the reader keeps beating. Our close frames go
    the same way.
    """

    lock_wait_s = 1.0

    def send_text_frame(self, text: str) -> None:
        """``send(text, ABNF.OPCODE_TEXT)``: the same bytes on the wire (a mask key from
        os.urandom, as websocket-client's), built in 2.4 instead of 7.7 µs (its
        pure-Python XOR mask is most of it), 50 times a second; written under the same
        lock, through the same ``_send`` (websocket-client 1.2.3 and later)."""
        data = _text_frame(text)
        with self.lock:
            while data:
                data = data[self._send(data):]

    def pong(self, *args: Any, **kwargs: Any) -> None:
        if self._lock_free():
            super().pong(*args, **kwargs)

    def send_close(self, *args: Any, **kwargs: Any) -> None:
        if self._lock_free():
            super().send_close(*args, **kwargs)

    def _lock_free(self) -> bool:
        lock = getattr(self, "lock", None)
        if lock is None or not hasattr(lock, "acquire"):
            return True
        if not lock.acquire(timeout=self.lock_wait_s):
            return False
        lock.release()
        return True


def _text_frame(text: str) -> bytes:
    """One final, masked client text frame (RFC 6455 5.2): header, key, masked payload."""
    import numpy as np  # the daemon has it loaded; other commands never send audio

    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0xFE, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0xFF, n)
    key = os.urandom(4)
    mask = np.frombuffer(key * (n // 4 + 1), np.uint8, n)
    return b"".join((head, key, (np.frombuffer(payload, np.uint8) ^ mask).tobytes()))


# -- connecting: one deadline -------------------------------------------------------------


class _Expired(Exception):
    """The attempt's deadline passed (the phase is in the attempt)."""


class _HandshakeTooLarge(Exception):
    """The upgrade answer's head outgrew MAX_HANDSHAKE_HEAD, or its body MAX_ERROR_BODY."""


class _Attempt:
    """One connect attempt: its deadline, and what it is doing for the timeout message."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.phase = "starting"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def left_or_expire(self) -> float:
        left = self.left()
        if left <= 0:
            raise _Expired()
        return left

    def timed_out(self, phase: str) -> ConnectionLost:
        return ConnectionLost(f"connect timed out after {self.timeout_s:g}s (while {phase})")


def _resolve(host: str, port: int, attempt: _Attempt, stop: threading.Event) -> list[Any]:
    """getaddrinfo within the deadline: on a helper thread, abandoned if it hangs."""
    # An ASCII name goes to the resolver as bytes. As a str, CPython first runs it through
    # the idna codec, which raises UnicodeError, not an OSError, for an empty or over-long
    # label ("api..example.com") and imports encodings.idna, stringprep and unicodedata to
    # do so (0.4 MB), even for a literal address.
    name: str | bytes = host.encode("ascii") if host.isascii() else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # a literal address: nothing to look up
        return socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP,
                                  socket.AI_NUMERICHOST)
    if not _lookups.acquire(blocking=False):
        raise ConnectionLost(f"cannot connect: {MAX_PENDING_LOOKUPS} earlier name lookups "
                             "still hang (is DNS reachable?)")
    done = threading.Event()
    box: dict[str, Any] = {}

    def lookup() -> None:
        try:
            box["result"] = socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM,
                                               socket.IPPROTO_TCP)
        except OSError as exc:
            box["error"] = exc
        except UnicodeError as exc:  # a non-ASCII name the idna codec refuses
            box["error"] = socket.gaierror(socket.EAI_NONAME, f"not a valid host name ({exc})")
        finally:
            _lookups.release()
            done.set()

    threading.Thread(target=lookup, name=f"resolve-{host}", daemon=True).start()
    while not done.wait(min(0.1, attempt.left_or_expire())):
        if stop.is_set():
            raise ConnectionLost("aborted while connecting")
    if "error" in box:
        raise box["error"]
    return cast(list[Any], box["result"])


def _proxy_for(host: str, secure: bool) -> tuple[str | None, int | None, Any]:
    """The HTTP proxy websocket-client itself would use (https_proxy, http_proxy, no_proxy)."""
    try:
        found = _url.get_proxy_info(host, secure)
    except websocket.WebSocketException:
        return None, None, None
    return cast(tuple[str | None, int | None, Any], tuple(found))


def _format_address(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _connect_error(exc: BaseException, attempt: _Attempt,
                   guard: _GuardedSocket | None) -> Exception:
    if guard is not None:
        answer = guard.refusal()
        if answer is not None:  # the server answered with a status: that is the error
            status, headers = answer
            guard.read_error_body()
            return _handshake_error(status, headers, guard.body())
    phase = guard.phase() if guard is not None else attempt.phase
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectionLost(
            f"TLS certificate rejected ({exc.verify_message}); if the clock is wrong, "
            "certificates look expired"
        )
    if isinstance(exc, _Expired) or _is_timeout(exc) or attempt.left() <= 0:
        return attempt.timed_out(phase)
    if isinstance(exc, ConnectionLost):
        return exc
    if isinstance(exc, _HandshakeTooLarge):
        return ConnectionLost(f"cannot connect: {exc}")
    if isinstance(exc, ValueError | IndexError):
        return ConnectionLost(f"cannot connect: the server's HTTP answer is malformed "
                              f"({type(exc).__name__}: {str(exc)[:100]})")
    if isinstance(exc, websocket.WebSocketBadStatusException):  # without our record of it
        return _handshake_error(int(getattr(exc, "status_code", 0) or 0),
                                getattr(exc, "resp_headers", None) or {},
                                getattr(exc, "resp_body", None))
    return ConnectionLost(f"cannot connect: {_describe_os_error(exc)}")


class _GuardedSocket:
    """The connected socket as websocket-client sees it, with our bounds on every wait.

    During the handshake (`end_handshake` not yet called) every read and write waits at
    most until the attempt's deadline, and what is read is kept, bounded: the answer's head
    up to MAX_HANDSHAKE_HEAD, then up to MAX_ERROR_BODY of body; a close is deferred to
    `end_handshake` (an error body may still be read). After it, reads pass through, and a
    send waits at most the socket timeout for progress and ends by the deadline
    `begin_send` set for its thread.
    """

    def __init__(self, sock: socket.socket, attempt: _Attempt) -> None:
        self._sock = sock
        self._attempt: _Attempt | None = attempt
        self._head = bytearray()
        self._head_end = -1  # where the body starts, once the head is complete
        self._sending = False
        self._close_pending = False
        self._local = threading.local()
        self.send_timed_out = False
        # The reader's one buffer for reads of READ_AHEAD (only the reader thread reads).
        self._into = memoryview(bytearray(READ_AHEAD))

    # -- the handshake -------------------------------------------------------------------

    def end_handshake(self) -> None:
        self._attempt = None
        if self._close_pending:
            self._close_pending = False
            self._sock.close()

    def phase(self) -> str:
        if self._sending:
            return "sending the HTTP upgrade request"
        if self._head_end < 0:
            got = f" ({len(self._head)} bytes of it so far)" if self._head else ""
            return f"waiting for the HTTP upgrade answer{got}"
        answer = self.refusal()
        return f"reading the body of the HTTP {answer[0] if answer else '?'} answer"

    def refusal(self) -> tuple[int, dict[str, str]] | None:
        """Status and headers of a complete answer that is not 101, else None."""
        if self._head_end < 0:
            return None
        lines = bytes(self._head[:self._head_end]).decode("latin-1").splitlines()
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            return None
        if status == 101:
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return status, headers

    def body(self) -> bytes:
        return bytes(self._head[self._head_end:]) if self._head_end >= 0 else b""

    def read_error_body(self) -> None:
        """Read the rest of an error body (bounded) if websocket-client did not (1.2.3)."""
        answer = self.refusal()
        if answer is None or self._attempt is None:
            return
        try:
            wanted = min(int(answer[1].get("content-length", "0")), MAX_ERROR_BODY)
        except ValueError:
            return
        with contextlib.suppress(OSError, _HandshakeTooLarge):
            while len(self.body()) < wanted and self.recv(wanted - len(self.body())):
                pass

    def _arm(self, attempt: _Attempt) -> None:
        left = attempt.left()
        if left <= 0:
            raise TimeoutError("connect deadline passed")
        self._sock.settimeout(left)

    def _room(self) -> int:
        if self._head_end < 0:
            return MAX_HANDSHAKE_HEAD - len(self._head)
        return self._head_end + MAX_ERROR_BODY - len(self._head)

    def _keep(self, data: bytes) -> None:
        start = max(0, len(self._head) - 3)
        self._head += data
        if self._head_end < 0:
            for mark in (b"\r\n\r\n", b"\n\n"):
                at = self._head.find(mark, start)
                if at >= 0:
                    self._head_end = at + len(mark)
                    break

    # -- after the handshake -------------------------------------------------------------

    def begin_send(self, deadline: float) -> None:
        self._local.deadline = deadline

    def end_send(self) -> None:
        self._local.deadline = None

    # -- the socket interface websocket-client uses --------------------------------------

    def recv(self, bufsize: int) -> bytes:
        attempt = self._attempt
        if attempt is None:
            if bufsize > len(self._into):  # a large frame's payload: read as asked
                return self._sock.recv(bufsize)
            # socket.recv(65536) would allocate 64 KiB and shrink it to what came: glibc's
            # heap, cut that way ten times a second, grew 0.3-0.4 MB more in 10 minutes.
            got = self._sock.recv_into(self._into, bufsize)
            return bytes(self._into[:got])
        room = self._room()
        if room <= 0:
            what = "head" if self._head_end < 0 else "error body"
            raise _HandshakeTooLarge(f"the HTTP upgrade answer's {what} is too long")
        self._arm(attempt)
        data = self._sock.recv(min(bufsize, room))
        self._keep(data)
        return data

    def send(self, data: bytes) -> int:
        attempt = self._attempt
        if attempt is not None:
            self._arm(attempt)
            self._sending = True
            try:
                return self._sock.send(data)
            finally:
                self._sending = False
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None and time.monotonic() >= deadline:
            self.send_timed_out = True
            raise TimeoutError("send deadline passed: the peer does not drain")
        try:
            return self._sock.send(data)
        except TimeoutError:
            self.send_timed_out = True
            raise

    def gettimeout(self) -> float | None:
        attempt = self._attempt
        if attempt is not None:
            return max(0.001, attempt.left())
        return self._sock.gettimeout()

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def fileno(self) -> int:
        return self._sock.fileno()

    def setsockopt(self, *args: Any) -> None:
        self._sock.setsockopt(*args)

    def getsockopt(self, *args: Any) -> Any:
        return self._sock.getsockopt(*args)

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        if self._attempt is not None:
            self._close_pending = True
            return
        self._sock.close()

    @property
    def _closed(self) -> bool:  # websocket-client >= 1.8 looks at it before closing
        return bool(getattr(self._sock, "_closed", False))


# -- receiving: bounded messages ----------------------------------------------------------


class _FrameTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes, limit {limit}")
        self.size = size
        self.limit = limit


class _BoundedFrames(frame_buffer):
    """websocket-client's frame reader, refusing a message over `limit` from its header.

    `recv_length` runs after the 2-10 header bytes and before the payload, in
    websocket-client 1.2.3 as in the current release; the fragments of one message are
    added up (control frames in between are counted on their own).
    """

    def __init__(self, recv_fn: Callable[[int], bytes], limit: int) -> None:
        super().__init__(recv_fn, True)
        self._limit = limit
        self._message_bytes = 0  # of the fragmented message being received

    def recv_length(self) -> None:
        super().recv_length()
        header, length = self.header, self.length
        if header is None or length is None:
            return
        fin, opcode = header[0], header[4]
        if opcode >= 0x8:  # control frame
            total = length
        elif opcode == websocket.ABNF.OPCODE_CONT:
            total = self._message_bytes + length
        else:
            total = length
        if total > self._limit:
            raise _FrameTooLarge(total, self._limit)
        if opcode < 0x8:
            self._message_bytes = 0 if fin else total


# -- error texts --------------------------------------------------------------------------


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError | socket.timeout | websocket.WebSocketTimeoutException)


def _handshake_error(status: int, headers: Mapping[str, str], body: object) -> Exception:
    text = _short_body(body)
    detail = f"HTTP {status} at handshake" + (f": {text}" if text else "")
    if status in (401, 403):
        return AuthError(f"credentials rejected ({detail}); check the API key")
    if status == 429:
        retry_after = _parse_retry_after(headers.get("retry-after"))
        return ConnectionLost(f"rate limited ({detail})", retry_after_s=retry_after)
    if 300 <= status < 400:
        location = redact(" ".join(str(headers.get("location", "?")).split()))[:200]
        return EndpointRejected(
            f"server.url: the server redirects (HTTP {status}) to {location}; edgevoice does "
            "not follow redirects with the API key: set that URL")
    if status in (400, 404):
        if "model" in text.lower():
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
    except (ValueError, AttributeError, RecursionError):
        pass
    return redact(" ".join(text.split()))[:200]


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
    if _is_timeout(exc):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror or errno.errorcode.get(exc.errno, exc.errno)}"
    text = str(exc) or type(exc).__name__
    return redact(text)[:200]
