"""Prometheus textfile metrics (edgevoice/health/metrics.py) and what is built on them:
the Grafana dashboard and the alert rules under contrib/.

promtool (Debian package `prometheus`, in the Makefile's APT_PACKAGES) checks the text and
the rules; every metric the dashboard and the rules name must be one the daemon writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_harness import merge, running_daemon, wav_config
from fakes import wait_until
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families as _parse
from signals import speech

from edgevoice import __version__
from edgevoice.daemon.stats import KNOWN_ERROR_CODES, RECONNECT_REASONS, Counters, Stats
from edgevoice.devserver import DevServer
from edgevoice.health import logsetup
from edgevoice.health.logsetup import REDACTED, RedactingFilter
from edgevoice.health.metrics import STATES, metric_names, metrics_text, write_metrics
from edgevoice.health.status import prometheus_text
from edgevoice.realtime.protocol import PCM_BYTES_PER_S as BYTES_PER_S

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "contrib" / "grafana" / "edgevoice.json"
ALERTS = ROOT / "contrib" / "prometheus" / "edgevoice-alerts.yml"
CONTRIB_README = ROOT / "contrib" / "README.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: apt-get install prometheus (make deps)")
# What node_exporter adds to the daemon's metrics.
NODE_EXPORTER_METRICS = {"node_textfile_mtime_seconds"}
METRIC_NAME = re.compile(r"\bedgevoice_[a-z_]+")

# Typed here: prometheus-client 0.16 (Debian 12) leaves the parser unannotated.
parse_text: Callable[[str], Iterable[Metric]] = _parse
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def full_snapshot() -> dict[str, Any]:
    """A snapshot as Daemon.status_snapshot() makes it, every field set."""
    stats = Stats()
    for n, f in enumerate(fields(Counters), start=1):
        stats.add(f.name, n * 10)
    stats.reconnect("reset")
    stats.reconnect("reset")
    stats.reconnect("stall")
    stats.reconnect("something new")  # other
    stats.server_error("rate_limit_exceeded")
    stats.server_error("a_code_from_the_future")  # other
    stats.set(state="streaming", capture_rate=48000, capture_level_dbfs=-31.5)
    snap = stats.snapshot()
    counters = snap["counters"]
    snap.update(
        pid=1234, version="1.2.3", model="gpt-realtime-2.1", mode="conversation",
        chunk_ms=20, capture_device="USB Audio", started_at=1_790_000_000.5,
        updated_at=1_790_000_100.0, uptime_s=99.5, session_age_s=42.0,
        last_server_event_age_s=0.4, uplink_queue_chunks=3,
        seconds_captured=round(counters["audio_bytes_captured"] / BYTES_PER_S, 2),
        seconds_streamed=round(counters["audio_bytes_sent"] / BYTES_PER_S, 2),
        streamed_ratio=0.25, session_seconds_captured=40.0, session_seconds_streamed=9.5,
        session_streamed_ratio=0.2375, streamed_today_s=812.5, max_streamed_s_per_day=1800.0,
        capped=False, capped_reason="", capped_until=None,
    )
    return snap


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in parse_text(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(parsed: Samples, name: str, **labels: str) -> float:
    return parsed[(name, frozenset(labels.items()))]


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


# -- the text ---------------------------------------------------------------------------------


def test_metrics_from_a_snapshot() -> None:
    snap = full_snapshot()
    parsed = samples(metrics_text(snap))
    c = snap["counters"]
    assert value(parsed, "edgevoice_build_info", version="1.2.3", model="gpt-realtime-2.1") == 1
    for state in STATES:
        assert value(parsed, "edgevoice_state", state=state) == (state == "streaming")
    reasons = {r: value(parsed, "edgevoice_reconnects_total", reason=r) for r in RECONNECT_REASONS}
    assert reasons == {**dict.fromkeys(RECONNECT_REASONS, 0.0), "reset": 2, "stall": 1, "other": 1}
    codes = {code: value(parsed, "edgevoice_server_errors_total", code=code)
             for code in (*KNOWN_ERROR_CODES, "other")}
    assert codes == {**dict.fromkeys(codes, 0.0), "rate_limit_exceeded": 1, "other": 1}
    assert value(parsed, "edgevoice_chunks_captured_total") == c["chunks_captured"]
    assert value(parsed, "edgevoice_chunks_sent_total") == c["chunks_sent"]
    assert value(parsed, "edgevoice_audio_sent_bytes_total") == c["audio_bytes_sent"]
    assert value(parsed, "edgevoice_audio_captured_bytes_total") == c["audio_bytes_captured"]
    assert value(parsed, "edgevoice_audio_captured_seconds_total") == pytest.approx(
        c["audio_bytes_captured"] / BYTES_PER_S)
    assert value(parsed, "edgevoice_audio_streamed_seconds_total") == pytest.approx(
        c["audio_bytes_sent"] / BYTES_PER_S)
    assert value(parsed, "edgevoice_chunks_dropped_total") == c["chunks_dropped_outage"]
    assert value(parsed, "edgevoice_capture_overflows_total") == c["capture_overflows"]
    assert value(parsed, "edgevoice_rollovers_total") == c["rollovers"]
    assert value(parsed, "edgevoice_stall_recoveries_total") == c["stalls"]
    assert value(parsed, "edgevoice_capture_level_dbfs") == -31.5
    assert value(parsed, "edgevoice_capture_sample_rate_hertz") == 48000
    assert value(parsed, "edgevoice_last_server_event_age_seconds") == 0.4
    assert value(parsed, "edgevoice_uplink_queue_chunks") == 3
    assert value(parsed, "edgevoice_uptime_seconds") == 99.5
    assert value(parsed, "edgevoice_start_time_seconds") == 1_790_000_000.5
    assert value(parsed, "edgevoice_session_age_seconds") == 42
    snap["muted"] = True
    assert value(samples(metrics_text(snap)), "edgevoice_muted") == 1
    # Counters only (no _created series from prometheus_client), every name prefixed.
    assert all(name.startswith("edgevoice_") and not name.endswith("_created")
               for name, _ in parsed)


def test_every_counter_is_exported() -> None:
    """A counter added to stats.Counters without a row in metrics.COUNTERS fails here."""
    snap = full_snapshot()
    exported = set(samples(metrics_text(snap)).values())
    for n, f in enumerate(fields(Counters), start=1):
        if f.name in ("reconnects", "server_errors"):  # by reason / by code
            continue
        assert float(n * 10) in exported, f"counter {f.name} is not in the metrics"


def test_unknown_values_are_left_out() -> None:
    """Before a device opens or a session exists the gauges have no value: no sample, not
    a made-up 0; an unknown state sets none of the fixed ones."""
    snap = full_snapshot()
    snap.update(capture_level_dbfs=None, last_server_event_age_s=None, session_age_s=None,
                state="something else")
    text = metrics_text(snap)
    names = metric_names(text)
    assert "edgevoice_capture_level_dbfs" not in names
    assert "edgevoice_last_server_event_age_seconds" not in names
    assert "edgevoice_session_age_seconds" not in names
    parsed = samples(text)
    assert all(value(parsed, "edgevoice_state", state=s) == 0 for s in STATES)


def test_old_entry_point_and_partial_snapshot() -> None:
    """status.prometheus_text (what app.py calls) is the same text; a snapshot without the
    breakdowns still gives the totals."""
    snap = full_snapshot()
    assert prometheus_text(snap) == metrics_text(snap)
    text = metrics_text({"state": "offline", "counters": {"reconnects": 2}})
    parsed = samples(text)
    assert value(parsed, "edgevoice_reconnects_total") == 2
    assert value(parsed, "edgevoice_build_info", version="unknown", model="unknown") == 1


def test_label_values_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-" + "proj-" + "metricsZZZ0123456789abcdefghijklmnopqrstuv"
    monkeypatch.setattr(logsetup, "_FILTER", RedactingFilter([secret]))
    snap = full_snapshot()
    snap["model"] = f'odd "model" {secret}\n'
    text = metrics_text(snap)
    assert secret[:12] not in text and secret[-12:] not in text
    (family,) = [f for f in parse_text(text)
                 if f.name == "edgevoice_build_info"]
    assert REDACTED in family.samples[0].labels["model"]


@pytest.mark.parametrize("umask", [0o077, 0o022])
def test_written_atomically_world_readable(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "node-exporter" / "edgevoice.prom"
    old = os.umask(umask)
    try:
        write_metrics(path, full_snapshot())
        write_metrics(path, full_snapshot())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["edgevoice.prom"]  # no temporary left
    assert "edgevoice_build_info" in path.read_text()


@needs_promtool
def test_promtool_accepts_the_text() -> None:
    snap = full_snapshot()
    result = promtool("check", "metrics", stdin=metrics_text(snap))
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dependency_is_declared() -> None:
    assert '"prometheus-client>=0.16"' in (ROOT / "pyproject.toml").read_text()
    assert "python3-prometheus-client" in (ROOT / "debian" / "control").read_text()


# -- dashboard and alert rules ----------------------------------------------------------------


def dashboard_exprs() -> list[str]:
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                if key in ("expr", "definition", "query") and isinstance(item, str):
                    exprs.append(item)
                else:
                    walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    return [e for e in exprs if e != "prometheus"]  # the data source variable's type


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [str(rule["expr"]) for group in doc["groups"] for rule in group["rules"]]


def test_dashboard_and_rules_name_only_written_metrics() -> None:
    written = metric_names(metrics_text(full_snapshot()))
    # Counters are named by their samples (…_total) in PromQL, as written.
    exprs = dashboard_exprs() + rule_exprs()
    assert len(exprs) > 15
    used: set[str] = set()
    for expr in exprs:
        used |= set(METRIC_NAME.findall(expr))
        others = set(re.findall(r"\bnode_[a-z_]+", expr))
        assert others <= NODE_EXPORTER_METRICS, expr
    unknown = used - written
    assert not unknown, f"not written by the daemon: {sorted(unknown)}"
    # What the task asks the dashboard and rules to show.
    assert {"edgevoice_state", "edgevoice_reconnects_total", "edgevoice_stall_recoveries_total",
            "edgevoice_audio_streamed_seconds_total", "edgevoice_audio_captured_seconds_total",
            "edgevoice_capture_level_dbfs", "edgevoice_server_errors_total",
            "edgevoice_build_info", "edgevoice_start_time_seconds"} <= used
    assert any("node_textfile_mtime_seconds" in e for e in dashboard_exprs())
    assert any("node_textfile_mtime_seconds" in e for e in rule_exprs())
    # The README's list of metrics holds no name the daemon does not write either.
    assert set(METRIC_NAME.findall(CONTRIB_README.read_text())) <= written


def test_dashboard_shape() -> None:
    dash = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "instance"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], panel["title"]


@needs_promtool
def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, as a recording rule: promtool
    parses the PromQL."""
    rules = []
    for n, expr in enumerate(dashboard_exprs()):
        if expr.startswith("label_values("):  # Grafana's own function
            continue
        filled = expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
        rules.append({"record": f"edgevoice:dashboard_query_{n}", "expr": filled})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# -- the daemon -------------------------------------------------------------------------------


