"""A microphone made of a file: an ALSA `type file` PCM fed in real time through a FIFO.

For the offline demo and the tests: the daemon captures through PyAudio and ALSA exactly as
from a USB microphone, while the audio comes from memory (the bundled sample, a test signal).
What was found out empirically (alsa-lib 1.2.8, PortAudio 19.6, PyAudio 0.2.14):

* `ALSA_CONFIG_PATH` replaces alsa-lib's top-level file, so the config includes the system
  `alsa.conf` first (without it PortAudio does not start). The `type file` PCM is declared
  inline as the slave of a `type plug` whose slave rate, channels and format are fixed; the
  bytes of `infile` are therefore always read as S16_LE at the declared rate/channels
  whatever the client opens, and PortAudio reports the declared rate as the device's default
  rate (a bare `type file` PCM reports 44100 Hz and 128 channels whatever the data is). Only
  the plug PCM is enumerated, with 128 input channels; every rate and channel count is
  "supported" (plug converts).
* alsa-lib opens `infile` when the PCM is opened, and PortAudio opens every capture PCM
  while it enumerates (and again for every `is_format_supported` and `open`), so with a FIFO
  each of these blocks in `open(2)` until a writer has the FIFO open: the writer must be
  running before `PyAudio()`. Worse, PyAudio's `is_format_supported` holds the GIL while it
  blocks there (`PyAudio()` and `open()` release it), so a writer *thread* in the reading
  process that is between two opens at that moment can never run again: the process
  deadlocks (or, as seen under pytest with scipy loaded, segfaults). `FifoWriter.start()`
  therefore first opens a "keeper" descriptor `O_RDWR` (Linux allows that on a FIFO and it
  never blocks) and holds it until `stop()` or `close()`: a writer always exists, so readers
  never block in `open(2)`, and a reader always exists, so writes never fail with EPIPE when
  PortAudio closes a probing handle. What such a handle did not read stays in the pipe, in
  order, for the next reader; to keep that backlog small the writer does not write while two
  chunks are already queued (a microphone nobody listens to does not buffer).
* With `keep_open=False` (the demo: the reader is the daemon, another process) there is no
  keeper: the writer polls `open(O_WRONLY|O_NONBLOCK)` (ENXIO while there is no reader)
  every 2 ms. Enumeration opens and closes the PCM several times; each close makes the next
  write fail with EPIPE, and the writer reopens and puts the bytes that reader never read
  (FIONREAD) back in front of the signal. That mode is only safe when the reader is another
  process.
* The file plugin does one `read(2)` per period and commits the whole period even when the
  read returned less (the rest of the buffer keeps stale data). Reads on a FIFO return what
  is there, so the writer must write whole periods: `chunk_frames` must equal the reader's
  frames per buffer (`PyAudioSource`: rate * block_ms / 1000), or a multiple of it. Writes
  of up to 4096 bytes (PIPE_BUF) are atomic. Then the reader gets exactly the frames
  written, paced by the writer.
* Open the PCM at exactly its declared rate and channel count (plug then passes through).
  If plug has to convert (say a mono PCM opened with 2 channels), its conversion plugin
  reads ahead from the file plugin in whole buffer-sized pieces, each of which is committed
  in full even when the FIFO had only one chunk: most of the data then is stale.
* `pause()` keeps the FIFO open without writing: the reader blocks in `read(2)` inside
  PortAudio's callback thread, callbacks stop, the stream stays "active" (a stall).
  `Pa_CloseStream`/`Pa_StopStream` then hang until data or EOF arrives. `close()` closes
  the write end (and the keeper): the reader gets EOF and the file plugin then repeats stale
  data as fast as it is read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import termios
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

SYSTEM_ALSA_CONF = Path("/usr/share/alsa/alsa.conf")
_F_GETPIPE_SZ: int = getattr(fcntl, "F_GETPIPE_SZ", 1032)

Int16Array = npt.NDArray[np.int16]
Signal = Int16Array | Iterable[Int16Array]
"""An array, (n,) or (n, channels), or an iterable of such arrays."""


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


def as_frames(samples: Int16Array, channels: int) -> Int16Array:
    """``samples`` as (frames, channels) int16; mono is copied to every channel."""
    arr = np.asarray(samples, dtype=np.int16)
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


class FifoWriter(threading.Thread):
    """Write int16 interleaved frames into a FIFO in real time, one whole chunk at a time.

    ``signal`` is a numpy array ((n,) or (n, channels); mono is copied to every channel) or
    an iterable of such arrays. An array repeats when ``loop`` is true. A finite signal is
    padded with zeros to a whole chunk; when it is used up the writer keeps the FIFO open
    without writing (the reader stalls) and ``exhausted`` is set. ``keep_open``: hold the
    keeper descriptor (see the module docstring); only a writer whose reader is another
    process may do without. Errors end the thread and are kept in ``error``.
    """

    MAX_QUEUED_CHUNKS = 2
    """With the keeper: do not write while this many chunks are still unread in the pipe."""

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
    ) -> None:
        super().__init__(name=f"fifo-writer-{Path(path).name}", daemon=True)
        if chunk_frames <= 0:
            raise ValueError("chunk_frames must be positive")
        self._path = Path(path)
        self._rate = rate
        self._channels = channels
        self._chunk_frames = chunk_frames
        self._frame_bytes = 2 * channels
        self._keep_open = keep_open
        self._keeper = -1
        self._halt = threading.Event()
        self.exhausted = threading.Event()
        self.error: BaseException | None = None
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
        never read). With the keeper, up to ``MAX_QUEUED_CHUNKS`` of them may still sit in
        the pipe."""
        return self._net_bytes // self._frame_bytes

    def feed(self, signal: Signal | None, *, loop: bool = True) -> None:
        """Replace the signal (takes effect at the next chunk)."""
        with self._lock:
            self._source = _signal_chunks(signal, loop)
            self._pending = np.zeros((0, self._channels), dtype=np.int16)
            self._generation += 1
            self.exhausted.clear()

    def feed_zeros(self) -> None:
        """From the next chunk on, write digital silence until fed something else."""
        self.feed(np.zeros((self._chunk_frames, self._channels), dtype=np.int16))

    def pause(self) -> None:
        """Stop writing but keep the FIFO open: the reader blocks (a stall)."""
        self._paused.set()

    def resume(self) -> None:
        """Continue writing, paced from now (no burst to catch up)."""
        self._paused.clear()

    def close(self) -> None:
        """Close the write end and the keeper for good: the reader sees EOF."""
        self._close_requested.set()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread and close the FIFO; True if the thread ended within ``timeout``."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout)
        return not self.is_alive()

    # -- the thread --

    def start(self) -> None:
        """Open the keeper descriptor (see the module docstring), then start the thread."""
        if self._keep_open:
            self._keeper = os.open(self._path, os.O_RDWR | os.O_NONBLOCK)
        super().start()

    def _close_keeper(self) -> None:
        if self._keeper >= 0:
            os.close(self._keeper)
            self._keeper = -1

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                if self._close_requested.is_set():
                    self._close_keeper()
                    self._halt.wait(0.005)
                    continue
                fd = self._open()
                if fd is None:
                    continue
                try:
                    self._serve(fd)
                finally:
                    os.close(fd)
        except BaseException as exc:  # noqa: BLE001 - reported through .error
            self.error = exc
        finally:
            self._close_keeper()

    def _open(self) -> int | None:
        """Open for writing without blocking; ENXIO means no reader yet: try again soon."""
        while not self._halt.is_set() and not self._close_requested.is_set():
            try:
                return os.open(self._path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
            self._halt.wait(0.002)
        return None

    def _next_chunk(self) -> Int16Array | None:
        with self._lock:
            while self._pending.shape[0] < self._chunk_frames:
                try:
                    more = as_frames(next(self._source), self._channels)
                except StopIteration:
                    if self._pending.shape[0] == 0:
                        return None
                    more = np.zeros(
                        (self._chunk_frames - self._pending.shape[0], self._channels), np.int16
                    )
                self._pending = np.concatenate([self._pending, more])
            chunk = self._pending[: self._chunk_frames]
            self._pending = self._pending[self._chunk_frames :]
            return chunk

    def _requeue(self, data: bytes) -> None:
        usable = len(data) - len(data) % self._frame_bytes
        if usable <= 0:
            return
        frames = np.frombuffer(data[len(data) - usable :], dtype="<i2").astype(np.int16)
        with self._lock:
            self._pending = np.concatenate([frames.reshape(-1, self._channels), self._pending])

    def _serve(self, fd: int) -> None:
        try:
            capacity = fcntl.fcntl(fd, _F_GETPIPE_SZ)
        except OSError:
            capacity = 1 << 16
        history: deque[bytes] = deque()  # recently written bytes, about one pipe's worth
        history_bytes = 0
        t0, sent = time.monotonic(), 0
        while not self._halt.is_set():
            if self._close_requested.is_set():
                return
            if self._paused.is_set():
                self._halt.wait(0.005)
                t0, sent = time.monotonic(), 0
                continue
            now = time.monotonic()
            due = t0 + sent / self._rate
            if due - now > 0:
                self._halt.wait(min(due - now, 0.05))
                continue
            if now - due > 0.2:  # fell far behind (reader not reading): re-anchor
                t0, sent = now, 0
            queued_limit = self.MAX_QUEUED_CHUNKS * self._chunk_frames
            if self._keep_open and self._queued(fd) >= queued_limit:
                self._halt.wait(min(self._chunk_frames / self._rate, 0.01))
                t0, sent = time.monotonic(), 0  # nobody reads: do not get ahead
                continue
            with self._lock:
                generation = self._generation
            chunk = self._next_chunk()
            if chunk is None:
                self.exhausted.set()
                self._halt.wait(0.01)
                continue
            data = chunk.astype("<i2").tobytes()
            done, broken = self._write(fd, data)
            self._net_bytes += done
            if broken:  # EPIPE: the reader went away
                unread = self._queued(fd) * self._frame_bytes
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
        return int.from_bytes(raw, "little", signed=True) // self._frame_bytes

    def _write(self, fd: int, data: bytes) -> tuple[int, bool]:
        """(bytes written, reader gone): all bytes unless stopped or EPIPE."""
        view = memoryview(data)
        done = 0
        while done < len(data) and not self._halt.is_set():
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


def make_fifo(directory: Path, pcm_name: str) -> Path:
    """A fresh FIFO ``<directory>/<pcm_name>.fifo`` (a stale one is replaced)."""
    directory.mkdir(parents=True, exist_ok=True)
    fifo = directory / f"{pcm_name}.fifo"
    with contextlib.suppress(FileNotFoundError):
        fifo.unlink()
    os.mkfifo(fifo)
    return fifo


def make_fifo_microphone(directory: Path, pcm_name: str, rate: int,
                         channels: int) -> tuple[Path, Path]:
    """Create the FIFO and the ALSA config; returns (fifo, config) for ALSA_CONFIG_PATH."""
    fifo = make_fifo(directory, pcm_name)
    config = directory / f"{pcm_name}.asoundrc"
    config.write_text(alsa_config_text(fifo, rate, channels, pcm_name))
    return fifo, config
