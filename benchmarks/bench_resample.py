"""The resampler against soxr HQ and a linear-interpolation floor, in one run (issue 12).

The capture and playback loops convert one 20 ms chunk at a time, so the figure of merit is
CPU per chunk, and on a Pi the per-call Python work weighs as much as the arithmetic: 2 ms
chunks are timed too, and the two sizes give a straight-line fit of the per-call overhead.
Contenders run in interleaved rounds whose order is shuffled every round, and each round
yields one CPU ratio against soxr HQ measured moments apart, so a machine loaded by other
work moves both sides of a ratio alike; the median ratio over the rounds is what a target
is judged on. Quality is measured on the int16 stream as chunked (20 ms), the way the
daemon sees it: THD+N of 997 Hz at -3 dBFS, what a 13 kHz tone folds to when going down to
24 kHz, the worst alias (down) or image (up) over a sweep of tones, the gain at 10 kHz,
the delay (impulse peak plus what a call holds back, worst case) and the share of calls
after warm-up that return no sample.

soxr is python-soxr (``pip install soxr``, the project's ``bench`` extra); without it the
soxr columns are left empty, or filled from an earlier run's JSON (``--soxr-reference``),
which the table then says. Timings never fail the run: targets are printed met or missed.

Run: ``python benchmarks/bench_resample.py [--rounds N] [--json PATH]``
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from machine import cpu_model  # benchmarks/
from signals import fit_sine  # tests/: how the tests judge the resampler's quality

from edgevoice.audio.resample import StreamingResampler

Int16Array = npt.NDArray[np.int16]
Convert = Callable[[Int16Array], Int16Array]

CONVERSIONS: tuple[tuple[int, int], ...] = (
    (48000, 24000),
    (44100, 24000),
    (16000, 24000),
    (24000, 48000),
    (24000, 44100),
    (24000, 8000),
)
# The speaker's conversions: PyAudioSink runs them in float32 (``single``), so they are
# measured as it runs them; the capture side is exact float64.
SPEAKER_CONVERSIONS = ((24000, 48000), (24000, 44100))
# Issue 12's targets apply to the capture conversions a Pi sees most.
TARGET_CONVERSIONS = ((48000, 24000), (44100, 24000))
CHUNK_MS = (20, 2)
CONTENDERS = ("edgevoice", "soxr HQ", "linear")
SECONDS = 10.0
FULL_SCALE = 32767.0
MINUS_3_DBFS = 10 ** (-3 / 20)
WARMUP_S = 0.2  # soxr HQ holds back up to ~40 ms; the empty-call share starts after this
SETTLE_S = 0.1  # output skipped before a tone is fitted
TONE_S = 0.6
SWEEP_POINTS = 12
SILENT_DB = -200.0  # printed as "silent": nothing at all came out
RESULTS = Path(__file__).resolve().parent / "results"

MAX_CPU_RATIO = 3.0
MAX_THD_N_DB = -90.0
MAX_ALIAS_13K_DB = -85.0
MAX_SWEEP_DB = -80.0
MAX_GAIN_10K_DB = 0.1
MAX_DELAY_MS = 2.0


# --- contenders ------------------------------------------------------------------------


class LinearResampler:
    """np.interp between neighbouring samples: the cheapest streaming converter there is.

    Output ``k`` sits at input time ``k * in / out`` exactly (integer bookkeeping), so the
    floor has no drift; quality is whatever linear interpolation gives, which is poor.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        common = math.gcd(in_rate, out_rate)
        self._up = out_rate // common
        self._down = in_rate // common
        self._prev = 0.0
        self._n_in = 0
        self._n_out = 0

    def process(self, samples: Int16Array) -> Int16Array:
        n = samples.shape[0]
        base = self._n_in - 1  # input time of the held sample
        self._n_in += n
        # Outputs whose time k * down / up is at most the newest input (n_in - 1).
        end = ((self._n_in - 1) * self._up) // self._down + 1
        ks = np.arange(self._n_out, end, dtype=np.int64)
        self._n_out = end
        pos = (ks * self._down).astype(np.float64) / self._up - base
        ext = np.empty(n + 1, dtype=np.float64)
        ext[0] = self._prev
        ext[1:] = samples
        if n:
            self._prev = float(samples[-1])
        out = np.interp(pos, np.arange(n + 1, dtype=np.float64), ext)
        return np.rint(out).astype(np.int16)


