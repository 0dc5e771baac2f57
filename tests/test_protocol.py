"""The wire facts of PROTOCOL.md, one assertion each."""

from __future__ import annotations

import base64
import contextlib
import json
import time

import pytest

from edgevoice.errors import ConfigError, ProtocolError
from edgevoice.realtime import protocol
from edgevoice.realtime.protocol import ErrorClass, ServerError
from edgevoice.settings import ServerSettings, SessionSettings


def test_session_update_is_ga_shape_with_24k_pcm() -> None:
    event = protocol.session_update(SessionSettings(
        language="en", noise_reduction="far_field", transcription_model="gpt-4o-mini-transcribe"))
    assert event["type"] == "session.update" and event["event_id"].startswith("evt_")
    session = event["session"]
    assert session["type"] == "realtime"
    assert session["output_modalities"] == ["audio"]
    audio_in = session["audio"]["input"]
    assert audio_in["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio_in["noise_reduction"] == {"type": "far_field"}
    assert audio_in["transcription"] == {"model": "gpt-4o-mini-transcribe", "language": "en"}
    # The current transcription models take a list of languages instead.
    default = protocol.session_config(SessionSettings(language="en"))
    assert default["audio"]["input"]["transcription"] == {"model": "gpt-live-transcribe",
                                                          "languages": ["en"]}
    assert audio_in["turn_detection"] == {"type": "server_vad", "threshold": 0.5,
                                          "prefix_padding_ms": 300, "silence_duration_ms": 500}
    assert session["audio"]["output"]["voice"] == "marin"
    # No beta-shape field anywhere.
    text = protocol.encode(event)
    for beta in ("modalities\":", "input_audio_format", "\"voice\":\"marin\",\"type\""):
        assert beta not in text.replace("output_modalities", "")


def test_transcribe_mode_and_turn_detection_variants() -> None:
    s = protocol.session_config(SessionSettings(mode="transcribe", turn_detection="none"))
    assert s["type"] == "transcription" and "output_modalities" not in s
    assert s["audio"]["input"]["turn_detection"] is None
    semantic = protocol.session_config(SessionSettings(turn_detection="semantic_vad",
                                                       eagerness="low"))
    assert semantic["audio"]["input"]["turn_detection"] == {"type": "semantic_vad",
                                                            "eagerness": "low"}


def test_event_ids_are_unique() -> None:
    ids = {protocol.new_event_id() for _ in range(1000)}
    assert len(ids) == 1000


def test_append_carries_base64_pcm() -> None:
    pcm = bytes(range(256)) * 4
    event = protocol.audio_append(pcm)
    assert event["type"] == "input_audio_buffer.append"
    assert base64.b64decode(event["audio"]) == pcm
    assert json.loads(protocol.encode(event)) == event


def test_connect_request_openai_and_azure() -> None:
    url, headers = protocol.connect_request(
        ServerSettings(headers={"X-Proxy": "1"}), "conversation", "k")
    assert url == "wss://api.openai.com/v1/realtime?model=gpt-realtime-2.1"
    assert headers == {"X-Proxy": "1", "Authorization": "Bearer k"}
    assert "OpenAI-Beta" not in headers
    url, _ = protocol.connect_request(ServerSettings(), "transcribe", "k")
    assert url == "wss://api.openai.com/v1/realtime?intent=transcription"
    url, headers = protocol.connect_request(
        ServerSettings(url="wss://r.openai.azure.com/openai/v1/realtime?model=old",
                       model="dep", dialect="azure"), "conversation", "k")
    assert url == "wss://r.openai.azure.com/openai/v1/realtime?model=dep"
    assert headers == {"api-key": "k"}


def test_parse_normalises_beta_names_and_rejects_garbage() -> None:
    event = protocol.parse_server_event('{"type":"response.audio.delta","delta":"AAAA"}')
    assert event.type == "response.output_audio.delta"
    assert protocol.decode_audio_delta(event) == b"\x00\x00\x00"[:2]
    assert protocol.parse_server_event('{"type":"response.text.delta"}').type == \
        "response.output_text.delta"
    assert protocol.parse_server_event('{"type":"brand.new.event"}').type == "brand.new.event"
    with pytest.raises(ProtocolError, match="malformed JSON"):
        protocol.parse_server_event("{nope")
    with pytest.raises(ProtocolError, match="without a 'type'"):
        protocol.parse_server_event("[1,2]")
    with pytest.raises(ProtocolError, match="binary frame"):
        protocol.parse_server_event(b"\x00\x01")


def test_effective_input_check_names_the_field() -> None:
    good = {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}}
    protocol.check_effective_input(good)
    protocol.check_effective_input({"input_audio_format": "pcm16"})  # beta-era proxy
    with pytest.raises(ConfigError, match=r"session.audio.input.format.rate: server uses 16000"):
        protocol.check_effective_input(
            {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}})
    with pytest.raises(ConfigError, match=r"format.type: server uses 'audio/pcmu'"):
        protocol.check_effective_input({"audio": {"input": {"format": {"type": "audio/pcmu"}}}})
    with pytest.raises(ConfigError, match="input_audio_format: server uses 'g711_ulaw'"):
        protocol.check_effective_input({"input_audio_format": "g711_ulaw"})


