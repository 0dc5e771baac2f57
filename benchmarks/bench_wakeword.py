"""CPU per second of audio of the wake word detector (issue 10 item 3): what a Pi pays for
listening all day.

The stages the capture thread runs for every chunk while the gate listens, each measured
alone and then together as ``MicroWakeWordDetector.process`` does them: the project's
resampler (24 -> 16 kHz), pymicro-wakeword's feature frontend (10 ms frames), the model
(one TFLite inference per 30 ms), for each shipped model. The input is fan-like noise in
20 ms chunks (the detector's cost does not depend on what it hears). CPU is
``time.process_time``, the median of 5 runs of ``--seconds`` (60) of audio.

Run: ``python benchmarks/bench_wakeword.py [--seconds S] [--json PATH]`` (needs the extra
``wakeword``). Never fails on a timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgevoice.audio.resample import StreamingResampler
from edgevoice.audio.wakeword import MODELS, MicroWakeWordDetector, load_wake_detector

RATE = 24000
CHUNK = 480  # 20 ms
RUNS = 5


def _median_cpu(run: Callable[[], object], seconds: float) -> float:
    """Median CPU milliseconds per second of audio."""
    times = []
    for _ in range(RUNS):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return statistics.median(times) * 1000.0 / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    seconds = float(args.seconds)
    try:
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model
    except ImportError:
        print("the extra `wakeword` (pymicro-wakeword>=2,<3) is not installed")
        return 1
    rng = np.random.default_rng(1)
    audio = np.clip(rng.normal(0.0, 300.0, round(seconds * RATE)), -32768, 32767)
    chunks = [audio[i:i + CHUNK].astype(np.int16) for i in range(0, audio.size, CHUNK)]

    resampler = StreamingResampler(RATE, 16000)
    rows: dict[str, float] = {
        "resample 24->16 kHz": _median_cpu(lambda: [resampler.process(c) for c in chunks],
                                           seconds)}
    pcm16k = [resampler.process(c).tobytes() for c in chunks]

    def features() -> list[npt.NDArray[np.float64]]:
        frontend = MicroWakeWordFeatures()
        return [f for b in pcm16k for f in frontend.process_streaming(b)]

    rows["features (10 ms frames)"] = _median_cpu(features, seconds)
    frames = features()
    for model in MODELS:
        mww = MicroWakeWord.from_builtin(Model(model))
        detector = load_wake_detector(model, None)

        def infer(mww: MicroWakeWord = mww) -> None:
            for frame in frames:
                mww.process_streaming_prob(frame)

        def detect(detector: MicroWakeWordDetector = detector) -> None:
            for chunk in chunks:
                detector.process(chunk)

        rows[f"inference {model}"] = _median_cpu(infer, seconds)
        rows[f"detector total {model}"] = _median_cpu(detect, seconds)

    print(f"wake word detector, CPU ms per second of audio ({seconds:g} s, median of {RUNS})")
    for name, value in rows.items():
        print(f"  {name:<28} {value:7.3f} ms/s  ({value / 10:.2f} % of one core)")
    if args.json is not None:
        args.json.write_text(json.dumps({"seconds": seconds, "ms_per_s": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
