"""A fake microphone for integration tests: an ALSA ``type file`` PCM fed through a FIFO.

Import these helpers from tests (this is not a conftest)::

    with fake_microphone(tmp_path, rate=48000, channels=2, signal=stereo(l, r)) as mic:
        src = PyAudioSource(mic.device, rate=48000)      # os.environ points at mic.env
        ...
    # or, for a subprocess:  env = {**os.environ, **mic.env}

What was found out empirically (alsa-lib 1.2.8, PortAudio 19.6, PyAudio 0.2.14):

* The ALSA configuration below works. ``ALSA_CONFIG_PATH`` replaces alsa-lib's top-level
  file, so it includes the system ``alsa.conf`` first (without it PortAudio does not start).
  The ``type file`` PCM is declared inline as the slave of a ``type plug`` whose slave rate,
  channels and format are fixed; the raw bytes of ``infile`` are therefore always read as
  S16_LE at the declared rate/channels whatever the client opens, and PortAudio reports the
  declared rate as the device's default rate (a bare ``type file`` PCM reports 44100 Hz and
  128 channels whatever the data is). Only the plug PCM is enumerated, as ``edgevoice_test``
  with 128 input channels; every rate and channel count is "supported" (plug converts).
* PortAudio reads ``ALSA_CONFIG_PATH`` when it initialises, and ``Pa_Terminate`` frees
  alsa-lib's global configuration, so setting ``os.environ`` before ``PyAudio()`` works in
  process, test after test, as long as no other ``PyAudio`` instance is alive at that moment
  (PortAudio is reference counted: a second ``PyAudio()`` does not re-read anything). Every
  test therefore closes its source (which terminates PortAudio) before the next config is
  used. Subprocesses get ``mic.env`` merged into their environment.
* alsa-lib opens ``infile`` when the PCM is opened, and PortAudio opens every capture PCM
  while it enumerates (and again for every ``is_format_supported`` and ``open``), so with a
  FIFO each of these blocks in ``open(2)`` until a writer has the FIFO open. Worse,
  PyAudio's ``is_format_supported`` holds the GIL while it blocks there (``PyAudio()`` and
  ``open()`` release it), so a writer *thread* that is between two opens at that moment can
  never run again: the process deadlocks (or, as seen under pytest with scipy loaded,
  segfaults). ``FifoWriter.start()`` therefore first opens a "keeper" descriptor
  ``O_RDWR`` (Linux allows that on a FIFO and it never blocks) and holds it until ``stop()``
  or ``close()``: a writer always exists, so readers never block in ``open(2)``, and a reader
  always exists, so writes never fail with EPIPE when PortAudio closes a probing handle.
  What such a handle did not read stays in the pipe, in order, for the next reader; to keep
  that backlog small the writer does not write while two chunks are already queued (a
  microphone nobody listens to does not buffer). With ``keep_open=False`` the writer
  instead polls ``open(O_WRONLY|O_NONBLOCK)`` (ENXIO while there is no reader) every 2 ms
  and, when a write fails with EPIPE because the reader closed, reopens and puts the bytes
  that reader never read (FIONREAD) back in front of the signal; that mode is only safe
  when the reader is another process.
* The file plugin does one ``read(2)`` per period and commits the whole period even when the
  read returned less (the rest of the buffer keeps stale data). Reads on a FIFO return what
  is there, so the writer must write whole periods: ``chunk_frames`` must equal the reader's
  ``frames_per_buffer`` (``PyAudioSource``: rate * block_ms / 1000), or a multiple of it.
  Writes of up to 4096 bytes (PIPE_BUF) are atomic. Then the reader gets exactly the
  frames written, paced by the writer.
* Open the PCM at exactly its declared rate and channel count (plug then passes through).
  If plug has to convert (say a mono PCM opened with 2 channels), its conversion plugin
  reads ahead from the file plugin in whole buffer-sized pieces, each of which is committed
  in full even when the FIFO had only one chunk: most of the data then is stale. A plain
  file ``infile`` (always enough data) does not suffer from this.
* ``pause()`` keeps the FIFO open without writing: the reader blocks in ``read(2)`` inside
  PortAudio's callback thread, callbacks stop, the stream stays "active" (a stall).
  ``Pa_CloseStream``/``Pa_StopStream`` then hang until data or EOF arrives; this is how the
  tests show that ``PyAudioSource.close()`` is bounded. ``close()`` closes the write end
  (and the keeper): the reader gets EOF and the file plugin then repeats stale data as fast
  as it is read.
* A plain file as ``infile`` is read as fast as possible (no pacing) and, after its end,
  stale data repeats. The null slave never reports an xrun, so PortAudio's
  ``paInputOverflow`` cannot be provoked with this PCM.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import select
import shutil
import subprocess
import tempfile
import termios
import threading
import time
import wave
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgevoice.audio import fifo_mic

PCM_NAME = "edgevoice_test"
SYSTEM_ALSA_CONF = fifo_mic.SYSTEM_ALSA_CONF
_F_GETPIPE_SZ: int = getattr(fcntl, "F_GETPIPE_SZ", 1032)

Int16Array = npt.NDArray[np.int16]
Signal = Int16Array | Iterable[Int16Array]


# -- ALSA configuration ----------------------------------------------------------------------


def alsa_config_text(
    *, infile: str | Path, rate: int, channels: int, pcm_name: str = PCM_NAME, extra: str = ""
) -> str:
    """Text of an ALSA config defining ``pcm_name`` as described in the module docstring.

    The same PCM the demo uses (edgevoice.audio.fifo_mic), plus optional ``extra`` text.
    """
    return fifo_mic.alsa_config_text(Path(infile), rate, channels, pcm_name) + extra


def write_alsa_config(
    path: str | Path,
    *,
    infile: str | Path,
    rate: int,
    channels: int,
    pcm_name: str = PCM_NAME,
    extra: str = "",
) -> Path:
    """Write the config to ``path`` and return it (use it as ALSA_CONFIG_PATH)."""
    path = Path(path)
    path.write_text(
        alsa_config_text(
            infile=infile, rate=rate, channels=channels, pcm_name=pcm_name, extra=extra
        )
    )
    return path


# -- signals ---------------------------------------------------------------------------------


def tone(
    freq: float, seconds: float, rate: int, amplitude: float = 0.5, phase: float = 0.0
) -> Int16Array:
    """A sine at ``amplitude`` of full scale, mono int16."""
    t = np.arange(round(seconds * rate)) / rate
    return np.round(np.sin(2 * np.pi * freq * t + phase) * amplitude * 32767).astype(np.int16)


def ramp(frames: int, start: int = 0, modulo: int = 30000) -> Int16Array:
    """Frame counter modulo ``modulo``: each sample tells its own position."""
    return ((np.arange(frames, dtype=np.int64) + start) % modulo).astype(np.int16)


def stereo(left: Int16Array, right: Int16Array) -> Int16Array:
    """Interleave two mono signals as an (n, 2) array."""
    n = min(left.size, right.size)
    return np.stack([left[:n], right[:n]], axis=1).astype(np.int16)


def _read_wav_int16(path: Path) -> tuple[Int16Array, int]:
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError("expected 16-bit samples")
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
        return data.reshape(-1, wav.getnchannels())[:, 0].copy(), wav.getframerate()


def _fit(signal: Int16Array, frames: int) -> Int16Array:
    if signal.size == 0:
        return np.zeros(frames, dtype=np.int16)
    reps = math.ceil(frames / signal.size)
    fitted: Int16Array = np.tile(signal, reps)[:frames].astype(np.int16)
    return fitted


def synthetic_speech(seconds: float, rate: int, seed: int = 1) -> Int16Array:
    """Amplitude-modulated harmonics with a wandering pitch: speech-like without espeak-ng."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    f0 = 120 + 25 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 2.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = np.zeros(n)
    for k in range(1, 16):
        formant = np.exp(-(((k * 130) - 700) ** 2) / 2e5) + 0.5 * np.exp(
            -(((k * 130) - 1200) ** 2) / 4e5
        )
        voiced += (formant + 0.05) / k * np.sin(k * phase)
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 2
    words = (np.sin(2 * np.pi * 0.5 * t) > -0.6).astype(float)  # a pause now and then
    signal = voiced * syllables * words + 0.01 * rng.standard_normal(n)
    signal *= 0.4 / max(1e-9, float(np.abs(signal).max()))
    speech: Int16Array = np.round(signal * 32767).astype(np.int16)
    return speech


