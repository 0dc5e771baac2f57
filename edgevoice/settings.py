"""Settings: one YAML file into frozen dataclasses, validated in one generic pass.

The dataclasses below are the schema. Every key is optional and has the default shown
here; `config/edgevoice.yaml` documents them for users and a test keeps the two in sync.
Validation is driven by the type hints, so each section gets the same error messages
(`audio.chunk_ms: 7 is not one of 10, 20, 40, 50, 100`) without hand-written checks.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from edgevoice.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/edgevoice/config.yaml")

ChunkMs = Literal[10, 20, 40, 50, 100]

# Current models without an announced shutdown (edgevoice/realtime/models.py keeps the
# table of retiring ones). The transcription model is the one the realtime transcription
# guide recommends for live audio.
DEFAULT_REALTIME_MODEL = "gpt-realtime-2.1"
DEFAULT_TRANSCRIPTION_MODEL = "gpt-live-transcribe"


@dataclass(frozen=True)
class AudioSettings:
    """Capture side. `device` is a case-insensitive name substring, an index, or 'default'."""

    device: str | int = "default"
    rate: Literal["auto"] | int = "auto"
    channels: Literal["auto"] | int = "auto"
    chunk_ms: ChunkMs = 20
    queue_s: float = 2.0
    # A WAV file instead of a microphone (demos, soak tests); paced in real time.
    wav_file: str | None = None
    wav_loop: bool = False


@dataclass(frozen=True)
class PlaybackSettings:
    """Where the assistant's audio goes in conversation mode."""

    enabled: bool = False
    device: str | int = "default"
    rate: Literal["auto"] | int = "auto"
    buffer_s: float = 5.0


@dataclass(frozen=True)
class ServerSettings:
    """The Realtime endpoint and how to authenticate (the key itself never lives here)."""

    url: str = "wss://api.openai.com/v1/realtime"
    model: str = DEFAULT_REALTIME_MODEL
    dialect: Literal["openai", "azure"] = "openai"
    api_key_env: str = "OPENAI_API_KEY"
    api_key_file: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    ca_file: str | None = None
    connect_timeout_s: float = 10.0
    # recv() wakes up at least this often, so the reader notices stop requests and stalls.
    socket_timeout_s: float = 1.0
    ping_interval_s: float = 10.0
    pong_timeout_s: float = 20.0
    session_update_timeout_s: float = 10.0
    # Largest server frame accepted (all fragments together); a larger one ends the
    # connection (close 1009) before it is held in memory. Real events are far smaller.
    max_frame_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class SessionSettings:
    """What the `session.update` sent on every new connection asks for."""

    mode: Literal["conversation", "transcribe"] = "conversation"
    instructions: str = "You are a helpful voice assistant. Answer briefly."
    voice: str = "marin"
    turn_detection: Literal["server_vad", "semantic_vad", "none"] = "server_vad"
    vad_threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    transcription_model: str = DEFAULT_TRANSCRIPTION_MODEL
    language: str | None = None
    noise_reduction: Literal["near_field", "far_field", "none"] = "none"


@dataclass(frozen=True)
class StreamSettings:
    """What leaves the device, and what is kept while the network is away."""

    outage_buffer_s: float = 30.0
    replay: bool = True


@dataclass(frozen=True)
class ReconnectSettings:
    """Backoff with full jitter; reset only after a connection proved stable."""

    initial_s: float = 1.0
    max_s: float = 60.0
    multiplier: float = 2.0
    stable_after_s: float = 30.0
    rollover_margin_s: float = 120.0


@dataclass(frozen=True)
class HealthSettings:
    """Stall detection, dead-microphone warning and the files fleets scrape."""

    stall_timeout_s: float = 15.0
    silence_warn_s: float = 30.0
    status_file: str | None = None
    metrics_file: str | None = None


@dataclass(frozen=True)
class LoggingSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    journald: Literal["auto", "on", "off"] = "auto"
    # Log every server event type at info (noisy; for bring-up).
    log_all_events: bool = False


@dataclass(frozen=True)
class Settings:
    audio: AudioSettings = field(default_factory=AudioSettings)
    playback: PlaybackSettings = field(default_factory=PlaybackSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    reconnect: ReconnectSettings = field(default_factory=ReconnectSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)


# Range checks that a type hint cannot express: (low, high) inclusive, None = open.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "audio.rate": (8000, 192000),
    "audio.channels": (1, 32),
    "audio.queue_s": (0.1, 60),
    "playback.rate": (8000, 192000),
    "playback.buffer_s": (0.2, 60),
    "server.connect_timeout_s": (0.1, 300),
    "server.socket_timeout_s": (0.05, 30),
    "server.ping_interval_s": (0.1, 3600),
    "server.pong_timeout_s": (0.1, 3600),
    "server.session_update_timeout_s": (0.1, 300),
    "server.max_frame_bytes": (65536, 1 << 30),
    "session.vad_threshold": (0.0, 1.0),
    "session.prefix_padding_ms": (0, 10000),
    "session.silence_duration_ms": (0, 10000),
    "stream.outage_buffer_s": (0, 3600),
    "reconnect.initial_s": (0.01, 3600),
    "reconnect.max_s": (0.01, 86400),
    "reconnect.multiplier": (1.0, 100),
    "reconnect.stable_after_s": (0, 86400),
    "reconnect.rollover_margin_s": (0, 3000),
    "health.stall_timeout_s": (1, 3600),
    "health.silence_warn_s": (1, 86400),
}


