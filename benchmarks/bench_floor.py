"""What this machine charges for the daemon's shape of work, before any edgevoice code runs.

Issue 12 asks that a whole-daemon target that cannot be met be explained. ``bench_daemon``
attributes the daemon's CPU to its threads; this bench measures the floors those threads
stand on, with the same parts and none of the daemon's logic, so each target can be set
against the least any daemon of this shape costs here:

* ``cold``: the per-chunk work of the capture chain and the uplink (downmix, resample
  48 -> 24 kHz, level, dead-input digest, energy VAD, base64 and JSON of the append) timed
  back to back and once every ``chunk_ms``, sleeping in between as the daemon's threads do.
  Code that runs 50 times a second finds its caches (and, on a virtual machine, its
  physical core) cold; the ratio is what every microsecond of hot-loop work costs in the
  daemon.
* ``architecture``: a child process captures 48 kHz stereo from the ALSA FIFO microphone
  through PyAudio, as the daemon does, and does nothing else: ``portaudio`` (the callback
  only downmixes: the least any PyAudio capture at 20 ms costs), ``relay`` (plus the
  hand-off to one Python thread, as to the capture thread), ``uplink`` (plus a second
  hand-off to a thread that sends 1.3 KB per chunk over a 127.0.0.1 TCP socket, as the
  uplink does), ``uplink+speaker`` (plus a PortAudio output stream on the ALSA FIFO speaker
  whose callback returns silence, as playback does). CPU is the child's
  ``getrusage(RUSAGE_SELF)`` over a window after a warm-up, per audio second.
* ``memory``: VmRSS of a child that imports the libraries ``edgevoice run`` needs (numpy,
  websocket-client and with it ssl, PyYAML, systemd-python, logging, json), initialises
  PortAudio and runs one matrix product, and no edgevoice module.

Never fails on a timing. Run: ``python benchmarks/bench_floor.py [--seconds S] [--json
PATH]``. Needs PortAudio and alsa-lib (``make deps``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import machine  # noqa: E402  (benchmarks/)

from edgevoice.audio.fifo_mic import FifoWriter, make_fifo_microphone  # noqa: E402
from edgevoice.audio.fifo_speaker import FifoSpeaker, make_fifo_speaker  # noqa: E402

RATE, CHANNELS, CHUNK_MS = 48000, 2, 20
BLOCK = RATE * CHUNK_MS // 1000
MIC_PCM, SPEAKER_PCM = "evfloor_mic", "evfloor_speaker"
MODES = ("portaudio", "relay", "uplink", "uplink+speaker")
DEFAULT_MODES = ("portaudio", "uplink", "uplink+speaker")  # the ones a target is set against
# The daemon's targets each floor is set against (% of one core; MB).
TARGETS = {"portaudio": ("idle_gate", 0.3), "uplink": ("streaming", 1.0),
           "uplink+speaker": ("playback", 1.5)}
TARGET_RSS_MB = 45.0


# -- cold: the same work hot and every chunk_ms ------------------------------------------


def chunk_work() -> Any:
    """One chunk of the daemon's per-chunk work, as a callable (built once)."""
    from edgevoice.audio.level import DeadInputDetector, rms_dbfs
    from edgevoice.audio.pyaudio_source import downmix
    from edgevoice.audio.resample import StreamingResampler
    from edgevoice.audio.vad import EnergyVad
    from edgevoice.realtime import protocol

    rng = np.random.default_rng(12)
    raw = (rng.standard_normal(BLOCK * CHANNELS) * 60).astype(np.int16)
    resampler = StreamingResampler(RATE, 24000)
    detector = DeadInputDetector(10.0)
    vad = EnergyVad(CHUNK_MS)

    def work() -> None:
        mono = downmix(raw, CHANNELS)
        detector.update(mono)
        out = resampler.process(mono)
        rms_dbfs(out)
        vad.is_speech(out)
        protocol.encode(protocol.audio_append(out.tobytes()))

    return work


