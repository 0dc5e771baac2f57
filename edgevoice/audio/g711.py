"""ITU-T G.711 mu-law and A-law in numpy, and the wire codecs built on them.

G.711 is how a metered or cellular link carries speech at 64 kbit/s instead of the
384 kbit/s of 24 kHz PCM16: one byte per sample at 8 kHz. The conversion is bit-exact to
the classic Sun ``g711.c`` (and Python's former ``audioop``): mu-law quantises the top 14
bits of a sample with a bias of 0x84, A-law the top 13 bits, and both decode to the
segment's midpoint. Every possible int16 is encoded once, when a table is first needed
(65,536 entries, 64 KiB each), so encoding a chunk is one fancy-index lookup and decoding
one into a 256-entry table: no per-sample Python on a Pi.

``WireEncoder`` and ``WireDecoder`` turn the capture pipeline's 24 kHz PCM16 into what a
session's format puts on the wire and back; each keeps the resampler state of one stream,
so one instance belongs to one session (or one answer item).
"""

from __future__ import annotations

import functools
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from edgevoice.audio.resample import StreamingResampler

Int16Array = npt.NDArray[np.int16]
UInt8Array = npt.NDArray[np.uint8]
WireFormat = Literal["pcm", "pcmu", "pcma"]
_Ints = npt.NDArray[np.signedinteger[Any]]
_Table = TypeVar("_Table", Int16Array, UInt8Array)

PCM_RATE = 24000  # audio/pcm: 24 kHz mono PCM16 little-endian
G711_RATE = 8000  # audio/pcmu and audio/pcma: 8 kHz, one byte per sample
WIRE_RATES: dict[str, int] = {"pcm": PCM_RATE, "pcmu": G711_RATE, "pcma": G711_RATE}

_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # the largest biased 14-bit magnitude before the bias is added
# Segment end points (inclusive) in the magnitude domain each law quantises in.
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], np.int32)


def _all_int16() -> npt.NDArray[np.int32]:
    """Every int16 value, indexed by its unsigned bit pattern (so a view as uint16 indexes)."""
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _frozen(table: _Table) -> _Table:
    table.flags.writeable = False
    return table


def _code_table(seg: _Ints, mantissa: _Ints, mask: _Ints) -> UInt8Array:
    """Both laws' last step: segment and mantissa (0x7F past the last segment), xor the
    law's mask for the sign, as a read-only table."""
    code = np.where(seg >= 8, 0x7F, (seg << 4) | (mantissa & 0x0F))
    return _frozen((code ^ mask).astype(np.uint8))


@functools.cache
def _ulaw_encode_table() -> UInt8Array:
    pcm = _all_int16() >> 2  # 14-bit, arithmetic shift as in g711.c
    negative = pcm < 0
    magnitude = np.minimum(np.where(negative, -pcm, pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, magnitude, side="left")
    return _code_table(seg, magnitude >> (seg + 1), np.where(negative, 0x7F, 0xFF))


@functools.cache
def _ulaw_decode_table() -> Int16Array:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return _frozen(np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16))


@functools.cache
def _alaw_encode_table() -> UInt8Array:
    pcm = _all_int16() >> 3  # 13-bit
    negative = pcm < 0
    magnitude = np.where(negative, -pcm - 1, pcm)
    seg = np.searchsorted(_ALAW_SEG_END, magnitude, side="left")
    shift = np.where(seg < 2, 1, seg)
    return _code_table(seg, magnitude >> np.minimum(shift, 8), np.where(negative, 0x55, 0xD5))


@functools.cache
def _alaw_decode_table() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return _frozen(np.where(a & 0x80, t, -t).astype(np.int16))


def _as_int16(samples: Int16Array) -> Int16Array:
    if not isinstance(samples, np.ndarray) or samples.dtype != np.int16:
        raise TypeError(f"samples must be a numpy int16 array, got "
                        f"{getattr(samples, 'dtype', type(samples).__name__)}")
    return samples


