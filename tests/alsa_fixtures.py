"""A fake microphone for integration tests: an ALSA ``type file`` PCM fed through a FIFO.

Import these helpers from tests (this is not a conftest)::

    with fake_microphone(tmp_path, rate=48000, channels=2, signal=stereo(l, r)) as mic:
        src = PyAudioSource(mic.device, rate=48000)      # os.environ points at mic.env
        ...
    # or, for a subprocess:  env = {**os.environ, **mic.env}

The PCM and its writer (``edgevoice.audio.fifo_mic.FifoWriter``, the one the demo uses)
are described, with what was found out about alsa-lib and PortAudio, in the docstring of
``edgevoice/audio/fifo_mic.py``; the signals are in ``tests/signals.py``. In addition
(alsa-lib 1.2.8, PortAudio 19.6, PyAudio 0.2.14):

* PortAudio reads ``ALSA_CONFIG_PATH`` when it initialises, and ``Pa_Terminate`` frees
  alsa-lib's global configuration, so setting ``os.environ`` before ``PyAudio()`` works in
  process, test after test, as long as no other ``PyAudio`` instance is alive at that moment
  (PortAudio is reference counted: a second ``PyAudio()`` does not re-read anything). Every
  test therefore closes its source (which terminates PortAudio) before the next config is
  used. Subprocesses get ``mic.env`` merged into their environment.
* ``fake_microphone``'s writer always holds the keeper descriptor (PortAudio may run in
  this very process). Its ``pause()`` and ``close()`` are how the tests make a stall, show
  that ``PyAudioSource.close()`` is bounded while PortAudio hangs, and deliver EOF.
* A plain file as ``infile`` (``fifo=False``) is read as fast as possible (no pacing) and,
  after its end, stale data repeats; it always has enough data, so plug's read-ahead does
  not hurt it. The null slave never reports an xrun, so PortAudio's ``paInputOverflow``
  cannot be provoked with this PCM.

``fake_speaker`` is the playback counterpart (PCM ``edgevoice_speaker``, a ``type plug``
over a ``type file`` with ``format "wav"``, a FIFO as ``file`` and a null slave), read in
real time by a ``SpeakerReader`` thread (``edgevoice.audio.fifo_speaker.FifoSpeaker``, the
one the demo uses) that records what arrived and when::

    with fake_speaker(tmp_path, rate=48000) as spk:      # os.environ points at spk.env
        sink = PyAudioSink(spk.device)
        ...
        spk.reader.current.mono()                          # what the speaker received
    # microphone and speaker in one ALSA config:
    with fake_speaker(d / "spk", rate=48000, set_environ=False) as spk, \
            fake_microphone(d / "mic", ..., extra_config=spk.config_text) as mic: ...

Checked (alsa-lib 1.2.8, PortAudio 19.6): ``aplay`` of 3 s at 48 kHz took 2.97 s and the
reader got it byte-exact, arriving over 3.05 s. The reader holds the FIFO ``O_RDWR`` from
before PortAudio enumerates (so no ``open(2)`` of the PCM ever blocks) and never sees end of
file: a reopened stream is found by its new WAV header. Audio the callback produced reaches
the reader about 60 ms later than PortAudio's reported output latency says (20 ms at
48 kHz): the null slave takes each period at once, so the data waits in the file plugin's
write buffer and the pipe (4096 bytes, shrunk with F_SETPIPE_SZ) where PortAudio cannot see
it. A real card has no such hidden buffer.
"""

from __future__ import annotations

import contextlib
import os
import threading
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgevoice.audio import fifo_mic, fifo_speaker
from edgevoice.audio.fifo_mic import FifoWriter, Signal, as_frames
from edgevoice.audio.fifo_speaker import FifoSpeaker

PCM_NAME = "edgevoice_test"
SYSTEM_ALSA_CONF = fifo_mic.SYSTEM_ALSA_CONF


def write_alsa_config(
    path: str | Path,
    *,
    infile: str | Path,
    rate: int,
    channels: int,
    pcm_name: str = PCM_NAME,
    extra: str = "",
) -> Path:
    """Write the demo's PCM (edgevoice.audio.fifo_mic) plus ``extra`` text to ``path`` and
    return it (use it as ALSA_CONFIG_PATH)."""
    path = Path(path)
    path.write_text(fifo_mic.alsa_config_text(Path(infile), rate, channels, pcm_name) + extra)
    return path