def _error(code: str) -> ServerError:
    event = protocol.parse_server_event(json.dumps(
        {"type": "error", "error": {"type": "invalid_request_error", "code": code,
                                    "message": "m", "param": "p", "event_id": "evt_1"}}))
    return ServerError.from_event(event)


@pytest.mark.parametrize(("code", "klass"), [
    ("invalid_api_key", ErrorClass.CREDENTIALS),
    ("insufficient_quota", ErrorClass.CREDENTIALS),
    ("account_deactivated", ErrorClass.CREDENTIALS),
    ("billing_hard_limit_reached", ErrorClass.CREDENTIALS),
    ("session_expired", ErrorClass.SESSION_EXPIRED),
    ("rate_limit_exceeded", ErrorClass.RATE_LIMITED),
    ("response_cancel_not_active", ErrorClass.BENIGN),
    ("conversation_already_has_active_response", ErrorClass.BENIGN),
    ("beta_api_shape_disabled", ErrorClass.CONFIG),
    ("unknown_parameter", ErrorClass.OTHER),
])
def test_error_classification(code: str, klass: ErrorClass) -> None:
    error = _error(code)
    assert (error.code, error.param, error.event_id) == (code, "p", "evt_1")
    assert protocol.classify_error(error) is klass


def test_describe_close() -> None:
    assert protocol.describe_close(1001, "") == "close 1001 (going away)"
    assert protocol.describe_close(4000, "invalid_request_error.beta_api_shape_disabled") == \
        "close 4000 (beta API shape disabled): invalid_request_error.beta_api_shape_disabled"
    assert protocol.describe_close(None, "") == "connection closed without a close frame"


# -- untrusted frames: every defect is a MalformedEvent with a kind, and cheap to find ---


@pytest.mark.parametrize(("text", "kind"), [
    ("{nope", "not JSON"),
    ("", "not JSON"),
    ('{"type": 5}', "no type"),
    ('"just a string"', "no type"),
    ('{"type": "error", "error": "boom"}', "bad field"),
    ('{"type": "session.updated", "session": [1]}', "bad field"),
    ('{"type": "response.audio.delta", "delta": {"x": 1}}', "bad field"),
    ('{"type": "input_audio_buffer.speech_started", "audio_start_ms": true}', "bad field"),
    ('{"type": "rate_limits.updated", "rate_limits": {}}', "bad field"),
    ('{"type": "x", "a": ' + "[" * 65 + "]" * 65 + "}", "too deep"),
    ('{"type": "x", "a": ' + '{"b":' * 65 + "1" + "}" * 65 + "}", "too deep"),
    ("[" * 100_000, "too deep"),
    ('{"type": "x", "a": [' + "0," * 100_000 + "0]}", "too many values"),
])
def test_malformed_events_have_a_kind(text: str, kind: str) -> None:
    with pytest.raises(protocol.MalformedEvent) as info:
        protocol.parse_server_event(text)
    assert info.value.kind == kind
    assert isinstance(info.value, ProtocolError)


