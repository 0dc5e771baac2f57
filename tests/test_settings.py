"""Every settings error path names the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import math
import os
import time
import types
import typing
from pathlib import Path
from typing import Literal

import pytest
import yaml

from edgevoice.credentials import load_api_key
from edgevoice.errors import EXIT_CONFIG, ConfigError
from edgevoice.settings import (
    _RANGES,
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    ServerSettings,
    Settings,
    check_settings,
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
    # turn_detection: off reads as "none", which needs the local gate to commit turns.
    with pytest.raises(ConfigError, match=r"session.turn_detection: none needs stream.gate: "
                                          r"vad or wakeword"):
        parse_settings("session: {turn_detection: off}")
    s = parse_settings("session: {turn_detection: off}\nstream: {gate: vad}")
    assert s.session.turn_detection == "none"


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
        ("bogus: {}", "bogus: unknown key (allowed here: audio, control, health"),
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
        ("playback: {enabled: true}\nsession: {mode: transcribe}",
         "playback.enabled: true needs session.mode: conversation"),
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


# -- configuration that cannot lie ---------------------------------------------------------

SECTIONS = {f.name: f.type for f in dataclasses.fields(Settings)}


def _fields() -> list[tuple[str, object]]:
    """Every (dotted key, type hint) of the schema."""
    out: list[tuple[str, object]] = []
    for section in dataclasses.fields(Settings):
        cls = typing.get_type_hints(Settings)[section.name]
        for name, hint in typing.get_type_hints(cls).items():
            out.append((f"{section.name}.{name}", hint))
    return out


def _members(hint: object) -> tuple[object, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


FLOAT_KEYS = [key for key, hint in _fields() if float in _members(hint)]
INT_KEYS = [key for key, hint in _fields() if int in _members(hint)]
INT_LITERAL_KEYS = [
    key for key, hint in _fields()
    if any(typing.get_origin(m) is Literal and all(type(c) is int for c in typing.get_args(m))
           for m in _members(hint))
]


def setting(key: str, value: str) -> str:
    section, name = key.split(".")
    return f"{section}:\n  {name}: {value}\n"


def one_line_error(text: str) -> str:
    message = error_of(text)
    assert "\n" not in message and "\r" not in message
    assert len(message) < 400
    return message


def test_every_numeric_setting_has_a_range() -> None:
    assert FLOAT_KEYS and INT_KEYS and "server.max_frame_bytes" in INT_KEYS
    assert "audio.device" in INT_KEYS  # str | int: a device index
    missing = [key for key in FLOAT_KEYS + INT_KEYS if key not in _RANGES]
    assert not missing, f"numeric settings without a range in _RANGES: {missing}"
    known = {key for key, _ in _fields()}
    assert not set(_RANGES) - known, "a _RANGES key names no setting"
    for key, (low, high) in _RANGES.items():
        assert math.isfinite(low) and math.isfinite(high) and low < high, key


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", "+.inf"])
def test_float_settings_are_finite(key: str, value: str) -> None:
    message = one_line_error(setting(key, value))
    assert message.startswith(f"<config>: {key}: ") and "not a finite number" in message


@pytest.mark.parametrize("key", INT_KEYS + INT_LITERAL_KEYS)
def test_integer_settings_take_only_integers(key: str) -> None:
    values = ["20.0", "100.0", "48000.0", "true", "false"]
    if str not in _members(dict(_fields())[key]):  # `device: '20'` is a name, not a number
        values += ["1e3", "'20'"]
    for value in values:
        message = one_line_error(setting(key, value))
        assert message.startswith(f"<config>: {key}: "), message


def test_literal_choices_match_the_type() -> None:
    assert "audio.chunk_ms: 20.0 is not one of 10, 20, 40, 50, 100" in error_of(
        "audio: {chunk_ms: 20.0}")
    assert "audio.chunk_ms: False is not one of" in error_of("audio: {chunk_ms: false}")
    assert parse_settings("audio: {chunk_ms: 20}").audio.chunk_ms == 20
    assert "audio.rate: 48000.0 is not one of 'auto', an integer" in error_of(
        "audio: {rate: 48000.0}")


@pytest.mark.parametrize("key", FLOAT_KEYS + INT_KEYS)
def test_every_numeric_setting_is_range_checked(key: str) -> None:
    low, high = _RANGES[key]
    kind = int if key in INT_KEYS else float
    for value in (kind(high) * 2 + 1, kind(low) - 1, 10**400):
        message = one_line_error(setting(key, repr(value) if kind is float else str(value)))
        assert f"{key}: " in message and "is out of range" in message, message


def test_ranges_accept_their_bounds() -> None:
    assert parse_settings("server: {max_frame_bytes: 65536}").server.max_frame_bytes == 65536
    assert "server.max_frame_bytes: 65535 is out of range (65536 to 1073741824)" in error_of(
        "server: {max_frame_bytes: 65535}")
    assert parse_settings("audio: {device: 0}").audio.device == 0
    assert "audio.device: -1 is out of range (0 to 1023)" in error_of("audio: {device: -1}")
    assert "audio.device: 1024 is out of range" in error_of("audio: {device: 1024}")


def test_huge_integers_do_not_crash() -> None:
    # A hex literal has no digit limit; a decimal one past 4300 digits is a ValueError in
    # int(); either way: one line, short.
    assert "audio.queue_s: a huge integer is out of range" in one_line_error(
        "audio: {queue_s: 0x" + "f" * 5000 + "}")
    assert "invalid YAML: cannot read" in one_line_error("audio: {rate: " + "9" * 5000 + "}")
    assert "line 1 column 15: invalid YAML: cannot read '2001-13-45'" in one_line_error(
        "audio: {rate: 2001-13-45}")


def test_file_size_is_bounded(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_CONFIG_BYTES + "\naudio: {rate: 48000}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(big)
    assert str(info.value) == f"{big}: configuration file is larger than 1024 KiB (the limit)"
    assert "larger than 1024 KiB" in error_of(" " * (MAX_CONFIG_BYTES + 1))
    just = tmp_path / "just.yaml"
    body = "audio: {rate: 48000}\n"
    just.write_text("#" * (MAX_CONFIG_BYTES - len(body) - 1) + "\n" + body)
    assert just.stat().st_size == MAX_CONFIG_BYTES
    assert load_settings(just).audio.rate == 48000


def test_nesting_depth_is_bounded() -> None:
    assert MAX_DEPTH == 16
    ok = "audio:\n  device: " + "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)
    assert "audio.device: [[[...]]] is not one of" in error_of(ok)  # 16 levels: typed
    deep = "audio:\n  device: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    message = one_line_error(deep)
    assert "<config>: audio.device[0]" in message
    assert f"nested deeper than {MAX_DEPTH} levels" in message
    block = "audio:\n" + "".join("  " * i + "  k:\n" for i in range(40))
    assert "<config>: audio.k.k.k" in one_line_error(block)
    # libyaml itself stops at 1000 flow levels (scanning ahead); either way, one line.
    assert "nest" in one_line_error("[" * 100_000)


def billion_laughs(indent: str = "", levels: int = 30) -> str:
    """Each level lists the previous one 9 times: 9**30 strings once expanded."""
    lines = [f"{indent}l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{indent}l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]"
              for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_aliases_are_refused_and_a_bomb_fails_fast() -> None:
    assert "audio.device: YAML aliases (*d) are not allowed" in one_line_error(
        "x: &d USB\naudio: {device: *d}")
    started = time.monotonic()
    message = one_line_error("session:\n  instructions:\n" + billion_laughs("    "))
    assert time.monotonic() - started < 0.5
    assert "session.instructions.l1[0]: YAML aliases (*l0) are not allowed" in message
    # Merge keys are aliases too.
    assert "aliases" in one_line_error("x: &x {rate: 48000}\naudio: {<<: *x}")


def test_duplicate_keys_and_documents_are_refused() -> None:
    assert "audio.rate: duplicate key (line 1 column 22)" in one_line_error(
        "audio: {rate: 48000, rate: 16000}")
    assert "audio: duplicate key" in one_line_error("audio: {}\naudio: {rate: 48000}")
    assert "more than one YAML document" in one_line_error("audio: {}\n---\naudio: {}\n")


def test_node_count_is_bounded() -> None:
    message = one_line_error("audio: {device: [" + ",".join(["1"] * (MAX_NODES + 5)) + "]}")
    assert f"audio.device[{MAX_NODES - 5}]: the configuration has more than" in message


def test_non_utf8_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("session:\n  instructions: Grüße\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_settings(bad)
    assert str(info.value) == (f"{bad}: line 2: not UTF-8 text (byte 0xfc at offset 27); "
                               "save the file as UTF-8")
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffaudio: {rate: 48000}\n".encode())
    assert load_settings(bom).audio.rate == 48000


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://", "server.url: 'ws://' has no host"),
        ("wss:///v1/realtime", "has no host"),
        ("ws://h:99999/x", "server.url: 'ws://h:99999/x' has an invalid port (1 to 65535)"),
        ("ws://h:0/x", "server.url: 'ws://h:0/x' has an invalid port (1 to 65535)"),
        ("ws://h:-1/x", "has an invalid port"),
        ("ws://h:port/x", "server.url: 'ws://h:port/x' has an invalid port"),
        ("wss://[::1/x", "is not a valid URL (Invalid IPv6 URL)"),
        ("http://h/x", "server.url: 'http://h/x' must start with wss://"),
        ("WSS://h/x", "must start with wss://"),
        ("wss://user:secret@h/x", "server.url: must not contain a user name or password"),
        ("http://user:secret@h/x", "server.url: must not contain a user name or password"),
        ("wss://token@h/x", "server.url: must not contain a user name or password"),
        ("wss://h/x#frag", "server.url: 'wss://h/x#frag' must not have a #fragment"),
        ("wss://h/a b", "contains white space or a control character"),
        ("wss://h/a\\tb", "server.url: control character '\\t'"),
    ],
)
def test_urls_are_validated(url: str, expected: str) -> None:
    message = one_line_error(f'server: {{url: "{url}"}}')
    assert expected in message
    assert "secret" not in message


def test_good_urls_pass() -> None:
    for url in ("wss://api.openai.com/v1/realtime", "ws://127.0.0.1:8765/v1/realtime",
                "ws://[::1]:65535/x?a=b", "wss://r.openai.azure.com/openai/v1/realtime",
                "wss://h/x@y"):
        assert parse_settings(f"server: {{url: '{url}'}}").server.url == url
    with pytest.raises(ConfigError, match="has no host"):
        check_settings(Settings(server=ServerSettings(url="ws://:80/")))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ('{X-A: "a\\r\\nHost: evil"}', "server.headers.X-A: control character '\\r'"),
        ('{X-A: "a\\nb"}', "server.headers.X-A: control character '\\n'"),
        ('{X-A: "a\\0b"}', "server.headers.X-A: control character '\\x00'"),
        ('{"X\\r\\nA": b}', "server.headers: control character '\\r'"),
        ("{'X A': b}", "server.headers.X A: not a valid header name"),
        ("{'X:A': b}", "server.headers.X:A: not a valid header name"),
        ("{'': b}", "server.headers.'': not a valid header name"),
        ("{Host: evil}", "server.headers.Host: not allowed here (the WebSocket handshake"),
        ("{host: evil}", "server.headers.host: not allowed here"),
        ("{Connection: close}", "server.headers.Connection: not allowed here"),
        ("{Upgrade: h2c}", "server.headers.Upgrade: not allowed here"),
        ("{Sec-WebSocket-Key: x}", "server.headers.Sec-WebSocket-Key: not allowed here"),
        ("{Sec-WebSocket-Protocol: x}", "server.headers.Sec-WebSocket-Protocol: not allowed"),
        ("{Content-Length: '5'}", "server.headers.Content-Length: not allowed here"),
        ("{Transfer-Encoding: chunked}", "server.headers.Transfer-Encoding: not allowed"),
        ("{Origin: 'https://x'}", "server.headers.Origin: not allowed here (edgevoice"),
        ("{api-key: x}", "server.headers.api-key: not allowed here (the key is read"),
        ("{X-A: a, x-a: b}", "server.headers.x-a: given twice"),
    ],
)
def test_headers_are_validated(headers: str, expected: str) -> None:
    message = one_line_error(f"server: {{headers: {headers}}}")
    assert expected in message
    assert "evil" not in message  # a value is never echoed (it may be a secret)


def test_header_checks_also_guard_settings_built_in_code() -> None:
    with pytest.raises(ConfigError, match=r"server.headers.X-A: the value contains a line"):
        check_settings(Settings(server=ServerSettings(headers={"X-A": "a\r\nB: c"})))
    check_settings(Settings(server=ServerSettings(headers={"X-Proxy": "a\tb ü"})))


# A self-signed CA certificate (EC P-256, valid until 2126), only ever parsed.
TEST_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBjjCCATWgAwIBAgIUAlUr1nfhvAsPbxhPzenEyy3oFtAwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRZWRnZXZvaWNlIHRlc3QgQ0EwIBcNMjYxMTI5MTc0MDMyWhgP
MjEyNjExMDUxNzQwMzJaMBwxGjAYBgNVBAMMEWVkZ2V2b2ljZSB0ZXN0IENBMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZx/5jKF2qTyErGHDRAjcbEfKmzXwR1x6
fzCCnHu8nKaFS6idCKRQpvNy5GsILKKGQCWMNARFaZZuP7mW4gLbCKNTMFEwHQYD
VR0OBBYEFCoGrP09PeGJ/6F+tKGXhsH5y+b4MB8GA1UdIwQYMBaAFCoGrP09PeGJ
/6F+tKGXhsH5y+b4MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIg
H/ftJdMPCnR/S7y+myKSl0c2N8rUBEzAAWoBKBmq0DsCIFkmKCXjBOUOX/0Bxj6g
u5p+FXtF3Y6XchoK0b9afdH3
-----END CERTIFICATE-----
"""


