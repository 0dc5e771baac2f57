"""Capture: PyAudio against a real ALSA ``type file`` PCM, devices, levels, WAV source.

The integration tests run in this process: ``fake_microphone`` points
``os.environ["ALSA_CONFIG_PATH"]`` at a per-test ALSA config before ``PyAudio()`` is created,
and every test closes its source (``close()`` terminates PortAudio) before the next config is
used. That works because ``Pa_Terminate`` frees alsa-lib's global configuration and the next
``Pa_Initialize`` reads ``ALSA_CONFIG_PATH`` again; it would not work while another
``PyAudio`` instance is alive (PortAudio is reference counted), so the autouse fixture below
waits for any close that was left hung. The stderr tests need a fresh process (nothing may
have initialised ALSA before), so they run a subprocess with ``mic.env``.

FIFO-backed PCMs: the writer thread is started before ``PyAudio()`` (enumeration opens the
FIFO and blocks until a writer exists) and writes whole 20 ms periods, so the source receives
exactly the frames written; see ``edgevoice/audio/fifo_mic.py``. Before closing a source the tests
close the writer's end (EOF) so PortAudio's reading thread is never stuck in ``read(2)``,
except in the test that shows close() is bounded when it is.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyaudio
import pytest
from alsa_fixtures import NOISY_PCM_CONFIG, FakeMic, fake_microphone, write_wav
from fakes import FakeClock, wait_until
from signals import ramp, speech, stereo, tone

from edgevoice.audio import alsa_quiet, pyaudio_source
from edgevoice.audio.devices import (
    DeviceInfo,
    find_input_device,
    format_device_table,
    list_input_devices,
)
from edgevoice.audio.level import (
    DIGITAL_SILENCE,
    REPEATED_BUFFER,
    SILENCE_DBFS,
    DeadInputDetector,
    LevelMeter,
    measure_level,
)
from edgevoice.audio.pyaudio_source import PyAudioSource, choose_channels, choose_rate, downmix
from edgevoice.audio.source import AudioSource, CapturedBlock
from edgevoice.audio.wav_source import WavSource
from edgevoice.errors import AudioDeviceError

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[1]
SPOKEN = "testing one two three, the quick brown fox"  # espeak-ng's text, where installed


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _portaudio_released() -> Iterator[None]:
    """A close left hung by one test must finish before the next test initialises PortAudio."""
    yield
    assert pyaudio_source.wait_for_pending_close(5.0), "a PortAudio close is still hung"


def read_frames(src: AudioSource, frames: int, timeout: float = 5.0) -> list[CapturedBlock]:
    """Blocks until at least ``frames`` frames arrived; fails at the deadline."""
    blocks: list[CapturedBlock] = []
    got = 0
    deadline = time.monotonic() + timeout
    while got < frames:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {got} of {frames} frames within {timeout} s"
        block = src.read(min(remaining, 0.5))
        if block is not None:
            blocks.append(block)
            got += block.samples.size
    return blocks


def pump_until(
    src: AudioSource,
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    on_block: Callable[[CapturedBlock], None] | None = None,
) -> None:
    """Keep reading (as the capture worker does) until ``condition()``; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        block = src.read(0.1)
        if block is not None and on_block is not None:
            on_block(block)


def quiet_for(src: PyAudioSource, seconds: float) -> bool:
    """True once the last PortAudio callback is more than ``seconds`` old."""
    last = src.last_block_at
    return last is not None and time.monotonic() - last > seconds


def stalled(src: PyAudioSource) -> bool:
    return src.stalled  # a call, so mypy does not keep a narrowed property value


def shut(src: PyAudioSource | None, mic: FakeMic) -> None:
    """Give PortAudio's reader EOF (never stuck in read(2)), then close the source."""
    if mic.writer is not None:
        mic.writer.resume()
        mic.writer.close()
    if src is not None:
        src.close()
    mic.check_writer()


def mono_of(blocks: list[CapturedBlock]) -> npt.NDArray[np.int16]:
    return np.concatenate([b.samples for b in blocks])


