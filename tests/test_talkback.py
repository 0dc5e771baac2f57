"""Talkback: playback of the answers and barge-in, against a real session and dispatcher.

Unit tests: a RealtimeSession over a ScriptedTransport, its real `new_dispatcher()` with
Talkback registered after the state handlers, events fed to the dispatcher in order, a fake
Speaker, and an outbox that records (event, session, urgent) and sends at once.
Integration: the same over a real WebSocketTransport against the devserver, with a speaker
that plays in real time.
"""

from __future__ import annotations

import base64
import threading
import time
from typing import Any, Literal

import pytest
from daemon_harness import KEY
from fakes import DirectOutbox, ScriptedTransport, error_event, wait_until

from edgevoice.daemon.talkback import Talkback
from edgevoice.devserver import DevServer
from edgevoice.realtime import protocol
from edgevoice.realtime.dispatch import EventDispatcher
from edgevoice.realtime.link import SessionLink
from edgevoice.realtime.protocol import MalformedEvent
from edgevoice.realtime.session import RealtimeSession, new_dispatcher
from edgevoice.realtime.transport import WebSocketTransport
from edgevoice.settings import ServerSettings, SessionSettings


class FakeSpeaker:
    """Plays instantly: played_ms is what it was given (24 kHz PCM16), until a flush."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, Any]] = []
        self.queued: dict[str, int] = {}  # item -> bytes given
        self.current: tuple[str, int] | None = None
        self.ended: set[str] = set()

    def play(self, item_id: str, content_index: int, pcm24k: bytes,
             rate: int = 24000) -> None:
        with self.lock:
            self.calls.append(("play", (item_id, len(pcm24k))))
            self.queued[item_id] = self.queued.get(item_id, 0) + len(pcm24k)
            self.current = (item_id, content_index)

    def end_of_item(self, item_id: str) -> None:
        with self.lock:
            self.calls.append(("end", item_id))
            self.ended.add(item_id)

    def flush(self) -> tuple[str, int, int] | None:
        with self.lock:
            self.calls.append(("flush", None))
            if self.current is None:
                return None
            item_id, index = self.current
            self.current = None
            return item_id, index, self.queued[item_id] // 48

    def played_ms(self, item_id: str) -> int:
        with self.lock:
            return self.queued.get(item_id, 0) // 48

    @property
    def playing(self) -> bool:
        with self.lock:
            return self.current is not None

    def plays(self) -> list[tuple[str, int]]:
        with self.lock:
            return [args for kind, args in self.calls if kind == "play"]


class RecordingOutbox(DirectOutbox):
    """DirectOutbox that also keeps who each event went to and whether it was urgent."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[dict[str, Any], SessionLink | None, bool]] = []

    def submit(self, event: dict[str, Any], to: SessionLink | None,
               urgent: bool = True) -> None:
        self.log.append((event, to, urgent))
        super().submit(event, to, urgent)

    def sent_after_configure(self) -> list[tuple[dict[str, Any], SessionLink | None, bool]]:
        return [entry for entry in self.log if entry[0]["type"] != "session.update"]


class Rig:
    def __init__(self, replies: dict[str, list[dict[str, Any]]] | None = None) -> None:
        base = {"session.update": [_updated()]}
        self.transport = ScriptedTransport({**base, **(replies or {})})
        self.outbox = RecordingOutbox()
        self.speaker = FakeSpeaker()
        self.dispatcher = new_dispatcher()
        self.talkback = Talkback(self.speaker, self.outbox, remember=4)
        self.talkback.register(self.dispatcher)
        self.session = RealtimeSession(self.transport, SessionSettings(), self.dispatcher,
                                       self.outbox, update_timeout_s=1.0)
        self.session.establish(threading.Event())

    def feed(self, event: dict[str, Any]) -> None:
        """One server event through the real parse and dispatch (on this thread)."""
        self.dispatcher.dispatch(self.session, protocol.parse_server_event(_json(event)))

    def answer(self, response_id: str, item_id: str, chunks: int, ms: int = 100) -> None:
        self.feed({"type": "response.created", "response": {"id": response_id,
                                                            "status": "in_progress"}})
        for _ in range(chunks):
            self.feed(delta(response_id, item_id, ms))

    def sent(self) -> list[tuple[dict[str, Any], SessionLink | None, bool]]:
        return self.outbox.sent_after_configure()