def test_ca_file_is_checked_at_load(tmp_path: Path) -> None:
    good = tmp_path / "ca.pem"
    good.write_text(TEST_CA_PEM)
    assert parse_settings(f"server: {{ca_file: '{good}'}}").server.ca_file == str(good)

    def ca_error(value: str) -> str:
        message = one_line_error(f"server: {{ca_file: '{value}'}}")
        assert message.startswith("<config>: server.ca_file: "), message
        return message

    assert "does not exist" in ca_error(str(tmp_path / "missing.pem"))
    text = tmp_path / "text.pem"
    text.write_text("not a certificate\n")
    assert "holds no PEM certificates" in ca_error(str(text))
    der = tmp_path / "der.crt"
    der.write_bytes(b"0\x82\x01\x8e0\x82\x015\xa0\x03\x02\x01\x02")
    assert "holds no PEM certificates" in ca_error(str(der))
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    assert "holds no PEM certificates" in ca_error(str(empty))
    assert "is not a regular file" in ca_error(str(tmp_path))
    assert "is not a regular file" in ca_error("/dev/zero")
    assert "empty; use null" in ca_error("")
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.pem"
        locked.write_text(TEST_CA_PEM)
        locked.chmod(0)
        assert "cannot read" in ca_error(str(locked))


def test_strings_refuse_control_characters() -> None:
    assert "server.api_key_file: control character '\\x00' at position 1" in one_line_error(
        'server: {api_key_file: "a\\0b"}')
    assert "session.voice: control character '\\n'" in one_line_error(
        'session: {voice: "a\\nb"}')
    assert "audio.device: control character '\\x1b'" in one_line_error(
        'audio: {device: "\\e[31m"}')
    s = parse_settings('session: {instructions: "Line one.\\n\\tLine two.\\r\\n"}')
    assert s.session.instructions == "Line one.\n\tLine two.\r\n"
    assert "session.instructions: control character '\\x00'" in one_line_error(
        'session: {instructions: "a\\0"}')


def test_messages_are_one_short_line_whatever_the_input() -> None:
    assert one_line_error('"a\\nb": 1').startswith("<config>: 'a\\nb': unknown key")
    message = one_line_error("? " + "k" * 100_000 + "\n: 1")
    assert "unknown key" in message and len(message) < 200
    message = one_line_error(
        "audio: {device: [" + ", ".join(["[[1, 2, 3, 4, 5], [1], [1], [1], [1]]"] * 50) + "]}")
    assert message.startswith("<config>: audio.device: [[[...], [...], [...], [...], ...],")
    assert message.endswith("... is not one of a string, an integer") and len(message) < 150
    assert "line 1: invalid YAML: unacceptable character #x0007" in one_line_error("a: \x07")
    with pytest.raises(ConfigError) as info:
        parse_settings("audio: {chunk_ms: 7}", source="new\nline.yaml")
    assert str(info.value).startswith("new\\nline.yaml: audio.chunk_ms: 7")