def cold(rounds: int) -> dict[str, Any]:
    work = chunk_work()
    for _ in range(1000):  # the VAD's floor settles, every branch has run
        work()

    def timed(sleep_s: float, n: int = rounds) -> float:
        spent = []
        for _ in range(n):
            if sleep_s:
                time.sleep(sleep_s)
            start = time.thread_time()
            work()
            spent.append(time.thread_time() - start)
        return statistics.median(spent) * 1e6

    hot = timed(0.0)
    # The 100 ms row on fewer rounds: it is the slowest and its median settles early.
    rows = [{"sleep_ms": ms, "us": round(timed(ms / 1000, rounds if ms < 100 else rounds // 3), 1)}
            for ms in (2, 5, CHUNK_MS, 100)]
    for row in rows:
        row["factor"] = round(row["us"] / hot, 2)
    return {"rounds": rounds, "hot_us": round(hot, 1), "rows": rows}


# -- architecture: a child that captures and relays, nothing else ------------------------


def child(mode: str, seconds: float, warmup_s: float, port: int) -> None:
    """The child process (``--child MODE``): prints one JSON line with its CPU."""
    import pyaudio

    from edgevoice.audio.pyaudio_source import downmix

    stop = threading.Event()
    counts = {"blocks": 0, "sent": 0}  # each written by one thread only
    to_capture: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
    to_uplink: queue.Queue[bytes] = queue.Queue(maxsize=100)
    relays = mode != "portaudio"

    def callback(data: bytes | None, frames: int, info: Any, status: int) -> tuple[None, int]:
        if data is not None:
            counts["blocks"] += 1
            mono = downmix(np.frombuffer(data, dtype=np.int16), CHANNELS)
            if relays:
                to_capture.put(mono)
        return None, pyaudio.paContinue

    def capture() -> None:
        while not stop.is_set():
            try:
                mono = to_capture.get(timeout=0.25)
            except queue.Empty:
                continue
            if mode != "relay":
                to_uplink.put(base64.b64encode(mono[::2].tobytes()))

    def uplink(sock: socket.socket) -> None:
        while not stop.is_set():
            try:
                payload = to_uplink.get(timeout=0.1)
            except queue.Empty:
                continue
            sock.sendall(payload)
            counts["sent"] += 1

    def silence(data: bytes | None, frames: int, info: Any,
                status: int) -> tuple[bytes, int]:
        return bytes(frames * 2), pyaudio.paContinue

    pa = pyaudio.PyAudio()
    names = {pa.get_device_info_by_index(i)["name"]: i for i in range(pa.get_device_count())}
    threads: list[threading.Thread] = []
    sock: socket.socket | None = None
    if relays:
        threads.append(threading.Thread(target=capture, name="capture"))
    if mode.startswith("uplink"):
        sock = socket.create_connection(("127.0.0.1", port))
        threads.append(threading.Thread(target=uplink, args=(sock,), name="uplink"))
    for thread in threads:
        thread.start()
    streams = [pa.open(format=pyaudio.paInt16, channels=CHANNELS, rate=RATE, input=True,
                       input_device_index=names[MIC_PCM], frames_per_buffer=BLOCK,
                       stream_callback=callback)]
    if mode.endswith("speaker"):
        streams.append(pa.open(format=pyaudio.paInt16, channels=1, rate=RATE, output=True,
                               output_device_index=names[SPEAKER_PCM],
                               frames_per_buffer=BLOCK, stream_callback=silence))
    time.sleep(warmup_s)
    before, began = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    blocks0, sent0 = counts["blocks"], counts["sent"]
    time.sleep(seconds)
    after, ended = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    wall = ended - began
    # What was done in the window, per expected block: a floor that captured or sent
    # little is no floor (the parent refuses it).
    expected = wall * 1000 / CHUNK_MS
    print(json.dumps({"mode": mode, "pct": round(100 * cpu / wall, 3), "window_s": wall,
                      "wakeups_per_s": round((after.ru_nvcsw - before.ru_nvcsw) / wall, 1),
                      "captured": round((counts["blocks"] - blocks0) / expected, 3),
                      "sent": round((counts["sent"] - sent0) / expected, 3)}),
          flush=True)
    stop.set()
    for thread in threads:
        thread.join(2.0)
    for stream in streams:
        stream.close()
    pa.terminate()
    if sock is not None:
        sock.close()


def _checked(mode: str, run: dict[str, Any]) -> dict[str, Any]:
    """The run, or its figure refused when it did not capture (and send) what real time
    asks: a microphone that delivered nothing would cost nothing."""
    short = [f"{what} {run[what]:.0%} of the blocks" for what in ("captured", "sent")
             if (what == "captured" or mode.startswith("uplink")) and run[what] < 0.9]
    if short:
        return {**run, "pct": None, "error": "; ".join(short)}
    return run


def architecture(modes: list[str], seconds: float, rounds: int,
                 workdir: Path) -> dict[str, Any]:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def sink() -> None:  # takes what an uplink sends; its CPU is this process's
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while conn.recv(65536):
                    pass

    threading.Thread(target=sink, daemon=True).start()
    signal_ = (np.random.default_rng(3).standard_normal(RATE * CHANNELS * 5) * 60
               ).astype(np.int16)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    try:
        for index, mode in enumerate(m for _ in range(rounds) for m in modes):
            directory = workdir / f"{index}"
            fifo, alsa = make_fifo_microphone(directory, MIC_PCM, RATE, CHANNELS)
            spk_fifo, text = make_fifo_speaker(directory, SPEAKER_PCM, RATE, 1)
            with alsa.open("a") as f:
                f.write(text)
            speaker = FifoSpeaker(spk_fifo)
            speaker.start()
            writer = FifoWriter(fifo, rate=RATE, channels=CHANNELS, chunk_frames=BLOCK,
                                signal=signal_, keep_open=False)
            writer.start()
            env = dict(os.environ, ALSA_CONFIG_PATH=str(alsa))
            try:
                done = subprocess.run(
                    [sys.executable, __file__, "--child", mode, "--seconds", str(seconds),
                     "--port", str(port)],
                    check=False, env=env, capture_output=True, text=True, timeout=seconds + 60)
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
                runs[mode].append(_checked(mode, json.loads(lines[-1])) if lines else
                                  {"pct": None, "error": (done.stderr or "no output")[-400:]})
            except subprocess.TimeoutExpired:
                runs[mode].append({"pct": None, "error": "timed out"})
            finally:
                writer.stop(5.0)
                speaker.stop(5.0)
    finally:
        server.close()
    results: dict[str, Any] = {}
    for mode, measured in runs.items():
        pcts = [r["pct"] for r in measured if r.get("pct") is not None]
        errors = [r["error"] for r in measured if r.get("error")]
        results[mode] = {
            "pct": round(statistics.median(pcts), 3) if pcts else None, "rounds": pcts,
            "wakeups_per_s": round(statistics.median(
                r["wakeups_per_s"] for r in measured if "wakeups_per_s" in r), 1)
            if pcts else None,
            # Blocks captured and chunks sent per block real time delivers, lowest run.
            "captured": min((r["captured"] for r in measured if "captured" in r), default=None),
            "sent": min((r["sent"] for r in measured if "sent" in r), default=None),
            **({"error": errors[-1]} if errors else {})}
    return results


# -- memory: the libraries alone ---------------------------------------------------------

MEMORY_CHILD = """
import json, logging, re, numpy, websocket, yaml, systemd.journal, pyaudio
pa = pyaudio.PyAudio()
a = numpy.ones((64, 64)); a @ a
status = open("/proc/self/status").read()
print(json.dumps({"rss_mb": int(re.search(r"VmRSS:\\s+(\\d+)", status).group(1)) / 1024,
                  "modules": len(__import__("sys").modules)}))
"""


def memory() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD], check=False, capture_output=True,
                          text=True, timeout=60)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"rss_mb": None, "error": done.stderr[-400:]}
    out: dict[str, Any] = json.loads(lines[-1])
    out["rss_mb"] = round(out["rss_mb"], 1)
    return out


