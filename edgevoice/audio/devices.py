"""Device enumeration and lookup (also behind ``edgevoice devices``).

A device is named in the settings by index, by a case-insensitive substring of its PortAudio
name (``"usb"`` finds ``"USB PnP Sound Device: Audio (hw:1,0)"``), or ``"default"``. An exact
name match wins over substring matches; among several substring matches the lowest index
wins. Only devices with input channels are considered by ``find_input_device``;
``survey`` lists inputs and outputs with the rates they take and the name that selects each
by the same rules (``playback.device`` follows them too).
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from edgevoice.audio.alsa_quiet import quiet_stderr
from edgevoice.errors import AudioDeviceError

log = logging.getLogger(__name__)


class PortAudioLike(Protocol):
    """The part of ``pyaudio.PyAudio`` that device lookup uses (a seam for tests)."""

    def get_device_count(self) -> int: ...

    def get_device_info_by_index(self, device_index: int) -> Mapping[str, Any]: ...

    def get_default_input_device_info(self) -> Mapping[str, Any]: ...

    def get_host_api_info_by_index(self, host_api_index: int) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    max_input_channels: int
    default_sample_rate: float
    is_default: bool
    host_api: str = ""


def input_devices(pa: PortAudioLike) -> list[DeviceInfo]:
    """Every device of an initialised PortAudio that has at least one input channel."""
    # One enumeration for both directions (`_entries`); input lookup needs only the input
    # half of PortAudio's API, which is all it calls for "input".
    return [DeviceInfo(e.index, e.name, e.channels, e.default_sample_rate, e.is_default,
                       e.host_api)
            for e in _entries(cast("PortAudioSurveyable", pa), "input")]


def list_input_devices(pa: PortAudioLike | None = None) -> list[DeviceInfo]:
    """Input devices; initialises (and terminates) PortAudio itself unless ``pa`` is given."""
    if pa is not None:
        return input_devices(pa)
    import pyaudio  # imported late: the module stays importable without PortAudio

    try:
        with quiet_stderr():
            own = pyaudio.PyAudio()
    except OSError as exc:
        raise AudioDeviceError(f"cannot initialise PortAudio: {exc}") from exc
    try:
        return input_devices(own)
    finally:
        own.terminate()


def format_device_table(devs: list[DeviceInfo]) -> str:
    """A small fixed-width table for ``edgevoice devices`` and for error messages."""
    if not devs:
        return "  (no input devices found)"
    rows = [("", "index", "channels", "default rate", "name")]
    for d in devs:
        rows.append(
            (
                "*" if d.is_default else "",
                str(d.index),
                str(d.max_input_channels),
                f"{d.default_sample_rate:.0f} Hz",
                d.name + (f"  [{d.host_api}]" if d.host_api else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for r in rows:
        lines.append(
            f"{r[0]:<{widths[0]}} {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  "
            f"{r[3]:>{widths[3]}}  {r[4]}".rstrip()
        )
    lines.append("(* = default input device)")
    return "\n".join("  " + line for line in lines)


def _not_found(message: str, devs: list[DeviceInfo]) -> AudioDeviceError:
    """One line (a journal entry each), naming every input device and its index."""
    listed = ", ".join(
        f"#{d.index} {d.name!r}{' (default)' if d.is_default else ''}" for d in devs
    ) or "none"
    return AudioDeviceError(f"{message}; available input devices: {listed}")


def find_input_device(pa: PortAudioLike, spec: str | int) -> DeviceInfo:
    """Resolve a device spec (index, name substring or ``"default"``) to an input device."""
    devs = input_devices(pa)
    text = spec.strip() if isinstance(spec, str) else ""
    if isinstance(spec, int) or text.isdigit():
        index = spec if isinstance(spec, int) else int(text)
        for d in devs:
            if d.index == index:
                return d
        raise _not_found(f"audio device index {index} is not an input device", devs)
    if not text:
        raise _not_found("empty audio device name", devs)
    if text.lower() == "default":
        for d in devs:
            if d.is_default:
                return d
        raise _not_found("there is no default input device", devs)
    wanted = text.casefold()
    exact = [d for d in devs if d.name.casefold() == wanted]
    if exact:
        return exact[0]
    matches = [d for d in devs if wanted in d.name.casefold()]
    if not matches:
        raise _not_found(f"no input device matches {text!r}", devs)
    if len(matches) > 1:
        log.info(
            "audio device %r matches %d devices (%s); using #%d %r",
            text,
            len(matches),
            ", ".join(repr(d.name) for d in matches),
            matches[0].index,
            matches[0].name,
        )
    return matches[0]


# -- the survey behind `edgevoice devices`: inputs and outputs, rates, config names ----------

PROBE_RATES = (8000, 16000, 24000, 44100, 48000)
PA_INT16 = 8  # pyaudio.paInt16 (paInt16 in portaudio.h); the only format edgevoice uses

Direction = Literal["input", "output"]


class PortAudioSurveyable(PortAudioLike, Protocol):
    """What ``survey`` needs on top of device lookup."""

    def get_default_output_device_info(self) -> Mapping[str, Any]: ...

    def is_format_supported(self, rate: float, **kwargs: Any) -> bool: ...


@dataclass(frozen=True)
class DeviceEntry:
    """One device in one direction, as ``edgevoice devices`` prints it."""

    direction: Direction
    index: int
    name: str
    channels: int
    default_sample_rate: float
    is_default: bool
    host_api: str = ""
    rates: tuple[int, ...] | None = None
    """Rates of PROBE_RATES it accepts for 16-bit audio; None when the probe was cut off."""
    busy: bool = False
    """PortAudio said "Device unavailable" (another program, the daemon say, holds it)."""
    config_value: str | int = ""
    """What to write as ``audio.device`` / ``playback.device`` to select exactly this one."""


@dataclass
class Survey:
    inputs: list[DeviceEntry]
    outputs: list[DeviceEntry]
    notes: list[str] = field(default_factory=list)


@contextmanager
def bounded_blocking(seconds: float) -> Iterator[list[float]]:
    """Interrupt any system call of this (main) thread that blocks for ``seconds`` or more.

    PortAudio opens every ALSA PCM while it initialises and again for each
    ``is_format_supported``; a ``type file`` PCM whose file is a FIFO nobody writes (or, for
    playback, reads) blocks there in ``open(2)``, and ``is_format_supported`` holds the GIL
    while it does (see ``edgevoice.audio.fifo_mic``), so no thread and no timer in Python can
    help. A repeating ``SIGALRM`` can: the kernel cuts the ``open(2)`` short with EINTR (the
    Python handler only records it), alsa-lib fails that PCM and PortAudio goes on without
    it. Yields the list of times the alarm fired (empty: nothing was interrupted). Outside
    the main thread it does nothing.
    """
    fired: list[float] = []
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield fired
        return

    def _record(_signum: int, _frame: object) -> None:
        fired.append(time.monotonic())

    previous = signal.signal(signal.SIGALRM, _record)
    started = time.monotonic()
    delay, interval = signal.setitimer(signal.ITIMER_REAL, seconds, seconds)
    try:
        yield fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if delay > 0:  # someone else's alarm (pytest-timeout, say): give it back
            left = max(delay - (time.monotonic() - started), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, interval)


def _default_index(pa: PortAudioSurveyable, direction: Direction) -> int:
    try:
        info = (pa.get_default_input_device_info() if direction == "input"
                else pa.get_default_output_device_info())
        return int(info["index"])
    except (OSError, KeyError, ValueError):
        return -1


def _entries(pa: PortAudioSurveyable, direction: Direction) -> list[DeviceEntry]:
    key = "maxInputChannels" if direction == "input" else "maxOutputChannels"
    default_index = _default_index(pa, direction)
    entries: list[DeviceEntry] = []
    for index in range(pa.get_device_count()):
        try:
            info = pa.get_device_info_by_index(index)
        except (OSError, ValueError):
            continue
        channels = int(info.get(key, 0))
        if channels <= 0:
            continue
        host_api = ""
        with suppress(OSError, KeyError, ValueError, TypeError):
            host_api = str(pa.get_host_api_info_by_index(int(info["hostApi"]))["name"])
        entries.append(DeviceEntry(
            direction=direction,
            index=index,
            name=str(info.get("name", f"device {index}")),
            channels=channels,
            default_sample_rate=float(info.get("defaultSampleRate", 0.0)),
            is_default=index == default_index,
            host_api=host_api,
        ))
    return entries


PA_DEVICE_UNAVAILABLE = -9985  # paDeviceUnavailable: ALSA's EBUSY, the device is held


def _unavailable(exc: Exception) -> bool:
    """PyAudio raises ValueError((text, code)) (or with the text alone)."""
    flat = [a for arg in exc.args for a in (arg if isinstance(arg, tuple) else (arg,))]
    return PA_DEVICE_UNAVAILABLE in flat or "unavailable" in str(exc).lower()


def probe_rates(pa: PortAudioSurveyable, entry: DeviceEntry,
                rates: Sequence[int] = PROBE_RATES, timeout_s: float = 2.0,
                busy: list[bool] | None = None) -> tuple[int, ...] | None:
    """The rates ``entry`` accepts for 16-bit audio with the channels edgevoice would use
    (as ``choose_channels``: at most 2). None when a probe blocked (see ``bounded_blocking``).
    ``busy``, when given, gets True appended if PortAudio said the device is unavailable.
    """
    channels = max(1, min(entry.channels, 2))
    prefix = entry.direction
    supported: list[int] = []
    with bounded_blocking(timeout_s) as fired:
        for rate in rates:
            kwargs = {f"{prefix}_device": entry.index, f"{prefix}_channels": channels,
                      f"{prefix}_format": PA_INT16}
            try:
                ok = bool(pa.is_format_supported(rate, **kwargs))
            except (ValueError, OSError) as exc:  # ValueError: "not supported"
                ok = False
                if busy is not None and _unavailable(exc):
                    busy.append(True)
            if fired:
                return None
            if ok:
                supported.append(rate)
    return tuple(supported)


def _selects(entries: Sequence[DeviceEntry], text: str) -> DeviceEntry | None:
    """The device a configured name picks, by the rules of ``find_input_device``."""
    text = text.strip()
    if not text:
        return None
    if text.isdigit():
        return next((e for e in entries if e.index == int(text)), None)
    if text.lower() == "default":
        return next((e for e in entries if e.is_default), None)
    wanted = text.casefold()
    exact = [e for e in entries if e.name.casefold() == wanted]
    if exact:
        return exact[0]
    return next((e for e in entries if wanted in e.name.casefold()), None)


def config_value(entries: Sequence[DeviceEntry], entry: DeviceEntry) -> str | int:
    """A readable name that selects exactly ``entry`` among ``entries`` (the part before the
    first ':', the name without its ``(hw:C,D)``, the whole name: the first that is not part
    of another device's name, or matches this one's whole name), or its index when another
    device has the same name (which one a name picks would then depend on the order
    PortAudio lists them in)."""
    name = entry.name.strip()
    if any(e.index != entry.index and e.name.strip().casefold() == name.casefold()
           for e in entries):
        return entry.index
    candidates = [name.split(":", 1)[0].strip(), re.sub(r"\s*\(hw:\d+,\d+\)$", "", name), name]
    for candidate in candidates:
        if candidate and _selects_only(entries, candidate, entry):
            return candidate
    return entry.index


def _selects_only(entries: Sequence[DeviceEntry], text: str, entry: DeviceEntry) -> bool:
    """``text`` picks ``entry`` and not by the lowest-index rule (no other name contains it),
    so it still picks it when PortAudio lists the devices in another order."""
    if _selects(entries, text) != entry:
        return False
    wanted = text.strip().casefold()
    if wanted == "default" or wanted == entry.name.strip().casefold():
        return True
    return sum(wanted in e.name.casefold() for e in entries) == 1


def yaml_scalar(value: str | int) -> str:
    """``value`` as it can be pasted after ``device:`` in the YAML file (quoted if needed)."""
    if isinstance(value, int):
        return str(value)
    import yaml

    try:
        plain = yaml.safe_load(f"k: {value}") == {"k": value}
    except yaml.YAMLError:
        plain = False
    return value if plain else json.dumps(value)


def survey_portaudio(pa: PortAudioSurveyable, probe_timeout_s: float = 2.0) -> Survey:
    """Inputs and outputs of an initialised PortAudio, with probed rates and config names."""
    result = Survey(inputs=[], outputs=[])
    pairs: tuple[tuple[Direction, list[DeviceEntry]], ...] = (
        ("input", result.inputs), ("output", result.outputs))
    for direction, target in pairs:
        found = _entries(pa, direction)
        for entry in found:
            held: list[bool] = []
            rates = probe_rates(pa, entry, timeout_s=probe_timeout_s, busy=held)
            if rates is None:
                result.notes.append(
                    f"#{entry.index} {entry.name!r}: opening it as an {direction} blocked for "
                    f"{probe_timeout_s:g} s (a FIFO-backed ALSA 'file' PCM with no "
                    f"{'writer' if direction == 'input' else 'reader'}?); rates not probed")
            target.append(DeviceEntry(
                direction=entry.direction, index=entry.index, name=entry.name,
                channels=entry.channels, default_sample_rate=entry.default_sample_rate,
                is_default=entry.is_default, host_api=entry.host_api, rates=rates,
                busy=bool(held) and not rates, config_value=config_value(found, entry)))
    return result


def survey(init_timeout_s: float = 5.0, probe_timeout_s: float = 2.0) -> Survey:
    """``survey_portaudio`` on a PortAudio it initialises (quietly) and terminates."""
    import pyaudio  # imported late: the module stays importable without PortAudio

    with quiet_stderr():
        try:
            with bounded_blocking(init_timeout_s) as fired:
                own = pyaudio.PyAudio()
        except OSError as exc:
            raise AudioDeviceError(f"cannot initialise PortAudio: {exc}") from exc
        try:
            result = survey_portaudio(own, probe_timeout_s)
        finally:
            own.terminate()
    if fired:
        result.notes.insert(0, (
            f"opening a device blocked for {init_timeout_s:g} s while PortAudio listed the "
            "devices (a FIFO-backed ALSA 'file' PCM with no writer?); it was skipped, so a "
            "device may be missing below"))
    return result


def _rates_text(entry: DeviceEntry) -> str:
    if entry.busy:
        return "(busy: in use)"
    if entry.rates is None:
        return "(not probed)"
    return " ".join(str(r) for r in entry.rates) if entry.rates else "none"


def format_survey(result: Survey) -> str:
    """The tables of ``edgevoice devices``: one per direction, one line per device."""
    out: list[str] = []
    sections: tuple[tuple[str, str, list[DeviceEntry]], ...] = (
        ("Inputs", "audio.device", result.inputs),
        ("Outputs", "playback.device", result.outputs),
    )
    for title, key, entries in sections:
        out.append(f"{title} (put the last column in the config as {key}):")
        if not entries:
            out.append(f"  (no {title.lower()[:-1]} devices found)")
            out.append("")
            continue
        rows = [("", "idx", "name", "ch", "default", "16-bit rates (Hz)", key)]
        for e in entries:
            rows.append((
                "*" if e.is_default else "",
                str(e.index),
                e.name,
                str(e.channels),
                f"{e.default_sample_rate:.0f}",
                _rates_text(e),
                yaml_scalar(e.config_value),
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            out.append(
                f"  {r[0]:<{widths[0]}} {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  "
                f"{r[3]:>{widths[3]}}  {r[4]:>{widths[4]}}  {r[5]:<{widths[5]}}  {r[6]}"
                .rstrip())
        out.append("")
    out.append("* = the default device; ch = channels; default = default rate (Hz)")
    out.extend(f"note: {n}" for n in result.notes)
    return "\n".join(out)
