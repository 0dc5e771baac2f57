"""The devserver answers like the real service: framing, cancel, truncate, barge-in, idle."""

from __future__ import annotations

import base64
import time
import urllib.error
from typing import Any

import pytest
from signals import speech
from test_devserver import (
    BYTES_PER_MS,
    RATE,
    Client,
    _control,
    append,
    only_session,
    realtime_update,
    send_audio,
    speech_signal,
)

from edgevoice.devserver import DevServer

pytestmark = [pytest.mark.timeout(60), pytest.mark.any_key]

PART = {"event_id", "type", "response_id", "item_id", "output_index", "content_index"}
# The fields of each server event, as openai-python's types/realtime define them.
FIELDS = {
    "response.created": {"event_id", "type", "response"},
    "response.output_item.added": {"event_id", "type", "response_id", "output_index", "item"},
    "conversation.item.added": {"event_id", "type", "previous_item_id", "item"},
    "response.content_part.added": PART | {"part"},
    "response.output_audio.delta": PART | {"delta"},
    "response.output_audio_transcript.delta": PART | {"delta"},
    "response.output_audio_transcript.done": PART | {"transcript"},
    "response.output_audio.done": PART,
    "response.output_text.delta": PART | {"delta"},
    "response.output_text.done": PART | {"text"},
    "response.content_part.done": PART | {"part"},
    "response.output_item.done": {"event_id", "type", "response_id", "output_index", "item"},
    "conversation.item.done": {"event_id", "type", "previous_item_id", "item"},
    "response.done": {"event_id", "type", "response"},
    "rate_limits.updated": {"event_id", "type", "rate_limits"},
    "conversation.item.truncated": {"event_id", "type", "item_id", "content_index", "audio_end_ms"},
    "input_audio_buffer.timeout_triggered": {
        "event_id",
        "type",
        "audio_start_ms",
        "audio_end_ms",
        "item_id",
    },
    "input_audio_buffer.speech_started": {"event_id", "type", "audio_start_ms", "item_id"},
}
DELTAS = ("response.output_audio.delta", "response.output_audio_transcript.delta")
FRAMING = [
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
]
CLOSING = [
    "response.output_audio_transcript.done",
    "response.output_audio.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
    "rate_limits.updated",
]


# --- helpers ---------------------------------------------------------------------------


def manual_client(srv: DevServer, **audio_input: Any) -> Client:
    """A realtime session with turn detection off (unless ``turn_detection`` is given)."""
    client = Client(srv)
    client.wait_type("session.created")
    audio_input.setdefault("turn_detection", None)
    client.send(realtime_update(**audio_input))
    client.wait_type("session.updated")
    return client


def commit(client: Client, ms: int = 300) -> tuple[bytes, str]:
    """Append ``ms`` of talk and commit it; the audio and the user item id."""
    pcm = speech(ms / 1000, RATE, seed=11, talk=[(0.0, ms / 1000)]).astype("<i2").tobytes()
    send_audio(client, pcm)
    client.send({"type": "input_audio_buffer.commit", "event_id": "evt_commit"})
    item_id = client.wait_type("input_audio_buffer.committed")["item_id"]
    assert client.wait_type("conversation.item.added")["item"]["id"] == item_id
    return pcm, item_id


def room(seconds: float, seed: int = 5) -> bytes:
    """Faint room noise: no speech for the VAD."""
    return speech(seconds, RATE, seed=seed, talk=[]).astype("<i2").tobytes()


def until_done(
    client: Client, timeout: float = 10.0, start: int | None = None
) -> list[dict[str, Any]]:
    """Events (from index ``start``, default: those not read yet) up to and including the
    next response.done and its rate_limits.updated."""
    start = len(client.events) if start is None else start
    client.wait_type("response.done", timeout)
    client.wait_type("rate_limits.updated")
    return client.events[start:]


def framing(events: list[dict[str, Any]]) -> list[str]:
    """Event types with the streaming deltas left out."""
    return [e["type"] for e in events if e["type"] not in DELTAS]


def audio_of(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )


def assert_fields(events: list[dict[str, Any]]) -> None:
    for event in events:
        if event["type"] in FIELDS:
            assert set(event) == FIELDS[event["type"]], event["type"]
            assert event["event_id"].startswith("event_")


