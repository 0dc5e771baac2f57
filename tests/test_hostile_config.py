"""Hostile configuration files against the real command line.

Each one must stop `edgevoice check` (and, for a sample, `edgevoice run`) with exit 78 and
exactly one line on stderr naming the key (or, for what is wrong with the file as a
whole, the file), never a traceback, within two seconds of wall time for the process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

WALL_LIMIT_S = 2.0
KEY_ENV = "EDGEVOICE_TEST_KEY"
KEY_LINE = f"server: {{api_key_env: {KEY_ENV}}}\n"


@dataclass(frozen=True)
class Case:
    name: str
    content: str | bytes  # "{tmp}" in a str is the test's temporary directory
    expected: str  # in the error line; "{path}" is the configuration file
    run_too: bool = False


def _bomb(levels: int = 30) -> str:
    lines = ["    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]"
              for i in range(1, levels)]
    return "session:\n  instructions:\n" + "\n".join(lines) + "\n" + KEY_LINE


def _deep(levels: int = 40) -> str:
    return "audio:\n" + "".join("  " * (i + 1) + "k:\n" for i in range(levels)) + KEY_LINE


def _server(body: str) -> str:
    return f"server:\n  api_key_env: {KEY_ENV}\n{body}"


CASES = [
    Case("nan", "stream: {outage_buffer_s: .nan}\n" + KEY_LINE, "stream.outage_buffer_s",
         run_too=True),
    Case("nan-stall", "health: {stall_timeout_s: .nan}\n" + KEY_LINE, "health.stall_timeout_s"),
    Case("inf", "audio: {queue_s: .inf}\n" + KEY_LINE, "audio.queue_s"),
    Case("minus-inf", "reconnect: {initial_s: -.inf}\n" + KEY_LINE, "reconnect.initial_s"),
    Case("float-chunk", "audio: {chunk_ms: 20.0}\n" + KEY_LINE, "audio.chunk_ms", run_too=True),
    Case("bool-int", "session: {silence_duration_ms: true}\n" + KEY_LINE,
         "session.silence_duration_ms"),
    Case("bool-rate", "audio: {rate: false}\n" + KEY_LINE, "audio.rate"),
    Case("float-frame", _server("  max_frame_bytes: 16777216.0\n"), "server.max_frame_bytes"),
    Case("range-frame", _server("  max_frame_bytes: 1024\n"), "server.max_frame_bytes",
         run_too=True),
    Case("range-huge", _server("  max_frame_bytes: 0x" + "f" * 4000 + "\n"),
         "server.max_frame_bytes"),
    Case("range-low", "reconnect: {multiplier: 0.5}\n" + KEY_LINE, "reconnect.multiplier"),
    Case("range-high", "stream: {outage_buffer_s: 1.0e+300}\n" + KEY_LINE,
         "stream.outage_buffer_s"),
    Case("range-device", "audio: {device: -3}\n" + KEY_LINE, "audio.device"),
    Case("deep", _deep(), "audio.k.k.k.k", run_too=True),
    Case("oversized", "# " + "x" * (1024 * 1024) + "\n" + KEY_LINE, "{path}", run_too=True),
    Case("anchor-bomb", _bomb(), "session.instructions.l1", run_too=True),
    Case("non-utf8", "session:\n  instructions: Grüße\n".encode("latin-1") + KEY_LINE.encode(),
         "{path}", run_too=True),
    Case("ws-no-host", _server("  url: 'ws://'\n"), "server.url", run_too=True),
    Case("port-99999", _server("  url: 'wss://example.com:99999/v1/realtime'\n"), "server.url",
         run_too=True),
    Case("http", _server("  url: 'http://example.com/v1/realtime'\n"), "server.url"),
    Case("userinfo", _server("  url: 'wss://user:pass@example.com/v1/realtime'\n"),
         "server.url", run_too=True),
    Case("header-crlf", _server('  headers: {X-Proxy: "a\\r\\nX-Evil: 1"}\n'),
         "server.headers.X-Proxy", run_too=True),
    Case("header-host", _server("  headers: {Host: evil.example}\n"), "server.headers.Host",
         run_too=True),
    Case("header-name", _server("  headers: {'X Proxy': a}\n"), "server.headers.X Proxy"),
    Case("ca-missing", _server("  ca_file: '{tmp}/missing.pem'\n"), "server.ca_file",
         run_too=True),
    Case("ca-not-pem", _server("  ca_file: '{tmp}/not.pem'\n"), "server.ca_file",
         run_too=True),
]


def _env() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENAI_API_KEY", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET")}
    return {**base, KEY_ENV: "sk-test-hostile-config"}


def edgevoice(*args: str) -> tuple[int, str, str, float]:
    """Run the CLI; always waited for, killed if it outlives a generous timeout."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "edgevoice", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        out, err = proc.communicate(timeout=WALL_LIMIT_S * 5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"edgevoice {' '.join(args)} still running after {WALL_LIMIT_S * 5} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err, time.monotonic() - started