def _codes(data: bytes | bytearray | memoryview | UInt8Array) -> UInt8Array:
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False)
    return np.frombuffer(data, dtype=np.uint8)


def ulaw_encode(samples: Int16Array) -> UInt8Array:
    """mu-law codes of int16 samples (one byte each)."""
    table = _ulaw_encode_table()
    return table[_as_int16(samples).view(np.uint16)]


def ulaw_decode(data: bytes | bytearray | memoryview | UInt8Array) -> Int16Array:
    """int16 samples of mu-law codes."""
    return _ulaw_decode_table()[_codes(data)]


def alaw_encode(samples: Int16Array) -> UInt8Array:
    """A-law codes of int16 samples (one byte each)."""
    table = _alaw_encode_table()
    return table[_as_int16(samples).view(np.uint16)]


def alaw_decode(data: bytes | bytearray | memoryview | UInt8Array) -> Int16Array:
    """int16 samples of A-law codes."""
    return _alaw_decode_table()[_codes(data)]


def encode(fmt: str, samples: Int16Array) -> bytes:
    """Wire bytes of int16 samples already at the format's rate."""
    if fmt == "pcm":
        return _as_int16(samples).astype("<i2", copy=False).tobytes()
    if fmt == "pcmu":
        return ulaw_encode(samples).tobytes()
    if fmt == "pcma":
        return alaw_encode(samples).tobytes()
    raise ValueError(f"unknown wire format {fmt!r} (pcm, pcmu or pcma)")


def decode(fmt: str, data: bytes | bytearray | memoryview) -> Int16Array:
    """int16 samples at the format's rate of wire bytes (an odd PCM byte is ignored)."""
    if fmt == "pcm":
        view = memoryview(data)[: len(data) // 2 * 2]
        return np.frombuffer(view, dtype="<i2").astype(np.int16)
    if fmt == "pcmu":
        return ulaw_decode(data)
    if fmt == "pcma":
        return alaw_decode(data)
    raise ValueError(f"unknown wire format {fmt!r} (pcm, pcmu or pcma)")


def wire_rate(fmt: str) -> int:
    try:
        return WIRE_RATES[fmt]
    except KeyError:
        raise ValueError(f"unknown wire format {fmt!r} (pcm, pcmu or pcma)") from None


class WireEncoder:
    """24 kHz PCM16 chunks in, one format's wire bytes out, for one continuous stream.

    For G.711 the 24 kHz -> 8 kHz resampler keeps its filter state between chunks, so
    the bytes of any chunking equal those of the whole signal (less the filter's held-back
    tail, which ``flush`` gives). PCM passes through without a copy.
    """

    def __init__(self, fmt: str) -> None:
        self.format = fmt
        self.rate = wire_rate(fmt)
        self._resampler = StreamingResampler(PCM_RATE, self.rate)

    def encode(self, pcm: bytes) -> bytes:
        if self.format == "pcm":
            return pcm
        view = memoryview(pcm)[: len(pcm) // 2 * 2]
        samples = np.frombuffer(view, dtype="<i2").astype(np.int16, copy=False)
        return encode(self.format, self._resampler.process(samples))

    def flush(self) -> bytes:
        """The filter's tail, then a fresh state for a new stream."""
        return encode(self.format, self._resampler.flush())


class WireDecoder:
    """One format's wire bytes in, int16 samples at `out_rate` out, for one stream."""

    def __init__(self, fmt: str, out_rate: int | None = None) -> None:
        self.format = fmt
        self.wire_rate = wire_rate(fmt)
        self.rate = out_rate or self.wire_rate
        self._resampler = StreamingResampler(self.wire_rate, self.rate)

    def decode(self, data: bytes) -> Int16Array:
        return self._resampler.process(decode(self.format, data))

    def flush(self) -> Int16Array:
        return self._resampler.flush()
