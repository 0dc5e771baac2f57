"""The capture device as the service sees it: it exists, opens, and delivers live audio.

Run by hand, PortAudio is pointed at the service's ALSA configuration first (the unit's
`Environment=ALSA_CONFIG_PATH=`), unless `ALSA_CONFIG_PATH` is set already: alsa-lib reads
it when PortAudio initialises, so this must happen before anything imports it into use.
A device the running daemon holds is reported as in use, a warning: the check cannot
listen to it, but nothing is broken. PortAudio leaves a busy hardware device out of its
list, so a device that is not found is looked up among the open capture devices of
/proc/asound (`alsa_busy`); one that is listed but fails to open with EBUSY or
paDeviceUnavailable (a plugin device over busy hardware) is recognised from the error.
Over the listening time the level (dBFS), clipping, and the two silent deaths the daemon
watches for (digital silence, one repeated buffer: `audio.level.DeadInputDetector`'s
tests on every block) are reported.
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgevoice.audio.level import (
    DIGITAL_SILENCE,
    REPEATED_BUFFER,
    DeadInputDetector,
    measure_level,
    to_dbfs,
)
from edgevoice.audio.source import AudioSource
from edgevoice.doctor.alsa_busy import PROC, BusyCapture, holder_of
from edgevoice.doctor.service import ServicePaths
from edgevoice.doctor.verdicts import Check, failed, passed, skipped, warned
from edgevoice.errors import AudioDeviceError
from edgevoice.settings import AudioSettings

CLIP = 32767  # |sample| at or above: clipped
CLIP_WARN_FRACTION = 0.001
BUSY_MARKERS = ("device or resource busy", "device unavailable", "-9985", "ebusy",
                "[errno 16]")
MIXER_FIX = ("unmute and raise the capture input: `alsamixer -c <card>`, F4 (capture), "
             "select the input, toggle capture with space; or pick another audio.device "
             "(`edgevoice devices`)")


def use_service_alsa_config(service: ServicePaths,
                            environ: MutableMapping[str, str] | None = None) -> Check:
    """Set ALSA_CONFIG_PATH as the unit does, unless it is set; before PortAudio starts."""
    env = os.environ if environ is None else environ
    current = env.get("ALSA_CONFIG_PATH")
    if current:
        return passed("alsa config", f"ALSA_CONFIG_PATH={current} (from the environment)")
    if service.alsa_config.is_file():
        env["ALSA_CONFIG_PATH"] = str(service.alsa_config)
        return passed("alsa config", f"the service's {service.alsa_config} "
                      f"(ALSA_CONFIG_PATH from {service.source})")
    if service.source != "defaults":
        return warned("alsa config", f"{service.source} sets ALSA_CONFIG_PATH="
                      f"{service.alsa_config}, which does not exist: the service sees no "
                      "ALSA devices", "reinstall the edgevoice package")
    return passed("alsa config", "system default (the service's "
                  f"{service.alsa_config} is not installed)")


def is_busy(exc: BaseException) -> bool:
    """Whether a device error means another process holds the device."""
    texts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(texts) < 5:
        texts.append(str(seen).lower())
        if isinstance(seen, OSError) and seen.errno == 16:
            return True
        seen = seen.__cause__ or seen.__context__
    return any(marker in text for text in texts for marker in BUSY_MARKERS)


@dataclass
class Listening:
    blocks: int = 0
    silent: int = 0
    repeated: int = 0
    samples: list[npt.NDArray[np.int16]] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


def in_use(name: str, what: str, holder: BusyCapture | None, error: str) -> Check:
    """A device another process holds: a warning (the daemon is probably using it)."""
    if holder is not None and holder.by_edgevoice:
        who = f"by the running edgevoice, pid {holder.owner_pid}"
    elif holder is not None:
        who = f"by pid {holder.owner_pid} {holder.owner[:60]!r}; the running edgevoice?"
    else:
        who = "by the running edgevoice?"
    return warned(name, f"{what} is in use ({who}); {error}",
                  "to listen to it here, stop the service first (`sudo systemctl stop "
                  "edgevoice`); `edgevoice status` shows its level meanwhile")


def check_audio(audio: AudioSettings, seconds: float, proc: Path = PROC) -> list[Check]:
    """device, device open, level (each skipped when the one before did not pass)."""
    if audio.wav_file:
        path = audio.wav_file
        if os.access(path, os.R_OK):
            return [passed("device", f"audio.wav_file {path} (no microphone is used)")]
        return [failed("device", f"audio.wav_file {path} cannot be read",
                       "fix audio.wav_file, or remove it to use the microphone")]
    from edgevoice.audio.devices import find_input_device
    from edgevoice.audio.portaudio_host import PortAudioHost
    from edgevoice.audio.pyaudio_source import PyAudioSource

    host = PortAudioHost()
    try:
        try:
            info = find_input_device(host.acquire(), audio.device)
        except AudioDeviceError as exc:
            holder = holder_of(audio.device, proc)
            if holder is not None:  # PortAudio hides a device it cannot open
                device = in_use("device", f"{holder.label}", holder, str(exc))
                return [device, skipped("device open", device), skipped("level", device)]
            device = failed("device", str(exc),
                            "set audio.device to (part of) the name or the index of one of "
                            "the available input devices named (`edgevoice devices`)")
            return [device, skipped("device open", device), skipped("level", device)]
        checks = [passed("device", f"audio.device {audio.device!r} is #{info.index} "
                         f"{info.name!r} ({info.max_input_channels} input channel(s), "
                         f"default {info.default_sample_rate:.0f} Hz)")]
        rate = None if audio.rate == "auto" else audio.rate
        source = PyAudioSource(
            device=audio.device, rate=rate,
            channels=None if audio.channels == "auto" else audio.channels,
            block_ms=audio.chunk_ms, queue_s=max(audio.queue_s, 2.0), host=host)
        try:
            try:
                source.open()
            except AudioDeviceError as exc:
                if is_busy(exc):
                    opened = in_use("device open", repr(info.name),
                                    holder_of(audio.device, proc), str(exc))
                else:
                    opened = failed("device open", str(exc),
                                    "set audio.rate/audio.channels to values the device "
                                    "supports (`edgevoice devices`), or auto")
                return [*checks, opened, skipped("level", opened)]
            opened_detail = f"opened {source.description}"
            if rate is not None and source.rate != rate:
                checks.append(warned("device open", f"{opened_detail}: audio.rate {rate} "
                                     "is not supported, the daemon falls back to "
                                     f"{source.rate} Hz", f"set audio.rate: {source.rate} "
                                     "or auto"))
            else:
                checks.append(passed("device open", opened_detail))
            checks.append(_level(_listen(source, seconds), seconds))
            return checks
        finally:
            source.close()
    finally:
        host.terminate()


def _listen(source: AudioSource, seconds: float) -> Listening:
    heard = Listening()
    detector = DeadInputDetector(0.0)
    started = time.monotonic()
    deadline = started + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            block = source.read(min(left, 0.2))
        except AudioDeviceError as exc:
            heard.error = str(exc)
            break
        if block is None or block.samples.size == 0:
            continue
        heard.blocks += 1
        kind = detector.classify(block.samples)
        heard.silent += kind == DIGITAL_SILENCE
        heard.repeated += kind == REPEATED_BUFFER
        heard.samples.append(block.samples)
    heard.seconds = time.monotonic() - started
    return heard


def _level(heard: Listening, seconds: float) -> Check:
    if heard.blocks == 0:
        why = heard.error or "the stream runs but delivers nothing (a stalled driver)"
        return failed("level", f"no audio in {seconds:g} s: {why}",
                      "replug the device or reboot; check `dmesg` for USB audio errors")
    samples = np.concatenate(heard.samples)
    level = measure_level(samples)
    clipped = int(np.count_nonzero(np.abs(samples.astype(np.int32)) >= CLIP))
    text = (f"{level.rms_dbfs:.1f} dBFS RMS, peak {to_dbfs(float(level.peak)):.1f} dBFS, "
            f"{heard.blocks} blocks in {heard.seconds:.1f} s")
    if heard.error:
        return failed("level", f"capture stopped after {heard.blocks} blocks: {heard.error}",
                      "replug the device; check `dmesg` for USB audio errors")
    if heard.silent == heard.blocks:
        return warned("level", f"digital silence: every sample is 0 ({text}); the daemon "
                      "warns 'microphone delivers digital silence'", MIXER_FIX)
    if heard.silent + heard.repeated == heard.blocks and heard.repeated:
        return warned("level", f"one repeated buffer: the same data again and again "
                      f"({text}): the driver is stuck",
                      "replug the device or reboot; check `dmesg` for audio errors")
    if clipped > CLIP_WARN_FRACTION * samples.size:
        return warned("level", f"clipping: {clipped} samples at full scale ({text})",
                      "lower the capture gain: `alsamixer -c <card>`, F4 (capture)")
    extra = ""
    if heard.silent:
        extra = f"; digital silence in {heard.silent} of {heard.blocks} blocks"
    return passed("level", f"{text}, no clipping{extra}")
