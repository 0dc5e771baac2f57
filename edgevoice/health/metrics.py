"""Prometheus metrics from a status snapshot, for node_exporter's textfile collector.

The daemon writes ``health.metrics_file`` every 2 s (on Debian node_exporter reads
``/var/lib/prometheus/node-exporter/*.prom``)::

    status.write_atomic(path, metrics.metrics_text(snapshot))  # or metrics.write_metrics()

The text is made with ``prometheus_client`` (a fresh ``CollectorRegistry`` per write, one
custom collector, ``generate_latest``): only APIs present in 0.16, Debian 12's
python3-prometheus-client. The file is written by :func:`status.write_atomic` (temporary
file + rename, so the collector never reads half a file; its name does not end in ``.prom``
so the collector skips it) and is mode 0644: it holds numbers and labels from fixed sets,
no free text; label values still pass :func:`logsetup.redact`, and so does the whole text.

Conventions: ``edgevoice_`` prefix, counters end in ``_total``, base units (seconds, bytes),
labels only from fixed sets (``state``, ``reason``, ``code``), plus one
``edgevoice_build_info{version,model} 1``. Every counter and label value of a fixed set is
written from the start (zeros included), so ``increase()`` sees the first event.

Adding a metric is one row in :data:`COUNTERS` or :data:`GAUGES`. A row whose value is
missing from the snapshot (or None) writes no sample, so a row may come before the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgevoice.daemon.stats import KNOWN_ERROR_CODES, RECONNECT_REASONS
from edgevoice.health.logsetup import redact
from edgevoice.health.status import PublicText, write_atomic
from edgevoice.realtime.protocol import PCM_BYTES_PER_S

__all__ = ["COUNTERS", "GAUGES", "STATES", "metric_names", "metrics_text", "write_metrics"]

# Every state the daemon reports (edgevoice_state{state=...} is one-hot over these).
STATES = ("starting", "connecting", "streaming", "offline", "stopping", "stopped", "failed")
ERROR_CODES = (*sorted(KNOWN_ERROR_CODES), "other")

Snapshot = Mapping[str, Any]


def counter(key: str) -> Callable[[Snapshot], Any]:
    """The value of ``snapshot["counters"][key]``."""
    def get(snap: Snapshot) -> Any:
        counters = snap.get("counters")
        return counters.get(key) if isinstance(counters, Mapping) else None
    return get


def field(key: str) -> Callable[[Snapshot], Any]:
    """The value of ``snapshot[key]``."""
    def get(snap: Snapshot) -> Any:
        return snap.get(key)
    return get


def seconds_of(key: str) -> Callable[[Snapshot], Any]:
    """A byte counter of 24 kHz PCM16 audio as seconds (exact, not the rounded status)."""
    bytes_of = counter(key)

    def get(snap: Snapshot) -> Any:
        value = bytes_of(snap)
        return None if value is None else value / PCM_BYTES_PER_S
    return get


def capture_to_wire_s(key: str) -> Callable[[Snapshot], Any]:
    """A figure (``p50``, ``p99``) of ``snapshot["capture_to_wire_ms"]`` as seconds."""
    def get(snap: Snapshot) -> Any:
        latency = snap.get("capture_to_wire_ms")
        value = latency.get(key) if isinstance(latency, Mapping) else None
        return value / 1000 if isinstance(value, int | float) else None
    return get


@dataclass(frozen=True)
class Row:
    name: str  # without _total: CounterMetricFamily adds it
    help: str
    value: Callable[[Snapshot], Any]


COUNTERS: tuple[Row, ...] = (
    # capture
    Row("edgevoice_chunks_captured", "Audio chunks cut from the microphone input.",
        counter("chunks_captured")),
    Row("edgevoice_audio_captured_bytes", "24 kHz PCM16 bytes captured.",
        counter("audio_bytes_captured")),
    Row("edgevoice_audio_captured_seconds", "Seconds of audio captured.",
        seconds_of("audio_bytes_captured")),
    Row("edgevoice_capture_overflows", "Input overflows reported by the audio device.",
        counter("capture_overflows")),
    Row("edgevoice_capture_dropped_blocks", "Device blocks dropped because capture lagged.",
        counter("capture_dropped_blocks")),
    Row("edgevoice_capture_reopens", "Times the audio device was reopened.",
        counter("capture_reopens")),
    # uplink
    Row("edgevoice_chunks_sent", "Audio chunks sent to the server (replays included).",
        counter("chunks_sent")),
    Row("edgevoice_audio_sent_bytes", "24 kHz PCM16 audio bytes sent (replays included).",
        counter("audio_bytes_sent")),
    Row("edgevoice_audio_wire_bytes",
        "Audio bytes on the wire as encoded (session.input_format; before base64).",
        counter("wire_audio_bytes_sent")),
    Row("edgevoice_audio_streamed_seconds", "Seconds of audio sent (replays included).",
        seconds_of("audio_bytes_sent")),
    Row("edgevoice_chunks_dropped", "Chunks dropped from a full outage buffer (oldest first).",
        counter("chunks_dropped_outage")),
    Row("edgevoice_chunks_muted", "Chunks captured while muted (never sent).",
        counter("chunks_muted")),
    Row("edgevoice_chunks_dropped_muted", "Queued chunks dropped by a mute (never sent).",
        counter("chunks_dropped_muted")),
    Row("edgevoice_chunks_gated",
        "Chunks captured while the speech gate was closed (stream.gate; never sent).",
        counter("chunks_gated")),
    Row("edgevoice_chunks_capped",
        "Chunks captured while the daily cap held the gate closed (never sent).",
        counter("chunks_capped")),
    Row("edgevoice_chunks_replayed", "Chunks sent again to a new session after a failure.",
        counter("chunks_replayed")),
    Row("edgevoice_send_timeouts", "Sends that did not drain (the peer stopped reading).",
        counter("send_timeouts")),
    # connection
    Row("edgevoice_connections", "Sessions established.", counter("connections")),
    Row("edgevoice_connect_failures", "Connection attempts that failed.",
        counter("connect_failures")),
    Row("edgevoice_rollovers", "Switches to a new session before the old one expired.",
        counter("rollovers")),
    Row("edgevoice_stall_recoveries",
        "Sessions found stalled (no answer to a probe) and replaced.", counter("stalls")),
    # server events
    Row("edgevoice_server_events", "Events received from the server.",
        counter("server_events")),
    Row("edgevoice_malformed_frames", "Server frames skipped as unusable.",
        counter("malformed_frames")),
    Row("edgevoice_speech_turns", "Speech starts detected by the server.",
        counter("speech_turns")),
    Row("edgevoice_user_transcripts", "Input transcriptions completed.",
        counter("user_transcripts")),
    Row("edgevoice_transcripts_delivered", "Transcript lines written to every sink.",
        counter("transcripts_delivered")),
    Row("edgevoice_transcripts_dropped",
        "Transcript lines not written (queue full or a sink failed).",
        counter("transcripts_dropped")),
    Row("edgevoice_responses", "Responses completed by the server.", counter("responses")),
    Row("edgevoice_response_audio_bytes", "24 kHz PCM16 bytes of response audio received.",
        counter("response_audio_bytes")),
    # playback (written only when playback.enabled: the snapshot has the fields then)
    Row("edgevoice_played_seconds", "Seconds of response audio played.",
        field("seconds_played")),
    Row("edgevoice_playback_underruns", "Callbacks that played silence inside an answer.",
        field("playback_underruns")),
    Row("edgevoice_barge_ins", "Answers cut short because the user spoke.",
        field("barge_ins")),
)

GAUGES: tuple[Row, ...] = (
    Row("edgevoice_capture_level_dbfs",
        "RMS level of the last captured chunk (-120 is digital silence).",
        field("capture_level_dbfs")),
    Row("edgevoice_capture_sample_rate_hertz", "Sample rate of the open audio device.",
        field("capture_rate")),
    Row("edgevoice_uplink_queue_chunks", "Audio chunks waiting to be sent (outage buffer).",
        field("uplink_queue_chunks")),
    Row("edgevoice_last_server_event_age_seconds",
        "Seconds since the current session's last server event.",
        field("last_server_event_age_s")),
    Row("edgevoice_session_age_seconds", "Age of the current session.",
        field("session_age_s")),
    Row("edgevoice_uptime_seconds", "Seconds since the daemon started.", field("uptime_s")),
    Row("edgevoice_start_time_seconds", "Start time of the daemon, unix seconds.",
        field("started_at")),
    Row("edgevoice_muted", "1 while muted (`edgevoice ctl mute`): no audio leaves.",
        field("muted")),
    # the bill (ratios only once something was captured)
    Row("edgevoice_streamed_ratio",
        "Seconds streamed per second captured since start (replays included).",
        field("streamed_ratio")),
    Row("edgevoice_session_captured_seconds",
        "Seconds of audio captured while the current session was in use.",
        field("session_seconds_captured")),
    Row("edgevoice_session_streamed_seconds", "Seconds of audio the current session got.",
        field("session_seconds_streamed")),
    Row("edgevoice_session_streamed_ratio",
        "Seconds the current session got per second captured meanwhile.",
        field("session_streamed_ratio")),
    Row("edgevoice_streamed_today_seconds",
        "Seconds of audio streamed on the current local day (what the daily cap counts).",
        field("streamed_today_s")),
    Row("edgevoice_max_streamed_seconds_per_day",
        "The daily cap, stream.max_streamed_s_per_day (absent when there is none).",
        field("max_streamed_s_per_day")),
    Row("edgevoice_capped", "1 while the daily cap is reached: nothing is streamed.",
        field("capped")),
    # from a block's arrival in the capture callback to its chunk handed to the socket
    Row("edgevoice_capture_to_wire_p50_seconds",
        "Median capture-to-wire latency of the chunks sent since start.",
        capture_to_wire_s("p50")),
    Row("edgevoice_capture_to_wire_p99_seconds",
        "99th percentile capture-to-wire latency of the chunks sent since start.",
        capture_to_wire_s("p99")),
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _label(value: Any) -> str:
    return redact(str(value or "unknown"))


def _breakdown(snap: Snapshot, key: str) -> dict[str, float] | None:
    raw = snap.get(key)
    if not isinstance(raw, Mapping):
        return None
    out: dict[str, float] = {}
    for label, value in raw.items():
        number = _number(value)
        if number is not None:
            out[str(label)] = number
    return out


def _labelled_counter(name: str, help_: str, label: str, fixed: Iterable[str],
                      values: dict[str, float] | None, total: Any) -> Metric:
    """One value per label of the fixed set (zeros too; anything else counts as "other").
    A snapshot without the breakdown (older or hand-made) gives the unlabelled total."""
    if values is None:
        return CounterMetricFamily(name, help_, value=_number(total) or 0.0)
    family = CounterMetricFamily(name, help_, labels=[label])
    merged = dict.fromkeys(fixed, 0.0)
    for key, value in values.items():
        slot = key if key in merged else "other"
        merged[slot] = merged.get(slot, 0.0) + value
    for key, value in merged.items():
        family.add_metric([redact(key)], value)
    return family


def _families(snap: Snapshot) -> Iterator[Metric]:
    info = GaugeMetricFamily("edgevoice_build_info", "The daemon's version and model.",
                             labels=["version", "model"])
    info.add_metric([_label(snap.get("version")), _label(snap.get("model"))], 1.0)
    yield info
    state = GaugeMetricFamily("edgevoice_state", "1 for the daemon's current state.",
                              labels=["state"])
    for name in STATES:
        state.add_metric([name], 1.0 if snap.get("state") == name else 0.0)
    yield state
    yield _labelled_counter(
        "edgevoice_reconnects", "Streaming sessions lost and reconnected, by reason.",
        "reason", RECONNECT_REASONS, _breakdown(snap, "reconnects_by_reason"),
        counter("reconnects")(snap))
    yield _labelled_counter(
        "edgevoice_server_errors", "Error events from the server, by code.",
        "code", ERROR_CODES, _breakdown(snap, "server_errors_by_code"),
        counter("server_errors")(snap))
    for row in COUNTERS:
        value = _number(row.value(snap))
        if value is not None:
            yield CounterMetricFamily(row.name, row.help, value=value)
    for row in GAUGES:
        value = _number(row.value(snap))
        if value is not None:
            yield GaugeMetricFamily(row.name, row.help, value=value)


class _SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap

    def collect(self) -> Iterable[Metric]:
        return list(_families(self._snap))


def metrics_text(snapshot: Snapshot) -> PublicText:
    """The Prometheus text exposition (format 0.0.4) of a status snapshot, redacted."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return PublicText(redact(generate_latest(registry).decode("utf-8")))


def write_metrics(path: Path, snapshot: Snapshot) -> None:
    """Replace ``path`` atomically with the metrics of ``snapshot``, mode 0644."""
    write_atomic(path, metrics_text(snapshot))


def metric_names(text: str) -> set[str]:
    """The metric names that have samples in an exposition text."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names
