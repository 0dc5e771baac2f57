"""The supervisor and the uplink through the interleavings that matter, on a fake clock.

Real Supervisor, Uplink, RealtimeSession and backlog; the network is a ScriptedTransport
and the capture worker a counter. The uplink is pumped by the test (`uplink.step`), so
which thread sends what, and in which order, is decided here and not by a scheduler.
Connect attempts still run on the supervisor's own helper threads.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from fakes import FakeClock, ScriptedTransport, wait_until

from edgevoice.daemon import uplink as uplink_module
from edgevoice.daemon.backlog import AudioChunk, ChunkBacklog
from edgevoice.daemon.replay import (
    REPLAY_GUARD_S,
    REPLAY_MARGIN_S,
    earliest_unread,
    unread_since,
)
from edgevoice.daemon.stats import Stats
from edgevoice.daemon.supervisor import (
    DRAIN_OLD_SESSION_S,
    IDLE_TICK_S,
    TICK_S,
    Supervisor,
    Waker,
)
from edgevoice.daemon.uplink import Uplink
from edgevoice.errors import ConnectionLost, EdgeVoiceError
from edgevoice.realtime.link import SessionLink
from edgevoice.realtime.session import RealtimeSession, new_dispatcher
from edgevoice.settings import SessionSettings, Settings, settings_from_mapping

LOUD, QUIET = -20.0, -70.0


class FakeCapture:
    """CaptureControl: hands out sequence numbers; start/stop are recorded."""

    def __init__(self) -> None:
        self.next_seq = 0
        self.started = False
        self.stop_requested = False

    def start(self) -> None:
        self.started = True

    def request_stop(self) -> None:
        self.stop_requested = True

    def join(self, timeout: float) -> bool:
        return True


class Rig:
    """One supervisor with everything it needs; `transports[i]` is session i+1's network."""

    def __init__(self, settings: Settings | None = None, expires_in_s: float = 3600.0,
                 connect_gate: threading.Event | None = None) -> None:
        self.clock = FakeClock(1000.0)
        self.wall = FakeClock(1_800_000_000.0)
        self.settings = settings or settings_from_mapping({
            "reconnect": {"initial_s": 0.1, "max_s": 0.2, "rollover_margin_s": 120.0}})
        self.stats = Stats()
        self.backlog = ChunkBacklog(1000)
        self.uplink = Uplink(self.backlog, self.stats, clock=self.clock)
        self.capture = FakeCapture()
        self.transports: list[ScriptedTransport] = []
        self.sessions: list[RealtimeSession] = []
        self.expires_in_s = expires_in_s
        self.connect_gate = connect_gate
        self.connect_errors: list[Exception] = []  # for the next connections, in order
        self.dispatcher = new_dispatcher()
        self.supervisor = Supervisor(self.settings, self.make_session(self.settings.session),
                                     self.capture, self.uplink, self.backlog, self.stats,
                                     clock=self.clock, wall_clock=self.wall)

    def make_session(self, settings: SessionSettings) -> Callable[[str], SessionLink]:
        def make(name: str) -> SessionLink:
            # Only the first session is about to expire (when the test asks for it).
            expires_in = self.expires_in_s if not self.transports else 3600.0
            transport = ScriptedTransport(session_id=f"sess_{len(self.transports) + 1}",
                                          expires_at=self.wall() + expires_in,
                                          connect_gate=self.connect_gate)
            if self.connect_errors:
                transport.connect_error = self.connect_errors.pop(0)
            self.transports.append(transport)
            session = RealtimeSession(transport, settings, self.dispatcher, self.uplink,
                                      update_timeout_s=5.0, clock=self.clock,
                                      wall_clock=self.wall, name=name)
            self.sessions.append(session)
            return session

        return make

    def pump(self, until: Callable[[], bool], timeout: float = 5.0, tick: float = 0.01) -> None:
        """Step the supervisor and the uplink until `until()` holds (real time bound); the
        fake clock moves `tick` per round, so backoff delays pass."""

        def once() -> bool:
            self.clock.advance(tick)
            fatal = self.supervisor.step(self.clock())
            assert fatal is None, fatal
            self.uplink.step(0.0)
            return until()

        assert wait_until(once, timeout), "the condition never held"

    def streaming_to(self, index: int) -> bool:
        return len(self.sessions) > index and self.uplink.target is self.sessions[index]

    def capture_chunk(self, rms: float = LOUD) -> AudioChunk:
        seq = self.capture.next_seq
        self.capture.next_seq += 1
        chunk = AudioChunk(seq.to_bytes(4, "little") * 240, rms, self.clock(), seq)
        self.backlog.put(chunk)
        return chunk

    def send_all(self) -> None:
        while len(self.backlog):
            self.uplink.step(0.0)

    def appended(self, index: int) -> list[int]:
        """The sequence numbers session `index` received, in order."""
        import base64

        return [int.from_bytes(base64.b64decode(e["audio"])[:4], "little")
                for e in self.transports[index].sent
                if e["type"] == "input_audio_buffer.append"]


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    for session in r.sessions:
        session.abort()


