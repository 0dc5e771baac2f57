"""Microphone faults: digital silence, a stuck buffer, a device that comes and goes."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from alsa_fixtures import SYSTEM_ALSA_CONF, fake_microphone
from daemon_harness import FAST, merge, running_daemon
from fakes import wait_until
from signals import speech
from systemd_fixtures import NotifyRecorder

from edgevoice.audio.source import CapturedBlock, CaptureStats
from edgevoice.daemon.backlog import ChunkBacklog
from edgevoice.daemon.backoff import Backoff
from edgevoice.daemon.capture_worker import CaptureConfig, CaptureWorker
from edgevoice.daemon.stats import Stats
from edgevoice.devserver import DevServer
from edgevoice.errors import AudioDeviceError

RATE = 48000


def mic_config(device: str, url: str) -> dict[str, object]:
    return merge(FAST, {"audio": {"device": device, "rate": RATE, "channels": 1},
                        "server": {"url": url}})


@pytest.mark.integration
def test_digital_silence_is_reported_once_and_recovery_once(server: DevServer,
                                                            tmp_path: Path) -> None:
    with fake_microphone(tmp_path / "mic", rate=RATE, channels=1,
                         signal=speech(10.0, RATE), set_environ=False) as mic:
        assert mic.writer is not None
        with running_daemon(tmp_path, mic_config(mic.device, server.url), env=mic.env) as d:
            assert d.wait_log(r"streaming to", 20), d.log()
            mic.writer.feed_zeros()
            assert d.wait_log(r"microphone delivers digital silence for 2s", 10), d.log()
            time.sleep(1.0)  # stays dead a while longer: no second warning
            mic.writer.feed(speech(10.0, RATE, seed=5))
            assert d.wait_log(r"microphone delivers a live signal again", 10)
            assert d.stop() == 0
            log = d.log()
    assert log.count("microphone delivers digital silence") == 1
    assert log.count("live signal again") == 1


@pytest.mark.integration
def test_closed_writer_is_noticed(server: DevServer, tmp_path: Path) -> None:
    """EOF on the FIFO: depending on alsa-lib's file plugin the capture then either repeats
    a stale period (a stuck buffer) or delivers nothing (a stall); both must be reported."""
    notify = NotifyRecorder()
    try:
        with fake_microphone(tmp_path / "mic", rate=RATE, channels=1,
                             signal=speech(10.0, RATE), set_environ=False) as mic:
            assert mic.writer is not None
            env = {**mic.env, "NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "2000000"}
            with running_daemon(tmp_path, mic_config(mic.device, server.url), env=env) as d:
                assert d.wait_log(r"streaming to", 20), d.log()
                # The FIFO must be open before its writer goes: closed before the daemon
                # opened it, the device's open (in PortAudio) would wait for a writer.
                assert d.wait_log(r"capturing from", 20), d.log()
                mic.writer.close()
                assert d.wait_log(r"microphone delivers (repeated buffer|digital "
                                  r"silence) for 2s|withholding keep-alive, no audio data", 10), \
                    d.log()
                assert d.stop() == 0
    finally:
        notify.close()


@pytest.mark.integration
def test_missing_device_is_reopened_by_name_once_it_appears(server: DevServer,
                                                            tmp_path: Path) -> None:
    """PortAudio re-reads the ALSA configuration when it is re-initialised: a device that
    appears later (a USB microphone plugged in) is found without restarting the daemon."""
    live = tmp_path / "live.asoundrc"
    live.write_text(f"<{SYSTEM_ALSA_CONF}>\n")
    with fake_microphone(tmp_path / "mic", rate=RATE, channels=1,
                         signal=speech(10.0, RATE), set_environ=False) as mic:
        env = {"ALSA_CONFIG_PATH": str(live)}
        with running_daemon(tmp_path, mic_config(mic.device, server.url), env=env) as d:
            assert d.wait_log(r"capture device unavailable \(attempt 2\): no input device "
                              r"matches 'edgevoice_test'", 20), d.log()
            shutil.copy(mic.config_path, live)  # the microphone is plugged in
            assert d.wait_log(r"capturing from .*edgevoice_test", 20), d.log()
            assert wait_until(lambda: bool(server.sessions())
                              and server.sessions()[0].audio_bytes > 48000, 15)
            assert d.stop() == 0
            log = d.log()
    assert "Traceback" not in log


class FailingSource:
    """A capture source (unit fake) that dies after a few blocks, like an unplugged mic."""

    rate = 24000
    description = "fake"

    def __init__(self, opens: list[int], fail_after: int) -> None:
        self.stats = CaptureStats()
        self._opens = opens
        self._fail_after = fail_after
        self._served = 0
        self._pause = threading.Event()

    def open(self) -> None:
        self._opens.append(1)

    def read(self, timeout: float) -> CapturedBlock | None:
        self._pause.wait(0.02)  # paced like 20 ms blocks
        if len(self._opens) == 1 and self._served >= self._fail_after:
            raise AudioDeviceError("device vanished (fake)")
        self._served += 1
        samples: npt.NDArray[np.int16] = np.full(480, self._served % 100 + 1, np.int16)
        return CapturedBlock(samples, time.monotonic(), False)

    def close(self) -> None:
        pass


def test_capture_worker_reopens_after_a_device_error() -> None:
    opens: list[int] = []
    stats = Stats()
    backlog = ChunkBacklog(1000)
    config = CaptureConfig(lambda: FailingSource(opens, fail_after=5), "fake", chunk_ms=20,
                           silence_warn_s=30)
    worker = CaptureWorker(config, backlog, stats, reopen_backoff=Backoff(0.01, 0.05, 2))
    worker.start()
    try:
        assert wait_until(lambda: len(opens) >= 2 and len(backlog) >= 10, 5)
    finally:
        assert worker.stop(timeout=3)
    assert stats.snapshot()["counters"]["capture_reopens"] >= 1
    assert "device vanished" in stats.snapshot()["last_error"]
