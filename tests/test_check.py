"""`edgevoice check` against real parts: the devserver on 127.0.0.1 and an ALSA FIFO
microphone, run as `python -m edgevoice check` subprocesses; plus the pieces in process."""

from __future__ import annotations

import email.utils
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from alsa_fixtures import FakeMic, fake_microphone
from daemon_harness import KEY
from signals import speech

from edgevoice.devserver import DevServer
from edgevoice.doctor.alsa_busy import busy_captures, holder_of
from edgevoice.doctor.audio_checks import check_audio, is_busy, use_service_alsa_config
from edgevoice.doctor.key_checks import check_key
from edgevoice.doctor.network_checks import check_network
from edgevoice.doctor.service import ServicePaths, service_paths
from edgevoice.doctor.verdicts import Check, exit_code, failed, passed, skipped, warned
from edgevoice.errors import AudioDeviceError
from edgevoice.settings import AudioSettings, ServerSettings, Settings

RATE = 48000
KEY_ENV = "EDGEVOICE_TEST_KEY"
STRIPPED = ("OPENAI_API_KEY", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "ALSA_CONFIG_PATH",
            KEY_ENV)


@contextmanager
def microphone(tmp_path: Path, signal: Any = None) -> Iterator[FakeMic]:
    """A mono 48 kHz FIFO microphone (speech that never repeats within the listening)."""
    sig = speech(6.0, rate=RATE) if signal is None else signal
    with fake_microphone(tmp_path / "mic", rate=RATE, channels=1, signal=sig,
                         set_environ=False) as mic:
        yield mic


