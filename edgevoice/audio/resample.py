"""Streaming sample-rate conversion between device rates and the 24 kHz wire rate.

Capture devices run at whatever rate the hardware prefers (48 kHz, 44.1 kHz, 16 kHz ...) and
playback devices often refuse 24 kHz, while the speech API speaks 24 kHz mono int16 only. The
converter sits in the 20 ms capture and playback loops of a Raspberry-Pi-class board, so it is
built around three constraints:

* **Low latency.** A linear-phase Kaiser-windowed sinc whose half-length (the group delay) is
  kept under 2 ms; the transition band is as wide as that budget needs and no wider.
* **Chunking never changes the result.** Coefficients are quantised to integers and the
  int16 input is integral, so every product and every partial sum is an integer well below
  2**53: float64 arithmetic is then exact in any summation order, and BLAS, einsum, chunk
  boundaries and padding cannot perturb a single output sample. The one exception is asked
  for: ``single=True`` works in float32, half the work of the filter, for the speaker,
  where an output may differ by one LSB between chunkings and nothing compares them.
* **Cheap per chunk.** The polyphase bank is built once. Outputs come in groups of ``L`` that
  advance the input by ``M`` samples with the same phase pattern, so a whole chunk is one
  matrix product of strided input windows against a precomputed (window x phase) matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["FilterDesign", "StreamingResampler", "resample"]

Int16Array = npt.NDArray[np.int16]
Float64Array = npt.NDArray[np.float64]
# The filter's working arrays: float64 (exact) or float32 (``single``).
WorkArray = npt.NDArray[np.float64] | npt.NDArray[np.float32]

# Speech energy above 10 kHz is irrelevant to the API; keeping the band to 10 kHz when it fits
# lets the transition band be wide, which is what keeps the filter short and the delay low.
_PASS_EDGE_HZ = 10_000.0
# Where 10 kHz does not fit under the lower Nyquist (16 kHz, 8 kHz devices) keep this
# fraction of the lower rate instead.
_PASS_FRACTION = 0.4
# Kaiser design target; leaves margin over the 85 dB alias/image requirement once the
# length is rounded and the coefficients are quantised.
_STOP_DB = 95.0
# Upper bound on the group delay; only reached when the transition band has to be narrow.
_MAX_DELAY_S = 0.00195
# Fractional bits are chosen so that 32768 * sum(|taps|) stays below 2**51: integer sums in
# float64 are then exact with headroom.
_EXACT_BITS = 51
_INT16_BITS = 15
# Memory guards: a ratio that reduces to huge L/M (e.g. 47999:24000) needs L phases.
_MAX_BANK_COEFFS = 1 << 22
_MAX_GROUP_MATRIX = 1 << 20
# Small L (48 -> 24 kHz has L = 1) would mean one short matrix row per output; merging
# groups until a row yields this many outputs trades a few multiplies by zero for far less
# window copying. Measured (callgrind and interleaved timing, OpenBLAS): 16 beats 8, 24 and
# 32 at 48 -> 24 kHz (zeros are 17 % of a row instead of 30 %) and at 24 -> 8 kHz, and a
# multiple of 8 suits the BLAS micro-kernels.
_MIN_GROUP_OUTPUTS = 16
# Upsampling (24 -> 48 kHz has L = 2, M = 1) makes several outputs per input, so its
# windows overlap more and copying them costs more than the zeros: with OpenBLAS, 32 beat
# 16 at every upward conversion (24 -> 48 kHz: 26.6 against 29.9 µs per 100 ms, 18.6
# against 22.3 in float32) and tied where L is already large (24 -> 44.1 kHz). With the
# reference BLAS, 16 was faster at 24 -> 48 kHz (198 against 213 µs): the .deb Recommends
# OpenBLAS.
_MIN_GROUP_OUTPUTS_UP = 32
# Long one-shot inputs (whole WAV files) are converted in blocks so the temporary window
# matrix stays a few MB; results do not depend on block boundaries.
_MAX_BLOCK = 1 << 16
_INT16_MIN = -32768
_INT16_MAX = 32767
# 0-d arrays: a ufunc takes them ~30 % faster than Python scalars, and the per-call cost is
# what matters for 20 ms chunks.
# One pair per working type: a float64 bound would make numpy 2 clip float32 in float64.
_CLIPS = {np.dtype(t): (np.array(_INT16_MIN, dtype=t), np.array(_INT16_MAX, dtype=t))
          for t in (np.float64, np.float32)}


@dataclass(frozen=True)
class FilterDesign:
    """The numbers behind one conversion, kept so logs and tests can say what was built."""

    pass_hz: float
    stop_hz: float
    cutoff_hz: float
    stop_db: float
    beta: float
    half_width: float  # in input samples; equals the group delay
    taps_per_phase: int
    phases: int  # L: output samples per group
    step: int  # M: input samples per group


def _check_rate(name: str, value: object) -> int:
    # bool is an Integral, but True Hz is always a bug upstream.
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be a positive integer in Hz, got {value!r}")
    rate = int(value)
    if rate <= 0:
        raise ValueError(f"{name} must be a positive integer in Hz, got {value!r}")
    return rate


def _check_samples(samples: object) -> Int16Array:
    # Silent dtype conversion would turn float audio in [-1, 1] into silence; refuse instead.
    if not isinstance(samples, np.ndarray) or samples.dtype != np.int16:
        dtype = getattr(samples, "dtype", type(samples).__name__)
        raise TypeError(f"samples must be a numpy int16 array, got {dtype}")
    if samples.ndim != 1:
        raise ValueError(f"samples must be 1-D mono, got shape {samples.shape}")
    return samples


def _kaiser_beta(stop_db: float) -> float:
    if stop_db > 50.0:
        return 0.1102 * (stop_db - 8.7)
    if stop_db >= 21.0:
        return 0.5842 * math.pow(stop_db - 21.0, 0.4) + 0.07886 * (stop_db - 21.0)
    return 0.0


def _kaiser_half_span_s(stop_db: float, transition_hz: float) -> float:
    """Kaiser's length estimate, expressed as half the impulse response in seconds."""
    return (stop_db - 7.95) / (2.0 * 14.357 * transition_hz)


