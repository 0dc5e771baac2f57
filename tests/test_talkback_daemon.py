"""Talking back in the real daemon: the echo gate holds the microphone while the speaker
plays, a loud voice barges in with its first syllable intact, a speaker that appears late,
and the last turns carried into a new session. Real daemon process, devserver, an ALSA FIFO
microphone and a paced FIFO speaker at 48 kHz in one ALSA config."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from alsa_fixtures import (
    FakeMic,
    FakeSpeaker,
    SpeakerReader,
    fake_microphone,
    fake_speaker,
    speaker_config_text,
)
from daemon_harness import FAST, merge, running_daemon
from fakes import wait_until
from signals import speech
from test_playback import snr_db

from edgevoice.audio.resample import StreamingResampler
from edgevoice.devserver import DevServer
from edgevoice.devserver.records import ResponseRecord

pytestmark = pytest.mark.integration

RATE = 48000
WIRE = 24000
LOUD = 64  # a speaker sample above this is the answer, not silence
TAIL_MS = 300


def _config(server: DevServer, mic_device: str, spk_device: str, tmp_path: Path,
            echo: str = "half_duplex", **extra: Any) -> dict[str, Any]:
    return merge(merge(FAST, {
        "audio": {"device": mic_device, "rate": RATE, "channels": 1},
        "playback": {"enabled": True, "device": spk_device, "rate": RATE, "echo": echo,
                     "echo_tail_ms": TAIL_MS, "buffer_s": 60.0},
        "server": {"url": server.url},
        "health": {"status_file": str(tmp_path / "status.json")},
    }), extra)


def _responses(server: DevServer) -> list[ResponseRecord]:
    return [r for s in server.sessions() for r in s.responses]


class AudioSampler(threading.Thread):
    """Samples the devserver's received-audio counter every 5 ms (the records have no time
    per append): (monotonic time, bytes received so far)."""

    def __init__(self, server: DevServer) -> None:
        super().__init__(name="audio-sampler", daemon=True)
        self.server = server
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.monotonic(), int(self.server.stats()["audio_bytes"])))
            self._halt.wait(0.005)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def grown_between(self, start: float, end: float) -> int:
        """Bytes received in [start, end]."""
        inside = [b for t, b in self.samples if start <= t <= end]
        before = [b for t, b in self.samples if t < start]
        if not inside:
            return 0
        return inside[-1] - (before[-1] if before else inside[0])

    def longest_pause(self, after: float) -> tuple[float, float, int]:
        """The longest interval after ``after`` in which nothing arrived: (start, end,
        bytes received before it)."""
        best = (after, after, 0)
        last_change_t, last_b = after, None
        for t, b in self.samples:
            if t < after:
                last_b = b
                continue
            if last_b is None or b != last_b:
                if last_b is not None and t - last_change_t > best[1] - best[0]:
                    best = (last_change_t, t, last_b)
                last_change_t, last_b = t, b
        return best


@contextmanager
def _sampling(server: DevServer) -> Iterator[AudioSampler]:
    sampler = AudioSampler(server)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop()


def _loud_span(spk: FakeSpeaker) -> tuple[float, float]:
    """Arrival times of the first and the last non-silent frame at the speaker."""
    segment = spk.reader.current
    assert segment is not None
    received, arrivals = segment.mono(), segment.arrival_times()
    loud = np.flatnonzero(np.abs(received.astype(np.int32)) > LOUD)
    assert loud.size, "the speaker never received the answer"
    return float(arrivals[loud[0]]), float(arrivals[loud[-1]])


def _heard(reader: SpeakerReader) -> bool:
    """Whether the speaker received a non-silent frame yet."""
    segment = reader.current
    return segment is not None and bool(
        np.any(np.abs(segment.mono().astype(np.int32)) > LOUD))


@contextmanager
def _mic_and_speaker(tmp_path: Path, signal: npt.NDArray[np.int16]
                     ) -> Iterator[tuple[FakeMic, FakeSpeaker]]:
    with fake_speaker(tmp_path / "spk", rate=RATE, set_environ=False) as spk, \
            fake_microphone(tmp_path / "mic", rate=RATE, channels=1, signal=signal,
                            set_environ=False, extra_config=spk.config_text) as mic:
        yield mic, spk
        spk.check()
        mic.check_writer()


# -- 1. half duplex ---------------------------------------------------------------------------


def test_half_duplex_sends_no_microphone_audio_while_the_answer_plays_and_its_tail(
        server: DevServer, tmp_path: Path) -> None:
    # One spoken turn, then room noise for ever: there is always audio that could be sent.
    signal = speech(30.0, RATE, talk=[(0.5, 2.0)], room_rms=60.0)
    server.long_answer(4.0, speed=4.0)  # the answer to that turn: 4 s, streamed in 1 s
    with _mic_and_speaker(tmp_path, signal) as (mic, spk), _sampling(server) as sampler, \
            running_daemon(tmp_path, _config(server, mic.device, spk.device, tmp_path),
                           env=mic.env) as daemon:
        assert server.wait_for(lambda s: any(r.audio_ms >= 4000 for r in _responses(s)),
                               20), daemon.log()
        assert wait_until(lambda: spk.reader.received_frames() > 0, 10), daemon.log()
        answer = next(r for r in _responses(server) if r.audio_ms >= 4000)
        time.sleep(answer.audio_ms / 1000 + 2.0)  # all of it played, the tail, and after
        first, last = _loud_span(spk)
        assert daemon.stop() == 0
    during = sampler.grown_between(first + 0.15, last)
    tail = sampler.grown_between(last, last + TAIL_MS / 1000 - 0.15)
    after = sampler.grown_between(last + TAIL_MS / 1000 + 0.3, last + 1.5)
    pause = sampler.longest_pause(first - 1.0)
    print(f"answer heard {first:.2f}..{last:.2f} ({last - first:.2f} s); mic bytes sent: "
          f"during {during}, tail {tail}, after {after}; no audio for "
          f"{pause[1] - pause[0]:.2f} s from {pause[0] - first:+.2f} s to "
          f"{pause[1] - last:+.2f} s (relative to first/last loud frame)")
    assert during == 0, "microphone audio was sent while the speaker played"
    assert tail == 0, "microphone audio was sent during the echo tail"
    assert after >= WIRE * 2 * 1.0 * 0.8, "streaming did not resume after the tail"
    # The pause covers the answer and the tail (the speaker hears ~80 ms after the callback).
    assert pause[1] - pause[0] >= (last - first) + TAIL_MS / 1000 - 0.2
    assert pause[1] - last <= TAIL_MS / 1000 + 0.4, "held longer than the tail"
    assert "barge-in" not in daemon.log()  # room noise is no voice


# -- 2. local barge-in ------------------------------------------------------------------------


def test_a_loud_voice_over_the_answer_barges_in_with_its_first_syllable(
        server: DevServer, tmp_path: Path) -> None:
    signal = speech(30.0, RATE, talk=[(0.5, 2.0)])
    # The interruption: 0.5 s of (different) room noise, then 2.5 s of voice (~40 dB above
    # the room, and the fake microphone hears no echo), then room noise.
    lead_s = 0.5
    burst = speech(6.0, RATE, seed=11, talk=[(lead_s, lead_s + 2.5)])
    server.long_answer(8.0, speed=2.0)  # 8 s, still streaming 4 s after it started
    with _mic_and_speaker(tmp_path, signal) as (mic, spk), _sampling(server) as sampler, \
            running_daemon(tmp_path, _config(server, mic.device, spk.device, tmp_path),
                           env=mic.env) as daemon:
        assert mic.writer is not None
        assert wait_until(lambda: any(r.audio_ms > 0 for r in _responses(server)), 20), \
            daemon.log()
        assert wait_until(lambda: spk.reader.received_frames() > 0, 10), daemon.log()
        assert wait_until(lambda: _heard(spk.reader), 5)
        heard_at = time.monotonic()
        time.sleep(max(0.0, heard_at + 1.5 - lead_s - time.monotonic()))
        mic.writer.feed(burst, loop=False)
        onset_at = time.monotonic() + lead_s  # the voice starts ~1.5 s into the answer
        assert daemon.wait_log(r"barge-in: truncated", 5), daemon.log()
        assert server.wait_for(lambda s: any(r.truncated_ms is not None
                                             for r in _responses(s)), 5), daemon.log()
        time.sleep(2.0)
        mic.writer.feed(signal)
        assert daemon.stop() == 0
    record = server.sessions()[0]
    answer = next(r for r in record.responses if r.planned_ms >= 8000)
    truncation = next(t for t in record.truncations if t.item_id == answer.item_id)
    cancels = [c for c in record.cancels if c.response_id == answer.id]
    log = daemon.log()
    barge_line = next(line for line in log.splitlines() if "barge-in: truncated" in line)
    print(f"barge-in: {barge_line.strip()}; truncate at {truncation.audio_end_ms} ms "
          f"({truncation.at - onset_at:+.3f} s after the voice's onset); cancels {cancels}; "
          f"answer status {answer.status} ({answer.reason})")
    assert truncation.at - onset_at < 1.0
    assert 1000 <= truncation.audio_end_ms <= 3000  # ~1.5 s in, plus the trigger
    assert answer.status == "cancelled", answer
    assert cancels and cancels[0].reason == "client_cancelled", record.cancels
    # The first syllable reached the server: find the voice in what the server received.
    rx = np.frombuffer(record.audio, dtype="<i2").astype(np.float64)
    # The microphone's signal as the daemon's own resampler makes it (any other filter
    # differs from it near 12 kHz, where white room noise has as much energy as anywhere).
    ref = StreamingResampler(RATE, WIRE).process(burst).astype(np.float64)
    pause = sampler.longest_pause(heard_at - 1.0)
    resumed_at = pause[2] // 2  # sample index where audio sent after the hold begins
    assert pause[1] - pause[0] >= 1.0, pause  # the mic was held before the barge-in
    frame = WIRE // 100  # 10 ms
    after = rx[resumed_at:]
    energy = np.sqrt(np.mean(after[: after.size // frame * frame].reshape(-1, frame) ** 2,
                             axis=1))
    loud_frames = np.flatnonzero(energy > 300)
    assert loud_frames.size, "the voice never reached the server"
    onset_rx = resumed_at + int(loud_frames[0]) * frame  # onset found by energy
    onset_ref = round(lead_s * WIRE)
    offset = onset_rx - onset_ref  # where the burst signal would start in rx
    # Align precisely on the voice's first 200 ms around the energy estimate.
    best, best_snr = offset, -np.inf
    for shift in range(-frame, frame + 1):
        a = offset + shift
        seg = slice(a + onset_ref, a + onset_ref + WIRE // 5)
        if a + onset_ref < 0 or seg.stop > rx.size:
            continue
        value = snr_db(rx[seg], ref[onset_ref:onset_ref + WIRE // 5])
        if value > best_snr:
            best, best_snr = a, value
    preroll_s = (best + onset_ref - resumed_at) / WIRE
    # What came before the onset after the hold: is it the burst's own room noise (the
    # pre-roll, contiguous with the voice) for 300 ms?
    pre = slice(best + onset_ref - round(0.3 * WIRE) + 48, best + onset_ref)
    pre_snr = snr_db(rx[pre], ref[pre.start - best:pre.stop - best]) if pre.start >= 0 \
        else -np.inf
    print(f"voice onset at {onset_rx / WIRE:.3f} s of the server's audio; aligned onset SNR "
          f"{best_snr:.1f} dB; audio resumed {preroll_s * 1000:.0f} ms before the onset; "
          f"the 300 ms before it match the microphone at {pre_snr:.1f} dB")
    assert best_snr >= 30.0, "the voice's first 200 ms did not reach the server intact"
    assert preroll_s >= 0.3, "less than 300 ms of pre-roll before the voice's onset"
    assert pre_snr >= 30.0, "the pre-roll is not the audio just before the voice"


# -- 3. the speaker appears late --------------------------------------------------------------




def test_a_speaker_that_appears_late_is_waited_for_and_then_plays(
        server: DevServer, tmp_path: Path) -> None:
    # ALSA_CONFIG_PATH lists two files; alsa-lib skips one that does not exist, so the
    # speaker's PCM is unknown (PortAudio does not list it) until its file appears.
    spk_dir = tmp_path / "spk"
    spk_dir.mkdir()
    fifo = spk_dir / "edgevoice_speaker.fifo"
    spk_conf = spk_dir / "edgevoice_speaker.asoundrc"
    # Turns every ~3 s, so there is a turn after the speaker appeared.
    talk = [(0.5 + 3.0 * k, 1.7 + 3.0 * k) for k in range(10)]
    with fake_microphone(tmp_path / "mic", rate=RATE, channels=1,
                         signal=speech(30.0, RATE, talk=talk), set_environ=False) as mic:
        env = {"ALSA_CONFIG_PATH": f"{mic.config_path}:{spk_conf}"}
        with running_daemon(tmp_path, _config(server, mic.device, "edgevoice_speaker",
                                              tmp_path, echo="none"), env=env) as daemon:
            started = time.monotonic()
            assert daemon.wait_log(r"speaker unavailable \(attempt 1\)", 10), daemon.log()
            time.sleep(max(0.0, started + 5.0 - time.monotonic()))
            streamed = server.sessions()[0].audio_bytes if server.sessions() else 0
            os.mkfifo(fifo)
            reader = SpeakerReader(fifo)
            reader.start()
            spk_conf.write_text(speaker_config_text(fifo, RATE, 1))
            appeared = time.monotonic()
            try:
                found = daemon.wait_log(r"speaker available after \d+ failed attempts", 12)
                opened = found and daemon.wait_log(r"playing to ", 2)
                played = opened and wait_until(lambda: _heard(reader), 8)
                waited = time.monotonic() - appeared
                log = daemon.log()
                assert daemon.stop() == 0
            finally:
                assert reader.stop()
        mic.check_writer()
    assert reader.error is None, reader.error
    print(f"speaker appeared {appeared - started:.1f} s after start; found {found}, "
          f"opened {opened}, played {played} ({waited:.1f} s later); mic audio before it "
          f"appeared: {streamed} bytes; "
          f"{log.count('speaker unavailable (attempt')} 'unavailable' lines")
    assert streamed >= WIRE * 2 * 2, "streaming did not go on while the speaker was missing"
    assert found and opened, log
    assert played, "no answer reached the speaker after it appeared"




def test_a_speaker_that_opens_but_fails_at_once_is_reopened_with_backoff(
        server: DevServer, tmp_path: Path) -> None:
    # The speaker's file is in a directory that does not exist: alsa-lib opens the PCM (the
    # file plugin creates its file lazily), then the first write fails and PortAudio stops
    # the stream, like a device that enumerates but fails (HDMI sink without a monitor).
    fifo = tmp_path / "no-such-dir" / "edgevoice_speaker.fifo"
    with fake_microphone(tmp_path / "mic", rate=RATE, channels=1,
                         signal=speech(30.0, RATE, talk=[]), set_environ=False,
                         extra_config=speaker_config_text(fifo, RATE, 1)) as mic, \
            running_daemon(tmp_path, _config(server, mic.device, "edgevoice_speaker",
                                             tmp_path, echo="none"), env=mic.env) as daemon:
        assert daemon.wait_log(r"stopped \(unplugged or failed\)", 10), daemon.log()
        time.sleep(4.0)
        assert daemon.stop() == 0
        mic.check_writer()
    failures = daemon.log().count("stopped (unplugged or failed)")
    opens = daemon.log().count("[event=playback.opened]")
    print(f"a speaker failing at once: {failures} failures, {opens} opens in ~4 s")
    # With the reopen backoff (0.5 s doubling to 10 s) there are a handful, not hundreds.
    assert failures <= 10, failures


# -- 4. carry_turns ---------------------------------------------------------------------------


def test_a_new_session_is_seeded_with_the_last_turns_before_any_audio(
        server: DevServer, tmp_path: Path) -> None:
    signal = speech(30.0, RATE, talk=[(0.5, 2.6)])
    with _mic_and_speaker(tmp_path, signal) as (mic, spk), \
            running_daemon(tmp_path, _config(server, mic.device, spk.device, tmp_path,
                                             session={"carry_turns": 4}),
                           env=mic.env) as daemon:
        def transcripts_done(s: DevServer) -> bool:
            events = s.sessions()[0].server_events if s.sessions() else []
            types = {e["type"] for e in events}
            return {"conversation.item.input_audio_transcription.completed",
                    "response.output_audio_transcript.done"} <= types

        assert server.wait_for(transcripts_done, 20), daemon.log()
        first = server.sessions()[0]
        user_text = next(e["transcript"] for e in first.server_events if e["type"]
                         == "conversation.item.input_audio_transcription.completed")
        assistant_text = next(e["transcript"] for e in first.server_events
                              if e["type"] == "response.output_audio_transcript.done")
        time.sleep(0.5)
        server.close_all(1012, "restart")
        assert server.wait_for(lambda s: len(s.sessions()) >= 2
                               and s.sessions()[1].n_appends > 0, 15), daemon.log()
        assert daemon.wait_log(r"seeded with the last \d+ turns", 5), daemon.log()
        time.sleep(0.3)
        second = server.sessions()[1]
        assert daemon.stop() == 0
    types = [e["type"] for e in second.client_events]
    print(f"user {user_text!r}, assistant {assistant_text!r}; new session's first events: "
          f"{types[:6]}")
    assert types[0] == "session.update", types
    first_append = types.index("input_audio_buffer.append")
    seeds = [e for e in second.client_events[:first_append]
             if e["type"] == "conversation.item.create"]
    contents = [(e["item"]["role"], e["item"]["content"][0]["type"],
                 e["item"]["content"][0]["text"]) for e in seeds]
    assert contents == [("user", "input_text", user_text),
                        ("assistant", "output_text", assistant_text)], contents
    assert set(types[1:first_append]) == {"conversation.item.create"}, types[:first_append]
