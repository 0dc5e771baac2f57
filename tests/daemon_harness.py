"""Run `edgevoice run` as a real subprocess against an in-process devserver, and account audio.

The source signal is a 24 kHz WAV (so the resampler is an identity) of ``signals.speech``,
which never repeats a 20 ms chunk: every chunk the server records maps to exactly one
position in the source, so loss and duplication are counted exactly, not estimated.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fakes
import numpy as np
import numpy.typing as npt
import yaml
from alsa_fixtures import write_wav

RATE = 24000
CHUNK_MS = 20
CHUNK = RATE * CHUNK_MS // 1000
KEY = "sk-" + "test-harness-0123456789abcdefghij"  # key-shaped (built so no literal
# in the source looks like a real key); must never be logged

# Fast settings so each fault resolves in seconds; every bound is still finite.
FAST: dict[str, Any] = {
    "audio": {"chunk_ms": CHUNK_MS},
    "server": {"api_key_env": "EDGEVOICE_TEST_KEY", "connect_timeout_s": 2.0,
               "socket_timeout_s": 0.2, "ping_interval_s": 0.5, "pong_timeout_s": 2.0,
               "session_update_timeout_s": 2.0},
    "session": {"silence_duration_ms": 300},
    "reconnect": {"initial_s": 0.2, "max_s": 1.0, "multiplier": 2.0, "stable_after_s": 5.0},
    "health": {"stall_timeout_s": 2.0, "silence_warn_s": 2.0},
    "stream": {"outage_buffer_s": 30.0},
    "logging": {"level": "debug", "journald": "off"},
}


@dataclass
class AudioAccount:
    received_chunks: int
    expected_chunks: int  # source chunks up to the last one received
    lost: int
    duplicated: int
    unknown: int  # received chunks that are not in the source at all
    per_session: list[tuple[int, int]]  # first and last source chunk index per session


def account_audio(source: npt.NDArray[np.int16], sessions_audio: list[bytes]) -> AudioAccount:
    index: dict[bytes, int] = {}
    raw = source.tobytes()
    step = CHUNK * 2
    for i in range(len(raw) // step):
        index.setdefault(raw[i * step:(i + 1) * step], i)
    seen: dict[int, int] = {}
    unknown = 0
    per_session = []
    for audio in sessions_audio:
        ids = []
        for j in range(len(audio) // step):
            k = index.get(audio[j * step:(j + 1) * step])
            if k is None:
                unknown += 1
                continue
            ids.append(k)
            seen[k] = seen.get(k, 0) + 1
        if ids:
            per_session.append((ids[0], ids[-1]))
    last = max(seen) if seen else -1
    lost = sum(1 for k in range(last + 1) if k not in seen)
    duplicated = sum(v - 1 for v in seen.values())
    return AudioAccount(sum(seen.values()) + unknown, last + 1, lost, duplicated, unknown,
                        per_session)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class DaemonProcess:
    """`python -m edgevoice run` with its stderr captured to a file we can wait on."""

    def __init__(self, workdir: Path, config: dict[str, Any],
                 env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.workdir = workdir
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "daemon.log"
        self._log = self.log_path.open("wb")
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                                 "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY")}
        full_env["EDGEVOICE_TEST_KEY"] = KEY
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgevoice", "run", "--config", str(self.config_path),
             *(args or [])],
            stdout=subprocess.PIPE, stderr=self._log, env=full_env, cwd=workdir,
        )
        self.stdout = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float, count: int = 1) -> bool:
        """Wait until `pattern` (regex) appears `count` times in the log, or the process ends."""
        regex = re.compile(pattern)

        def found() -> bool:
            return len(regex.findall(self.log())) >= count

        fakes.wait_until(lambda: found() or self.proc.poll() is not None, timeout)
        return found()

    def wait_exit(self, timeout: float) -> int | None:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.stdout = out.decode(errors="replace")
        return self.proc.returncode

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@contextmanager
def running_daemon(workdir: Path, config: dict[str, Any],
                   env: dict[str, str] | None = None,
                   args: list[str] | None = None) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(workdir, config, env, args)
    try:
        yield daemon
    finally:
        daemon.kill()
        assert KEY not in daemon.log(), "the API key reached the daemon's log"


def wav_config(workdir: Path, url: str, signal_: npt.NDArray[np.int16],
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    wav = write_wav(workdir / "source.wav", signal_, RATE)
    config = merge(FAST, {"audio": {"wav_file": str(wav)}, "server": {"url": url}})
    return merge(config, extra or {})