def _design(in_rate: int, out_rate: int, phases: int, step: int) -> tuple[FilterDesign, int]:
    """Choose band edges and length; returns the design and the half width in 1/L samples.

    The stop edge sits at the lower Nyquist frequency whenever the delay budget allows, so
    nothing that cannot be represented leaks in. When 10 kHz must stay flat close to the
    Nyquist (22.05 kHz) or the band is narrow in Hz (8 kHz), the budget cannot buy that
    steep a filter; the stop edge then moves up, but never beyond ``low - pass``, so images
    and aliases of passband content are always fully rejected and only the top sliver of
    the lower band is attenuated less.
    """
    low = float(min(in_rate, out_rate))
    nyquist = low / 2.0
    min_transition = (_STOP_DB - 7.95) / (2.0 * 14.357 * _MAX_DELAY_S)
    pass_hz = _PASS_EDGE_HZ if nyquist > _PASS_EDGE_HZ else _PASS_FRACTION * low
    pass_hz = max(min(pass_hz, (low - min_transition) / 2.0), 0.25 * low)
    stop_hz = max(nyquist, min(pass_hz + min_transition, low - pass_hz))
    half_s = _kaiser_half_span_s(_STOP_DB, stop_hz - pass_hz)
    # The delay is a whole number of 1/L input samples so flush() can count outputs exactly.
    half_sub = max(1, round(half_s * in_rate * phases))
    design = FilterDesign(
        pass_hz=pass_hz,
        stop_hz=stop_hz,
        cutoff_hz=(pass_hz + stop_hz) / 2.0,
        stop_db=_STOP_DB,
        beta=_kaiser_beta(_STOP_DB),
        half_width=half_sub / phases,
        taps_per_phase=2 * half_sub // phases + 1,
        phases=phases,
        step=step,
    )
    return design, half_sub