def load_soxr(extra_dir: str | None) -> ModuleType | None:
    """python-soxr if importable, else from ``extra_dir`` (e.g. a venv's site-packages).

    The second way lets Debian's own python3 (without pip) time soxr from the project's
    venv in the same run; python-soxr does not use numpy's C API, so numpy 1.24 is fine.
    """
    try:
        return importlib.import_module("soxr")
    except ImportError:
        pass
    if not extra_dir:
        return None
    init = Path(extra_dir) / "soxr" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "soxr", init, submodule_search_locations=[str(init.parent)]
    )
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soxr"] = module
    try:
        spec.loader.exec_module(module)
    except (ImportError, OSError):
        del sys.modules["soxr"]
        return None
    return module


def make_converter(name: str, in_rate: int, out_rate: int, soxr: ModuleType | None) -> Convert:
    if name == "edgevoice":
        single = (in_rate, out_rate) in SPEAKER_CONVERSIONS
        return StreamingResampler(in_rate, out_rate, single=single).process
    if name == "linear":
        return LinearResampler(in_rate, out_rate).process
    assert soxr is not None
    stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="HQ")
    convert: Convert = stream.resample_chunk
    return convert


def design_notes() -> list[str]:
    """Where edgevoice's stop band starts above the output Nyquist, a sweep alias is by design.

    With 8 kHz out, a 2 ms delay cannot buy a stop edge at 4 kHz with the pass band at 3.2;
    the edge moves up, so tones just above 4 kHz fold back above the pass band.
    """
    notes = []
    for in_rate, out_rate in CONVERSIONS:
        design = StreamingResampler(in_rate, out_rate).design
        if design is None or in_rate <= out_rate or design.stop_hz <= out_rate / 2 + 1:
            continue
        low, high = out_rate / 2, design.stop_hz
        notes.append(
            f"{in_rate}->{out_rate}: edgevoice's stop band starts at {high / 1e3:.2f} kHz "
            f"(delay budget), so tones at {low / 1e3:g}-{high / 1e3:.2f} kHz fold to "
            f"{(out_rate - high) / 1e3:.2f}-{low / 1e3:g} kHz, above its "
            f"{design.pass_hz / 1e3:g} kHz pass band; that is its sweep figure"
        )
    return notes


# --- signals and measurements ----------------------------------------------------------


def tone(freq: float, seconds: float, rate: int, amplitude: float, phase: float) -> Int16Array:
    t = np.arange(round(seconds * rate)) / rate
    wave = amplitude * FULL_SCALE * np.sin(2 * np.pi * freq * t + phase)
    return np.rint(wave).astype(np.int16)


def stream(convert: Convert, x: Int16Array, chunk: int) -> tuple[Int16Array, list[int], list[int]]:
    """Feed ``x`` in chunks; the output, and per call the inputs and outputs so far."""
    parts: list[Int16Array] = []
    n_in: list[int] = []
    n_out: list[int] = []
    total_in = total_out = 0
    for pos in range(0, x.shape[0] - chunk + 1, chunk):
        y = convert(x[pos : pos + chunk])
        parts.append(y)
        total_in += chunk
        total_out += y.shape[0]
        n_in.append(total_in)
        n_out.append(total_out)
    return np.concatenate(parts), n_in, n_out


def db(ratio: float) -> float:
    """Decibels; an all-zero int16 output (below half an LSB) reads as SILENT_DB."""
    return max(20 * math.log10(ratio), SILENT_DB) if ratio > 0 else SILENT_DB


