"""A speaker made of a file: an ALSA `type file` playback PCM read in real time from a FIFO.

For the offline demo (no sound card) and the tests: the daemon plays through PyAudio and
ALSA exactly as to a sound card, while the audio lands in memory or a WAV file. The PCM is
a ``type plug`` over a ``type file`` with ``format "wav"``, the FIFO as ``file`` and a null
slave; the plug's slave rate, channels and format are fixed, so the file plugin always
writes S16_LE at the declared rate/channels whatever the client opens. What was found out
(alsa-lib 1.2.8, PortAudio 19.6):

* The null slave takes every period at once: alone it would not pace anything. A
  ``FifoSpeaker`` thread reads the FIFO at the byte rate of the WAV header it found, like a
  sound card consumes, so the PortAudio callback runs in real time (``aplay`` of 3 s at
  48 kHz took 2.97 s and the reader got it byte-exact).
* alsa-lib opens ``file`` when the PCM is opened, and PortAudio opens every PCM while it
  enumerates and probes, so the reader holds the FIFO ``O_RDWR`` from before ``start()``
  returns until ``stop()``: no ``open(2)`` of the PCM blocks and no write fails. It
  therefore never sees end of file; each open of the PCM writes a new WAV header
  (``RIFF....WAVEfmt `` at a frame boundary), which is how a reopened stream is found.
  Before the first header, or while no data comes, nothing is paced.
* Audio the callback produced reaches the reader about 60 ms later than PortAudio's
  reported output latency says: it waits in the file plugin's write buffer and the pipe
  (shrunk to 4096 bytes with F_SETPIPE_SZ), where PortAudio cannot see it.

The reader must live in another process than the one playing, or in a thread of it that
never holds what PortAudio waits for (the tests do the latter; the demo the former).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import threading
import time
import wave
from pathlib import Path

from edgevoice.audio.fifo_mic import _F_GETPIPE_SZ, SYSTEM_ALSA_CONF, make_fifo

_F_SETPIPE_SZ: int = getattr(fcntl, "F_SETPIPE_SZ", 1031)
WAV_HEADER = 44


def speaker_config_text(fifo: str | Path, rate: int, channels: int, pcm_name: str) -> str:
    """The speaker's PCM alone (no ``<alsa.conf>`` include): append it to a microphone's
    config (``fifo_mic.alsa_config_text``) to have both in one ALSA_CONFIG_PATH."""
    if '"' in str(fifo) or "\\" in str(fifo):
        raise ValueError(f"unsupported characters in {fifo!s}")
    return f"""
