"""Per-chunk cost of the hot path, capture block to the text frame that leaves the device.

Everything the daemon does for each 20 ms of 48 kHz stereo audio, minus the socket: downmix,
resample to 24 kHz, level, dead-input check, base64 + JSON encoding of the append event.
Prints microseconds per chunk and the share of one core that 50 chunks a second take.
"""

from __future__ import annotations

import time

import numpy as np

from edgevoice.audio.level import DeadInputDetector, rms_dbfs
from edgevoice.audio.pyaudio_source import downmix
from edgevoice.audio.resample import StreamingResampler
from edgevoice.realtime import protocol


def run(rate: int, channels: int, seconds: float = 10.0) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    block = rate * 20 // 1000
    n_blocks = int(seconds * 50)
    data = rng.integers(-8000, 8000, (n_blocks, block * channels), dtype=np.int16)
    resampler = StreamingResampler(rate, 24000)
    detector = DeadInputDetector(30.0)
    start = time.perf_counter()
    for raw in data:
        mono = downmix(np.frombuffer(raw.tobytes(), dtype=np.int16), channels)
        detector.update(mono)
        out = resampler.process(mono)
        rms_dbfs(out)
        protocol.encode(protocol.audio_append(out.tobytes()))
    elapsed = time.perf_counter() - start
    per_chunk_us = elapsed / n_blocks * 1e6
    return per_chunk_us, per_chunk_us * 50 / 1e6 * 100


def main() -> None:
    print(f"{'input':>16}  {'us/chunk':>9}  {'% of a core':>11}")
    for rate, channels in ((48000, 2), (44100, 1), (16000, 1), (24000, 1)):
        us, share = run(rate, channels)
        print(f"{rate:>9} Hz {channels} ch  {us:9.1f}  {share:10.2f}%")


if __name__ == "__main__":
    main()
