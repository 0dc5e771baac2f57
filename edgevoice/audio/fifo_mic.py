"""A microphone made of a file: an ALSA `type file` PCM fed in real time through a FIFO.

For the offline demo (and tests): the daemon captures through PyAudio and ALSA exactly as
from a USB microphone, while the audio comes from a WAV file. Facts this relies on
(alsa-lib 1.2.8, PortAudio 19.6):

* `ALSA_CONFIG_PATH` replaces alsa-lib's top-level file, so the config includes the system
  `alsa.conf` first. The `type file` PCM sits under a `type plug` whose slave rate,
  channels and format are fixed, so the FIFO's bytes are read as S16_LE at that rate and
  PortAudio reports it as the device's default rate.
* PortAudio opens every PCM while it enumerates devices, and opening a FIFO for reading
  blocks until a writer has it open: the feeder must be running before `PyAudio()`.
  Enumeration opens and closes the PCM several times; each close makes the feeder's next
  write fail with EPIPE, and it reopens.
* The file plugin reads one period per `read(2)`; the feeder writes whole periods (the
  capture's frames per buffer) so every read returns exactly one written period.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

SYSTEM_ALSA_CONF = Path("/usr/share/alsa/alsa.conf")


def alsa_config_text(infile: Path, rate: int, channels: int, pcm_name: str) -> str:
    if '"' in str(infile) or "\\" in str(infile):
        raise ValueError(f"unsupported characters in {infile!s}")
    return f"""<{SYSTEM_ALSA_CONF}>

pcm.{pcm_name} {{
    type plug
    slave {{
        pcm {{
            type file
            slave.pcm null
            file "/dev/null"
            infile "{infile}"
            format "raw"
        }}
        rate {int(rate)}
        channels {int(channels)}
        format S16_LE
    }}
    hint.description "edgevoice file microphone"
}}
"""


class FifoFeeder(threading.Thread):
    """Writes interleaved int16 frames into a FIFO, one period at a time, in real time.

    After the signal ends it writes quiet noise (not digital zeros, like a real room) until
    stopped; `finished` is set when the signal has been delivered.
    """

    def __init__(self, path: Path, frames: npt.NDArray[np.int16], rate: int,
                 period_frames: int) -> None:
        super().__init__(name="fifo-feeder", daemon=True)
        if frames.ndim == 1:
            frames = frames[:, None]
        self._path = path
        self._frames = np.ascontiguousarray(frames, dtype="<i2")
        self._rate = rate
        self._period = period_frames
        self._halt = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def stop(self, timeout: float = 5.0) -> bool:
        self._halt.set()
        self.join(timeout)
        return not self.is_alive()

    def _open(self) -> int | None:
        """Open for writing without blocking; ENXIO means no reader yet: try again soon."""
        while not self._halt.is_set():
            try:
                return os.open(self._path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
            self._halt.wait(0.002)
        return None

    def _periods(self) -> Iterator[npt.NDArray[np.int16]]:
        n = self._period
        channels = self._frames.shape[1]
        rng = np.random.default_rng(0)
        for start in range(0, len(self._frames), n):
            block = self._frames[start:start + n]
            if len(block) < n:
                block = np.vstack([block, np.zeros((n - len(block), channels), "<i2")])
            yield block
        self.finished.set()
        while True:
            yield rng.normal(0, 8, (n, channels)).astype("<i2")

    def run(self) -> None:
        fd: int | None = None
        try:
            fd = self._open()
            start = time.monotonic()
            for sent, block in enumerate(self._periods(), start=1):
                if self._halt.is_set() or fd is None:
                    return
                data = block.tobytes()
                while True:
                    try:
                        os.write(fd, data)
                        break
                    except BlockingIOError:
                        self._halt.wait(0.002)  # the pipe is full: the reader is behind
                    except BrokenPipeError:
                        os.close(fd)
                        fd = self._open()  # a reader closed (device enumeration): reopen
                        if fd is None:
                            return
                    if self._halt.is_set():
                        return
                due = start + sent * self._period / self._rate
                self._halt.wait(max(0.0, due - time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - reported to whoever started us
            self.error = exc
        finally:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def make_fifo_microphone(directory: Path, pcm_name: str, rate: int,
                         channels: int) -> tuple[Path, Path]:
    """Create the FIFO and the ALSA config; returns (fifo, config) for ALSA_CONFIG_PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    fifo = directory / f"{pcm_name}.fifo"
    with contextlib.suppress(FileNotFoundError):
        fifo.unlink()
    os.mkfifo(fifo)
    config = directory / f"{pcm_name}.asoundrc"
    config.write_text(alsa_config_text(fifo, rate, channels, pcm_name))
    return fifo, config
