"""`edgevoice devices`: inputs and outputs, their rates and the name to put in the config.

The integration tests run ``python -m edgevoice devices`` against ALSA ``type file`` PCMs: the
fake microphone of ``alsa_fixtures`` (input) and a fake speaker (a ``type file`` PCM with
``slave.pcm null`` writing a WAV file, see the shared design notes), with ALSA_CONFIG_PATH
pointing at them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from alsa_fixtures import fake_microphone, write_alsa_config

from edgevoice.audio.devices import (
    PROBE_RATES,
    DeviceEntry,
    Survey,
    config_value,
    format_survey,
    survey_portaudio,
    yaml_scalar,
)
from edgevoice.commands.devices import use_service_alsa_config

REPO = Path(__file__).resolve().parent.parent
ALL_RATES = " ".join(str(r) for r in PROBE_RATES)


def speaker_config(path: Path, name: str = "edgevoice_speaker", rate: int = 24000) -> str:
    """A playback PCM: plug over a ``type file`` PCM (slave null) that writes a WAV file."""
    return f"""
pcm.{name} {{
    type plug
    slave {{
        pcm {{
            type file
            slave.pcm null
            file "{path}"
            format "wav"
        }}
        rate {rate}
        channels 2
        format S16_LE
    }}
    hint.description "edgevoice file speaker"
}}
"""


def devices_cli(env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgevoice", "devices"], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=timeout, check=False)


def section(output: str, title: str) -> list[str]:
    """The lines of one table (``Inputs`` or ``Outputs``) of the output."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{title} ("))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].strip())
    return lines[start + 1:end]


def row(lines: list[str], name: str) -> list[str]:
    """The columns of the device ``name``: [mark?] index name ch default rates... config."""
    for line in lines:
        if re.search(rf"\s{re.escape(name)}\s", line):
            return line.split()
    raise AssertionError(f"{name} not in {lines}")