def _write(tmp_path: Path, case: Case) -> Path:
    (tmp_path / "not.pem").write_text("this is not a certificate\n")
    path = tmp_path / "config.yaml"
    if isinstance(case.content, bytes):
        path.write_bytes(case.content)
    else:
        path.write_text(case.content.replace("{tmp}", str(tmp_path)), encoding="utf-8")
    return path


def test_a_good_configuration_passes(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(KEY_LINE)
    code, out, err, _ = edgevoice("check", "--config", str(path), "--seconds", "1")
    # The configuration passes; the microphone and server checks that follow have nothing
    # to reach on a test machine, and fail with exit 1, never 78.
    assert code in (0, 1), err
    assert out.startswith("pass  config"), out


@pytest.mark.parametrize(
    ("case", "command"),
    [pytest.param(c, "check", id=f"check-{c.name}") for c in CASES]
    + [pytest.param(c, "run", id=f"run-{c.name}") for c in CASES if c.run_too],
)
def test_hostile_configuration_is_one_line_and_exit_78(
    tmp_path: Path, case: Case, command: str
) -> None:
    path = _write(tmp_path, case)
    code, out, err, elapsed = edgevoice(command, "--config", str(path))
    expected = case.expected.replace("{path}", str(path))
    assert code == 78, (code, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip() and err == lines[0] + "\n", err
    # `check` names its failing check ("config") before the message.
    prefix = f"edgevoice: config: {path}: " if command == "check" else f"edgevoice: {path}: "
    assert lines[0].startswith(prefix), lines[0]
    assert expected in lines[0], lines[0]
    assert len(lines[0]) < 400, lines[0]
    assert "pass@" not in err and "X-Evil" not in err  # secrets and values are not echoed
    if command == "check":  # the verdicts on stdout: config failed, the rest skipped
        assert out.startswith("fail  config"), out
        assert "pass@" not in out and "X-Evil" not in out
    else:
        assert out == ""
    assert elapsed < WALL_LIMIT_S, f"{elapsed:.2f} s"


@pytest.mark.parametrize(
    ("url", "expected"),
    [("ws://", "server.url: 'ws://' has no host"),
     ("wss://user:pass@example.com/v1/realtime", "server.url: must not contain a user name"),
     ("ws://127.0.0.1:99999/v1/realtime", "server.url: 'ws://127.0.0.1:99999/v1/realtime' "
                                          "has an invalid port (1 to 65535)")],
)
def test_a_bad_url_override_is_refused_the_same_way(
    tmp_path: Path, url: str, expected: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(KEY_LINE)
    code, out, err, elapsed = edgevoice("run", "--config", str(path), "--url", url)
    assert code == 78, (code, err)
    assert err == f"edgevoice: {expected}" + err.partition(expected)[2] and err.count("\n") == 1
    assert "pass@" not in err and out == ""
    assert elapsed < WALL_LIMIT_S, f"{elapsed:.2f} s"