def _polyphase_bank(design: FilterDesign, in_rate: int, half_sub: int) -> Float64Array:
    """Sample the windowed sinc at every (phase, tap); row p serves output offset p/L.

    Tap j of phase p weighs input sample ``q - j`` for an output at input time ``q + p/L``,
    so its argument is ``j + p/L - W`` input samples from the kernel centre.
    """
    phases, taps = design.phases, design.taps_per_phase
    sub = np.arange(taps, dtype=np.int64)[None, :] * phases + np.arange(phases)[:, None]
    u_sub = sub - half_sub  # kernel argument in 1/L input samples, exact
    u = u_sub.astype(np.float64) / phases
    inside = np.abs(u_sub) <= half_sub
    ratio = np.where(inside, u / design.half_width, 1.0)
    window = np.i0(design.beta * np.sqrt(np.maximum(0.0, 1.0 - ratio * ratio)))
    window = window / np.i0(design.beta)
    norm_cutoff = design.cutoff_hz / in_rate
    kernel = 2.0 * norm_cutoff * np.sinc(2.0 * norm_cutoff * u) * window
    return np.asarray(np.where(inside, kernel, 0.0), dtype=np.float64)


def _quantise(bank: Float64Array) -> tuple[Float64Array, int]:
    """Round taps to integers that make every phase's DC gain exactly 2**shift.

    Exact per-phase unity gain means a constant input comes out unchanged, with no
    phase-dependent ripple that would show up as tones at multiples of the input rate.
    """
    abs_sum = float(np.abs(bank).sum(axis=1).max())
    shift = _EXACT_BITS - _INT16_BITS - math.ceil(math.log2(abs_sum + 1.0))
    scale = float(2**shift)
    coeffs = np.rint(bank * scale)
    residual = scale - coeffs.sum(axis=1)  # exact: integers far below 2**53
    centre = np.argmax(np.abs(coeffs), axis=1)
    coeffs[np.arange(coeffs.shape[0]), centre] += residual
    return coeffs, shift


def _to_int16(values: WorkArray) -> Int16Array:
    """Round and clip in place (``values`` is a fresh product, nobody else's), then narrow."""
    low, high = _CLIPS[values.dtype]
    np.rint(values, out=values)
    np.minimum(values, high, out=values)
    np.maximum(values, low, out=values)
    return values.astype(np.int16)