def speech_like(
    seconds: float, rate: int, text: str = "testing one two three, the quick brown fox"
) -> Int16Array:
    """Mono int16 speech: espeak-ng resampled with sox, else ``synthetic_speech``."""
    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    if espeak and sox:
        with tempfile.TemporaryDirectory(prefix="edgevoice-speech-") as tmp:
            raw, out = Path(tmp) / "espeak.wav", Path(tmp) / "speech.wav"
            try:
                subprocess.run(
                    [espeak, "-w", str(raw), text], check=True, capture_output=True, timeout=20
                )
                subprocess.run(
                    [sox, str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out)],
                    check=True,
                    capture_output=True,
                    timeout=20,
                )
                samples, got_rate = _read_wav_int16(out)
                if got_rate == rate and samples.size:
                    return _fit(samples, round(seconds * rate))
            except (OSError, subprocess.SubprocessError, ValueError, wave.Error):
                pass
    return synthetic_speech(seconds, rate)


def write_wav(path: str | Path, samples: Int16Array, rate: int) -> Path:
    """Write int16 samples, shape (n,) or (n, channels), as a WAV file."""
    path = Path(path)
    frames = samples.reshape(samples.shape[0], -1)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(frames.shape[1])
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(frames.astype("<i2").tobytes())
    return path


