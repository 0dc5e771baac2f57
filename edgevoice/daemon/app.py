"""`edgevoice run`: wires the parts it is given into workers, and reports health.

The concrete parts come from `edgevoice.compose` (the command line) or from a test. Health
is reported from the supervisor's tick on the main thread: READY once the settings are
valid, the key is found and the workers run (never waiting for the network or for a
microphone, so an offline boot or a late USB device is not a restart loop), STATUS when it
changes, WATCHDOG only while every worker shows progress. A reload (SIGHUP) is applied
here, part by part, as the table in README.md says.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from edgevoice import __version__
from edgevoice.compose import Parts
from edgevoice.daemon.backlog import ChunkBacklog
from edgevoice.daemon.backoff import Backoff
from edgevoice.daemon.budget import STATE_FILE_NAME as BUDGET_FILE_NAME
from edgevoice.daemon.budget import DailyBudget
from edgevoice.daemon.capture_worker import CaptureConfig, CaptureWorker
from edgevoice.daemon.control import (
    ControlError,
    ControlServer,
    Reply,
    Request,
    mute_state_path,
    read_mute_state,
    resolve_socket,
    state_path,
    write_mute_state,
)
from edgevoice.daemon.cue_mask import CueMask
from edgevoice.daemon.speech_gate import SpeechGate, build_speech_gate
from edgevoice.daemon.stats import Stats, register_counters
from edgevoice.daemon.supervisor import Supervisor
from edgevoice.daemon.uplink import Uplink
from edgevoice.errors import ConfigError
from edgevoice.health import status as status_files
from edgevoice.health.heartbeat import HeartbeatRegistry, WatchdogGate
from edgevoice.health.logsetup import add_secret, setup_logging
from edgevoice.realtime import protocol
from edgevoice.realtime.event_log import EventLog
from edgevoice.realtime.history import History
from edgevoice.realtime.link import SessionLink
from edgevoice.realtime.models import retirements
from edgevoice.realtime.session import RealtimeSession, new_dispatcher
from edgevoice.realtime.timeline import chunks_to_keep
from edgevoice.settings import Settings, check_settings, load_settings
from edgevoice.transcripts.router import TranscriptRouter

if TYPE_CHECKING:  # imported where used: playback off, or no transcript sink, needs none
    from edgevoice.daemon.echo_gate import EchoGate
    from edgevoice.daemon.playback_worker import PlaybackWorker
    from edgevoice.daemon.talkback import Talkback
    from edgevoice.transcripts.delivery import Delivery

log = logging.getLogger("edgevoice")

STATUS_FILE_EVERY_S = 2.0
# The main loop looks again this soon while an answer plays (its end opens the follow-up
# window) or while the watchdog withholds its ping.
RECHECK_S = 0.1
STALE_MARGIN_S = 0.01  # wake this long after a heartbeat's age limit, so that it is over
BYTES_PER_S = protocol.PCM_BYTES_PER_S
CAPTURE_REOPEN_BACKOFF = (0.5, 10.0, 2.0)  # initial, max, multiplier (seconds)
ECHO_PREROLL_MS = 400  # mic audio kept while the speaker plays, for a local barge-in
# The capture worker's wake-up period while the speech gate is closed (capture_worker.py):
# an onset goes out at most this much later.
CAPTURE_IDLE_WAKE_S = 0.1
CONTROL_STOP_S = 1.0
TRANSCRIPTS_STOP_S = 1.0
SAY_MAX_CHARS = 2000
SAY_INSTRUCTION = ("Say the following to the user, exactly as written, in your own voice, "
                   "and nothing else: ")


class SignalFlags(Protocol):
    stop: bool
    reload: bool


def outage_chunks(settings: Settings) -> int:
    return max(1, int(settings.stream.outage_buffer_s * 1000 / settings.audio.chunk_ms))


def _gate_settings(s: Settings) -> tuple[object, ...]:
    """What the speech gate is built from: a reload that changes any of it rebuilds it."""
    st = s.stream
    return (st.gate, st.vad, st.preroll_ms, st.hangover_ms, st.max_utterance_s, st.wake_word,
            st.wake_threshold, st.send_wake_word, st.follow_up_s, s.audio.chunk_ms,
            s.session.turn_detection, s.session.mode, s.session.silence_duration_ms)


class PlayingSpeaker(Protocol):
    @property
    def playing(self) -> bool: ...

    @property
    def last_played_at(self) -> float | None: ...


def speaker_busy(speaker: PlayingSpeaker, echo_tail_s: float, now: float) -> bool:
    """Playing, or within the echo tail plus one idle batch (a block may be processed that
    much after it was captured, and the echo gate judges the tail when it processes it):
    the capture worker then takes each block at once."""
    from edgevoice.daemon.echo_gate import within_tail  # loaded with the speaker

    return within_tail(speaker.playing, speaker.last_played_at,
                       echo_tail_s + CAPTURE_IDLE_WAKE_S, now)


def say_events(text: str) -> list[dict[str, Any]]:
    """`edgevoice ctl say TEXT`: a system message asking the assistant to say TEXT (GA
    `conversation.item.create`, RealtimeConversationItemSystemMessage), then a response."""
    item = {"type": "message", "role": "system",
            "content": [{"type": "input_text", "text": SAY_INSTRUCTION + json.dumps(text)}]}
    return [{"type": "conversation.item.create", "event_id": protocol.new_event_id(),
             "item": item},
            {"type": "response.create", "event_id": protocol.new_event_id()}]


class Daemon:
    def __init__(self, settings: Settings, parts: Parts, config_path: Path | None,
                 signals: SignalFlags) -> None:
        self.settings = settings
        self._parts = parts
        self._config_path = config_path
        self._signals = signals
        self.stats = Stats()
        self._notifier = parts.notifier
        self._clock = parts.clock
        self._stopping_sent = False
        self._last_status = ""
        self._last_files_at = 0.0
        self._reload_seen_at: float | None = None  # SIGHUP noticed, reload at the next tick
        self._files_error = ""
        self._audio_expected = False
        self._api_key = ""
        self.url_override: str | None = None
        self._event_log = EventLog(settings.logging.log_all_events)
        self._dispatcher = new_dispatcher()
        self._event_log.register(self._dispatcher)
        register_counters(self._dispatcher, self.stats)
        # What was said, re-sent as text to a new session (session.carry_turns).
        self._history = History()
        self._history.register(self._dispatcher)
        # Completed transcripts to the sinks of `transcripts.*` (when any is set).
        self._transcript_router = TranscriptRouter(
            realtime_model=lambda: self.settings.server.model, clock=parts.clock,
            wall_clock=parts.wall_clock)
        self._transcript_router.register(self._dispatcher)
        self._transcripts: Delivery | None = None
        self._talkback: Talkback | None = None
        self._speaker: Any = None
        self._playback: PlaybackWorker | None = None
        self._echo_gate: EchoGate | None = None
        # What of the room is streamed at all (stream.gate), and where turns end.
        self._speech_gate: SpeechGate | None = None
        self._cue_mask: CueMask | None = None
        self._answer_pending = False  # response.done while the speaker still plays
        self._dispatcher.on(self._gate_server_speech, "input_audio_buffer.speech_started",
                            "input_audio_buffer.speech_stopped")
        self._dispatcher.on(self._gate_response_done, "response.done")
        self._control: ControlServer | None = None
        self._mute_lock = threading.Lock()
        self._mute_file: Path | None = None
        # The bill: the session the per-session figures are about, and the capture
        # counter when it became the one audio goes to.
        self._bill_session: SessionLink | None = None
        self._bill_captured_mark = 0

    # -- building ------------------------------------------------------------------------

    def _capture_config(self, settings: Settings) -> CaptureConfig:
        audio = settings.audio
        make_source = self._parts.make_source
        return CaptureConfig(
            make_source=lambda: make_source(audio),
            device_label=f"WAV {audio.wav_file}" if audio.wav_file else str(audio.device),
            chunk_ms=audio.chunk_ms,
            silence_warn_s=settings.health.silence_warn_s,
            idle_wake_s=min(CAPTURE_IDLE_WAKE_S, audio.queue_s / 2),
        )

    def _make_session_factory(self, settings: Settings,
                              api_key: str) -> Callable[[str], SessionLink]:
        parts, dispatcher, uplink = self._parts, self._dispatcher, self._uplink
        server, session_settings = settings.server, settings.session
        keep = chunks_to_keep(settings.stream.max_utterance_s, settings.stream.outage_buffer_s,
                              settings.audio.chunk_ms)

        def make(name: str) -> SessionLink:
            transport = parts.make_transport(server, session_settings.mode, api_key)
            return RealtimeSession(transport, session_settings, dispatcher, uplink,
                                   update_timeout_s=server.session_update_timeout_s,
                                   clock=parts.clock, wall_clock=parts.wall_clock, name=name,
                                   on_malformed=self._count_malformed, timeline_keep=keep)

        return make

    def _count_dropped(self, chunks: int) -> None:
        self.stats.add("chunks_dropped_outage", chunks)

    def _count_mute_dropped(self, chunks: int) -> None:
        self.stats.add("chunks_dropped_muted", chunks)

    def _count_malformed(self, kind: str) -> None:
        self.stats.add("malformed_frames")

    # -- the bill ------------------------------------------------------------------------

    def _make_budget(self, settings: Settings) -> DailyBudget:
        """The daily cap's count, kept in `$STATE_DIRECTORY/streamed_today` (beside the
        control socket outside systemd) so a restart loop cannot reset it."""
        path = state_path(BUDGET_FILE_NAME, resolve_socket(settings.control.socket))
        cap = settings.stream.max_streamed_s_per_day
        if cap is not None and path is None:
            log.warning("stream.max_streamed_s_per_day is set, but there is no state "
                        "directory ($STATE_DIRECTORY) or control socket to keep today's "
                        "count in: a restart starts the count from zero",
                        extra={"edgevoice": {"EVENT": "budget.not_kept"}})
        return DailyBudget(cap, path, wall_clock=self._parts.wall_clock, clock=self._clock)

    def _count_streamed(self, pcm_bytes: int) -> None:
        """The uplink sent a chunk (its thread): the daily cap counts it."""
        self._budget.add(pcm_bytes / BYTES_PER_S)

    def _bill(self, counters: dict[str, Any], target: SessionLink | None) -> dict[str, Any]:
        """Captured against streamed, since start and for the session in use, and the
        daily cap (status snapshot). A ratio over 1 for a session: it got replayed audio
        captured before it began."""
        captured = counters["audio_bytes_captured"] / BYTES_PER_S
        streamed = counters["audio_bytes_sent"] / BYTES_PER_S
        out: dict[str, Any] = {
            "seconds_captured": round(captured, 2), "seconds_streamed": round(streamed, 2),
            "streamed_ratio": round(streamed / captured, 4) if captured else None,
            "session_seconds_captured": None, "session_seconds_streamed": None,
            "session_streamed_ratio": None,
        }
        if target is not None and target is self._bill_session:
            got = target.timeline.offset_ms / 1000
            during = max(0, counters["audio_bytes_captured"] - self._bill_captured_mark)
            during_s = during / BYTES_PER_S
            out.update(session_seconds_captured=round(during_s, 2),
                       session_seconds_streamed=round(got, 2),
                       session_streamed_ratio=round(got / during_s, 4) if during_s else None)
        state = self._budget.state()
        out.update(streamed_today_s=round(state.streamed_s, 2),
                   max_streamed_s_per_day=state.cap_s, capped=state.capped,
                   capped_reason=state.reason, capped_until=state.reopens_at)
        return out

    def _bill_rows(self, c: dict[str, Any]) -> list[tuple[str, str]]:
        """The run summary's lines about the bill."""
        captured = c["audio_bytes_captured"] / BYTES_PER_S
        streamed = c["audio_bytes_sent"] / BYTES_PER_S
        ratio = f" ({100 * streamed / captured:.1f} % streamed)" if captured else ""
        state = self._budget.state()
        today = f"{state.streamed_s:.1f} s on {state.day}"
        if state.cap_s is not None:
            today += f" (cap {state.cap_s:g} s{', reached' if state.capped else ''})"
        return [("seconds captured / streamed", f"{captured:.1f} s / {streamed:.1f} s{ratio}"),
                ("streamed today", today),
                ("held back by the daily cap", f"{c['chunks_capped']} chunks"),
                ("kept back by the speech gate", f"{c['chunks_gated']} chunks")]

    def _bill_tick(self) -> None:
        """Main loop: the cap's state into the stats, the count into its file now and
        then, and which session the per-session figures are about."""
        state = self._budget.state()
        self.stats.set(capped=state.capped, capped_reason=state.reason)
        self._budget.maybe_save()
        target = self._uplink.target
        if target is not self._bill_session:
            self._bill_session = target
            self._bill_captured_mark = self.stats.snapshot()["counters"][
                "audio_bytes_captured"]

    # -- talking back --------------------------------------------------------------------

    def _start_playback(self, s: Settings) -> None:
        """The speaker, the handlers that feed it and stop it (barge-in), and the echo gate
        that keeps the microphone from answering the speaker."""
        from edgevoice.daemon.echo_gate import EchoGate
        from edgevoice.daemon.playback_worker import PlaybackWorker
        from edgevoice.daemon.talkback import Talkback

        speaker = self._parts.make_sink(s.playback)
        self._speaker = speaker
        talkback = Talkback(speaker, self._uplink)
        talkback.register(self._dispatcher)
        self._talkback = talkback
        self._playback = PlaybackWorker(
            speaker, str(s.playback.device), Backoff(*CAPTURE_REOPEN_BACKOFF), clock=self._clock,
            device_list_generation=self._parts.device_list_generation,
            rescan_wanted=self._parts.rescan_wanted)
        self._playback.start()
        p = s.playback
        if p.echo == "half_duplex":
            # The wake cue must not make the echo gate hold the question after it.
            mask = CueMask(lambda: bool(speaker.playing), lambda: speaker.last_played_at,
                           clock=self._clock)
            self._cue_mask = mask
            self._echo_gate = EchoGate(
                mode="half_duplex", tail_ms=p.echo_tail_ms, barge_in_db=p.barge_in_db,
                preroll_ms=ECHO_PREROLL_MS, chunk_ms=s.audio.chunk_ms,
                playing=mask.playing,
                last_played_at=mask.last_played_at,
                playback_level_dbfs=lambda: float(speaker.level_dbfs),
                on_barge_in=self._local_barge_in, clock=self._clock)

    def _speaker_busy(self) -> bool:
        speaker = self._speaker
        return speaker is not None and speaker_busy(
            speaker, self.settings.playback.echo_tail_ms / 1000, self._clock())

    # -- the speech gate ----------------------------------------------------------------

    def _make_speech_gate(self, s: Settings) -> SpeechGate:
        gate = build_speech_gate(s, allowed=self._budget.allows, on_wake=self._on_wake,
                                 count=self.stats.add, clock=self._clock)
        self._speech_gate = gate
        return gate

    def _gate_server_speech(self, session: object, event: protocol.ServerEvent) -> None:
        """The downlink thread: semantic_vad's end of turn keeps the gate open until here."""
        gate = self._speech_gate
        if gate is None:
            return
        if event.type == "input_audio_buffer.speech_started":
            gate.server_speech_started()
        else:
            gate.server_speech_stopped()

    def _gate_response_done(self, session: object, event: protocol.ServerEvent) -> None:
        """An answer is complete; the follow-up window starts once it has played out."""
        self._answer_pending = True

    def _gate_tick(self) -> None:
        if not self._answer_pending:
            return
        speaker = self._speaker
        if speaker is not None and speaker.playing:
            return
        self._answer_pending = False
        gate = self._speech_gate
        if gate is not None:
            gate.answer_finished()

    def _on_wake(self) -> float | None:
        """The wake word was heard (capture thread): a short cue when the speaker is on;
        returns its length (the gate does not take it for the question), None: no cue."""
        speaker = self._speaker
        if speaker is None:
            return None
        from edgevoice.audio.cue import CUE_RATE, wake_cue_pcm24k

        cue = wake_cue_pcm24k()
        length_s = len(cue) / 2 / CUE_RATE
        if self._cue_mask is not None:
            self._cue_mask.cue_started(length_s)
        item = "edgevoice-wake-cue-" + protocol.new_event_id()
        speaker.play(item, 0, cue)
        speaker.end_of_item(item)
        return length_s

    def _local_barge_in(self) -> None:
        """Someone spoke over the answer (the echo gate heard it, the server could not)."""
        target = self._uplink.target
        if self._talkback is not None and target is not None:
            self._talkback.barge_in(cast(Any, target))
        elif self._speaker is not None:
            self._speaker.flush()  # no session to tell (an outage): at least stop talking

    def _seed_session(self, session: SessionLink) -> None:
        """A new session starts empty: re-send the last turns, before any audio."""
        events = self._history.seed_events(self.settings.session.carry_turns)
        if events and self.settings.session.mode == "conversation":
            for event in events:
                self._uplink.submit(event, session, urgent=True)
            log.info("session %s seeded with the last %d turns", session.session_id,
                     len(events), extra={"edgevoice": {"EVENT": "session_seeded"}})

    # -- running -------------------------------------------------------------------------

    def run(self, duration_s: float | None = None) -> int:
        s = self.settings
        setup_logging(s.logging.level, s.logging.journald)
        self._api_key = self._parts.load_api_key(s.server)
        add_secret(self._api_key)
        for retirement in retirements(s.server.model if s.server.dialect == "openai" else None,
                                      s.session.transcription_model):
            log.warning("%s", retirement.warning(),
                        extra={"edgevoice": {"EVENT": "model_deprecated"}})
        backlog = ChunkBacklog(outage_chunks(s), on_drop=self._count_dropped,
                               on_mute_drop=self._count_mute_dropped)
        self._backlog = backlog
        self._restore_mute(s)
        self._budget = self._make_budget(s)
        self._uplink = Uplink(backlog, self.stats, clock=self._clock,
                              keep_sent=outage_chunks(s), on_audio_sent=self._count_streamed,
                              audio_allowed=self._budget.allows)
        if s.playback.enabled:
            self._start_playback(s)
        self._capture = CaptureWorker(
            self._capture_config(s), backlog, self.stats,
            reopen_backoff=Backoff(*CAPTURE_REOPEN_BACKOFF), clock=self._clock,
            gate=self._echo_gate.process if self._echo_gate is not None else None,
            # A WAV source holds no PortAudio stream: it has nothing to close for a re-scan.
            rescan_wanted=(self._parts.rescan_wanted
                           if s.playback.enabled and not s.audio.wav_file else None),
            speech_gate=self._make_speech_gate(s),
            speaker_busy=self._speaker_busy,
        )
        self._supervisor = Supervisor(s, self._make_session_factory(s, self._api_key),
                                      self._capture, self._uplink, backlog, self.stats,
                                      clock=self._clock, wall_clock=self._parts.wall_clock,
                                      on_tick=self._tick, on_session_ready=self._seed_session,
                                      next_tick_in=self._next_tick_in)
        self._started = self._clock()
        self._started_wall = self._parts.wall_clock()
        self._heartbeats = HeartbeatRegistry(clock=self._clock)
        self._heartbeats.expect_progress("audio", False)  # only while the device is open
        half = self._notifier.watchdog_interval_s  # half of WatchdogSec, or None
        # Ping a little before half the interval is over: the loop wakes when a ping is due
        # (`_next_tick_in`), but a loaded machine may wake it late. Staleness keeps the half.
        self._watchdog = WatchdogGate(
            self._heartbeats, self._notifier, clock=self._clock,
            interval_s=None if half is None else half * 0.8,
            max_age_s=None if half is None else max(half, 0.5),
        )
        if duration_s is not None:
            self._supervisor.deadline = self._clock() + duration_s
        log.info("edgevoice starting: %s, server %s, model %s, mode %s",
                 "WAV " + s.audio.wav_file if s.audio.wav_file else f"device {s.audio.device!r}",
                 s.server.url, s.server.model, s.session.mode)
        self._start_transcripts(s)
        self._supervisor.start_workers()
        self._start_control(s)
        # Settings valid, key found, workers started: ready, whatever the network or the
        # microphone do (they are waited for, with the watchdog still fed).
        self._notifier.ready()
        try:
            code = self._supervisor.run()
        finally:
            self._budget.save()  # the uplink has stopped: the day's count is final
            self._stop_control()
            self._stop_transcripts()  # after the readers: their last lines are written
            if self._playback is not None:
                self._playback.stop(timeout=2.0)
            self._parts.release()
        self._send_stopping()
        self._write_files(force=True)
        log.info("edgevoice stopped (exit %d)", code)
        return code

    def _tick(self) -> None:
        if self._signals.stop:
            self._send_stopping()
            if self._control is not None:
                self._control.request_stop()  # stops alongside the others
            self._supervisor.request_stop()
        if self._signals.reload:
            # Applied RECHECK_S after the signal woke the loop, as when the loop ticked at
            # 10 Hz: the downlink gets a moment to read what the server already sent (a
            # response's first audio decides whether the voice may change now, see
            # RealtimeSession.reconfigure; applied at once, the server may refuse it).
            now = self._clock()
            if self._reload_seen_at is None:
                self._reload_seen_at = now
            elif now - self._reload_seen_at >= RECHECK_S:
                self._reload_seen_at = None
                self._signals.reload = False
                self._reload()
        self._feed_heartbeats()
        self._watchdog.tick()
        self._bill_tick()
        self._gate_tick()
        self._update_status()

    def _next_tick_in(self) -> float | None:
        """Seconds until `_tick` has something due (the supervisor sleeps until then, or
        less): the watchdog's ping, the moment a heartbeat gets too old (the tick withholds
        the ping and says why at once: a stalled driver may freeze the whole process right
        after), the status files, an answer playing out."""
        if self._answer_pending or self._reload_seen_at is not None:
            return RECHECK_S
        now = self._clock()
        due = self._watchdog.seconds_until_due()
        hb = self._heartbeats
        ages = [hb.beat_age(name, now) for name in hb.workers()]
        if self._audio_expected:
            ages.append(hb.progress_age("audio", now))
        oldest = max((age for age in ages if age is not None), default=None)
        if oldest is not None:
            stale = self._watchdog.max_age_s - oldest + STALE_MARGIN_S  # "older than"
            due = stale if due is None else min(due, stale)
        health = self.settings.health
        if health.status_file or health.metrics_file:
            files = self._last_files_at + STATUS_FILE_EVERY_S - now
            due = files if due is None else min(due, files)
        if due is not None and due <= 0.0:
            # Still due right after a tick: the ping is withheld (a worker is stale). Look
            # again as often as the loop always did, not in a busy loop.
            due = RECHECK_S
        return due

    def _feed_heartbeats(self) -> None:
        hb = self._heartbeats
        hb.beat("capture", at=self._capture.beat)
        hb.beat("uplink", at=self._uplink.beat)
        if self._playback is not None:
            hb.beat("playback", at=self._playback.beat)
        # Audio must keep arriving while the device is open; while it is being (re)opened
        # with backoff (a late or unplugged microphone) the process is healthy.
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

    def status_snapshot(self) -> dict[str, Any]:
        """Everything `edgevoice status`, the status file and the metrics show."""
        snap = self.stats.snapshot()
        now = self._clock()
        target = self._uplink.target
        s = self.settings
        snap.update(
            pid=os.getpid(),
            version=__version__,
            model=s.server.model,
            mode=s.session.mode,
            chunk_ms=s.audio.chunk_ms,
            capture_device=self._capture.description,
            started_at=self._started_wall,
            updated_at=self._parts.wall_clock(),
            uptime_s=round(now - self._started, 1),
            session_age_s=round(now - target.configured_at, 1) if target is not None else None,
            last_server_event_age_s=(round(now - target.last_event_at, 1)
                                     if target is not None else None),
            uplink_queue_chunks=len(self._backlog),
        )
        snap.update(self._bill(snap["counters"], target))
        gate = self._speech_gate
        if gate is not None:
            snap.update(gate=gate.state, gate_mode=gate.mode, gate_reason=gate.reason)
        if self._speaker is not None and self._talkback is not None:
            played = self._speaker.stats
            talk = self._talkback.snapshot()
            snap.update(
                seconds_played=round(played.seconds_played, 2),
                playback_underruns=played.underruns,
                barge_ins=talk["barge_ins"],
                speaker=self._speaker.description,
                speaker_waiting=self._playback.waiting if self._playback else "",
            )
        return snap

    # -- control socket and mute --------------------------------------------------------

    def _start_control(self, settings: Settings) -> None:
        path = resolve_socket(settings.control.socket)
        if path is None:
            return
        commands = {"mute": self._cmd_mute, "unmute": self._cmd_unmute, "say": self._cmd_say,
                    "status": self._cmd_status}
        control = ControlServer(path, commands, clock=self._clock)
        try:
            control.start()
        except OSError as exc:
            # The daemon streams on without it: the socket is a convenience, not its job.
            log.error("control socket %s unavailable, `edgevoice ctl` will not reach this "
                      "daemon: %s", path, exc,
                      extra={"edgevoice": {"EVENT": "control.unavailable"}})
            return
        self._control = control

    def _stop_control(self) -> None:
        control, self._control = self._control, None
        if control is not None:
            control.stop(CONTROL_STOP_S)

    def _start_transcripts(self, settings: Settings) -> None:
        t = settings.transcripts
        if t.jsonl_file is None and t.socket is None:  # no sink: nothing of it is imported
            self._transcripts = None
        else:
            from edgevoice.transcripts.service import start_delivery

            self._transcripts = start_delivery(t, self.stats.add)
        self._transcript_router.output = (self._transcripts.submit
                                          if self._transcripts is not None else None)

    def _stop_transcripts(self) -> None:
        delivery, self._transcripts = self._transcripts, None
        self._transcript_router.output = None
        if delivery is not None:
            delivery.stop(TRANSCRIPTS_STOP_S)

    def _restore_mute(self, settings: Settings) -> None:
        """Start muted if the state file says so (before capture starts: nothing leaks)."""
        self._mute_file = mute_state_path(resolve_socket(settings.control.socket))
        if read_mute_state(self._mute_file):
            self._backlog.set_muted(True)
            self.stats.set(muted=True)
            log.warning("starting muted (%s): no microphone audio leaves the device until "
                        "`edgevoice ctl unmute`", self._mute_file,
                        extra={"edgevoice": {"EVENT": "muted"}})

    def set_muted(self, muted: bool) -> Reply:
        """Mute: queued audio and the audio kept for a replay are dropped at once, capture
        goes on but queues nothing, the server's uncommitted input is cleared. Kept in the
        state file, so it outlives a reload and a restart."""
        with self._mute_lock:
            was = self._backlog.muted
            dropped = self._backlog.set_muted(muted)
            forgotten = self._uplink.forget_audio() if muted else 0
            if muted and not was:
                # What the server holds of a turn begun before the mute is not committed.
                self._uplink.submit({"type": "input_audio_buffer.clear",
                                     "event_id": protocol.new_event_id()}, None, urgent=True)
            self.stats.set(muted=muted)
            reply: Reply = {"muted": muted, "changed": muted != was, "dropped_chunks": dropped,
                            "forgotten_replay_chunks": forgotten,
                            "state_file": str(self._mute_file) if self._mute_file else None}
            try:
                write_mute_state(self._mute_file, muted)
            except OSError as exc:
                reply["warning"] = f"the state is not kept across a restart: {exc}"
                log.error("cannot keep the mute state in %s: %s", self._mute_file, exc)
        log.warning("%s by the control socket (%d queued chunks dropped)",
                    "muted" if muted else "unmuted", dropped,
                    extra={"edgevoice": {"EVENT": "muted" if muted else "unmuted"}})
        return reply

    def _cmd_mute(self, request: Request) -> Reply:
        return self.set_muted(True)

    def _cmd_unmute(self, request: Request) -> Reply:
        return self.set_muted(False)

    def _cmd_status(self, request: Request) -> Reply:
        return {"status": status_files.redact_data(self.status_snapshot())}

    def _cmd_say(self, request: Request) -> Reply:
        text = request.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ControlError("say needs a text")
        text = " ".join(text.split())
        if len(text) > SAY_MAX_CHARS:
            raise ControlError(f"say: the text is longer than {SAY_MAX_CHARS} characters")
        if self.settings.session.mode != "conversation":
            raise ControlError("say needs session.mode: conversation (this daemon only "
                               "transcribes; there is no assistant to speak)")
        target = self._uplink.target
        if target is None or target.failed.is_set():
            state = self.stats.snapshot()["state"]
            raise ControlError(f"no session to speak through (the daemon is {state}); "
                               "try again once it streams")
        for event in say_events(text):
            self._uplink.submit(event, None, urgent=True)
        return {"session": target.session_id}

    def _update_status(self) -> None:
        target = self._uplink.target
        age = self._clock() - target.configured_at if target is not None else None
        waiting = self._capture.waiting
        if self._playback is not None and self._playback.waiting:
            waiting = "; ".join(w for w in (waiting, self._playback.waiting) if w)
        self.stats.set(waiting=waiting)
        line = status_files.status_line(self.stats.brief(), self.settings.server.model, age)
        if line != self._last_status:
            self._last_status = line
            self._notifier.status(line)
        self._write_files()

    def _write_files(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last_files_at < STATUS_FILE_EVERY_S:
            return
        self._last_files_at = now
        health = self.settings.health
        status_file = status_files.runtime_path(health.status_file,
                                                status_files.STATUS_FILE_NAME)
        if not (status_file or health.metrics_file):
            return
        snapshot = self.status_snapshot()
        try:
            if status_file:
                status_files.write_atomic(status_file, status_files.status_json(snapshot))
            if health.metrics_file:
                status_files.write_atomic(Path(health.metrics_file),
                                          status_files.prometheus_text(snapshot))
        except OSError as exc:
            # Once per distinct problem (every 2 s would flood the journal), and once more
            # when writing works again.
            text = str(exc)
            if text != self._files_error:
                self._files_error = text
                log.warning("cannot write status/metrics file: %s", text,
                            extra={"edgevoice": {"EVENT": "status_file_failed"}})
        else:
            if self._files_error:
                self._files_error = ""
                log.info("status/metrics files written again")

    # -- reload --------------------------------------------------------------------------

    def _reload(self) -> None:
        self._notifier.reloading()
        try:
            if self._config_path is None:
                raise ConfigError("started without a configuration file; nothing to reload")
            new = load_settings(self._config_path)
            new = replace(new, server=replace(new.server, url=self._url_override(new)))
            check_settings(new)
            api_key = self._parts.load_api_key(new.server)
        except ConfigError as exc:
            log.error("reload failed, keeping the running settings: %s", exc,
                      extra={"edgevoice": {"EVENT": "reload_failed"}})
        else:
            add_secret(api_key)
            self._apply(new, api_key)
            log.info("configuration reloaded from %s", self._config_path,
                     extra={"edgevoice": {"EVENT": "reloaded"}})
        self._notifier.ready()

    def _url_override(self, new: Settings) -> str:
        """`run --url` outlives a reload, as command-line options do."""
        return self.url_override or new.server.url

    def _apply(self, new: Settings, api_key: str) -> None:
        old = self.settings
        self.settings = new
        if new.logging != old.logging:
            setup_logging(new.logging.level, new.logging.journald)
            self._event_log.log_all_events = new.logging.log_all_events
        if new.control != old.control:
            self._stop_control()
            self._start_control(new)
            self._move_mute_file(new)
        if new.transcripts != old.transcripts:
            self._stop_transcripts()
            self._start_transcripts(new)
        if new.stream.outage_buffer_s != old.stream.outage_buffer_s or \
                new.audio.chunk_ms != old.audio.chunk_ms:
            self._backlog.resize(outage_chunks(new))
        if new.stream.max_streamed_s_per_day != old.stream.max_streamed_s_per_day:
            self._budget.set_cap(new.stream.max_streamed_s_per_day)  # at once
        if new.playback != old.playback:
            log.warning("reload: playback.* changes take effect at the next start (the "
                        "speaker is opened once)", extra={"edgevoice": {"EVENT": "reload"}})
        if _gate_settings(new) != _gate_settings(old):
            self._reload_speech_gate(new)
        if new.audio != old.audio:
            self._capture.reconfigure(self._capture_config(new))
        elif new.health.silence_warn_s != old.health.silence_warn_s:
            self._capture.set_silence_warn(new.health.silence_warn_s)
        # A new key counts as a connection change: an attempt made with a revoked key
        # would end in 401 and exit 77.
        # So is an audio format: changed in place, audio (and answers in flight) would be
        # coded in one format and read in the other until, or unless, the server switched.
        connection_changed = (new.server != old.server or new.session.mode != old.session.mode
                              or new.session.input_format != old.session.input_format
                              or new.session.output_format != old.session.output_format
                              or api_key != self._api_key)
        self._api_key = api_key
        factory = self._make_session_factory(new, api_key)
        if connection_changed:
            self._supervisor.apply_settings(new, factory)
        else:
            self._supervisor.apply_settings(new)
            # The open sessions got the changes; the next ones are made from the new
            # settings in full (a deferred voice, a new key).
            self._supervisor.replace_session_factory(factory)
        if old.session != new.session and not connection_changed:
            log.info("reload: session settings applied to the open sessions")
        for retirement in retirements(new.server.model if new.server.dialect == "openai"
                                      else None, new.session.transcription_model):
            log.warning("%s", retirement.warning(),
                        extra={"edgevoice": {"EVENT": "model_deprecated"}})

    def _reload_speech_gate(self, new: Settings) -> None:
        """stream.* gate settings (or what they depend on) changed: a new gate takes over
        between two chunks; an utterance under way is cut short (its turn is not closed)."""
        try:
            gate = self._make_speech_gate(new)
        except (ConfigError, OSError, ValueError) as exc:
            log.error("reload: keeping the running speech gate: %s", exc,
                      extra={"edgevoice": {"EVENT": "reload"}})
            return
        self._capture.set_speech_gate(gate)
        log.info("reload: speech gate now %s", new.stream.gate,
                 extra={"edgevoice": {"EVENT": "reload"}})

    def _move_mute_file(self, new: Settings) -> None:
        """The socket moved (and with it the state file, outside systemd): keep the state."""
        path = mute_state_path(resolve_socket(new.control.socket))
        if path == self._mute_file:
            return
        with self._mute_lock:
            old, self._mute_file = self._mute_file, path
            try:
                write_mute_state(path, self._backlog.muted)
                if old is not None:
                    write_mute_state(old, False)
            except OSError as exc:
                log.error("cannot keep the mute state in %s: %s", path, exc)

    # -- the end -------------------------------------------------------------------------

    def summary(self, elapsed_s: float) -> str:
        snap = self.stats.snapshot()
        c = snap["counters"]
        sent_s = c["audio_bytes_sent"] / BYTES_PER_S
        rows = [
            ("run time", f"{elapsed_s:.1f} s"),
            ("audio chunks captured", f"{c['chunks_captured']}"),
            ("audio chunks sent", f"{c['chunks_sent']} ({c['audio_bytes_sent']} bytes, "
                                  f"{sent_s:.1f} s of 24 kHz audio)"),
            ("sent from the outage buffer", f"{c['chunks_replayed']}"),
            *self._bill_rows(c),
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
        if self._speaker is not None and self._talkback is not None:  # playback is on
            played = self._speaker.stats
            rows += [
                ("seconds played", f"{played.seconds_played:.1f} s"),
                ("barge-ins", f"{self._talkback.snapshot()['barge_ins']}"),
                ("playback underruns", f"{played.underruns}"),
            ]
        width = max(len(k) for k, _ in rows)
        lines = ["edgevoice run summary"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
        return "\n".join(lines)
