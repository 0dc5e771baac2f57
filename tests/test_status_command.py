"""`edgevoice status` as a user meets it: a real daemon streaming to the devserver, after
it stopped, a stale file, "auto" under systemd's RUNTIME_DIRECTORY, a file only the
service's group may read, and files from an older daemon or not from edgevoice at all."""

from __future__ import annotations

import ctypes
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_harness import running_daemon, wav_config
from fakes import wait_until
from signals import speech

from edgevoice.commands import status
from edgevoice.devserver import DevServer

SOURCE = speech(60.0, seed=11)


def edgevoice_status(config: Path, *args: str, env: dict[str, str] | None = None,
                     **popen: Any) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "RUNTIME_DIRECTORY"}
    return subprocess.run(
        [sys.executable, "-m", "edgevoice", "status", "--config", str(config), *args],
        capture_output=True, text=True, env={**base, **(env or {})}, timeout=30,
        check=False, **popen)


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def snapshot(**changes: Any) -> dict[str, Any]:
    """A status file as the daemon writes it (daemon/app.py Daemon.status_snapshot)."""
    now = time.time()
    counters = {"chunks_captured": 500, "chunks_sent": 499, "audio_bytes_sent": 479040,
                "chunks_dropped_outage": 3, "chunks_replayed": 12, "capture_overflows": 0,
                "capture_dropped_blocks": 0, "reconnects": 3, "rollovers": 1, "stalls": 1,
                "server_errors": 2, "audio_bytes_captured": 480000}
    data: dict[str, Any] = {
        "state": "streaming", "detail": "", "last_error": "", "session_id": "sess_abc",
        "capture_rate": 48000, "waiting": "", "reload": "", "capture_level_dbfs": -31.24,
        "counters": counters,
        "reconnects_by_reason": {"expired": 1, "closed": 2, "reset": 0, "stall": 0},
        "server_errors_by_code": {"rate_limit_exceeded": 2},
        "pid": os.getpid(), "version": "9.9", "model": "gpt-realtime-2.1",
        "mode": "conversation", "chunk_ms": 20, "capture_device": "'USB' (hw:1,0)",
        "started_at": now - 3700, "updated_at": now, "uptime_s": 3700.0,
        "session_age_s": 723.4, "last_server_event_age_s": 0.3, "uplink_queue_chunks": 1,
        "seconds_captured": 10.0, "seconds_streamed": 9.98,
    }
    data.update(changes)
    return data


def setup(tmp_path: Path, content: dict[str, Any] | str | None) -> Path:
    """A config naming tmp_path/status.json, holding `content` (None: no file)."""
    path = tmp_path / "status.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"health": {"status_file": str(path)}}))
    return config


# -- a real daemon -------------------------------------------------------------------------

@pytest.mark.integration
def test_status_while_streaming_and_after_the_daemon_stopped(
        server: DevServer, tmp_path: Path) -> None:
    status_file = tmp_path / "run" / "status.json"
    config = wav_config(tmp_path, server.url, SOURCE,
                        {"health": {"status_file": str(status_file)}})
    with running_daemon(tmp_path, config) as daemon:
        assert server.wait_for(lambda s: any(r.first_append_at for r in s.sessions()), 15), \
            daemon.log()

        def streaming() -> bool:
            if not status_file.exists():
                return False
            data = json.loads(status_file.read_text())
            return bool(data["state"] == "streaming" and data["seconds_streamed"] > 0)

        assert wait_until(streaming, 15), daemon.log()
        result = edgevoice_status(daemon.config_path)
        assert result.returncode == 0, result
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"edgevoice is running (pid {daemon.proc.pid}), "
                                   "status updated "), result.stdout
        text = result.stdout
        session_id = server.sessions()[0].id
        for expected in ("state:            streaming", f"session:          {session_id}",
                         "model:            gpt-realtime-2.1 (mode conversation, 20 ms",
                         "rates:            24 kHz \u2192 24 kHz", "reconnects:       0",
                         "rollovers:        0", "stall recoveries: 0", "last error:       none",
                         "dropped audio:    0.00 s, 0 chunks", "capture level:    ",
                         "s captured, ", "uptime:           "):
            assert expected in text, (expected, text)
        assert result.stderr == ""

        result = edgevoice_status(daemon.config_path, "--json")
        assert result.returncode == 0, result
        data = as_json(result)
        assert (data["running"], data["stale"]) == (True, False)
        assert 0 <= data["age_s"] <= status.STALE_AFTER_S
        assert data["pid"] == daemon.proc.pid and data["state"] == "streaming"
        assert data["status_file"] == str(status_file)
        assert data["counters"]["chunks_sent"] > 0

        assert daemon.stop() == 0
    # The last status stays; its pid is gone.
    assert json.loads(status_file.read_text())["state"] == "stopped"
    result = edgevoice_status(daemon.config_path)
    assert result.returncode == 3, result
    assert result.stdout.startswith("edgevoice is not running (it stopped "), result.stdout
    assert "state:            stopped" in result.stdout
    data = as_json(edgevoice_status(daemon.config_path, "--json"))
    assert (data["running"], data["stale"], data["state"]) == (False, False, "stopped")


