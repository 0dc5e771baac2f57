"""History: the last turns kept across sessions and the conversation.item.create seeds."""

from __future__ import annotations

import base64
import threading
from typing import Any

import pytest
from daemon_harness import KEY
from fakes import DirectOutbox, ScriptedTransport, updated_event, wait_until

from edgevoice.devserver import DevServer
from edgevoice.realtime import protocol
from edgevoice.realtime.history import INTERRUPTED, History
from edgevoice.realtime.session import RealtimeSession, new_dispatcher
from edgevoice.realtime.transport import WebSocketTransport
from edgevoice.settings import ServerSettings, SessionSettings


class Rig:
    def __init__(self, keep: int = 32) -> None:
        self.history = History(keep)
        self.dispatcher = new_dispatcher()
        self.history.register(self.dispatcher)
        self.session = RealtimeSession(ScriptedTransport(), SessionSettings(), self.dispatcher,
                                       DirectOutbox(), update_timeout_s=1.0)

    def feed(self, event: dict[str, Any]) -> None:
        self.dispatcher.dispatch(self.session,
                                 protocol.parse_server_event(protocol.encode(event)))

    def user(self, item_id: str, text: str, added: bool = True) -> None:
        if added:
            self.feed({"type": "conversation.item.added", "previous_item_id": None,
                       "item": {"id": item_id, "type": "message", "role": "user",
                                "content": [{"type": "input_audio", "transcript": None}]}})
        self.feed({"type": "conversation.item.input_audio_transcription.completed",
                   "item_id": item_id, "content_index": 0, "transcript": text})

    def assistant_added(self, item_id: str) -> None:
        self.feed({"type": "conversation.item.added", "previous_item_id": None,
                   "item": {"id": item_id, "type": "message", "role": "assistant",
                            "status": "in_progress", "content": []}})

    def assistant(self, item_id: str, text: str, audio_ms: int = 0,
                  beta: bool = False) -> None:
        self.assistant_added(item_id)
        if audio_ms:
            pcm = b"\0\0" * (24 * audio_ms)
            self.feed({"type": "response.output_audio.delta", "response_id": "r",
                       "item_id": item_id, "output_index": 0, "content_index": 0,
                       "delta": base64.b64encode(pcm).decode("ascii")})
        name = "response.audio_transcript.done" if beta else \
            "response.output_audio_transcript.done"
        self.feed({"type": name, "response_id": "r", "item_id": item_id,
                   "output_index": 0, "content_index": 0, "transcript": text})