def error_for(client: Client, event: dict[str, Any]) -> dict[str, Any]:
    client.send(event)
    error: dict[str, Any] = client.wait_type("error")["error"]
    assert error["event_id"] == event.get("event_id")
    assert error["type"] == "invalid_request_error"
    return error


# --- 1. the events of a response --------------------------------------------------------


def test_a_response_is_framed_like_the_real_service(server: DevServer) -> None:
    client = manual_client(server)
    pcm, user_item = commit(client)
    client.send({"type": "response.create", "event_id": "evt_resp"})
    events = until_done(client)
    assert_fields(events)
    assert framing(events) == FRAMING + CLOSING
    order = [e["type"] for e in events]
    first_delta = order.index("response.output_audio.delta")
    assert first_delta == len(FRAMING)
    assert order.index("response.output_audio_transcript.done") > max(
        i for i, t in enumerate(order) if t in DELTAS
    )

    by_type = {e["type"]: e for e in events}
    created = by_type["response.created"]["response"]
    resp_id, item_id = created["id"], by_type["response.output_item.added"]["item"]["id"]
    assert created["status"] == "in_progress"
    assert created["status_details"] is None
    for event in events:
        if "response_id" in event:
            assert event["response_id"] == resp_id
        if "item_id" in event:
            assert event["item_id"] == item_id
            assert (event["output_index"], event["content_index"]) == (0, 0)
    added = by_type["conversation.item.added"]
    assert added["previous_item_id"] == user_item
    assert added["item"] == {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    assert by_type["response.content_part.added"]["part"] == {"type": "audio", "transcript": ""}

    # The audio is the echo; the transcript streams word by word next to it.
    assert audio_of(events) == pcm
    text = "Echoing 0.30 s of your speech."
    words = [e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta"]
    assert "".join(words) == text
    assert len(words) > 1
    assert by_type["response.output_audio_transcript.done"]["transcript"] == text
    assert by_type["response.content_part.done"]["part"] == {"type": "audio", "transcript": text}
    item = by_type["response.output_item.done"]["item"]
    assert item["status"] == "completed"
    assert item["content"] == [{"type": "output_audio", "transcript": text}]
    assert by_type["conversation.item.done"]["previous_item_id"] == user_item
    assert by_type["conversation.item.done"]["item"] == item
    done = by_type["response.done"]["response"]
    assert (done["id"], done["status"], done["status_details"]) == (resp_id, "completed", None)
    assert done["output"] == [item]

    # The next user turn follows the assistant item.
    client.send(append(pcm, "evt_more"))
    client.send({"type": "input_audio_buffer.commit"})
    assert client.wait_type("input_audio_buffer.committed")["previous_item_id"] == item_id

    record = only_session(server).response(resp_id)
    assert (record.item_id, record.trigger, record.status) == (item_id, "client", "completed")
    assert (record.audio, record.audio_bytes, record.audio_ms) == (pcm, len(pcm), 300)
    assert (record.planned_ms, record.transcript, record.output_format) == (
        300,
        text,
        "audio/pcm",
    )
    assert record.done_at is not None
    client.close()


def test_text_answers_use_a_text_part(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    client.send(
        {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
    )
    client.wait_type("session.updated")
    client.send({"type": "response.create"})
    events = until_done(client)
    assert_fields(events)
    text = "Nothing to echo: no user audio has been committed yet."
    assert framing(events) == [
        *FRAMING,
        "response.output_text.delta",
        "response.output_text.done",
        *CLOSING[2:],
    ]
    by_type = {e["type"]: e for e in events}
    assert by_type["response.content_part.added"]["part"] == {"type": "text", "text": ""}
    assert by_type["response.output_text.done"]["text"] == text
    item = by_type["response.done"]["response"]["output"][0]
    assert item["content"] == [{"type": "output_text", "text": text}]
    # No audio: nothing to truncate.
    error = error_for(
        client,
        {
            "type": "conversation.item.truncate",
            "event_id": "evt_t",
            "item_id": item["id"],
            "content_index": 0,
            "audio_end_ms": 0,
        },
    )
    assert (error["code"], error["param"]) == ("invalid_value", "item_id")
    assert only_session(server).responses[0].output_format == "text"
    client.close()


# --- 2. truncate ---------------------------------------------------------------------------


def test_truncate_cuts_the_item_within_the_audio_sent(server: DevServer) -> None:
    client = manual_client(server)
    pcm, user_item = commit(client, 500)
    client.send({"type": "response.create"})
    events = until_done(client)
    item_id = events[1]["item"]["id"]

    def truncate(event_id: str, **fields: Any) -> dict[str, Any]:
        event = {"type": "conversation.item.truncate", "event_id": event_id}
        return {**event, "item_id": item_id, "content_index": 0, **fields}

    for event, param in [
        (truncate("evt_t1", audio_end_ms=501), "audio_end_ms"),  # more than was sent
        (truncate("evt_t2", audio_end_ms=-1), "audio_end_ms"),
        (truncate("evt_t3", audio_end_ms=100, content_index=1), "content_index"),
        (truncate("evt_t4", audio_end_ms=100, item_id="item_nope"), "item_id"),
        (truncate("evt_t5", audio_end_ms=100, item_id=user_item), "item_id"),  # a user item
    ]:
        error = error_for(client, event)
        assert (error["code"], error["param"]) == ("invalid_value", param)
        assert error["message"]
    assert "Audio content of 500ms is already shorter than 501ms" in [
        e["error"]["message"] for e in client.events if e["type"] == "error"
    ]
    error = error_for(client, truncate("evt_t6", audio_end_ms="100"))
    assert (error["code"], error["param"]) == ("invalid_type", "audio_end_ms")
    error = error_for(client, {"type": "conversation.item.truncate", "event_id": "evt_t7"})
    assert (error["code"], error["param"]) == ("missing_required_parameter", "item_id")
    assert not only_session(server).truncations

    client.send(truncate("evt_ok", audio_end_ms=500))  # exactly what was sent: accepted
    client.send(truncate("evt_ok2", audio_end_ms=200))
    first = client.wait_type("conversation.item.truncated")
    second = client.wait_type("conversation.item.truncated")
    assert_fields([first, second])
    assert {k: second[k] for k in ("item_id", "content_index", "audio_end_ms")} == {
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": 200,
    }
    assert first["audio_end_ms"] == 500
    # Cut at 200 ms, the item holds 200 ms: 201 is now too long.
    error = error_for(client, truncate("evt_t8", audio_end_ms=201))
    assert error["message"] == "Audio content of 200ms is already shorter than 201ms"

    record = only_session(server)
    cut = record.truncations[-1]
    assert (cut.item_id, cut.audio_end_ms, cut.sent_ms, cut.kept_bytes) == (
        item_id,
        200,
        500,
        200 * BYTES_PER_MS,
    )
    text = "Echoing 0.50 s of your speech."
    assert text.startswith(cut.transcript)
    assert 0 < len(cut.transcript) < len(text)
    resp = record.response(item_id)
    assert (resp.truncated_ms, resp.truncated_transcript) == (200, cut.transcript)
    assert resp.audio == pcm  # what was sent stays recorded
    assert resp.kept_audio == pcm[: 200 * BYTES_PER_MS]
    assert len(record.truncations) == 2
    client.close()


def test_truncate_during_a_response_is_bounded_by_what_was_sent(server: DevServer) -> None:
    server.long_answer(5.0, speed=1.0)
    client = manual_client(server)
    client.send({"type": "response.create"})
    item_id = client.wait_type("response.output_item.added")["item"]["id"]
    for _ in range(3):
        client.wait_type("response.output_audio.delta")
    error = error_for(
        client,
        {
            "type": "conversation.item.truncate",
            "event_id": "evt_far",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 4000,
        },
    )
    assert (error["code"], error["param"]) == ("invalid_value", "audio_end_ms")
    client.send(
        {
            "type": "conversation.item.truncate",
            "event_id": "evt_near",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 250,
        }
    )
    assert client.wait_type("conversation.item.truncated")["audio_end_ms"] == 250
    client.send({"type": "response.cancel"})
    until_done(client)
    client.close()


# --- 3. response.cancel ----------------------------------------------------------------


def test_cancel_stops_the_deltas_at_once(server: DevServer) -> None:
    server.long_answer(10.0, speed=1.0)
    client = manual_client(server)
    client.send({"type": "response.create", "event_id": "evt_resp"})
    start = len(client.events)
    resp_id = client.wait_type("response.created")["response"]["id"]
    for _ in range(3):
        client.wait_type("response.output_audio.delta")
    client.send({"type": "response.cancel", "event_id": "evt_cancel"})
    sent_at = time.monotonic()
    client.wait_type("response.done")
    assert time.monotonic() - sent_at < 1.0
    client.wait_type("rate_limits.updated")
    events = client.events[start:]
    assert_fields(events)
    assert framing(events) == FRAMING + CLOSING
    by_type = {e["type"]: e for e in events}
    done = by_type["response.done"]["response"]
    assert (done["id"], done["status"]) == (resp_id, "cancelled")
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    item = by_type["response.output_item.done"]["item"]
    assert item["status"] == "incomplete"
    assert done["output"] == [item]
    audio = audio_of(events)
    assert 3 * 100 * BYTES_PER_MS <= len(audio) < 2000 * BYTES_PER_MS
    transcript = by_type["response.output_audio_transcript.done"]["transcript"]
    assert "A long answer of 10 s (a tone): 1 2 3 4 5 6 7 8 9 10.".startswith(transcript)
    assert item["content"] == [{"type": "output_audio", "transcript": transcript}]

    # Nothing more for that response; the session goes on.
    client.send({"type": "response.cancel", "event_id": "evt_again"})
    error = client.wait_type("error")["error"]
    assert (error["code"], error["event_id"]) == ("response_cancel_not_active", "evt_again")
    time.sleep(0.3)
    client.send({"type": "session.update", "session": {"type": "realtime"}})
    client.wait_type("session.updated")
    after = client.types()[client.types().index("response.done") :]
    assert not [t for t in after if t.startswith("response.output")]

    record = only_session(server)
    resp = record.response(resp_id)
    assert (resp.status, resp.reason, resp.audio_bytes) == (
        "cancelled",
        "client_cancelled",
        len(audio),
    )
    assert resp.audio == audio
    assert resp.planned_ms == 10_000
    (cancel,) = record.cancels
    assert (cancel.response_id, cancel.reason, cancel.event_id) == (
        resp_id,
        "client_cancelled",
        "evt_cancel",
    )
    assert cancel.audio_ms == len(audio) // BYTES_PER_MS
    client.close()


def test_cancel_of_another_response_id_is_not_active(server: DevServer) -> None:
    server.long_answer(3.0, speed=1.0)
    client = manual_client(server)
    client.send({"type": "response.create"})
    client.wait_type("response.output_audio.delta")
    client.send({"type": "response.cancel", "event_id": "evt_x", "response_id": "resp_other"})
    assert client.wait_type("error")["error"]["code"] == "response_cancel_not_active"
    client.send({"type": "response.cancel"})
    assert client.wait_type("response.done")["response"]["status"] == "cancelled"
    client.close()


# --- 4. barge-in: server VAD interrupts ---------------------------------------------------


def test_speech_during_a_response_cancels_it(server: DevServer) -> None:
    server.long_answer(10.0, speed=1.0)
    client = Client(server)
    client.wait_type("session.created")
    client.send({"type": "response.create"})  # default server_vad: interrupt_response true
    resp_id = client.wait_type("response.created")["response"]["id"]
    client.wait_type("response.output_audio.delta")
    pcm, onset_ms, _ = speech_signal()
    send_audio(client, pcm)
    started = client.wait_type("input_audio_buffer.speech_started")
    done = client.wait_type("response.done")["response"]
    assert client.types().index("input_audio_buffer.speech_started") < client.types().index(
        "response.done"
    )
    assert started["audio_start_ms"] == onset_ms - 300
    assert (done["id"], done["status"]) == (resp_id, "cancelled")
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    # The turn ends and is answered (the echo, at the default pace).
    client.wait_type("input_audio_buffer.speech_stopped")
    following = client.wait_type("response.created")["response"]["id"]
    assert client.wait_type("response.done")["response"]["status"] == "completed"
    record = only_session(server)
    assert [(r.id, r.status, r.reason) for r in record.responses] == [
        (resp_id, "cancelled", "turn_detected"),
        (following, "completed", None),
    ]
    assert [c.reason for c in record.cancels] == ["turn_detected"]
    assert record.responses[1].trigger == "vad"
    client.close()


def test_speech_does_not_cancel_without_interrupt_response(server: DevServer) -> None:
    server.long_answer(2.0, speed=1.0)
    client = Client(server)
    client.wait_type("session.created")
    client.send(realtime_update(turn_detection={"type": "server_vad", "interrupt_response": False}))
    client.wait_type("session.updated")
    client.send({"type": "response.create"})
    client.wait_type("response.output_audio.delta")
    pcm, _, _ = speech_signal()
    send_audio(client, pcm)
    client.wait_type("input_audio_buffer.speech_started")
    assert client.wait_type("response.done")["response"]["status"] == "completed"
    assert not only_session(server).cancels
    client.close()


# --- 5. idle timeout -----------------------------------------------------------------------


def test_idle_timeout_after_the_last_response(server: DevServer) -> None:
    client = Client(server)
    client.wait_type("session.created")
    client.send(realtime_update(turn_detection={"type": "server_vad", "idle_timeout_ms": 1000}))
    assert (
        client.wait_type("session.updated")["session"]["audio"]["input"]["turn_detection"][
            "idle_timeout_ms"
        ]
        == 1000
    )
    # Before any response the timer is not running.
    quiet = room(2.0)
    send_audio(client, quiet)
    pcm, _, _ = speech_signal()
    send_audio(client, pcm)
    first = until_done(client)
    assert "input_audio_buffer.timeout_triggered" not in client.types()
    echo_ms = len(audio_of(first)) // BYTES_PER_MS
    heard_ms = (len(quiet) + len(pcm)) // BYTES_PER_MS  # all appended before response.done

    # Silence after the answer: the timer starts once its audio has played.
    send_audio(client, room(4.0, seed=9))
    timeout = client.wait_type("input_audio_buffer.timeout_triggered")
    assert_fields([timeout])
    assert timeout["audio_start_ms"] == heard_ms + echo_ms
    assert 1000 <= timeout["audio_end_ms"] - timeout["audio_start_ms"] < 1020
    committed = client.wait_type("input_audio_buffer.committed")
    assert committed["item_id"] == timeout["item_id"]
    created = client.wait_type("response.created")["response"]["id"]
    events = until_done(client)
    assert (
        next(e for e in events if e["type"] == "response.output_audio_transcript.done")[
            "transcript"
        ]
        == "Are you still there?"
    )
    assert len(audio_of(events)) == 1000 * BYTES_PER_MS
    record = only_session(server).response(created)
    assert (record.trigger, record.status) == ("idle_timeout", "completed")
    # Only once per silence: the next timer starts after this answer.
    assert client.types().count("input_audio_buffer.timeout_triggered") == 1
    client.close()


# --- 6. control operations --------------------------------------------------------------


def test_long_answer_over_http_is_a_paced_tone_once(server: DevServer) -> None:
    result = _control(server, "long_answer?seconds=1&speed=2")
    assert result["result"] == {"seconds": 1.0, "speed": 2.0}
    assert server.stats()["long_answer"] == [1.0, 2.0]
    client = manual_client(server)
    client.send({"type": "response.create"})
    start = len(client.events)
    client.wait_type("response.output_audio.delta")
    began = time.monotonic()
    events = until_done(client, start=start)
    assert time.monotonic() - began >= 0.4  # 1 s of audio at twice real time
    audio = audio_of(events)
    assert len(audio) == 1000 * BYTES_PER_MS
    transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")
    assert transcript["transcript"] == "A long answer of 1 s (a tone): 1."
    assert server.stats()["long_answer"] is None
    # One-shot: the next answer is the plain echo again.
    pcm, _ = commit(client, 200)
    client.send({"type": "response.create"})
    assert audio_of(until_done(client)) == pcm
    record = only_session(server)
    assert [(r.planned_ms, r.speed) for r in record.responses] == [(1000, 2.0), (200, 4.0)]
    for bad in ("seconds=0", "seconds=601", "seconds=1&speed=0", "speed=2"):
        with pytest.raises(urllib.error.HTTPError) as info:
            _control(server, f"long_answer?{bad}")
        assert info.value.code == 400
    with pytest.raises(ValueError, match="speed"):
        server.long_answer(1.0, speed=-1)
    client.close()


def test_long_answer_repeats_the_echo_at_the_server_pace() -> None:
    srv = DevServer(response_speed=8.0)
    srv.start()
    try:
        srv.long_answer(1.0)
        client = manual_client(srv)
        pcm, _ = commit(client, 300)
        client.send({"type": "response.create"})
        audio = audio_of(until_done(client))
        assert audio == (pcm * 4)[: 1000 * BYTES_PER_MS]
        resp = only_session(srv).responses[0]
        assert (resp.speed, resp.planned_ms) == (8.0, 1000)
        assert srv.stats()["response_speed"] == 8.0
        client.close()
    finally:
        srv.stop()
    with pytest.raises(ValueError, match="response_speed"):
        DevServer(response_speed=0)


def test_speech_started_now_interrupts_like_real_speech(server: DevServer) -> None:
    server.long_answer(10.0, speed=1.0)
    client = Client(server)
    client.wait_type("session.created")
    quiet = room(1.0)
    send_audio(client, quiet)
    client.send({"type": "response.create"})
    resp_id = client.wait_type("response.created")["response"]["id"]
    client.wait_type("response.output_audio.delta")
    assert server.wait_for(lambda s: only_session(s).audio_bytes == len(quiet), 5)
    (hit,) = server.speech_started_now()
    started = client.wait_type("input_audio_buffer.speech_started")
    assert_fields([started])
    assert started["audio_start_ms"] == hit["audio_start_ms"] == 1000 - 300  # prefix padding
    assert started["item_id"] == hit["item_id"]
    assert hit["cancelled"] == resp_id
    done = client.wait_type("response.done")["response"]
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    # The VAD is in speech now: quiet audio ends that turn, which is then answered.
    send_audio(client, room(1.0, seed=8))
    stopped = client.wait_type("input_audio_buffer.speech_stopped")
    assert stopped["item_id"] == started["item_id"]
    assert stopped["audio_end_ms"] == 1000 + 500  # silence_duration_ms after the injection
    assert client.wait_type("input_audio_buffer.committed")["item_id"] == started["item_id"]
    assert client.wait_type("response.done")["response"]["status"] == "completed"
    assert [c.reason for c in only_session(server).cancels] == ["turn_detected"]
    client.close()


def test_speech_started_now_over_http_without_interrupt(server: DevServer) -> None:
    server.long_answer(1.5, speed=1.0)
    client = Client(server)
    client.wait_type("session.created")
    client.send(realtime_update(turn_detection={"type": "server_vad", "interrupt_response": False}))
    client.wait_type("session.updated")
    client.send({"type": "response.create"})
    client.wait_type("response.output_audio.delta")
    (hit,) = _control(server, "speech_started_now")["result"]
    assert hit["cancelled"] is None
    assert client.wait_type("input_audio_buffer.speech_started")["audio_start_ms"] == 0
    assert client.wait_type("response.done")["response"]["status"] == "completed"
    # Already in speech: a second injection says nothing, as the VAD would.
    assert server.speech_started_now() == []
    assert client.types().count("input_audio_buffer.speech_started") == 1
    client.close()


# --- 7. records over HTTP --------------------------------------------------------------


def test_sessions_control_reports_responses_truncations_and_cancels(server: DevServer) -> None:
    server.long_answer(4.0, speed=1.0)
    client = manual_client(server)
    client.send({"type": "response.create"})
    item_id = client.wait_type("response.output_item.added")["item"]["id"]
    client.wait_type("response.output_audio.delta")
    client.send({"type": "response.cancel", "event_id": "evt_c"})
    until_done(client)
    client.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 50,
        }
    )
    client.wait_type("conversation.item.truncated")
    (session,) = _control(server, "sessions")["result"]
    (resp,) = session["responses"]
    assert "audio_chunks" not in resp
    assert resp["item_id"] == item_id
    assert (resp["status"], resp["reason"], resp["truncated_ms"]) == (
        "cancelled",
        "client_cancelled",
        50,
    )
    assert resp["audio_bytes"] >= 100 * BYTES_PER_MS
    assert session["truncations"][0]["audio_end_ms"] == 50
    assert session["cancels"][0]["event_id"] == "evt_c"
    client.close()