def _json(event: dict[str, Any]) -> str:
    return protocol.encode(event)


def _updated() -> dict[str, Any]:
    return {"type": "session.updated", "event_id": "e_up",
            "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}}}


def delta(response_id: str, item_id: str, ms: int = 100, *, beta: bool = False) -> dict[str, Any]:
    pcm = b"\x01\x00" * (24 * ms)
    return {"type": "response.audio.delta" if beta else "response.output_audio.delta",
            "response_id": response_id, "item_id": item_id, "output_index": 0,
            "content_index": 0, "delta": base64.b64encode(pcm).decode("ascii")}


def speech_started() -> dict[str, Any]:
    return {"type": "input_audio_buffer.speech_started", "audio_start_ms": 1000,
            "item_id": "item_user2"}


def done(response_id: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "response.done", "response": {"id": response_id, "status": status}}


def test_deltas_are_played_and_done_ends_the_item() -> None:
    rig = Rig()
    rig.answer("resp_1", "item_a", 3)
    rig.feed(delta("resp_1", "item_a", beta=True))  # beta name: normalised, played too
    rig.feed({"type": "response.output_audio.done", "response_id": "resp_1",
              "item_id": "item_a", "output_index": 0, "content_index": 0})
    rig.feed(done("resp_1"))
    assert rig.speaker.plays() == [("item_a", 4800)] * 4
    assert rig.speaker.ended == {"item_a"}
    assert rig.talkback.snapshot()["answers_played"] == 1
    assert rig.sent() == []


def test_bad_base64_is_malformed_and_not_played() -> None:
    rig = Rig()
    bad = {**delta("resp_1", "item_a"), "delta": "***not base64***"}
    with pytest.raises(MalformedEvent):
        rig.feed(bad)
    assert rig.speaker.plays() == []


def test_barge_in_truncates_then_cancels_urgent_and_drops_later_deltas() -> None:
    rig = Rig()
    rig.answer("resp_1", "item_a", 5)  # 500 ms played
    assert rig.session.response_active
    rig.feed(speech_started())
    sent = rig.sent()
    assert [e["type"] for e, _, _ in sent] == ["conversation.item.truncate", "response.cancel"]
    truncate, cancel = sent[0][0], sent[1][0]
    assert {k: truncate[k] for k in ("item_id", "content_index", "audio_end_ms")} == \
        {"item_id": "item_a", "content_index": 0, "audio_end_ms": 500}
    assert truncate["event_id"].startswith("evt_") and cancel["event_id"].startswith("evt_")
    assert cancel["response_id"] == "resp_1"
    assert all(to is rig.session and urgent for _, to, urgent in sent)
    assert rig.transport.types_sent()[-2:] == ["conversation.item.truncate", "response.cancel"]
    # what the server still had in flight is dropped, never played, and no end_of_item
    rig.feed(delta("resp_1", "item_a"))
    rig.feed(delta("resp_1", "item_b"))  # another item of the cancelled response
    rig.feed({"type": "response.output_audio.done", "response_id": "resp_1",
              "item_id": "item_a", "output_index": 0, "content_index": 0})
    rig.feed(done("resp_1", "cancelled"))
    assert rig.speaker.plays() == [("item_a", 4800)] * 5
    assert "item_a" not in rig.speaker.ended
    counters = rig.talkback.snapshot()
    assert counters == {"barge_ins": 1, "truncates": 1, "cancels": 1, "deltas_dropped": 2,
                        "answers_played": 0}
    # the next answer plays again
    rig.answer("resp_2", "item_c", 1)
    assert rig.speaker.plays()[-1] == ("item_c", 4800)


def test_barge_in_after_the_response_is_done_truncates_only() -> None:
    rig = Rig()
    rig.answer("resp_1", "item_a", 3)
    rig.feed(done("resp_1"))  # the server is done; the speaker still plays the tail
    assert not rig.session.response_active and rig.speaker.playing
    rig.feed(speech_started())
    assert [(e["type"], e.get("audio_end_ms"), urgent) for e, _, urgent in rig.sent()] == \
        [("conversation.item.truncate", 300, True)]


def test_barge_in_before_any_audio_cancels_only() -> None:
    rig = Rig()
    rig.feed({"type": "response.created", "response": {"id": "resp_1"}})
    rig.feed(speech_started())
    assert [(e["type"], e.get("response_id")) for e, _, _ in rig.sent()] == \
        [("response.cancel", "resp_1")]
    rig.feed(delta("resp_1", "item_a"))  # its first audio, after the cancel: dropped
    assert rig.speaker.plays() == []
    assert rig.talkback.snapshot()["deltas_dropped"] == 1


def test_no_barge_in_when_nothing_plays_and_no_response() -> None:
    rig = Rig()
    rig.feed(speech_started())
    assert rig.talkback.barge_in(rig.session) is False
    assert rig.sent() == []
    assert rig.talkback.snapshot()["barge_ins"] == 0
    assert ("flush", None) in rig.speaker.calls  # asked, nothing was playing


def test_second_barge_in_sends_nothing_more() -> None:
    rig = Rig()
    rig.answer("resp_1", "item_a", 2)
    assert rig.talkback.barge_in(rig.session) is True  # the echo detector, first
    rig.feed(speech_started())  # then the server VAD: response still active, already cut
    assert [e["type"] for e, _, _ in rig.sent()] == ["conversation.item.truncate",
                                                      "response.cancel"]


def test_late_races_answered_with_errors_do_not_end_the_session() -> None:
    late_truncate = error_event("invalid_value", event_id="$event_id", param="audio_end_ms")
    not_active = error_event("response_cancel_not_active", event_id="$event_id")
    rig = Rig({"conversation.item.truncate": [late_truncate],
               "response.cancel": [not_active]})
    rig.session.start_reader()
    try:
        rig.answer("resp_1", "item_a", 2)
        rig.talkback.barge_in(rig.session)
        time.sleep(0.3)  # the reader handles both errors
        assert not rig.session.failed.is_set()
    finally:
        rig.session.close()


def test_barge_in_is_thread_safe() -> None:
    rig = Rig()
    rig.answer("resp_1", "item_a", 2)
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def run() -> None:
        barrier.wait()
        results.append(rig.talkback.barge_in(rig.session))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(results) == [False, False, False, True]
    assert [e["type"] for e, _, _ in rig.sent()] == ["conversation.item.truncate",
                                                      "response.cancel"]


def test_cancelled_ids_are_bounded() -> None:
    rig = Rig()  # remember=4
    for n in range(6):
        rig.answer(f"resp_{n}", f"item_{n}", 1)
        rig.feed(speech_started())
        rig.feed(done(f"resp_{n}", "cancelled"))
    rig.feed(delta("resp_0", "item_0"))  # forgotten: no longer dropped
    rig.feed(delta("resp_5", "item_5"))  # remembered: dropped
    assert rig.speaker.plays()[-1] == ("item_0", 4800)
    assert rig.talkback.snapshot()["deltas_dropped"] == 1


# -- against the devserver ---------------------------------------------------------------


class RealTimeSpeaker:
    """Plays at real time: an item's played ms grows with the clock, up to what it got."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: dict[str, int] = {}  # bytes per item
        self.started: dict[str, float] = {}
        self.current: tuple[str, int] | None = None
        self.flushed: tuple[str, int, int] | None = None
        self.after_flush: list[str] = []  # items played after the flush

    def _played(self, item_id: str) -> int:
        got_ms = self.received.get(item_id, 0) // 48
        start = self.started.get(item_id)
        if start is None:
            return 0
        return min(got_ms, int((time.monotonic() - start) * 1000))

    def play(self, item_id: str, content_index: int, pcm24k: bytes,
             rate: int = 24000) -> None:
        with self.lock:
            if self.flushed is not None:
                self.after_flush.append(item_id)
            self.received[item_id] = self.received.get(item_id, 0) + len(pcm24k)
            self.started.setdefault(item_id, time.monotonic())
            self.current = (item_id, content_index)

    def end_of_item(self, item_id: str) -> None:
        pass

    def flush(self) -> tuple[str, int, int] | None:
        with self.lock:
            if self.current is None:
                return None
            item_id, index = self.current
            self.current = None
            self.flushed = (item_id, index, self._played(item_id))
            return self.flushed

    def played_ms(self, item_id: str) -> int:
        with self.lock:
            return self._played(item_id)

    @property
    def playing(self) -> bool:
        with self.lock:
            return self.current is not None


def make_session(server: DevServer, settings: SessionSettings,
                 dispatcher: EventDispatcher[RealtimeSession],
                 outbox: DirectOutbox) -> RealtimeSession:
    url, headers = protocol.connect_request(ServerSettings(url=server.url), settings.mode, KEY)
    transport = WebSocketTransport(url, headers, connect_timeout_s=5, socket_timeout_s=0.2,
                                   ping_interval_s=1.0, pong_timeout_s=5.0)
    return RealtimeSession(transport, settings, dispatcher, outbox, update_timeout_s=5.0)


@pytest.mark.integration
@pytest.mark.parametrize("turn_detection", ["none", "server_vad"])
def test_barge_in_mid_answer_against_the_devserver(server: DevServer,
                                                   turn_detection: Literal["none", "server_vad"]
                                                   ) -> None:
    """A long answer played in real time, speech mid-answer: the server holds the truncate
    at exactly what the speaker played, the response is cancelled (by our cancel without
    server VAD; by the server's own VAD with it, our cancel then being a benign race), and
    nothing of that item is played afterwards."""
    speaker = RealTimeSpeaker()
    outbox = RecordingOutbox()
    dispatcher = new_dispatcher()
    talkback = Talkback(speaker, outbox)
    talkback.register(dispatcher)
    types: list[str] = []
    dispatcher.on_every(lambda s, e: types.append(e.type))
    settings = SessionSettings(turn_detection=turn_detection)
    session = make_session(server, settings, dispatcher, outbox)
    session.establish(threading.Event())
    session.start_reader()
    try:
        server.long_answer(6.0, speed=1.0)
        outbox.submit({"type": "response.create", "event_id": protocol.new_event_id()},
                      to=session, urgent=False)
        assert wait_until(lambda: speaker.played_ms(next(iter(speaker.started), "")) >= 800,
                          5.0), "the answer did not start playing"
        hits = server.speech_started_now()
        assert len(hits) == 1
        assert wait_until(lambda: speaker.flushed is not None, 5.0), "no barge-in"
        assert wait_until(lambda: "response.done" in types, 5.0)
        record_of = server.sessions
        assert server.wait_for(lambda s: len(s.sessions()[0].truncations) == 1, 5.0)
        assert server.wait_for(lambda s: len(s.sessions()[0].cancels) == 1, 5.0)
        time.sleep(0.5)  # anything still in flight would have arrived by now
        assert speaker.flushed is not None
        item_id, _, played_ms = speaker.flushed
        record = record_of()[0]
        truncation = record.truncations[0]
        assert truncation.item_id == item_id and truncation.audio_end_ms == played_ms
        assert 700 <= played_ms <= 3000
        response = record.response(item_id)
        assert response.status == "cancelled"
        assert response.audio_ms < 6000
        cancel_ids = [e["event_id"] for e, _, _ in outbox.log if e["type"] == "response.cancel"]
        assert len(cancel_ids) == 1
        if turn_detection == "none":
            assert record.cancels[0].reason == "client_cancelled"
            assert record.cancels[0].event_id == cancel_ids[0]
        else:
            assert record.cancels[0].reason == "turn_detected"
        assert speaker.after_flush == []
        assert not session.failed.is_set(), session.failure
    finally:
        session.close()