# -- the FIFO writer -------------------------------------------------------------------------


def _as_frames(chunk: Int16Array, channels: int) -> Int16Array:
    arr = np.asarray(chunk, dtype=np.int16)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1) if channels == 1 else np.repeat(arr[:, None], channels, axis=1)
    if arr.ndim != 2 or arr.shape[1] != channels:
        raise ValueError(f"expected (frames, {channels}) samples, got shape {arr.shape}")
    return arr


def _signal_chunks(signal: Signal | None, loop: bool) -> Iterator[Int16Array]:
    if signal is None:
        return iter(())
    if isinstance(signal, np.ndarray):
        array = signal

        def repeat() -> Iterator[Int16Array]:
            yield array
            while loop and array.size:
                yield array

        return repeat()
    return iter(signal)


def _zeros_forever(frames: int, channels: int) -> Iterator[Int16Array]:
    block = np.zeros((frames, channels), dtype=np.int16)
    while True:
        yield block


class FifoWriter(threading.Thread):
    """Write int16 interleaved frames into a FIFO in real time, one whole chunk at a time.

    ``signal`` is a numpy array ((n,) or (n, channels); mono is copied to every channel) or
    an iterable of such arrays. An array repeats when ``loop`` is true. A finite signal is
    padded with zeros to a whole chunk; when it is used up the writer keeps the FIFO open
    without writing (the reader stalls) and ``exhausted`` is set.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        rate: int,
        channels: int,
        chunk_frames: int,
        signal: Signal | None = None,
        loop: bool = True,
        keep_open: bool = True,
        max_queued_chunks: int = 2,
    ) -> None:
        super().__init__(name=f"fifo-writer-{Path(path).name}", daemon=True)
        if chunk_frames <= 0:
            raise ValueError("chunk_frames must be positive")
        self.path = Path(path)
        self.rate = rate
        self.channels = channels
        self.chunk_frames = chunk_frames
        self.frame_bytes = 2 * channels
        self.keep_open = keep_open
        self.max_queued_chunks = max_queued_chunks
        self._keeper = -1
        self.stop_event = threading.Event()
        self.exhausted = threading.Event()
        self.connected = threading.Event()
        self.error: BaseException | None = None
        self.opens = 0
        self.broken_pipes = 0
        self._lock = threading.Lock()
        self._paused = threading.Event()
        self._close_requested = threading.Event()
        self._source: Iterator[Int16Array] = _signal_chunks(signal, loop)
        self._pending: Int16Array = np.zeros((0, channels), dtype=np.int16)
        self._net_bytes = 0  # written minus what closed readers never read
        self._generation = 0

    # -- control (any thread) --

    @property
    def frames_written(self) -> int:
        """Frames that went into the FIFO (minus, without the keeper, those a closing reader
        never read). With the keeper, up to ``max_queued_chunks`` of them may still sit in the
        pipe."""
        return self._net_bytes // self.frame_bytes

    def feed(self, signal: Signal | None, *, loop: bool = True) -> None:
        """Replace the signal (takes effect at the next chunk)."""
        with self._lock:
            self._source = _signal_chunks(signal, loop)
            self._pending = np.zeros((0, self.channels), dtype=np.int16)
            self._generation += 1
            self.exhausted.clear()

    def feed_zeros(self) -> None:
        """From the next chunk on, write digital silence until fed something else."""
        self.feed(_zeros_forever(self.chunk_frames, self.channels))

    def pause(self) -> None:
        """Stop writing but keep the FIFO open: the reader blocks (a stall)."""
        self._paused.set()

    def resume(self) -> None:
        """Continue writing, paced from now (no burst to catch up)."""
        self._paused.clear()

    def close(self) -> None:
        """Close the write end and the keeper (the reader sees EOF) until reopen()."""
        self._close_requested.set()

    def reopen(self) -> None:
        self._close_requested.clear()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread and close the FIFO; True if the thread ended within ``timeout``."""
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout)
        return not self.is_alive()

    def wait_frames(self, frames: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.frames_written < frames:
            if time.monotonic() >= deadline or not self.is_alive():
                return False
            time.sleep(0.005)
        return True

    def __enter__(self) -> FifoWriter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the thread --

    def start(self) -> None:
        """Open the keeper descriptor (see the module docstring), then start the thread."""
        if self.keep_open:
            self._keeper = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        super().start()

    def _close_keeper(self) -> None:
        if self._keeper >= 0:
            os.close(self._keeper)
            self._keeper = -1

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                if self._close_requested.is_set():
                    self._close_keeper()
                    self.stop_event.wait(0.005)
                    continue
                if self.keep_open and self._keeper < 0:
                    self._keeper = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
                fd = self._open()
                if fd is None:
                    continue
                try:
                    self._serve(fd)
                finally:
                    self.connected.clear()
                    os.close(fd)
        except BaseException as exc:  # noqa: BLE001 - reported through .error to the test
            self.error = exc
        finally:
            self._close_keeper()

    def _open(self) -> int | None:
        while not self.stop_event.is_set() and not self._close_requested.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                self.stop_event.wait(0.002)
                continue
            self.opens += 1
            self.connected.set()
            return fd
        return None

    def _next_chunk(self) -> Int16Array | None:
        with self._lock:
            while self._pending.shape[0] < self.chunk_frames:
                try:
                    more = _as_frames(next(self._source), self.channels)
                except StopIteration:
                    if self._pending.shape[0] == 0:
                        return None
                    pad = np.zeros(
                        (self.chunk_frames - self._pending.shape[0], self.channels), np.int16
                    )
                    more = pad
                self._pending = np.concatenate([self._pending, more])
            chunk = self._pending[: self.chunk_frames]
            self._pending = self._pending[self.chunk_frames :]
            return chunk

    def _requeue(self, data: bytes) -> None:
        usable = len(data) - len(data) % self.frame_bytes
        if usable <= 0:
            return
        frames = np.frombuffer(data[len(data) - usable :], dtype="<i2").astype(np.int16)
        with self._lock:
            self._pending = np.concatenate([frames.reshape(-1, self.channels), self._pending])

    def _serve(self, fd: int) -> None:
        try:
            capacity = fcntl.fcntl(fd, _F_GETPIPE_SZ)
        except OSError:
            capacity = 1 << 16
        history: deque[bytes] = deque()  # recently written bytes, about one pipe's worth
        history_bytes = 0
        t0, sent = time.monotonic(), 0
        while not self.stop_event.is_set():
            if self._close_requested.is_set():
                return
            if self._paused.is_set():
                self.stop_event.wait(0.005)
                t0, sent = time.monotonic(), 0
                continue
            now = time.monotonic()
            due = t0 + sent / self.rate
            if due - now > 0:
                self.stop_event.wait(min(due - now, 0.05))
                continue
            if now - due > 0.2:  # fell far behind (reader not reading): re-anchor
                t0, sent = now, 0
            if self.keep_open and self._queued(fd) >= self.max_queued_chunks * self.chunk_frames:
                self.stop_event.wait(min(self.chunk_frames / self.rate, 0.01))
                t0, sent = time.monotonic(), 0  # nobody reads: do not get ahead
                continue
            with self._lock:
                generation = self._generation
            chunk = self._next_chunk()
            if chunk is None:
                self.exhausted.set()
                self.stop_event.wait(0.01)
                continue
            data = chunk.astype("<i2").tobytes()
            done, broken = self._write(fd, data)
            self._net_bytes += done
            if broken:  # EPIPE: the reader went away
                self.broken_pipes += 1
                unread = self._queued(fd) * self.frame_bytes
                in_pipe = (b"".join(history) + data[:done])[-unread:] if unread > 0 else b""
                self._net_bytes -= len(in_pipe)
                with self._lock:
                    same_signal = generation == self._generation
                if same_signal:
                    self._requeue(in_pipe + data[done:])
                return
            if done < len(data):  # stopped while writing
                return
            history.append(data)
            history_bytes += len(data)
            while history and history_bytes - len(history[0]) >= capacity:
                history_bytes -= len(history.popleft())
            sent += chunk.shape[0]

    def _queued(self, fd: int) -> int:
        """Frames in the pipe that no reader has taken yet."""
        try:
            raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return 0
        return int.from_bytes(raw, "little", signed=True) // self.frame_bytes

    def _write(self, fd: int, data: bytes) -> tuple[int, bool]:
        """(bytes written, reader gone): all bytes unless stopped or EPIPE."""
        view = memoryview(data)
        done = 0
        while done < len(data) and not self.stop_event.is_set():
            _, writable, _ = select.select([], [fd], [], 0.05)
            if not writable:
                continue
            try:
                done += os.write(fd, view[done:])
            except BlockingIOError:
                continue
            except BrokenPipeError:
                return done, True
        return done, False


# -- the context manager ---------------------------------------------------------------------


@dataclass
class FakeMic:
    """What ``fake_microphone`` yields; unpacks as ``env, device``."""

    env: dict[str, str]
    device: str
    writer: FifoWriter | None
    config_path: Path
    infile: Path
    rate: int
    channels: int
    chunk_frames: int
    extra: dict[str, object] = field(default_factory=dict)

    def __iter__(self) -> Iterator[object]:
        yield self.env
        yield self.device

    def check_writer(self) -> None:
        """Raise the writer thread's exception, if it had one."""
        if self.writer is not None and self.writer.error is not None:
            raise AssertionError(f"FIFO writer failed: {self.writer.error!r}")


@contextlib.contextmanager
def fake_microphone(
    directory: str | Path,
    *,
    rate: int,
    channels: int,
    signal: Signal | None = None,
    fifo: bool = True,
    loop: bool = True,
    block_ms: int = 20,
    chunk_frames: int | None = None,
    set_environ: bool = True,
    pcm_name: str = PCM_NAME,
    extra_config: str = "",
    keep_open: bool = True,
) -> Iterator[FakeMic]:
    """An ALSA capture PCM ``pcm_name`` delivering ``signal`` at ``rate``/``channels``.

    ``fifo=True``: a FIFO fed in real time by a started ``FifoWriter`` (whole chunks of
    ``chunk_frames``, default ``rate * block_ms / 1000`` to match ``PyAudioSource``).
    ``fifo=False``: a plain file holding ``signal`` (an array), read as fast as possible.
    ``keep_open=False`` drops the writer's keeper descriptor (only for readers in another
    process; see the module docstring).
    ``set_environ=True`` points ``os.environ["ALSA_CONFIG_PATH"]`` at the config for the
    duration (restored afterwards). On exit the writer is stopped (joined with a timeout);
    close the sources that use the PCM before leaving the block.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chunk = chunk_frames or max(1, rate * block_ms // 1000)
    writer: FifoWriter | None = None
    if fifo:
        infile = directory / f"{pcm_name}.fifo"
        with contextlib.suppress(FileNotFoundError):
            infile.unlink()
        os.mkfifo(infile)
        writer = FifoWriter(
            infile,
            rate=rate,
            channels=channels,
            chunk_frames=chunk,
            signal=signal,
            loop=loop,
            keep_open=keep_open,
        )
    else:
        if not isinstance(signal, np.ndarray):
            raise ValueError("a plain-file microphone needs the signal as an array")
        infile = directory / f"{pcm_name}.raw"
        infile.write_bytes(_as_frames(signal, channels).astype("<i2").tobytes())
    config = write_alsa_config(
        directory / f"{pcm_name}.asoundrc",
        infile=infile,
        rate=rate,
        channels=channels,
        pcm_name=pcm_name,
        extra=extra_config,
    )
    env = {"ALSA_CONFIG_PATH": str(config)}
    previous = os.environ.get("ALSA_CONFIG_PATH")
    try:
        if writer is not None:
            writer.start()
        if set_environ:
            os.environ["ALSA_CONFIG_PATH"] = str(config)
        yield FakeMic(env, pcm_name, writer, config, infile, rate, channels, chunk)
    finally:
        if set_environ:
            if previous is None:
                os.environ.pop("ALSA_CONFIG_PATH", None)
            else:
                os.environ["ALSA_CONFIG_PATH"] = previous
        stopped = writer is None or writer.stop(timeout=5.0)
    # Only reached without an exception in flight, so it never masks the test's own error.
    if not stopped:
        raise RuntimeError(f"FIFO writer {writer.name if writer else ''} did not stop in 5 s")


# A PCM that alsa-lib cannot open: PortAudio probes it during PyAudio() and alsa-lib prints
# "ALSA lib pcm.c:...(snd_pcm_open_noupdate) Unknown PCM edgevoice_no_such_pcm" every time,
# on any host (with or without sound cards). Pass it as ``extra_config`` for noise tests.
NOISY_PCM_CONFIG = """
pcm.edgevoice_broken {
    type plug
    slave.pcm "edgevoice_no_such_pcm"
}
"""