pcm.{pcm_name} {{
    type plug
    slave {{
        pcm {{
            type file
            slave.pcm null
            file "{fifo}"
            format "wav"
        }}
        rate {int(rate)}
        channels {int(channels)}
        format S16_LE
    }}
    hint.description "edgevoice file speaker"
}}
"""


def make_fifo_speaker(directory: Path, pcm_name: str, rate: int,
                      channels: int) -> tuple[Path, str]:
    """Create the FIFO; returns (fifo, config text without the ``<alsa.conf>`` include)."""
    fifo = make_fifo(directory, pcm_name)
    return fifo, speaker_config_text(fifo, rate, channels, pcm_name)


def alsa_config_with_system(text: str) -> str:
    """``text`` behind the system ``alsa.conf`` include, as a whole ALSA_CONFIG_PATH file."""
    return f"<{SYSTEM_ALSA_CONF}>\n" + text


class FifoSpeaker(threading.Thread):
    """Reads the speaker FIFO at the byte rate of the WAV header it found, like a sound card.

    Subclasses (or the default, which only counts) get ``on_stream(rate, channels, at)`` at
    every WAV header (an open of the PCM) and ``on_audio(data, arrived)`` with whole frames
    of that stream. Errors end the thread and are kept in ``error``.
    """

    def __init__(self, fifo: Path, *, block_ms: int = 10) -> None:
        super().__init__(name=f"speaker-{fifo.name}", daemon=True)
        self.fifo = fifo
        self.block_ms = block_ms
        self.error: BaseException | None = None
        self.pipe_size = 0
        self.frames = 0  # frames received, all streams together
        self._stop_event = threading.Event()
        self._fd = -1

    def start(self) -> None:
        self._fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, _F_SETPIPE_SZ, 4096)
        self.pipe_size = fcntl.fcntl(self._fd, _F_GETPIPE_SZ)
        super().start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop reading and close the FIFO; True if the thread ended within ``timeout``."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)
        if self._fd >= 0 and not self.is_alive():
            os.close(self._fd)
            self._fd = -1
        return not self.is_alive()

    # -- what subclasses do with it (any of the reader's thread) --

    def on_stream(self, rate: int, channels: int, at: float) -> None:
        """A new WAV header: the PCM was (re)opened at ``rate``/``channels``."""

    def on_audio(self, data: bytes, arrived: float) -> None:
        """Whole interleaved S16_LE frames of the current stream."""

    # -- the thread --

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - reported through .error
            self.error = exc
        finally:
            self.on_end()

    def on_end(self) -> None:
        """The thread ends (stopped or failed)."""

    def _loop(self) -> None:
        pending = b""
        rate = channels = 0  # of the current stream; 0: no header seen yet
        due = 0.0  # when the next read may happen (pacing)
        while not self._stop_event.is_set():
            frame_bytes = 2 * channels if channels else 2
            byte_rate = rate * frame_bytes
            now = time.monotonic()
            if channels and due > now:
                self._stop_event.wait(due - now)
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if not ready:
                due = 0.0  # starved: a real card would underrun; restart the pacing
                if channels and pending:  # nothing more is coming: no header held
                    whole = len(pending) // frame_bytes * frame_bytes
                    self._deliver(pending[:whole], frame_bytes, time.monotonic())
                    pending = pending[whole:]
                continue
            want = byte_rate * self.block_ms // 1000 // frame_bytes * frame_bytes
            try:
                data = os.read(self._fd, max(want, frame_bytes) if channels else 4096)
            except BlockingIOError:
                continue
            arrived = time.monotonic()
            if channels:
                late = not due or arrived > due + 0.05
                due = (arrived if late else due) + len(data) / byte_rate
            pending += data
            while (header := find_wav_header(pending, frame_bytes)) is not None:
                start, rate, channels = header
                if start and channels:
                    self._deliver(pending[:start], frame_bytes, arrived)
                self.on_stream(rate, channels, arrived)
                pending = pending[start + WAV_HEADER:]
                frame_bytes = 2 * channels
                due = 0.0
            # hold back a header's length: a header may be split across two reads
            keep = max(0, len(pending) - WAV_HEADER) // frame_bytes * frame_bytes
            if channels and keep:
                self._deliver(pending[:keep], frame_bytes, arrived)
                pending = pending[keep:]
            elif not channels:
                pending = pending[-WAV_HEADER:]

    def _deliver(self, data: bytes, frame_bytes: int, arrived: float) -> None:
        usable = len(data) // frame_bytes * frame_bytes
        if usable:
            self.frames += usable // frame_bytes
            self.on_audio(data[:usable], arrived)


def find_wav_header(data: bytes, step: int) -> tuple[int, int, int] | None:
    """(offset, rate, channels) of the first WAV header at a multiple of ``step``."""
    pos = data.find(b"RIFF")
    while pos >= 0:
        if pos % step == 0 and len(data) >= pos + WAV_HEADER:
            if data[pos + 8:pos + 16] == b"WAVEfmt ":
                channels = int.from_bytes(data[pos + 22:pos + 24], "little")
                rate = int.from_bytes(data[pos + 24:pos + 28], "little")
                return pos, rate, channels
        elif len(data) < pos + WAV_HEADER:
            return None
        pos = data.find(b"RIFF", pos + 1)
    return None


class WavFileSpeaker(FifoSpeaker):
    """A ``FifoSpeaker`` that writes everything it plays into one WAV file (the demo's
    speaker without a sound card). Every open of the PCM continues the same file; a stream
    at another rate or channel count than the first is refused (``error``)."""

    def __init__(self, fifo: Path, wav_path: Path, *, block_ms: int = 10) -> None:
        super().__init__(fifo, block_ms=block_ms)
        self.wav_path = wav_path
        self.rate = 0
        self.channels = 0
        self._wav: wave.Wave_write | None = None

    def on_stream(self, rate: int, channels: int, at: float) -> None:
        if self._wav is None:
            self.wav_path.parent.mkdir(parents=True, exist_ok=True)
            wav = wave.open(str(self.wav_path), "wb")  # noqa: SIM115 - closed in on_end
            wav.setnchannels(channels)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            self._wav, self.rate, self.channels = wav, rate, channels
        elif (rate, channels) != (self.rate, self.channels):
            raise ValueError(f"speaker reopened at {rate} Hz, {channels} ch; the WAV file "
                             f"is {self.rate} Hz, {self.channels} ch")

    def on_audio(self, data: bytes, arrived: float) -> None:
        if self._wav is not None:
            self._wav.writeframesraw(data)

    def on_end(self) -> None:
        if self._wav is not None:
            self._wav.close()  # fixes the header's sizes
            self._wav = None

    @property
    def seconds(self) -> float:
        """Seconds of audio in the WAV file so far."""
        return self.frames / self.rate if self.rate else 0.0
