"""Settings: one YAML file into frozen dataclasses, validated in one generic pass.

The dataclasses below are the schema. Every key is optional and has the default shown
here; `config/edgevoice.yaml` documents them for users and a test keeps the two in sync.
Validation is driven by the type hints, so each section gets the same error messages
(`audio.chunk_ms: 7 is not one of 10, 20, 40, 50, 100`) without hand-written checks.

A configuration cannot lie: numbers are finite, of the declared type and in range; the
file is UTF-8, at most `MAX_CONFIG_BYTES`, nested at most `MAX_DEPTH` levels, has at most
`MAX_NODES` YAML nodes, no aliases (so no anchor bombs) and no duplicate keys; URLs,
headers and the CA file are checked at load. Every error is one line naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import ssl
import stat
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import Node

from edgevoice.errors import ConfigError
from edgevoice.health.logsetup import redact

try:  # libyaml: parsing a 1 MiB file takes milliseconds instead of seconds
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

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
    # Answer audio arrives faster than it plays: room for a long answer, in seconds.
    buffer_s: float = 60.0
    # Audio queued before an answer starts playing: its start is never clipped.
    prebuffer_ms: int = 80
    # half_duplex: the microphone is not streamed while the speaker plays (and echo_tail_ms
    # after); none: stream everything (headset, hardware or PipeWire echo cancellation).
    echo: Literal["half_duplex", "none"] = "half_duplex"
    echo_tail_ms: int = 300
    # Local barge-in: a voice this many dB above the echo estimate stops the answer;
    # null leaves barge-in to the server's VAD.
    barge_in_db: float | None = 12.0


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
    # Audio on the wire: pcm (24 kHz PCM16) or G.711 (pcmu, pcma: 8 kHz, 64 kbit/s) for
    # metered links. The microphone is resampled and encoded on the device; answers in
    # G.711 are decoded before playback.
    input_format: Literal["pcm", "pcmu", "pcma"] = "pcm"
    output_format: Literal["pcm", "pcmu", "pcma"] = "pcm"
    # User and assistant turns re-sent (as text) to a new session after a rollover or a
    # reconnect, so the assistant still knows what was said; 0 = none.
    carry_turns: int = 4


@dataclass(frozen=True)
class StreamSettings:
    """What leaves the device, and what is kept while the network is away."""

    outage_buffer_s: float = 30.0
    replay: bool = True
    # What opens the microphone to the server: always, vad (local speech detector) or
    # wakeword (a wake word, then speech until the turn ends).
    gate: Literal["always", "vad", "wakeword"] = "always"
    # energy (built in) or micro (pymicro-vad, the optional extra `vad`).
    vad: Literal["energy", "micro"] = "energy"
    preroll_ms: int = 300
    # Audio sent after speech ends; "auto" = session.silence_duration_ms + 200.
    hangover_ms: Literal["auto"] | int = "auto"
    # An utterance is cut (and, with turn_detection none, committed) after this long.
    max_utterance_s: float = 30.0
    wake_word: Literal["okay_nabu", "hey_jarvis", "hey_mycroft", "alexa"] = "okay_nabu"
    wake_threshold: float | None = None  # null: the model's own cutoff
    send_wake_word: bool = False
    follow_up_s: float = 5.0
    max_streamed_s_per_day: float | None = None  # null: no cap


@dataclass(frozen=True)
class TranscriptsSettings:
    """Where completed transcripts go besides the journal (JSON lines)."""

    # "auto": $STATE_DIRECTORY/transcripts.jsonl (systemd) or ./transcripts.jsonl; a
    # relative path is under $STATE_DIRECTORY when systemd set it; null = none.
    jsonl_file: Literal["auto"] | str | None = None
    max_bytes: int = 10 * 1024 * 1024  # rotated at this size
    keep: int = 5  # rotated files kept
    # Unix stream socket, mode 0660; "auto": $RUNTIME_DIRECTORY/transcripts.sock; null = none.
    socket: Literal["auto"] | str | None = None


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
    # "auto": $RUNTIME_DIRECTORY/status.json under systemd, none otherwise.
    status_file: Literal["auto"] | str | None = "auto"
    metrics_file: str | None = None


@dataclass(frozen=True)
class LoggingSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    journald: Literal["auto", "on", "off"] = "auto"
    # Log every server event type at info (noisy; for bring-up).
    log_all_events: bool = False


@dataclass(frozen=True)
class ControlSettings:
    """The local control socket (`edgevoice ctl`)."""

    # "auto": $RUNTIME_DIRECTORY/control.sock under systemd, none otherwise; null = none.
    socket: Literal["auto"] | str | None = "auto"


@dataclass(frozen=True)
class Settings:
    audio: AudioSettings = field(default_factory=AudioSettings)
    playback: PlaybackSettings = field(default_factory=PlaybackSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    transcripts: TranscriptsSettings = field(default_factory=TranscriptsSettings)
    reconnect: ReconnectSettings = field(default_factory=ReconnectSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    control: ControlSettings = field(default_factory=ControlSettings)


# Bounds on the file itself, checked before anything is built from it.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_DEPTH = 16  # a mapping or list inside another, counting the top-level mapping as 1
MAX_NODES = 10_000  # scalars, mappings and lists (keys included); a real file has ~100
MAX_CA_FILE_BYTES = 16 * 1024 * 1024

# Range checks that a type hint cannot express: (low, high) inclusive. Every int and
# float setting has one (a test enforces it), so no number is unbounded.
_RANGES: dict[str, tuple[float, float]] = {
    "audio.device": (0, 1023),  # a device index from `edgevoice devices`
    "audio.rate": (8000, 192000),
    "audio.channels": (1, 32),
    "audio.queue_s": (0.1, 60),
    "playback.device": (0, 1023),
    "playback.rate": (8000, 192000),
    "playback.buffer_s": (0.2, 600),
    "playback.prebuffer_ms": (0, 2000),
    "playback.echo_tail_ms": (0, 5000),
    "playback.barge_in_db": (0, 60),
    "session.carry_turns": (0, 50),
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
    "stream.preroll_ms": (0, 2000),
    "stream.hangover_ms": (0, 10000),
    "stream.max_utterance_s": (1, 600),
    "stream.wake_threshold": (0.0, 1.0),
    "stream.follow_up_s": (0, 120),
    "stream.max_streamed_s_per_day": (1, 86400),
    "transcripts.max_bytes": (4096, 1 << 40),
    "transcripts.keep": (1, 100),
    "reconnect.initial_s": (0.01, 3600),
    "reconnect.max_s": (0.01, 86400),
    "reconnect.multiplier": (1.0, 100),
    "reconnect.stable_after_s": (0, 86400),
    "reconnect.rollover_margin_s": (0, 3000),
    "health.stall_timeout_s": (1, 3600),
    "health.silence_warn_s": (1, 86400),
}


# Strings where a line break or tab is meaningful; everywhere else a control character
# is refused (it would end up in a URL, a header, a path or a log line).
_MULTILINE = frozenset({"session.instructions"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

# RFC 7230 token (a header name) and the characters a header value must not hold.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers the WebSocket handshake sets itself (or, for Origin, deliberately leaves out).
_HANDSHAKE_HEADERS = frozenset(
    {"host", "connection", "upgrade", "content-length", "transfer-encoding", "origin"}
)


class _BadValue(ConfigError):
    """The value has the right type but is wrong (out of range, not finite, bad characters)."""


def load_settings(path: Path | str | None) -> Settings:
    """Read and validate a YAML file; None means "all defaults"."""
    if path is None:
        return Settings()
    path = Path(path)
    name = _printable(str(path))
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{name}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read configuration file: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{name}: configuration file is larger than "
                          f"{MAX_CONFIG_BYTES // 1024} KiB (the limit)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{name}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}); save the file as UTF-8"
        ) from None
    return parse_settings(text, source=str(path))


def parse_settings(text: str, source: str = "<config>") -> Settings:
    source = _printable(source)
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: configuration is larger than "
                          f"{MAX_CONFIG_BYTES // 1024} KiB (the limit)")
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        position = getattr(exc, "position", None)  # a ReaderError: a forbidden character
        if mark is not None:
            where = f" line {mark.line + 1} column {mark.column + 1}"
        elif isinstance(position, int):
            where = f" line {text.count(chr(10), 0, position) + 1}"
        else:
            where = ""
        problem = getattr(exc, "problem", None) or str(exc).split("\n", 1)[0]
        raise ConfigError(f"{source}:{where}: invalid YAML: {_one_line(problem)}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if data is None:
        data = {}
    try:
        settings = settings_from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return settings


class _Loader(_BaseLoader):
    """Safe loading, where a scalar Python cannot convert is a YAML error, not a crash.

    (`2001-13-45` is a timestamp to YAML 1.1 and a ValueError to `datetime`; an integer
    of more than 4300 digits is a ValueError to `int`.)
    """

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            raise ConstructorError(None, None, f"cannot read {_repr(node.value)}: {exc}",
                                   node.start_mark) from None


def _load_yaml(text: str) -> object:
    _check_shape(text)
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


class _Frame:
    """One open mapping or list while the YAML events are walked."""

    __slots__ = ("expect_key", "index", "keys", "label", "mapping")

    def __init__(self, mapping: bool) -> None:
        self.mapping = mapping
        self.expect_key = True
        self.index = 0
        self.keys: set[str] = set()
        self.label: str | None = None


def _check_shape(text: str) -> None:
    """Refuse aliases, deep nesting, too many nodes, duplicate keys and extra documents.

    This walks the parser's events, before any Python object is built: an anchor bomb
    fails at its first alias and a deep file at level MAX_DEPTH + 1, in microseconds.
    Aliases are refused outright: a configuration file has no need for them, and without
    them the document is a tree no larger than the text.
    """
    stack: list[_Frame] = []
    nodes = documents = 0

    def where(event: yaml.Event) -> tuple[str, str]:
        path = ""
        for frame in stack:
            if frame.label is not None:
                path += frame.label if frame.label.startswith("[") or not path \
                    else "." + frame.label
        mark = event.start_mark
        at = f" (line {mark.line + 1} column {mark.column + 1})" if mark is not None else ""
        return (path or "top level"), at

    for event in yaml.parse(text, Loader=_BaseLoader):
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                _, at = where(event)
                raise ConfigError(f"more than one YAML document (---) in the file{at}")
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            stack.pop()
            continue
        if not isinstance(event, yaml.NodeEvent):
            continue
        if stack:
            top = stack[-1]
            if not top.mapping:
                top.label = f"[{top.index}]"
                top.index += 1
            elif top.expect_key:
                top.expect_key = False
                if isinstance(event, yaml.ScalarEvent):
                    top.label = _label(event.value)
                    if event.value in top.keys and event.value != "<<":
                        path, at = where(event)
                        raise ConfigError(f"{path}: duplicate key{at}; the later value "
                                          "would silently replace the earlier one")
                    top.keys.add(event.value)
                else:
                    top.label = "?"
            else:
                top.expect_key = True
        if isinstance(event, yaml.AliasEvent):
            path, at = where(event)
            raise ConfigError(f"{path}: YAML aliases (*{_label(event.anchor)}) are not "
                              f"allowed in the configuration{at}; write the value out")
        nodes += 1
        if nodes > MAX_NODES:
            path, at = where(event)
            raise ConfigError(f"{path}: the configuration has more than {MAX_NODES} YAML "
                              f"values (the limit){at}")
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                path, at = where(event)
                raise ConfigError(f"{path}: nested deeper than {MAX_DEPTH} levels (the "
                                  f"limit){at}")
            stack.append(_Frame(isinstance(event, yaml.MappingStartEvent)))


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
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}{_label(unknown[0])}"
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
            except _BadValue:
                raise  # the type matched; this message is the useful one
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
        # bool is an int in Python (`true` must not pass as chunk_ms 1) and 20.0 == 20
        # (a float must not pass as chunk_ms 20): the type must match as well.
        elif any(type(value) is type(c) and value == c for c in choices):
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
            _coerce(key_type, k, f"{path}"): _coerce(value_type, v, f"{path}.{_label(k)}")
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
            if isinstance(value, float) and not math.isfinite(value):
                raise _BadValue(f"{path}: {value} is not a finite number")
            _check_range(path, value)  # before float(): a huge int must not overflow
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {_describe(value)}")
    if hint is str:
        if isinstance(value, str):
            bad = (_CONTROL_MULTILINE if path in _MULTILINE else _CONTROL).search(value)
            if bad is not None:
                raise _BadValue(f"{path}: control character {bad.group()!r} at position "
                                  f"{bad.start()} is not allowed")
            return value
        raise ConfigError(f"{path}: expected a string, got {_describe(value)}")
    raise TypeError(f"settings schema uses an unsupported type at {path}: {hint!r}")


def _check_range(path: str, value: float) -> None:
    low, high = _RANGES.get(path, (-math.inf, math.inf))
    if not low <= value <= high:  # also refuses NaN
        raise _BadValue(
            f"{path}: {_number(value)} is out of range ({_number(low)} to {_number(high)})"
        )


def _number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return _repr(value)


def check_settings(s: Settings) -> None:
    if s.playback.enabled and s.session.mode != "conversation":
        raise ConfigError(
            "playback.enabled: true needs session.mode: conversation (a transcription "
            "session has no answers to play)"
        )
    if s.session.turn_detection == "none" and s.stream.gate == "always":
        raise ConfigError(
            "session.turn_detection: none needs stream.gate: vad or wakeword (the local gate "
            "decides where a turn ends and commits it); with stream.gate: always use "
            "server_vad or semantic_vad"
        )
    if (isinstance(s.stream.hangover_ms, int) and s.session.turn_detection == "server_vad"
            and s.stream.hangover_ms < s.session.silence_duration_ms):
        raise ConfigError(
            f"stream.hangover_ms: {s.stream.hangover_ms} is below session.silence_duration_ms "
            f"{s.session.silence_duration_ms}: the server would never see the silence that "
            "ends a turn (use auto, or at least silence_duration_ms + 200)"
        )
    _check_extras(s)
    if s.reconnect.max_s < s.reconnect.initial_s:
        raise ConfigError(
            f"reconnect.max_s: {s.reconnect.max_s:g} is below reconnect.initial_s "
            f"{s.reconnect.initial_s:g}"
        )
    _check_url(s.server.url)
    _check_headers(s.server.headers)
    if s.server.ca_file is not None:
        _check_ca_file(s.server.ca_file)


# Settings that need an optional extra: (module, extra, what to install).
_EXTRAS = {"vad": ("pymicro_vad", "vad", "pymicro-vad"),
           "wakeword": ("pymicro_wakeword", "wakeword", "pymicro-wakeword>=2,<3")}


def hangover_ms(s: Settings) -> int:
    """`stream.hangover_ms` resolved: long enough for the server's VAD to end the turn."""
    if isinstance(s.stream.hangover_ms, int):
        return s.stream.hangover_ms
    return s.session.silence_duration_ms + 200