def connected(rig: Rig) -> RealtimeSession:
    rig.pump(lambda: rig.streaming_to(0))
    return rig.sessions[0]


def test_configuration_goes_out_through_the_uplink_before_any_audio(rig: Rig) -> None:
    rig.capture_chunk()  # captured while connecting: must wait for session.updated
    session = connected(rig)
    rig.send_all()
    assert rig.transports[0].types_sent() == ["session.update", "input_audio_buffer.append"]
    assert 1000.0 <= session.configured_at <= rig.clock()


def test_replay_after_a_reset_resends_only_what_was_in_flight(rig: Rig) -> None:
    connected(rig)
    for _ in range(5):
        rig.capture_chunk()
    rig.send_all()
    rig.clock.advance(1.0)
    for _ in range(5):
        rig.capture_chunk()
    rig.send_all()  # chunks 5..9 sent within REPLAY_GUARD_S of the reset
    rig.clock.advance(REPLAY_GUARD_S / 2)
    rig.transports[0].closed = True  # TCP reset: the reader fails the session
    rig.pump(lambda: rig.streaming_to(1), timeout=10.0)
    rig.capture_chunk()
    rig.send_all()
    assert rig.appended(0) == list(range(10))
    assert rig.appended(1) == [5, 6, 7, 8, 9, 10]  # replayed in order, then live audio
    counters = rig.stats.snapshot()["counters"]
    assert counters["reconnects"] == 1 and counters["connections"] == 2


def _heard_at(session: RealtimeSession, at: float) -> bool:
    return session.last_event_at == at


def _stream_with_server_events(rig: Rig, session: RealtimeSession, rng: random.Random,
                               steps: int) -> list[tuple[float, int]]:
    """Chunks sent at irregular moments, a server event now and then: (sent at, seq)."""
    sent: list[tuple[float, int]] = []
    # At random, then a tail that ends just after an event, in real time: a reset there
    # replays audio from before that event (failed_at - REPLAY_GUARD_S < last_event_at).
    events = [rng.random() < 0.15 for _ in range(steps)] + [False] * 3 + [True, False]
    pauses = [rng.choice([0.02, 0.02, 0.02, 0.3, 1.1]) for _ in range(steps)] + [0.02] * 5
    for step, (event, pause) in enumerate(zip(events, pauses, strict=True)):
        if event:
            rig.transports[0].push({"type": "rate_limits.updated", "event_id": f"ev{step}",
                                    "rate_limits": []})
            assert wait_until(functools.partial(_heard_at, session, rig.clock()), 5.0)
        chunk = rig.capture_chunk()
        rig.send_all()
        sent.append((rig.clock(), chunk.seq))
        rig.clock.advance(pause)
    return sent