@pytest.mark.integration
def test_devices_lists_inputs_and_outputs_with_rates_and_config_names(tmp_path: Path) -> None:
    extra = speaker_config(tmp_path / "speaker.wav")
    with fake_microphone(tmp_path, rate=48000, channels=1, signal=np.zeros(4800, np.int16),
                         fifo=False, set_environ=False, extra_config=extra) as mic:
        result = devices_cli(mic.env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Traceback" not in result.stderr
    assert out.splitlines()[0] == f"ALSA configuration: {mic.config_path} (from ALSA_CONFIG_PATH)"
    inputs, outputs = section(out, "Inputs"), section(out, "Outputs")
    assert "audio.device" in inputs[0] and "playback.device" in outputs[0]
    mic_row = row(inputs, "edgevoice_test")
    # index, name, channels (plug: 128), default rate (the declared one), rates, config name
    assert mic_row[-9:] == ["edgevoice_test", "128", "48000", *ALL_RATES.split(),
                            "edgevoice_test"]
    speaker = row(outputs, "edgevoice_speaker")
    assert speaker[-9:] == ["edgevoice_speaker", "128", "24000", *ALL_RATES.split(),
                            "edgevoice_speaker"]
    # What is printed in the last column selects that device in a config file.
    for lines, key in ((inputs, "audio"), (outputs, "playback")):
        for line in lines[1:]:
            value = yaml.safe_load(f"{key}: {{device: {line.split()[-1]}}}")[key]["device"]
            assert str(value) in line


@pytest.mark.integration
def test_devices_does_not_hang_on_a_fifo_pcm_nobody_writes(tmp_path: Path) -> None:
    fifo = tmp_path / "mic.fifo"
    os.mkfifo(fifo)
    config = write_alsa_config(tmp_path / "asoundrc", infile=fifo, rate=16000, channels=1,
                               pcm_name="edgevoice_stuck")
    started = time.monotonic()
    result = devices_cli({"ALSA_CONFIG_PATH": str(config)}, timeout=40)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert "blocked for 5 s while PortAudio listed the devices" in result.stdout
    assert "edgevoice_stuck" not in "\n".join(section(result.stdout, "Inputs"))


def test_service_alsa_config_is_used_when_nothing_is_set(tmp_path: Path) -> None:
    service = tmp_path / "asound.conf"
    environ: dict[str, str] = {}
    assert "the system's" in use_service_alsa_config(environ, service)
    assert environ == {}
    service.write_text("")
    line = use_service_alsa_config(environ, service)
    assert environ == {"ALSA_CONFIG_PATH": str(service)}
    assert line == f"ALSA configuration: {service} (the service's; ALSA_CONFIG_PATH was not set)"
    environ = {"ALSA_CONFIG_PATH": "/x.conf"}
    assert use_service_alsa_config(environ, service).endswith("/x.conf (from ALSA_CONFIG_PATH)")
    assert environ == {"ALSA_CONFIG_PATH": "/x.conf"}


def entries(*specs: tuple[int, str, bool]) -> list[DeviceEntry]:
    return [DeviceEntry("input", i, name, 2, 48000.0, default) for i, name, default in specs]


def test_config_name_is_short_unique_or_the_index() -> None:
    devs = entries((0, "USB PnP Sound Device: Audio (hw:1,0)", False),
                   (1, "USB PnP Sound Device: Audio (hw:2,0)", False),
                   (2, "Blue Yeti: USB Audio (hw:3,0)", False),
                   (3, "usb", False),
                   (4, "default", True),
                   (5, "Mic one", False), (6, "mic ONE", False))
    values = [config_value(devs, d) for d in devs]
    assert values == ["USB PnP Sound Device: Audio (hw:1,0)",
                      "USB PnP Sound Device: Audio (hw:2,0)",
                      "Blue Yeti", "usb", "default", 5, 6]
    alone = entries((1, "USB PnP Sound Device: Audio (hw:1,0)", False), (2, "pulse", True))
    assert config_value(alone, alone[0]) == "USB PnP Sound Device"
    # a device whose name is a number or "default" without being the default: the index
    odd = entries((0, "default", False), (1, "7", False), (2, "sysdefault", True))
    assert [config_value(odd, d) for d in odd] == [0, 1, "sysdefault"]


def test_yaml_scalar_quotes_only_when_needed() -> None:
    for value in ("USB PnP Sound Device", "a: b", "USB Audio: - (hw:1,0)", "#1", "yes", "007"):
        text = yaml_scalar(value)
        assert yaml.safe_load(f"device: {text}") == {"device": value}
    assert yaml_scalar("USB PnP Sound Device") == "USB PnP Sound Device"
    assert yaml_scalar(3) == "3"


class FakePortAudio:
    """Two devices: a USB microphone (hw, 44100/48000 only) and 'default' (in and out)."""

    devices = [
        {"name": "USB PnP Sound Device: Audio (hw:1,0)", "maxInputChannels": 1,
         "maxOutputChannels": 0, "defaultSampleRate": 48000.0, "hostApi": 0},
        {"name": "default", "maxInputChannels": 128, "maxOutputChannels": 128,
         "defaultSampleRate": 44100.0, "hostApi": 0},
    ]

    def __init__(self) -> None:
        self.asked: list[tuple[float, dict[str, Any]]] = []

    def get_device_count(self) -> int:
        return len(self.devices)

    def get_device_info_by_index(self, device_index: int) -> Mapping[str, Any]:
        return {"index": device_index, **self.devices[device_index]}

    def get_default_input_device_info(self) -> Mapping[str, Any]:
        return {"index": 1}

    def get_default_output_device_info(self) -> Mapping[str, Any]:
        raise OSError("No Default Output Device Available")

    def get_host_api_info_by_index(self, host_api_index: int) -> Mapping[str, Any]:
        return {"name": "ALSA"}

    def is_format_supported(self, rate: float, **kwargs: Any) -> bool:
        self.asked.append((rate, kwargs))
        if kwargs.get("input_device") == 0 and rate not in (44100, 48000):
            raise ValueError("Invalid sample rate")
        return True


def test_a_device_held_by_another_program_is_shown_busy() -> None:
    class HeldMicrophone(FakePortAudio):
        def is_format_supported(self, rate: float, **kwargs: Any) -> bool:
            if kwargs.get("input_device") == 0:
                raise ValueError(("Device unavailable", -9985))  # as PyAudio raises it
            return super().is_format_supported(rate, **kwargs)

    result = survey_portaudio(HeldMicrophone())
    held, default = result.inputs
    assert held.busy and held.rates == () and not default.busy
    assert "(busy: in use)" in format_survey(result).splitlines()[2]


def test_survey_probes_each_direction_with_16_bit_and_at_most_two_channels() -> None:
    pa = FakePortAudio()
    result = survey_portaudio(pa)
    assert [(e.index, e.rates, e.config_value, e.is_default) for e in result.inputs] == [
        (0, (44100, 48000), "USB PnP Sound Device", False),
        (1, PROBE_RATES, "default", True),
    ]
    assert [(e.index, e.channels, e.is_default) for e in result.outputs] == [(1, 128, False)]
    assert result.notes == []
    for rate, kwargs in pa.asked:
        assert rate in PROBE_RATES
        (direction,) = {key.split("_")[0] for key in kwargs}
        assert kwargs[f"{direction}_format"] == 8  # paInt16
        assert kwargs[f"{direction}_channels"] in (1, 2)
    assert len(pa.asked) == 3 * len(PROBE_RATES)


PI = Survey(
    inputs=[
        DeviceEntry("input", 1, "USB PnP Sound Device: Audio (hw:1,0)", 1, 48000.0, False,
                    "ALSA", (44100, 48000)),
        DeviceEntry("input", 5, "default", 128, 44100.0, True, "ALSA", PROBE_RATES),
    ],
    outputs=[
        DeviceEntry("output", 0, "bcm2835 Headphones: - (hw:0,0)", 8, 44100.0, False, "ALSA",
                    PROBE_RATES),
        DeviceEntry("output", 5, "default", 128, 44100.0, True, "ALSA", PROBE_RATES),
    ],
)


def test_readme_example_is_what_the_command_prints() -> None:
    named = Survey(
        [dataclasses.replace(e, config_value=config_value(PI.inputs, e)) for e in PI.inputs],
        [dataclasses.replace(e, config_value=config_value(PI.outputs, e)) for e in PI.outputs],
    )
    printed = ("ALSA configuration: /usr/share/edgevoice/asound.conf (the service's; "
               "ALSA_CONFIG_PATH was not set)\n\n" + format_survey(named))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("```console\n$ edgevoice devices\n", 1)[1].split("```", 1)[0]
    assert block.rstrip("\n") == printed


def test_bounded_blocking_gives_back_an_alarm_that_was_set() -> None:
    from edgevoice.audio.devices import bounded_blocking

    signal.setitimer(signal.ITIMER_REAL, 100.0)
    previous = signal.getsignal(signal.SIGALRM)
    try:
        with bounded_blocking(0.05) as fired:
            time.sleep(0.2)  # interrupted and resumed by Python (PEP 475)
        assert fired
        assert signal.getsignal(signal.SIGALRM) is previous
        assert 99.0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 100.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
