"""Playback: the jitter buffer's logic, then PyAudioSink on a real ALSA PCM (fake speaker).

The fake speaker (``alsa_fixtures.fake_speaker``) is read in real time, so the PortAudio
callback runs at the device's pace; what it received is resampled back to 24 kHz with
scipy's resample_poly (an independent reference) and aligned with sub-sample precision.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from math import gcd
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from alsa_fixtures import FakeSpeaker, fake_microphone, fake_speaker
from fakes import wait_until
from scipy.signal import butter, resample_poly, sosfiltfilt
from signals import speech

from edgevoice.audio.devices import DeviceEntry
from edgevoice.audio.playback import STARVED_ITEM_S, PlaybackBuffer
from edgevoice.audio.portaudio_host import PortAudioHost
from edgevoice.audio.pyaudio_sink import PyAudioSink, choose_output
from edgevoice.audio.pyaudio_source import PyAudioSource
from edgevoice.audio.resample import StreamingResampler
from edgevoice.errors import AudioDeviceError

Int16Array = npt.NDArray[np.int16]


def ramp_chunk(n: int, start: int = 1) -> Int16Array:
    return (np.arange(start, start + n) % 30000 + 1).astype(np.int16)


# -- pure logic ---------------------------------------------------------------------------


def make_buffer(prebuffer: int = 100, capacity: int = 10_000, latency: int = 0) -> PlaybackBuffer:
    return PlaybackBuffer(1000, prebuffer_frames=prebuffer, capacity_frames=capacity,
                          latency_frames=latency)


def test_an_item_starts_only_after_the_prebuffer() -> None:
    buf = make_buffer(prebuffer=100)
    buf.push("a", 0, ramp_chunk(60))
    assert not buf.pull(20, 1.0).any()  # waiting for the prebuffer: silence, not an underrun
    assert buf.stats.underruns == 0
    assert buf.last_played_at is None
    buf.push("a", 0, ramp_chunk(60, 61))
    out = buf.pull(20, 2.0)
    assert out.tolist() == ramp_chunk(20).tolist()  # the very first frame is played
    assert buf.last_played_at == 2.0


def test_an_ended_item_plays_without_a_full_prebuffer() -> None:
    buf = make_buffer(prebuffer=100)
    buf.push("a", 0, ramp_chunk(30))
    buf.end("a")
    out = buf.pull(50, 1.0)
    assert out[:30].tolist() == ramp_chunk(30).tolist() and not out[30:].any()
    assert buf.stats.items_played == 1 and buf.stats.underruns == 0
    assert not buf.playing


def test_underruns_count_only_inside_a_started_unended_item() -> None:
    buf = make_buffer(prebuffer=40)
    buf.push("a", 0, ramp_chunk(50))
    buf.pull(40, 1.0)
    out = buf.pull(40, 1.1)  # 10 left, then silence mid-item
    assert out[:10].any() and not out[10:].any()
    assert buf.stats.underruns == 1
    buf.pull(40, 1.2)  # still starved (waiting for a new prebuffer)
    assert buf.stats.underruns == 2
    buf.push("a", 0, ramp_chunk(40, 51))
    out = buf.pull(40, 1.3)
    assert out.tolist() == ramp_chunk(40, 51).tolist()
    buf.end("a")
    buf.pull(40, 1.4)  # the item ended: silence is not an underrun
    assert buf.stats.underruns == 2 and buf.stats.items_played == 1
    buf.pull(40, 1.5)  # idle
    assert buf.stats.underruns == 2
    assert buf.stats.frames_played == 90


def test_an_item_whose_end_never_comes_is_ended_after_a_while() -> None:
    """A session lost mid-answer never sends output_audio.done: the speaker must not stay
    "playing" (the echo gate would hold the microphone) and count underruns forever."""
    buf = make_buffer(prebuffer=40)
    buf.push("a", 0, ramp_chunk(40))
    buf.pull(40, 1.0)
    pulls = 0
    while buf.playing and pulls < 10_000:
        buf.pull(40, 1.0)
        pulls += 1
    assert not buf.playing
    assert pulls * 40 == pytest.approx(buf.rate * STARVED_ITEM_S, abs=40)
    underruns = buf.stats.underruns
    buf.pull(40, 2.0)
    assert buf.stats.underruns == underruns  # idle now, not starved


def test_a_closed_sink_keeps_nothing_and_is_not_playing() -> None:
    sink = PyAudioSink("no such speaker", host=PortAudioHost(factory=object))
    sink.play("a", 0, b"\x01\x00" * 480)
    assert not sink.playing and sink.stats.dropped_frames == 480


def test_items_play_in_order() -> None:
    buf = make_buffer(prebuffer=10)
    buf.push("a", 0, np.full(15, 1, dtype=np.int16))
    buf.push("b", 0, np.full(15, 2, dtype=np.int16))
    buf.end("a")
    buf.end("b")
    out = buf.pull(40, 1.0)
    assert out.tolist() == [1] * 15 + [2] * 15 + [0] * 10
    assert buf.stats.items_played == 2


def test_flush_returns_the_playing_item_and_drops_everything() -> None:
    buf = make_buffer(prebuffer=10, latency=30)
    buf.push("a", 2, ramp_chunk(500))
    buf.push("b", 0, ramp_chunk(100))
    buf.pull(200, 1.0)
    assert buf.flush() == ("a", 2, 170)  # 200 consumed, 30 still inside the latency
    assert not buf.playing and buf.queued_frames == 0
    assert not buf.pull(50, 1.1).any()
    assert buf.stats.flushes == 1 and buf.stats.underruns == 0
    buf.push("a", 2, ramp_chunk(100))  # a late delta of the cancelled response
    assert buf.stats.dropped_late_frames == 100 and not buf.playing
    assert buf.flush() is None


def test_played_ms_subtracts_the_output_latency_until_it_passed() -> None:
    buf = make_buffer(prebuffer=0, latency=50)
    assert buf.played_ms("a") == 0
    buf.push("a", 0, ramp_chunk(300))
    buf.pull(20, 1.0)
    assert buf.played_ms("a") == 0  # never negative
    buf.pull(100, 1.1)
    assert buf.played_ms("a") == 70
    buf.end("a")
    buf.pull(200, 1.2)  # 180 more of "a", then 20 of silence
    assert buf.played_ms("a") == 300 - 30
    buf.pull(100, 1.3)
    assert buf.played_ms("a") == 300  # the latency passed: all of it was heard


def test_a_full_buffer_drops_the_oldest_and_counts_it() -> None:
    buf = make_buffer(prebuffer=0, capacity=100)
    buf.push("a", 0, ramp_chunk(80))
    buf.push("a", 0, ramp_chunk(50, 81))
    assert buf.queued_frames == 100 and buf.stats.dropped_frames == 30
    out = buf.pull(100, 1.0)
    assert out.tolist() == ramp_chunk(100, 31).tolist()  # the newest 100 frames, in order


# -- real ALSA ----------------------------------------------------------------------------

WIRE = 24000
CHUNK = 2400  # 100 ms deltas, as the server sends them


def wire_signal(seconds: float, seed: int = 11) -> Int16Array:
    """Speech-like audio talking from the first sample, band-limited to 9 kHz (above the
    10 kHz passband two correct resamplers may differ)."""
    talk = [(0.0, seconds * 0.45), (seconds * 0.55, seconds)]
    raw = speech(seconds, WIRE, seed=seed, talk=talk).astype(np.float64)
    low = sosfiltfilt(butter(10, 9000, fs=WIRE, output="sos"), raw)
    out: Int16Array = np.clip(np.round(low), -32768, 32767).astype(np.int16)
    return out


def fractional_shift(x: npt.NDArray[np.float64], shift: float) -> npt.NDArray[np.float64]:
    """Delay ``x`` by ``shift`` samples through the FFT phase (as test_capture_e2e does)."""
    size = 1 << (len(x) - 1).bit_length()
    spectrum = np.fft.rfft(x, size)
    freqs = np.fft.rfftfreq(size)
    return np.fft.irfft(spectrum * np.exp(-2j * np.pi * freqs * shift), size)[: len(x)]


def back_to_wire(rx: Int16Array, rate: int) -> npt.NDArray[np.float64]:
    g = gcd(rate, WIRE)
    out: npt.NDArray[np.float64] = resample_poly(rx.astype(np.float64), WIRE // g, rate // g)
    return out


def align(rx: npt.NDArray[np.float64], ref: npt.NDArray[np.float64]
          ) -> tuple[int, float, npt.NDArray[np.float64]]:
    """Where ``ref`` starts in ``rx`` (integer lag, then a 1/20-sample fraction), and the
    shifted reference over rx's frames."""
    size = 1 << (len(rx) + len(ref)).bit_length()
    corr = np.fft.irfft(np.fft.rfft(rx, size) * np.conj(np.fft.rfft(ref, size)), size)
    lag = int(np.argmax(corr[: len(rx)]))
    padded = np.zeros(len(rx) + 8)
    n = min(len(ref), len(padded) - lag)
    padded[lag:lag + n] = ref[:n]
    best, best_frac, best_ref = -np.inf, 0.0, padded[: len(rx)]
    for frac in np.arange(-1.0, 1.0, 0.05):
        shifted = fractional_shift(padded, frac)[: len(rx)]
        score = -float(np.sum((rx - shifted) ** 2))
        if score > best:
            best, best_frac, best_ref = score, float(frac), shifted
    return lag, best_frac, best_ref