class _OutOfRange(ConfigError):
    pass


def load_settings(path: Path | str | None) -> Settings:
    """Read and validate a YAML file; None means "all defaults"."""
    if path is None:
        return Settings()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration file: {exc.strerror}") from None
    return parse_settings(text, source=str(path))


def parse_settings(text: str, source: str = "<config>") -> Settings:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}:{where}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    try:
        settings = settings_from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return settings


def settings_from_mapping(data: object) -> Settings:
    result = _build(Settings, data, "")
    assert isinstance(result, Settings)
    check_settings(result)
    return result


def _build(cls: type, data: object, prefix: str) -> object:
    if not isinstance(data, Mapping):
        where = prefix or "top level"
        raise ConfigError(f"{where}: expected a mapping of keys, got {_describe(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [str(k) for k in data if k not in fields]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        allowed = ", ".join(sorted(fields))
        raise ConfigError(f"{key}: unknown key (allowed here: {allowed})")
    values: dict[str, object] = {}
    for name, value in data.items():
        path = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(typing.cast(type, hint), value if value is not None else {},
                                  f"{path}.")
        else:
            values[name] = _coerce(hint, value, path)
    return cls(**values)


def _coerce(hint: Any, value: object, path: str) -> object:
    """Accept `value` if it matches `hint`, else raise a ConfigError that names `path`."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in get_args(hint):
            try:
                return _coerce(option, value, path)
            except _OutOfRange:
                raise  # the type matched; the range message is the useful one
            except ConfigError:
                continue
        raise ConfigError(f"{path}: {_repr(value)} is not {_allowed(hint)}")
    if origin is Literal:
        choices = get_args(hint)
        if isinstance(value, bool):
            # YAML 1.1 reads a bare off/on/no as a boolean: `journald: off` means "off".
            for word in (("on",) if value else ("off", "none")):
                if word in choices:
                    return word
        # bool is an int in Python; `true` must not pass as chunk_ms 1.
        elif value in choices:
            return value
        raise ConfigError(
            f"{path}: {_repr(value)} is not one of {', '.join(str(c) for c in choices)}"
        )
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected null")
    if origin is dict:
        key_type, value_type = get_args(hint)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {_describe(value)}")
        return {
            _coerce(key_type, k, f"{path}"): _coerce(value_type, v, f"{path}.{k}")
            for k, v in value.items()
        }
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {_describe(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            _check_range(path, value)
            return value
        raise ConfigError(f"{path}: expected an integer, got {_describe(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            _check_range(path, float(value))
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {_describe(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {_describe(value)}")
    raise TypeError(f"settings schema uses an unsupported type at {path}: {hint!r}")


def _check_range(path: str, value: float) -> None:
    low, high = _RANGES.get(path, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        raise _OutOfRange(f"{path}: {value:g} is out of range ({low:g} to {high:g})")


def check_settings(s: Settings) -> None:
    if s.playback.enabled:
        raise ConfigError(
            "playback.enabled: true is not supported yet (answers are received and counted "
            "but not played); set it to false"
        )
    if s.session.turn_detection == "none":
        raise ConfigError(
            "session.turn_detection: none needs edgevoice to commit turns itself, which comes "
            "with the local speech gate (not built yet); use server_vad or semantic_vad"
        )
    if s.reconnect.max_s < s.reconnect.initial_s:
        raise ConfigError(
            f"reconnect.max_s: {s.reconnect.max_s:g} is below reconnect.initial_s "
            f"{s.reconnect.initial_s:g}"
        )
    url = s.server.url
    if not url.startswith(("ws://", "wss://")):
        raise ConfigError(
            f"server.url: {url!r} must start with wss:// (or ws:// for a local server)"
        )
    if "api-version=" in url:
        raise ConfigError(
            f"server.url: {url!r} uses the deprecated Azure preview form (api-version=); "
            "use https://<resource>.openai.azure.com/openai/v1/realtime as wss://"
        )
    for name in s.server.headers:
        if name.lower() in ("authorization", "api-key", "openai-beta"):
            raise ConfigError(
                f"server.headers.{name}: not allowed here"
                + (" (the beta interface is switched off)" if name.lower() == "openai-beta"
                   else " (the key is read from the credential, key file or environment)")
            )


def _allowed(hint: Any) -> str:
    parts: list[str] = []
    for option in get_args(hint):
        if get_origin(option) is Literal:
            parts.extend(repr(c) if isinstance(c, str) else str(c) for c in get_args(option))
        elif option is type(None):
            parts.append("null")
        else:
            parts.append({int: "an integer", float: "a number", str: "a string",
                          bool: "true/false"}.get(option, str(option)))
    return "one of " + ", ".join(parts) if len(parts) > 1 else parts[0]


def _describe(value: object) -> str:
    if value is None:
        return "null"
    return f"{_repr(value)} ({type(value).__name__})"


def _repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_defaults() -> dict[str, dict[str, object]]:
    """Every section's defaults, for `edgevoice check --defaults` and the sync test."""
    defaults = dataclasses.asdict(Settings())
    return typing.cast(dict[str, dict[str, object]], defaults)
