"""Transcripts delivered by the real daemon, against the devserver: the JSON lines file and
the socket get one line per utterance (and per answer), timed from the capture, and a
reconnect with replay yields no duplicate.

Times are checked against the source, not against a clock: the WAV source releases block
n at n x 20 ms after it opened, so the wall time of every source position is one constant
T0 plus the position. The server's audio offsets of each item map to source positions by
the content of the chunks it received (the signal never repeats a chunk), independently
of the daemon's timeline; every line must give the same T0 (within a margin for thread
scheduling), and T0 must lie between the daemon's start and its first line.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import yaml
from daemon_harness import (
    CHUNK,
    CHUNK_MS,
    RATE,
    account_audio,
    merge,
    running_daemon,
    wav_config,
)
from fakes import wait_until
from signals import speech

from edgevoice.devserver import DevServer
from edgevoice.devserver.records import SessionRecord
from edgevoice.settings import ServerSettings, SessionSettings

pytestmark = pytest.mark.integration

SAME_T0_S = 0.5  # capture stamps are taken on the capture thread: scheduling jitter
PADDING_S = 0.3 + 0.1  # the server's prefix padding, and a chunk or two
TRAILING_S = 0.3 + 0.3  # FAST's silence_duration_ms, and the VAD's own frames


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(raw) for raw in path.read_bytes().splitlines()]


def _role(lines: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    return [x for x in lines if x["role"] == role]


def _wall(value: str) -> float:
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None, value
    return parsed.timestamp()


class SourceMap:
    """Session audio offsets -> source seconds, by chunk content."""

    def __init__(self, source: npt.NDArray[np.int16]) -> None:
        raw = source.tobytes()
        step = CHUNK * 2
        self._index: dict[bytes, int] = {}
        for i in range(len(raw) // step):
            self._index.setdefault(raw[i * step:(i + 1) * step], i)

    def seconds(self, record: SessionRecord, offset_ms: float, end: bool = False) -> float:
        audio = record.audio
        step = CHUNK * 2
        j = int(offset_ms // CHUNK_MS)
        if end and offset_ms % CHUNK_MS == 0:
            j -= 1  # the last sample before an end on a chunk edge
        j = max(0, min(j, len(audio) // step - 1))
        k = self._index.get(audio[j * step:(j + 1) * step])
        assert k is not None, "the server got audio that is not in the source"
        into = offset_ms - j * CHUNK_MS
        return (k * CHUNK_MS + into) / 1000


def _speech_offsets(server: DevServer) -> dict[str, tuple[SessionRecord, float, float]]:
    """item_id -> (its session, audio_start_ms, audio_end_ms) as the server reported them."""
    found: dict[str, tuple[SessionRecord, float, float]] = {}
    for record in server.sessions():
        starts: dict[str, float] = {}
        for event in record.server_events:
            if event.get("type") == "input_audio_buffer.speech_started":
                starts[event["item_id"]] = event["audio_start_ms"]
            elif event.get("type") == "input_audio_buffer.speech_stopped":
                item = event["item_id"]
                found[item] = (record, starts[item], event["audio_end_ms"])
    return found


def _check_user_times(lines: list[dict[str, Any]], server: DevServer,
                      source: npt.NDArray[np.int16], talk: list[tuple[float, float]],
                      spawned_wall: float) -> None:
    """Each user line is one talk interval, timed where its audio was captured."""
    smap = SourceMap(source)
    offsets = _speech_offsets(server)
    t0s: list[float] = []
    spans: list[tuple[float, float]] = []
    for line in lines:
        record, start_ms, end_ms = offsets[line["item_id"]]
        assert line["session_id"] == record.id
        start, end = _wall(line["start"]), _wall(line["end"])
        assert start < end
        src_start = smap.seconds(record, start_ms)
        src_end = smap.seconds(record, end_ms, end=True)
        t0s += [start - src_start, end - src_end]
        spans.append((src_start, src_end))
    print(f"capture-to-wall mapping: {len(lines)} lines, T0 spread "
          f"{(max(t0s) - min(t0s)) * 1000:.0f} ms")
    assert max(t0s) - min(t0s) < SAME_T0_S, t0s
    t0 = sum(t0s) / len(t0s)
    assert spawned_wall <= t0 + SAME_T0_S
    assert t0 <= min(_wall(x["start"]) for x in lines)
    # Each line covers exactly one talk interval, every interval has its line.
    covered = []
    for line in lines:
        start, end = _wall(line["start"]) - t0, _wall(line["end"]) - t0
        hits = [i for i, (a, b) in enumerate(talk) if start < b and end > a]
        assert len(hits) == 1, (line, start, end)
        a, b = talk[hits[0]]
        assert start <= a + SAME_T0_S and end >= b - SAME_T0_S, (line, start, end)
        assert start >= a - PADDING_S - SAME_T0_S and end <= b + TRAILING_S + SAME_T0_S
        covered += hits
    assert sorted(covered) == list(range(len(talk))), covered


class Reader(threading.Thread):
    """A program reading the transcript socket: every line it gets."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.lines: list[bytes] = []
        self.connected = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            while not self.stop.is_set():
                try:
                    sock.connect(str(self.path))
                    break
                except OSError:
                    self.stop.wait(0.05)
            else:
                return
            self.connected.set()
            sock.settimeout(0.2)
            buf = b""
            while not self.stop.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                buf += data
                *whole, buf = buf.split(b"\n")
                self.lines.extend(whole)


