"""The one place that picks the concrete parts of `edgevoice run`.

Everything below `cli` takes these through Protocols (AudioSource, Transport, Notifier, a
clock), so tests build the daemon from fakes where a real part cannot run, and the real
ones everywhere else. PyAudio is imported only when a microphone is configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgevoice.audio.source import AudioSource
from edgevoice.clock import Clock
from edgevoice.credentials import load_api_key
from edgevoice.health.notify import Notifier, make_notifier
from edgevoice.realtime import protocol
from edgevoice.realtime.transport import Transport, WebSocketTransport
from edgevoice.settings import AudioSettings, PlaybackSettings, ServerSettings

if TYPE_CHECKING:
    from edgevoice.audio.portaudio_host import PortAudioHost


@dataclass
class Parts:
    notifier: Notifier
    load_api_key: Callable[[ServerSettings], str]
    make_source: Callable[[AudioSettings], AudioSource]
    # (server settings, session mode, API key) -> an unconnected transport
    make_transport: Callable[[ServerSettings, str, str], Transport]
    # playback settings -> the speaker (opened later by the playback worker)
    make_sink: Callable[[PlaybackSettings], Any] = field(default=lambda p: None)
    clock: Clock = time.monotonic
    wall_clock: Clock = time.time
    release: Callable[[], None] = field(default=lambda: None)  # at exit: PortAudio
    # whether a missing device asks the open streams to close for a PortAudio re-scan
    rescan_wanted: Callable[[], bool] = field(default=lambda: False)
    # how many times PortAudio listed the devices (grows at each re-scan)
    device_list_generation: Callable[[], int] = field(default=lambda: 0)


class _Audio:
    """Sources share one PortAudio host, created on the first microphone open."""

    def __init__(self) -> None:
        self._host: PortAudioHost | None = None

    def make_source(self, audio: AudioSettings) -> AudioSource:
        if audio.wav_file:
            from edgevoice.audio.wav_source import WavSource

            return WavSource(audio.wav_file, block_ms=audio.chunk_ms, loop=audio.wav_loop)
        from edgevoice.audio.portaudio_host import PortAudioHost
        from edgevoice.audio.pyaudio_source import PyAudioSource

        if self._host is None:
            self._host = PortAudioHost()
        return PyAudioSource(
            device=audio.device,
            rate=None if audio.rate == "auto" else audio.rate,
            channels=None if audio.channels == "auto" else audio.channels,
            block_ms=audio.chunk_ms,
            queue_s=audio.queue_s,
            host=self._host,
        )

    def make_sink(self, playback: PlaybackSettings) -> Any:
        from edgevoice.audio.portaudio_host import PortAudioHost
        from edgevoice.audio.pyaudio_sink import PyAudioSink

        if self._host is None:
            self._host = PortAudioHost()
        return PyAudioSink(
            device=playback.device,
            rate=None if playback.rate == "auto" else playback.rate,
            prebuffer_ms=playback.prebuffer_ms,
            buffer_s=playback.buffer_s,
            host=self._host,
        )

    def device_list_generation(self) -> int:
        return self._host.initialisations if self._host is not None else 0

    def rescan_wanted(self) -> bool:
        return self._host is not None and self._host.rescan_wanted

    def release(self) -> None:
        if self._host is not None:
            self._host.terminate()


def make_transport(server: ServerSettings, mode: str, api_key: str) -> Transport:
    url, headers = protocol.connect_request(server, mode, api_key)
    return WebSocketTransport(
        url, headers,
        connect_timeout_s=server.connect_timeout_s,
        socket_timeout_s=server.socket_timeout_s,
        ping_interval_s=server.ping_interval_s,
        pong_timeout_s=server.pong_timeout_s,
        ca_file=server.ca_file,
        max_frame_bytes=server.max_frame_bytes,
    )


def build_parts() -> Parts:
    audio = _Audio()
    return Parts(
        notifier=make_notifier(),
        load_api_key=load_api_key,
        make_source=audio.make_source,
        make_transport=make_transport,
        make_sink=audio.make_sink,
        release=audio.release,
        rescan_wanted=audio.rescan_wanted,
        device_list_generation=audio.device_list_generation,
    )
