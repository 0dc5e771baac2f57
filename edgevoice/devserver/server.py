"""A local server that speaks the GA Realtime WebSocket protocol (see PROTOCOL.md).

It validates ``session.update`` the way the real service does, runs an energy VAD over the
appended audio, echoes each committed user turn back as the "assistant" answer, expires
sessions, and injects transport faults on command. Tests run it in-process
(:class:`DevServer` runs its own event loop in a daemon thread); ``edgevoice devserver``
runs it in the foreground with an HTTP control endpoint for out-of-process tests.

This module holds the lifecycle, the handshake, sending and recording; the session schema
is in :mod:`.schema`, the client-event handlers in :mod:`.conversation`, the assistant's
answers (framing, pacing, cancel, truncate) in :mod:`.responses`, the fault operations in
:mod:`.control`, the HTTP answers in :mod:`.httpio`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hmac
import logging
import threading
import time
import wave
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .connection import NO_FRAME_CODES, Connection
from .control import FaultMethods, FaultState, control_request
from .conversation import Conversation
from .faults import FaultConnection
from .httpio import error_body, http_response, request_key
from .records import Counters, SessionRecord, new_id
from .responses import RESPONSE_SPEED
from .schema import (
    DEFAULT_MODEL,
    DEFAULT_TRANSCRIPTION_MODEL,
    REALTIME_MODELS,
    JsonObj,
    default_session,
    model_not_found,
    model_not_found_message,
)
from .vad import decode, format_rate

__all__ = ["DevServer", "SessionRecord", "ws_log"]

log = logging.getLogger("edgevoice.devserver")
ws_log = logging.getLogger("edgevoice.devserver.websockets")

T = TypeVar("T")

OPENAI_PATH = "/v1/realtime"
REALTIME_PATHS = (OPENAI_PATH, "/openai/v1/realtime")
BETA_CLOSE_CODE = 4000
BETA_CLOSE_REASON = "invalid_request_error.beta_api_shape_disabled"
MODEL_CLOSE_CODE = 1008  # policy violation
MODEL_CLOSE_REASON = "invalid_request_error.model_not_found"
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # one append may carry 15 MiB of audio (base64: 20 MiB)


class DevServer(FaultMethods):
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
        retired_models: Iterable[str] = (),
        response_speed: float = RESPONSE_SPEED,
    ) -> None:
        if not response_speed > 0:
            raise ValueError(f"response_speed must be > 0, not {response_speed}")
        self.host = host
        self.port = port
        self.api_key = api_key
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self.log_enabled = log
        self.control = control
        self.keep_history = keep_history
        self.vad_threshold_dbfs = vad_threshold_dbfs
        self.response_speed = float(response_speed)  # answers stream at this x real time
        self.faults = FaultState(
            expire_after=float(expire_after_s),
            expire_close_only=expire_close_only,
            retired_models=set(retired_models),
        )
        self._cond = threading.Condition(threading.RLock())
        self._records: list[SessionRecord] = []
        self._audio: dict[str, list[bytes]] = {}  # session id -> received chunks
        self._pcm: dict[str, list[bytes]] = {}  # session id -> the same, decoded to PCM16
        self._counters = Counters()
        self._links: dict[str, Connection] = {}
        self._conns: set[FaultConnection] = set()
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
                {"on_made": self._conns.add, "on_lost": self._conns.discard},
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
            self.info("devserver listening on %s", self.url)
            if on_ready is not None:
                on_ready()
            await self._stop_event.wait()
        finally:
            await self._shutdown(server)

    async def _shutdown(self, server: Server) -> None:
        self.info("devserver stopping")
        self.faults.blackholed = False
        if self.faults.unhole is not None:
            self.faults.unhole.set()
        for link in list(self._links.values()):
            if link.server_close_code is None:
                link.server_close_code = 1006 if link.ws.gated else 1001
                link.server_close_reason = ""
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

    # -- plumbing (also the conversation's Host and the operations' Target) ----------------

    def info(self, msg: str, *args: Any) -> None:
        log.log(logging.INFO if self.log_enabled else logging.DEBUG, msg, *args)

    def _on_loop(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("DevServer is not running")
        if threading.get_ident() == self._loop_thread:
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)

    @contextlib.contextmanager
    def changing(self) -> Iterator[None]:
        with self._cond:
            yield
            self._cond.notify_all()

    def due(self) -> float:
        return asyncio.get_running_loop().time() + self.faults.delay

    def open_links(self) -> Sequence[Connection]:
        return [s for s in self._links.values() if s.record.closed_at is None]

    def connections(self) -> Sequence[FaultConnection]:
        return list(self._conns)

    @property
    def retired_models(self) -> frozenset[str]:
        """Models that no longer exist (constructor, ``retire_model``)."""
        with self._cond:
            return frozenset(self.faults.retired_models)

    def take_long_answer(self) -> tuple[float, float | None] | None:
        """The pending ``long_answer`` (seconds, speed), handed to the next response once."""
        with self.changing():
            pending, self.faults.long_answer = self.faults.long_answer, None
            return pending

    def count(self, counter: str) -> None:
        with self.changing():
            setattr(self._counters, counter, getattr(self._counters, counter) + 1)

    def audio_received(self, conv: Conversation, data: bytes) -> None:
        now = time.monotonic()
        with self.changing():
            rec = conv.record
            rec.n_appends += 1
            if rec.first_append_at is None:
                rec.first_append_at = now
            rec.audio_bytes += len(data)
            rec.input_format = conv.fmt
            rec.input_rate = format_rate(conv.fmt)
            if self.keep_history and data:
                self._audio.setdefault(rec.id, []).append(data)
                pcm = decode(data, conv.fmt).astype("<i2").tobytes()
                self._pcm.setdefault(rec.id, []).append(pcm)
            self._counters.appends += 1
            self._counters.audio_bytes += len(data)
        link = self._links.get(conv.id)
        if data and link is not None:
            self._write_wav(link, data)

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
                    pcm_chunks=tuple(self._pcm.get(r.id, ())),
                    responses=[resp.copy() for resp in r.responses],
                    truncations=list(r.truncations),
                    cancels=list(r.cancels),
                )
                for r in self._records
            ]

    def received_audio(self) -> bytes:
        """All sessions' received audio concatenated in connection order."""
        with self._cond:
            return b"".join(b"".join(self._audio.get(r.id, ())) for r in self._records)

    def stats(self) -> JsonObj:
        with self._cond:
            c, f = self._counters, self.faults
            return {
                **dataclasses.asdict(c),
                "open_sessions": sum(1 for r in self._records if r.closed_at is None),
                "frozen": any(r.frozen and r.closed_at is None for r in self._records),
                "blackholed": f.blackholed,
                "delay_s": f.delay,
                "expire_after_s": f.expire_after,
                "retired_models": sorted(f.retired_models),
                "response_speed": self.response_speed,
                "long_answer": list(f.long_answer) if f.long_answer is not None else None,
            }

    def wait_for(self, predicate: Callable[[DevServer], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` is true (re-checked on every server event)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    # -- HTTP: handshake checks and the control endpoint -----------------------------------

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/control" or url.path.startswith("/control/"):
            if not self.control:
                return http_response(404, {"error": "control endpoint disabled"})
            name = url.path[len("/control") :].strip("/")
            status, body = control_request(self, name, url.query, conn)
            return http_response(status, body)

        if self.faults.blackholed and isinstance(conn, FaultConnection):
            conn.set_blackholed(True)
            unhole = self.faults.unhole
            if unhole is not None:
                waiter: asyncio.Future[Any] = asyncio.ensure_future(unhole.wait())
                lost: asyncio.Future[Any] = conn.connection_lost_waiter
                try:
                    await asyncio.wait([waiter, lost], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
            if conn.connection_lost_waiter.done():
                return None

        if self.faults.rejects:
            status, extra = self.faults.rejects.popleft()
            with self.changing():
                self._counters.handshakes_rejected += 1
            self.info("handshake rejected with %d (injected)", status)
            body = {
                "error": {
                    "message": f"devserver: injected HTTP {status}",
                    "type": "server_error" if status >= 500 else "invalid_request_error",
                    "code": "rate_limit_exceeded" if status == 429 else None,
                    "param": None,
                }
            }
            return http_response(status, body, extra)

        if url.path not in REALTIME_PATHS:
            return http_response(404, error_body(f"Invalid URL (GET {url.path})", None))

        key = request_key(request.headers)
        if not key:
            with self.changing():
                self._counters.handshakes_unauthorized += 1
            return http_response(
                401,
                error_body(
                    "You didn't provide an API key. Provide it in the Authorization header "
                    "(Bearer auth) or in the api-key header.",
                    "missing_api_key",
                ),
            )
        if self.api_key is not None and not hmac.compare_digest(
            key.encode(), self.api_key.encode()
        ):
            with self.changing():
                self._counters.handshakes_unauthorized += 1
            shown = key[:3] + "*" * 4 + key[-4:] if len(key) > 8 else "****"
            return http_response(
                401, error_body(f"Incorrect API key provided: {shown}.", "invalid_api_key")
            )

        if self.faults.model_rejects:
            status = self.faults.model_rejects.popleft()
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            transcription = query.get("intent") == "transcription"
            name = query.get("model") or (
                DEFAULT_TRANSCRIPTION_MODEL if transcription else DEFAULT_MODEL
            )
            with self.changing():
                self._counters.handshakes_model_rejected += 1
            self.info("handshake for model %r rejected with %d (injected)", name, status)
            return http_response(
                status, error_body(model_not_found_message(name), "model_not_found")
            )
        return None

    # -- connection handler ----------------------------------------------------------------

    def _refused_model(self, path: str, kind: str, model: str | None) -> str | None:
        """The model this handshake asks for when the real service would not know it."""
        if model is None:
            return None
        if model in self.faults.retired_models:
            return model
        if path == OPENAI_PATH and kind == "realtime" and model not in REALTIME_MODELS:
            return model  # Azure deployments may have any name
        return None

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
        expire_after = self.faults.expire_after
        expires_at = int(created + expire_after)
        record = SessionRecord(
            id=sid,
            type=kind,
            model=model,
            path=request.path,
            headers=headers,
            opened_at=time.monotonic(),
        )
        link = Connection(self, ws, record, default_session(kind, sid, model, expires_at))
        ws.dv_session = link
        with self.changing():
            self._records.append(record)
            self._counters.sessions += 1
        self._links[sid] = link
        self.info("session %s opened (%s, %s)", sid, kind, request.path)
        sender = asyncio.create_task(link.sender())
        try:
            if "openai-beta" in headers:
                link.server_close_code = BETA_CLOSE_CODE
                link.server_close_reason = BETA_CLOSE_REASON
                await ws.close(BETA_CLOSE_CODE, BETA_CLOSE_REASON)
                return
            if self.faults.freeze_new:
                link.set_frozen(True)
            if self.faults.blackholed:
                ws.set_blackholed(True)
            refused = self._refused_model(url.path, kind, model)
            if refused is not None:
                # Accepted, then: error model_not_found and close 1008, like the service.
                self.count("models_rejected")
                self.info("session %s: model %r not found -> close 1008", sid, refused)
                link.send_error(model_not_found(refused))
                link.close_after_queue(MODEL_CLOSE_CODE, MODEL_CLOSE_REASON)
                with contextlib.suppress(ConnectionClosed):
                    await sender
                return
            link.emit({"type": "session.created", "session": copy.deepcopy(link.conv.config)})
            link.spawn(link.expiry(expire_after))
            while True:
                try:
                    message = await ws.recv()
                except ConnectionClosed:
                    break
                if isinstance(message, bytes):
                    with self.changing():
                        record.binary_frames += 1
                        self._counters.binary_frames += 1
                    self.info("session %s: binary frame -> close 1000", sid)
                    link.server_close_code = 1000
                    link.server_close_reason = ""
                    await ws.close(1000)
                    break
                link.conv.on_text(message)
        finally:
            sender.cancel()
            link.cancel_tasks()
            with contextlib.suppress(ConnectionClosed, asyncio.CancelledError):
                await ws.wait_closed()
            self._finish(link)

    def _finish(self, link: Connection) -> None:
        """Record how the session ended (once; the closing handshake is over)."""
        if link.finished:
            return
        link.finished = True
        rcvd = link.ws.protocol.close_rcvd
        if link.server_close_code is not None:
            code, reason, by = link.server_close_code, link.server_close_reason, "server"
            if code in NO_FRAME_CODES:
                by = "abort"
        elif rcvd is not None:
            code, reason, by = rcvd.code, rcvd.reason, "client"
        else:
            code, reason, by = 1006, "", "abort"
        if link.wav is not None:
            with contextlib.suppress(OSError):
                link.wav.close()
            link.wav = None
        with self.changing():
            link.record.close_code = code
            link.record.close_reason = reason
            link.record.closed_by = by
            link.record.closed_at = time.monotonic()
            link.record.frozen = False
        self._links.pop(link.id, None)
        self.info("session %s closed: %d %r (%s)", link.id, code, reason, by)

    # -- recording -------------------------------------------------------------------------

    def _write_wav(self, link: Connection, data: bytes) -> None:
        if self.record_dir is None or link.finished:
            return
        fmt = link.conv.fmt
        if link.wav is None:
            try:
                self.record_dir.mkdir(parents=True, exist_ok=True)
                path = self.record_dir / f"{link.id}.wav"
                wav = wave.open(str(path), "wb")  # noqa: SIM115 - closed when the session ends
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(format_rate(fmt))
            except OSError as exc:
                log.warning("cannot record session %s: %s", link.id, exc)
                self.record_dir = None
                return
            link.wav = wav
            with self.changing():
                link.record.wav_path = path
        with contextlib.suppress(OSError):
            link.wav.writeframes(decode(data, fmt).astype("<i2").tobytes())
