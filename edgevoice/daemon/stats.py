"""Counters shared by the workers, read by status, metrics and the end-of-run summary.

Counters only ever grow (a fleet's Prometheus wants monotonic counters); the log may be
rate-limited, these never are. Labelled counters take their labels from fixed sets
(`RECONNECT_REASONS`, `KNOWN_ERROR_CODES` + "other"): a hostile server could otherwise
invent an unbounded number of series.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from edgevoice.realtime.dispatch import EventDispatcher
from edgevoice.realtime.protocol import ServerEvent, delta_pcm24k_bytes


@dataclass
class Counters:
    chunks_captured: int = 0
    chunks_sent: int = 0
    audio_bytes_sent: int = 0
    chunks_dropped_outage: int = 0
    chunks_replayed: int = 0
    capture_overflows: int = 0
    capture_dropped_blocks: int = 0
    capture_reopens: int = 0
    connections: int = 0
    connect_failures: int = 0
    reconnects: int = 0
    rollovers: int = 0
    stalls: int = 0
    speech_turns: int = 0
    user_transcripts: int = 0
    responses: int = 0
    response_audio_bytes: int = 0
    server_errors: int = 0
    server_events: int = 0
    malformed_frames: int = 0  # server frames skipped as unusable (never fatal)
    send_timeouts: int = 0  # sends that did not drain: sessions failed as silent
    audio_bytes_captured: int = 0  # 24 kHz mono PCM16 bytes cut into chunks
    chunks_muted: int = 0  # captured while muted: never queued, never sent
    chunks_dropped_muted: int = 0  # queued (not yet sent) audio dropped by a mute
    chunks_gated: int = 0  # captured, never sent: the speech gate was closed (stream.gate)
    chunks_capped: int = 0  # captured while the daily cap (the bill) held the gate closed
    wire_audio_bytes_sent: int = 0  # audio_bytes_sent as encoded (session.input_format)
    transcripts_delivered: int = 0  # transcript lines written to every sink
    transcripts_dropped: int = 0  # not written: the queue was full or a sink failed


# Why a streaming session ended (the supervisor's classification of the failure).
RECONNECT_REASONS = ("expired", "closed", "reset", "stall", "pong_timeout", "send_timeout",
                     "frame_too_large", "rejected", "other")
# Server error codes counted by name; anything else is "other".
KNOWN_ERROR_CODES = frozenset({
    "invalid_api_key", "insufficient_quota", "account_deactivated",
    "billing_hard_limit_reached", "rate_limit_exceeded", "session_expired",
    "beta_api_shape_disabled", "model_not_found", "invalid_model", "invalid_value",
    "invalid_type", "unknown_parameter", "missing_required_parameter",
    "unsupported_parameter", "input_audio_buffer_commit_empty",
    "response_cancel_not_active", "conversation_already_has_active_response",
    "server_error",
})


class LatencyHistogram:
    """Capture-to-wire latency in fixed log buckets (8 per doubling from 0.05 ms; the last
    bucket, from about 100 s, takes everything longer): memory and cost per chunk stay
    constant however long the daemon runs, and a percentile is exact to one bucket (9 %).
    Kept since start, like the counters; a reader wanting a window subtracts two
    snapshots' `buckets`. The summary is cached until the next record (the main loop asks
    ten times a second). Not thread-safe: `Stats` holds its lock around it."""

    FIRST_MS = 0.05
    PER_DOUBLING = 8
    BUCKETS = 168

    def __init__(self) -> None:
        self._counts = [0] * self.BUCKETS
        self.count = 0
        self.max_ms = 0.0
        self._lo, self._hi = self.BUCKETS, -1  # the non-empty range of buckets
        self._summary: dict[str, Any] | None = None

    @classmethod
    def upper_ms(cls, index: int) -> float:
        """The upper edge of bucket `index` (what a percentile in it reports)."""
        return float(cls.FIRST_MS * 2.0 ** ((index + 1) / cls.PER_DOUBLING))

    def record(self, ms: float) -> None:
        index = 0
        if ms > self.FIRST_MS:
            index = min(self.BUCKETS - 1,
                        int(math.log2(ms / self.FIRST_MS) * self.PER_DOUBLING))
        self._counts[index] += 1
        self.count += 1
        self.max_ms = max(self.max_ms, ms)
        self._lo, self._hi = min(self._lo, index), max(self._hi, index)
        self._summary = None

    def percentile(self, q: float) -> float | None:
        """The upper edge of the bucket holding the q-quantile (capped at the maximum)."""
        return self._percentile(q, list(accumulate(self._counts[self._lo:self._hi + 1])))

    def _percentile(self, q: float, cumulative: list[int]) -> float | None:
        """`cumulative`: running counts from bucket `_lo` on."""
        if not self.count:
            return None
        index = self._lo + bisect_left(cumulative, max(1, math.ceil(q * self.count)))
        if index >= self.BUCKETS - 1:  # the last bucket is open-ended: the maximum bounds it
            return self.max_ms
        return min(_UPPER_MS[index], self.max_ms)

    def summary(self) -> dict[str, Any]:
        if self._summary is None:
            used = self._counts[self._lo:self._hi + 1]
            cumulative = list(accumulate(used))
            self._summary = {
                "count": self.count,
                "p50": _ms(self._percentile(0.5, cumulative)),
                "p99": _ms(self._percentile(0.99, cumulative)),
                "max": _ms(self.max_ms if self.count else None),
                # [upper edge ms, count] of the non-empty buckets, for windows
                "buckets": [[_UPPER_MS_ROUNDED[i], n]
                            for i, n in enumerate(used, self._lo) if n],
            }
        return dict(self._summary)  # a caller may add to it; the cache stays as it was


_UPPER_MS = tuple(LatencyHistogram.upper_ms(i) for i in range(LatencyHistogram.BUCKETS))
_UPPER_MS_ROUNDED = tuple(round(edge, 3) for edge in _UPPER_MS)
# The state and texts of Stats that the status line and the status file both show.
_STATES = ("state", "detail", "last_error", "capture_rate", "waiting", "reload", "muted",
           "capped", "capped_reason")


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@dataclass
class Stats:
    """Thread-safe holder: `add("chunks_sent")` from any worker, `snapshot()` to read."""

    counters: Counters = field(default_factory=Counters)
    state: str = "starting"
    detail: str = ""
    last_error: str = ""
    session_id: str = ""
    capture_rate: int = 0
    waiting: str = ""  # what capture waits for ("waiting for microphone 'USB' ...")
    reload: str = ""  # the last reload's rejection by the server, until the next session
    capture_level_dbfs: float | None = None  # RMS of the last captured chunk
    muted: bool = False  # `edgevoice ctl mute`: no microphone audio leaves the device
    capped: bool = False  # stream.max_streamed_s_per_day reached: the gate is closed
    capped_reason: str = ""  # why, and until when (the local midnight)
    reconnect_reasons: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(RECONNECT_REASONS, 0))
    server_error_codes: dict[str, int] = field(default_factory=dict)
    # From a block's arrival in the capture callback to the send of the chunk holding it.
    capture_to_wire: LatencyHistogram = field(default_factory=LatencyHistogram, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reconnect(self, reason: str) -> None:
        """One more reconnect (also counted in `reconnects`), by a reason of the fixed set."""
        with self._lock:
            self.counters.reconnects += 1
            key = reason if reason in self.reconnect_reasons else "other"
            self.reconnect_reasons[key] += 1

    def server_error(self, code: str) -> None:
        with self._lock:
            self.counters.server_errors += 1
            key = code if code in KNOWN_ERROR_CODES else "other"
            self.server_error_codes[key] = self.server_error_codes.get(key, 0) + 1

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.counters, name, getattr(self.counters, name) + n)

    def set(self, **fields: Any) -> None:
        with self._lock:
            self._set(fields)

    def add_many(self, counts: Mapping[str, int], /, *, latency_ms: float | None = None,
                 **fields: Any) -> None:
        """`add` each of `counts`, record a capture-to-wire `latency_ms` and `set` `fields`,
        under one lock (a per-chunk path's)."""
        with self._lock:
            counters = self.counters
            for name, n in counts.items():
                setattr(counters, name, getattr(counters, name) + n)
            if latency_ms is not None:
                self.capture_to_wire.record(latency_ms)
            self._set(fields)

    def _states(self) -> dict[str, Any]:
        """The state and texts both `snapshot()` and `brief()` give (lock held)."""
        return {name: getattr(self, name) for name in _STATES}

    def _set(self, fields: Mapping[str, Any]) -> None:
        """Called with the lock held."""
        for key, value in fields.items():
            if not hasattr(self, key) or key.startswith("_"):
                raise AttributeError(key)
            setattr(self, key, value)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self._states(),
                "session_id": self.session_id,
                "capture_level_dbfs": self.capture_level_dbfs,
                # vars(): a dataclass of ints, so a flat copy is the same dict as asdict()
                # (27 µs: it deep-copies field by field) for 1 µs; the main loop asks often.
                "counters": dict(vars(self.counters)),
                "reconnects_by_reason": dict(self.reconnect_reasons),
                "server_errors_by_code": dict(self.server_error_codes),
                "capture_to_wire_ms": self.capture_to_wire.summary(),
            }

    def brief(self) -> dict[str, Any]:
        """What `health.status.status_line` reads (the state, the texts and the reconnect
        count): the main loop builds the line at every tick, a full `snapshot()` (every
        counter, the latency summary) is for the status file and the metrics."""
        with self._lock:
            return {
                **self._states(),
                "counters": {"reconnects": self.counters.reconnects},
            }


