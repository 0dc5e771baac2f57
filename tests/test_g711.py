"""G.711 tables against two references, the wire codecs, the format checks, and the parts
that put G.711 on the wire and take it off (session encoder, answer decoding, talkback).

References: Python 3.11's `audioop` (C, the classic Sun g711.c algorithm) and a scalar
implementation of the ITU-T G.711 segment search written here, so a bug shared by the
numpy tables and one reference still fails against the other.
"""

from __future__ import annotations

import base64
import json
import threading
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from fakes import DirectOutbox, EventRecorder, ScriptedTransport
from test_talkback import FakeSpeaker

from edgevoice.audio import g711
from edgevoice.audio.resample import resample
from edgevoice.daemon.talkback import Talkback
from edgevoice.errors import ConfigError
from edgevoice.realtime import protocol
from edgevoice.realtime.session import RealtimeSession, new_dispatcher
from edgevoice.settings import SessionSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL = np.arange(-32768, 32768, dtype=np.int16)
ALL_BYTES = ALL.astype("<i2").tobytes()
CODES = bytes(range(256))


# -- the scalar ITU-T G.711 reference (segment search, as in the recommendation) ---------

def _search(value: int, ends: tuple[int, ...]) -> int:
    for seg, end in enumerate(ends):
        if value <= end:
            return seg
    return len(ends)


_U_ENDS = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_A_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def ref_lin2ulaw(sample: int) -> int:
    value = sample >> 2  # 14-bit magnitude domain
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, 8159) + (0x84 >> 2)
    seg = _search(value, _U_ENDS)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((value >> (seg + 1)) & 0xF)) ^ mask


def ref_ulaw2lin(code: int) -> int:
    code = ~code & 0xFF
    t = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return 0x84 - t if code & 0x80 else t - 0x84


def ref_lin2alaw(sample: int) -> int:
    value = sample >> 3  # 13-bit
    if value >= 0:
        mask = 0xD5
    else:
        mask, value = 0x55, -value - 1
    seg = _search(value, _A_ENDS)
    if seg >= 8:
        return 0x7F ^ mask
    code = seg << 4
    code |= (value >> 1 if seg < 2 else value >> seg) & 0xF
    return code ^ mask


def ref_alaw2lin(code: int) -> int:
    code ^= 0x55
    t = (code & 0x0F) << 4
    seg = (code & 0x70) >> 4
    t = t + 8 if seg == 0 else (t + 0x108) << (seg - 1) if seg > 1 else t + 0x108
    return t if code & 0x80 else -t


def _audioop(name: str, data: bytes) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out: bytes = getattr(audioop, name)(data, 2)
        return out


# -- bit exactness ------------------------------------------------------------------------

def test_mulaw_encode_is_bit_exact_for_every_int16() -> None:
    got = g711.ulaw_encode(ALL)
    assert got.dtype == np.uint8 and got.size == 65536
    assert got.tobytes() == _audioop("lin2ulaw", ALL_BYTES)
    assert got.tolist() == [ref_lin2ulaw(int(x)) for x in ALL]


def test_alaw_encode_is_bit_exact_for_every_int16() -> None:
    got = g711.alaw_encode(ALL)
    assert got.tobytes() == _audioop("lin2alaw", ALL_BYTES)
    assert got.tolist() == [ref_lin2alaw(int(x)) for x in ALL]


def test_decode_tables_are_bit_exact_for_every_code() -> None:
    mu, a = g711.ulaw_decode(CODES), g711.alaw_decode(CODES)
    assert mu.dtype == np.int16 and a.dtype == np.int16
    assert mu.astype("<i2").tobytes() == _audioop("ulaw2lin", CODES)
    assert a.astype("<i2").tobytes() == _audioop("alaw2lin", CODES)
    assert mu.tolist() == [ref_ulaw2lin(c) for c in range(256)]
    assert a.tolist() == [ref_alaw2lin(c) for c in range(256)]
    # Known anchors of the standard: mu-law 0xFF and 0x7F are the two zeros, A-law 0xD5
    # is +8, 0x55 is -8, and the extremes are +-32124 / +-32256.
    assert (mu[0xFF], mu[0x7F], mu[0x00], mu[0x80]) == (0, 0, -32124, 32124)
    assert (a[0xD5], a[0x55], a[0xAA], a[0x2A]) == (8, -8, 32256, -32256)