def said(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    out = []
    for event in events:
        item = event["item"]
        (part,) = item["content"]
        out.append((item["role"], part["type"], part["text"]))
    return out


def test_seed_shapes_are_ga_conversation_item_create() -> None:
    rig = Rig()
    rig.user("item_u1", "What time is it?")
    rig.assistant("item_a1", "It is noon.")
    events = rig.history.seed_events(4)
    assert [e["type"] for e in events] == ["conversation.item.create"] * 2
    assert all(e["event_id"].startswith("evt_") for e in events)
    assert len({e["event_id"] for e in events}) == 2
    assert events[0]["item"] == {"type": "message", "role": "user",
                                 "content": [{"type": "input_text",
                                              "text": "What time is it?"}]}
    assert events[1]["item"] == {"type": "message", "role": "assistant",
                                 "content": [{"type": "output_text", "text": "It is noon."}]}
    assert "previous_item_id" not in events[0]  # appended in order


def test_order_follows_the_conversation_not_the_transcripts() -> None:
    rig = Rig()
    # the user's transcription completes only after the answer's transcript
    rig.feed({"type": "conversation.item.added",
              "item": {"id": "item_u1", "type": "message", "role": "user",
                       "content": [{"type": "input_audio", "transcript": None}]}})
    rig.assistant("item_a1", "Answer one.", beta=True)
    rig.user("item_u1", "Question one.", added=False)
    rig.feed({"type": "response.output_text.done", "item_id": "item_a2", "text": "Text two."})
    assert said(rig.history.seed_events(10)) == [
        ("user", "input_text", "Question one."),
        ("assistant", "output_text", "Answer one."),
        ("assistant", "output_text", "Text two."),
    ]


def test_last_turns_only_and_bounded() -> None:
    rig = Rig(keep=4)
    for n in range(5):
        rig.user(f"item_u{n}", f"question {n}")
        rig.assistant(f"item_a{n}", f"answer {n}")
    assert len(rig.history.turns()) == 4
    assert [t for _, _, t in said(rig.history.seed_events(3))] == \
        ["answer 3", "question 4", "answer 4"]
    assert [t for _, _, t in said(rig.history.seed_events(100))] == \
        ["question 3", "answer 3", "question 4", "answer 4"]


def test_zero_disables() -> None:
    rig = Rig()
    rig.user("item_u1", "hello")
    assert rig.history.seed_events(0) == []
    off = Rig(keep=0)
    off.user("item_u1", "hello")
    off.assistant("item_a1", "hi", audio_ms=100)
    assert off.history.turns() == [] and off.history.seed_events(5) == []
    with pytest.raises(ValueError):
        History(-1)


def test_same_item_twice_is_one_turn() -> None:
    rig = Rig()
    rig.user("item_u1", "hello")
    rig.assistant("item_a1", "hi there")
    rig.user("item_u1", "hello")  # reported again (e.g. replayed audio)
    rig.assistant("item_a1", "hi there")
    assert said(rig.history.seed_events(10)) == [("user", "input_text", "hello"),
                                                 ("assistant", "output_text", "hi there")]


def test_seeds_seen_again_are_not_kept_twice_and_empty_turns_are_skipped() -> None:
    rig = Rig()
    rig.user("item_u1", "hello")
    rig.assistant("item_a1", "hi")
    rig.feed({"type": "conversation.item.added",
              "item": {"id": "item_u2", "type": "message", "role": "user",
                       "content": [{"type": "input_audio", "transcript": None}]}})
    # the new session answers our seeds with conversation.item.added of text items
    for event in rig.history.seed_events(10):
        item = {"id": "item_seed_" + event["event_id"], **event["item"]}
        rig.feed({"type": "conversation.item.added", "item": item})
    assert said(rig.history.seed_events(10)) == [("user", "input_text", "hello"),
                                                 ("assistant", "output_text", "hi")]


def test_truncated_answer_keeps_what_was_played() -> None:
    rig = Rig()
    rig.user("item_u1", "count")
    rig.assistant("item_a1", "one two three four five six seven eight nine ten",
                  audio_ms=2000)
    rig.feed({"type": "conversation.item.truncated", "item_id": "item_a1",
              "content_index": 0, "audio_end_ms": 500})
    assert said(rig.history.seed_events(10))[-1] == \
        ("assistant", "output_text", "one two three" + INTERRUPTED)
    # truncated at 0 ms: nothing was heard, nothing is seeded
    rig.assistant("item_a2", "never heard", audio_ms=1000)
    rig.feed({"type": "conversation.item.truncated", "item_id": "item_a2",
              "content_index": 0, "audio_end_ms": 0})
    assert [t for _, _, t in said(rig.history.seed_events(10))][-1] == \
        "one two three" + INTERRUPTED


def test_truncate_before_the_transcript_and_unknown_length() -> None:
    rig = Rig()
    rig.assistant_added("item_a1")
    rig.feed({"type": "conversation.item.truncated", "item_id": "item_a1",
              "content_index": 0, "audio_end_ms": 300})
    rig.feed({"type": "response.output_text.done", "item_id": "item_a1", "text": "all of it"})
    assert said(rig.history.seed_events(1)) == \
        [("assistant", "output_text", "all of it" + INTERRUPTED)]


@pytest.mark.integration
def test_carried_into_a_new_session_against_the_devserver(server: DevServer) -> None:
    """Turns of one session seeded into the next: the devserver accepts the items."""
    history = History()
    dispatcher = new_dispatcher()
    history.register(dispatcher)
    url, headers = protocol.connect_request(ServerSettings(url=server.url),
                                            SessionSettings().mode, KEY)
    transport = WebSocketTransport(url, headers, connect_timeout_s=5, socket_timeout_s=0.2,
                                   ping_interval_s=1.0, pong_timeout_s=5.0)
    outbox = DirectOutbox()
    session = RealtimeSession(transport, SessionSettings(), dispatcher, outbox,
                              update_timeout_s=5.0)
    # what an earlier session said
    dispatcher.dispatch(session, protocol.ServerEvent(
        "conversation.item.input_audio_transcription.completed",
        {"item_id": "item_u1", "transcript": "What is the weather?"}))
    dispatcher.dispatch(session, protocol.ServerEvent(
        "response.output_audio_transcript.done", {"item_id": "item_a1", "transcript": "Sunny."}))
    session.establish(threading.Event())
    session.start_reader()
    try:
        for event in history.seed_events(6):
            outbox.submit(event, to=session, urgent=True)
        assert server.wait_for(lambda s: sum(
            e["type"] == "conversation.item.added" for e in s.sessions()[0].server_events) == 2,
            5.0)
        assert wait_until(lambda: len(history.turns()) == 2, 1.0)
        assert not session.failed.is_set()
        errors = [e for e in server.sessions()[0].server_events if e["type"] == "error"]
        assert errors == []
    finally:
        session.close()
    # the seeds' own conversation.item.added did not become turns
    assert [t.item_id for t in history.turns()] == ["item_u1", "item_a1"]


def test_scripted_session_keeps_turns_from_its_reader() -> None:
    transport = ScriptedTransport({"session.update": [updated_event()]})
    history = History()
    dispatcher = new_dispatcher()
    history.register(dispatcher)
    session = RealtimeSession(transport, SessionSettings(), dispatcher, DirectOutbox(),
                              update_timeout_s=1.0)
    session.establish(threading.Event())
    session.start_reader()
    try:
        transport.push({"type": "conversation.item.input_audio_transcription.completed",
                        "item_id": "item_u1", "transcript": "hi"})
        assert wait_until(lambda: history.seed_events(1) != [], 2.0)
    finally:
        session.close()
