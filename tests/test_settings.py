"""Every settings error path names the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from edgevoice.credentials import load_api_key
from edgevoice.errors import EXIT_CONFIG, ConfigError
from edgevoice.settings import (
    ServerSettings,
    Settings,
    load_settings,
    parse_settings,
)

ROOT = Path(__file__).resolve().parent.parent


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(text)
    assert info.value.exit_code == EXIT_CONFIG
    return str(info.value)


def test_empty_file_is_all_defaults() -> None:
    assert parse_settings("") == Settings()
    assert parse_settings("audio:\n") == Settings()


def test_values_are_read() -> None:
    s = parse_settings(
        "audio: {device: USB, rate: 48000, channels: 2, chunk_ms: 40}\n"
        "server: {url: 'ws://127.0.0.1:1/v1/realtime', headers: {X-Proxy: a}}\n"
        "session: {mode: transcribe, turn_detection: semantic_vad, language: de}\n"
        "reconnect: {initial_s: 2}\n"
    )
    assert s.audio.device == "USB" and s.audio.rate == 48000 and s.audio.chunk_ms == 40
    assert s.audio.channels == 2
    assert s.server.headers == {"X-Proxy": "a"}
    assert s.session.mode == "transcribe" and s.session.turn_detection == "semantic_vad"
    assert s.reconnect.initial_s == 2.0 and isinstance(s.reconnect.initial_s, float)
    assert parse_settings("audio: {device: 3}").audio.device == 3


def test_yaml_booleans_for_on_off_words() -> None:
    """YAML 1.1 turns a bare `off` into false; users mean the word."""
    s = parse_settings("logging: {journald: off}\nsession: {noise_reduction: off}")
    assert s.logging.journald == "off" and s.session.noise_reduction == "none"
    assert parse_settings("logging: {journald: on}").logging.journald == "on"
    # turn_detection: off reads as "none", which is refused until edgevoice commits turns.
    with pytest.raises(ConfigError, match=r"session.turn_detection: none needs edgevoice to "
                                          r"commit turns itself"):
        parse_settings("session: {turn_detection: off}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("audio: {chunk_ms: 7}", "audio.chunk_ms: 7 is not one of 10, 20, 40, 50, 100"),
        ("audio: {chunk_ms: true}", "audio.chunk_ms: True is not one of"),
        ("audio: {rate: 5}", "audio.rate: 5 is out of range (8000 to 192000)"),
        ("audio: {rate: fast}", "audio.rate: 'fast' is not one of 'auto', an integer"),
        ("audio: {channels: 0}", "audio.channels: 0 is out of range"),
        ("audio: {device: [1]}", "audio.device: [1] is not one of a string, an integer"),
        ("audio: {queue_s: x}", "audio.queue_s: expected a number, got 'x' (str)"),
        ("audio: {wav_loop: 1}", "audio.wav_loop: expected true or false"),
        ("audio: {bogus: 1}", "audio.bogus: unknown key (allowed here: channels, chunk_ms"),
        ("bogus: {}", "bogus: unknown key (allowed here: audio, health"),
        ("audio: 3", "audio.: expected a mapping of keys, got 3 (int)"),
        ("- a\n- b", "top level: expected a mapping of keys"),
        ("server: {url: 'http://x'}", "server.url: 'http://x' must start with wss://"),
        ("server: {url: 'wss://r.openai.azure.com/openai/realtime?api-version=2024-10-01'}",
         "deprecated Azure preview form"),
        ("server: {headers: {Authorization: x}}", "server.headers.Authorization: not allowed"),
        ("server: {headers: {OpenAI-Beta: realtime=v1}}", "beta interface is switched off"),
        ("server: {headers: {X: 1}}", "server.headers.X: expected a string"),
        ("server: {headers: [a]}", "server.headers: expected a mapping"),
        ("server: {dialect: gcp}", "server.dialect: 'gcp' is not one of openai, azure"),
        ("server: {api_key_file: 3}", "server.api_key_file: 3 is not one of a string, null"),
        ("session: {mode: talk}", "session.mode: 'talk' is not one of conversation, transcribe"),
        ("session: {turn_detection: on}",
         "session.turn_detection: True is not one of server_vad, semantic_vad, none"),
        ("session: {vad_threshold: 2}", "session.vad_threshold: 2 is out of range (0 to 1)"),
        ("reconnect: {initial_s: 10, max_s: 5}", "reconnect.max_s: 5 is below"),
        ("reconnect: {multiplier: 0.5}", "reconnect.multiplier: 0.5 is out of range"),
        ("logging: {level: loud}", "logging.level: 'loud' is not one of debug, info"),
        ("logging: {journald: maybe}", "logging.journald: 'maybe' is not one of auto, on, off"),
        ("health: {stall_timeout_s: 0}", "health.stall_timeout_s: 0 is out of range"),
        ("audio: [", "invalid YAML"),
        ("playback: {enabled: true}", "playback.enabled: true is not supported yet"),
    ],
)
def test_errors_name_key_value_and_allowed(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("audio:\n  chunk_ms: 7\n")
    with pytest.raises(ConfigError, match=rf"{bad}: audio.chunk_ms: 7"):
        load_settings(bad)
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_settings(tmp_path / "dir.yaml")


def test_reference_config_documents_every_key_with_its_default() -> None:
    """config/edgevoice.yaml is the user's documentation: it must match the schema."""
    path = ROOT / "config" / "edgevoice.yaml"
    assert load_settings(path) == Settings()
    raw = yaml.safe_load(path.read_text())
    defaults = dataclasses.asdict(Settings())
    assert raw.keys() == defaults.keys()
    for section, values in defaults.items():
        assert raw[section].keys() == values.keys(), section
    text = path.read_text()
    assert "api_key:" not in text.replace("api_key_env", "").replace("api_key_file", "")


def test_demo_config_is_valid() -> None:
    s = load_settings(ROOT / "config" / "demo.yaml")
    assert s.server.url.startswith("ws://127.0.0.1")


# -- the API key ---------------------------------------------------------------------------


def test_key_from_environment() -> None:
    server = ServerSettings(api_key_env="MY_KEY")
    assert load_api_key(server, {"MY_KEY": " k-123 \n"}) == "k-123"


def test_missing_key_says_where_it_looked() -> None:
    with pytest.raises(ConfigError) as info:
        load_api_key(ServerSettings(api_key_env="MY_KEY"), {})
    text = str(info.value)
    assert "systemd credential 'openai-api-key'" in text
    assert "server.api_key_file (not set)" in text
    assert "environment variable MY_KEY (not set)" in text
    assert info.value.exit_code == EXIT_CONFIG


def test_credential_directory_wins(tmp_path: Path) -> None:
    (tmp_path / "openai-api-key").write_text("from-cred\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "OPENAI_API_KEY": "from-env"}
    assert load_api_key(ServerSettings(), env) == "from-cred"


def test_key_file_must_be_private(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("secret-value\n")
    os.chmod(key, 0o644)
    server = ServerSettings(api_key_file=str(key))
    with pytest.raises(ConfigError) as info:
        load_api_key(server, {})
    assert "chmod 600" in str(info.value) and "secret-value" not in str(info.value)
    os.chmod(key, 0o600)
    assert load_api_key(server, {}) == "secret-value"
    with pytest.raises(ConfigError, match="does not exist"):
        load_api_key(ServerSettings(api_key_file=str(tmp_path / "nope")), {})
    key.write_text("two words\n")
    with pytest.raises(ConfigError, match="more than one word") as info:
        load_api_key(server, {})
    assert "two words" not in str(info.value)