@pytest.mark.parametrize("fmt", ["pcmu", "pcma"])
def test_round_trip_is_exact_on_codes_and_bounded_on_samples(fmt: str) -> None:
    codes = np.arange(256, dtype=np.uint8)
    decoded = g711.decode(fmt, codes.tobytes())
    again = np.frombuffer(g711.encode(fmt, decoded), dtype=np.uint8)
    if fmt == "pcmu":  # 0x7F and 0xFF both decode to 0, which encodes as 0xFF
        codes = np.where(codes == 0x7F, 0xFF, codes).astype(np.uint8)
    assert np.array_equal(again, codes)
    # Every sample comes back within half its segment's step (plus the clip at the top).
    back = g711.decode(fmt, g711.encode(fmt, ALL)).astype(np.int32)
    err = np.abs(back - ALL.astype(np.int32))
    step = np.maximum(np.abs(ALL.astype(np.int32)) // 16, 16)
    inside = np.abs(ALL.astype(np.int32)) < 32000
    assert np.all(err[inside] <= step[inside])


def test_encode_refuses_float_input_and_unknown_formats() -> None:
    with pytest.raises(TypeError):
        g711.ulaw_encode(np.zeros(4, dtype=np.float64))
    with pytest.raises(ValueError, match="unknown wire format"):
        g711.WireEncoder("g729")


# -- the wire codecs ----------------------------------------------------------------------

def _voice(seconds: float, rate: int = 24000, seed: int = 5) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    x = 6000 * np.sin(2 * np.pi * 300 * t) + 3000 * np.sin(2 * np.pi * 1250 * t)
    x += rng.normal(0, 300, t.size)
    out: npt.NDArray[np.int16] = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    return out


@pytest.mark.parametrize("fmt", ["pcmu", "pcma"])
def test_wire_encoder_chunking_equals_the_whole_signal(fmt: str) -> None:
    signal = _voice(1.5)
    whole = g711.WireEncoder(fmt)
    expected = whole.encode(signal.tobytes()) + whole.flush()
    # The same as the offline path: resample the clip, then one table lookup.
    assert expected == g711.encode(fmt, resample(signal, 24000, 8000))
    rng = np.random.default_rng(1)
    encoder = g711.WireEncoder(fmt)
    pieces, i = [], 0
    while i < signal.size:
        n = int(rng.integers(1, 1200))
        pieces.append(encoder.encode(signal[i:i + n].tobytes()))
        i += n
    pieces.append(encoder.flush())
    assert b"".join(pieces) == expected
    # One byte per 8 kHz sample, and the filter's delay (16 samples) in the flushed tail.
    assert len(expected) == signal.size // 3 + round(encoder._resampler.delay_s * 8000)


def test_pcm_passes_through_the_encoder_untouched() -> None:
    data = _voice(0.1).tobytes()
    encoder = g711.WireEncoder("pcm")
    assert encoder.rate == 24000 and encoder.encode(data) == data and encoder.flush() == b""


@pytest.mark.parametrize("fmt", ["pcmu", "pcma"])
def test_wire_decoder_brings_g711_back_to_24k(fmt: str) -> None:
    signal = _voice(1.0)
    wire = g711.encode(fmt, resample(signal, 24000, 8000))
    decoder = g711.WireDecoder(fmt, 24000)
    out = np.concatenate([decoder.decode(wire[i:i + 160]) for i in range(0, len(wire), 160)]
                         + [decoder.flush()])
    # The reference went 24 -> 8 -> 24 kHz without G.711: the difference is the coding.
    reference = resample(resample(signal, 24000, 8000), 8000, 24000)
    assert out.size == reference.size
    ref, got = reference.astype(np.float64), out.astype(np.float64)
    snr = 10 * np.log10(np.sum(ref**2) / np.sum((got - ref) ** 2))
    assert snr > 30, snr


# -- the protocol ---------------------------------------------------------------------------

def test_session_config_names_the_formats_like_the_ga_types() -> None:
    config = protocol.session_config(SessionSettings(input_format="pcmu", output_format="pcma"))
    assert config["audio"]["input"]["format"] == {"type": "audio/pcmu"}  # no rate field
    assert config["audio"]["output"]["format"] == {"type": "audio/pcma"}
    default = protocol.session_config(SessionSettings())
    assert default["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert default["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    transcribe = protocol.session_config(SessionSettings(mode="transcribe",
                                                         input_format="pcma"))
    assert transcribe["audio"]["input"]["format"] == {"type": "audio/pcma"}


def _effective(inp: dict[str, Any] | None, out: dict[str, Any] | None) -> dict[str, Any]:
    audio: dict[str, Any] = {}
    if inp is not None:
        audio["input"] = {"format": inp}
    if out is not None:
        audio["output"] = {"format": out, "voice": "marin"}
    return {"audio": audio}


def test_effective_format_check_accepts_what_was_asked() -> None:
    protocol.check_effective_input(_effective({"type": "audio/pcmu"}, {"type": "audio/pcma"}),
                                   "pcmu", "pcma")
    protocol.check_effective_input({"input_audio_format": "g711_alaw",
                                    "output_audio_format": "g711_ulaw"}, "pcma", "pcmu")
    # A transcription session has no output to check.
    protocol.check_effective_formats(_effective({"type": "audio/pcma"}, None),
                                     SessionSettings(mode="transcribe", input_format="pcma"))


@pytest.mark.parametrize(("effective", "inp", "out", "message"), [
    (_effective({"type": "audio/pcm", "rate": 24000}, {"type": "audio/pcmu"}), "pcmu", "pcmu",
     r"session.audio.input.format.type: server uses 'audio/pcm', edgevoice sends "
     r"'audio/pcmu' \(session.input_format: pcmu\)"),
    (_effective({"type": "audio/pcma"}, {"type": "audio/pcmu"}), "pcmu", "pcmu",
     r"input.format.type: server uses 'audio/pcma'"),
    (_effective({"type": "audio/pcmu"}, {"type": "audio/pcm", "rate": 24000}), "pcmu", "pcmu",
     r"session.audio.output.format.type: server uses 'audio/pcm', edgevoice expects "
     r"'audio/pcmu' \(session.output_format: pcmu\)"),
    (_effective({"type": "audio/pcm"}, {"type": "audio/pcm", "rate": 16000}), "pcm", "pcm",
     r"session.audio.output.format.rate: server uses 16000"),
    (_effective({"type": "audio/pcmu"}, None), "pcmu", "pcma",
     r"lacks session.audio.output.format.*session.output_format: pcma"),
    ({"input_audio_format": "pcm16"}, "pcmu", None,
     r"session.input_audio_format: server uses 'pcm16', edgevoice sends g711_ulaw"),
])
def test_effective_format_check_rejects_another_format(
        effective: dict[str, Any], inp: str, out: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        protocol.check_effective_input(effective, inp, out)


def _delta(wire: bytes, fmt: str, item: str = "item_1") -> protocol.ServerEvent:
    event = protocol.parse_server_event(json.dumps(
        {"type": "response.output_audio.delta", "response_id": "resp_1", "item_id": item,
         "output_index": 0, "content_index": 0,
         "delta": base64.b64encode(wire).decode("ascii")}))
    return protocol.ServerEvent(event.type, event.data, audio_format=fmt)


@pytest.mark.parametrize("fmt", ["pcmu", "pcma"])
def test_a_g711_delta_decodes_to_8k_pcm_and_counts_as_24k_audio(fmt: str) -> None:
    samples = _voice(0.1, rate=8000)
    event = _delta(g711.encode(fmt, samples), fmt)
    pcm = protocol.decode_audio_delta(event)
    assert pcm == g711.decode(fmt, g711.encode(fmt, samples)).astype("<i2").tobytes()
    assert protocol.delta_rate(event) == 8000
    assert protocol.delta_pcm24k_bytes(event) == samples.size * 3 * 2  # 100 ms at 24 kHz
    assert protocol.decode_audio_delta(event) is pcm  # decoded once


# -- the session's encoder and decoder, with a scripted server -----------------------------

def _session(transport: ScriptedTransport, settings: SessionSettings
             ) -> tuple[RealtimeSession, EventRecorder]:
    dispatcher = new_dispatcher()
    recorder = EventRecorder()
    recorder.register(dispatcher)
    session = RealtimeSession(transport, settings, dispatcher, DirectOutbox(),
                              update_timeout_s=2.0)
    return session, recorder


def _updated(inp: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    return {"type": "session.updated", "event_id": "e_up", "session": _effective(inp, out)}


def test_establish_refuses_a_server_that_keeps_another_input_format() -> None:
    settings = SessionSettings(input_format="pcmu", output_format="pcmu")
    wrong = ScriptedTransport({"session.update": [
        _updated({"type": "audio/pcm", "rate": 24000}, {"type": "audio/pcmu"})]})
    session, _ = _session(wrong, settings)
    with pytest.raises(ConfigError, match=r"input.format.type: server uses 'audio/pcm'"):
        session.establish(threading.Event())
    sent = wrong.sent[0]["session"]["audio"]
    assert sent["input"]["format"] == {"type": "audio/pcmu"}
    assert sent["output"]["format"] == {"type": "audio/pcmu"}
    right = ScriptedTransport({"session.update": [
        _updated({"type": "audio/pcmu"}, {"type": "audio/pcmu"})]})
    session, _ = _session(right, settings)
    session.establish(threading.Event())  # accepted
    assert session.configured_at > 0


def test_the_session_encodes_chunks_with_its_own_encoder_and_returns_wire_bytes() -> None:
    settings = SessionSettings(input_format="pcmu")
    transport = ScriptedTransport()
    session, _ = _session(transport, settings)
    signal = _voice(0.2)
    sent = 0
    for i in range(0, signal.size, 480):
        sent += session.send_audio(signal[i:i + 480].tobytes(), -20.0, None)
    appends = [e for e in transport.sent if e["type"] == "input_audio_buffer.append"]
    wire = b"".join(base64.b64decode(e["audio"]) for e in appends)
    assert len(appends) == 10 and sent == len(wire) and 0 < len(wire) <= signal.size // 3
    assert wire == g711.WireEncoder("pcmu").encode(signal.tobytes())
    assert session.timeline.offset_ms == pytest.approx(200.0)  # 24 kHz audio time
    # A new session starts from a fresh filter state: the same first chunk, the same bytes.
    again_transport = ScriptedTransport()
    again, _ = _session(again_transport, settings)
    again.send_audio(signal[:480].tobytes(), -20.0)
    assert base64.b64decode(again_transport.sent[0]["audio"]) == base64.b64decode(
        appends[0]["audio"])


def test_the_session_marks_answer_deltas_with_its_output_format() -> None:
    transport = ScriptedTransport()
    session, recorder = _session(transport, SessionSettings(output_format="pcmu"))
    samples = _voice(0.05, rate=8000)
    transport.push({"type": "response.output_audio.delta", "response_id": "r", "item_id": "i",
                    "output_index": 0, "content_index": 0,
                    "delta": base64.b64encode(g711.encode("pcmu", samples)).decode()})
    event = None
    while event is None:
        event = session._receive()
    assert event.audio_format == "pcmu" and protocol.delta_rate(event) == 8000
    assert protocol.decode_audio_delta(event) == g711.ulaw_decode(
        g711.ulaw_encode(samples)).astype("<i2").tobytes()
    assert recorder.events[-1][1].audio_format == "pcmu"  # what every handler saw


class RateSpeaker(FakeSpeaker):
    def __init__(self) -> None:
        super().__init__()
        self.rates: list[int] = []

    def play(self, item_id: str, content_index: int, pcm24k: bytes,
             rate: int = 24000) -> None:
        self.rates.append(rate)
        super().play(item_id, content_index, pcm24k, rate)


class _Session:
    session_id = "sess_1"
    response_active = True


@pytest.mark.parametrize("fmt", ["pcm", "pcma"])
def test_talkback_hands_answers_to_the_speaker_with_their_rate(fmt: str) -> None:
    speaker = RateSpeaker()
    talkback = Talkback(speaker, DirectOutbox())
    rate = 24000 if fmt == "pcm" else 8000
    samples = _voice(0.06, rate=rate)
    event = _delta(g711.encode(fmt, samples), fmt)
    talkback._on_audio_delta(_Session(), event)  # type: ignore[arg-type]
    assert speaker.rates == [rate]
    assert speaker.queued["item_1"] == samples.size * 2  # PCM16 at that rate


def test_g711_frames_cost_under_a_quarter_of_pcm_frames_on_the_wire() -> None:
    """What the README promises, from the exact text frames edgevoice sends (20 ms chunks):
    base64 and the JSON envelope included."""
    pcm = _voice(0.02)
    per_s = {fmt: 50 * len(protocol.encode(protocol.audio_append(
        g711.WireEncoder(fmt).encode(pcm.tobytes()) if fmt == "pcm"
        else g711.encode(fmt, resample(pcm, 24000, 8000)[:160])))) for fmt in ("pcm", "pcmu")}
    assert per_s["pcm"] > 64000 and per_s["pcmu"] < 16000, per_s


def test_history_measures_a_g711_answer_in_audio_time() -> None:
    """A truncate's cut is a fraction of the answer's length: a G.711 byte is 1/8 ms."""
    from edgevoice.realtime.history import History

    history = History()
    samples = _voice(0.5, rate=8000)
    history._on_audio_delta(None, _delta(g711.encode("pcmu", samples), "pcmu"))
    pcm = _voice(0.5)
    history._on_audio_delta(None, _delta(pcm.tobytes(), "pcm", item="item_2"))
    first, second = history.turns()
    assert first.audio_bytes == second.audio_bytes == 24000  # 500 ms as 24 kHz PCM16
