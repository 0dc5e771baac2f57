"""No piece of the API key leaves through any output of the health package.

A registered key is searched for, whole and as every run of 8 characters of it, in: a log
line on stderr, the STATUS= datagram received on a real notify socket, the status file (and
its mode: 0640, never world-readable) and the metrics file (0644, redacted too). The texts
hold the key cut at every position (``key[:n]``), as a shortened server message would.
The journald read-back is in tests/test_journald.py (it needs its journald fixture); the
last test runs the daemon itself against the devserver, which echoes pieces of the key.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import KEY, merge, running_daemon, wav_config
from fakes import wait_until
from signals import speech
from systemd_fixtures import NotifyListener, NotifyRecorder, notify_env

from edgevoice.devserver import DevServer
from edgevoice.health import logsetup
from edgevoice.health.logsetup import MIN_FRAGMENT_LEN, REDACTED, RedactingFilter, setup_logging
from edgevoice.health.notify import SystemdNotifier
from edgevoice.health.status import prometheus_text, status_json, status_line, write_atomic


def new_key() -> str:
    return "sk-" + "proj-" + secrets.token_urlsafe(120)


def pieces(secret: str) -> set[str]:
    return {secret[i : i + MIN_FRAGMENT_LEN] for i in range(len(secret) - MIN_FRAGMENT_LEN + 1)}


def assert_no_piece(data: str | bytes, secret: str) -> None:
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape")
    leaked = sorted(p for p in pieces(secret) if p.encode() in raw)
    assert not leaked, f"{len(leaked)} pieces of the key leaked, e.g. {leaked[:3]}"


def leaky_texts(key: str) -> list[str]:
    """A server error echoing the key, cut at every position, plus the usual shapes."""
    texts = [f"invalid_api_key: Incorrect API key provided: {key[:n]}"
             for n in range(MIN_FRAGMENT_LEN, len(key) + 1)]
    texts += [f"...{key[-n:]} was revoked" for n in range(MIN_FRAGMENT_LEN, len(key), 7)]
    texts += [
        f"handshake failed: Authorization: Bearer {key}",
        f'HTTP 401 at handshake: {{"api-key": "{key}"}}',
        f"body: {key[3:90]}\nmore: {key[90:]}",
    ]
    return texts


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh key in a fresh process-wide filter (what setup_logging and redact() use)."""
    secret = new_key()
    monkeypatch.setattr(logsetup, "_FILTER", RedactingFilter([secret]))
    yield secret


def test_stderr_log_lines(key: str, root_logging: None, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    path = tmp_path / "stderr.log"
    with path.open("w") as stream:
        setup_logging("debug", journald="off", stream=stream)
        log = logging.getLogger("edgevoice.test.secrets")
        for text in leaky_texts(key):
            log.error("server error: %s", text)
            log.warning(text, extra={"edgevoice": {"EVENT": "x", "DETAIL": text}})
            log.info("shortened by the format: %.60s", text)
        try:
            raise RuntimeError(f"connect failed: {key[:50]}")
        except RuntimeError:
            log.exception("failed")
    out = path.read_text()
    assert out.count(REDACTED) >= len(leaky_texts(key))
    assert_no_piece(out, key)


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_status_datagrams_on_a_real_notify_socket(key: str, kind: str) -> None:
    listener = NotifyListener(kind)
    try:
        notifier = SystemdNotifier(listener.address, sd_notify=False)
        snapshot: dict[str, Any] = {"counters": {"reconnects": 1}, "state": "offline",
                                    "detail": "retry in 5s (#2)"}
        for text in leaky_texts(key):
            notifier.status(f"offline: ({text})")  # a caller that did not redact
            payload, pid, _, _ = listener.receive()
            assert payload.startswith("STATUS=offline: (") and pid == os.getpid()
            assert_no_piece(payload, key)
            snapshot["last_error"] = text
            notifier.status(status_line(snapshot, "gpt-realtime", None))
            payload, _, _, _ = listener.receive()
            assert_no_piece(payload, key)
        notifier.status("x" * 1000 + key)  # the 1024-byte cut falls inside the key
        payload, _, _, _ = listener.receive()
        assert_no_piece(payload, key)
        listener.assert_nothing_pending()
    finally:
        listener.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o077, 0o022, 0o000])
