"""Per-chunk cost of StreamingResampler, the number that matters on a Raspberry Pi.

The capture and playback loops convert one 20 ms chunk at a time, so the figure of merit is
microseconds per chunk (and its share of the 20 ms budget), not throughput on long arrays.

Run: ``python benchmarks/bench_resample.py [--seconds S] [--chunk-ms MS]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgevoice.audio.resample import StreamingResampler

RATIOS: tuple[tuple[int, int], ...] = (
    (48000, 24000),
    (44100, 24000),
    (32000, 24000),
    (22050, 24000),
    (16000, 24000),
    (8000, 24000),
    (24000, 24000),
    (24000, 48000),
    (24000, 44100),
)


def bench(in_rate: int, out_rate: int, seconds: float, chunk_ms: int) -> tuple[float, float]:
    """Return (microseconds per chunk, real-time factor) for one conversion."""
    rng = np.random.default_rng(0)
    chunk = in_rate * chunk_ms // 1000
    n_chunks = max(1, round(seconds * 1000 / chunk_ms))
    # Speech-like level noise: content does not change the cost, but avoids a zero fast path.
    audio = np.clip(rng.normal(0.0, 3000.0, chunk * n_chunks), -32768, 32767).astype(np.int16)
    chunks = [audio[i * chunk : (i + 1) * chunk] for i in range(n_chunks)]
    converter = StreamingResampler(in_rate, out_rate)
    for block in chunks[:10]:  # warm caches and BLAS threads
        converter.process(block)
    converter.reset()
    start = time.perf_counter()
    for block in chunks:
        converter.process(block)
    elapsed = time.perf_counter() - start
    audio_s = n_chunks * chunk / in_rate
    return elapsed / n_chunks * 1e6, elapsed / audio_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="audio per ratio")
    parser.add_argument("--chunk-ms", type=int, default=20, help="chunk length")
    args = parser.parse_args(argv)
    print(f"numpy {np.__version__}, {args.chunk_ms} ms chunks, {args.seconds:g} s per ratio")
    print(f"{'conversion':>16}  {'delay ms':>8}  {'us/chunk':>9}  {'RTF':>8}")
    for in_rate, out_rate in RATIOS:
        us, rtf = bench(in_rate, out_rate, args.seconds, args.chunk_ms)
        delay_ms = StreamingResampler(in_rate, out_rate).delay_s * 1e3
        print(f"{in_rate:>6} -> {out_rate:<6}  {delay_ms:8.3f}  {us:9.1f}  {rtf:8.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