def snr_db(rx: npt.NDArray[np.float64], ref: npt.NDArray[np.float64]) -> float:
    noise = float(np.sum((rx - ref) ** 2))
    return float(10 * np.log10(float(np.sum(ref**2)) / max(noise, 1e-9)))


def snr_where(rx: npt.NDArray[np.float64], ref: npt.NDArray[np.float64]) -> tuple[float, int]:
    """(SNR in dB, lag) of ``rx`` against ``ref`` over the frames where ``ref`` lies in it,
    aligned to a 1/20 sample."""
    lag, _frac, aligned = align(rx, ref)
    window = slice(lag, min(len(rx), lag + len(ref)))
    return snr_db(rx[window], aligned[window]), lag


def feed(sink: PyAudioSink, item: str, signal: Int16Array, pace_s: float = 0.0) -> None:
    for i in range(0, signal.size, CHUNK):
        sink.play(item, 0, signal[i:i + CHUNK].tobytes())
        if pace_s:
            time.sleep(pace_s)


def fresh_single(signal: Int16Array, rate: int) -> Int16Array:
    """What a fresh speaker resampler (float32) makes of `signal` fed as `feed` feeds it."""
    resampler = StreamingResampler(WIRE, rate, single=True)
    parts = [resampler.process(signal[i:i + CHUNK]) for i in range(0, signal.size, CHUNK)]
    return np.concatenate([*parts, resampler.flush()])


