"""The speech gate with the real parts: ALSA FIFO microphone, the daemon, the devserver.

One minute of a room (a fan with mains hum, typing) holding three spoken sentences
(espeak-ng, about 10 s in all). With `stream.gate: vad` the server must get a fraction of
the minute, and each sentence whole: every streamed segment is located in the source by
exact sample matching (the 24 kHz microphone makes the capture chain an identity), and the
segment holding a sentence must start at least about a pre-roll before its first syllable
and run past its end. The microphone runs faster than real time: the gate counts audio,
not seconds.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from alsa_fixtures import fake_microphone
from daemon_harness import FAST, merge, running_daemon
from fakes import wait_until
from signals import fan_noise, keyboard_clicks, speech

from edgevoice.devserver import DevServer
from edgevoice.devserver.records import SessionRecord

pytestmark = pytest.mark.integration

RATE = 24000
SOURCE_S = 60.0
SPEED = 6.0  # seconds of audio the microphone delivers per second
PREROLL_MS = 300
SENTENCES = [  # about 3.3 s each
    (9.0, "Please turn on the kitchen lights and set a timer for ten minutes."),
    (27.0, "What is the weather going to be like tomorrow morning in the city?"),
    (46.0, "Remind me to call my sister when I get home from work tonight."),
]


def spoken(text: str) -> npt.NDArray[np.int16]:
    """The sentence once: `speech` loops it to the length asked for."""
    looped = speech(12.0, RATE, text=text)
    raw = looped.tobytes()
    again = raw.find(raw[:4800], 2)
    while again > 0 and again % 2:
        again = raw.find(raw[:4800], again + 1)
    return looped[: again // 2] if again > 0 else looped[: round(3.3 * RATE)]


def scene() -> tuple[npt.NDArray[np.int16], list[tuple[int, int]]]:
    """The minute of room with the sentences in it, and each sentence's first and last
    loud sample (5 ms frames above -40 dBFS in the clean speech)."""
    room = fan_noise(SOURCE_S, RATE, rms=150.0) + keyboard_clicks(SOURCE_S, RATE,
                                                                   amplitude=3000.0)
    spans = []
    for start_s, text in SENTENCES:
        voice = spoken(text).astype(np.float64)
        frames = voice[: len(voice) // 120 * 120].reshape(-1, 120)
        loud = np.nonzero(np.sqrt(np.mean(frames ** 2, axis=1)) > 300)[0]
        at = round(start_s * RATE)
        room[at:at + len(voice)] += voice
        spans.append((at + int(loud[0]) * 120, at + (int(loud[-1]) + 1) * 120))
    return np.clip(np.round(room), -32768, 32767).astype(np.int16), spans


def appended_chunks(record: SessionRecord) -> list[bytes]:
    return list(record.audio_chunks)


def segments(source: npt.NDArray[np.int16], chunks: list[bytes]) -> list[tuple[int, int]]:
    """[start, end) source samples of each run of consecutive appended chunks."""
    raw = source.tobytes()
    out: list[list[int]] = []
    for data in chunks:
        at = raw.find(data)
        while at >= 0 and at % 2:
            at = raw.find(data, at + 1)
        assert at >= 0, "the server got audio that is not in the source"
        start, end = at // 2, at // 2 + len(data) // 2
        if out and out[-1][1] == start:
            out[-1][1] = end
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def run_scene(tmp_path: Path, server: DevServer, source: npt.NDArray[np.int16],
              extra: dict[str, Any]) -> tuple[list[SessionRecord], str]:
    with fake_microphone(tmp_path / "mic", rate=RATE, channels=1, signal=source, loop=False,
                         set_environ=False, speed=SPEED) as mic:
        config = merge(merge(FAST, {"audio": {"device": mic.device, "rate": RATE,
                                              "channels": 1},
                                    "server": {"url": server.url},
                                    # The devserver's VAD is a level threshold; this one
                                    # (-24 dBFS frames) ignores the fan and the typing, as
                                    # the real service's model-based VAD does.
                                    "session": {"vad_threshold": 0.9},
                                    "stream": {"preroll_ms": PREROLL_MS}}), extra)
        with running_daemon(tmp_path, config, env=mic.env) as daemon:
            assert mic.writer is not None
            # The last sentence ends 10 s of audio before the source does: by the time the
            # writer is done, its turn is long closed.
            assert wait_until(mic.writer.exhausted.is_set, SOURCE_S / SPEED + 30), daemon.log()
            assert daemon.stop() == 0, daemon.log()
            log = daemon.log()
        mic.check_writer()
    return server.sessions(), log


def client_types(record: SessionRecord) -> list[str]:
    return [str(e.get("type")) for e in record.client_events]


def server_types(record: SessionRecord) -> list[str]:
    return [str(e.get("type")) for e in record.server_events]


@pytest.mark.parametrize("vad", ["energy", "micro"])
def test_vad_gate_streams_the_sentences_whole_and_little_else(
        server: DevServer, tmp_path: Path, vad: str) -> None:
    source, spans = scene()
    sessions, log = run_scene(tmp_path, server, source,
                              {"stream": {"gate": "vad", "vad": vad}})
    assert len(sessions) == 1, log
    record = sessions[0]
    chunks = appended_chunks(record)
    streamed_s = sum(len(c) for c in chunks) / 2 / RATE
    captured_s = SOURCE_S
    print(f"gate vad/{vad}: streamed {streamed_s:.1f} s of {captured_s:.0f} s "
          f"({100 * streamed_s / captured_s:.1f} %)")
    assert streamed_s < 20.0
    found = segments(source, chunks)
    for onset, end in spans:
        holding = [s for s in found if s[0] <= onset < s[1]]
        assert holding, f"no segment holds the onset at {onset / RATE:.2f} s: {found}"
        start, stop = holding[0]
        lead_ms = (onset - start) * 1000 / RATE
        print(f"  sentence at {onset / RATE:.2f} s: sent from {lead_ms:.0f} ms before its "
              f"onset to {(stop - end) * 1000 / RATE:.0f} ms after its end")
        assert lead_ms >= PREROLL_MS - 60, f"first syllable cut: {lead_ms:.0f} ms lead"
        assert stop >= end, f"sentence cut at {stop / RATE:.2f} s, ends {end / RATE:.2f} s"
    # The server's VAD closed each sentence's turn.
    stopped = server_types(record).count("input_audio_buffer.speech_stopped")
    assert stopped >= len(spans), " ".join(server_types(record))
    assert "error" not in server_types(record)


def test_turn_detection_none_commits_each_utterance(server: DevServer,
                                                    tmp_path: Path) -> None:
    source, spans = scene()
    sessions, log = run_scene(tmp_path, server, source, {
        "stream": {"gate": "vad"},
        "session": {"mode": "conversation", "turn_detection": "none"}})
    assert len(sessions) == 1, log
    record = sessions[0]
    kinds = client_types(record)
    assert kinds.count("input_audio_buffer.commit") == len(spans), kinds
    assert kinds.count("response.create") == len(spans), kinds
    # Each commit closes at least 100 ms of audio, and is followed by its response.create.
    appended = 0
    for event in record.client_events:
        kind = event.get("type")
        if kind == "input_audio_buffer.append":
            audio = event.get("audio")
            appended += audio if isinstance(audio, int) else len(base64.b64decode(str(audio)))
        elif kind == "input_audio_buffer.commit":
            assert appended >= RATE * 2 // 10, f"commit of {appended} bytes"
            appended = 0
    assert appended == 0  # nothing left uncommitted after the last sentence
    done = server_types(record).count("response.done")
    assert done == len(spans), server_types(record)
    assert "error" not in server_types(record), record.server_events