def _check_extras(s: Settings) -> None:
    """A setting that needs a package Debian lacks says which, and how to get it."""
    import importlib.util

    wanted: list[tuple[str, str]] = []
    if s.stream.gate == "wakeword":
        wanted.append(("stream.gate: wakeword", "wakeword"))
    if s.stream.gate != "always" and s.stream.vad == "micro":
        wanted.append(("stream.vad: micro", "vad"))
    for key, extra in wanted:
        if importlib.util.find_spec(_EXTRAS[extra][0]) is None:
            raise missing_extra(key, extra)


def missing_extra(key: str, extra: str) -> ConfigError:
    """The error for setting `key`, which needs the optional `extra` ("vad", "wakeword")
    that is not installed: the settings check and a detector's own import say the same."""
    _module, name, requirement = _EXTRAS[extra]
    return ConfigError(
        f"{key} needs the optional extra `{name}` ({requirement}), which is not "
        f"installed: pip install 'edgevoice[{name}]' in the daemon's virtualenv "
        "(see README, 'Optional extras')"
    )


def _check_url(url: str) -> None:
    """What websocket-client would otherwise fail on at every retry, forever."""
    rest = url.split("://", 1)[-1]
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in netloc:  # the URL is not shown: it holds a password
        raise ConfigError("server.url: must not contain a user name or password "
                          "(user:password@host): they would end up in logs")
    shown = _repr(url, 120)
    if not url.startswith(("ws://", "wss://")):
        raise ConfigError(
            f"server.url: {shown} must start with wss:// (or ws:// for a local server)"
        )
    if re.search(r"\s", url) or _CONTROL.search(url):
        raise ConfigError(f"server.url: {shown} contains white space or a control character")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"server.url: {shown} is not a valid URL ({exc})") from None
    if not parts.hostname:
        raise ConfigError(f"server.url: {shown} has no host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ConfigError(f"server.url: {shown} has an invalid port (1 to 65535)")
    if "#" in url:
        raise ConfigError(f"server.url: {shown} must not have a #fragment")
    if "api-version=" in url:
        raise ConfigError(
            f"server.url: {shown} uses the deprecated Azure preview form (api-version=); "
            "use https://<resource>.openai.azure.com/openai/v1/realtime as wss://"
        )


def _check_headers(headers: Mapping[str, str]) -> None:
    """Extra handshake headers: no injection, nothing the handshake or the key sets."""
    seen: set[str] = set()
    for name, value in headers.items():
        key = f"server.headers.{_label(name)}"
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ConfigError(f"{key}: not a valid header name (letters, digits and "
                              "!#$%&'*+-.^_`|~ only)")
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
        if _HEADER_VALUE_BAD.search(value):  # the value is not shown: it may be a secret
            raise ConfigError(f"{key}: the value contains a line break or another control "
                              "character (not allowed in an HTTP header)")
        lower = name.lower()
        if lower in ("authorization", "api-key", "openai-beta"):
            raise ConfigError(
                f"{key}: not allowed here"
                + (" (the beta interface is switched off)" if lower == "openai-beta"
                   else " (the key is read from the credential, key file or environment)")
            )
        if lower in _HANDSHAKE_HEADERS or lower.startswith("sec-websocket-"):
            raise ConfigError(
                f"{key}: not allowed here"
                + (" (edgevoice deliberately sends no Origin: it is not a browser)"
                   if lower == "origin" else " (the WebSocket handshake sets it)")
            )
        if lower in seen:
            raise ConfigError(f"{key}: given twice (header names ignore case)")
        seen.add(lower)


def _check_ca_file(ca_file: str) -> None:
    """The CA bundle must load now, not fail every TLS handshake later."""
    key = "server.ca_file"
    if not ca_file:
        raise ConfigError(f"{key}: empty; use null for the system's CA certificates")
    shown = _printable(ca_file)
    try:
        info = Path(ca_file).stat()
    except FileNotFoundError:
        raise ConfigError(f"{key}: {shown} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}: {shown}: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{key}: {shown} is not a regular file")
    if info.st_size > MAX_CA_FILE_BYTES:
        raise ConfigError(f"{key}: {shown} is larger than "
                          f"{MAX_CA_FILE_BYTES // (1024 * 1024)} MiB")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError:  # before OSError: SSLError is one
        raise ConfigError(f"{key}: {shown} holds no PEM certificates (expected a CA bundle "
                          "in PEM format, -----BEGIN CERTIFICATE-----)") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {shown}: {exc.strerror or exc}") from None
    if not context.cert_store_stats().get("x509"):
        raise ConfigError(f"{key}: {shown} holds no PEM certificates")


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


_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 4


def _repr(value: object, limit: int = 60) -> str:
    """A short, one-line repr: never the whole of a huge or deep value."""
    try:
        # Redacted before it is shortened: a cut inside a key must not leave its prefix.
        text = _REPR.repr(redact(value) if isinstance(value, str) else value)
    except ValueError:  # an integer too long to print (thousands of digits)
        text = "a huge integer"
    text = _printable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _label(key: object) -> str:
    """A key as it appears in a message path: as written when short and printable."""
    if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 60:
        return key
    return _repr(key)


def _printable(text: str) -> str:
    """`text` on one line: control and other unprintable characters escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _one_line(text: str, limit: int = 200) -> str:
    text = redact(_printable(" ".join(str(text).split())))
    return text if len(text) <= limit else text[: limit - 3] + "..."