def received_since(spk: FakeSpeaker, frame: int) -> tuple[Int16Array, npt.NDArray[np.float64]]:
    seg = spk.reader.current
    assert seg is not None, "the speaker received no WAV header"
    return seg.mono()[frame:], seg.arrival_times()[frame:]


@pytest.fixture
def speaker48(tmp_path: Path) -> Iterator[FakeSpeaker]:
    with fake_speaker(tmp_path / "spk", rate=48000) as spk:
        yield spk
        spk.check()


@pytest.mark.parametrize("rate", [48000, 44100])
def test_played_audio_reaches_the_speaker_intact(tmp_path: Path, rate: int) -> None:
    signal = wire_signal(3.0)
    with fake_speaker(tmp_path / "spk", rate=rate) as spk:
        sink = PyAudioSink(spk.device)
        try:
            sink.open()
            assert sink.is_open and sink.is_active
            assert sink.rate == rate and sink.channels == 1
            assert wait_until(lambda: spk.reader.received_frames() > rate // 5, 5)
            start = spk.reader.received_frames()
            feed(sink, "item_1", signal, pace_s=0.02)  # faster than real time, in order
            sink.end_of_item("item_1")
            assert wait_until(lambda: not sink.playing, 10)
            time.sleep(0.4)  # the output latency, the FIFO
            assert sink.played_ms("item_1") == pytest.approx(3000, abs=5)
            assert sink.stats.items_played == 1
            assert sink.stats.underruns == 0
        finally:
            sink.close()
        assert (sink.is_open, sink.is_active) == (False, False)
        rx, _ = received_since(spk, start)
        spk.check()
    rx24 = back_to_wire(rx, rate)
    ref = signal.astype(np.float64)
    lag, frac, aligned = align(rx24, ref)
    snr = snr_db(rx24, aligned)
    print(f"{rate} Hz: SNR {snr:.1f} dB, signal starts {lag + frac:.2f} samples in")
    assert snr >= 40.0
    # the start is not clipped: the first 100 ms of the signal is there, as loud as sent
    first = slice(lag, lag + WIRE // 10)
    assert snr_db(rx24[first], aligned[first]) >= 40.0
    assert np.sqrt(np.mean(rx24[first] ** 2)) == pytest.approx(
        np.sqrt(np.mean(ref[: WIRE // 10] ** 2)), rel=0.02)


def first_last_nonzero(x: Int16Array) -> tuple[int, int]:
    nz = np.flatnonzero(x)
    assert nz.size, "the speaker received only silence"
    return int(nz[0]), int(nz[-1])


def test_flush_silences_the_speaker_at_once(speaker48: FakeSpeaker) -> None:
    spk = speaker48
    signal = wire_signal(4.0, seed=5)
    sink = PyAudioSink(spk.device)
    try:
        sink.open()
        latency_ms = sink.output_latency_s * 1000
        assert wait_until(lambda: spk.reader.received_frames() > 9600, 5)
        start = spk.reader.received_frames()
        feed(sink, "item_1", signal)  # all of it at once, as a fast server does
        time.sleep(1.2)
        flushed_at = time.monotonic()
        result = sink.flush()
        time.sleep(0.6)
        assert result is not None
        item, index, played = result
        assert (item, index) == ("item_1", 0)
        assert not sink.playing
        assert sink.stats.flushes == 1 and sink.stats.underruns == 0
        sink.play("item_1", 0, signal[:CHUNK].tobytes())  # a late delta: dropped
        assert not sink.playing
    finally:
        sink.close()
    rx, times = received_since(spk, start)
    first, last = first_last_nonzero(rx)
    silent_after = float(times[last]) - flushed_at
    heard_at_flush = int(np.searchsorted(times, flushed_at)) - first
    heard_ms = heard_at_flush * 1000 / 48000
    total_ms = (last + 1 - first) * 1000 / 48000
    print(f"flush: speaker silent {silent_after * 1000:.0f} ms after flush; played_ms "
          f"{played}, heard at flush {heard_ms:.0f} ms, received in all {total_ms:.0f} ms, "
          f"reported latency {latency_ms:.0f} ms")
    assert silent_after <= 0.3
    assert not rx[last + 1:].any()
    assert 1000 <= played <= 1500
    # What the speaker had at the flush lags what played_ms says by the fake speaker's own
    # buffering, which PortAudio cannot see (the null slave takes every period at once):
    # the pipe (4096 bytes), the file plugin's write buffer (a period), the 10 ms reads.
    hidden_ms = spk.reader.pipe_size * 1000 / (2 * 48000) + 20 + 10
    assert abs(played - heard_ms) <= 20 + latency_ms + hidden_ms
    # Everything the callback consumed reaches the speaker: played_ms is that less latency.
    assert abs(played - total_ms) <= 20 + latency_ms


def test_an_underrun_mid_item_is_counted_and_filled_with_silence(
        speaker48: FakeSpeaker) -> None:
    spk = speaker48
    signal = wire_signal(1.0, seed=7)
    sink = PyAudioSink(spk.device, prebuffer_ms=80)
    try:
        sink.open()
        assert wait_until(lambda: spk.reader.received_frames() > 9600, 5)
        start = spk.reader.received_frames()
        feed(sink, "item_1", signal[: WIRE // 2])
        assert wait_until(lambda: sink.stats.underruns > 0, 2)
        time.sleep(0.3)
        assert sink.playing  # the item has not ended: it waits
        feed(sink, "item_1", signal[WIRE // 2:])
        sink.end_of_item("item_1")
        assert wait_until(lambda: not sink.playing, 5)
        time.sleep(0.3)
        underruns = sink.stats.underruns
        played = sink.played_ms("item_1")
    finally:
        sink.close()
    assert underruns >= 10  # 20 ms callbacks through 300 ms
    assert played == pytest.approx(1000, abs=5)
    rx, _ = received_since(spk, start)
    first, last = first_last_nonzero(rx)
    body = rx[first:last + 1]
    zero_runs = np.diff(np.flatnonzero(body))
    gap_ms = float(zero_runs.max()) * 1000 / 48000
    print(f"underrun: {underruns} callbacks, a gap of {gap_ms:.0f} ms of silence")
    assert gap_ms >= 250
    assert np.count_nonzero(body) == pytest.approx(48000, abs=300)


def test_a_missing_output_device_is_named(speaker48: FakeSpeaker) -> None:
    sink = PyAudioSink("no_such_speaker")
    with pytest.raises(AudioDeviceError) as info:
        sink.open()
    text = str(info.value)
    assert "no_such_speaker" in text and "edgevoice_speaker" in text
    assert not sink.is_open
    sink.close()


def test_speaker_and_microphone_share_one_host_and_the_capture_is_never_cut(
        tmp_path: Path) -> None:
    """One ALSA config with both PCMs (the speaker's text as the microphone's extra_config):
    opening, playing on and closing the speaker never interrupts capture."""
    mic_signal = speech(10.0, 48000, seed=2)
    with fake_speaker(tmp_path / "spk", rate=48000, set_environ=False) as spk, \
            fake_microphone(tmp_path / "mic", rate=48000, channels=1, signal=mic_signal,
                            extra_config=spk.config_text) as mic:
        host = PortAudioHost()
        source = PyAudioSource(mic.device, rate=48000, channels=1, host=host)
        sink = PyAudioSink(spk.device, host=host)
        arrivals: list[float] = []
        try:
            source.open()
            inits = host.initialisations
            t_end = time.monotonic() + 0.3
            while time.monotonic() < t_end:
                if (block := source.read(0.5)) is not None:
                    arrivals.append(block.captured_at)
            sink.open()
            assert host.initialisations == inits  # no re-scan under the open capture
            feed(sink, "item_1", wire_signal(1.0))
            sink.end_of_item("item_1")
            t_end = time.monotonic() + 1.5
            while time.monotonic() < t_end:
                if (block := source.read(0.5)) is not None:
                    arrivals.append(block.captured_at)
            played = sink.played_ms("item_1")
            sink.close()
            t_end = time.monotonic() + 0.3
            while time.monotonic() < t_end:
                if (block := source.read(0.5)) is not None:
                    arrivals.append(block.captured_at)
            assert source.stats.dropped_blocks == 0
        finally:
            sink.close()
            source.close()
            host.terminate()
        mic.check_writer()
        spk.check()
    assert played == pytest.approx(1000, abs=5)
    gaps = np.diff(np.asarray(arrivals))
    assert len(arrivals) >= 90 and float(gaps.max()) < 0.15


class StereoOnly:
    """The part of PyAudio that choose_output uses: a device that takes 2 channels only."""

    def is_format_supported(self, rate: float, **kw: int) -> bool:
        return kw["output_channels"] == 2 and rate in (44100, 48000)


def test_a_device_that_needs_two_channels_gets_the_signal_on_both() -> None:
    entry = DeviceEntry(direction="output", index=3, name="hdmi", channels=8,
                        default_sample_rate=32000.0, is_default=True)
    assert choose_output(StereoOnly(), entry, None) == (48000, 2)
    assert choose_output(StereoOnly(), entry, 44100) == (44100, 2)
    mono_only = DeviceEntry("output", 1, "hdmi", 1, 32000.0, False)
    with pytest.raises(AudioDeviceError, match="hdmi"):
        choose_output(StereoOnly(), mono_only, None)
    sink = PyAudioSink("hdmi", prebuffer_ms=0)
    buf = PlaybackBuffer(48000, prebuffer_frames=0, capacity_frames=48000)
    callback = sink._make_callback(buf, 2)
    buf.push("a", 0, np.array([5, -7, 9], dtype=np.int16))
    buf.end("a")
    data, _flag = callback(None, 4, {}, 0)
    assert np.frombuffer(data, dtype=np.int16).tolist() == [5, 5, -7, -7, 9, 9, 0, 0]
    assert sink.level_dbfs > -80.0


def test_a_resampler_kept_for_the_next_item_changes_no_sample(tmp_path: Path) -> None:
    """The sink keeps a flushed (reset) resampler for the next item instead of building one
    (1.3 ms at 44.1 kHz): an item started and dropped by a barge-in, then two answers, reach
    the speaker bit for bit as each answer resampled on its own from a fresh start."""
    first, second = wire_signal(0.6, seed=3), wire_signal(0.5, seed=4)
    with fake_speaker(tmp_path / "spk", rate=44100) as spk:
        sink = PyAudioSink(spk.device, prebuffer_ms=80)
        try:
            sink.open()
            assert wait_until(lambda: spk.reader.received_frames() > 4410, 5)
            start = spk.reader.received_frames()
            # 40 ms, under the prebuffer: never heard, but it leaves state in its resampler
            sink.play("cut", 0, wire_signal(0.04, seed=5).tobytes())
            assert sink.flush() is not None
            feed(sink, "item_1", first)
            sink.end_of_item("item_1")
            feed(sink, "item_2", second)
            sink.end_of_item("item_2")
            assert wait_until(lambda: not sink.playing, 10)
            time.sleep(0.3)  # the output latency, the FIFO
            assert sink.stats.underruns == 0 and sink.stats.items_played == 2
        finally:
            sink.close()
        rx, _ = received_since(spk, start)
        spk.check()
    expected = np.concatenate([fresh_single(first, 44100), fresh_single(second, 44100)])
    lead = int(np.flatnonzero(expected)[0])
    begin = int(np.flatnonzero(rx)[0]) - lead
    assert begin >= 0 and rx.size >= begin + expected.size
    assert np.array_equal(rx[begin:begin + expected.size], expected)
    assert not rx[:begin].any() and not rx[begin + expected.size:].any()