def write_wav(path: str | Path, samples: npt.NDArray[np.int16], rate: int) -> Path:
    """Write int16 samples, shape (n,) or (n, channels), as a WAV file."""
    path = Path(path)
    frames = samples.reshape(samples.shape[0], -1)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(frames.shape[1])
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(frames.astype("<i2").tobytes())
    return path


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
def _alsa_config_path(config: Path | None) -> Iterator[None]:
    """Point os.environ's ALSA_CONFIG_PATH at ``config`` for the block (None: leave it)."""
    if config is None:
        yield
        return
    previous = os.environ.get("ALSA_CONFIG_PATH")
    os.environ["ALSA_CONFIG_PATH"] = str(config)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("ALSA_CONFIG_PATH", None)
        else:
            os.environ["ALSA_CONFIG_PATH"] = previous


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
    speed: float = 1.0,
) -> Iterator[FakeMic]:
    """An ALSA capture PCM ``pcm_name`` delivering ``signal`` at ``rate``/``channels``.

    ``speed``: the FIFO writer delivers this many seconds of audio per second (the PCM
    does not pace itself), for tests whose timing does not matter.

    ``fifo=True``: a FIFO fed in real time by a started ``FifoWriter`` holding its keeper
    descriptor (whole chunks of ``chunk_frames``, default ``rate * block_ms / 1000`` to match
    ``PyAudioSource``).
    ``fifo=False``: a plain file holding ``signal`` (an array), read as fast as possible.
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
            rate=round(rate * speed),
            channels=channels,
            chunk_frames=chunk,
            signal=signal,
            loop=loop,
        )
    else:
        if not isinstance(signal, np.ndarray):
            raise ValueError("a plain-file microphone needs the signal as an array")
        infile = directory / f"{pcm_name}.raw"
        infile.write_bytes(as_frames(signal, channels).astype("<i2").tobytes())
    config = write_alsa_config(
        directory / f"{pcm_name}.asoundrc",
        infile=infile,
        rate=rate,
        channels=channels,
        pcm_name=pcm_name,
        extra=extra_config,
    )
    env = {"ALSA_CONFIG_PATH": str(config)}
    try:
        if writer is not None:
            writer.start()
        with _alsa_config_path(config if set_environ else None):
            yield FakeMic(env, pcm_name, writer, config, infile, rate, channels, chunk)
    finally:
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


# -- a fake speaker: an ALSA ``type file`` playback PCM written into a paced FIFO -------------
# The PCM and the paced reader are edgevoice.audio.fifo_speaker's (the demo uses them too).

SPEAKER_PCM_NAME = "edgevoice_speaker"


def speaker_config_text(fifo: str | Path, rate: int, channels: int,
                        pcm_name: str = SPEAKER_PCM_NAME) -> str:
    """The speaker's PCM alone (no ``<alsa.conf>`` include): pass it as ``extra_config`` of
    ``fake_microphone`` to have both in one ALSA_CONFIG_PATH."""
    return fifo_speaker.speaker_config_text(fifo, rate, channels, pcm_name)


@dataclass
class SpeakerSegment:
    """What the speaker received between two WAV headers (one open of the stream)."""

    rate: int
    channels: int
    blocks: list[npt.NDArray[np.int16]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # monotonic time each block arrived
    frames: int = 0

    def samples(self) -> npt.NDArray[np.int16]:
        """Interleaved frames as (n, channels)."""
        if not self.blocks:
            return np.zeros((0, self.channels), dtype=np.int16)
        return np.concatenate(self.blocks).reshape(-1, self.channels)

    def mono(self) -> npt.NDArray[np.int16]:
        return self.samples()[:, 0].copy()

    def arrival_times(self) -> npt.NDArray[np.float64]:
        """Arrival time of every frame (that of the block it came in)."""
        sizes = [b.size // self.channels for b in self.blocks]
        return np.repeat(np.asarray(self.times, dtype=np.float64), sizes)


class SpeakerReader(FifoSpeaker):
    """``FifoSpeaker`` (paced like a sound card; see edgevoice/audio/fifo_speaker.py) that
    keeps what arrived and when, one ``SpeakerSegment`` per WAV header (open of the PCM)."""

    def __init__(self, fifo: Path, *, block_ms: int = 10) -> None:
        super().__init__(fifo, block_ms=block_ms)
        self.segments: list[SpeakerSegment] = []
        self._lock = threading.Lock()

    @property
    def current(self) -> SpeakerSegment | None:
        with self._lock:
            return self.segments[-1] if self.segments else None

    def received_frames(self) -> int:
        seg = self.current
        return seg.frames if seg is not None else 0

    def on_stream(self, rate: int, channels: int, at: float) -> None:
        with self._lock:
            self.segments.append(SpeakerSegment(rate=rate, channels=channels))

    def on_audio(self, data: bytes, arrived: float) -> None:
        block = np.frombuffer(data, dtype="<i2").astype(np.int16)
        with self._lock:
            seg = self.segments[-1]
            seg.blocks.append(block)
            seg.times.append(arrived)
            seg.frames += block.size // seg.channels


@dataclass
class FakeSpeaker:
    """What ``fake_speaker`` yields."""

    env: dict[str, str]
    device: str
    reader: SpeakerReader
    config_path: Path
    config_text: str
    fifo: Path
    rate: int
    channels: int

    def check(self) -> None:
        if self.reader.error is not None:
            raise AssertionError(f"speaker reader failed: {self.reader.error!r}")


@contextlib.contextmanager
def fake_speaker(
    directory: str | Path,
    *,
    rate: int,
    channels: int = 1,
    pcm_name: str = SPEAKER_PCM_NAME,
    set_environ: bool = True,
) -> Iterator[FakeSpeaker]:
    """An ALSA playback PCM ``pcm_name`` at ``rate``/``channels`` read in real time.

    The PCM is a ``type plug`` over a ``type file`` whose ``file`` is a FIFO with ``format
    "wav"`` and a null slave (which alone would not pace anything): the ``SpeakerReader``
    thread, started before anything opens the PCM, reads it at the byte rate, so the
    PortAudio callback runs in real time. ``set_environ=True`` points ALSA_CONFIG_PATH at a
    config holding this PCM alone. To have a microphone too, use ``set_environ=False`` and
    give ``config_text`` to ``fake_microphone(..., extra_config=spk.config_text)``.
    """
    directory = Path(directory)
    fifo, text = fifo_speaker.make_fifo_speaker(directory, pcm_name, rate, channels)
    config = directory / f"{pcm_name}.asoundrc"
    config.write_text(fifo_speaker.alsa_config_with_system(text))
    reader = SpeakerReader(fifo)
    reader.start()
    env = {"ALSA_CONFIG_PATH": str(config)}
    try:
        with _alsa_config_path(config if set_environ else None):
            yield FakeSpeaker(env, pcm_name, reader, config, text, fifo, rate, channels)
    finally:
        stopped = reader.stop(timeout=5.0)
    if not stopped:
        raise RuntimeError(f"speaker reader {reader.name} did not stop in 5 s")
