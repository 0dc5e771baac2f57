"""A small WebSocket server on 127.0.0.1 that misbehaves on purpose, one script per connection.

Plain sockets and threads, so a test controls every byte: answer the upgrade one byte at a
time, announce a 64 MiB frame, send an endless error body, stop reading. Each accepted
connection runs `script(conn)` on its own thread; `HostileServer.stop()` closes every
socket and joins every thread (use it as a context manager).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
UPDATED = {"type": "session.updated", "event_id": "evt_up",
           "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}}}


class Stopped(Exception):
    """The server is stopping, or the peer went away: the script ends."""


@dataclass
class Frame:
    opcode: int
    payload: bytes


@dataclass
class HostileConn:
    sock: socket.socket
    stop: threading.Event
    index: int  # 0 for the first connection
    request: bytes = b""
    frames: list[Frame] = field(default_factory=list)  # every frame the client sent
    audio: bytearray = field(default_factory=bytearray)  # appended PCM, in order
    close_code: int | None = None
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    lock: threading.Lock = field(default_factory=threading.Lock)
    background: list[threading.Thread] = field(default_factory=list)

    # -- raw I/O -------------------------------------------------------------------------

    def recv_exact(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            if self.stop.is_set():
                raise Stopped
            try:
                chunk = self.sock.recv(n - len(data))
            except TimeoutError:
                continue
            except OSError as exc:
                raise Stopped from exc
            if not chunk:
                raise Stopped
            data += chunk
        return bytes(data)

    def send_raw(self, data: bytes) -> None:
        with self.send_lock:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise Stopped from exc

    def trickle(self, data: bytes, every_s: float) -> None:
        """Send `data` one byte at a time."""
        for i in range(len(data)):
            self.send_raw(data[i:i + 1])
            if self.stop.wait(every_s):
                raise Stopped

    def idle(self) -> None:
        """Read nothing, send nothing, until the server stops."""
        self.stop.wait()
        raise Stopped

    # -- HTTP ----------------------------------------------------------------------------

    def read_request(self) -> bytes:
        data = bytearray()
        while b"\r\n\r\n" not in data:
            data += self.recv_exact(1)
        self.request = bytes(data)
        return self.request

    def upgrade_answer(self) -> bytes:
        key = ""
        for line in self.request.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-key":
                key = value.strip()
        digest = hashlib.sha1((key + GUID).encode(), usedforsecurity=False).digest()
        accept = base64.b64encode(digest).decode()
        return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").encode()

    def accept(self) -> None:
        self.read_request()
        self.send_raw(self.upgrade_answer())

    # -- frames --------------------------------------------------------------------------

    @staticmethod
    def header(opcode: int, length: int, fin: bool = True) -> bytes:
        first = (0x80 if fin else 0) | opcode
        if length < 126:
            return struct.pack("!BB", first, length)
        if length < 1 << 16:
            return struct.pack("!BBH", first, 126, length)
        return struct.pack("!BBQ", first, 127, length)

    @classmethod
    def frame(cls, opcode: int, payload: bytes, fin: bool = True) -> bytes:
        return cls.header(opcode, len(payload), fin) + payload

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.send_raw(self.frame(opcode, payload, fin))

    def send_json(self, event: dict[str, Any]) -> None:
        self.send_frame(TEXT, json.dumps(event).encode())

    def recv_frame(self) -> Frame:
        b1, b2 = self.recv_exact(2)
        length = b2 & 0x7F
        if length == 126:
            length = struct.unpack("!H", self.recv_exact(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self.recv_exact(8))[0]
        mask = self.recv_exact(4) if b2 & 0x80 else b"\0\0\0\0"
        data = self.recv_exact(length)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data)) if length < 256 else \
            _unmask(data, mask)
        frame = Frame(b1 & 0x0F, payload)
        with self.lock:
            self.frames.append(frame)
        if frame.opcode == CLOSE and len(payload) >= 2:
            self.close_code = struct.unpack("!H", payload[:2])[0]
        return frame

    def serve(self) -> None:
        """Be a well-behaved realtime server: configure, record audio, answer pings."""
        while True:
            frame = self.recv_frame()
            if frame.opcode == PING:
                self.send_frame(PONG, frame.payload)
            elif frame.opcode == CLOSE:
                self.send_frame(CLOSE, frame.payload[:2])
                raise Stopped
            elif frame.opcode == TEXT:
                self.on_event(json.loads(frame.payload))

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "input_audio_buffer.append":
            with self.lock:
                self.audio += base64.b64decode(event["audio"])
        elif event.get("type") == "session.update":
            self.send_json(UPDATED)

    def configure(self) -> None:
        """Upgrade, session.created, then session.updated for the first session.update."""
        self.accept()
        self.configure_after_accept()

    def configure_after_accept(self) -> None:
        self.send_json({"type": "session.created", "event_id": "evt_cr",
                        "session": {"id": f"sess_{self.index}", "expires_at": 9e9}})
        while True:
            frame = self.recv_frame()
            if frame.opcode == TEXT and json.loads(frame.payload).get("type") == \
                    "session.update":
                self.send_json(UPDATED)
                return

    def serve_in_background(self) -> threading.Thread:
        """`serve()` on another thread (while this one sends); joined by the server."""
        thread = threading.Thread(target=_quietly, args=(self.serve,), daemon=True)
        self.background.append(thread)
        thread.start()
        return thread


def _unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def _quietly(fn: Callable[[], None]) -> None:
    with contextlib.suppress(Stopped):
        fn()


class HostileServer:
    """Listens on 127.0.0.1 (free port); `script(conn)` runs for every connection."""

    def __init__(self, script: Callable[[HostileConn], None], *,
                 rcvbuf: int | None = None, maxseg: int | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self._script = script
        self._tls = tls  # wss: the accepted sockets are wrapped with this context
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Set before listen(): accepted sockets inherit them, and the window is sized by them.
        if rcvbuf is not None:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if maxseg is not None:
            self._listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, maxseg)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.conns: list[HostileConn] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name="hostile-accept",
                                          daemon=True)
        self.started_at: list[float] = []  # when each connection was accepted

    @property
    def url(self) -> str:
        scheme = "wss" if self._tls is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/v1/realtime"

    def start(self) -> HostileServer:
        self._acceptor.start()
        return self

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(0.1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_side=True,
                                             do_handshake_on_connect=False)
            conn = HostileConn(sock, self._stop, len(self.conns))
            self.conns.append(conn)
            self.started_at.append(time.monotonic())
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True,
                                      name=f"hostile-{conn.index}")
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: HostileConn) -> None:
        try:
            if isinstance(conn.sock, ssl.SSLSocket):
                conn.sock.settimeout(5.0)
                try:
                    conn.sock.do_handshake()
                except (OSError, ssl.SSLError):
                    raise Stopped from None
                conn.sock.settimeout(0.1)
            self._script(conn)
        except Stopped:
            pass
        finally:
            if not self._stop.is_set():
                # The script ended: keep the socket open (unread) until the server stops.
                self._stop.wait()
            with_suppressed(conn.sock.close)

    def stop(self) -> None:
        self._stop.set()
        with_suppressed(self._listener.close)
        if self._acceptor.is_alive():
            self._acceptor.join(5)
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        threads = self._threads + [t for conn in self.conns for t in conn.background]
        for thread in threads:
            thread.join(5)
        assert not any(t.is_alive() for t in threads), "a hostile script did not stop"


def with_suppressed(fn: Callable[[], object]) -> None:
    with contextlib.suppress(OSError):
        fn()