@pytest.mark.integration
def test_auto_status_file_under_systemds_runtime_directory(
        server: DevServer, tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    env = {"RUNTIME_DIRECTORY": str(runtime)}
    config = wav_config(tmp_path, server.url, SOURCE, {"health": {"status_file": "auto"}})
    with running_daemon(tmp_path, config, env=env) as daemon:
        status_file = runtime / "status.json"
        assert wait_until(status_file.exists, 15), daemon.log()
        result = edgevoice_status(daemon.config_path, "--json", env=env)
        assert result.returncode == 0, result
        data = as_json(result)
        assert (data["running"], data["stale"]) == (True, False)
        assert data["pid"] == daemon.proc.pid
        assert data["status_file"] == str(status_file)
        assert status_file.stat().st_mode & 0o777 == 0o640
        # Without the variable (run by hand), "auto" means the unit's runtime directory.
        assert status.status_path("auto", {}) == Path("/run/edgevoice/status.json")


def test_a_killed_daemon_is_not_running(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid is gone
    config = setup(tmp_path, snapshot(pid=child.pid, state="streaming"))
    result = edgevoice_status(config)
    assert result.returncode == 3, result
    assert result.stdout.startswith(f"edgevoice is not running (pid {child.pid} is gone; "
                                    "last status written "), result.stdout
    assert "state:            streaming" in result.stdout  # the last known status


# -- stale, missing, unreadable, foreign files ---------------------------------------------

def test_a_stale_status_file_exits_3(tmp_path: Path) -> None:
    config = setup(tmp_path, snapshot(updated_at=time.time() - 60))  # our pid: alive
    result = edgevoice_status(config)
    assert result.returncode == 3, result
    assert result.stdout.startswith("edgevoice status is STALE: last updated 1m 0s ago "
                                    f"(pid {os.getpid()}; "), result.stdout
    assert "state:            streaming" in result.stdout
    result = edgevoice_status(config, "--json")
    assert result.returncode == 3
    data = as_json(result)
    assert (data["running"], data["stale"]) == (True, True)
    assert 59 <= data["age_s"] <= 70


def test_stale_after_a_few_update_periods_of_the_daemon() -> None:
    from edgevoice.daemon.app import STATUS_FILE_EVERY_S

    assert status.STALE_AFTER_S >= 4 * STATUS_FILE_EVERY_S
    fresh = snapshot(updated_at=1000.0 - 9.0)
    assert status.assess(fresh, 0.0, 1000.0) == {"running": True, "stale": False,
                                                  "age_s": 9.0}
    assert status.assess(snapshot(updated_at=1000.0 - 11.0), 0.0, 1000.0)["stale"]
    assert status.assess(snapshot(updated_at=1000.0 + 60.0), 0.0, 1000.0)["stale"]  # clock
    # No updated_at (an older daemon): the file's modification time.
    older = snapshot()
    del older["updated_at"]
    assert status.assess(older, 995.0, 1000.0)["age_s"] == 5.0


def test_full_human_output(tmp_path: Path) -> None:
    config = setup(tmp_path, snapshot(last_error="cannot connect: connection refused"))
    result = edgevoice_status(config)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"edgevoice is running (pid {os.getpid()}), status updated ")
    assert lines[1:14] == [
        "  state:            streaming",
        "  session:          sess_abc, 12m 3s old, last server event 0.3s ago",
        "  model:            gpt-realtime-2.1 (mode conversation, 20 ms chunks)",
        "  rates:            48 kHz \u2192 24 kHz from 'USB' (hw:1,0)",
        "  capture level:    -31.2 dBFS",
        "  reconnects:       3 (closed 2, expired 1)",
        "  rollovers:        1",
        "  stall recoveries: 1",
        "  server errors:    2 (rate_limit_exceeded 2)",
        "  last error:       cannot connect: connection refused",
        "  dropped audio:    0.06 s, 3 chunks (outage buffer full); capture: 0 blocks "
        "dropped, 0 overflows",
        "  replayed audio:   0.24 s, 12 chunks",
        "  captured:         10.00 s captured, 9.98 s streamed (99.8 %), 1 chunks queued",
    ]
    assert lines[14].startswith("  uptime:           1h 1m (since ")
    assert lines[14].endswith(", edgevoice 9.9")
    assert len(lines) == 15


def test_no_status_file_is_not_running(tmp_path: Path) -> None:
    config = setup(tmp_path, None)
    result = edgevoice_status(config)
    assert result.returncode == 3, result
    assert result.stdout.strip() == \
        f"edgevoice is not running (no status file at {tmp_path / 'status.json'})"
    result = edgevoice_status(config, "--json")
    assert result.returncode == 3
    assert as_json(result) == {
        "running": False, "stale": None, "age_s": None,
        "status_file": str(tmp_path / "status.json"),
        "error": f"not running (no status file at {tmp_path / 'status.json'})"}


@pytest.mark.parametrize("content", ["", '{"state": "stream', "[1, 2]", "\xff"])
def test_a_file_that_is_not_a_status_file_exits_1(tmp_path: Path, content: str) -> None:
    config = setup(tmp_path, content)
    result = edgevoice_status(config)
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"edgevoice: {tmp_path / 'status.json'} is not a status file ("), result.stderr
    assert "Traceback" not in result.stderr


