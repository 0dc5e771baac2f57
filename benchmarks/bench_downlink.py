"""CPU per second of played answer audio on the downlink (issue 9 item 4, issue 12 target).

Everything the daemon's reader thread does for the answers' audio, from the socket on: the
project's ``WebSocketTransport`` reading the server's text frames (unmasked, one event per
frame) from a real 127.0.0.1 connection, ``protocol.parse_server_event`` (its
untrusted-frame checks included; it decodes an audio delta's base64 as it parses), then
``RealtimeSession._receive``'s dispatch through a real ``EventDispatcher`` (the session's
state handlers from ``new_dispatcher`` and ``Talkback``; the "daemon" set also has the
event log, the counters and the history, as ``daemon/app.py`` wires them), and
``PyAudioSink.play`` (resample 24 kHz to the device rate into its ``PlaybackBuffer``).
That is the issue 12 target: receive, decode and resample. Shown apart, not part of the
target: the buffer drained by the sink's own PortAudio callback in 20 ms pulls (the
device's thread, "with the device's pulls"), and the play path with deltas one per
100 ms ("paced", see PACED_GAP_S).
PortAudio is never opened: the sink is built and fed closed, which is the same code path
minus the device.

The frames are what the service sends: JSON text of ``response.output_audio.delta`` events
carrying base64 of 100 ms of 24 kHz PCM16, inside the usual framing events of an answer.
A server thread (tests/hostile_server.py) writes them all, pre-encoded, into the socket;
CPU is ``time.thread_time`` of the reading thread alone, so the writer is not counted.

Run: ``python benchmarks/bench_downlink.py [--seconds S] [--json PATH]``. Never fails on a
timing: the issue 12 target (at most 1 ms of CPU per second of answer audio) is printed as
met or missed.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from hostile_server import TEXT, HostileConn, HostileServer  # noqa: E402  (tests/)

from edgevoice.audio.pyaudio_sink import BLOCK_MS, PyAudioSink  # noqa: E402
from edgevoice.daemon.stats import Stats, register_counters  # noqa: E402
from edgevoice.daemon.talkback import Talkback  # noqa: E402
from edgevoice.realtime import protocol  # noqa: E402
from edgevoice.realtime.dispatch import EventDispatcher  # noqa: E402
from edgevoice.realtime.event_log import EventLog  # noqa: E402
from edgevoice.realtime.history import History  # noqa: E402
from edgevoice.realtime.link import SessionLink  # noqa: E402
from edgevoice.realtime.session import RealtimeSession, new_dispatcher  # noqa: E402
from edgevoice.realtime.transport import WebSocketTransport  # noqa: E402
from edgevoice.settings import SessionSettings  # noqa: E402

WIRE_RATE = 24000
DELTA_MS = 100
ANSWER_S = 5.0  # one answer: its framing events are shared by this much audio
TARGET_MS_PER_S = 1.0  # issue 12: at most 1 ms of CPU per second of answer audio
TARGET_STAGE = "play"  # receive, parse, dispatch, decode, resample and push: the target
# The "paced" row: deltas one per 100 ms, as they arrive when the server sends no faster
# than they play (the devserver at speed 1). Every delta then finds the caches cold, like
# the capture chain (bench_floor.py's cold table). Not the target's conditions: the
# service streams an answer ahead of playback, several deltas per socket read.
PACED_GAP_S = DELTA_MS / 1000
PACED_S = ANSWER_S  # one answer: 5 s of wall time
ROUNDS = 9  # interleaved rounds over all rows; a row's figure is the median of its rounds
READ_TIMEOUT_S = 30.0  # no frame for this long: the writer is stuck (fail, never hang)


class NullOutbox:
    """Talkback's sender; a benchmark answer is never interrupted, so nothing is sent."""

    def __init__(self) -> None:
        self.submitted = 0

    def submit(self, event: dict[str, Any], to: SessionLink | None,
               urgent: bool = True) -> None:
        self.submitted += 1


class NullSpeaker:
    """A Speaker that takes the PCM and does nothing (the cost of parse and dispatch alone)."""

    def play(self, item_id: str, content_index: int, pcm24k: bytes, rate: int = 24000) -> None:
        pass

    def end_of_item(self, item_id: str) -> None:
        pass

    def flush(self) -> tuple[str, int, int] | None:
        return None

    def played_ms(self, item_id: str) -> int:
        return 0

    @property
    def playing(self) -> bool:
        return False


