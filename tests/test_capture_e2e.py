"""Microphone to server, all real: PyAudio on an ALSA FIFO PCM, the daemon, the devserver.

The server must receive 24 kHz mono audio whose content matches the source: SNR at least
40 dB against an independent reference resample (scipy's resample_poly) of the source's
mono downmix, after alignment; every frame text; session.update acknowledged first.
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from alsa_fixtures import fake_microphone
from daemon_harness import FAST, merge, running_daemon
from fakes import wait_until
from scipy.signal import butter, resample_poly, sosfiltfilt
from signals import speech

from edgevoice.devserver import DevServer

pytestmark = pytest.mark.integration


def source_signal(rate: int, seconds: float) -> npt.NDArray[np.int16]:
    """The speech-like test signal at the microphone's own rate, band-limited to 9 kHz.

    Above 10 kHz (the passband edge in the spec) two correct resamplers may differ, so
    content there would measure the reference's filter, not our pipeline.
    """
    lowpass = butter(10, 9000, fs=24000, output="sos")
    base = sosfiltfilt(lowpass, speech(seconds, 24000, seed=11).astype(np.float64))
    up, down = rate // gcd(rate, 24000), 24000 // gcd(rate, 24000)
    out: npt.NDArray[np.int16] = np.clip(resample_poly(base, up, down), -32768, 32767).astype(
        np.int16)
    return out


def fractional_shift(x: npt.NDArray[np.float64], shift: float) -> npt.NDArray[np.float64]:
    """Delay `x` by `shift` samples (any real number) through the FFT phase."""
    size = 1 << (len(x) - 1).bit_length()
    spectrum = np.fft.rfft(x, size)
    freqs = np.fft.rfftfreq(size)
    return np.fft.irfft(spectrum * np.exp(-2j * np.pi * freqs * shift), size)[: len(x)]


def snr_after_alignment(received: npt.NDArray[np.int16],
                        reference: npt.NDArray[np.float64]) -> float:
    """Best SNR of `received` against `reference` over integer and sub-sample alignments.

    The integer lag comes from cross-correlation; the fraction from a 1/20-sample grid, as
    a resampler's delay is rarely a whole number of output samples.
    """
    rx = received.astype(np.float64)
    probe = rx[: 24000 * 2]
    n = len(reference) + len(probe)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(reference, size) * np.conj(np.fft.rfft(probe, size)), size)
    lag = int(np.argmax(corr[: len(reference) - len(probe)]))
    length = min(len(rx), len(reference) - lag - 2) - 200
    best = -np.inf
    for frac in np.arange(-1.0, 1.0, 0.05):
        ref = fractional_shift(reference, frac)[lag + 100:lag + 100 + length]
        noise = rx[100:100 + length] - ref
        best = max(best, float(10 * np.log10(np.sum(ref**2) / max(np.sum(noise**2), 1e-9))))
    return best


@pytest.mark.parametrize(("rate", "channels"), [(48000, 2), (44100, 1)])
def test_microphone_audio_reaches_the_server_intact(server: DevServer, tmp_path: Path,
                                                    rate: int, channels: int) -> None:
    mono = source_signal(rate, 8.0)
    if channels == 2:
        left, right = mono, (mono.astype(np.int32) // 2).astype(np.int16)
        frames = np.stack([left, right], axis=1)
        downmix = (left.astype(np.float64) + right.astype(np.float64)) / 2
    else:
        frames = mono
        downmix = mono.astype(np.float64)
    with fake_microphone(tmp_path / "mic", rate=rate, channels=channels, signal=frames,
                         set_environ=False) as mic:
        config = merge(FAST, {"audio": {"device": mic.device, "rate": rate,
                                        "channels": channels},
                              "server": {"url": server.url}})
        with running_daemon(tmp_path, config, env=mic.env) as daemon:
            assert wait_until(lambda: bool(server.sessions())
                              and server.sessions()[0].audio_bytes >= 24000 * 2 * 5, 30), \
                daemon.log()
            assert daemon.stop() == 0
            log = daemon.log()
        mic.check_writer()
    record = server.sessions()[0]
    assert record.binary_frames == 0
    assert record.updated_acked_at is not None and record.first_append_at is not None
    assert record.updated_acked_at < record.first_append_at
    assert f"{rate} Hz" in log
    received = np.frombuffer(record.audio, dtype="<i2")
    # The writer loops the signal: the reference covers two periods.
    reference = resample_poly(np.tile(downmix, 3), 24000 // gcd(rate, 24000),
                              rate // gcd(rate, 24000))
    snr = snr_after_alignment(received[: 24000 * 5], reference)
    print(f"end-to-end SNR {rate} Hz {channels} ch: {snr:.1f} dB")
    assert snr >= 40.0, f"SNR {snr:.1f} dB"


def test_the_streaming_daemon_never_imports_what_only_its_fallbacks_need(
        server: DevServer, tmp_path: Path) -> None:
    """tempfile and ctypes.util (with shutil, bz2 and lzma: 0.56 MB resident for the
    daemon's whole life) serve only fallbacks: the section that quiets ALSA's stderr
    while PortAudio opens uses a memory file, libasound loads by its soname, and the
    status file is written without tempfile. Import times (-X importtime) name every
    module the real daemon imports while it streams and writes its status."""
    status = tmp_path / "status.json"
    with fake_microphone(tmp_path / "mic", rate=48000, channels=2,
                         signal=np.zeros((48000, 2), dtype=np.int16),
                         set_environ=False) as mic:
        config = merge(FAST, {"audio": {"device": mic.device, "rate": 48000, "channels": 2},
                              "server": {"url": server.url},
                              "health": {"status_file": str(status)}})
        env = {**mic.env, "PYTHONPROFILEIMPORTTIME": "1"}
        with running_daemon(tmp_path, config, env=env) as daemon:
            assert wait_until(lambda: bool(server.sessions())
                              and server.sessions()[0].audio_bytes >= 24000 * 2
                              and status.exists(), 30), daemon.log()
            assert daemon.stop() == 0
            log = daemon.log()
    imported = {line.rsplit("|", 1)[1].strip() for line in log.splitlines()
                if line.startswith("import time:") and line.count("|") == 2}
    assert {"numpy", "pyaudio", "edgevoice.audio.alsa_quiet",
            "edgevoice.health.status"} <= imported, sorted(imported)
    assert "48000 Hz" in log  # PortAudio opened the microphone (inside the quiet section)
    assert not imported & {"tempfile", "ctypes.util", "shutil", "bz2", "lzma"}, \
        sorted(imported & {"tempfile", "ctypes.util", "shutil", "bz2", "lzma"})