def test_structure_limits_ignore_what_is_inside_strings() -> None:
    brackets = "[{,:" * 100_000  # in a transcript, not structure
    event = protocol.parse_server_event(json.dumps(
        {"type": "response.output_audio_transcript.done", "transcript": brackets,
         "nested": [[[[[[[[[[1]]]]]]]]]]}))
    assert event.get_str("transcript") == brackets
    deep_enough = "[" * 63 + "]" * 63  # 64 levels with the event object
    assert protocol.parse_server_event('{"type": "x", "a": ' + deep_enough + "}").type == "x"
    # Optional fields may be absent or null; types are checked when present.
    protocol.parse_server_event('{"type": "response.done", "response": null}')
    protocol.parse_server_event('{"type": "input_audio_buffer.speech_started"}')


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize("before", [
    '{"type": "x", ',  # the key where a key goes
    '{"type": "x", "a": ',  # where a value goes
    '{"type": "x", "a": "',  # inside a value string: the key's quote closes it
    '{"type": "x", "k\\',  # inside a key string: the key's quote is escaped
    '{"type": "x", "k\\\\',  # an escaped backslash: the key's quote closes the string
    '["',
])
@pytest.mark.parametrize("key", ['"delta":"', '"delta": "', '"delta":  "', '"delta":'])
@pytest.mark.parametrize("deep", [
    "[" * 70 + "]" * 70,
    'x", "b": ' + "[" * 70 + "]" * 70 + ', "c": "y',  # deep between two strings
    "a" + "[" * 70 + '"],"b":' + "[" * 70 + "]" * 70,
    "x" + "[" * 70 + "]" * 70 + '"' + "[" * 70 + "]" * 70,
])
@pytest.mark.parametrize("after", ["}", '"}', "]}", '"]}]'])
def test_skipping_the_delta_string_hides_no_structure(before: str, key: str, deep: str,
                                                      after: str) -> None:
    """The bracket count leaves out the first "delta" string; wherever that key sits
    (outside a string, inside one, after escapes), the verdict is json.loads' own: what it
    parses within the depth limit is accepted, anything else refused."""
    text = before + key + deep + after
    try:
        parsed: object = json.loads(text)
    except ValueError:
        parsed = None  # not JSON: refused
    if isinstance(parsed, dict) and "type" in parsed \
            and _depth(parsed) <= protocol.MAX_JSON_DEPTH:
        assert protocol.parse_server_event(text).data == parsed
    else:
        with pytest.raises(protocol.MalformedEvent):
            protocol.parse_server_event(text)


def _audio_delta(pcm: bytes, compact: bool = True, **extra: object) -> str:
    event = {"type": "response.output_audio.delta", "event_id": "event_1",
             "response_id": "resp_1", "item_id": "item_1", "output_index": 0,
             "content_index": 0, "delta": base64.b64encode(pcm).decode("ascii"), **extra}
    return json.dumps(event, separators=(",", ":") if compact else None)