def test_status_and_metrics_files(key: str, tmp_path: Path, umask: int) -> None:
    status_path = tmp_path / "run" / "status.json"
    metrics_path = tmp_path / "metrics" / "edgevoice.prom"
    status_path.parent.mkdir()
    status_path.write_text("old")
    status_path.chmod(0o644)  # left world-readable by an older version
    texts = leaky_texts(key)
    snapshot: dict[str, Any] = {
        "state": "offline",
        "detail": texts[-1],
        "last_error": texts[0],
        "waiting": f"waiting for microphone {key[:12]!r}",
        "counters": {"reconnects": 2, f"odd_{key[10:30]}": 1},
        "errors": texts,
        key[5:40]: "a key as a key",
    }
    old = os.umask(umask)
    try:
        write_atomic(status_path, status_json(snapshot))
        write_atomic(metrics_path, prometheus_text(snapshot))
    finally:
        os.umask(old)
    assert _mode(status_path) == 0o640
    assert _mode(metrics_path) == 0o644
    raw = status_path.read_bytes()
    assert_no_piece(raw, key)
    data = json.loads(raw)  # still valid JSON: redacted value by value
    assert data["state"] == "offline" and REDACTED in data["last_error"]
    assert data["counters"]["reconnects"] == 2
    metrics = metrics_path.read_bytes()
    assert_no_piece(metrics, key)
    assert b"edgevoice_reconnects_total 2" in metrics
    # Whatever a caller hands write_atomic is redacted, and private unless marked public.
    plain = tmp_path / "plain.txt"
    write_atomic(plain, f"raw {key}")
    assert plain.read_text() == f"raw {REDACTED}" and _mode(plain) == 0o640
    assert not list(status_path.parent.glob(".status.json.*"))  # no temporary file left


# -- the daemon -----------------------------------------------------------------------------


@pytest.mark.integration
def test_daemon_outputs_with_a_server_echoing_the_key(
    server: DevServer, notify: NotifyRecorder, tmp_path: Path
) -> None:
    """The daemon's own key (daemon_harness.KEY) comes back in a rate-limit error message,
    whole and cut at every position: its stderr log, STATUS= (shortened to 250 characters
    by status_line), the status file (0640) and the metrics file hold no piece of it."""
    status_path = tmp_path / "run" / "status.json"
    metrics_path = tmp_path / "run" / "metrics.prom"
    config = merge(wav_config(tmp_path, server.url, speech(60.0)), {
        "health": {"status_file": str(status_path), "metrics_file": str(metrics_path)},
        # Stay offline long enough for the status file (written every 2 s) to show it: the
        # backoff draws at least a tenth of initial_s, 3 s.
        "reconnect": {"initial_s": 30.0, "max_s": 30.0},
    })
    echo = " ".join(f"<{KEY[:n]}>" for n in range(MIN_FRAGMENT_LEN, len(KEY) + 1))
    with running_daemon(tmp_path, config, env=notify_env(notify)) as daemon:
        assert notify.wait_for("STATUS=streaming", timeout=20)
        sent_at = time.monotonic()
        server.send_error("rate_limit_exceeded", f"Rate limit reached for {KEY}: {echo}")
        assert notify.wait_for("STATUS=offline", timeout=10, after=sent_at)

        def offline_in_file() -> bool:
            try:
                state = json.loads(status_path.read_text()).get("state")
            except (OSError, ValueError):
                return False
            return bool(state == "offline")

        assert wait_until(offline_in_file, 10)
        status_raw = status_path.read_bytes()
        metrics_raw = metrics_path.read_bytes()
        assert daemon.stop() == 0
        log = daemon.log()
    assert "rate limited" in json.loads(status_raw)["last_error"]
    assert REDACTED in json.loads(status_raw)["last_error"]
    assert _mode(status_path) == 0o640
    assert _mode(metrics_path) == 0o644
    offline = [m.payload for m in notify.lines("STATUS=offline")]
    assert offline and all(REDACTED in p for p in offline)
    outputs: list[str | bytes] = [status_raw, metrics_raw, log]
    outputs += [m.payload for m in notify.messages]
    for output in outputs:
        assert_no_piece(output, KEY)
    assert "rate limited" in log