# -- report -------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    print(f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
          f"Python {report['machine']['python']}, numpy {report['machine']['numpy']}")
    print(f"\ncold: one chunk's work (downmix, resample, level, digest, VAD, append JSON), "
          f"median of {report['cold']['rounds']}")
    print(f"  {'sleep before':>12} {'us':>8} {'x hot':>6}")
    print(f"  {'none (hot)':>12} {report['cold']['hot_us']:8.1f} {1:6.2f}")
    for row in report["cold"]["rows"]:
        print(f"  {row['sleep_ms']:>9} ms {row['us']:8.1f} {row['factor']:6.2f}")
    print("\narchitecture floor: PyAudio capture 48 kHz stereo, 20 ms buffers, no daemon "
          "code (% of one core per audio second)")
    print(f"  {'floor':16} {'% core':>7} {'rounds':>13} {'wake/s':>7}  daemon target")
    for mode in report["architecture"]:
        row = report["architecture"][mode]
        pct = row.get("pct")
        target = TARGETS.get(mode)
        against = ""
        if target is not None and pct is not None:
            name, limit = target
            against = (f"{name} <= {limit}: "
                       f"{'floor above it' if pct > limit else 'floor below it'}")
        shown = f"{pct:7.2f}" if pct is not None else f"{'-':>7}"
        each = " ".join(f"{p:.2f}" for p in row.get("rounds", []))
        print(f"  {mode:16} {shown} {each:>13} {row.get('wakeups_per_s') or 0:7.1f}  {against}"
              f"{'  ' + row['error'] if row.get('error') else ''}")
    mem = report["memory"]
    if mem.get("rss_mb") is not None:
        verdict = "floor above it" if mem["rss_mb"] > TARGET_RSS_MB else "floor below it"
        print(f"\nmemory floor: the libraries `edgevoice run` needs, PortAudio initialised, "
              f"no edgevoice module: {mem['rss_mb']} MB VmRSS, {mem['modules']} modules "
              f"(target {TARGET_RSS_MB:.0f} MB: {verdict})")
    else:
        print(f"\nmemory floor: not measured ({mem.get('error', '')})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="audio seconds measured per run of a floor (default 4)")
    parser.add_argument("--modes", nargs="*", choices=MODES, default=list(DEFAULT_MODES),
                        help="floors to measure (default: those a target is set against; "
                             "`relay` is the capture hand-off alone)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="interleaved runs of each floor; the median is reported")
    parser.add_argument("--rounds", type=int, default=150,
                        help="chunks timed per row of the cold table (default 150)")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "benchmarks" / "results" / "floor.json")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seconds, 1.5, args.port)
        return 0
    began = time.monotonic()
    report: dict[str, Any] = {
        "machine": machine(),
        "chunk_ms": CHUNK_MS,
        "cold": cold(args.rounds),
        "memory": memory(),
    }
    with tempfile.TemporaryDirectory(prefix="evfloor-") as tmp:
        report["architecture"] = architecture(args.modes, args.seconds, args.repeat,
                                              Path(tmp))
    report["targets"] = {"pct_of_core": {name: limit for name, limit in TARGETS.values()},
                         "rss_mb": TARGET_RSS_MB}
    report["bench_s"] = round(time.monotonic() - began, 1)
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\n({report['bench_s']:.0f} s; JSON in {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
