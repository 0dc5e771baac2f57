"""The speech gate's decisions, chunk by chunk, with a scripted detector and a fake clock.

One component at a time (the detectors are scripted: what they decide is test_vad.py's
business); the whole chain with the real daemon is test_gate_e2e.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from alsa_fixtures import write_wav
from fakes import FakeClock
from signals import fan_noise, speech
from test_supervisor_unit import LOUD, Rig, connected

from edgevoice.audio.vad import EnergyVad
from edgevoice.audio.wav_source import WavSource
from edgevoice.daemon.app import CAPTURE_IDLE_WAKE_S, speaker_busy
from edgevoice.daemon.backlog import AudioChunk, ChunkBacklog, ClientEvent, QueuedItem
from edgevoice.daemon.backoff import Backoff
from edgevoice.daemon.capture_worker import CaptureConfig, CaptureWorker
from edgevoice.daemon.cue_mask import CUE_MARGIN_S, CueMask
from edgevoice.daemon.echo_gate import EchoGate
from edgevoice.daemon.speech_gate import (
    QUESTION_WAIT_MS,
    WAKE_LAG_MS,
    WAKE_WORD_MS,
    GateMode,
    SpeechGate,
    TurnDetection,
    build_speech_gate,
)
from edgevoice.daemon.stats import Stats
from edgevoice.daemon.uplink import UTTERANCE_GAP_S
from edgevoice.realtime import protocol
from edgevoice.settings import settings_from_mapping

CHUNK_MS = 20


class ScriptedVad:
    """Says speech for the chunk numbers in `speech` (counted from 0 as they come)."""

    def __init__(self, speech: Iterable[int] = (), confirm_ms: int = 40) -> None:
        self.speech = set(speech)
        self.confirm_ms = confirm_ms
        self.calls = 0
        self.resets = 0

    def is_speech(self, pcm24k: npt.NDArray[np.int16]) -> bool:
        n = self.calls
        self.calls += 1
        return n in self.speech

    def reset(self) -> None:
        self.resets += 1


class ScriptedWake:
    phrase = "okay nabu"

    def __init__(self, fire_at: Iterable[int] = ()) -> None:
        self.fire_at = set(fire_at)
        self.calls = 0
        self.resets = 0

    def process(self, pcm24k: npt.NDArray[np.int16]) -> bool:
        n = self.calls
        self.calls += 1
        return n in self.fire_at

    def reset(self) -> None:
        self.resets += 1


def chunk(seq: int) -> AudioChunk:
    """A chunk whose samples all hold its number: sent audio names its source exactly."""
    pcm = np.full(24 * CHUNK_MS, seq, dtype=np.int16).tobytes()
    return AudioChunk(pcm, -30.0, 1000.0 + seq * CHUNK_MS / 1000, seq)


def make_gate(vad: ScriptedVad, *, mode: GateMode = "vad", preroll_ms: int = 100,
              hangover_ms: int = 200, max_utterance_s: float = 30.0,
              turn: TurnDetection = "server_vad", conversation: bool = True,
              **kwargs: Any) -> SpeechGate:
    return SpeechGate(mode=mode, chunk_ms=CHUNK_MS, preroll_ms=preroll_ms,
                      hangover_ms=hangover_ms, max_utterance_s=max_utterance_s,
                      turn_detection=turn, conversation=conversation, vad=vad, **kwargs)


def feed(gate: SpeechGate, seqs: Iterable[int]) -> list[QueuedItem]:
    out: list[QueuedItem] = []
    for seq in seqs:
        out.extend(gate.process(chunk(seq)))
    return out


def sent_seqs(items: list[QueuedItem]) -> list[int]:
    return [i.seq for i in items if isinstance(i, AudioChunk)]


def events(items: list[QueuedItem]) -> list[str]:
    return [i.event["type"] for i in items if isinstance(i, ClientEvent)]


def test_closed_sends_nothing_and_the_preroll_is_the_source_bit_exact() -> None:
    counted: dict[str, int] = {}
    vad = ScriptedVad(range(50, 70), confirm_ms=40)

    def count(name: str, n: int) -> None:
        counted[name] = counted.get(name, 0) + n

    gate = make_gate(vad, preroll_ms=100, hangover_ms=200, count=count)
    assert feed(gate, range(50)) == []
    assert gate.state == "closed"
    out = feed(gate, [50])
    # Detected at chunk 50 after two loud chunks (confirm 40 ms): the onset is chunk 49;
    # 100 ms (5 chunks) before it, through the chunk that decided.
    assert sent_seqs(out) == list(range(44, 51))
    for item in out:
        assert isinstance(item, AudioChunk) and item.utterance
        assert item.pcm == chunk(item.seq).pcm
    assert gate.state == "open"
    # Everything before the pre-roll was dropped, never sent: counted as gated.
    assert counted == {"chunks_gated": 44}
    assert gate.stats.chunks_gated == 44


def test_the_hangover_sends_exactly_hangover_ms_after_the_last_speech() -> None:
    vad = ScriptedVad(range(10, 30))
    gate = make_gate(vad, preroll_ms=0, hangover_ms=200)
    out = feed(gate, range(100))
    seqs = sent_seqs(out)
    assert seqs[0] == 9 and seqs == list(range(9, 40))  # 10 quiet chunks = 200 ms
    assert events(out) == []  # a server VAD ends the turn itself
    assert gate.state == "closed" and gate.stats.utterances == 1


def test_speech_during_the_hangover_keeps_the_utterance_going() -> None:
    vad = ScriptedVad([*range(10, 20), *range(25, 30)])
    gate = make_gate(vad, preroll_ms=0, hangover_ms=200)
    seqs = sent_seqs(feed(gate, range(60)))
    assert seqs == list(range(9, 40))
    assert gate.stats.utterances == 1


def test_max_utterance_cuts_clears_the_server_turn_and_waits_for_a_pause() -> None:
    vad = ScriptedVad([*range(5, 200), *range(210, 215)])
    gate = make_gate(vad, preroll_ms=0, max_utterance_s=1.0)
    out = feed(gate, range(200))
    assert sent_seqs(out) == list(range(4, 54))  # 50 chunks = 1 s
    assert events(out) == ["input_audio_buffer.clear"]
    assert isinstance(out[-1], ClientEvent)  # behind the last chunk
    assert gate.stats.cuts == 1
    # Speech went on: no reopening until the detector heard a pause (chunk 200).
    more = feed(gate, range(200, 215))
    assert sent_seqs(more)[0] == 209  # the pre-roll (confirm) before chunk 210


@pytest.mark.parametrize("conversation", [True, False])
def test_turn_detection_none_commits_behind_the_audio(conversation: bool) -> None:
    vad = ScriptedVad([*range(10, 20), *range(60, 70)])
    gate = make_gate(vad, turn="none", conversation=conversation, hangover_ms=100)
    out = feed(gate, range(100))
    expected = (["input_audio_buffer.commit", "response.create"] if conversation
                else ["input_audio_buffer.commit"])
    assert events(out) == expected * 2
    # Each commit comes right after the last chunk of its utterance.
    kinds = ["a" if isinstance(i, AudioChunk) else i.event["type"] for i in out]
    first_commit = kinds.index("input_audio_buffer.commit")
    assert kinds[first_commit - 1] == "a"
    assert all(k == "a" for k in kinds[:first_commit])
    assert out[first_commit - 1].seq == 24  # type: ignore[union-attr]
    assert gate.stats.commits == 2
    ids = [i.event["event_id"] for i in out if isinstance(i, ClientEvent)]
    assert len(set(ids)) == len(ids) and all(i.startswith("evt_") for i in ids)


def test_an_utterance_under_100_ms_is_cleared_not_committed() -> None:
    vad = ScriptedVad([10], confirm_ms=0)
    gate = make_gate(vad, turn="none", preroll_ms=0, hangover_ms=40)
    out = feed(gate, range(30))
    assert sent_seqs(out) == [10, 11, 12]  # the speech chunk, then the 40 ms hangover
    assert len(sent_seqs(out)) * CHUNK_MS < protocol.MIN_COMMIT_MS
    assert events(out) == ["input_audio_buffer.clear"]
    assert gate.stats.commits == 0


def test_semantic_vad_keeps_sending_until_the_server_says_speech_stopped() -> None:
    vad = ScriptedVad(range(10, 20))
    gate = make_gate(vad, turn="semantic_vad", preroll_ms=0, hangover_ms=200)
    out = feed(gate, range(15))
    gate.server_speech_started()
    out += feed(gate, range(15, 80))
    assert sent_seqs(out) == list(range(9, 80))  # well past the 200 ms hangover
    assert gate.state == "hangover"
    gate.server_speech_stopped()
    out = feed(gate, range(80, 90))
    assert sent_seqs(out) == [80]
    assert gate.state == "closed"


def test_semantic_vad_without_server_speech_ends_at_the_hangover() -> None:
    vad = ScriptedVad(range(10, 20))
    gate = make_gate(vad, turn="semantic_vad", preroll_ms=0, hangover_ms=200)
    assert sent_seqs(feed(gate, range(60))) == list(range(9, 30))


def test_semantic_wait_is_bounded_by_max_utterance() -> None:
    vad = ScriptedVad(range(10, 20))
    gate = make_gate(vad, turn="semantic_vad", preroll_ms=0, max_utterance_s=2.0)
    gate.server_speech_started()
    out = feed(gate, range(300))
    assert len(sent_seqs(out)) == 100
    assert events(out) == ["input_audio_buffer.clear"]


def test_after_a_cut_a_stale_server_speech_flag_does_not_hold_the_next_utterance() -> None:
    """A cut clears the server's buffer: no speech_stopped comes for it. A later local
    trigger the server never calls speech must end at the hangover, not at another cut."""
    vad = ScriptedVad([*range(10, 20), *range(200, 210)])
    gate = make_gate(vad, turn="semantic_vad", preroll_ms=0, hangover_ms=200,
                     max_utterance_s=2.0)
    gate.server_speech_started()
    out = feed(gate, range(200))
    assert events(out) == ["input_audio_buffer.clear"] and gate.stats.cuts == 1
    assert sent_seqs(feed(gate, range(200, 400))) == list(range(199, 220))


def wake_gate(vad: ScriptedVad, wake: ScriptedWake, **kwargs: Any) -> SpeechGate:
    return make_gate(vad, mode="wakeword", wake=wake, preroll_ms=100, hangover_ms=200,
                     **kwargs)


def test_wake_word_not_sent_starts_after_the_detection() -> None:
    woken: list[int] = []
    vad = ScriptedVad([*range(100, 140), *range(160, 200)])
    wake = ScriptedWake([140])
    gate = wake_gate(vad, wake, on_wake=lambda: woken.append(1))
    assert feed(gate, range(140)) == []  # speech without the wake word opens nothing
    assert gate.state == "listening for wake word"
    out = feed(gate, range(140, 260))
    seqs = sent_seqs(out)
    # The wake word's own chunks stay local (its speech ended at 139, the detection came
    # in the quiet after it); the pause before the question (160) does not end the turn;
    # the question goes out whole and ends after the hangover.
    assert seqs == list(range(140, 210))
    assert woken == [1] and gate.stats.wake_words == 1


def test_wake_word_sent_starts_at_the_detectors_onset_with_preroll() -> None:
    vad = ScriptedVad([*range(100, 150), *range(170, 190)])
    wake = ScriptedWake([140])
    gate = wake_gate(vad, wake, send_wake_word=True)
    seqs = sent_seqs(feed(gate, range(250)))
    # Onset chunk 100 (decided there; confirm 40 ms = 2 chunks), pre-roll 100 ms; the
    # question ends 200 ms after its last speech (189).
    assert seqs[0] == 100 - 2 - 5 + 1
    assert seqs == list(range(seqs[0], 200))


def test_a_question_said_without_a_pause_keeps_its_first_syllable() -> None:
    """The model fires up to WAKE_LAG_MS after the word: speech all through the lag
    cannot be split, so the lag window goes out (the word's tail with the question)."""
    vad = ScriptedVad(range(100, 200))
    gate = wake_gate(vad, ScriptedWake([140]))
    seqs = sent_seqs(feed(gate, range(141)))
    assert seqs == list(range(140 - WAKE_LAG_MS // CHUNK_MS, 141))


def test_a_question_after_a_short_pause_starts_at_its_onset() -> None:
    vad = ScriptedVad([*range(100, 134), *range(137, 200)])  # 60 ms pause, then the question
    gate = wake_gate(vad, ScriptedWake([140]))
    seqs = sent_seqs(feed(gate, range(141)))
    assert seqs == list(range(136, 141))  # from the onset (137) less the confirmation


def test_wake_word_sent_from_its_start_despite_a_pause_between_its_words() -> None:
    vad = ScriptedVad([*range(100, 110), *range(114, 140), *range(160, 180)])  # okay . nabu
    gate = wake_gate(vad, ScriptedWake([140]), send_wake_word=True)
    seqs = sent_seqs(feed(gate, range(141)))
    assert seqs[0] == 100 - 2 - 5 + 1


def test_wake_word_sent_without_an_onset_reaches_back_a_wake_words_length() -> None:
    vad = ScriptedVad(range(150, 170))  # the detector never heard the word itself
    wake = ScriptedWake([140])
    gate = wake_gate(vad, wake, send_wake_word=True)
    seqs = sent_seqs(feed(gate, range(141)))
    back = WAKE_WORD_MS // CHUNK_MS + (100 + 40) // CHUNK_MS
    assert seqs == list(range(141 - back, 141))


def test_a_wake_word_without_a_question_ends_and_clears() -> None:
    vad = ScriptedVad(range(130, 141))
    wake = ScriptedWake([140])
    gate = wake_gate(vad, wake, turn="none")
    out = feed(gate, range(500))
    assert sent_seqs(out)[-1] == 140 + QUESTION_WAIT_MS // CHUNK_MS
    assert events(out) == ["input_audio_buffer.clear"]
    assert gate.state == "listening for wake word"


def test_the_cue_heard_by_the_microphone_is_no_question() -> None:
    """The echo gate lets the wake cue through (cue_mask.py): its tones, heard up to
    cue + margin after the detection, must not count as the question, or a pause after
    the beep would close the turn (here: commit and an answer to a beep)."""
    vad = ScriptedVad([*range(130, 141), *range(152, 160)])  # the word, then the cue
    gate = wake_gate(vad, ScriptedWake([140]), turn="none", on_wake=lambda: 0.2)
    out = feed(gate, range(500))
    assert events(out) == ["input_audio_buffer.clear"]  # no question came
    assert gate.stats.commits == 0


def test_wake_word_turn_none_commits_and_asks_for_an_answer() -> None:
    vad = ScriptedVad([*range(130, 141), *range(160, 200)])
    wake = ScriptedWake([140])
    gate = wake_gate(vad, wake, turn="none")
    out = feed(gate, range(300))
    assert events(out) == ["input_audio_buffer.commit", "response.create"]


def test_follow_up_opens_on_speech_without_the_wake_word_until_it_expires() -> None:
    clock = FakeClock()
    vad = ScriptedVad([*range(10, 20), *range(100, 110)])
    gate = wake_gate(vad, ScriptedWake(), follow_up_s=5.0, clock=clock)
    assert feed(gate, range(30)) == []  # no wake word, no answer yet: nothing
    gate.answer_finished()
    assert gate.state == "follow-up"
    clock.advance(2.0)
    out = feed(gate, range(30, 50))  # no speech: nothing, window still open
    assert out == [] and gate.state == "follow-up"
    vad.speech |= set(range(50, 60))
    out = feed(gate, range(50, 90))
    assert sent_seqs(out)[0] == 50 - 2 - 5 + 1
    assert gate.state == "listening for wake word"  # one follow-up per answer
    gate.answer_finished()
    clock.advance(5.1)
    assert gate.state == "listening for wake word"
    assert feed(gate, range(90, 130)) == []  # chunks 100-109 are speech: too late


def test_the_cap_ends_the_utterance_with_a_commit_and_stays_closed() -> None:
    allow = [True]
    vad = ScriptedVad(range(10, 200))
    gate = make_gate(vad, turn="none", allowed=lambda: allow[0])
    out = feed(gate, range(40))
    assert sent_seqs(out)
    allow[0] = False
    out = feed(gate, range(40, 100))
    assert sent_seqs(out) == []
    assert events(out) == ["input_audio_buffer.commit", "response.create"]
    assert gate.state == "capped" and gate.reason == "daily cap reached"
    allow[0] = True
    feed(gate, range(100, 101))
    assert gate.state != "capped"


def test_always_passes_everything_until_the_cap() -> None:
    allow = [True]
    gate = SpeechGate(mode="always", chunk_ms=CHUNK_MS, preroll_ms=300, hangover_ms=700,
                      max_utterance_s=30.0, turn_detection="server_vad", conversation=True,
                      allowed=lambda: allow[0])
    out = feed(gate, range(10))
    assert sent_seqs(out) == list(range(10))
    assert not any(isinstance(i, AudioChunk) and i.utterance for i in out)
    allow[0] = False
    assert feed(gate, range(10, 20)) == [] and gate.state == "capped"


def test_reset_on_mute_forgets_the_utterance_without_an_event() -> None:
    vad = ScriptedVad(range(10, 100))
    gate = make_gate(vad, turn="none")
    feed(gate, range(30))
    gate.reset()
    assert gate.state == "closed" and vad.resets == 1
    vad.speech = set()
    assert feed(gate, range(30, 80)) == []  # no commit for the audio before the mute


def test_chunks_held_by_the_echo_gate_pass_time_quietly() -> None:
    vad = ScriptedVad(range(10, 20))
    gate = make_gate(vad, preroll_ms=0, hangover_ms=200)
    out = feed(gate, range(20))
    for seq in range(20, 30):
        out += gate.held(chunk(seq))
    assert sent_seqs(out) == list(range(9, 20))
    assert gate.state == "closed"


def test_the_wake_cue_does_not_make_the_echo_gate_hold_the_question() -> None:
    clock = FakeClock()

    class Speaker:
        playing = False
        last: float | None = None

    speaker = Speaker()
    mask = CueMask(lambda: speaker.playing, lambda: speaker.last, clock=clock)
    echo = EchoGate(mode="half_duplex", tail_ms=300, barge_in_db=None, preroll_ms=0,
                    chunk_ms=CHUNK_MS, playing=mask.playing, last_played_at=mask.last_played_at,
                    playback_level_dbfs=lambda: -20.0, on_barge_in=lambda: None, clock=clock)
    mask.cue_started(0.2)
    passed = []
    for seq in range(20):  # the cue plays (and ends) while the person asks
        speaker.playing = seq < 10
        if seq < 10:
            speaker.last = clock()
        passed += echo.process(chunk(seq))
        clock.advance(CHUNK_MS / 1000)
    assert [c.seq for c in passed] == list(range(20))
    # A real answer after the cue is held as always.
    clock.advance(CUE_MARGIN_S)
    speaker.playing, speaker.last = True, clock()
    assert echo.process(chunk(20)) == []


def test_a_rollover_waits_for_the_end_of_an_utterance() -> None:
    rig = Rig(expires_in_s=100.0)
    try:
        first = connected(rig)
        first.speech_active = True
        rig.pump(lambda: rig.uplink.pending is not None)
        first.speech_active = False  # the server thinks it quiet...
        seq = rig.capture.next_seq
        rig.capture.next_seq += 1
        rig.backlog.put(AudioChunk(seq.to_bytes(4, "little") * 240, -70.0, rig.clock(), seq,
                                   utterance=True))  # ...but the gate's utterance goes on
        rig.uplink.step(0.0)
        assert rig.uplink.target is first and rig.appended(0) == [seq]
        rig.uplink.step(0.0)  # a capture hiccup inside the utterance: no idle switch
        assert rig.uplink.target is first
        rig.clock.advance(UTTERANCE_GAP_S)
        rig.uplink.step(0.0)  # nothing flows for long (the gate closed): a quiet moment
        assert rig.uplink.target is rig.sessions[1]
        rig.capture_chunk(LOUD)
        rig.send_all()
        assert rig.appended(1) == [seq + 1]
    finally:
        for session in rig.sessions:
            session.abort()


def test_a_mute_forgets_the_sent_commit_with_its_audio() -> None:
    """After a mute a replay must not send the gate's commit and response.create alone:
    the server would commit nothing and answer nothing that was asked."""
    rig = Rig(expires_in_s=100.0)
    try:
        connected(rig)
        rig.capture_chunk(LOUD)
        rig.backlog.put(ClientEvent({"type": "input_audio_buffer.commit", "event_id": "e1"}))
        rig.backlog.put(ClientEvent({"type": "response.create", "event_id": "e2"}))
        rig.send_all()
        assert rig.transports[0].types_sent()[-2:] == ["input_audio_buffer.commit",
                                                        "response.create"]
        assert rig.uplink.forget_audio() == 1
        rig.uplink.detach(replay_since=0.0)  # the session is lost: replay what it got
        rig.uplink.step(0.0)
        assert len(rig.backlog) == 0
    finally:
        for session in rig.sessions:
            session.abort()


def build(**stream: Any) -> Callable[[], SpeechGate]:
    settings = settings_from_mapping({"stream": stream, "session": {
        "turn_detection": "server_vad", "silence_duration_ms": 500}})
    return lambda: build_speech_gate(settings)


def test_build_follows_the_settings() -> None:
    gate = build(gate="vad", vad="energy")()
    assert gate.mode == "vad" and gate.state == "closed"
    assert build(gate="always")().state == "open"
    micro = build(gate="vad", vad="micro")()
    assert type(micro._vad).__name__ == "MicroVad"


def test_the_cap_held_before_the_gate_still_ends_the_turn() -> None:
    """The cap may hold chunks in a stage before the gate: `held` must end the utterance
    (commit) and show the cap, without counting the chunk twice."""
    allow = [True]
    counted: list[str] = []
    vad = ScriptedVad(range(10, 200))
    gate = make_gate(vad, turn="none", allowed=lambda: allow[0],
                     count=lambda name, n: counted.append(name))
    assert sent_seqs(feed(gate, range(40)))
    allow[0] = False
    out = gate.held(chunk(40))
    assert events(out) == ["input_audio_buffer.commit", "response.create"]
    assert gate.state == "capped" and "chunks_capped" not in counted


def test_the_capture_chain_gates_resets_on_mute_and_swaps_between_chunks(
        tmp_path: Path) -> None:
    """The real capture worker, WAV source and energy detector: a sentence in a fan's
    noise goes out as one utterance with its commit; a mute resets the gate; a new gate
    (a reload) takes over at the next chunk."""
    rate = 24000
    room = fan_noise(6.0, rate, rms=150.0)
    voice = speech(2.5, rate, talk=[(0.0, 2.0)]).astype(np.float64)
    room[rate:rate + len(voice)] += voice
    wav = write_wav(tmp_path / "room.wav",
                    np.clip(np.round(room), -32768, 32767).astype(np.int16), rate)
    stats = Stats()
    backlog = ChunkBacklog(10_000)

    def gate() -> SpeechGate:
        return SpeechGate(mode="vad", chunk_ms=CHUNK_MS, preroll_ms=300, hangover_ms=400,
                          max_utterance_s=30.0, turn_detection="none", conversation=False,
                          vad=EnergyVad(CHUNK_MS), count=stats.add)

    first = gate()
    config = CaptureConfig(lambda: WavSource(wav, realtime=False), "room", CHUNK_MS, 30.0)
    worker = CaptureWorker(config, backlog, stats, reopen_backoff=Backoff(0.01, 0.05, 2),
                           speech_gate=first)
    for _ in range(1 + 300):  # open, then 6 s of 20 ms blocks
        worker.step()
    items = []
    while (item := backlog.get(0.0)) is not None:
        items.append(item)
    seqs = sent_seqs(items)
    assert events(items) == ["input_audio_buffer.commit"]
    assert isinstance(items[-1], ClientEvent)
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # one utterance, contiguous
    onset_chunk = rate // (24 * CHUNK_MS)
    assert onset_chunk - 300 // CHUNK_MS - 2 <= seqs[0] <= onset_chunk - 300 // CHUNK_MS
    counters = stats.snapshot()["counters"]
    assert counters["chunks_captured"] == 300
    assert counters["chunks_gated"] == 300 - len(seqs) - len(first._ring)

    # A mute in the middle of speech: the utterance is forgotten, no commit follows.
    worker2 = CaptureWorker(config, backlog, stats, reopen_backoff=Backoff(0.01, 0.05, 2),
                            speech_gate=gate())
    for _ in range(1 + 100):  # into the sentence
        worker2.step()
    gate2 = worker2.speech_gate
    assert gate2 is not None and gate2.state in ("open", "hangover")
    backlog.set_muted(True)
    worker2.step()
    assert gate2.state == "closed"
    backlog.set_muted(False)
    swapped = gate()
    worker2.set_speech_gate(swapped)
    worker2.step()
    assert worker2.speech_gate is swapped


def _room_wav(tmp_path: Path) -> Path:
    rate = 24000
    room = fan_noise(6.0, rate, rms=150.0)
    voice = speech(2.5, rate, talk=[(0.0, 2.0)]).astype(np.float64)
    room[2 * rate:2 * rate + len(voice)] += voice
    return write_wav(tmp_path / "room.wav",
                     np.clip(np.round(room), -32768, 32767).astype(np.int16), rate)


def _gated_run(wav: Path, *, idle_wake_s: float, speaker_busy: Callable[[], bool] | None = None,
               muted: bool = False) -> tuple[list[QueuedItem], list[tuple[bool, int]]]:
    """The capture chain over the file (read faster than real time); returns what it queued
    and, per step, whether the worker was idle when the step began and how many blocks the
    step took."""
    backlog = ChunkBacklog(10_000)
    backlog.set_muted(muted)
    sources: list[WavSource] = []

    def source() -> WavSource:
        sources.append(WavSource(wav, realtime=False, loop=False))
        return sources[-1]

    gate = SpeechGate(mode="vad", chunk_ms=CHUNK_MS, preroll_ms=300, hangover_ms=400,
                      max_utterance_s=30.0, turn_detection="none", conversation=False,
                      vad=EnergyVad(CHUNK_MS))
    config = CaptureConfig(source, "room", CHUNK_MS, 30.0, idle_wake_s=idle_wake_s)
    worker = CaptureWorker(config, backlog, Stats(), reopen_backoff=Backoff(0.01, 0.05, 2),
                           speech_gate=gate, speaker_busy=speaker_busy)
    worker.step()  # opens
    steps: list[tuple[bool, int]] = []
    while not sources[0].exhausted:
        idle = worker._idle()  # the decision this test is about
        before = sources[0].stats.blocks
        worker.step()
        steps.append((idle, sources[0].stats.blocks - before))
    worker.cleanup()
    items = []
    while (item := backlog.get(0.0)) is not None:
        items.append(item)
    return items, steps


def test_an_idle_capture_worker_takes_blocks_in_batches_and_decides_the_same(
        tmp_path: Path) -> None:
    """While the gate is closed the worker wakes once per idle_wake_s and takes every block
    that came meanwhile; the gate still sees every block in order, so the same chunks and
    events go out. Once the gate is open (or while an answer plays) it takes one block per
    wake-up again."""
    wav = _room_wav(tmp_path)
    per_block, steps0 = _gated_run(wav, idle_wake_s=0.0)
    batched, steps = _gated_run(wav, idle_wake_s=0.005)
    assert sent_seqs(per_block) and events(per_block) == ["input_audio_buffer.commit"]
    assert [(type(i), getattr(i, "seq", None), getattr(i, "pcm", None)) for i in batched] == [
        (type(i), getattr(i, "seq", None), getattr(i, "pcm", None)) for i in per_block]
    assert all(taken == 1 for _, taken in steps0)
    assert sum(taken for _, taken in steps) == sum(taken for _, taken in steps0) == 300
    assert max(taken for idle, taken in steps if idle) > 1  # batches while closed
    assert all(taken == 1 for idle, taken in steps if not idle)  # one by one while open
    assert len(steps) < len(steps0) // 2

    # An answer playing: a barge-in must be heard as it happens, so no batches.
    _, busy_steps = _gated_run(wav, idle_wake_s=0.005, speaker_busy=lambda: True)
    assert all(taken == 1 for _, taken in busy_steps)
    # Muted, one block at a time too: the mute applies to a block when it is processed, so
    # a batch taken just after an unmute would send what was captured before it.
    muted, muted_steps = _gated_run(wav, idle_wake_s=0.005, muted=True)
    assert muted == [] and all(taken == 1 for _, taken in muted_steps)


def test_idle_wake_must_not_be_negative(tmp_path: Path) -> None:
    config = CaptureConfig(lambda: WavSource(_room_wav(tmp_path)), "room", CHUNK_MS, 30.0,
                           idle_wake_s=-1.0)
    with pytest.raises(ValueError, match="idle_wake_s"):
        CaptureWorker(config, ChunkBacklog(10), Stats(), reopen_backoff=Backoff(0.01, 0.05, 2))


class _Speaker:
    def __init__(self) -> None:
        self.playing = False
        self.last_played_at: float | None = None


def test_the_speaker_is_busy_while_it_plays_and_for_its_echo_tail_and_a_batch() -> None:
    """While busy the capture worker takes each block at once: the echo gate judges its
    tail when it processes a block, so a batch taken late would let the tail's echo
    through to the speech gate."""
    speaker = _Speaker()
    assert not speaker_busy(speaker, 0.3, 100.0)  # never played
    speaker.playing = True
    assert speaker_busy(speaker, 0.3, 100.0)
    speaker.playing, speaker.last_played_at = False, 100.0
    tail = 0.3 + CAPTURE_IDLE_WAKE_S
    assert speaker_busy(speaker, 0.3, 100.0 + tail - 0.01)
    assert not speaker_busy(speaker, 0.3, 100.0 + tail + 0.01)
