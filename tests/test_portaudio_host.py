"""One PortAudio per process: a re-scan never cuts an open stream; terminate happens once.

The unit tests count initialisations and terminations with a fake PyAudio factory; the last
test uses the real PyAudio on ALSA file PCMs: a capture stream keeps delivering while a
second stream (on the same host) asks for a re-scan, which the host then postpones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alsa_fixtures import fake_microphone
from signals import speech

from edgevoice.audio.portaudio_host import PortAudioHost
from edgevoice.audio.pyaudio_source import PyAudioSource
from edgevoice.errors import AudioDeviceError


class FakePyAudio:
    created = 0

    def __init__(self) -> None:
        FakePyAudio.created += 1
        self.terminated = 0

    def terminate(self) -> None:
        self.terminated += 1


def test_rescan_only_while_no_stream_is_open() -> None:
    host = PortAudioHost(factory=FakePyAudio)
    first = host.acquire()
    assert host.acquire(rescan=False) is first and host.initialisations == 1
    assert host.acquire(rescan=True) is not first  # nothing open: a fresh device list
    assert first.terminated == 1 and host.initialisations == 2
    current = host.acquire()
    host.stream_opened()
    assert host.open_streams == 1
    assert host.acquire(rescan=True) is current  # a stream is open: postponed
    assert current.terminated == 0
    host.stream_closed()
    assert host.acquire(rescan=True) is not current and current.terminated == 1
    last = host.acquire()
    host.terminate()
    host.terminate()  # once: a second call finds nothing to terminate
    assert last.terminated == 1


def test_initialisation_failure_is_a_device_error() -> None:
    def broken() -> object:
        raise OSError("no ALSA")

    with pytest.raises(AudioDeviceError, match="cannot initialise PortAudio: no ALSA"):
        PortAudioHost(factory=broken).acquire()


@pytest.mark.integration
def test_a_second_open_on_a_shared_host_does_not_cut_the_first_stream(tmp_path: Path) -> None:
    host = PortAudioHost()
    with fake_microphone(tmp_path, rate=48000, channels=1, signal=speech(10.0, 48000)):
        first = PyAudioSource("edgevoice_test", rate=48000, host=host)
        first.open()
        try:
            assert first.read(2.0) is not None
            # Opening another (missing) device asks the host for a re-scan: it must not
            # terminate PortAudio under the open stream.
            with pytest.raises(AudioDeviceError, match="no input device matches"):
                PyAudioSource("no such microphone", host=host).open()
            assert host.initialisations == 1 and host.open_streams == 1
            for _ in range(10):
                assert first.read(2.0) is not None  # still delivering
        finally:
            first.close()
        assert host.open_streams == 0
        host.terminate()
