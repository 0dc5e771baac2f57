"""Transcripts delivered: records and their times, replay de-duplication, the JSON lines
file and its rotation, the broadcast socket, the queue in front of them."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeClock, wait_until

from edgevoice.realtime.dispatch import EventDispatcher
from edgevoice.realtime.event_log import EventLog
from edgevoice.realtime.protocol import ServerEvent, parse_server_event
from edgevoice.realtime.timeline import AudioTimeline
from edgevoice.settings import SessionSettings, TranscriptsSettings
from edgevoice.transcripts import start_delivery
from edgevoice.transcripts.broadcast import SocketBroadcast
from edgevoice.transcripts.delivery import Delivery
from edgevoice.transcripts.jsonl import JsonlFile
from edgevoice.transcripts.paths import jsonl_path, socket_path
from edgevoice.transcripts.record import Transcript
from edgevoice.transcripts.router import TranscriptRouter

CHUNK_MS = 20.0
WALL0 = 1_800_000_000.0  # the wall clock when the monotonic clock reads NOW
NOW = 500.0


class Session:
    """A session as the router sees it: a real timeline, real settings."""

    def __init__(self, session_id: str, language: str | None = "de",
                 turn_detection: str = "server_vad") -> None:
        self.session_id = session_id
        self.timeline = AudioTimeline()
        self.settings = SessionSettings(language=language,
                                        turn_detection=turn_detection)  # type: ignore[arg-type]

    def send(self, captured_from: float, chunks: int) -> None:
        """`chunks` 20 ms chunks captured back to back from `captured_from` (monotonic)."""
        for i in range(chunks):
            self.timeline.add(CHUNK_MS, captured_from + i * CHUNK_MS / 1000)


class Rig:
    def __init__(self) -> None:
        self.clock = FakeClock(NOW)
        self.wall = FakeClock(WALL0)
        self.router = TranscriptRouter(realtime_model=lambda: "gpt-realtime-2.1",
                                       clock=self.clock, wall_clock=self.wall)
        self.records: list[Transcript] = []
        self.router.output = self.records.append
        self.dispatcher: EventDispatcher[Any] = EventDispatcher()
        self.router.register(self.dispatcher)

    def event(self, session: Session, type_: str, **data: Any) -> None:
        self.dispatcher.dispatch(session, ServerEvent(type_, {"type": type_, **data}))

    def utterance(self, session: Session, item_id: str, start_ms: int, end_ms: int,
                  text: str = "hello there") -> None:
        self.event(session, "input_audio_buffer.speech_started", audio_start_ms=start_ms,
                   item_id=item_id)
        self.event(session, "input_audio_buffer.speech_stopped", audio_end_ms=end_ms,
                   item_id=item_id)
        self.event(session, "input_audio_buffer.committed", item_id=item_id,
                   previous_item_id=None)
        self.event(session, "conversation.item.input_audio_transcription.completed",
                   item_id=item_id, content_index=0, transcript=text)


def wall_of(captured: float) -> float:
    return WALL0 - (NOW - captured)


# -- records and times -----------------------------------------------------------------


def test_a_user_transcript_gets_its_speech_times_from_the_timeline() -> None:
    rig = Rig()
    s = Session("sess_1")
    s.send(100.0, 150)  # 3 s captured from t=100
    rig.utterance(s, "item_a", 400, 1400, "  hello there ")
    [record] = rig.records
    assert record.text == "hello there"
    assert (record.role, record.item_id, record.session_id) == ("user", "item_a", "sess_1")
    assert record.language == "de"
    assert record.model == SessionSettings().transcription_model
    assert record.start == pytest.approx(wall_of(100.4))
    assert record.end == pytest.approx(wall_of(101.4), abs=1e-5)


def test_times_follow_the_capture_across_a_gap_in_the_streamed_audio() -> None:
    rig = Rig()
    s = Session("sess_1")
    s.send(100.0, 50)  # offsets 0..1000 ms
    s.send(150.0, 50)  # the gate was closed 49 s: offsets 1000..2000 ms
    rig.utterance(s, "item_a", 1200, 1800)
    [record] = rig.records
    assert record.start == pytest.approx(wall_of(150.2))
    assert record.end == pytest.approx(wall_of(150.8), abs=1e-5)


def test_an_end_on_a_chunk_edge_before_a_gap_is_the_end_of_the_audio_before_it() -> None:
    rig = Rig()
    s = Session("sess_1")
    s.send(100.0, 50)
    s.send(150.0, 50)
    rig.utterance(s, "item_a", 200, 1000)  # ends where the audio after the gap begins
    assert rig.records[0].end == pytest.approx(wall_of(101.0), abs=1e-5)


def test_own_commits_give_each_item_the_audio_since_the_commit_before() -> None:
    rig = Rig()
    s = Session("sess_1", language=None, turn_detection="none")
    s.send(100.0, 50)
    s.timeline.mark_commit()  # at 1000 ms
    s.send(120.0, 30)
    s.timeline.mark_commit()  # at 1600 ms
    for item in ("item_a", "item_b"):
        rig.event(s, "input_audio_buffer.committed", item_id=item, previous_item_id=None)
    rig.event(s, "conversation.item.input_audio_transcription.completed", item_id="item_b",
              content_index=0, transcript="second")
    rig.event(s, "conversation.item.input_audio_transcription.completed", item_id="item_a",
              content_index=0, transcript="first")
    second, first = rig.records
    assert (first.text, second.text) == ("first", "second")
    assert first.start == pytest.approx(wall_of(100.0))
    assert first.end == pytest.approx(wall_of(101.0), abs=1e-5)
    assert second.start == pytest.approx(wall_of(120.0))
    assert second.end == pytest.approx(wall_of(120.6), abs=1e-5)
    assert first.language is None


def test_a_transcript_whose_audio_is_no_longer_known_has_no_times() -> None:
    rig = Rig()
    s = Session("sess_1")  # nothing in the timeline
    rig.utterance(s, "item_a", 400, 1400)
    [record] = rig.records
    assert (record.start, record.end) == (None, None)
    line = json.loads(record.line())
    assert line["start"] is None and line["end"] is None


def test_an_answer_is_timed_from_its_first_delta_to_the_end_of_its_audio() -> None:
    rig = Rig()
    s = Session("sess_1")
    ids = {"response_id": "resp_1", "item_id": "item_r", "output_index": 0,
           "content_index": 0}
    rig.event(s, "response.output_audio_transcript.delta", delta="Hi", **ids)
    started = rig.wall()
    rig.wall.advance(0.5)
    rig.event(s, "response.output_audio.delta", delta="AAAA", **ids)
    rig.wall.advance(2.0)
    rig.event(s, "response.output_audio.done", **ids)
    ended = rig.wall()
    rig.wall.advance(0.1)
    rig.event(s, "response.output_audio_transcript.done", transcript="Hi, how can I help?",
              **ids)
    [record] = rig.records
    assert (record.role, record.text, record.model) == ("assistant", "Hi, how can I help?",
                                                        "gpt-realtime-2.1")
    assert (record.start, record.end) == (started, ended)
    assert record.item_id == "item_r" and record.session_id == "sess_1"


def test_beta_event_names_are_routed_too() -> None:
    rig = Rig()
    s = Session("sess_1")
    raw = json.dumps({"type": "response.audio_transcript.done", "item_id": "item_r",
                      "transcript": "Hello.", "response_id": "r", "output_index": 0,
                      "content_index": 0})
    rig.dispatcher.dispatch(s, parse_server_event(raw))  # the parser normalises the name
    assert [r.text for r in rig.records] == ["Hello."]


def test_empty_transcripts_and_a_router_without_output_deliver_nothing() -> None:
    rig = Rig()
    s = Session("sess_1")
    s.send(100.0, 100)
    rig.utterance(s, "item_a", 0, 500, "   ")
    rig.router.output = None
    rig.utterance(s, "item_b", 600, 1500, "words")
    assert rig.records == []


def test_the_line_is_one_json_object_with_iso_times() -> None:
    record = Transcript(text="grüß dich", role="user", item_id="item_a", session_id="sess_1",
                        start=WALL0 + 0.25, end=WALL0 + 1.5, language="de",
                        model="gpt-live-transcribe")
    raw = record.line()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    line = json.loads(raw)
    assert set(line) == {"text", "role", "item_id", "session_id", "start", "end",
                         "language", "model"}
    assert line["text"] == "grüß dich"
    start = datetime.fromisoformat(line["start"])
    assert start.utcoffset() == timedelta(0)
    assert start.timestamp() == pytest.approx(WALL0 + 0.25, abs=1e-3)
    assert datetime.fromisoformat(line["end"]).timestamp() == pytest.approx(WALL0 + 1.5)


# -- replays ---------------------------------------------------------------------------


def test_replayed_audio_transcribed_again_is_not_delivered_twice() -> None:
    rig = Rig()
    first = Session("sess_1")
    first.send(100.0, 150)  # 100.0 .. 103.0
    rig.utterance(first, "item_a", 400, 1400, "hello there")  # 100.4 .. 101.4
    # The connection died; the next session gets the audio from 100.2 again (a replay),
    # then live audio, and transcribes the replayed speech under a new item id.
    second = Session("sess_2")
    second.send(100.2, 140)  # 100.2 .. 103.0
    second.send(103.0, 100)  # live: 103.0 .. 105.0
    rig.utterance(second, "item_b", 100, 1250, "hello there")  # 100.3 .. 101.45
    # New speech that begins in the replayed tail is mostly new: delivered.
    rig.utterance(second, "item_c", 2700, 4200, "and more")  # 102.9 .. 104.4
    # The same item reported twice is one line.
    rig.event(second, "conversation.item.input_audio_transcription.completed",
              item_id="item_c", content_index=0, transcript="and more")
    assert [(r.item_id, r.text) for r in rig.records] == [("item_a", "hello there"),
                                                          ("item_c", "and more")]
    assert rig.router.duplicates == 1


def test_neighbouring_utterances_overlapping_by_the_padding_are_both_delivered() -> None:
    rig = Rig()
    s = Session("sess_1")
    s.send(100.0, 250)
    rig.utterance(s, "item_a", 0, 1500, "one")
    rig.utterance(s, "item_b", 1200, 3000, "two")  # 300 ms prefix padding overlap
    assert [r.text for r in rig.records] == ["one", "two"]


# -- the JSON lines file ---------------------------------------------------------------


def _numbered(i: int) -> bytes:
    return Transcript(text=f"line {i:05d} " + "x" * (i % 37), role="user",
                      item_id=f"item_{i}", session_id="sess_1", start=WALL0 + i,
                      end=WALL0 + i + 1, language=None, model="m").line()


def test_the_file_rotates_by_size_keeping_whole_lines_and_losing_none(tmp_path: Path) -> None:
    path = tmp_path / "transcripts.jsonl"
    max_bytes, keep = 4096, 3
    sink = JsonlFile(path, max_bytes, keep)
    n = 200  # about 40 KiB: many rotations
    longest = max(len(_numbered(i)) for i in range(n))
    assert all(sink.write(_numbered(i)) for i in range(n))
    sink.close()
    files = sorted(tmp_path.glob("transcripts.jsonl*"))
    assert [f.name for f in files] == ["transcripts.jsonl", "transcripts.jsonl.1",
                                       "transcripts.jsonl.2", "transcripts.jsonl.3"]
    numbers: list[int] = []
    for name in ("transcripts.jsonl.3", "transcripts.jsonl.2", "transcripts.jsonl.1",
                 "transcripts.jsonl"):  # oldest first
        data = (tmp_path / name).read_bytes()
        assert 0 < len(data) <= max_bytes
        if name != "transcripts.jsonl":  # rotated only when the next line did not fit
            assert len(data) > max_bytes - longest
        assert data.endswith(b"\n")
        for raw in data.splitlines():
            numbers.append(int(json.loads(raw)["text"].split()[1]))
    # What is kept is the newest lines, every one of them, in order.
    assert numbers == list(range(numbers[0], n))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "transcripts.jsonl.1").stat().st_mode) == 0o640


def test_the_file_is_appended_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    for i in range(2):
        sink = JsonlFile(path, 1 << 20, 2)
        assert sink.write(_numbered(i))
        sink.close()
    assert [json.loads(x)["item_id"] for x in path.read_bytes().splitlines()] == \
        ["item_0", "item_1"]


def test_a_write_error_is_logged_once_per_problem_and_writing_resumes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "missing" / "t.jsonl"
    sink = JsonlFile(path, 1 << 20, 2)
    with caplog.at_level(logging.INFO, logger="edgevoice.transcripts"):
        assert not any(sink.write(_numbered(i)) for i in range(5))
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "cannot write transcripts" in errors[0].getMessage()
        path.parent.mkdir()
        assert sink.write(_numbered(5))
        assert any("written to" in r.getMessage() and "again" in r.getMessage()
                   for r in caplog.records)
    sink.close()
    assert len(path.read_bytes().splitlines()) == 1


# -- paths -----------------------------------------------------------------------------


def test_paths_follow_the_unit_directories() -> None:
    systemd = {"STATE_DIRECTORY": "/var/lib/edgevoice", "RUNTIME_DIRECTORY": "/run/edgevoice"}
    assert jsonl_path("auto", systemd) == Path("/var/lib/edgevoice/transcripts.jsonl")
    assert jsonl_path("auto", {}) == Path("transcripts.jsonl")
    assert jsonl_path("t/x.jsonl", systemd) == Path("/var/lib/edgevoice/t/x.jsonl")
    assert jsonl_path("/srv/x.jsonl", systemd) == Path("/srv/x.jsonl")
    assert jsonl_path(None, systemd) is None
    assert socket_path("auto", systemd) == Path("/run/edgevoice/transcripts.sock")
    assert socket_path("auto", {}) is None
    assert socket_path("/tmp/t.sock", {}) == Path("/tmp/t.sock")


# -- the queue in front of the sinks ---------------------------------------------------


class GatedSink:
    name = "gated"

    def __init__(self) -> None:
        self.open = threading.Event()
        self.lines: list[bytes] = []
        self.closed = False

    def write(self, line: bytes) -> bool:
        self.open.wait(10)
        self.lines.append(line)
        return True

    def close(self) -> None:
        self.closed = True


def test_a_stuck_sink_never_blocks_the_submitter_and_drops_are_counted() -> None:
    counts: dict[str, int] = {}

    def count(name: str, n: int) -> None:
        counts[name] = counts.get(name, 0) + n

    sink = GatedSink()
    delivery = Delivery([sink], count, max_queued=4)
    delivery.start()
    records = [Transcript(text=f"t{i}", role="user", item_id=f"i{i}", session_id="s",
                          start=None, end=None, language=None, model="m") for i in range(10)]
    results = [delivery.submit(r) for r in records]  # the writer holds one, 4 wait
    assert results.count(False) >= 5
    assert counts["transcripts_dropped"] == results.count(False)
    sink.open.set()
    assert delivery.stop(5.0)
    assert sink.closed
    assert counts["transcripts_delivered"] == results.count(True) == len(sink.lines)
    texts = [json.loads(x)["text"] for x in sink.lines]
    assert texts == [r.text for r, ok in zip(records, results, strict=True) if ok]
    assert not delivery.submit(records[0])  # stopped: dropped, counted
    assert counts["transcripts_dropped"] == results.count(False) + 1


def test_a_lone_surrogate_from_the_server_does_not_end_the_writer() -> None:
    """JSON allows "\\ud800" alone; Python cannot encode it as UTF-8. The line gets a
    replacement character and the writer goes on with the next record."""
    event = parse_server_event('{"type": "conversation.item.input_audio_transcription.'
                               'completed", "item_id": "i1", "transcript": "a\\ud800b"}')
    counts: dict[str, int] = {}

    def count(name: str, n: int) -> None:
        counts[name] = counts.get(name, 0) + n

    sink = GatedSink()
    sink.open.set()
    delivery = Delivery([sink], count)
    delivery.start()
    for item, text in (("i1", event.get_str("transcript")), ("i2", "next")):
        assert delivery.submit(Transcript(text=text, role="user", item_id=item,
                                          session_id="s", start=None, end=None,
                                          language=None, model="m"))
    assert delivery.stop(5.0)
    assert [json.loads(x)["text"] for x in sink.lines] == ["a?b", "next"]
    assert counts == {"transcripts_delivered": 2}


def test_control_characters_in_a_transcript_do_not_reach_the_journal(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edgevoice")
    dispatcher: EventDispatcher[Any] = EventDispatcher()
    EventLog().register(dispatcher)
    text = "red \x1b[31malert\x07\x9b2J\ud800 end\r\nnext"
    dispatcher.dispatch(Session("sess_1"), ServerEvent(
        "conversation.item.input_audio_transcription.completed",
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "i",
         "transcript": text}))
    (message,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("user:")]
    assert message.isprintable(), repr(message)
    assert message == "user: red \ufffd[31malert\ufffd\ufffd2J\ufffd end next"


# -- the socket ------------------------------------------------------------------------


def _reader(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


class Collector(threading.Thread):
    """A reader that keeps up: every line it gets, in order."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.lines: list[bytes] = []
        self._buf = b""

    def run(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            self._buf += data
            *whole, self._buf = self._buf.split(b"\n")
            self.lines.extend(whole)


def test_a_reader_that_never_reads_is_dropped_while_the_other_gets_every_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "t.sock"
    broadcast = SocketBroadcast(path, max_buffer=32 * 1024)
    broadcast.start()
    silent = good = None
    try:
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        silent = _reader(path)
        good = _reader(path)
        collector = Collector(good)
        collector.start()
        assert wait_until(lambda: broadcast.readers == 2, 5)
        sent: list[bytes] = []
        with caplog.at_level(logging.INFO, logger="edgevoice.transcripts"):
            # In batches the good reader keeps up with; the silent one fills its socket
            # buffer and then its pending bytes, and is dropped.
            while broadcast.dropped == 0 and len(sent) < 20_000:
                for _ in range(20):
                    line = _numbered(len(sent))
                    sent.append(line.rstrip(b"\n"))
                    assert broadcast.write(line)
                assert wait_until(lambda: len(collector.lines) == len(sent), 10), \
                    f"{len(collector.lines)} of {len(sent)}"
            assert broadcast.dropped == 1
            for _ in range(50):  # and lines go on to the one left
                line = _numbered(len(sent))
                sent.append(line.rstrip(b"\n"))
                broadcast.write(line)
            assert wait_until(lambda: len(collector.lines) == len(sent), 10)
        assert collector.lines == sent
        assert broadcast.readers == 1
        assert any("dropped: not reading" in r.getMessage() for r in caplog.records)
        # The silent reader's connection was closed: it finds the end after its backlog.
        silent.settimeout(5)
        got = b""
        while piece := silent.recv(1 << 20):
            got += piece
        assert 0 < len(got) < sum(len(x) + 1 for x in sent)
    finally:
        broadcast.close()
        for sock in (silent, good):
            if sock is not None:
                sock.close()
    assert not path.exists()


def test_a_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a killed daemon's file: nobody listens
    first = SocketBroadcast(path)
    first.start()
    try:
        with pytest.raises(OSError, match="in use"):
            SocketBroadcast(path).start()
        reader = _reader(path)
        assert wait_until(lambda: first.readers == 1, 5)
        reader.close()
        assert wait_until(lambda: first.readers == 0, 5)  # a reader that leaves is let go
    finally:
        first.close()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        SocketBroadcast(path).start()
    assert path.read_text() == "not a socket"
    assert os.listdir(tmp_path) == ["t.sock"]


def test_the_sinks_asked_for_are_started_and_one_that_cannot_start_is_left_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = {"STATE_DIRECTORY": str(tmp_path)}
    assert start_delivery(TranscriptsSettings(), lambda name, n: None, env) is None
    assert start_delivery(TranscriptsSettings(socket="auto"), lambda name, n: None,
                          env) is None  # auto outside systemd's RuntimeDirectory: none
    (tmp_path / "taken").write_text("not a socket")
    with caplog.at_level(logging.INFO, logger="edgevoice.transcripts"):
        delivery = start_delivery(
            TranscriptsSettings(jsonl_file="auto", socket=str(tmp_path / "taken")),
            lambda name, n: None, env)
    assert delivery is not None
    try:
        assert [sink.name for sink in delivery.sinks] == ["file"]
        assert any("transcript socket" in r.getMessage() and "unavailable" in r.getMessage()
                   for r in caplog.records)
        record = Transcript(text="hi", role="user", item_id="i", session_id="s",
                            start=None, end=None, language=None, model="m")
        assert delivery.submit(record)
    finally:
        assert delivery.stop(5.0)
    assert _lines_of(tmp_path / "transcripts.jsonl") == [json.loads(record.line())]


def _lines_of(path: Path) -> list[Any]:
    return [json.loads(raw) for raw in path.read_bytes().splitlines()]