# -- PyAudio against the ALSA file PCM -------------------------------------------------------


def test_stereo_48k_downmix_is_the_average(tmp_path: Path) -> None:
    rate = 48000
    left = tone(440, 1.0, rate, amplitude=0.6)
    right = ramp(rate) - 15000  # different on each side, and position-revealing
    with fake_microphone(tmp_path, rate=rate, channels=2, signal=stereo(left, right)) as mic:
        src = PyAudioSource(mic.device)  # default rate of the device, min(128, 2) channels
        try:
            src.open()
            assert src.rate == 48000
            assert src.channels == 2
            assert "48000 Hz 2 ch" in src.description
            assert "edgevoice_test" in src.description
            got = mono_of(read_frames(src, rate // 2))
        finally:
            shut(src, mic)
    expected = (left.astype(np.int32) + right.astype(np.int32)) // 2
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, expected[: got.size].astype(np.int16))


def test_mono_44k1_uses_the_device_default_rate(tmp_path: Path) -> None:
    rate = 44100
    signal = tone(1000, 0.5, rate, amplitude=0.3)
    with fake_microphone(tmp_path, rate=rate, channels=1, signal=signal) as mic:
        # channels=1: the client must match the PCM exactly (see alsa_fixtures: a plug
        # conversion reads ahead from the file plugin and corrupts FIFO data).
        src = PyAudioSource(mic.device, rate=None, channels=1)
        try:
            src.open()
            assert src.rate == 44100  # the plug slave's rate is the reported default
            assert src.channels == 1
            blocks = read_frames(src, 4410)
            assert all(b.samples.size == 882 for b in blocks)  # 20 ms at 44.1 kHz
            got = mono_of(blocks)
        finally:
            shut(src, mic)
    np.testing.assert_array_equal(got, np.tile(signal, 2)[: got.size])


def test_fifo_is_paced_in_real_time_and_delivers_every_frame(tmp_path: Path) -> None:
    rate = 16000
    frames = rate  # one second, then the writer holds the FIFO open and writes nothing
    signal = ramp(frames)
    with fake_microphone(tmp_path, rate=rate, channels=1, signal=signal, loop=False) as mic:
        assert mic.writer is not None
        src = PyAudioSource(mic.device, rate=rate, channels=1)
        try:
            src.open()
            blocks = read_frames(src, frames, timeout=4.0)
            assert src.read(0.3) is None  # nothing beyond the signal: no stale data
            assert mic.writer.exhausted.is_set()
            got = mono_of(blocks)
            assert got.size == frames == src.stats.frames == mic.writer.frames_written
            np.testing.assert_array_equal(got, signal)
            span = blocks[-1].captured_at - blocks[0].captured_at
            assert 0.85 <= span <= 1.2, f"49 periods of 20 ms took {span:.3f} s"
            assert src.stats.dropped_blocks == 0
            assert src.stats.overflows == 0
        finally:
            shut(src, mic)


def test_full_queue_drops_the_oldest_blocks_and_counts_them(tmp_path: Path) -> None:
    rate = 16000
    with fake_microphone(tmp_path, rate=rate, channels=1, signal=ramp(rate * 10)) as mic:
        assert mic.writer is not None
        src = PyAudioSource(mic.device, rate=rate, channels=1, queue_s=0.1)  # 5 blocks
        try:
            src.open()
            assert wait_until(lambda: src.stats.blocks >= 15, 3.0), "15 blocks"  # nobody reads
            mic.writer.pause()  # freeze the counts: no callbacks once the FIFO is empty
            assert wait_until(lambda: quiet_for(src, 0.1), 2.0), "callbacks did not stop"
            stats = src.stats
            queued = []
            while (block := src.read(0)) is not None:
                queued.append(block)
            assert len(queued) == 5
            assert stats.dropped_blocks == stats.blocks - 5 >= 10
            # The newest blocks survived: the last one ends at the last captured frame.
            assert int(queued[-1].samples[-1]) == (stats.frames - 1) % 30000
            starts = [int(b.samples[0]) for b in queued]
            assert all((b - a) % 30000 == 320 for a, b in itertools.pairwise(starts))
        finally:
            shut(src, mic)


def test_input_overflow_flag_is_counted_per_block() -> None:
    # The file PCM's null slave never overruns, so PortAudio's flag is fed in directly.
    src = PyAudioSource("unused", rate=16000, channels=2)
    callback = src._make_callback(src._generation, 2)
    data = np.array([100, 300, -100, -301], dtype=np.int16).tobytes()
    assert callback(data, 2, {}, pyaudio.paInputOverflow) == (None, pyaudio.paContinue)
    callback(data, 2, {}, 0)
    first, second = src.read(0), src.read(0)
    assert first is not None and second is not None
    assert first.input_overflow and not second.input_overflow
    np.testing.assert_array_equal(first.samples, [200, -201])  # floor of the average
    assert (src.stats.overflows, src.stats.blocks, src.stats.frames) == (1, 2, 4)
    with pytest.raises(AudioDeviceError):
        src.read(0)  # queue empty and not open


def test_paused_writer_is_a_stall_not_an_error_and_capture_resumes(tmp_path: Path) -> None:
    rate = 16000
    with fake_microphone(tmp_path, rate=rate, channels=1, signal=tone(300, 1, rate)) as mic:
        assert mic.writer is not None
        src = PyAudioSource(mic.device, rate=rate, channels=1, stall_after_s=0.2)
        try:
            src.open()
            read_frames(src, 1600)
            mic.writer.pause()
            # read() returns None (or a last queued block) and never raises meanwhile.
            pump_until(src, lambda: src.stalled, 3.0, "a stall")
            assert src.read(0.2) is None
            assert src.stats.stalls == 1
            frames_before = src.stats.frames
            mic.writer.resume()
            assert src.read(2.0) is not None
            assert not stalled(src)
            read_frames(src, 1600)
            assert src.stats.frames > frames_before
        finally:
            shut(src, mic)


def test_close_is_bounded_when_portaudio_hangs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rate = 16000
    with fake_microphone(tmp_path, rate=rate, channels=1, signal=tone(300, 1, rate)) as mic:
        assert mic.writer is not None
        src = PyAudioSource(mic.device, rate=rate, channels=1, close_timeout_s=0.3)
        again = PyAudioSource(mic.device, rate=rate, channels=1, close_timeout_s=0.3)
        try:
            src.open()
            read_frames(src, 1600)
            mic.writer.pause()  # PortAudio's thread now sits in read(2) on the FIFO
            assert wait_until(lambda: quiet_for(src, 0.1), 2.0), "callbacks did not stop"
            caplog.set_level(logging.WARNING, logger="edgevoice.audio.pyaudio_source")
            started = time.monotonic()
            src.close()  # Pa_CloseStream hangs until the FIFO delivers
            assert time.monotonic() - started < 1.5
            assert any("did not finish" in r.getMessage() for r in caplog.records)
            with pytest.raises(AudioDeviceError, match="still hung"):
                again.open()  # PortAudio must not be initialised twice concurrently
            mic.writer.resume()  # data arrives, the hung close completes
            again.open()
            assert read_frames(again, 1600)
        finally:
            shut(again, mic)
            src.close()


def test_read_raises_when_the_stream_dies(tmp_path: Path) -> None:
    rate = 16000
    with fake_microphone(tmp_path, rate=rate, channels=1, signal=tone(300, 1, rate)) as mic:
        src = PyAudioSource(mic.device, rate=rate, channels=1)
        try:
            src.open()
            read_frames(src, 1600)
            # What an unplugged USB device looks like to us: the stream is no longer active.
            src._stream.stop_stream()
            with pytest.raises(AudioDeviceError, match="stopped"):
                for _ in range(100):
                    src.read(0.2)  # queued blocks first, then the error
        finally:
            shut(src, mic)
        # And the source can be opened again (PortAudio was terminated and re-initialised).
        with fake_microphone(tmp_path / "2", rate=rate, channels=1, signal=tone(3, 1, rate)) as m2:
            src2 = PyAudioSource(m2.device, rate=rate, channels=1)
            try:
                src2.open()
                assert read_frames(src2, 320)
            finally:
                shut(src2, m2)


def test_dead_input_on_the_fake_microphone(tmp_path: Path) -> None:
    rate = 16000
    spoken = speech(1, rate, text=SPOKEN)
    with fake_microphone(tmp_path, rate=rate, channels=1, signal=spoken) as mic:
        assert mic.writer is not None
        src = PyAudioSource(mic.device, rate=rate, channels=1)
        detector = DeadInputDetector(0.2)
        changes: list[str] = []
        try:
            src.open()
            for block in read_frames(src, 3200):
                assert detector.update(block.samples) is None

            def watch(block: CapturedBlock) -> None:
                if (change := detector.update(block.samples)) is not None:
                    changes.append(change)

            mic.writer.feed_zeros()
            pump_until(src, lambda: detector.dead, 3.0, "dead input", watch)
            mic.writer.feed(tone(440, 1, rate))
            pump_until(src, lambda: not detector.dead, 3.0, "live input", watch)
        finally:
            shut(src, mic)
    assert changes == [DIGITAL_SILENCE, ""]


# -- device lookup ---------------------------------------------------------------------------


def test_device_lookup_by_substring_index_default_and_missing(tmp_path: Path) -> None:
    signal = tone(440, 0.1, 48000)
    with fake_microphone(tmp_path, rate=48000, channels=1, signal=signal, fifo=False) as mic:
        with alsa_quiet.quiet_stderr():
            pa = pyaudio.PyAudio()
        try:
            dev = find_input_device(pa, "VOICE_te")
            assert dev.name == mic.device
            assert dev.max_input_channels >= 1
            assert dev.default_sample_rate == 48000.0
            assert find_input_device(pa, dev.index) == dev
            assert find_input_device(pa, f" {dev.index} ") == dev
            assert find_input_device(pa, mic.device.upper()) == dev  # exact, any case
            assert find_input_device(pa, "default").is_default
            with pytest.raises(AudioDeviceError) as missing:
                find_input_device(pa, "no such microphone")
            message = str(missing.value)
            assert "no input device matches 'no such microphone'" in message
            assert "edgevoice_test" in message  # the error lists what there is
            with pytest.raises(AudioDeviceError, match="index 999"):
                find_input_device(pa, 999)
        finally:
            pa.terminate()
        devices = list_input_devices()
        assert mic.device in [d.name for d in devices]
        table = format_device_table(devices)
        assert "edgevoice_test" in table and "48000 Hz" in table
        # The source reports a missing device clearly and leaves PortAudio terminated.
        with pytest.raises(AudioDeviceError, match="available input devices"):
            PyAudioSource("no such microphone").open()
        src = PyAudioSource("edgevoice", rate=48000)
        try:
            src.open()
            assert src.read(2.0) is not None
        finally:
            src.close()


def test_format_device_table_empty_and_marks_default() -> None:
    assert "no input devices" in format_device_table([])
    table = format_device_table(
        [
            DeviceInfo(0, "USB Audio: - (hw:1,0)", 2, 48000.0, True, "ALSA"),
            DeviceInfo(3, "pulse", 32, 44100.0, False, "ALSA"),
        ]
    )
    lines = table.splitlines()
    assert lines[1].lstrip().startswith("*") and "USB Audio" in lines[1]
    assert "44100 Hz" in lines[2] and not lines[2].lstrip().startswith("*")


class FakeFormats:
    def __init__(self, supported: set[int]) -> None:
        self.supported = supported
        self.asked: list[int] = []

    def is_format_supported(
        self,
        rate: float,
        input_device: int | None = None,
        input_channels: int | None = None,
        input_format: int | None = None,
    ) -> bool:
        self.asked.append(int(rate))
        if int(rate) not in self.supported:
            raise ValueError("Invalid sample rate", -9997)
        return True


def test_rate_and_channel_choice() -> None:
    usb = DeviceInfo(1, "USB", 2, 44100.0, False)
    assert choose_rate(FakeFormats({16000, 44100}), usb, 16000, 1) == 16000
    assert choose_rate(FakeFormats({44100}), usb, 16000, 1) == 44100  # device default
    odd = DeviceInfo(1, "odd", 2, 22050.0, False)
    checker = FakeFormats({16000, 48000})
    assert choose_rate(checker, odd, None, 1) == 48000
    assert checker.asked == [22050, 48000]
    with pytest.raises(AudioDeviceError, match="supports none of 24000, 44100, 48000, 16000"):
        choose_rate(FakeFormats(set()), usb, 24000, 2)
    assert choose_channels(DeviceInfo(0, "x", 128, 48000.0, False), None) == 2
    assert choose_channels(DeviceInfo(0, "x", 1, 48000.0, False), None) == 1
    with pytest.raises(AudioDeviceError, match="has 1 input channel"):
        choose_channels(DeviceInfo(0, "x", 1, 48000.0, False), 2)


def test_downmix_cannot_overflow() -> None:
    raw = np.array([32767, 32767, -32768, -32768, 32767, -32768], dtype=np.int16)
    np.testing.assert_array_equal(downmix(raw, 2), [32767, -32768, -1])
    three = np.array([1, 2, 4, -3, -3, -3], dtype=np.int16)
    np.testing.assert_array_equal(downmix(three, 3), [2, -3])


def test_stereo_downmix_is_the_floor_of_the_average_for_every_sample() -> None:
    # The stereo path (add and shift) against the definition, on every int16 value.
    rng = np.random.default_rng(7)
    raw = rng.permutation(np.arange(-32768, 32768, dtype=np.int32)).astype(np.int16)
    expected = np.floor(raw.reshape(-1, 2).astype(np.float64).mean(axis=1)).astype(np.int16)
    np.testing.assert_array_equal(downmix(raw, 2), expected)
    np.testing.assert_array_equal(downmix(raw[:7], 2), expected[:3])  # odd: last frame cut


def test_a_late_callback_of_a_closed_stream_is_never_delivered() -> None:
    src = PyAudioSource("unused", rate=16000, channels=1)
    old = src._make_callback(src._generation, 1)
    src.close()  # a stream that was never open: only the generation moves on
    old(np.array([1, 2], dtype=np.int16).tobytes(), 2, {}, 0)
    new = src._make_callback(src._generation, 1)
    new(np.array([3, 4], dtype=np.int16).tobytes(), 2, {}, 0)
    block = src.read(0)
    assert block is not None
    np.testing.assert_array_equal(block.samples, [3, 4])
    with pytest.raises(AudioDeviceError):
        src.read(0)  # nothing else queued, and not open


# -- ALSA noise ------------------------------------------------------------------------------

_OPEN_AND_READ = textwrap.dedent(
    """
    import sys
    from edgevoice.audio.pyaudio_source import PyAudioSource
    src = PyAudioSource("edgevoice_test", rate=16000)
    src.open()
    block = src.read(3.0)
    src.close()
    print("captured", 0 if block is None else block.samples.size)
    """
)
_BARE_PYAUDIO = "import pyaudio; pyaudio.PyAudio().terminate(); print('done')"


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_alsa_and_jack_noise_stays_out_of_stderr(tmp_path: Path) -> None:
    signal = tone(440, 0.5, 16000)
    with fake_microphone(
        tmp_path,
        rate=16000,
        channels=1,
        signal=signal,
        fifo=False,
        set_environ=False,
        extra_config=NOISY_PCM_CONFIG,
    ) as mic:
        control = _run(_BARE_PYAUDIO, mic.env)
        quiet = _run(_OPEN_AND_READ, mic.env)
    # Without suppression the broken PCM makes alsa-lib print, deterministically.
    assert control.returncode == 0, control.stderr
    assert "ALSA lib" in control.stderr and "edgevoice_no_such_pcm" in control.stderr
    assert quiet.returncode == 0, quiet.stderr
    assert "captured 320" in quiet.stdout
    assert "ALSA lib" not in quiet.stderr
    assert "jack" not in quiet.stderr.lower()
    assert quiet.stderr.strip() == "", quiet.stderr


def test_quiet_stderr_keeps_other_output(capfd: pytest.CaptureFixture[str]) -> None:
    with alsa_quiet.quiet_stderr():
        os.write(2, b"ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM cards.pcm.rear\n")
        os.write(2, b"a real problem\n")
        with alsa_quiet.quiet_stderr():  # nested sections do not redirect again
            os.write(2, b"jack server is not running or cannot be started\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "a real problem\nafter\n"
    with pytest.raises(RuntimeError), alsa_quiet.quiet_stderr():
        raise RuntimeError("boom")
    os.write(2, b"restored\n")  # fd 2 is back even after an exception
    assert capfd.readouterr().err == "restored\n"


# -- level meter and dead-input detector -----------------------------------------------------


def test_level_meter() -> None:
    half = measure_level(tone(1000, 0.1, 48000, amplitude=0.5))
    assert half.rms_dbfs == pytest.approx(-9.03, abs=0.05)  # 0.5 / sqrt(2)
    assert half.peak_dbfs == pytest.approx(-6.02, abs=0.05)
    silent = measure_level(np.zeros(480, dtype=np.int16))
    assert silent.rms_dbfs == silent.peak_dbfs == SILENCE_DBFS
    full = measure_level(np.array([-32768, 32767], dtype=np.int16))
    assert full.peak == 32768 and full.peak_dbfs == 0.0
    assert measure_level(np.zeros(0, dtype=np.int16)).rms_dbfs == SILENCE_DBFS
    meter = LevelMeter()
    meter.update(np.array([1000, -20000], dtype=np.int16))
    meter.update(np.array([5, -5], dtype=np.int16))
    assert meter.peak_hold == 20000 and meter.last.peak == 5
    meter.reset_peak()
    assert meter.peak_hold == 0


def is_dead(detector: DeadInputDetector) -> bool:
    return detector.dead  # a call, so mypy does not keep a narrowed property value


def test_dead_input_detector_zeros_and_repeats_report_each_change_once() -> None:
    clock = FakeClock(100.0)
    detector = DeadInputDetector(2.0, clock=clock)
    rng = np.random.default_rng(0)

    def live() -> npt.NDArray[np.int16]:
        return rng.integers(-300, 300, 320).astype(np.int16)

    changes: list[str] = []

    def feed(make: Callable[[], npt.NDArray[np.int16]], seconds: float) -> None:
        end = clock.now + seconds - 1e-9
        while clock.now < end:
            if (change := detector.update(make())) is not None:
                changes.append(change)
            clock.advance(0.02)

    def zeros() -> npt.NDArray[np.int16]:
        return np.zeros(320, dtype=np.int16)

    feed(live, 1.0)
    assert not changes and not detector.dead
    start = clock.now
    feed(zeros, 1.9)
    assert not detector.dead and not changes
    assert detector.reason == DIGITAL_SILENCE
    assert detector.dead_since == start
    feed(zeros, 1.0)
    assert is_dead(detector)
    assert changes == [DIGITAL_SILENCE]  # once
    assert detector.last_change_at == pytest.approx(start + 2.0, abs=0.025)
    assert detector.update(np.zeros(0, dtype=np.int16)) is None  # empty blocks say nothing
    feed(zeros, 5.0)
    assert changes == [DIGITAL_SILENCE]
    assert detector.update(live()) == ""  # alive again, reported once
    assert not is_dead(detector)
    assert detector.last_dead_duration_s == pytest.approx(7.9, abs=0.03)
    assert detector.update(live()) is None
    changes.clear()
    stuck = live()
    feed(lambda: stuck, 3.0)  # the very same non-zero buffer again and again
    assert changes == [REPEATED_BUFFER]
    assert detector.update(live()) == ""
    assert not is_dead(detector)
    # A quiet but live input (noise of a few LSB) is never dead.
    changes.clear()
    feed(lambda: rng.integers(-2, 3, 320).astype(np.int16), 5.0)
    assert changes == []


# -- WAV source ------------------------------------------------------------------------------


def test_wav_source_downmix_end_and_loop(tmp_path: Path) -> None:
    rate = 16000
    left, right = ramp(1000), ramp(1000, start=5000)
    path = write_wav(tmp_path / "stereo.wav", stereo(left, right), rate)
    expected = ((left.astype(np.int32) + right) // 2).astype(np.int16)
    src = WavSource(path, realtime=False, block_ms=20)
    assert isinstance(src, AudioSource)
    src.open()
    assert src.rate == rate and "2 ch" in src.description
    blocks = []
    while (block := src.read(0.01)) is not None:
        blocks.append(block.samples)
    assert [b.size for b in blocks] == [320, 320, 320, 40]
    np.testing.assert_array_equal(np.concatenate(blocks), expected)
    assert src.exhausted and src.stats.frames == 1000
    src.close()
    looping = WavSource(path, realtime=False, loop=True, block_ms=20)
    looping.open()
    got = np.concatenate([b.samples for b in (looping.read(0) for _ in range(7)) if b])
    np.testing.assert_array_equal(got, np.tile(expected, 3)[: 7 * 320])
    looping.close()
    with pytest.raises(AudioDeviceError):
        looping.read(0)


def test_wav_source_real_time_pacing(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "tone.wav", tone(440, 1.0, 8000), 8000)
    src = WavSource(path, realtime=True, block_ms=20)
    src.open()
    try:
        started = time.monotonic()
        assert src.read(1.0) is not None  # block 0 is due at once
        assert src.read(0.001) is None  # block 1 is due 20 ms after open()
        blocks = read_frames(src, 160 * 10)
        elapsed = time.monotonic() - started
        assert len(blocks) == 10
        assert 0.18 <= elapsed <= 0.5
    finally:
        src.close()


def test_wav_source_formats_and_errors(tmp_path: Path) -> None:
    import wave

    path = tmp_path / "24bit.wav"
    samples = np.array([0x123456, -0x123456, 0x7FFFFF], dtype=np.int32)
    raw = b"".join(int(s).to_bytes(3, "little", signed=True) for s in samples)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(3)
        wav.setframerate(8000)
        wav.writeframes(raw)
    src = WavSource(path, realtime=False)
    src.open()
    block = src.read(0)
    assert block is not None
    np.testing.assert_array_equal(block.samples, [0x1234, -0x1235, 0x7FFF])
    (tmp_path / "bad.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(AudioDeviceError, match="cannot read WAV"):
        WavSource(tmp_path / "bad.wav").open()
    with pytest.raises(AudioDeviceError, match="cannot read WAV"):
        WavSource(tmp_path / "missing.wav").open()


@pytest.mark.parametrize(
    "make",
    [
        lambda: speech(1.0, 24000, text=SPOKEN),
        lambda: speech(1.0, 24000),
        lambda: speech(1.0, 24000, talk=[(0.0, 1.0)]),
    ],
    ids=["espeak-or-synthetic", "talk-spurts", "continuous-talk"],
)
def test_speech_like_signals_are_lively(make: Callable[[], npt.NDArray[np.int16]]) -> None:
    signal = make()
    assert signal.dtype == np.int16 and signal.size == 24000
    assert -35 < measure_level(signal).rms_dbfs < -6
    detector = DeadInputDetector(0.0)
    assert all(detector.update(chunk) is None for chunk in np.split(signal, 50))


@pytest.mark.parametrize("rate", [16000, 24000, 48000])
def test_synthetic_speech_never_repeats_a_20ms_chunk(rate: int) -> None:
    # The fault accounting (daemon_harness.account_audio) relies on it.
    chunks = np.split(speech(30.0, rate), 30 * 50)
    assert len({chunk.tobytes() for chunk in chunks}) == len(chunks)