def test_each_utterance_and_answer_reaches_the_file_and_the_socket(
        server: DevServer, tmp_path: Path) -> None:
    talk = [(1.0, 2.4), (4.4, 5.8), (7.8, 9.2)]
    source = speech(40.0, RATE, talk=talk)
    jsonl, sock = tmp_path / "t.jsonl", tmp_path / "t.sock"
    config = wav_config(tmp_path, server.url, source, {
        "session": {"language": "en"},
        "transcripts": {"jsonl_file": str(jsonl), "socket": str(sock)},
        "health": {"status_file": str(tmp_path / "status.json")},
    })
    reader = Reader(sock)
    spawned = time.time()
    with running_daemon(tmp_path, config) as daemon:
        reader.start()
        try:
            assert reader.connected.wait(15), daemon.log()
            assert wait_until(lambda: len(_role(_lines(jsonl), "user")) >= 3
                              and len(_role(_lines(jsonl), "assistant")) >= 3, 40), \
                (daemon.log(), _lines(jsonl))
            n = len(_lines(jsonl))
            assert wait_until(lambda: len(reader.lines) >= n, 5)
            assert daemon.stop() == 0, daemon.log()
        finally:
            reader.stop.set()
            reader.join(5)
    lines = _lines(jsonl)
    assert not sock.exists()  # removed at stop
    assert reader.lines[:len(lines)] == jsonl.read_bytes().splitlines()[:len(reader.lines)]
    users, answers = _role(lines, "user"), _role(lines, "assistant")
    assert len(users) == 3, lines
    for line in lines:
        assert set(line) == {"text", "role", "item_id", "session_id", "start", "end",
                             "language", "model"}
        assert line["language"] == "en"
        assert "devserver cannot transcribe" in line["text"] or line["role"] == "assistant"
    assert {x["model"] for x in users} == {SessionSettings().transcription_model}
    _check_user_times(users, server, source, talk, spawned)
    responses = {r.item_id: r for s in server.sessions() for r in s.responses}
    for answer in answers:
        assert answer["model"] == ServerSettings().model
        assert answer["item_id"] in responses
        assert answer["text"].strip() == responses[answer["item_id"]].transcript.strip()
        assert _wall(answer["start"]) <= _wall(answer["end"])
    # An answer follows the utterance it answers.
    assert _wall(answers[0]["start"]) >= _wall(users[0]["end"]) - SAME_T0_S
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["counters"]["transcripts_delivered"] == len(lines)
    assert status["counters"]["transcripts_dropped"] == 0


def test_a_reconnect_with_replay_delivers_no_utterance_twice(server: DevServer,
                                                              tmp_path: Path) -> None:
    talk = [(1.0, 2.4), (4.0, 6.0), (8.5, 9.9), (11.5, 12.9)]
    source = speech(40.0, RATE, talk=talk)
    jsonl = tmp_path / "t.jsonl"
    config = wav_config(tmp_path, server.url, source, {
        "session": {"mode": "transcribe"},
        "transcripts": {"jsonl_file": str(jsonl)},
    })
    spawned = time.time()

    def speech_started(s: DevServer) -> int:
        return sum(1 for r in s.sessions() for e in r.server_events
                   if e.get("type") == "input_audio_buffer.speech_started")

    with running_daemon(tmp_path, config) as daemon:
        # The second utterance has begun: the server goes away in the middle of it, the
        # daemon replays what the lost session may not have read to the next one.
        assert server.wait_for(lambda s: speech_started(s) >= 2, 30), daemon.log()
        server.close_all(1011, "restart")
        assert server.wait_for(lambda s: len(s.sessions()) >= 2, 15), daemon.log()
        assert wait_until(lambda: len(_lines(jsonl)) >= 4, 40), (daemon.log(), _lines(jsonl))
        assert daemon.stop() == 0, daemon.log()
    assert "replaying" in daemon.log() or "buffered to replay" in daemon.log()
    sessions = server.sessions()
    account = account_audio(source, [r.audio for r in sessions])
    assert account.duplicated > 0, "nothing was replayed: the test proves nothing"
    assert account.lost == 0
    lines = _lines(jsonl)
    assert len({x["item_id"] for x in lines}) == len(lines)
    assert len({x["session_id"] for x in lines}) == 2
    _check_user_times(lines, server, source, talk, spawned)


def test_a_reload_that_sets_a_transcript_file_starts_writing_it(server: DevServer,
                                                                 tmp_path: Path) -> None:
    talk = [(5.0, 6.4), (8.0, 9.4)]
    source = speech(30.0, RATE, talk=talk)
    jsonl = tmp_path / "later.jsonl"
    config = wav_config(tmp_path, server.url, source, {"session": {"mode": "transcribe"}})
    with running_daemon(tmp_path, config) as daemon:
        assert daemon.wait_log(r"streaming to", 15), daemon.log()
        changed = merge(config, {"transcripts": {"jsonl_file": str(jsonl)}})
        daemon.config_path.write_text(yaml.safe_dump(changed))
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_log(r"configuration reloaded", 10), daemon.log()
        assert wait_until(lambda: len(_lines(jsonl)) >= 2, 30), (daemon.log(), _lines(jsonl))
        assert daemon.stop() == 0, daemon.log()
    lines = _lines(jsonl)
    assert [x["role"] for x in lines] == ["user", "user"]
    assert "transcripts to" in daemon.log()