def _event(event_type: str, **fields: Any) -> str:
    """One server frame, shaped (key order, ids) like the service's."""
    return json.dumps({"type": event_type, "event_id": "event_" + "C" * 21, **fields},
                      separators=(",", ":"))


def answer_frames(seconds: float, n: int, seed: int = 0) -> list[str]:
    """The frames of one spoken answer: framing events and 100 ms audio deltas."""
    rng = np.random.default_rng(seed + n)
    per_delta = WIRE_RATE * DELTA_MS // 1000
    deltas = max(1, round(seconds * 1000 / DELTA_MS))
    t = np.arange(per_delta * deltas) / WIRE_RATE
    voice = 6000 * np.sin(2 * np.pi * 180 * t) + rng.normal(0, 1500, t.size)
    pcm = np.clip(voice, -32768, 32767).astype("<i2")
    resp, item = f"resp_{n:021d}", f"item_{n:021d}"
    ids = {"response_id": resp, "item_id": item, "output_index": 0}
    frames = [
        _event("response.created", response={"object": "realtime.response", "id": resp,
                                             "status": "in_progress", "output": []}),
        _event("response.output_item.added", response_id=resp, output_index=0,
               item={"id": item, "type": "message", "role": "assistant",
                     "status": "in_progress", "content": []}),
        _event("response.content_part.added", **ids, content_index=0,
               part={"type": "audio", "transcript": ""}),
    ]
    for i in range(deltas):
        chunk = pcm[i * per_delta:(i + 1) * per_delta].tobytes()
        frames.append(_event("response.output_audio.delta", **ids, content_index=0,
                             delta=base64.b64encode(chunk).decode("ascii")))
    frames += [
        _event("response.output_audio.done", **ids, content_index=0),
        _event("response.content_part.done", **ids, content_index=0,
               part={"type": "audio", "transcript": "..."}),
        _event("response.output_item.done", response_id=resp, output_index=0,
               item={"id": item, "type": "message", "role": "assistant",
                     "status": "completed", "content": []}),
        _event("response.done", response={"object": "realtime.response", "id": resp,
                                          "status": "completed", "output": []}),
    ]
    return frames


def build_dispatcher(speaker: Any, *, daemon_set: bool) -> EventDispatcher[RealtimeSession]:
    dispatcher = new_dispatcher()
    if daemon_set:  # as daemon/app.py registers them, in its order
        EventLog().register(dispatcher)
        register_counters(dispatcher, Stats())
        History().register(dispatcher)
    Talkback(speaker, NullOutbox()).register(dispatcher)
    return dispatcher


def _writer(frames: list[bytes], gap_s: float = 0.0) -> Callable[[HostileConn], None]:
    """The server's script: upgrade, then every frame at once (the socket paces it), or
    with ``gap_s`` after each audio delta (as played: the devserver at speed 1)."""

    def script(conn: HostileConn) -> None:
        conn.accept()
        conn.sock.settimeout(READ_TIMEOUT_S)  # sendall's timeout bounds the whole write
        if not gap_s:
            conn.send_raw(b"".join(frames))
        else:
            for frame in frames:
                conn.send_raw(frame)
                if b'"type":"response.output_audio.delta"' in frame[:64]:
                    time.sleep(gap_s)
        conn.idle()

    return script