def _spliced_texts() -> list[str]:
    """Audio deltas as the service sends them, and every way their text could make the
    parse that cuts the base64 out (`_loads`) differ from json.loads."""
    pcm = bytes(range(256)) * 19  # 4864 bytes, 6488 base64 characters
    b64 = base64.b64encode(pcm).decode("ascii")
    plain = _audio_delta(pcm)
    cut = plain.index(b64)
    head, tail = plain[:cut], plain[cut + len(b64):]
    return [
        plain,
        _audio_delta(pcm, compact=False),
        _audio_delta(pcm + b"x"),  # padding
        _audio_delta(pcm[:1500]),  # shorter than the splice threshold... in characters
        _audio_delta(pcm, item_id="a\\b"),  # a backslash elsewhere
        _audio_delta(pcm, item_id='say "delta"'),  # the key's word twice
        head + b64 + tail[:-1] + ',"delta":""}',  # a duplicate key: the last one counts
        head + b64 + tail[:-1] + ',"x":{"delta":"QQ=="}}',
        '{"type":"response.output_audio.delta","x":{"delta":"' + b64 + '"},"delta":""}',
        '{"type":"response.output_audio.delta","x":{"delta":"' + b64 + '"}}',
        '{"type":"response.output_audio.delta","x":{"delta":"' + b64 + '"},"\\u0064elta":""}',
        head + b64[:100] + "\n" + b64[100:] + tail,  # a JSON escape inside the base64
        head + b64[:100] + "\x01" + b64[100:] + tail,  # a raw control character
        head + b64[:100] + "@" + b64[100:] + tail,  # not base64, valid JSON
        head + b64[:100] + "==" + b64[100:] + tail,  # padding in the middle
        head + b64[:100] + "\u00e9" + b64[100:] + tail,
        head + b64[:101] + tail,  # bad length
        head + b64 + tail + "garbage",
        head + b64 + tail + " ",
        head + b64,  # unterminated
        head + b64 + '"',
        head + b64 + '", "a": ' + "[" * 70 + "]" * 70 + "}",  # too deep after the base64
        head.replace('"delta":"', '"delta":\t"') + b64 + tail,
        head.replace('"delta":"', '"delta" :"') + b64 + tail,
        '["' + b64 + '"]',
        '{"delta":"' + b64 + '"}',
    ]


@pytest.mark.parametrize("text", _spliced_texts())
def test_an_audio_delta_parses_and_decodes_as_json_loads_and_b64decode_say(text: str) -> None:
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(protocol.MalformedEvent):
            protocol.parse_server_event(text)
        return
    if not isinstance(expected, dict) or "type" not in expected \
            or text.count("[") > protocol.MAX_JSON_DEPTH:
        with pytest.raises(protocol.MalformedEvent):
            protocol.parse_server_event(text)
        return
    event = protocol.parse_server_event(text)
    assert event.data == expected
    try:
        pcm = base64.b64decode(expected.get("delta", ""), validate=True)
    except ValueError:
        with pytest.raises(protocol.MalformedEvent, match="not base64"):
            protocol.decode_audio_delta(event)
        return
    assert protocol.decode_audio_delta(event) == pcm[:len(pcm) // 2 * 2]


def test_an_audio_delta_as_sent_skips_the_base64_in_json_loads() -> None:
    """The fast path is taken for what the service sends (compact JSON, or with spaces)."""
    pcm = bytes(range(256)) * 19
    for text in (_audio_delta(pcm), _audio_delta(pcm, compact=False)):
        event = protocol.parse_server_event(text)
        assert event._payload == pcm
        assert protocol.decode_audio_delta(event) == pcm


def test_bad_base64_is_a_malformed_event() -> None:
    event = protocol.parse_server_event('{"type": "response.output_audio.delta", "delta": "@@"}')
    with pytest.raises(protocol.MalformedEvent) as info:
        protocol.decode_audio_delta(event)
    assert info.value.kind == "bad base64"


@pytest.mark.parametrize("hostile", [
    "[" * (32 << 20),  # 32 MiB of nesting
    "[]," * (11 << 20),  # 32 MiB of values (json.loads would build 400 MB of lists)
    '{"type": "x", "s": "' + "[" * (32 << 20) + '"}',  # brackets in a string: legitimate
    '{"type": "x", "delta":' + " " * (32 << 20) + '"a"}',  # the delta string found fast
])
def test_32_mib_of_hostile_json_is_rejected_or_parsed_quickly(hostile: str) -> None:
    started = time.monotonic()
    with contextlib.suppress(protocol.MalformedEvent):
        protocol.parse_server_event(hostile)
    assert time.monotonic() - started < 2.0


def test_a_large_audio_delta_parses_quickly() -> None:
    pcm = bytes(range(256)) * (96 << 10)  # 24 MiB of PCM, 32 MiB of base64
    text = json.dumps({"type": "response.output_audio.delta",
                       "delta": base64.b64encode(pcm).decode()})
    started = time.monotonic()
    event = protocol.parse_server_event(text)
    assert protocol.decode_audio_delta(event) == pcm
    assert time.monotonic() - started < 2.0