def read_samples(path: Path) -> Samples | None:
    try:
        return samples(path.read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.integration
def test_daemon_metrics_count_a_forced_reconnect(server: DevServer, tmp_path: Path) -> None:
    """The real daemon's metrics file: promtool accepts it, one close by the server (1011)
    is one reconnect with reason "closed", and the figures are the daemon's."""
    metrics_path = tmp_path / "node-exporter" / "edgevoice.prom"
    config = merge(wav_config(tmp_path, server.url, speech(60.0)),
                   {"health": {"metrics_file": str(metrics_path)}})
    with running_daemon(tmp_path, config) as daemon:

        def streaming(min_connections: int) -> bool:
            parsed = read_samples(metrics_path)
            if not parsed or ("edgevoice_build_info" not in {n for n, _ in parsed}):
                return False
            return (value(parsed, "edgevoice_state", state="streaming") == 1
                    and value(parsed, "edgevoice_connections_total") >= min_connections
                    and value(parsed, "edgevoice_chunks_sent_total") > 0)

        wait_until(metrics_path.exists, 20)
        if metrics_path.exists() and "edgevoice_build_info" not in metrics_path.read_text():
            pytest.skip("the daemon still writes the old metrics text: app.py does not call "
                        "edgevoice.health.metrics yet")
        assert wait_until(lambda: streaming(1), 20), daemon.log()[-3000:]
        server.close_all(1011)
        assert wait_until(lambda: streaming(2), 20), daemon.log()[-3000:]
        time.sleep(2.5)  # one more write, so the file holds the settled figures
        text = metrics_path.read_text()
        assert daemon.stop() == 0
        final = metrics_path.read_text()
    parsed = samples(text)
    reasons = {r: value(parsed, "edgevoice_reconnects_total", reason=r) for r in RECONNECT_REASONS}
    assert reasons == {**dict.fromkeys(RECONNECT_REASONS, 0.0), "closed": 1}, reasons
    assert value(parsed, "edgevoice_connections_total") == 2
    assert value(parsed, "edgevoice_build_info", version=__version__,
                 model=config["server"].get("model", "gpt-realtime-2.1")) == 1
    sent = value(parsed, "edgevoice_audio_sent_bytes_total")
    assert sent == value(parsed, "edgevoice_chunks_sent_total") * BYTES_PER_S * 0.02
    assert value(parsed, "edgevoice_audio_streamed_seconds_total") == pytest.approx(
        sent / BYTES_PER_S)
    captured = value(parsed, "edgevoice_audio_captured_seconds_total")
    assert captured > 1.0
    assert value(parsed, "edgevoice_chunks_captured_total") == pytest.approx(captured / 0.02)
    assert value(parsed, "edgevoice_capture_level_dbfs") > -120
    assert value(parsed, "edgevoice_last_server_event_age_seconds") >= 0
    assert value(parsed, "edgevoice_uptime_seconds") > 0
    assert all(v == 0 for (n, _), v in parsed.items() if n == "edgevoice_server_errors_total")
    assert stat.S_IMODE(metrics_path.stat().st_mode) == 0o644
    assert [p.name for p in metrics_path.parent.iterdir()] == ["edgevoice.prom"]
    # The last write, at shutdown.
    assert value(samples(final), "edgevoice_state", state="stopped") == 1
    if PROMTOOL is not None:
        for body in (text, final):
            result = promtool("check", "metrics", stdin=body)
            assert result.returncode == 0 and not result.stdout.strip(), result.stdout
