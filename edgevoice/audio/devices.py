"""Input device enumeration and lookup (also behind ``edgevoice devices``).

A device is named in the settings by index, by a case-insensitive substring of its PortAudio
name (``"usb"`` finds ``"USB PnP Sound Device: Audio (hw:1,0)"``), or ``"default"``. An exact
name match wins over substring matches; among several substring matches the lowest index
wins. Only devices with input channels are considered.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

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


def _default_input_index(pa: PortAudioLike) -> int:
    try:
        return int(pa.get_default_input_device_info()["index"])
    except (OSError, KeyError, ValueError):  # PyAudio raises IOError when there is none
        return -1


def input_devices(pa: PortAudioLike) -> list[DeviceInfo]:
    """Every device of an initialised PortAudio that has at least one input channel."""
    default_index = _default_input_index(pa)
    devices: list[DeviceInfo] = []
    for index in range(pa.get_device_count()):
        try:
            info = pa.get_device_info_by_index(index)
        except (OSError, ValueError):
            continue
        channels = int(info.get("maxInputChannels", 0))
        if channels <= 0:
            continue
        host_api = ""
        with suppress(OSError, KeyError, ValueError, TypeError):
            host_api = str(pa.get_host_api_info_by_index(int(info["hostApi"]))["name"])
        devices.append(
            DeviceInfo(
                index=index,
                name=str(info.get("name", f"device {index}")),
                max_input_channels=channels,
                default_sample_rate=float(info.get("defaultSampleRate", 0.0)),
                is_default=index == default_index,
                host_api=host_api,
            )
        )
    return devices


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
