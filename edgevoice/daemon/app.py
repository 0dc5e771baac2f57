"""The composition root of `edgevoice run`: builds the concrete parts and reports health.

Health is reported from the supervisor's tick on the main thread: READY once capture
runs (never waiting for the network, so an offline boot is not a restart loop), STATUS
when it changes, WATCHDOG only while every worker shows progress.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from edgevoice.audio.source import AudioSource
from edgevoice.credentials import load_api_key
from edgevoice.daemon.backlog import ChunkBacklog
from edgevoice.daemon.backoff import Backoff
from edgevoice.daemon.capture_worker import CaptureWorker
from edgevoice.daemon.stats import Stats
from edgevoice.daemon.supervisor import Supervisor
from edgevoice.daemon.uplink import Uplink
from edgevoice.errors import ConfigError
from edgevoice.health import status as status_files
from edgevoice.health.heartbeat import HeartbeatRegistry, WatchdogGate
from edgevoice.health.logsetup import add_secret, setup_logging
from edgevoice.health.notify import Notifier, make_notifier
from edgevoice.realtime import protocol
from edgevoice.realtime.protocol import ServerEvent
from edgevoice.realtime.session import RealtimeSession
from edgevoice.realtime.transport import WebSocketTransport
from edgevoice.settings import Settings, load_settings

log = logging.getLogger("edgevoice")

STATUS_FILE_EVERY_S = 2.0


class SignalFlags(Protocol):
    stop: bool
    reload: bool


class Daemon:
    def __init__(self, settings: Settings, config_path: Path | None,
                 signals: SignalFlags) -> None:
        self.settings = settings
        self._config_path = config_path
        self._signals = signals
        self.stats = Stats()
        self._notifier: Notifier = make_notifier()
        self._ready_sent = False
        self._stopping_sent = False
        self._last_status = ""
        self._last_files_at = 0.0
        self._audio_expected = False

    # -- building ------------------------------------------------------------------------

    def _make_source(self) -> AudioSource:
        audio = self.settings.audio
        if audio.wav_file:
            from edgevoice.audio.wav_source import WavSource

            return WavSource(audio.wav_file, block_ms=audio.chunk_ms, loop=audio.wav_loop)
        from edgevoice.audio.pyaudio_source import PyAudioSource

        return PyAudioSource(
            device=audio.device,
            rate=None if audio.rate == "auto" else audio.rate,
            channels=None if audio.channels == "auto" else audio.channels,
            block_ms=audio.chunk_ms,
            queue_s=audio.queue_s,
        )

    def _make_session(self, name: str) -> RealtimeSession:
        server = self.settings.server
        url, headers = protocol.connect_request(server, self.settings.session.mode,
                                                self._api_key)
        transport = WebSocketTransport(
            url, headers,
            connect_timeout_s=server.connect_timeout_s,
            socket_timeout_s=server.socket_timeout_s,
            ping_interval_s=server.ping_interval_s,
            pong_timeout_s=server.pong_timeout_s,
            ca_file=server.ca_file,
        )
        return RealtimeSession(transport, self.settings.session, self,
                               update_timeout_s=server.session_update_timeout_s, name=name,
                               log_all_events=self.settings.logging.log_all_events)

    # -- running -------------------------------------------------------------------------

    def run(self, duration_s: float | None = None) -> int:
        s = self.settings
        setup_logging(s.logging.level, s.logging.journald)
        self._api_key = load_api_key(s.server)
        add_secret(self._api_key)
        chunk_ms = s.audio.chunk_ms
        max_chunks = max(1, int(s.stream.outage_buffer_s * 1000 / chunk_ms))
        backlog = ChunkBacklog(max_chunks)
        self._capture = CaptureWorker(
            self._make_source, backlog, self.stats,
            chunk_ms=chunk_ms, silence_warn_s=s.health.silence_warn_s,
            reopen_backoff=Backoff(0.5, 10.0, 2.0),
        )
        self._uplink = Uplink(backlog, self.stats, keep_sent=max_chunks)
        self._supervisor = Supervisor(s, self._make_session, self._capture, self._uplink,
                                      backlog, self.stats, on_tick=self._tick)
        self._heartbeats = HeartbeatRegistry()
        half = self._notifier.watchdog_interval_s  # half of WatchdogSec, or None
        # Ping a little before half the interval is over: the loop ticks every 0.1 s, so a
        # ping "when due" would otherwise land just after it. Staleness keeps the full half.
        self._watchdog = WatchdogGate(
            self._heartbeats, self._notifier,
            interval_s=None if half is None else half * 0.8,
            max_age_s=None if half is None else max(half, 0.5),
        )
        if duration_s is not None:
            self._supervisor.deadline = time.monotonic() + duration_s
        log.info("edgevoice starting: %s, server %s, model %s, mode %s",
                 "WAV " + s.audio.wav_file if s.audio.wav_file else f"device {s.audio.device!r}",
                 s.server.url, s.server.model, s.session.mode)
        code = self._supervisor.run()
        self._send_stopping()
        self._write_files(force=True)
        log.info("edgevoice stopped (exit %d)", code)
        return code

    def _tick(self) -> None:
        if self._signals.stop:
            self._send_stopping()
            self._supervisor.request_stop()
        if self._signals.reload:
            self._signals.reload = False
            self._reload()
        if not self._ready_sent and self._capture.opened.is_set():
            self._ready_sent = True
            self._notifier.ready()
        self._feed_heartbeats()
        self._watchdog.tick()
        self._update_status()

    def _feed_heartbeats(self) -> None:
        hb = self._heartbeats
        hb.beat("capture", at=self._capture.beat)
        hb.beat("uplink", at=self._uplink.beat)
        # Audio must keep arriving while the device is open; while it is being reopened
        # with backoff (unplugged microphone) the process is healthy and must not be killed.
        device_open = self._capture.is_open
        if device_open != self._audio_expected:
            self._audio_expected = device_open
            hb.expect_progress("audio", device_open)
        hb.progress("audio", at=self._capture.last_audio_at)
        target = self._uplink.target
        if target is not None:
            hb.beat("downlink", at=target.reader_beat)
        else:
            hb.forget("downlink")  # waiting in backoff is healthy

    def _send_stopping(self) -> None:
        if not self._stopping_sent:
            self._stopping_sent = True
            self._notifier.stopping()

    def _update_status(self) -> None:
        target = self._uplink.target
        age = time.monotonic() - target.configured_at if target is not None else None
        line = status_files.status_line(self.stats.snapshot(), self.settings.server.model, age)
        if line != self._last_status:
            self._last_status = line
            self._notifier.status(line)
        self._write_files()

    def _write_files(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_files_at < STATUS_FILE_EVERY_S:
            return
        self._last_files_at = now
        health = self.settings.health
        if not (health.status_file or health.metrics_file):
            return
        snapshot = self.stats.snapshot()
        try:
            if health.status_file:
                status_files.write_atomic(Path(health.status_file),
                                          status_files.status_json(snapshot))
            if health.metrics_file:
                status_files.write_atomic(Path(health.metrics_file),
                                          status_files.prometheus_text(snapshot))
        except OSError as exc:
            log.warning("cannot write status/metrics file: %s", exc)

    def _reload(self) -> None:
        self._notifier.reloading()
        try:
            if self._config_path is None:
                raise ConfigError("started without --config; nothing to reload")
            new = load_settings(self._config_path)
        except ConfigError as exc:
            log.error("reload failed, keeping the running settings: %s", exc,
                      extra={"edgevoice": {"EVENT": "reload_failed"}})
        else:
            restart_needed = [name for name in ("audio", "server", "playback", "stream")
                              if getattr(new, name) != getattr(self.settings, name)]
            if restart_needed:
                log.warning("reload: changes to %s take effect after a restart",
                            ", ".join(restart_needed))
            # Session settings apply to every new session, and to the current one now.
            self.settings = replace(self.settings, session=new.session, logging=new.logging,
                                    health=new.health)
            logging.getLogger().setLevel(new.logging.level.upper())
            target = self._uplink.target
            if target is not None and not target.failed.is_set():
                try:
                    target.send(protocol.session_update(new.session))
                except Exception as exc:  # noqa: BLE001 - the session's own checks handle it
                    log.warning("could not apply the reloaded session settings now: %s", exc)
            log.info("configuration reloaded from %s", self._config_path,
                     extra={"edgevoice": {"EVENT": "reloaded"}})
        self._notifier.ready()

    # -- SessionObserver -----------------------------------------------------------------

    def on_server_event(self, event: ServerEvent) -> None:
        self.stats.add("server_events")
        kind = event.type
        if kind == "input_audio_buffer.speech_started":
            self.stats.add("speech_turns")
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.stats.add("user_transcripts")
        elif kind == "response.done":
            self.stats.add("responses")
        elif kind == "error":
            self.stats.add("server_errors")

    def on_output_audio(self, pcm: bytes) -> None:
        self.stats.add("response_audio_bytes", len(pcm))

    # -- the end -------------------------------------------------------------------------

    def summary(self, elapsed_s: float) -> str:
        snap = self.stats.snapshot()
        c = snap["counters"]
        sent_s = c["audio_bytes_sent"] / 2 / protocol.INPUT_RATE
        rows = [
            ("run time", f"{elapsed_s:.1f} s"),
            ("audio chunks captured", f"{c['chunks_captured']}"),
            ("audio chunks sent", f"{c['chunks_sent']} ({c['audio_bytes_sent']} bytes, "
                                  f"{sent_s:.1f} s of 24 kHz audio)"),
            ("sent from the outage buffer", f"{c['chunks_replayed']}"),
            ("dropped (outage buffer full)", f"{c['chunks_dropped_outage']}"),
            ("capture overflows / drops", f"{c['capture_overflows']} / "
                                          f"{c['capture_dropped_blocks']}"),
            ("connections / reconnects", f"{c['connections']} / {c['reconnects']}"),
            ("session rollovers", f"{c['rollovers']}"),
            ("speech turns", f"{c['speech_turns']}"),
            ("user transcripts", f"{c['user_transcripts']}"),
            ("responses received", f"{c['responses']} ({c['response_audio_bytes']} bytes "
                                   "of audio)"),
            ("server errors", f"{c['server_errors']}"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = ["edgevoice run summary"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
        return "\n".join(lines)