def write_config(tmp_path: Path, url: str, device: str, **sections: dict[str, Any]) -> Path:
    config: dict[str, Any] = {
        "audio": {"device": device, "chunk_ms": 20},
        "server": {"url": url, "api_key_env": KEY_ENV, "connect_timeout_s": 3.0,
                   "session_update_timeout_s": 3.0},
        "logging": {"journald": "off"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def check(config: Path, mic: FakeMic | None, *extra: str, key: str | None = KEY,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED}
    if mic is not None:
        env.update(mic.env)
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run(
        [sys.executable, "-m", "edgevoice", "check", "--config", str(config), "--seconds", "1",
         *extra], capture_output=True, text=True, env=env, timeout=timeout, check=False)


def verdicts(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """name -> (verdict, detail + fix) from the --json output (same checks as the text)."""
    doc = json.loads(result.stdout)
    return {c["name"]: (c["verdict"], c["detail"] + " | " + c["fix"]) for c in doc["checks"]}


def text_lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """name -> its line (and its fix line) from the text output."""
    lines: dict[str, str] = {}
    last = ""
    for line in result.stdout.splitlines():
        verdict, _, rest = line.partition("  ")
        if verdict in ("pass", "warn", "fail"):
            last = max((n for n in ALL if rest.startswith(n + " ")), key=len)
            lines[last] = line
        elif line.strip().startswith("fix:") and last:
            lines[last] += "\n" + line
    return lines


def assert_key_never_shown(result: subprocess.CompletedProcess[str]) -> None:
    out = result.stdout + result.stderr
    assert KEY not in out
    for i in range(len(KEY) - 7):
        assert KEY[i:i + 8] not in out, f"a piece of the key was printed: {KEY[i:i + 8]!r}"
    assert "Traceback" not in out


ALL = ["config", "models", "key file", "api key", "alsa config", "device", "device open",
       "level", "dns", "tcp", "tls", "clock", "handshake", "session"]


# -- end to end --------------------------------------------------------------------------


def test_good_setup_passes_every_check(tmp_path: Path, server: DevServer) -> None:
    with microphone(tmp_path) as mic:
        config = write_config(tmp_path, server.url, mic.device)
        result = check(config, mic)
        mic.check_writer()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = text_lines(result)
    assert list(lines) == ALL
    assert all(line.startswith("pass") for line in lines.values()), result.stdout
    assert "dBFS RMS" in lines["level"] and "no clipping" in lines["level"]
    assert "48000 Hz" in lines["device open"]
    assert "audio/pcm 24000 Hz" in lines["session"]
    assert result.stdout.splitlines()[-1] == "result: 0 failed, 0 warning(s); exit 0"
    assert result.stderr == ""
    assert_key_never_shown(result)
    stats = server.stats()  # one session, configured and closed; no audio: nothing billed
    assert stats["sessions"] == 1 and stats["appends"] == 0 and stats["audio_bytes"] == 0


def test_json_shape(tmp_path: Path, server: DevServer) -> None:
    with microphone(tmp_path) as mic:
        config = write_config(tmp_path, server.url, mic.device)
        result = check(config, mic, "--json")
    doc = json.loads(result.stdout)
    assert set(doc) == {"checks", "exit_code"} and doc["exit_code"] == 0
    assert [c["name"] for c in doc["checks"]] == ALL
    for c in doc["checks"]:
        assert set(c) == {"name", "verdict", "detail", "fix"}
        assert c["verdict"] in ("pass", "warn", "fail")
        assert all(isinstance(c[k], str) for k in c)
    assert result.returncode == 0
    assert_key_never_shown(result)


def test_server_down_fails_tcp_exit_1(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with microphone(tmp_path) as mic:
        config = write_config(tmp_path, f"ws://127.0.0.1:{port}/v1/realtime", mic.device)
        result = check(config, mic, "--json")
    got = verdicts(result)
    assert result.returncode == 1
    assert got["dns"][0] == "pass"
    assert got["tcp"][0] == "fail" and "connection refused" in got["tcp"][1]
    assert "the server is down or a firewall" in got["tcp"][1]
    for name in ("tls", "handshake", "session"):  # skipped, as the tcp verdict
        assert got[name][0] == "fail" and got[name][1].startswith("skipped:")
    assert got["clock"][0] == "pass"  # the local clock is still looked at
    assert got["level"][0] == "pass"
    assert "edgevoice: tcp: cannot connect" in result.stderr
    assert_key_never_shown(result)


def test_wrong_key_exits_77(tmp_path: Path, server: DevServer) -> None:
    wrong = "sk-" + "wrong-harness-key-0123456789abcdef"
    with microphone(tmp_path) as mic:
        config = write_config(tmp_path, server.url, mic.device)
        result = check(config, mic, key=wrong)
    lines = text_lines(result)
    assert result.returncode == 77, result.stdout
    assert lines["handshake"].startswith("fail") and "HTTP 401" in lines["handshake"]
    assert "rejected the API key" in lines["handshake"]
    assert lines["session"].startswith("fail") and "skipped:" in lines["session"]
    out = result.stdout + result.stderr
    for i in range(len(wrong) - 7):
        assert wrong[i:i + 8] not in out


def test_rate_limited_names_the_wait(tmp_path: Path, server: DevServer) -> None:
    server.reject_handshakes(429, {"Retry-After": "17"})
    with microphone(tmp_path) as mic:
        config = write_config(tmp_path, server.url, mic.device)
        result = check(config, mic)
    lines = text_lines(result)
    assert result.returncode == 1
    assert lines["handshake"].startswith("fail")
    assert "rate limited (HTTP 429)" in lines["handshake"]
    assert "wait 17 s" in lines["handshake"]
    assert_key_never_shown(result)


def test_server_error_is_explained(tmp_path: Path, server: DevServer) -> None:
    server.reject_handshakes(503)
    config = write_config(tmp_path, server.url, "edgevoice_test",
                          audio={"wav_file": str(tmp_path / "none.wav")})
    result = check(config, None, "--json")
    got = verdicts(result)
    assert result.returncode == 1  # the device (wav file missing) fails first: exit 1 too
    assert got["handshake"][0] == "fail" and "server trouble (HTTP 503)" in got["handshake"][1]


def test_rejected_session_update_exits_78(tmp_path: Path, server: DevServer) -> None:
    with microphone(tmp_path) as mic:
        config = write_config(tmp_path, server.url, mic.device, session={"voice": "robot"})
        result = check(config, mic)
    lines = text_lines(result)
    assert result.returncode == 78, result.stdout
    assert lines["handshake"].startswith("pass")
    assert lines["session"].startswith("fail") and "voice" in lines["session"]
    assert "change the session.* setting" in lines["session"]
    assert_key_never_shown(result)


def test_retired_model_exits_78_naming_server_model(tmp_path: Path, server: DevServer) -> None:
    server.retire_model("gpt-realtime-2")
    config = write_config(tmp_path, server.url, "unused", server={"model": "gpt-realtime-2"},
                          audio={"wav_file": str(tmp_path / "config.yaml")})
    result = check(config, None)
    lines = text_lines(result)
    assert result.returncode == 78, result.stdout
    assert lines["device"].startswith("pass") and "audio.wav_file" in lines["device"]
    assert lines["session"].startswith("fail") and "model_not_found" in lines["session"]
    assert "fix: set server.model to a current model" in lines["session"]


def test_loose_key_file_exits_78_with_chmod(tmp_path: Path, server: DevServer) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    with microphone(tmp_path) as mic:
        config = write_config(tmp_path, server.url, mic.device,
                              server={"api_key_file": str(key_file)})
        result = check(config, mic, key=None)
    lines = text_lines(result)
    assert result.returncode == 78
    assert lines["api key"].startswith("fail")
    assert f"fix: chmod 600 {key_file}" in lines["api key"]
    assert "skipped: no API key" in lines["handshake"]
    assert lines["level"].startswith("pass")  # the microphone is still checked
    assert_key_never_shown(result)


def test_missing_device_names_the_available_ones(tmp_path: Path, server: DevServer) -> None:
    with microphone(tmp_path) as mic:
        config = write_config(tmp_path, server.url, "no-such-microphone")
        result = check(config, mic)
    lines = text_lines(result)
    assert result.returncode == 1
    assert lines["device"].startswith("fail")
    assert "no input device matches 'no-such-microphone'" in lines["device"]
    assert "available input devices:" in lines["device"] and mic.device in lines["device"]
    assert "skipped:" in lines["device open"] and "skipped:" in lines["level"]
    assert lines["session"].startswith("pass")  # the server is still checked


def test_digital_silence_is_a_warning(tmp_path: Path, server: DevServer) -> None:
    zeros = np.zeros(RATE, dtype=np.int16)
    with microphone(tmp_path, signal=zeros) as mic:
        config = write_config(tmp_path, server.url, mic.device)
        result = check(config, mic)
    lines = text_lines(result)
    assert result.returncode == 0, result.stdout
    assert lines["level"].startswith("warn") and "digital silence" in lines["level"]
    assert "-120.0 dBFS" in lines["level"] and "alsamixer" in lines["level"]


def test_deprecated_model_is_a_warning_with_the_date(tmp_path: Path, server: DevServer) -> None:
    with microphone(tmp_path) as mic:
        config = write_config(tmp_path, server.url, mic.device,
                              server={"model": "gpt-realtime"})
        result = check(config, mic)
    lines = text_lines(result)
    assert result.returncode == 0, result.stdout
    assert lines["models"].startswith("warn")
    assert "gpt-realtime shuts down on 2027-01-20" in lines["models"]
    assert "gpt-realtime-2.1" in lines["models"]  # the fix names a current one
    assert lines["session"].startswith("pass")


def test_invalid_config_exits_78_and_skips_the_rest(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("audio:\n  chunk_ms: 7\n")
    result = check(config, None, "--json")
    got = verdicts(result)
    assert result.returncode == 78
    assert got["config"][0] == "fail" and "audio.chunk_ms: 7 is not one of" in got["config"][1]
    assert all(v[1].startswith("skipped:") for name, v in got.items() if name != "config")
    assert "audio.chunk_ms: 7 is not one of 10, 20, 40, 50, 100" in result.stderr


# -- the pieces, in process ----------------------------------------------------------------


def test_exit_code_is_the_first_own_failure() -> None:
    key = failed("api key", "none", "set it", 78)
    checks = [passed("config", ""), warned("models", "old", "new"), key,
              skipped("handshake", key), failed("tcp", "refused", "x", 1)]
    assert exit_code(checks) == 78
    assert exit_code([passed("a", ""), warned("b", "", "")]) == 0
    assert exit_code([skipped("x", key)]) == 0  # a skipped check never decides it
    busy = warned("device open", "in use", "stop it")
    assert skipped("level", busy).verdict == "warn"


def test_service_paths_come_from_the_installed_unit(tmp_path: Path) -> None:
    unit = tmp_path / "edgevoice.service"
    unit.write_text("[Service]\nLoadCredential=openai-api-key:/srv/key\n"
                    "Environment=ALSA_CONFIG_PATH=/srv/asound.conf\n"
                    "Environment=PYTHONUNBUFFERED=1\n")
    assert service_paths(unit) == ServicePaths(Path("/srv/key"), Path("/srv/asound.conf"),
                                               str(unit))
    assert service_paths(tmp_path / "absent") == ServicePaths()
    repo_unit = Path(__file__).resolve().parent.parent / "systemd" / "edgevoice.service"
    paths = service_paths(repo_unit)
    assert paths.credential_file == Path("/etc/edgevoice/openai-api-key")
    assert paths.alsa_config == Path("/usr/share/edgevoice/asound.conf")


def test_alsa_config_of_the_service_is_used_unless_set(tmp_path: Path) -> None:
    conf = tmp_path / "asound.conf"
    conf.write_text("")
    service = ServicePaths(tmp_path / "k", conf, "unit")
    env: dict[str, str] = {}
    assert use_service_alsa_config(service, env).verdict == "pass"
    assert env == {"ALSA_CONFIG_PATH": str(conf)}
    env = {"ALSA_CONFIG_PATH": "/mine"}
    result = use_service_alsa_config(service, env)
    assert env == {"ALSA_CONFIG_PATH": "/mine"} and "from the environment" in result.detail
    missing = use_service_alsa_config(ServicePaths(tmp_path / "k", tmp_path / "no", "unit"),
                                      {})
    assert missing.verdict == "warn"


def test_busy_device_is_recognised() -> None:
    cause = OSError(-9985, "Device unavailable")
    err = AudioDeviceError("cannot open audio input #2 'USB' at 48000 Hz, 1 ch: x")
    err.__cause__ = cause
    assert is_busy(err)
    assert is_busy(AudioDeviceError("snd_pcm_open: Device or resource busy"))
    assert not is_busy(AudioDeviceError("no input device matches 'x'"))


def fake_proc(tmp_path: Path, owner: str) -> Path:
    """A /proc with card 1 'USB PnP Sound Device' whose capture hw:1,0 is open by pid 4242."""
    proc = tmp_path / "proc"
    (proc / "asound").mkdir(parents=True)
    (proc / "asound" / "cards").write_text(
        " 0 [PCH            ]: HDA-Intel - HDA Intel PCH\n"
        "                      HDA Intel PCH at 0xf7f10000 irq 32\n"
        " 1 [Device         ]: USB-Audio - USB PnP Sound Device\n"
        "                      C-Media Electronics Inc. USB PnP Sound Device at usb-1\n")
    for card, state in ((0, "closed\n"), (1, "state: RUNNING\nowner_pid   : 4242\n")):
        sub = proc / "asound" / f"card{card}" / "pcm0c" / "sub0"
        sub.mkdir(parents=True)
        (sub / "status").write_text(state)
    (proc / "4242").mkdir()
    (proc / "4242" / "cmdline").write_text(owner.replace(" ", "\0") + "\0")
    return proc


def test_open_capture_devices_are_read_from_proc(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "/usr/bin/python3 /usr/bin/edgevoice run --config x")
    [busy] = busy_captures(proc)
    assert (busy.card, busy.device, busy.owner_pid) == (1, 0, 4242)
    assert busy.label == "USB PnP Sound Device (hw:1,0)" and busy.by_edgevoice
    assert holder_of("usb", proc) == busy and holder_of("hw:1,0", proc) == busy
    assert holder_of("default", proc) == busy  # the only one edgevoice holds
    assert holder_of("PCH", proc) is None
    other = fake_proc(tmp_path / "o", "arecord -D hw:1,0")
    assert holder_of("default", other) is None and holder_of("USB", other) is not None


def test_device_held_by_the_daemon_is_in_use_not_missing(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "/usr/bin/python3 /usr/bin/edgevoice run")
    with microphone(tmp_path) as mic, pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALSA_CONFIG_PATH", mic.env["ALSA_CONFIG_PATH"])
        checks = check_audio(AudioSettings(device="USB PnP"), 0.2, proc)
    assert [(c.name, c.verdict) for c in checks] == [
        ("device", "warn"), ("device open", "warn"), ("level", "warn")]
    assert "in use (by the running edgevoice, pid 4242)" in checks[0].detail
    assert "no input device matches 'USB PnP'" in checks[0].detail
    assert "systemctl stop edgevoice" in checks[0].fix
    assert checks[1].skipped and checks[2].skipped
    assert exit_code(checks) == 0


def _key_checks(tmp_path: Path, mode: int, env: dict[str, str]) -> list[Check]:
    cred = tmp_path / "openai-api-key"
    cred.write_text(KEY + "\n")
    cred.chmod(mode)
    checks, key = check_key(ServerSettings(api_key_env=KEY_ENV),
                            ServicePaths(cred, tmp_path / "asound.conf", "unit"), env)
    if checks[-1].verdict == "pass":
        assert key == KEY
    return checks


def test_credential_file_by_hand(tmp_path: Path) -> None:
    good = _key_checks(tmp_path, 0o600, {})
    assert [(c.name, c.verdict) for c in good] == [("key file", "pass"), ("api key", "pass")]
    assert "systemd credential" in good[1].detail and KEY not in good[1].detail
    loose = _key_checks(tmp_path, 0o644, {})
    assert loose[0].verdict == "warn" and "chmod 600" in loose[0].fix
    assert loose[1].verdict == "pass"


def test_credential_file_absent_falls_back_to_the_environment(tmp_path: Path) -> None:
    service = ServicePaths(tmp_path / "openai-api-key", tmp_path / "a", "unit")
    checks, key = check_key(ServerSettings(api_key_env=KEY_ENV), service, {KEY_ENV: KEY})
    assert [c.verdict for c in checks] == ["pass", "pass"] and key == KEY
    assert "environment variable" in checks[1].detail
    checks, key = check_key(ServerSettings(api_key_env=KEY_ENV), service, {})
    assert checks[1].verdict == "fail" and checks[1].exit_code == 78 and key is None
    assert f"install -m 600 /dev/stdin {tmp_path / 'openai-api-key'}" in checks[1].fix


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_credential_file_is_a_warning(tmp_path: Path) -> None:
    checks = _key_checks(tmp_path, 0o000, {})
    assert checks[-1].verdict == "warn" and "sudo edgevoice check" in checks[-1].fix


# -- TLS and the clock, against a local TLS server ---------------------------------------


class DateServer:
    """A TLS server on 127.0.0.1 answering any request with a Date header ``skew_s`` off."""

    def __init__(self, cert: Path, key: Path, skew_s: float = 0.0) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self._context = context
        self._skew_s = skew_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="date-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2.0)
                try:
                    with self._context.wrap_socket(conn, server_side=True) as tls:
                        head = b""
                        while b"\r\n\r\n" not in head:
                            data = tls.recv(4096)
                            if not data:
                                break
                            head += data
                        date = email.utils.formatdate(time.time() + self._skew_s, usegmt=True)
                        tls.sendall(f"HTTP/1.1 404 Not Found\r\nDate: {date}\r\n"
                                    "Content-Length: 0\r\n\r\n".encode())
                except (OSError, ssl.SSLError):
                    continue  # the client refused our certificate: expected in a test

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(5.0)
        assert not self._thread.is_alive()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@contextmanager
def date_server(certificate: tuple[Path, Path], skew_s: float = 0.0) -> Iterator[DateServer]:
    srv = DateServer(*certificate, skew_s=skew_s)
    try:
        yield srv
    finally:
        srv.close()


def network(port: int, ca_file: Path | None) -> dict[str, Check]:
    settings = Settings(server=ServerSettings(
        url=f"wss://localhost:{port}/v1/realtime", connect_timeout_s=3.0,
        ca_file=str(ca_file) if ca_file else None))
    no_key = warned("api key", "cannot read it", "sudo")
    return {c.name: c for c in check_network(settings, None, no_key)}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_verified_and_clock_compared(certificate: tuple[Path, Path]) -> None:
    with date_server(certificate) as srv:
        got = network(srv.port, certificate[0])
    assert [got[n].verdict for n in ("dns", "tcp", "tls", "clock")] == ["pass"] * 4
    assert "certificate for localhost verified" in got["tls"].detail
    assert "of the server's" in got["clock"].detail
    assert got["handshake"].skipped and got["handshake"].verdict == "warn"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_clock_far_from_the_servers_is_a_warning(certificate: tuple[Path, Path]) -> None:
    with date_server(certificate, skew_s=-3600) as srv:
        got = network(srv.port, certificate[0])
    assert got["tls"].verdict == "pass"
    assert got["clock"].verdict == "warn"
    skew = re.search(r"clock is (\d+) s ahead of the server's", got["clock"].detail)
    assert skew is not None and 3598 <= int(skew.group(1)) <= 3602  # Date: whole seconds
    assert "timedatectl set-ntp true" in got["clock"].fix


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_unknown_certificate_fails_tls(certificate: tuple[Path, Path]) -> None:
    with date_server(certificate) as srv:
        got = network(srv.port, None)
    assert got["tls"].verdict == "fail" and "certificate of localhost rejected" in \
        got["tls"].detail
    assert "server.ca_file" in got["tls"].fix
    assert got["handshake"].skipped


def test_seconds_must_be_a_sane_number(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("logging: {journald: 'off'}\n")
    for bad in ("0", "-1", "nan", "61", "x"):
        result = subprocess.run(
            [sys.executable, "-m", "edgevoice", "check", "--config", str(config),
             "--seconds", bad], capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 2 and "--seconds" in result.stderr, bad