def run(stage: str, rate: int, channels: int, seconds: float, *,
        daemon_set: bool) -> tuple[float, float, int]:
    """(µs of CPU per delta, ms of CPU per second of audio, deltas) for one configuration,
    one run of `seconds` of answers.

    stage: "receive" (``WebSocketTransport.recv_text`` only), "parse" (and
    parse_server_event, which decodes the base64), "dispatch" (``RealtimeSession._receive``:
    and every handler, with a speaker that discards the PCM), "play" (the sink's play path:
    the target), "drain" (and the callback's 20 ms pulls, the device's thread: not in the
    target), "paced" (as "play", with one delta per PACED_GAP_S: not in the target).
    """
    warm = answer_frames(1.0, 999)  # warms imports, caches, the resampler tables
    answers = [answer_frames(ANSWER_S, 1000 + n)  # fresh item and response ids
               for n in range(max(1, round(seconds / ANSWER_S)))]
    deltas = sum(text.count('"type":"response.output_audio.delta"')
                 for answer in answers for text in answer)
    audio_s = deltas * DELTA_MS / 1000
    frames = [HostileConn.frame(TEXT, text.encode())
              for answer in (warm, *answers) for text in answer]
    # No PortAudio stream, only its buffer and resamplers. Without the callback's
    # pulls ("play") nothing drains, so the buffer holds a whole answer (nothing dropped)
    # until it is flushed between answers, untimed, standing for the device's pulls that
    # free played chunks in the daemon. Answers of 30 and 60 s (the buffer holding all of
    # each, as when the service streams far ahead) cost the same per delta.
    sink = PyAudioSink(rate=rate, buffer_s=5.0 if stage == "drain" else 2 * ANSWER_S)
    sink._stream = object()  # "open" without PortAudio: a closed sink drops what it is given
    speaker: Any = sink if stage in ("play", "paced", "drain") else NullSpeaker()
    dispatcher = build_dispatcher(speaker, daemon_set=daemon_set)
    malformed: list[str] = []
    pull_frames = rate * BLOCK_MS // 1000
    pulls_per_delta = DELTA_MS // BLOCK_MS
    callback = sink._make_callback(sink._buffer, channels)  # the one PortAudio would call
    drain = stage == "drain"
    cpu_ns = 0
    with HostileServer(_writer(frames, PACED_GAP_S if stage == "paced" else 0.0)) as server:
        transport = WebSocketTransport(server.url, {}, connect_timeout_s=5.0,
                                       socket_timeout_s=1.0, ping_interval_s=3600.0,
                                       pong_timeout_s=3600.0)
        session = RealtimeSession(transport, SessionSettings(), dispatcher, NullOutbox(),
                                  update_timeout_s=5.0, name="bench",
                                  on_malformed=malformed.append)
        transport.connect()
        recv, parse, receive = transport.recv_text, protocol.parse_server_event, \
            session._receive  # the reader thread's one step: read, parse, dispatch

        def one_answer(count: int) -> None:
            deadline = time.monotonic() + READ_TIMEOUT_S
            done = 0
            while done < count:
                if stage in ("receive", "parse"):
                    text = recv()
                    if text is not None and stage == "parse":
                        parse(text)
                    got = text is not None
                else:
                    event = receive()
                    got = event is not None
                    if drain and event is not None \
                            and event.type == "response.output_audio.delta":
                        for _ in range(pulls_per_delta):
                            callback(None, pull_frames, {}, 0)
                if got:
                    done += 1
                elif time.monotonic() > deadline or malformed:
                    raise RuntimeError(f"{stage}: {done} of {count} frames read "
                                       f"(malformed: {malformed})")
            if drain:  # the tail (prebuffer, resampler flush) plays out
                while sink.playing:
                    callback(None, pull_frames, {}, 0)

        try:
            one_answer(len(warm))
            sink.flush()  # the warm-up's audio is not the first run's
            played_before = sink.stats.frames_played
            for answer in answers:
                start = time.thread_time_ns()
                one_answer(len(answer))
                cpu_ns += time.thread_time_ns() - start
                if stage in ("play", "paced"):  # the answer's audio went into the buffer
                    queued = sink._buffer.queued_frames / rate
                    if abs(queued - ANSWER_S) > 0.05:
                        raise RuntimeError(f"the sink queued {queued:.2f} s, "
                                           f"expected {ANSWER_S:.2f}")
                if not drain:
                    # Untimed, as the device's pulls are: the answer has played, its
                    # chunks go back to the allocator for the next answer's.
                    sink.flush()
            played = (sink.stats.frames_played - played_before) / rate
            if drain and abs(played - audio_s) > 0.05:
                raise RuntimeError(f"the sink played {played:.2f} s, "
                                   f"expected {audio_s:.2f}")
        finally:
            transport.abort()
    if malformed:
        raise RuntimeError(f"malformed frames: {malformed}")
    cpu_s = cpu_ns / 1e9
    return cpu_s / deltas * 1e6, cpu_s / audio_s * 1e3, deltas


