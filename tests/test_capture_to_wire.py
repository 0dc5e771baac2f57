"""Capture-to-wire latency: the bounded histogram in daemon/stats.py, its figures in the
status snapshot and the metrics, and the real daemon recording every chunk it sends."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import merge, running_daemon, wav_config
from signals import speech

from edgevoice.daemon.stats import LatencyHistogram, Stats
from edgevoice.devserver import DevServer
from edgevoice.health.metrics import metrics_text

STEP = 2.0 ** (1 / LatencyHistogram.PER_DOUBLING)  # one bucket's width, as a ratio


def test_percentiles_are_exact_to_one_bucket() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=0.0, sigma=1.0, size=5000)  # ms, around 1 ms
    hist = LatencyHistogram()
    for v in values:
        hist.record(float(v))
    for q in (0.5, 0.9, 0.99):
        true = float(np.quantile(values, q, method="inverted_cdf"))
        got = hist.percentile(q)
        assert got is not None
        assert true <= got <= true * STEP * 1.0001, (q, true, got)
    assert hist.percentile(1.0) == pytest.approx(values.max())
    assert hist.count == values.size
    summary = hist.summary()
    assert sum(n for _edge, n in summary["buckets"]) == values.size
    assert summary["p50"] <= summary["p99"] <= summary["max"]


def test_empty_and_out_of_range() -> None:
    hist = LatencyHistogram()
    assert hist.percentile(0.5) is None
    assert hist.summary() == {"count": 0, "p50": None, "p99": None, "max": None,
                              "buckets": []}
    hist.record(-3.0)  # a clock oddity lands in the first bucket, never raises
    hist.record(0.0)
    hist.record(1e9)  # 11 days: the last bucket
    buckets = hist.summary()["buckets"]
    assert buckets[0] == [round(LatencyHistogram.upper_ms(0), 3), 2]
    assert buckets[-1][0] == round(LatencyHistogram.upper_ms(LatencyHistogram.BUCKETS - 1), 3)
    assert hist.percentile(1.0) == 1e9  # the maximum itself, not the bucket's edge


def test_memory_is_fixed() -> None:
    hist = LatencyHistogram()
    for i in range(100_000):
        hist.record(i % 97 * 0.37)
    assert len(hist.summary()["buckets"]) <= LatencyHistogram.BUCKETS
    assert len(hist._counts) == LatencyHistogram.BUCKETS


def test_snapshot_and_metrics_carry_it() -> None:
    stats = Stats()
    for ms in (0.4, 0.5, 0.6, 30.0):
        stats.add_many({}, latency_ms=ms)
    snap = stats.snapshot()
    latency = snap["capture_to_wire_ms"]
    assert latency["count"] == 4
    assert 0.5 <= latency["p50"] <= 0.5 * STEP
    assert latency["p99"] == latency["max"] == 30.0
    json.dumps(snap)  # the status file is JSON
    text = metrics_text(snap)
    p50 = re.search(r"^edgevoice_capture_to_wire_p50_seconds ([0-9.e+-]+)$", text, re.M)
    p99 = re.search(r"^edgevoice_capture_to_wire_p99_seconds ([0-9.e+-]+)$", text, re.M)
    assert p50 and p99, text
    assert float(p50.group(1)) == pytest.approx(latency["p50"] / 1000)
    assert float(p99.group(1)) == pytest.approx(0.03)


@pytest.mark.integration
def test_the_daemon_records_every_chunk_it_sends(server: DevServer, tmp_path: Path) -> None:
    status_path = tmp_path / "status.json"
    config = merge(wav_config(tmp_path, server.url, speech(30.0)),
                   {"health": {"status_file": str(status_path)}})
    with running_daemon(tmp_path, config) as daemon:
        assert server.wait_for(lambda s: s.stats()["appends"] >= 50, 20), daemon.log()[-2000:]
        time.sleep(0.5)
        assert daemon.stop() == 0
    status = json.loads(status_path.read_text())  # written at exit
    latency = status["capture_to_wire_ms"]
    sent = status["counters"]["chunks_sent"]
    assert sent >= 50
    assert latency["count"] == sent  # one record per chunk handed to the socket
    assert sum(n for _edge, n in latency["buckets"]) == sent
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert math.isfinite(latency["max"])
    # A paced source and a local server: a chunk waits for the sender, not for seconds.
    assert latency["p50"] < 1000.0, latency


def test_the_cached_summary_follows_every_record() -> None:
    hist = LatencyHistogram()
    hist.record(1.0)
    first = hist.summary()
    first["extra"] = True  # a caller adding to its copy does not touch the cache
    assert "extra" not in hist.summary()
    hist.record(200.0)
    second = hist.summary()
    assert second["count"] == 2 and second["max"] == 200.0
    assert second["p99"] == 200.0 and second["p50"] == pytest.approx(1.0, rel=STEP - 1)
