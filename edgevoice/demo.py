"""`make demo`: the bundled sample, through a real ALSA PCM, to the local devserver, and
the answers played back.

Starts `edgevoice devserver` on a free loopback port and `edgevoice run` with
config/demo.yaml, feeding the bundled speech sample (as 48 kHz stereo, like a USB
microphone) into an ALSA file PCM in real time. The answers play on the sound card when
there is one (`/proc/asound/cards` lists a card: `playback.device: default`); else on an
ALSA file PCM (`edgevoice.audio.fifo_speaker`, declared in the same ALSA config as the
microphone) read in real time into a WAV file kept after the demo (default
`$TMPDIR/edgevoice-demo-answers.wav`, or `--answers PATH`). Prints the daemon's log as it
happens and its summary at the end, and leaves no process behind, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
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
import yaml

from edgevoice.audio.fifo_mic import FifoWriter, make_fifo_microphone
from edgevoice.audio.fifo_speaker import WavFileSpeaker, make_fifo_speaker
from edgevoice.audio.resample import resample
from edgevoice.audio.wav_source import load_wav_mono

PCM_NAME = "edgevoice_demo"
MIC_RATE = 48000
MIC_CHANNELS = 2
SPEAKER_PCM_NAME = "edgevoice_demo_speaker"  # config/demo.yaml playback.device
SPEAKER_RATE = 48000
SPEAKER_CHANNELS = 1
TAIL_S = 8.0  # after the sample: time for the last answer to arrive and play
ANSWERS_NAME = "edgevoice-demo-answers.wav"
DEMO_KEY = "demo-key-for-the-local-server"


def _config_path() -> Path:
    checkout = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
    if checkout.exists():
        return checkout
    raise SystemExit("config/demo.yaml not found: run `make demo` from the source checkout")


def has_sound_card(cards: Path = Path("/proc/asound/cards")) -> bool:
    """True when ALSA lists a sound card (lines like `` 0 [PCH            ]: HDA-Intel``)."""
    try:
        text = cards.read_text()
    except OSError:
        return False
    return re.search(r"^\s*\d+\s+\[", text, re.MULTILINE) is not None


def _daemon_config(directory: Path, device: str) -> Path:
    """config/demo.yaml with ``playback.device`` filled in, written into ``directory``."""
    data = yaml.safe_load(_config_path().read_text())
    data.setdefault("playback", {})["device"] = device
    path = directory / "demo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m edgevoice.demo",
                                     description="the offline demo (`make demo`)")
    parser.add_argument("--speaker", choices=("auto", "card", "file"), default="auto",
                        help="where the answers play: the sound card, a WAV file, or the "
                             "card when there is one (default)")
    parser.add_argument("--answers", type=Path, metavar="WAV",
                        default=Path(tempfile.gettempdir()) / ANSWERS_NAME,
                        help="the WAV file the answers go to without a sound card "
                             "(default: %(default)s)")
    return parser.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    to_card = args.speaker == "card" or (args.speaker == "auto" and has_sound_card())
    answers: Path = args.answers.resolve()
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
        speaker: WavFileSpeaker | None = None
        if not to_card:
            # The speaker PCM goes into the microphone's ALSA config (one ALSA_CONFIG_PATH).
            # Its reader holds the FIFO open from before the daemon starts: PortAudio opens
            # every PCM while it enumerates, and open(2) of a FIFO without a reader blocks.
            spk_fifo, spk_text = make_fifo_speaker(Path(tmp), SPEAKER_PCM_NAME,
                                                   SPEAKER_RATE, SPEAKER_CHANNELS)
            with alsa_config.open("a") as f:
                f.write(spk_text)
            with contextlib.suppress(FileNotFoundError):
                answers.unlink()
            speaker = WavFileSpeaker(spk_fifo, answers)
            speaker.start()
        config = _daemon_config(Path(tmp), "default" if to_card else SPEAKER_PCM_NAME)
        # After the sample, a quiet room (faint noise, not digital zeros) until stopped. The
        # reader is the daemon, another process: no keeper needed (see fifo_mic).
        # New noise every second: a repeated buffer is what a dead microphone delivers.
        rng = np.random.default_rng(0)
        room = (rng.normal(0, 8, (MIC_RATE, MIC_CHANNELS)).astype(np.int16)
                for _ in itertools.count())
        feeder = FifoWriter(fifo, rate=MIC_RATE, channels=MIC_CHANNELS,
                            chunk_frames=MIC_RATE * 20 // 1000,
                            signal=itertools.chain([frames], room),
                            keep_open=False)
        feeder.start()
        server, url = _start_devserver(env)
        print(f"demo: devserver on {url}; streaming {len(mono) / rate:.1f} s of speech from "
              f"ALSA PCM '{PCM_NAME}' ({MIC_RATE} Hz, {MIC_CHANNELS} ch); the answers play "
              + ("on the sound card (ALSA default)" if to_card else
                 f"on ALSA PCM '{SPEAKER_PCM_NAME}' into {answers}") + "\n", flush=True)
        daemon: subprocess.Popen[str] | None = None
        try:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "edgevoice", "run", "--config", str(config),
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
            if speaker is not None and not speaker.stop(timeout=5.0):
                print("demo: the speaker did not stop", file=sys.stderr)
        if feeder.error is not None:
            print(f"demo: feeding the microphone failed: {feeder.error}", file=sys.stderr)
            return 1
        if speaker is not None and speaker.error is not None:
            print(f"demo: the speaker failed: {speaker.error}", file=sys.stderr)
            return 1
    if speaker is not None:
        if speaker.frames:
            print(f"\ndemo: the answers are in {answers} ({speaker.seconds:.1f} s)")
        else:
            print(f"\ndemo: the speaker received nothing ({answers} not written)")
    print(f"\ndemo: finished with exit code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
