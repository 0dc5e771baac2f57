"""`make demo`: the bundled sample, through a real ALSA PCM, to the local devserver.

Starts `edgevoice devserver` on a free loopback port and `edgevoice run` with
config/demo.yaml, feeding the bundled speech sample (as 48 kHz stereo, like a USB
microphone) into an ALSA file PCM in real time. Prints the daemon's log as it happens and
its summary at the end, and leaves no process behind, whatever happens.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import tempfile
from importlib import resources
from math import gcd
from pathlib import Path

import numpy as np

from edgevoice.audio.fifo_mic import FifoWriter, make_fifo_microphone
from edgevoice.audio.resample import resample
from edgevoice.audio.wav_source import load_wav_mono

PCM_NAME = "edgevoice_demo"
MIC_RATE = 48000
MIC_CHANNELS = 2
TAIL_S = 4.0  # after the sample: time for the last answer to arrive
DEMO_KEY = "demo-key-for-the-local-server"


def _config_path() -> Path:
    checkout = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
    if checkout.exists():
        return checkout
    raise SystemExit("config/demo.yaml not found: run `make demo` from the source checkout")


def _start_devserver(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgevoice", "devserver", "--port", "0", "--quiet",
         "--api-key", DEMO_KEY],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(ws://\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"devserver did not start: {line!r}")
    return proc, match.group(1)


def _stop(proc: subprocess.Popen[str], name: str, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"demo: {name} did not stop in {timeout:.0f}s; killing it", file=sys.stderr)
            proc.kill()
            proc.wait(5)


def main() -> int:
    sample = resources.files("edgevoice") / "data" / "sample.wav"
    with resources.as_file(sample) as path:
        mono, rate, _channels = load_wav_mono(path)
    # A 48 kHz stereo microphone, as most USB microphones are.
    up, down = MIC_RATE // gcd(MIC_RATE, rate), rate // gcd(MIC_RATE, rate)
    mic = resample(mono, rate, MIC_RATE) if (up, down) != (1, 1) else mono
    frames = np.stack([mic, mic], axis=1)
    duration = len(mono) / rate + TAIL_S

    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["EDGEVOICE_DEMO_KEY"] = DEMO_KEY
    with tempfile.TemporaryDirectory(prefix="edgevoice-demo-") as tmp:
        fifo, alsa_config = make_fifo_microphone(Path(tmp), PCM_NAME, MIC_RATE, MIC_CHANNELS)
        env["ALSA_CONFIG_PATH"] = str(alsa_config)
        # After the sample, a quiet room (faint noise, not digital zeros) until stopped. The
        # reader is the daemon, another process: no keeper needed (see fifo_mic).
        room = np.random.default_rng(0).normal(0, 8, (MIC_RATE, MIC_CHANNELS)).astype(np.int16)
        feeder = FifoWriter(fifo, rate=MIC_RATE, channels=MIC_CHANNELS,
                            chunk_frames=MIC_RATE * 20 // 1000,
                            signal=itertools.chain([frames], itertools.repeat(room)),
                            keep_open=False)
        feeder.start()
        server, url = _start_devserver(env)
        print(f"demo: devserver on {url}; streaming {len(mono) / rate:.1f} s of speech from "
              f"ALSA PCM '{PCM_NAME}' ({MIC_RATE} Hz, {MIC_CHANNELS} ch)\n", flush=True)
        daemon: subprocess.Popen[str] | None = None
        try:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "edgevoice", "run", "--config", str(_config_path()),
                 "--url", url, "--duration", f"{duration:.1f}", "--summary"],
                env=env, text=True,
            )
            code = daemon.wait(duration + 30)
        except subprocess.TimeoutExpired:
            print("demo: the daemon did not finish in time", file=sys.stderr)
            code = 1
        except KeyboardInterrupt:
            code = 130
        finally:
            if daemon is not None:
                _stop(daemon, "daemon")
            _stop(server, "devserver")
            if not feeder.stop(timeout=5.0):
                print("demo: the microphone feeder did not stop", file=sys.stderr)
        if feeder.error is not None:
            print(f"demo: feeding the microphone failed: {feeder.error}", file=sys.stderr)
            return 1
    print(f"\ndemo: finished with exit code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