class StreamingResampler:
    """Converts a mono int16 stream chunk by chunk, carrying filter state between chunks.

    Output ``n`` is the kernel centred on input time ``n * in_rate / out_rate - delay``;
    ``process`` emits every output whose input window is complete, ``flush`` the rest.
    Equal rates bypass the filter entirely, so a 24 kHz device costs one copy and no delay.

    A 20 ms chunk needs only a few microseconds of arithmetic, so the per-call Python
    work decides the cost on a Pi: input is appended to one preallocated buffer that is
    compacted only when full, the group windows are a strided view built directly (not
    ``sliding_window_view``, which alone cost more than the product), and the
    ``2**-shift`` scale lives in the matrix, where multiplying by a power of two is exact.

    ``single=True`` does the filter's arithmetic in float32: half the multiply work and
    half the memory it streams through, for playback (with OpenBLAS 26-40 % less time per
    call, 36-40 % with the speaker's groups of 32; 1-5 % with the reference BLAS). It is
    not exact, so an output sample may differ by one LSB with the chunking (the rounding
    error is at most about 0.04 LSB, the coefficients keep 24 bits: more than 130 dB below
    full scale).
    """

    def __init__(self, in_rate: int, out_rate: int, *, single: bool = False) -> None:
        self.in_rate: int = _check_rate("in_rate", in_rate)
        self.out_rate: int = _check_rate("out_rate", out_rate)
        self._dtype = np.dtype(np.float32 if single else np.float64)
        common = math.gcd(self.in_rate, self.out_rate)
        self._phases = self.out_rate // common  # L
        self._step = self.in_rate // common  # M
        self._identity = self._phases == self._step
        self.design: FilterDesign | None = None
        self._half_sub = 0
        self._taps = 1
        # Taps scaled by 2**-shift (exact), reversed so that a window read in ascending
        # input order is a plain dot product; row p serves phase p.
        self._bank_rev: Float64Array = np.ones((1, 1), dtype=np.float64)
        self._group_matrix: WorkArray | None = None
        self._window_len = 1
        # Outputs are produced in groups sharing one phase pattern; the gathered fallback
        # uses the natural group of L outputs per M inputs.
        self._group_out = self._phases
        self._group_in = self._step
        if not self._identity:
            self._build()
        self.reset()

    def _build(self) -> None:
        design, half_sub = _design(self.in_rate, self.out_rate, self._phases, self._step)
        if design.phases * design.taps_per_phase > _MAX_BANK_COEFFS:
            raise ValueError(
                f"{self.in_rate} -> {self.out_rate} Hz reduces to {design.phases}/"
                f"{design.step} and would need {design.phases} filter phases; "
                "use standard device rates"
            )
        coeffs, shift = _quantise(_polyphase_bank(design, self.in_rate, half_sub))
        self.design = design
        self._half_sub = half_sub
        self._taps = design.taps_per_phase
        self._bank_rev = np.ascontiguousarray(coeffs[:, ::-1] * 2.0**-shift)
        phases, step, taps = self._phases, self._step, self._taps
        least = _MIN_GROUP_OUTPUTS_UP if phases > step else _MIN_GROUP_OUTPUTS
        merge = -(-least // phases)
        group_out = merge * phases
        # Input advance of each output in a (merged) group, relative to the group start.
        offsets = np.arange(group_out, dtype=np.int64) * step // phases
        window_len = taps + int(offsets[-1])
        if window_len * group_out <= _MAX_GROUP_MATRIX:
            matrix = np.zeros((window_len, group_out), dtype=np.float64)
            for t in range(group_out):
                matrix[offsets[t] : offsets[t] + taps, t] = self._bank_rev[(t * step) % phases]
            self._group_matrix = matrix.astype(self._dtype, copy=False)
            self._window_len = window_len
            self._group_out = group_out
            self._group_in = merge * step

    def reset(self) -> None:
        """Forget the stream: the next sample is treated as the first, after silence."""
        taps = self._taps
        # Input lives in _buf[_start:_fill]: _start is where the current group's first
        # window begins, the taps - 1 zeros stand for the silence before the stream. Past
        # _fill the buffer only ever holds zeros or old samples (finite values), which
        # meet zero taps or outputs that are discarded.
        self._slack = self._window_len + self._group_in
        item = self._dtype.itemsize
        self._row_strides = (self._group_in * item, item)
        self._buf: WorkArray = np.zeros(max(4096, 4 * self._slack), dtype=self._dtype)
        self._start = 0
        self._fill = taps - 1
        self._next = 0  # output index within the current group still to be produced
        self._n_in = 0
        self._n_out = 0

    @property
    def _hist(self) -> WorkArray:
        """The input still held for windows not yet complete (bounded by taps + a group)."""
        return self._buf[self._start : self._fill]

    @property
    def delay_s(self) -> float:
        """Group delay to subtract when aligning output with input timestamps."""
        return self._half_sub / (self._phases * self.in_rate)

    def process(self, samples: Int16Array) -> Int16Array:
        """Convert one chunk; output length varies by a sample to follow the exact ratio."""
        x = _check_samples(samples)
        if self._identity:
            return np.array(x, dtype=np.int16, copy=True)
        return _to_int16(self._convert(x))

    def flush(self) -> Int16Array:
        """Emit the outputs still held back by the filter delay, then reset for a new stream."""
        if self._identity:
            return np.zeros(0, dtype=np.int16)
        return _to_int16(self._drain())

    def process_f64(self, samples: Int16Array) -> Float64Array:
        """Like ``process`` but before rounding and clipping, in int16 units.

        Exposes the filter's own precision, e.g. to measure rejection below the int16
        quantisation floor or to mix before a single final rounding.
        """
        x = _check_samples(samples)
        if self._identity:
            return x.astype(np.float64)
        return self._convert(x).astype(np.float64, copy=False)

    def _convert(self, x: Int16Array) -> WorkArray:
        n = x.shape[0]
        if n > _MAX_BLOCK:
            blocks = range(0, n, _MAX_BLOCK)
            return np.concatenate([self._convert(x[i : i + _MAX_BLOCK]) for i in blocks])
        self._n_in += n
        fill = self._fill
        if fill + n + self._slack > self._buf.shape[0]:
            fill = self._compact(n)
        self._buf[fill : fill + n] = x  # int16 -> float, exact
        self._fill = fill + n
        return self._run(-1)

    def flush_f64(self) -> Float64Array:
        """Like ``flush`` but before rounding and clipping."""
        return self._drain().astype(np.float64, copy=False)

    def _drain(self) -> WorkArray:
        if self._identity or self._n_in == 0:
            self.reset()
            return np.zeros(0, dtype=self._dtype)
        # Outputs up to the end of the input once the delay is taken out:
        # n * M / L - W < n_in  <=>  n * M < n_in * L + W * L.
        phases, step = self._phases, self._step
        total = -(-(self._n_in * phases + self._half_sub) // step)
        wanted = total - self._n_out
        pad = self._half_sub // phases + 1
        fill = self._fill
        if fill + pad + self._slack > self._buf.shape[0]:
            fill = self._compact(pad)
        self._buf[fill : fill + pad] = 0.0
        self._fill = fill + pad
        acc = self._run(wanted)
        assert acc.shape[0] == wanted, "flush padding too short"
        self.reset()
        return acc

    def _compact(self, n: int) -> int:
        """Make room for ``n`` more samples (plus a window of slack); returns where to write.

        The kept input moves to the front only when the buffer is full, every few chunks:
        the buffer grows to hold four chunks of the size just given (a 100 ms answer delta
        compacted on every call into the first 4096 samples, 1-2 µs each time).
        """
        fill, start = self._fill, self._start
        kept = fill - start
        size = self._buf.shape[0]
        if 4 * (n + self._slack) > size:
            size = 4 * (kept + n + self._slack)
        buf = self._buf if size == self._buf.shape[0] else np.zeros(size, dtype=self._dtype)
        buf[:kept] = self._buf[start:fill]  # overlapping moves are handled by numpy
        self._buf = buf
        self._start = 0
        self._fill = kept
        return kept

    def _run(self, limit: int) -> WorkArray:
        """Produce every ready output (at most ``limit`` if it is not negative)."""
        start, first = self._start, self._next
        # Outputs k >= 0 of the current group are ready when
        # start + taps - 1 + floor(k * M / L) <= fill - 1.
        span = self._fill - start - self._taps + 1
        end = -(-(span * self._phases) // self._step) if span > 0 else 0
        if limit >= 0 and end > first + limit:
            end = first + limit
        if end <= first:
            return np.zeros(0, dtype=self._dtype)
        group_out = self._group_out
        if self._group_matrix is not None:
            groups = -(-end // group_out)
            # Row i is the window of group i; rows overlap, so they are copied into a
            # contiguous array that every numpy version hands to BLAS.
            windows = np.ndarray((groups, self._window_len), self._dtype, self._buf,
                                 start * self._dtype.itemsize, self._row_strides)
            product = np.dot(windows.copy(), self._group_matrix)
            acc: WorkArray = product.reshape(-1)[first:end]
        else:
            acc = self._gathered(start, first, end)
        groups = end // group_out
        self._start = start + groups * self._group_in
        self._next = end - groups * group_out
        self._n_out += end - first
        return acc

    def _gathered(self, start: int, first: int, end: int) -> WorkArray:
        """Fallback for ratios with too many phases for the group matrix (always float64:
        exact, also for ``single``)."""
        phases, step, taps = self._phases, self._step, self._taps
        k = np.arange(first, end, dtype=np.int64)
        q = (k * step) // phases  # from start
        buf: Float64Array = self._buf[start : self._fill].astype(np.float64, copy=False)
        windows = sliding_window_view(buf, taps)[q]
        coeffs = self._bank_rev[(k * step) % phases]
        return np.asarray(np.einsum("ij,ij->i", windows, coeffs), dtype=np.float64)


def resample(samples: Int16Array, in_rate: int, out_rate: int) -> Int16Array:
    """Convert a whole clip; identical to streaming it in any chunks and flushing."""
    converter = StreamingResampler(in_rate, out_rate)
    head = converter.process(samples)
    return np.concatenate((head, converter.flush()))