def test_status_file_null_in_the_config_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"health": {"status_file": None}}))
    result = edgevoice_status(config)
    assert result.returncode == 1
    assert "health.status_file is null" in result.stderr


def test_an_older_daemons_file_with_few_keys(tmp_path: Path) -> None:
    config = setup(tmp_path, {"state": "connecting", "pid": os.getpid(),
                              "updated_at": time.time(), "counters": {"reconnects": 1}})
    result = edgevoice_status(config)
    assert result.returncode == 0, result
    assert "  state:            connecting" in result.stdout
    assert "  reconnects:       1" in result.stdout
    assert "  model:            unknown" in result.stdout
    assert "  uptime:           -" in result.stdout
    assert "  capture level:    -" in result.stdout
    config = setup(tmp_path, snapshot(capture_level_dbfs=-math.inf))  # "-Infinity"
    assert "capture level:    digital silence (-inf dBFS)" in edgevoice_status(config).stdout
    config = setup(tmp_path, snapshot(muted=True))
    assert "  state:            streaming (MUTED: no microphone audio leaves the device)" \
        in edgevoice_status(config).stdout
    # Nothing but a state: no pid to ask, so freshness decides.
    config = setup(tmp_path, {"state": "streaming"})
    result = edgevoice_status(config, "--json")
    assert result.returncode == 0, result
    assert as_json(result)["running"] is True
    assert "no pid in the file" in edgevoice_status(config).stdout


def test_pid_checks_never_signal_a_group() -> None:
    for pid in (0, -1, True, "1", 2**70, None):
        assert status.pid_alive(pid) is None
    assert status.pid_alive(os.getpid()) is True


def test_texts_from_the_file_cannot_drive_the_terminal(tmp_path: Path) -> None:
    key = "sk-" + "abcdefghijklmnopqrstuvwx0123"
    config = setup(tmp_path, snapshot(last_error=f"bad \x1b[2Jkey {key}\x07",
                                      reconnects_by_reason={"\x1b]0;x": 1}))
    result = edgevoice_status(config)
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert key not in result.stdout
    assert "last error:       bad ?[2Jkey [REDACTED]?" in result.stdout
    assert key not in edgevoice_status(config, "--json").stdout


# -- permissions (as the packaged unit sets them) -----------------------------------------

SERVICE_ID = 54321  # owner and group of the status file here (the unit: edgevoice-daemon,
# group edgevoice); an id no one in this test is


def _without_dac_override() -> None:
    """In the child, before exec: root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH obeys
    file modes like any user (an unprivileged test user needs no access to the venv)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_permission_denied_exits_4_and_says_how_to_get_access(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file owned by another user")
    try:
        subprocess.run(["true"], preexec_fn=_without_dac_override, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here: {exc}")
    # /run/edgevoice (0750) and status.json (0640), owned by the service's user and group.
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o750)
    status_file = runtime / "status.json"
    status_file.write_text(json.dumps(snapshot()))
    status_file.chmod(0o640)
    for path in (runtime, status_file):
        os.chown(path, SERVICE_ID, SERVICE_ID)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"health": {"status_file": str(status_file)}}))
    outsider: dict[str, Any] = {"preexec_fn": _without_dac_override, "extra_groups": []}
    result = edgevoice_status(config, **outsider)
    assert result.returncode == 4, result
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"edgevoice: cannot read {status_file}: permission denied (members of the edgevoice "
        "group may read it: sudo usermod -aG edgevoice $USER, then log in again)")
    result = edgevoice_status(config, "--json", **outsider)
    assert result.returncode == 4
    assert as_json(result)["running"] is None
    # A member of the service's group reads it.
    result = edgevoice_status(config, **{**outsider, "extra_groups": [SERVICE_ID]})
    assert result.returncode == 0, result
    assert "state:            streaming" in result.stdout