def register_counters(dispatcher: EventDispatcher[Any], stats: Stats) -> None:
    """Count server events through the one dispatch (handlers for any session type)."""

    def count(name: str) -> Any:
        def handler(session: object, event: ServerEvent) -> None:
            stats.add(name)

        handler.__qualname__ = f"count.{name}"
        return handler

    def audio(session: object, event: ServerEvent) -> None:
        # Decoding is also what finds a malformed delta when nothing plays the audio; the
        # event keeps the result, so the speaker does not decode it again.
        # In 24 kHz PCM16 bytes whatever the wire format (G.711 deltas are 8 kHz codes).
        stats.add("response_audio_bytes", delta_pcm24k_bytes(event))

    dispatcher.on_every(count("server_events"))
    dispatcher.on(count("speech_turns"), "input_audio_buffer.speech_started")
    dispatcher.on(count("user_transcripts"),
                  "conversation.item.input_audio_transcription.completed")
    dispatcher.on(count("responses"), "response.done")
    def error(session: object, event: ServerEvent) -> None:
        err = event.data.get("error")
        code = err.get("code") if isinstance(err, dict) else None
        stats.server_error(code if isinstance(code, str) else "")

    dispatcher.on(error, "error")
    dispatcher.on(audio, "response.output_audio.delta")
