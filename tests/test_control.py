"""The control socket and `edgevoice ctl`: the server's bounds (unit), mute in the backlog,
and the real daemon (subprocess) against the devserver: mute stops the appends within a
chunk and survives a reload and a restart, say produces a response, status, no daemon."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_harness import merge, running_daemon, wav_config
from fakes import wait_until
from signals import speech

from edgevoice.cli import main
from edgevoice.daemon.app import say_events
from edgevoice.daemon.backlog import AudioChunk, ChunkBacklog, ClientEvent
from edgevoice.daemon.control import (
    ControlError,
    ControlServer,
    mute_state_path,
    request,
)
from edgevoice.devserver import DevServer
from edgevoice.health.status import status_line
from edgevoice.unix_socket import SOCKET_MODE


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket's path has at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="evctl-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _fail(request: dict[str, Any]) -> dict[str, Any]:
    raise ControlError("not now")


def _crash(request: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("boom")


@pytest.fixture
def control(short_dir: Path) -> Iterator[ControlServer]:
    commands = {"status": lambda r: {"status": {"state": "streaming"}},
                "echo": lambda r: {"got": r}, "say": _fail, "crash": _crash}
    server = ControlServer(short_dir / "c.sock", commands, client_timeout_s=0.5,
                           max_request_bytes=1024)
    server.start()
    try:
        yield server
    finally:
        server.stop(2.0)


def _raw(path: Path, data: bytes, wait_s: float = 3.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(wait_s)
        sock.connect(str(path))
        if data:
            with contextlib.suppress(OSError):  # the server may close before reading all
                sock.sendall(data)
        out = b""
        try:
            while piece := sock.recv(4096):
                out += piece
        except OSError:
            pass
        return out


# -- the socket server ------------------------------------------------------------------


def test_socket_mode_answers_and_removal_at_stop(control: ControlServer) -> None:
    info = os.stat(control.path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == SOCKET_MODE
    assert info.st_gid == os.getegid()
    assert request(control.path, {"cmd": "status"}) == {"ok": True,
                                                         "status": {"state": "streaming"}}
    assert request(control.path, {"cmd": "echo", "x": 1})["got"] == {"cmd": "echo", "x": 1}
    assert request(control.path, {"cmd": "say"}) == {"ok": False, "error": "not now"}
    crashed = request(control.path, {"cmd": "crash"})
    assert crashed["ok"] is False and "boom" in crashed["error"]
    unknown = request(control.path, {"cmd": "nope"})
    assert unknown["ok"] is False and "unknown command 'nope'" in unknown["error"]
    assert json.loads(_raw(control.path, b"not json\n"))["error"] == "not a JSON line"
    assert json.loads(_raw(control.path, b"[1]\n"))["ok"] is False
    assert control.alive
    control.stop(2.0)
    assert not control.path.exists()


def test_a_silent_client_is_dropped_and_the_next_one_served(control: ControlServer) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.settimeout(5.0)
        silent.connect(str(control.path))
        started = time.monotonic()
        # Meanwhile another client queues up behind it.
        reply = json.loads(silent.recv(4096))
        waited = time.monotonic() - started
        assert reply["ok"] is False and "no complete request" in reply["error"]
        assert 0.3 <= waited < 2.0
    assert request(control.path, {"cmd": "status"})["ok"] is True
    assert control.dropped == 1


def test_an_oversized_line_is_refused_and_the_next_client_served(
        control: ControlServer) -> None:
    reply = json.loads(_raw(control.path, b"x" * 5000))
    assert reply == {"ok": False, "error": "request too long (more than 1024 bytes)"}
    long_line = json.dumps({"cmd": "echo", "pad": "y" * 2000}).encode() + b"\n"
    assert json.loads(_raw(control.path, long_line))["ok"] is False
    for _ in range(3):  # several clients, one after another
        assert request(control.path, {"cmd": "status"})["ok"] is True
    assert control.dropped == 2


def test_a_stale_socket_is_replaced_and_a_live_one_or_a_file_is_not(short_dir: Path) -> None:
    path = short_dir / "c.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a killed daemon's
    first = ControlServer(path, {"status": lambda r: {}})
    first.start()
    try:
        assert request(path, {"cmd": "status"}) == {"ok": True}
        second = ControlServer(path, {"status": lambda r: {}})
        with pytest.raises(OSError, match="in use"):
            second.start()
        assert request(path, {"cmd": "status"}) == {"ok": True}  # the first one still
    finally:
        first.stop(2.0)
    assert not path.exists()
    path.write_text("mine")
    with pytest.raises(OSError, match="not a socket"):
        ControlServer(path, {}).start()
    assert path.read_text() == "mine"


def test_mute_state_path() -> None:
    sock = Path("/run/x/control.sock")
    assert mute_state_path(sock, {"STATE_DIRECTORY": "/var/lib/edgevoice:/x"}) == \
        Path("/var/lib/edgevoice/muted")
    assert mute_state_path(sock, {}) == Path("/run/x/control.sock.muted")
    assert mute_state_path(None, {}) is None


# -- mute in the backlog, status line, say events ----------------------------------------


def test_mute_drops_queued_audio_and_its_commit_refuses_new_and_keeps_urgent() -> None:
    dropped: list[int] = []
    backlog = ChunkBacklog(10, on_mute_drop=dropped.append)
    chunks = [AudioChunk(b"\0\0" * 480, -60.0, 0.0, i) for i in range(4)]
    commit = ClientEvent({"type": "input_audio_buffer.commit"})  # the speech gate's
    urgent = ClientEvent({"type": "response.cancel"}, urgent=True)
    for item in (chunks[0], chunks[1], commit, chunks[2]):
        assert backlog.put(item)
    backlog.put_urgent(urgent)
    assert backlog.set_muted(True) == 3
    assert dropped == [3]
    assert not backlog.put(chunks[3])
    backlog.push_front([chunks[0]])  # the sender gives a chunk back: dropped, counted
    assert dropped == [3, 1]
    # The commit closed audio that is gone (and the mute clears the server's buffer): an
    # empty commit and an answer to nothing must not follow the mute.
    assert len(backlog) == 0
    assert backlog.get(0) is urgent and backlog.get(0) is None
    assert backlog.set_muted(False) == 0
    assert backlog.put(chunks[3]) and len(backlog) == 1


def test_status_line_says_muted() -> None:
    snap = {"state": "streaming", "capture_rate": 24000, "counters": {"reconnects": 0},
            "muted": True}
    assert status_line(snap, "m", 60.0).endswith(", muted")
    snap["muted"] = False
    assert "muted" not in status_line(snap, "m", 60.0)


def test_say_is_a_system_message_and_a_response() -> None:
    item, response = say_events('Dinner is "ready"')
    assert item["type"] == "conversation.item.create"
    assert item["item"]["type"] == "message" and item["item"]["role"] == "system"
    content = item["item"]["content"]
    assert content[0]["type"] == "input_text"
    assert content[0]["text"].endswith('"Dinner is \\"ready\\""')
    assert response["type"] == "response.create" and set(response) == {"type", "event_id"}
    assert item["event_id"] != response["event_id"]


# -- ctl's exit codes (in process) ------------------------------------------------------


def test_ctl_exit_codes(control: ControlServer, short_dir: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ctl", "--socket", str(control.path), "status"]) == 0
    assert json.loads(capsys.readouterr().out) == {"state": "streaming"}
    assert main(["ctl", "--socket", str(control.path), "say", "hi"]) == 1
    err = capsys.readouterr().err
    assert err == "edgevoice: say refused: not now\n"
    assert main(["ctl", "--socket", str(short_dir / "none.sock"), "mute"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgevoice: no daemon is listening at ") and err.count("\n") == 1
    with pytest.raises(SystemExit) as usage:
        main(["ctl", "--socket", str(control.path), "bogus"])
    assert usage.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


# -- the real daemon -------------------------------------------------------------------


def _ctl(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgevoice", "ctl", "--socket", str(sock),
                           *args], capture_output=True, text=True, timeout=20, check=False)


def _appends(server: DevServer) -> int:
    return int(server.stats()["appends"])


def _mute_holds(server: DevServer, sock: Path) -> None:
    """Muted: the appends stop within one chunk, and stay stopped."""
    now = _appends(server)
    time.sleep(1.0)
    assert _appends(server) - now <= 1, (now, _appends(server))


@pytest.mark.integration
def test_mute_stops_appends_within_a_chunk_and_survives_reload_and_restart(
        server: DevServer, tmp_path: Path, short_dir: Path) -> None:
    sock = short_dir / "control.sock"
    state = tmp_path / "state"
    state.mkdir()
    config = wav_config(tmp_path, server.url, speech(120.0, seed=7),
                        {"control": {"socket": str(sock)},
                         "health": {"status_file": str(tmp_path / "status.json")}})
    env = {"STATE_DIRECTORY": str(state)}
    with running_daemon(tmp_path, config, env=env) as daemon:
        assert wait_until(lambda: _appends(server) > 25 and sock.exists(), 20), daemon.log()
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        muted = _ctl(sock, "mute")
        assert muted.returncode == 0, muted.stderr
        assert muted.stdout.startswith("muted"), muted.stdout
        _mute_holds(server, sock)
        assert (state / "muted").exists()
        status = json.loads(_ctl(sock, "status").stdout)
        assert status["muted"] is True and status["state"] == "streaming"
        assert status["counters"]["chunks_muted"] > 0
        assert status["uplink_queue_chunks"] == 0
        assert wait_until(lambda: json.loads((tmp_path / "status.json").read_text())
                          .get("muted") is True, 5)
        assert daemon.proc.poll() is None  # the capture goes on, nothing stopped
        # A reload keeps it.
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_log(r"configuration reloaded", 10), daemon.log()
        _mute_holds(server, sock)
        # Unmute: the appends resume.
        unmuted = _ctl(sock, "unmute")
        assert unmuted.returncode == 0 and unmuted.stdout.startswith("unmuted")
        before = _appends(server)
        assert wait_until(lambda: _appends(server) > before + 20, 5), daemon.log()[-6000:]
        assert not (state / "muted").exists()
        assert _ctl(sock, "mute").returncode == 0
        assert daemon.stop() == 0
    assert not sock.exists()  # removed at stop
    sessions_before = len(server.sessions())
    # A restart with the same state directory starts muted: not one chunk goes out.
    with running_daemon(tmp_path, config, env=env) as daemon:
        assert daemon.wait_log(r"starting muted", 10), daemon.log()
        assert wait_until(lambda: len(server.sessions()) > sessions_before
                          and server.sessions()[-1].updated_acked_at is not None, 15)
        time.sleep(1.5)
        assert server.sessions()[-1].n_appends == 0
        assert json.loads(_ctl(sock, "status").stdout)["muted"] is True
        assert _ctl(sock, "unmute").returncode == 0
        assert wait_until(lambda: server.sessions()[-1].n_appends > 20, 5), daemon.log()
        assert daemon.stop() == 0


@pytest.mark.integration
def test_say_produces_a_response_and_status_prints_json(
        server: DevServer, tmp_path: Path, short_dir: Path) -> None:
    sock = short_dir / "control.sock"
    # A quiet room: no turn of its own, so the only response is the announcement.
    config = wav_config(tmp_path, server.url, speech(60.0, talk=[]),
                        {"control": {"socket": str(sock)}})
    with running_daemon(tmp_path, config, env={"STATE_DIRECTORY": str(tmp_path)}) as daemon:
        assert wait_until(lambda: bool(server.sessions())
                          and server.sessions()[0].n_appends > 5 and sock.exists(), 20), \
            daemon.log()
        status = _ctl(sock, "status")
        assert status.returncode == 0, status.stderr
        snap = json.loads(status.stdout)
        assert snap["state"] == "streaming" and snap["muted"] is False
        said = _ctl(sock, "say", "hello", "there")
        assert said.returncode == 0, said.stderr
        assert said.stdout.startswith("sent to session "), said.stdout

        def answered(s: DevServer) -> bool:
            record = s.sessions()[0]
            return any(e["type"] == "response.done" for e in record.server_events)

        assert server.wait_for(answered, 15), daemon.log()
        record = server.sessions()[0]
        types = [e["type"] for e in record.client_events]
        assert "conversation.item.create" in types
        assert types.index("response.create") > types.index("conversation.item.create")
        created = next(e for e in record.client_events
                       if e["type"] == "conversation.item.create")
        assert "hello there" in json.dumps(created)
        assert [r.trigger for r in record.responses] == ["client"]
        bad = _ctl(sock, "say", " ")
        assert bad.returncode == 1 and bad.stderr == "edgevoice: say refused: say needs a " \
                                                    "text\n"
        assert daemon.stop() == 0


@pytest.mark.integration
def test_ctl_without_a_daemon_and_say_without_a_session(tmp_path: Path,
                                                        short_dir: Path) -> None:
    sock = short_dir / "control.sock"
    gone = _ctl(sock, "status")
    assert gone.returncode == 2
    assert gone.stderr == f"edgevoice: no daemon is listening at {sock} (is edgevoice " \
                          "running?)\n"
    config_file = tmp_path / "ctl.yaml"
    config_file.write_text(yaml.safe_dump({"control": {"socket": str(sock)}}))
    by_config = subprocess.run([sys.executable, "-m", "edgevoice", "ctl", "--config",
                                str(config_file), "mute"], capture_output=True, text=True,
                               timeout=20, check=False)
    assert by_config.returncode == 2 and str(sock) in by_config.stderr
    # A daemon that cannot reach its server (nothing listens on the port): no session.
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    config = wav_config(tmp_path, f"ws://127.0.0.1:{port}/v1/realtime", speech(30.0),
                        {"control": {"socket": str(sock)}})
    config = merge(config, {"reconnect": {"initial_s": 1.0}})
    with running_daemon(tmp_path, config, env={"STATE_DIRECTORY": str(tmp_path)}) as daemon:
        assert wait_until(sock.exists, 10), daemon.log()
        said = _ctl(sock, "say", "hello")
        assert said.returncode == 1
        assert said.stderr.startswith("edgevoice: say refused: no session to speak through")
        assert "Traceback" not in said.stderr
        assert daemon.stop() == 0


@pytest.mark.integration
def test_say_in_transcribe_mode_is_refused_and_a_reload_moves_the_socket(
        server: DevServer, tmp_path: Path, short_dir: Path) -> None:
    sock = short_dir / "control.sock"
    config = wav_config(tmp_path, server.url, speech(30.0),
                        {"control": {"socket": str(sock)},
                         "session": {"mode": "transcribe"}})
    with running_daemon(tmp_path, config) as daemon:  # no STATE_DIRECTORY: beside the socket
        assert wait_until(lambda: _appends(server) > 5 and sock.exists(), 20), daemon.log()
        said = _ctl(sock, "say", "hello")
        assert said.returncode == 1
        assert said.stderr.startswith("edgevoice: say refused: say needs session.mode: "
                                      "conversation")
        assert _ctl(sock, "mute").returncode == 0
        assert Path(f"{sock}.muted").exists()
        _mute_holds(server, sock)
        moved = short_dir / "moved.sock"
        daemon.config_path.write_text(yaml.safe_dump(
            merge(config, {"control": {"socket": str(moved)}})))
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_log(r"configuration reloaded", 10), daemon.log()
        assert not sock.exists() and not Path(f"{sock}.muted").exists()
        assert Path(f"{moved}.muted").exists()
        assert json.loads(_ctl(moved, "status").stdout)["muted"] is True
        _mute_holds(server, moved)
        assert daemon.stop() == 0
    assert not moved.exists()
