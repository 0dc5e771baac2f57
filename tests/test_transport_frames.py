"""The sender's own text frames: byte for byte what websocket-client writes."""

from __future__ import annotations

import os
import random
import struct
import time

import pytest
import websocket
from hostile_server import CLOSE, PING, TEXT, HostileConn, HostileServer

from edgevoice.errors import ConnectionLost
from edgevoice.realtime import transport


@pytest.mark.parametrize("length", [0, 1, 5, 125, 126, 127, 1365, 65535, 65536, 70001])
def test_text_frame_is_websocket_clients_frame(length: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    text = ("é" * (length // 2)) + ("a" * (length % 2))  # multi-byte UTF-8 too
    key = os.urandom(4)
    reference = websocket.ABNF.create_frame(text, websocket.ABNF.OPCODE_TEXT)
    reference.get_mask_key = lambda _n: key
    monkeypatch.setattr(os, "urandom", lambda _n: key)  # the one transport calls
    assert transport._text_frame(text) == reference.format()


def test_text_frame_mask_key_is_fresh_per_frame() -> None:
    frames = {transport._text_frame("x" * 200)[4:8] for _ in range(8)}
    assert len(frames) > 1  # 8 random 32-bit keys: equal by chance with p ~ 1e-8


# -- receiving: the transport reads ahead, the frames come out intact ---------------------


def test_frames_read_ahead_come_out_whole_and_in_order() -> None:
    """Frames of every header size, sent together (many per socket read) and then cut into
    odd pieces (a frame's header and payload across reads), over a real 127.0.0.1
    connection: every text comes out once, whole, in order; a ping in between is not
    returned as a text; the close after them is seen."""
    rng = random.Random(7)
    texts = [_text(n, rng) for n in (0, 1, 125, 126, 6500, 65535, 65536, 70001, 200_000)]
    together = b"".join(HostileConn.frame(TEXT, t.encode()) for t in texts)
    together += HostileConn.frame(PING, b"hi")
    pieces = b"".join(HostileConn.frame(TEXT, t.encode()) for t in texts)
    close = HostileConn.frame(CLOSE, struct.pack("!H", 1000) + b"bye")

    def script(conn: HostileConn) -> None:
        conn.accept()
        conn.send_raw(together)
        at = 0
        while at < len(pieces):  # cuts at 1 to 9000 bytes, never aligned to a frame
            step = rng.randint(1, 9000)
            conn.send_raw(pieces[at:at + step])
            at += step
            if rng.random() < 0.05:
                time.sleep(0.01)
        conn.send_raw(close)
        conn.idle()

    got: list[str] = []
    with HostileServer(script) as server:
        ws = transport.WebSocketTransport(server.url, {}, connect_timeout_s=5.0,
                                          socket_timeout_s=0.2, ping_interval_s=60.0,
                                          pong_timeout_s=60.0)
        try:
            ws.connect()
            deadline = time.monotonic() + 20
            with pytest.raises(ConnectionLost, match="1000"):
                while time.monotonic() < deadline:
                    text = ws.recv_text()
                    if text is not None:
                        got.append(text)
        finally:
            ws.abort()
    assert [len(t) for t in got] == [len(t) for t in texts * 2]
    assert got == texts * 2


def _text(n: int, rng: random.Random) -> str:
    """JSON-ish text of n characters (multi-byte UTF-8 in it), different every time."""
    body = "".join(rng.choice("abcdefghé{}[],:\"0123456789") for _ in range(n))
    return body[:n]
