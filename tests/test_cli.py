"""The command line as a user meets it: exit codes and one clear line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from edgevoice import __version__, cli


def edgevoice(*args: str, env: dict[str, str] | None = None,
              timeout: float = 30) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENAI_API_KEY", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET")}
    return subprocess.run([sys.executable, "-m", "edgevoice", *args], capture_output=True,
                          text=True, env={**base, **(env or {})}, timeout=timeout, check=False)


def test_version() -> None:
    result = edgevoice("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"edgevoice {__version__}"


def test_bad_config_exits_78_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("audio:\n  chunk_ms: 7\n")
    for command in ("run", "check"):
        result = edgevoice(command, "--config", str(config))
        assert result.returncode == 78
        assert "audio.chunk_ms: 7 is not one of 10, 20, 40, 50, 100" in result.stderr
        assert "Traceback" not in result.stderr


def test_missing_config_file_exits_78(tmp_path: Path) -> None:
    result = edgevoice("run", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 78 and "configuration file not found" in result.stderr


def test_missing_api_key_exits_78_and_says_where_it_looked(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  api_key_env: EDGEVOICE_NO_SUCH_KEY\nlogging:\n  journald: off\n")
    result = edgevoice("run", "--config", str(config))
    assert result.returncode == 78
    assert "no API key found; looked in:" in result.stderr
    assert "environment variable EDGEVOICE_NO_SUCH_KEY (not set)" in result.stderr
    assert "server.api_key_file (not set)" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_passes_without_printing_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  api_key_env: EDGEVOICE_K\n")
    result = edgevoice("check", "--config", str(config), "--seconds", "1",
                       env={"EDGEVOICE_K": "sk-abc123secret"})
    # No microphone and no server here: those checks fail (exit 1), the key's pass.
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pass  config" in result.stdout and "pass  api key" in result.stdout
    assert "sk-abc123secret" not in result.stdout + result.stderr


def test_unreachable_server_is_a_clear_line_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "audio: {wav_file: " + str(Path(__file__).parent.parent / "edgevoice/data/sample.wav")
        + "}\nserver: {url: 'ws://127.0.0.1:9/v1/realtime', api_key_env: EDGEVOICE_K}\n"
        "logging: {journald: off}\n")
    result = edgevoice("run", "--config", str(config), "--duration", "2",
                       env={"EDGEVOICE_K": "k"})
    assert result.returncode == 0  # it kept retrying until told to stop
    assert "connection failed: cannot connect: connection refused; retry in" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_command_prints_the_help_and_exits_2_as_a_usage_error() -> None:
    result = edgevoice()
    assert result.returncode == 2
    assert result.stderr.startswith("usage: edgevoice")
    for command in ("run", "check", "devices", "status", "devserver"):
        assert f"\n    {command}" in result.stderr
    assert result.stdout == ""
    unknown = edgevoice("devices", "--no-such-option")
    assert unknown.returncode == 2
    assert "unrecognized arguments: --no-such-option" in unknown.stderr


def test_devserver_with_debian_12s_websockets_says_what_it_needs(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Debian 12's python3-websockets 10.4 imports fine but lacks websockets.asyncio: the
    # version is checked before the devserver is imported, options and all.
    old = types.ModuleType("websockets")
    old.__version__ = "10.4"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "websockets", old)
    assert cli.main(["devserver", "--port", "8765"]) == 1
    err = capsys.readouterr().err
    assert "needs websockets >= 13 (the 'devserver' extra), but websockets 10.4 is installed" in err
    assert "Debian 12's python3-websockets 10.4 is too old" in err
    assert "Traceback" not in err
    monkeypatch.setitem(sys.modules, "websockets", None)  # not installed at all
    assert cli.main(["devserver"]) == 1
    assert "but websockets is not installed" in capsys.readouterr().err


def test_devserver_with_websockets_13_or_later_is_offered() -> None:
    result = edgevoice("devserver", "--help")
    assert result.returncode == 0 and "--port" in result.stdout


@pytest.mark.parametrize("columns", [50, 200])
def test_help_is_laid_out_to_the_terminals_width(columns: int) -> None:
    """The parser tells argparse the width itself (argparse would import shutil for it):
    $COLUMNS is obeyed as shutil.get_terminal_size obeys it."""
    done = edgevoice("run", "--help", env={"COLUMNS": str(columns)})
    assert done.returncode == 0, done.stderr
    widest = max(len(line) for line in done.stdout.splitlines())
    assert widest <= columns
    assert widest > (50 if columns == 200 else 40), done.stdout
