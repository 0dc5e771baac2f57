"""Nothing leaks, nothing wedges: websocket-client against a server that misbehaves on purpose.

Real parts only (the transport, a RealtimeSession, `edgevoice run` for the audio account)
against `hostile_server.HostileServer` on 127.0.0.1. Run under the venv's websocket-client
and under Debian 12's 1.2.3 (a throwaway venv), the same tests pass.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import RATE, account_audio, running_daemon, wav_config
from fakes import DirectOutbox, wait_until
from hostile_server import BINARY, CONT, PING, TEXT, HostileConn, HostileServer
from signals import speech

from edgevoice.daemon.stats import Stats, register_counters
from edgevoice.errors import AuthError, ConnectionLost
from edgevoice.realtime import protocol
from edgevoice.realtime.dispatch import EventDispatcher
from edgevoice.realtime.protocol import ServerEvent
from edgevoice.realtime.session import RealtimeSession, new_dispatcher
from edgevoice.realtime.transport import WebSocketTransport
from edgevoice.settings import SessionSettings

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def transport(url: str, **overrides: Any) -> WebSocketTransport:
    options: dict[str, Any] = {"connect_timeout_s": 5.0, "socket_timeout_s": 0.2,
                               "ping_interval_s": 30.0, "pong_timeout_s": 30.0}
    options.update(overrides)
    return WebSocketTransport(url, {"Authorization": "Bearer k"}, **options)


@contextmanager
def open_session(url: str, dispatcher: EventDispatcher[RealtimeSession] | None = None,
                 on_malformed: Callable[[str], None] | None = None,
                 **overrides: Any) -> Iterator[RealtimeSession]:
    """A configured, reading session; aborted (reader joined) however the test ends."""
    session = RealtimeSession(transport(url, **overrides), SessionSettings(),
                              dispatcher or new_dispatcher(), DirectOutbox(),
                              update_timeout_s=5.0, on_malformed=on_malformed)
    try:
        session.establish(threading.Event())
        session.start_reader()
        yield session
    finally:
        session.close(join_timeout_s=2.0)


Frames = queue.Queue[bytes | None]


def sender(frames: Frames) -> Callable[[HostileConn], None]:
    """Configure, serve (read) in the background, and send the raw frames the test queues
    (None: from then on, send nothing)."""

    def script(conn: HostileConn) -> None:
        conn.configure()
        conn.serve_in_background()
        while not conn.stop.is_set():
            try:
                item = frames.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is None:
                conn.idle()
            else:
                conn.send_raw(item)

    return script


# -- 2. untrusted frames never end a healthy session ------------------------------------

MALFORMED: list[tuple[str, int, bytes]] = [
    ("not JSON", TEXT, b"{this is not json"),
    ("no type", TEXT, b'{"event_id": "e1"}'),
    ("no type", TEXT, b"[1, 2]"),
    ("bad field", TEXT, b'{"type": "session.updated", "session": "yes"}'),
    ("bad field", TEXT, b'{"type": "response.output_audio.delta", "delta": 5}'),
    ("bad base64", TEXT, b'{"type": "response.output_audio.delta", "delta": "@@not base64"}'),
    ("too deep", TEXT, b"[" * 50_000 + b"]" * 50_000),
    ("too deep", TEXT, b'{"type": "x", "a": ' + b"[" * 65 + b"]" * 65 + b"}"),
    ("too many values", TEXT, b'{"type": "x", "a": [' + b"0," * 150_000 + b"0]}"),
    ("binary frame", BINARY, b"\x00\x01\x02"),
    ("not UTF-8", TEXT, b'{"type": "x", "t": "\xff\xfe"}'),
]


def test_malformed_frames_are_counted_and_logged_once_per_kind(
        caplog: pytest.LogCaptureFixture) -> None:
    frames: Frames = queue.Queue()
    stats = Stats()
    dispatcher = new_dispatcher()
    register_counters(dispatcher, stats)
    kinds: list[str] = []

    def on_malformed(kind: str) -> None:
        kinds.append(kind)
        stats.add("malformed_frames")

    caplog.set_level(logging.WARNING, logger="edgevoice")
    with HostileServer(sender(frames)) as server, \
            open_session(server.url, dispatcher, on_malformed) as session:
        for _ in range(2):  # every kind twice: still one line per kind
            for _, opcode, payload in MALFORMED:
                frames.put(HostileConn.frame(opcode, payload))
        frames.put(HostileConn.frame(
            TEXT, b'{"type": "input_audio_buffer.speech_started", "audio_start_ms": 5}'))
        assert wait_until(lambda: session.speech_active, 10), caplog.text
        assert not session.failed.is_set(), session.failure
        # And it still streams: a session.update is answered.
        session.probe()
        assert wait_until(lambda: session.probe_sent_at is None, 5)
        assert len(server.conns) == 1  # no reconnect
    assert stats.snapshot()["counters"]["malformed_frames"] == 2 * len(MALFORMED)
    assert sorted(kinds) == sorted(kind for kind, _, _ in MALFORMED * 2)
    lines = [r.getMessage() for r in caplog.records if "malformed server frame" in r.getMessage()]
    for kind in {k for k, _, _ in MALFORMED}:
        assert sum(f"frame ({kind})" in line for line in lines) == 1, (kind, lines)
    assert "reader of" not in caplog.text and "Traceback" not in caplog.text


def test_malformed_frames_while_configuring_do_not_fail_the_attempt() -> None:
    def script(conn: HostileConn) -> None:
        conn.accept()
        conn.send_frame(TEXT, b"[" * 100_000)
        conn.send_frame(BINARY, b"\x01")
        conn.configure_after_accept()
        conn.serve()

    with HostileServer(script) as server, open_session(server.url) as session:
        assert session.session_id == "sess_0"
        assert not session.failed.is_set()


# -- 3. bounded frames --------------------------------------------------------------------

READER_SCRIPT = r"""
import json, sys, threading
from edgevoice.realtime.session import RealtimeSession, new_dispatcher
from edgevoice.realtime.transport import WebSocketTransport
from edgevoice.settings import SessionSettings

