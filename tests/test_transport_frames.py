"""The sender's own text frames: byte for byte what websocket-client writes."""

from __future__ import annotations

import os

import pytest
import websocket

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