@dataclass
class Quality:
    thd_n_db: float
    alias_13k_db: float | None  # only when going down to 24 kHz
    sweep_db: float  # worst alias (down) or image (up) over the sweep
    gain_10k_db: float | None  # only where 10 kHz is below both Nyquists
    delay_ms: float  # impulse peak plus the most a call held back
    empty_20ms: float  # share of calls after warm-up returning nothing
    empty_2ms: float


def measure_quality(name: str, in_rate: int, out_rate: int, soxr: ModuleType | None) -> Quality:
    rng = np.random.default_rng(in_rate * 7 + out_rate)
    chunk = in_rate // 50
    settle = round(SETTLE_S * out_rate)

    def run(x: Int16Array, size: int = chunk) -> tuple[Int16Array, list[int], list[int]]:
        return stream(make_converter(name, in_rate, out_rate, soxr), x, size)

    def phase() -> float:
        return float(rng.uniform(0, 2 * np.pi))

    x = tone(997.0, TONE_S, in_rate, MINUS_3_DBFS, phase())
    amp, _, resid = fit_sine(run(x)[0], out_rate, 997.0, settle)
    thd_n = db(resid / (amp / math.sqrt(2)))
    tone_rms = MINUS_3_DBFS * FULL_SCALE / math.sqrt(2)

    def alias(freq: float) -> float:
        y = run(tone(freq, TONE_S, in_rate, MINUS_3_DBFS, phase()))[0][settle:]
        return db(float(np.sqrt(np.mean(y.astype(np.float64) ** 2))) / tone_rms)

    def image(freq: float) -> float:
        y = run(tone(freq, TONE_S, in_rate, MINUS_3_DBFS, phase()))[0]
        return db(fit_sine(y, out_rate, freq, settle)[2] / tone_rms)

    down = in_rate > out_rate
    alias_13k = alias(13000.0) if down and out_rate == 24000 else None
    if down:
        sweep = [alias(f) for f in np.linspace(out_rate / 2 + 50, in_rate / 2 - 50, SWEEP_POINTS)]
    else:
        sweep = [image(f) for f in np.linspace(100.0, in_rate / 2 - 50, SWEEP_POINTS)]
    gain_10k = None
    if min(in_rate, out_rate) / 2 > 10000.0:
        x = tone(10000.0, TONE_S, in_rate, MINUS_3_DBFS, phase())
        a_out, _, _ = fit_sine(run(x)[0], out_rate, 10000.0, settle)
        a_in, _, _ = fit_sine(x, in_rate, 10000.0, 0)
        gain_10k = db(a_out / a_in)

    # Delay: where an impulse comes out, plus the input a call has not answered for yet.
    impulse = np.zeros(in_rate, dtype=np.int16)
    pos = in_rate // 2
    impulse[pos] = 20000
    y, n_in, n_out = run(impulse)
    yf = y.astype(np.float64)
    m = int(np.argmax(yf))
    den = yf[m - 1] - 2 * yf[m] + yf[m + 1]
    frac = 0.5 * (yf[m - 1] - yf[m + 1]) / den if den else 0.0
    peak_s = (m + frac) / out_rate - pos / in_rate
    warm = round(WARMUP_S * 50)
    held = max(i / in_rate - o / out_rate for i, o in zip(n_in[warm:], n_out[warm:], strict=True))
    noise = np.clip(rng.normal(0, 3000, in_rate), -32768, 32767).astype(np.int16)

    def empty_share(size: int) -> float:
        _, _, outs = run(noise, size)
        first = round(WARMUP_S * in_rate / size)
        produced = np.diff(np.asarray([0, *outs]))[first:]
        return float(np.mean(produced == 0))

    return Quality(
        thd_n_db=thd_n,
        alias_13k_db=alias_13k,
        sweep_db=max(sweep),
        gain_10k_db=gain_10k,
        delay_ms=(peak_s + held) * 1e3,
        empty_20ms=empty_share(chunk),
        empty_2ms=empty_share(in_rate // 500),
    )


# --- timing ---------------------------------------------------------------------------


def time_pass(convert: Convert, chunks: list[Int16Array]) -> float:
    """CPU seconds per chunk (process CPU: BLAS threads count) over the whole input."""
    for block in chunks[:10]:  # first calls allocate and warm caches
        convert(block)
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        for block in chunks:
            convert(block)
        elapsed = time.process_time() - start
    finally:
        gc.enable()
    return elapsed / len(chunks)


@dataclass
class Timing:
    us_per_chunk: dict[str, float] = field(default_factory=dict)  # by chunk ms, median
    overhead_us: float = 0.0  # per call, from the 2 ms and 20 ms fit
    ns_per_sample: float = 0.0  # per input sample, same fit
    ratio_vs_soxr: float | None = None  # median of per-round ratios, 20 ms chunks
    ratio_vs_soxr_2ms: float | None = None
    rounds_us: dict[str, list[float]] = field(default_factory=dict)


def run_timing(
    names: list[str], rounds: int, soxr: ModuleType | None, seed: int
) -> dict[tuple[int, int], dict[str, Timing]]:
    rng = np.random.default_rng(seed)
    order_rng = random.Random(seed)
    inputs: dict[tuple[int, int], list[Int16Array]] = {}
    for in_rate, _ in CONVERSIONS:
        for ms in CHUNK_MS:
            if (in_rate, ms) in inputs:
                continue
            n = round(SECONDS * in_rate)
            audio = np.clip(rng.normal(0.0, 3000.0, n), -32768, 32767).astype(np.int16)
            size = in_rate * ms // 1000
            inputs[in_rate, ms] = [audio[i : i + size] for i in range(0, n - size + 1, size)]
    cells = [(conv, ms, name) for conv in CONVERSIONS for ms in CHUNK_MS for name in names]
    samples: dict[tuple[tuple[int, int], int, str], list[float]] = {cell: [] for cell in cells}
    for _ in range(rounds):
        order_rng.shuffle(cells)
        for conv, ms, name in cells:
            convert = make_converter(name, conv[0], conv[1], soxr)
            samples[conv, ms, name].append(time_pass(convert, inputs[conv[0], ms]) * 1e6)
    result: dict[tuple[int, int], dict[str, Timing]] = {}
    for conv in CONVERSIONS:
        per: dict[str, Timing] = {}
        for name in names:
            timing = Timing()
            for ms in CHUNK_MS:
                timing.rounds_us[str(ms)] = samples[conv, ms, name]
                timing.us_per_chunk[str(ms)] = statistics.median(samples[conv, ms, name])
            n_big, n_small = conv[0] * 20 // 1000, conv[0] * 2 // 1000
            slope = (timing.us_per_chunk["20"] - timing.us_per_chunk["2"]) / (n_big - n_small)
            timing.ns_per_sample = slope * 1e3
            timing.overhead_us = timing.us_per_chunk["2"] - slope * n_small
            if "soxr HQ" in names:
                for ms, attr in ((20, "ratio_vs_soxr"), (2, "ratio_vs_soxr_2ms")):
                    pairs = zip(samples[conv, ms, name], samples[conv, ms, "soxr HQ"], strict=True)
                    setattr(timing, attr, statistics.median(a / b for a, b in pairs))
            per[name] = timing
        result[conv] = per
    return result


# --- report ---------------------------------------------------------------------------


def blas_name() -> str:
    """Which BLAS numpy calls: numpy 2 reports it; 1.24 only prints it, so ask the linker.

    On Debian the library behind libblas.so.3 is chosen by update-alternatives: the
    directory (``blas/`` is the reference BLAS, ``openblas-serial/`` ...) says which.
    """
    try:
        show: Any = np.show_config  # numpy 1.24 has no mode="dicts" (TypeError below)
        config: Any = show(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except (TypeError, KeyError):
        pass
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = Path(line.split()[-1])
            if "blas" in path.name.lower():
                return f"{path.parent.name}/{path.name}"
    except OSError:
        pass
    return "unknown"


def fmt(value: float | None, spec: str = "7.1f") -> str:
    """``format`` that also prints None as "-" and SILENT_DB as "silent", same width."""
    width = spec.lstrip("+").split(".")[0]
    if value is None:
        return format("-", f">{width}")
    if value <= SILENT_DB:
        return format("silent", f">{width}")
    return format(value, spec)


def soxr_reference(path: Path) -> dict[str, dict[str, float]]:
    """soxr HQ microseconds per chunk by conversion from an earlier run's JSON."""
    data = json.loads(path.read_text())
    found: dict[str, dict[str, float]] = {}
    for key, row in data["conversions"].items():
        timing = row["contenders"].get("soxr HQ", {}).get("timing")
        if timing:
            found[key] = timing["us_per_chunk"]
    return found


def targets(
    conv: tuple[int, int], timing: Timing, quality: Quality, ratio: float | None
) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for edgevoice at one conversion; None: cannot be judged."""
    alias = quality.alias_13k_db
    gain = quality.gain_10k_db
    return [
        (
            f"CPU <= {MAX_CPU_RATIO:g}x soxr HQ (20 ms)",
            "no soxr" if ratio is None else f"{ratio:.2f}x",
            None if ratio is None else ratio <= MAX_CPU_RATIO,
        ),
        (
            f"THD+N <= {MAX_THD_N_DB:g} dB",
            f"{quality.thd_n_db:.1f} dB",
            quality.thd_n_db <= MAX_THD_N_DB,
        ),
        (
            f"13 kHz alias <= {MAX_ALIAS_13K_DB:g} dB",
            fmt(alias, ".1f") + ("" if alias is not None and alias <= SILENT_DB else " dB"),
            alias is not None and alias <= MAX_ALIAS_13K_DB,
        ),
        (
            f"sweep alias <= {MAX_SWEEP_DB:g} dB",
            f"{quality.sweep_db:.1f} dB",
            quality.sweep_db <= MAX_SWEEP_DB,
        ),
        (
            f"|gain at 10 kHz| <= {MAX_GAIN_10K_DB:g} dB",
            fmt(gain, "+.3f") + " dB",
            gain is not None and abs(gain) <= MAX_GAIN_10K_DB,
        ),
        (
            f"delay <= {MAX_DELAY_MS:g} ms",
            f"{quality.delay_ms:.2f} ms",
            quality.delay_ms <= MAX_DELAY_MS,
        ),
        (
            "no empty output after warm-up",
            f"{quality.empty_20ms:.0%} / {quality.empty_2ms:.0%} (20/2 ms)",
            quality.empty_20ms == 0 and quality.empty_2ms == 0,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (>= 7)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument(
        "--json", type=Path, default=RESULTS / "resample.json", help="where to write figures"
    )
    parser.add_argument(
        "--soxr-path", help="directory holding a soxr package to use if `import soxr` fails"
    )
    parser.add_argument(
        "--soxr-reference",
        type=Path,
        help="JSON of an earlier run whose soxr HQ timings fill in when soxr is missing",
    )
    args = parser.parse_args(argv)
    rounds = max(7, args.rounds)
    soxr = load_soxr(args.soxr_path)
    names = [n for n in CONTENDERS if n != "soxr HQ" or soxr is not None]
    reference: dict[str, dict[str, float]] = {}
    if soxr is None and args.soxr_reference and args.soxr_reference.exists():
        reference = soxr_reference(args.soxr_reference)
    machine = {
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "numpy": np.__version__,
        "blas": blas_name(),
        "soxr": getattr(soxr, "__version__", None),
        "soxr_reference": str(args.soxr_reference) if reference else None,
    }
    print(
        f"resampler: {machine['cpu']}, Python {machine['python']}, numpy {machine['numpy']} "
        f"({machine['blas']}), soxr {machine['soxr'] or 'missing'}; {rounds} rounds of "
        f"{SECONDS:g} s per conversion in {' and '.join(map(str, CHUNK_MS))} ms chunks"
    )
    print("note: edgevoice's " + ", ".join(f"{i}->{o}" for i, o in SPEAKER_CONVERSIONS)
          + " rows are the speaker's float32 filter (PyAudioSink), the rest exact float64")
    if soxr is None:
        note = "soxr HQ not importable (pip install soxr, or `make bench`): its columns "
        note += f"come from {args.soxr_reference}" if reference else "are empty"
        print("note: " + note)
    began = time.monotonic()
    timing = run_timing(names, rounds, soxr, args.seed)
    quality = {
        conv: {name: measure_quality(name, *conv, soxr) for name in names} for conv in CONVERSIONS
    }

    print()
    header = (
        f"{'conversion':>14} {'contender':>10} {'us/20ms':>7} {'us/2ms':>7} {'us/call':>7} "
        f"{'ns/smp':>6} {'x soxr':>6} {'THD+N':>6} {'a13k':>6} {'sweep':>6} {'g10k':>7} "
        f"{'delay':>6} {'empty':>9}"
    )
    print(header)
    print(
        f"{'':>14} {'':>10} {'median':>7} {'median':>7} {'fit':>7} {'fit':>6} {'20 ms':>6} "
        f"{'dB':>6} {'dB':>6} {'dB':>6} {'dB':>7} {'ms':>6} {'20/2 ms':>9}"
    )
    doc: dict[str, Any] = {"machine": machine, "rounds": rounds, "conversions": {}}
    for conv in CONVERSIONS:
        key = f"{conv[0]}->{conv[1]}"
        # edgevoice's row of a speaker conversion is the float32 filter PyAudioSink runs
        entry: dict[str, Any] = {"contenders": {},
                                 "edgevoice_float32": conv in SPEAKER_CONVERSIONS}
        ref = reference.get(key)
        for name in names:
            t, q = timing[conv][name], quality[conv][name]
            ratio = t.ratio_vs_soxr
            if ratio is None and ref:
                ratio = t.us_per_chunk["20"] / ref["20"]
            print(
                f"{key:>14} {name:>10} {t.us_per_chunk['20']:7.1f} {t.us_per_chunk['2']:7.1f} "
                f"{t.overhead_us:7.1f} {t.ns_per_sample:6.2f} {fmt(ratio, '6.2f')} "
                f"{fmt(q.thd_n_db, '6.1f')} {fmt(q.alias_13k_db, '6.1f')} "
                f"{fmt(q.sweep_db, '6.1f')} "
                f"{fmt(q.gain_10k_db, '+7.3f')} {q.delay_ms:6.2f} "
                f"{q.empty_20ms:4.0%}/{q.empty_2ms:<4.0%}"
            )
            entry["contenders"][name] = {
                "timing": asdict(t) | {"ratio_vs_soxr_reference": ratio if ref else None},
                "quality": asdict(q),
            }
        if ref and "soxr HQ" not in names:
            print(
                f"{key:>14} {'soxr HQ*':>10} {ref['20']:7.1f} {ref['2']:7.1f}  (* from reference)"
            )
        doc["conversions"][key] = entry

    for note in design_notes():
        print("note: " + note)
    print("\nissue 12 targets (edgevoice, 20 ms chunks, this run):")
    verdicts: dict[str, list[dict[str, Any]]] = {}
    for conv in TARGET_CONVERSIONS:
        key = f"{conv[0]}->{conv[1]}"
        t, q = timing[conv]["edgevoice"], quality[conv]["edgevoice"]
        ratio = t.ratio_vs_soxr
        source = "same run"
        if ratio is None and key in reference:
            ratio, source = t.us_per_chunk["20"] / reference[key]["20"], "reference soxr"
        rows = targets(conv, t, q, ratio)
        verdicts[key] = []
        for label, measured, met in rows:
            mark = "n/a" if met is None else ("met" if met else "MISSED")
            suffix = f" ({source})" if label.startswith("CPU") and ratio is not None else ""
            print(f"  {key:>12}  {label:<34} {measured:>22}  {mark}{suffix}")
            verdicts[key].append({"target": label, "measured": measured,
                                  "met": None if met is None else bool(met)})
    doc["targets"] = verdicts
    doc["run_s"] = round(time.monotonic() - began, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(f"\n{doc['run_s']:.0f} s; figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