def memory():
    out = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    return out

class Outbox:
    def submit(self, event, to, urgent=True):
        to.send_event(event)

url, limit = sys.argv[1], int(sys.argv[2])
transport = WebSocketTransport(url, {}, connect_timeout_s=5, socket_timeout_s=0.2,
                               ping_interval_s=60, pong_timeout_s=60, max_frame_bytes=limit)
session = RealtimeSession(transport, SessionSettings(), new_dispatcher(), Outbox(),
                          update_timeout_s=5)
session.establish(threading.Event())
session.start_reader()
print(json.dumps({"ready": memory()}), flush=True)
session.failed.wait(20)
failure = session.failure
print(json.dumps({"failure": str(failure), "type": type(failure).__name__,
                  "close_code": getattr(failure, "close_code", None),
                  "silent": getattr(failure, "silent", None), "end": memory()}), flush=True)
session.abort()
"""


def test_oversized_frame_closes_1009_before_it_is_read(tmp_path: Path) -> None:
    """A 64 MiB frame against max_frame_bytes 16 MiB, read by a subprocess: its peak memory
    does not move, the connection is closed with 1009, the session fails transient."""
    go = threading.Event()
    streamed = [0]

    def script(conn: HostileConn) -> None:
        conn.configure()
        conn.serve_in_background()  # reads the client's close frame
        while not go.wait(0.05):
            if conn.stop.is_set():
                return
        size = 64 * MiB
        conn.send_raw(conn.header(TEXT, size))
        chunk = b"x" * (256 * 1024)
        while streamed[0] < size:  # as fast as the client takes it
            conn.send_raw(chunk)
            streamed[0] += len(chunk)

    with HostileServer(script) as server:
        proc = subprocess.Popen([sys.executable, "-c", READER_SCRIPT, server.url, str(16 * MiB)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())["ready"]
            go.set()
            end = json.loads(proc.stdout.readline() or "{}")
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        assert wait_until(lambda: server.conns[0].close_code is not None, 5)
        close_code = server.conns[0].close_code
    assert end, proc.stderr.read() if proc.stderr else ""
    assert end["type"] == "ConnectionLost" and not end["silent"], end
    assert end["close_code"] == 1009 and "frame too large" in end["failure"], end
    assert close_code == 1009
    grew = end["end"]["VmHWM"] - ready["VmHWM"]
    print(f"\nVmHWM ready {ready['VmHWM'] / MiB:.1f} MiB, end {end['end']['VmHWM'] / MiB:.1f} "
          f"MiB (+{grew / MiB:.2f} MiB); server streamed {streamed[0] / MiB:.1f} MiB")
    assert grew < 4 * MiB
    assert end["end"]["VmHWM"] < ready["VmRSS"] + 16 * MiB


def test_fragments_count_towards_the_limit() -> None:
    frames: Frames = queue.Queue()
    with HostileServer(sender(frames)) as server, \
            open_session(server.url, max_frame_bytes=2 * MiB) as session:
        frames.put(HostileConn.frame(TEXT, b"[" + b" " * (MiB - 1), fin=False))
        # Control frames may come between fragments; they do not count.
        frames.put(HostileConn.frame(PING, b"ping in between"))
        frames.put(HostileConn.frame(CONT, b" " * MiB, fin=False))  # 2 MiB: at the limit
        frames.put(HostileConn.frame(CONT, b" " * MiB + b"]"))
        assert session.failed.wait(5)
        assert isinstance(session.failure, ConnectionLost)
        assert session.failure.close_code == 1009 and not session.failure.silent
        assert "frame too large" in str(session.failure)
        assert wait_until(lambda: server.conns[0].close_code == 1009, 5)


def test_large_legitimate_frame_keeps_the_reader_beat_fresh() -> None:
    """An 8 MiB audio delta trickling in over ~1.5 s: the reader still beats every slice."""
    pcm = os.urandom(6 * MiB)
    event = json.dumps({"type": "response.output_audio.delta", "event_id": "e",
                        "delta": base64.b64encode(pcm).decode()}).encode()
    got: list[bytes] = []
    dispatcher = new_dispatcher()

    def on_audio(session: RealtimeSession, ev: ServerEvent) -> None:
        got.append(protocol.decode_audio_delta(ev))

    dispatcher.on(on_audio, "response.output_audio.delta")
    go = threading.Event()

    def script(conn: HostileConn) -> None:
        conn.configure()
        conn.serve_in_background()
        go.wait(10)
        conn.send_raw(conn.header(TEXT, len(event)))
        step = len(event) // 30 + 1
        for i in range(0, len(event), step):
            conn.send_raw(event[i:i + step])
            if conn.stop.wait(0.05):
                return

    with HostileServer(script) as server, open_session(server.url, dispatcher) as session:
        go.set()
        worst = 0.0
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            worst = max(worst, time.monotonic() - session.reader_beat)
            time.sleep(0.01)
        assert got and got[0] == pcm
        assert not session.failed.is_set()
        assert len(server.conns) == 1
    print(f"\nworst reader beat age while an 8 MiB frame trickled in: {worst:.3f}s")
    assert worst < 0.6  # socket_timeout_s 0.2 + decoding


# -- 4. every attempt has a deadline ------------------------------------------------------


def timed_connect(url: str, timeout_s: float, **overrides: Any) -> tuple[Exception, float]:
    t = transport(url, connect_timeout_s=timeout_s, **overrides)
    started = time.monotonic()
    try:
        t.connect()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc, time.monotonic() - started
    finally:
        t.abort()
    raise AssertionError("connect succeeded")


def test_trickling_upgrade_answer_ends_at_the_deadline() -> None:
    def script(conn: HostileConn) -> None:
        conn.read_request()
        conn.trickle(conn.upgrade_answer(), 0.25)  # the whole answer would take 30 s

    with HostileServer(script) as server:
        error, took = timed_connect(server.url, 1.5)
    print(f"\ntrickling upgrade: attempt ended after {took:.2f}s: {error}")
    assert isinstance(error, ConnectionLost)
    assert "connect timed out after 1.5s (while waiting for the HTTP upgrade answer" in \
        str(error)
    assert 1.4 < took < 2.0


def test_huge_error_body_is_cut_short() -> None:
    sent = [0]

    def script(conn: HostileConn) -> None:
        conn.read_request()
        conn.send_raw(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1000000000\r\n"
                      b"Content-Type: text/plain\r\n\r\n")
        chunk = b"overloaded " * 10_000
        while sent[0] < 1_000_000_000:
            conn.send_raw(chunk)
            sent[0] += len(chunk)

    with HostileServer(script) as server:
        error, took = timed_connect(server.url, 5.0)
    print(f"\nhuge error body: attempt ended after {took:.3f}s, server got {sent[0]} bytes "
          f"out: {error}")
    assert isinstance(error, ConnectionLost)
    assert str(error).startswith("HTTP 503 at handshake: overloaded overloaded")
    assert took < 1.0


def test_trickling_error_body_still_reports_the_status() -> None:
    """A 401 whose body never ends: the status is known, so it is a credential error
    (exit 77), not a timeout to retry forever."""

    def script(conn: HostileConn) -> None:
        conn.read_request()
        conn.send_raw(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 5000\r\n\r\n"
                      b'{"error": {"code": "invalid_api_key", "message": "bad key"')
        conn.trickle(b" " * 5000, 0.2)

    with HostileServer(script) as server:
        error, took = timed_connect(server.url, 1.0)
    assert isinstance(error, AuthError), error
    assert "HTTP 401 at handshake" in str(error)
    assert 0.9 < took < 1.5


def test_silent_tls_server_ends_at_the_deadline() -> None:
    def script(conn: HostileConn) -> None:
        conn.idle()  # accepts TCP, never answers the ClientHello

    with HostileServer(script) as server:
        url = server.url.replace("ws://", "wss://")
        error, took = timed_connect(url, 1.0)
    assert "connect timed out after 1s (while TLS handshake with 127.0.0.1)" in str(error)
    assert 0.9 < took < 1.5


def test_hanging_name_lookup_is_abandoned(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real = socket.getaddrinfo

    def hanging(host: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if host in ("hangs.example", b"hangs.example"):
            release.wait(10)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        error, took = timed_connect("ws://hangs.example/v1/realtime", 0.5)
    finally:
        release.set()
    assert str(error) == "connect timed out after 0.5s (while resolving hangs.example)"
    assert took < 0.9


@pytest.mark.parametrize("host", ["api..example.com", "\u00e9" + "x" * 70 + ".example"])
def test_a_malformed_host_name_is_a_failed_lookup(host: str) -> None:
    """An empty or over-long label: a lookup failure like any other, not a KeyError from a
    helper thread that died of the idna codec's UnicodeError (with its traceback on
    stderr). The ASCII name never reaches the codec; the non-ASCII one does and is
    refused there."""
    seen: list[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_value or Exception())
    try:
        error, _took = timed_connect(f"ws://{host}/v1/realtime", 2.0)
    finally:
        threading.excepthook = previous
    assert isinstance(error, ConnectionLost), repr(error)
    # The resolver refuses an empty label at once; a slow DNS would make it a timeout.
    assert ("name resolution failed" in str(error)
            or str(error).startswith("connect timed out")), str(error)
    assert seen == []


def test_connect_through_the_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """https_proxy/http_proxy keep working (websocket-client honoured them before)."""

    def script(conn: HostileConn) -> None:
        request = conn.read_request()
        assert request.startswith(b"CONNECT realtime.example:80 HTTP/1.1")
        conn.send_raw(b"HTTP/1.1 200 Connection established\r\n\r\n")
        conn.configure()
        conn.serve()

    with HostileServer(script) as server:
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{server.port}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        with open_session("ws://realtime.example/v1/realtime") as session:
            assert session.session_id == "sess_0"


# -- 5. a blocked send is a silent peer ---------------------------------------------------


def test_send_to_a_peer_that_stopped_reading_times_out_silent() -> None:
    def script(conn: HostileConn) -> None:
        conn.configure()
        conn.idle()

    with HostileServer(script, rcvbuf=4096, maxseg=536) as server, \
            open_session(server.url) as session:
        pcm = os.urandom(960)
        started = time.monotonic()
        with pytest.raises(ConnectionLost) as info:
            while time.monotonic() - started < 10:
                session.send_audio(pcm, -20.0)
        took = time.monotonic() - started
    assert info.value.silent
    assert "send timed out after 0.2s: the server stopped reading" in str(info.value)
    assert took < 5.0


def test_a_stuck_sender_does_not_hold_up_the_reader() -> None:
    """websocket-client answers pings from the reading thread; while the sender holds the
    socket (blocked on a peer that does not read), the answer is skipped, not waited for."""
    frames: Frames = queue.Queue()
    with HostileServer(sender(frames)) as server:
        t = transport(server.url)
        session = RealtimeSession(t, SessionSettings(), new_dispatcher(), DirectOutbox(),
                                  update_timeout_s=5.0)
        try:
            session.establish(threading.Event())
            session.start_reader()
            assert t._ws.lock.acquire(timeout=1)  # the stuck sender
            try:
                frames.put(HostileConn.frame(PING, b"still there?"))
                frames.put(HostileConn.frame(
                    TEXT, b'{"type": "input_audio_buffer.speech_started"}'))
                worst = 0.0
                deadline = time.monotonic() + 3
                while not session.speech_active and time.monotonic() < deadline:
                    worst = max(worst, time.monotonic() - session.reader_beat)
                    time.sleep(0.01)
                assert session.speech_active
                assert worst < 0.6
            finally:
                t._ws.lock.release()
            assert not session.failed.is_set()
        finally:
            session.close()


SOURCE = speech(40.0, RATE)


def test_daemon_replays_everything_a_non_reading_server_may_not_have_read(
        tmp_path: Path) -> None:
    """The first server reads for a second, then stops reading (small TCP buffers, as over
    a real link); the send times out, the session fails silent, the next one gets the rest:
    no chunk lost."""

    def script(conn: HostileConn) -> None:
        conn.configure()
        if conn.index == 0:
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                frame = conn.recv_frame()
                if frame.opcode == TEXT:
                    conn.on_event(json.loads(frame.payload))
            conn.idle()
        conn.serve()

    config = wav_config(tmp_path, "", SOURCE, {
        # Only the send may notice: no pong or stall check first.
        "server": {"pong_timeout_s": 60.0},
        "health": {"stall_timeout_s": 60.0},
    })
    with HostileServer(script, rcvbuf=4096, maxseg=536) as server:
        config["server"]["url"] = server.url
        with running_daemon(tmp_path, config) as daemon:
            assert daemon.wait_log(r"session sess_0 ended: (send|ping) timed out", 15), daemon.log()
            assert wait_until(lambda: len(server.conns) >= 2 and
                              len(server.conns[1].audio) > 3 * RATE * 2, 15), daemon.log()
            assert daemon.stop() == 0
            log = daemon.log()
        audio = [bytes(conn.audio) for conn in server.conns]
    account = account_audio(SOURCE, audio)
    print(f"\nnon-reading server: {account}")
    assert "the server stopped reading" in log
    assert account.unknown == 0 and account.lost == 0, account
    assert account.duplicated <= account.per_session[0][1] + 1, account


@pytest.mark.parametrize(("answer", "expected"), [
    (b"garbage\r\n\r\n", "cannot connect: "),
    (b"HTTP/1.1 101 Switching Protocols\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n",
     "cannot connect: the HTTP upgrade answer's head is too long"),
])
def test_garbage_upgrade_answers_fail_the_attempt_cleanly(answer: bytes, expected: str) -> None:
    def script(conn: HostileConn) -> None:
        conn.read_request()
        conn.send_raw(answer)

    with HostileServer(script) as server:
        error, took = timed_connect(server.url, 5.0)
    assert isinstance(error, ConnectionLost) and str(error).startswith(expected), error
    assert took < 2.0


# -- TLS over the socket we open ourselves -----------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl); skipped without openssl."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", str(key), "-out", str(cert), "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make a test certificate: {exc}")
    return cert, key


def test_tls_session_streams_and_a_wrong_certificate_is_named(
        certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def script(conn: HostileConn) -> None:
        conn.configure()
        conn.serve_in_background()
        while not conn.audio:
            if conn.stop.wait(0.02):
                return
        conn.send_json({"type": "input_audio_buffer.speech_started", "audio_start_ms": 1})
        conn.idle()

    with HostileServer(script, tls=context) as server:
        with open_session(server.url, ca_file=str(cert)) as session:
            session.send_audio(b"\x01\x00" * 480, -20.0)
            assert wait_until(lambda: session.speech_active, 5)
            assert not session.failed.is_set()
        assert bytes(server.conns[0].audio) == b"\x01\x00" * 480
        error, _ = timed_connect(server.url, 2.0)  # the system's CAs do not know it
    assert isinstance(error, ConnectionLost)
    assert str(error).startswith("TLS certificate rejected")