STAGES = (("receive", "transport.recv_text"), ("parse", "+ parse_server_event, base64"),
          ("dispatch", "+ dispatch, handlers"),
          ("play", "+ sink.play (resample, push)"),
          ("drain", "with the device's 20 ms pulls"),
          ("paced", "sink.play, one delta per 100 ms"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="answer audio per row and round")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    print(f"numpy {np.__version__}; {DELTA_MS} ms deltas of 24 kHz PCM16 "
          f"({WIRE_RATE * DELTA_MS // 1000 * 2 * 4 // 3} base64 chars), answers of "
          f"{ANSWER_S:g} s, {args.seconds:g} s of audio per row and round, {ROUNDS} interleaved "
          "rounds (median); CPU = time.thread_time "
          "of the reading thread (127.0.0.1 WebSocket, the writer not counted)")
    print(f"{'handlers':>8} {'device':>11}  {'stage (cumulative)':<30} {'us/delta':>9}"
          f"  {'ms CPU/s audio':>14}")
    results: list[dict[str, Any]] = []
    devices = ((48000, 1), (48000, 2), (44100, 1), (44100, 2))
    plan: list[tuple[bool, str, int, int]] = []
    for daemon_set in (False, True):
        # receive, parse and dispatch do the same work whatever the device: one row each
        plan += [(False, "receive", 0, 1), (False, "parse", 0, 1)] if not daemon_set else []
        plan += [(daemon_set, "dispatch", 0, 1)]
        plan += [(daemon_set, stage, rate, ch) for rate, ch in devices
                 for stage in ("play", "drain")]
    # Rounds over every row, in a new order each round: a noisy minute on a shared host
    # lands on all rows alike instead of on the few that ran in it.
    samples: dict[tuple[bool, str, int, int], list[tuple[float, float, int]]] = \
        {key: [] for key in plan}
    order = random.Random(12)
    for _ in range(ROUNDS):
        for key in order.sample(plan, len(plan)):
            daemon_set, stage, rate, channels = key
            samples[key].append(run(stage, rate or 48000, channels, args.seconds,
                                    daemon_set=daemon_set))
    paced_row = (True, "paced", 48000, 1)  # one run: 5 s of wall time, a 5x effect
    plan.append(paced_row)
    samples[paced_row] = [run("paced", 48000, 1, PACED_S, daemon_set=True)]
    for key in plan:
        daemon_set, stage, rate, channels = key
        us = statistics.median(sample[0] for sample in samples[key])
        ms = statistics.median(sample[1] for sample in samples[key])
        deltas = sum(sample[2] for sample in samples[key])
        handlers = "daemon" if daemon_set else "minimal"
        device = f"{rate} {channels}ch" if rate else "-"
        print(f"{handlers:>8} {device:>11}  {dict(STAGES)[stage]:<30} {us:9.1f}"
              f"  {ms:14.3f}")
        results.append({"handlers": handlers, "rate": rate, "channels": channels,
                        "stage": stage, "us_per_delta": round(us, 2),
                        "ms_cpu_per_audio_s": round(ms, 4), "deltas_all_rounds": deltas,
                        "rounds_us_per_delta": [round(sample[0], 1)
                                                for sample in samples[key]],
                        "in_target": stage == TARGET_STAGE and daemon_set})
    print()
    print(f"issue 12 target: <= {TARGET_MS_PER_S:g} ms of CPU per second of answer audio "
          "for receive, decode and resample\n  (daemon handlers: recv_text + parse + "
          "dispatch + decode + sink.play; the device's pulls not included)")
    verdicts: list[dict[str, Any]] = []
    pulls = {(r["rate"], r["channels"]): r["ms_cpu_per_audio_s"] for r in results
             if r["stage"] == "drain" and r["handlers"] == "daemon"}
    for row in results:
        if row["in_target"]:
            ms = row["ms_cpu_per_audio_s"]
            met = ms <= TARGET_MS_PER_S
            with_pulls = pulls[(row["rate"], row["channels"])]
            print(f"  {row['rate']} Hz {row['channels']} ch: {ms:.3f} ms/s  "
                  f"{'met' if met else 'MISSED'}   (with the device's pulls, not in the "
                  f"target: {with_pulls:.3f} ms/s)")
            verdicts.append({"rate": row["rate"], "channels": row["channels"],
                             "ms_cpu_per_audio_s": ms, "met": met,
                             "with_device_pulls_ms_cpu_per_audio_s": with_pulls})
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "downlink", "numpy": np.__version__,
            "cpu_clock": "time.thread_time of the reading thread",
            "target_ms_per_s": TARGET_MS_PER_S,
            "target": "receive + parse + dispatch + decode + sink.play (resample, push), "
                      "daemon handlers; the device's pulls (stage drain) not included",
            "target_stage": TARGET_STAGE, "verdicts": verdicts,
            "results": results}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