@pytest.mark.parametrize("margin", [REPLAY_MARGIN_S, 0.0])
@pytest.mark.parametrize("seed", range(8))
def test_the_replay_record_forgets_only_what_no_failure_can_replay(
        seed: int, margin: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The uplink keeps, of what it sent, only what `unread_since` may still ask for; a
    failure of either kind then replays exactly what the whole record would have given.
    Without the margin (which covers a race a fake clock never has) the bound itself is
    what is checked."""
    monkeypatch.setattr(uplink_module, "REPLAY_MARGIN_S", margin)
    rng = random.Random(seed)
    rig = Rig(settings_from_mapping({"reconnect": {"initial_s": 0.1, "max_s": 0.2}}))
    try:
        session = connected(rig)
        sent = _stream_with_server_events(rig, session, rng, steps=rng.randrange(40, 120))
        last_sent = sent[-1][0]
        floor = earliest_unread(session, last_sent) - margin
        kept = [seq for at, seq in sent if at >= floor]
        assert rig.uplink.kept_for_replay == len(kept)
        if seed == 0:  # this schedule's server spoke lately: most of the record is gone
            assert len(kept) < len(sent) // 2, (len(kept), len(sent))
        error = ConnectionLost("scripted", silent=True) if seed % 2 else None
        if error is not None:  # the peer stopped reading: the send timed out
            session.fail(error)
        else:
            rig.transports[0].closed = True  # a reset: the reader fails the session
            rig.pump(session.failed.is_set)
        failure = session.failure
        assert isinstance(failure, ConnectionLost)
        since = unread_since(session, failure)
        rig.pump(lambda: rig.streaming_to(1), timeout=10.0)
        rig.send_all()
        assert rig.appended(1) == [seq for at, seq in sent if at >= since]
    finally:
        for s in rig.sessions:
            s.abort()


def test_current_session_fails_while_the_next_one_waits_for_the_switch() -> None:
    rig = Rig(expires_in_s=100.0)  # inside the 120 s rollover margin from the start
    try:
        first = connected(rig)
        first.speech_active = True  # never quiet: the switch has to wait
        rig.pump(lambda: rig.uplink.pending is not None)
        second = rig.sessions[1]
        rig.capture_chunk()
        rig.send_all()
        assert rig.appended(0) == [0] and rig.uplink.pending is second
        rig.transports[0].closed = True  # the current session dies before the switch
        rig.pump(lambda: rig.streaming_to(1))
        rig.capture_chunk()
        rig.send_all()
        assert rig.appended(1) == [0, 1]  # the chunk in flight was replayed to the next
        assert len(rig.sessions) == 2  # no third connection: the waiting one took over
        assert rig.uplink.pending is None
    finally:
        for session in rig.sessions:
            session.abort()


def test_switch_happens_while_no_audio_flows() -> None:
    rig = Rig(expires_in_s=100.0)
    try:
        first = connected(rig)
        # No chunk is queued (a closed gate, an idle room): the switch must not wait for
        # one; it happens as soon as the next session is offered.
        rig.pump(lambda: rig.streaming_to(1))
        assert rig.stats.snapshot()["counters"]["rollovers"] == 1
        rig.pump(lambda: rig.transports[0].closed, tick=DRAIN_OLD_SESSION_S / 4)
        assert first.failed.is_set() is False  # closed on purpose, not failed
        rig.capture_chunk()
        rig.send_all()
        assert rig.appended(1) == [0] and rig.appended(0) == []
    finally:
        for session in rig.sessions:
            session.abort()


def test_stop_during_connect_returns_promptly() -> None:
    gate = threading.Event()  # never released: connect() hangs like a dead network
    rig = Rig(connect_gate=gate)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(rig.supervisor.run()))
    runner.start()
    try:
        assert wait_until(lambda: len(rig.transports) == 1, 5.0)
        rig.supervisor.request_stop()
        runner.join(5.0)
        assert not runner.is_alive() and result == [0]
        assert rig.transports[0].closed and not rig.transports[0].connected
        assert rig.capture.stop_requested and not rig.uplink.alive
    finally:
        rig.supervisor.request_stop()
        runner.join(5.0)


def _updates(transport: ScriptedTransport) -> list[dict[str, Any]]:
    return [e["session"] for e in transport.sent if e["type"] == "session.update"]


def test_reload_during_rollover_updates_both_sessions_with_only_the_changes() -> None:
    rig = Rig(expires_in_s=100.0)
    try:
        first = connected(rig)
        first.speech_active = True
        first.produced_audio = True  # it has spoken: its voice is fixed now
        rig.pump(lambda: rig.uplink.pending is not None)
        new = replace(rig.settings, session=replace(rig.settings.session,
                                                    instructions="Be terse.", voice="cedar"))
        rig.supervisor.apply_settings(new)
        rig.pump(lambda: len(_updates(rig.transports[0])) == 2
                 and len(_updates(rig.transports[1])) == 2)
        # The speaking session gets the instructions only; its voice change is deferred.
        assert _updates(rig.transports[0])[1] == {"type": "realtime",
                                                   "instructions": "Be terse."}
        # The waiting one has not spoken: it takes both.
        assert _updates(rig.transports[1])[1] == {
            "type": "realtime", "instructions": "Be terse.",
            "audio": {"output": {"voice": "cedar"}}}
        # Sessions made from now on are configured in full with the new settings.
        assert rig.supervisor.settings.session.voice == "cedar"
    finally:
        for session in rig.sessions:
            session.abort()


def test_reload_rejection_is_reported_not_fatal(rig: Rig) -> None:
    connected(rig)
    rig.transports[0].replies["session.update"] = [{
        "type": "error", "event_id": "e9",
        "error": {"type": "invalid_request_error", "code": "invalid_value",
                  "message": "bad instructions", "param": "session.instructions",
                  "event_id": "$event_id"}}]
    new = replace(rig.settings, session=replace(rig.settings.session, instructions="x"))
    rig.supervisor.apply_settings(new)
    rig.pump(lambda: bool(rig.stats.snapshot()["reload"]))
    assert rig.stats.snapshot()["reload"] == ("reload rejected: session.instructions, "
                                              "bad instructions")
    assert not rig.sessions[0].failed.is_set()


def test_changed_server_opens_a_new_session_and_switches(rig: Rig) -> None:
    connected(rig)
    new = replace(rig.settings, server=replace(rig.settings.server, model="gpt-realtime-2"))
    rig.supervisor.apply_settings(new, rig.make_session(new.session))
    rig.pump(lambda: rig.streaming_to(1))
    rig.pump(lambda: rig.transports[0].closed, tick=DRAIN_OLD_SESSION_S / 4)
    assert rig.stats.snapshot()["counters"]["reconnects"] == 0


def test_urgent_events_overtake_queued_audio_and_commits_stay_behind(rig: Rig) -> None:
    session = connected(rig)
    for _ in range(3):
        rig.capture_chunk()
    rig.uplink.submit({"type": "input_audio_buffer.commit", "event_id": "c1"}, None,
                      urgent=False)
    rig.capture_chunk()
    session.probe()  # urgent: ahead of all four chunks
    rig.send_all()
    types = rig.transports[0].types_sent()
    assert types == ["session.update", "session.update",
                     "input_audio_buffer.append", "input_audio_buffer.append",
                     "input_audio_buffer.append", "input_audio_buffer.commit",
                     "input_audio_buffer.append"]


def test_send_failure_fails_the_session_and_keeps_the_chunk(rig: Rig) -> None:
    session = connected(rig)
    rig.transports[0].fail_sends = True
    rig.capture_chunk()
    rig.uplink.step(0.0)
    assert session.failed.is_set()
    assert isinstance(session.failure, ConnectionLost)
    assert len(rig.backlog) == 1  # given back, for the next session


def test_stall_probe_goes_through_the_sender_and_a_silent_session_is_replaced(rig: Rig
                                                                              ) -> None:
    connected(rig)
    rig.transports[0].replies["session.update"] = []  # frozen: no answer to anything
    rig.capture_chunk(LOUD)
    rig.send_all()
    rig.clock.advance(rig.settings.health.stall_timeout_s + 1)
    rig.pump(lambda: rig.sessions[0].probe_sent_at is not None)
    rig.pump(lambda: rig.transports[0].types_sent().count("session.update") == 2)
    rig.clock.advance(rig.settings.server.session_update_timeout_s + 1)
    rig.pump(lambda: rig.streaming_to(1))
    rig.send_all()
    assert rig.appended(1) == [0]  # silent death: everything since the last event replayed
    assert rig.stats.snapshot()["counters"]["stalls"] == 1


def test_errors_map_to_exceptions_in_one_place() -> None:
    from edgevoice.errors import AuthError, ModelRejected, SessionConfigRejected
    from edgevoice.realtime.protocol import ServerError, exception_for_error

    def err(code: str, event_id: str = "", type_: str = "invalid_request_error",
            param: str = "") -> ServerError:
        return ServerError(type_, code, "m", param, event_id)

    cases: list[tuple[ServerError, str, type[EdgeVoiceError] | None]] = [
        (err("invalid_api_key"), "", AuthError),
        (err("model_not_found"), "", ModelRejected),
        (err("invalid_value", "u1"), "u1", SessionConfigRejected),
        (err("invalid_value", "u1"), "", None),  # streaming: logged, the session goes on
        (err("server_error", type_="server_error"), "u1", None),
        (err("response_cancel_not_active"), "u1", None),
        (err("session_expired"), "", ConnectionLost),
    ]
    for error, pending, expected in cases:
        result = exception_for_error(error, pending)
        assert (type(result) if result is not None else None) is expected, error
    rejected = exception_for_error(err("model_not_found", param="session.audio.input."
                                       "transcription.model"))
    assert isinstance(rejected, ModelRejected)
    assert str(rejected).startswith("session.transcription_model:")



def test_a_rejected_model_is_fatal_first_and_retried_slowly_once_it_worked() -> None:
    from edgevoice.daemon.supervisor import ENDPOINT_RETRY_S
    from edgevoice.errors import ModelRejected

    rig = Rig()
    rig.connect_errors.append(ModelRejected("server.model: the server rejected the model"))
    fatal: list[EdgeVoiceError | None] = []

    def step() -> bool:
        fatal.append(rig.supervisor.step(rig.clock()))
        return fatal[-1] is not None

    assert wait_until(step, 5.0)
    assert isinstance(fatal[-1], ModelRejected) and fatal[-1].exit_code == 78

    rig = Rig()
    try:
        connected(rig)
        rig.connect_errors.append(ModelRejected("server.model: rejected (a proxy's hiccup)"))
        rig.transports[0].closed = True
        rig.pump(lambda: len(rig.transports) == 2 and
                 rig.stats.snapshot()["state"] == "offline" and
                 "worked before" in rig.stats.snapshot()["detail"])
        retry_at = rig.supervisor._next_attempt_at
        assert retry_at - rig.clock() >= ENDPOINT_RETRY_S - 1
        rig.clock.advance(ENDPOINT_RETRY_S)
        rig.pump(lambda: rig.streaming_to(2))
    finally:
        for session in rig.sessions:
            session.abort()


BAD_VOICE = {"type": "error", "event_id": "e9",
             "error": {"type": "invalid_request_error", "code": "invalid_value",
                       "message": "no such voice", "param": "session.audio.output.voice",
                       "event_id": "$event_id"}}


def test_a_rejected_reload_is_not_carried_into_the_next_session(rig: Rig) -> None:
    connected(rig)
    rig.transports[0].replies["session.update"] = [BAD_VOICE]
    new = replace(rig.settings, session=replace(rig.settings.session, voice="nosuch"))
    rig.supervisor.apply_settings(new)
    reloaded = rig.make_session(new.session)

    def make_rejecting(name: str) -> SessionLink:  # the server still has no such voice
        session = reloaded(name)
        rig.transports[-1].replies["session.update"] = [BAD_VOICE]
        return session

    rig.supervisor.replace_session_factory(make_rejecting)
    rig.pump(lambda: bool(rig.stats.snapshot()["reload"]))
    assert not rig.sessions[0].failed.is_set()
    rig.transports[0].closed = True  # a network blip, or the 60-minute rollover
    rig.pump(lambda: rig.streaming_to(1))  # never a fatal error (pump asserts that)
    first_update = next(e for e in rig.transports[1].sent if e["type"] == "session.update")
    assert first_update["session"]["audio"]["output"]["voice"] == "marin"


def test_a_reload_answered_with_any_error_is_a_rejection_not_the_end(rig: Rig) -> None:
    connected(rig)
    rig.transports[0].replies["session.update"] = [{
        "type": "error", "event_id": "e9",
        "error": {"type": "invalid_request_error", "code": "model_not_found",
                  "message": "gone", "param": "session.audio.input.transcription.model",
                  "event_id": "$event_id"}}]
    new = replace(rig.settings, session=replace(rig.settings.session,
                                                transcription_model="whisper-1"))
    rig.supervisor.apply_settings(new)
    rig.pump(lambda: bool(rig.stats.snapshot()["reload"]))
    assert not rig.sessions[0].failed.is_set()
    assert rig.stats.snapshot()["reload"].startswith(
        "reload rejected: session.audio.input.transcription.model, gone")


def test_a_server_change_is_retried_when_its_new_session_dies_before_the_switch(rig: Rig
                                                                               ) -> None:
    first = connected(rig)
    first.speech_active = True  # not quiet: the switch waits
    new = replace(rig.settings, server=replace(rig.settings.server, model="gpt-realtime-2"))
    rig.supervisor.apply_settings(new, rig.make_session(new.session))
    rig.pump(lambda: rig.uplink.pending is not None)
    rig.transports[1].closed = True  # the new server drops it before the switch
    rig.pump(lambda: len(rig.transports) == 3 and rig.uplink.pending is not None, tick=0.1)
    first.speech_active = False
    rig.pump(lambda: rig.streaming_to(2))


def test_the_uplink_never_switches_to_a_next_session_that_failed() -> None:
    rig = Rig(expires_in_s=100.0)
    try:
        first = connected(rig)
        first.speech_active = True
        rig.pump(lambda: rig.uplink.pending is not None)
        nxt = rig.uplink.pending
        assert nxt is not None
        nxt.fail(ConnectionLost("closed by server"))
        first.speech_active = False  # a quiet moment comes before the supervisor's tick
        rig.uplink.step(0.0)
        assert rig.uplink.target is first
    finally:
        for session in rig.sessions:
            session.abort()


def test_a_next_session_that_keeps_failing_is_retried_with_backoff() -> None:
    rig = Rig(expires_in_s=100.0)
    try:
        first = connected(rig)
        first.speech_active = True
        for _ in range(3):
            rig.pump(lambda: rig.uplink.pending is not None)
            rig.transports[-1].closed = True
            rig.pump(lambda: rig.uplink.pending is None)
            assert rig.supervisor._rollover_retry_at > rig.clock()  # waits before the next
        assert rig.supervisor._backoff.attempts >= 3
    finally:
        for session in rig.sessions:
            session.abort()


def test_the_loop_ticks_often_only_while_something_is_under_way(rig: Rig) -> None:
    """Issue 12: an idle main loop sleeps until something is due (at most IDLE_TICK_S)."""
    assert rig.supervisor._wait_s(rig.clock()) == TICK_S  # connecting
    session = connected(rig)
    assert rig.supervisor._wait_s(rig.clock()) == IDLE_TICK_S  # streaming, nothing due
    due: list[float | None] = [0.2]
    rig.supervisor._next_tick_in = lambda: due[0]
    assert rig.supervisor._wait_s(rig.clock()) == 0.2  # the caller's ping or file is due
    due[0] = None
    rig.supervisor.deadline = rig.clock() + 0.3  # `run --duration`
    assert rig.supervisor._wait_s(rig.clock()) == pytest.approx(0.3)
    rig.supervisor.deadline = None
    session.fail(ConnectionLost("reset"))
    assert rig.supervisor._wait_s(rig.clock()) == TICK_S  # a failure to act on


def test_a_signal_ends_the_loops_sleep_at_once() -> None:
    """The handlers of SIGTERM and SIGHUP only set flags; the wake-up fd ends the wait."""
    got: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    waker = Waker()
    waker.open()  # pytest runs tests in the main thread: the signal wake-up fd is set
    timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        started = time.monotonic()
        waker.wait(30.0)
        assert got == [signal.SIGUSR1]
        assert time.monotonic() - started < 15.0  # not the full wait (bound: no hang)
    finally:
        timer.cancel()
        waker.close()
        signal.signal(signal.SIGUSR1, old)
    assert signal.set_wakeup_fd(-1) == -1  # closing restored the previous (none)


def test_a_threads_wake_ends_the_sleep_and_a_closed_waker_ignores_it() -> None:
    waker = Waker()
    waker.wake()  # not open yet: nothing to wake, no error
    waker.open()
    try:
        threading.Timer(0.05, waker.wake).start()
        started = time.monotonic()
        waker.wait(30.0)
        assert time.monotonic() - started < 15.0
        waker.wake()
        waker.wake()
        waker.wait(30.0)  # both pending wake-ups end one wait, and are consumed by it:
        started = time.monotonic()
        waker.wait(0.05)
        assert time.monotonic() - started >= 0.04  # the next wait sleeps its full time
    finally:
        waker.close()
    waker.wake()  # closed: a late request_stop() from a thread is harmless
