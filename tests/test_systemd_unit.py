"""systemd/edgevoice.service: systemd-analyze verify and security, and the shipped asound.conf.

Only offline tools run here (``systemd-analyze verify``, ``systemd-analyze security
--offline=yes``); nothing talks to a running service manager.
"""

from __future__ import annotations

import ctypes.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from unit_file import unit_directives

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "edgevoice.service"
ASOUND_CONF = REPO / "systemd" / "asound.conf"
MAX_EXPOSURE = 1.5

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (package systemd)"
)


def _analyze_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMD_")}
    env["SYSTEMD_PAGER"] = ""
    env["SYSTEMD_COLORS"] = "0"
    return env


@pytest.fixture
def stub_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart= points at an executable stub (same arguments)."""
    stub = tmp_path / "edgevoice-stub"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    replaced, count = re.subn(
        r"^ExecStart=/usr/bin/edgevoice\b", f"ExecStart={stub}", text, flags=re.MULTILINE
    )
    assert count == 1, "ExecStart=/usr/bin/edgevoice ... not found in the unit"
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    copy = unit_dir / "edgevoice.service"
    copy.write_text(replaced)
    return copy


@needs_analyze
def test_verify_prints_nothing(stub_unit: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(stub_unit)],
        capture_output=True,
        text=True,
        env=_analyze_env(),
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


@needs_analyze
def test_security_exposure(stub_unit: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(stub_unit)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=_analyze_env(),
        timeout=60,
        check=False,
    )
    match = re.search(
        r"Overall exposure level for edgevoice\.service:\s*(\d+(?:\.\d+)?)", proc.stdout
    )
    assert match, f"no exposure level in output:\n{proc.stdout}\n{proc.stderr}"
    exposure = float(match.group(1))
    failing = "\n".join(line for line in proc.stdout.splitlines() if line.startswith("✗"))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}; open items:\n{failing}"


def test_unit_has_the_required_policy() -> None:
    d = unit_directives(UNIT.read_text())
    expected = {
        ("Unit", "StartLimitIntervalSec"): "0",
        ("Service", "Type"): "notify",
        ("Service", "NotifyAccess"): "main",
        ("Service", "WatchdogSec"): "30s",
        ("Service", "Restart"): "on-failure",
        ("Service", "RestartSec"): "10s",
        ("Service", "TimeoutStopSec"): "15s",
        ("Service", "ExecStart"): "/usr/bin/edgevoice run --config /etc/edgevoice/config.yaml",
        ("Service", "ExecReload"): "/bin/kill -HUP $MAINPID",
        ("Service", "LoadCredential"): "openai-api-key:/etc/edgevoice/openai-api-key",
        ("Service", "DynamicUser"): "yes",
        ("Service", "Group"): "edgevoice",
        ("Service", "SupplementaryGroups"): "audio",
        ("Service", "RuntimeDirectory"): "edgevoice",
        ("Service", "RuntimeDirectoryMode"): "0750",
        ("Service", "DevicePolicy"): "closed",
        ("Service", "DeviceAllow"): "char-alsa rw",
        ("Service", "Environment"): "ALSA_CONFIG_PATH=/usr/share/edgevoice/asound.conf",
        ("Service", "RestrictAddressFamilies"): "AF_UNIX AF_INET AF_INET6",
        ("Service", "UMask"): "0077",
        ("Service", "CapabilityBoundingSet"): "",
        ("Service", "MemoryDenyWriteExecute"): "yes",
    }
    for key, value in expected.items():
        assert value in d.get(key, []), f"{key[0]}: {key[1]}={value} missing"
    assert d[("Service", "RestartPreventExitStatus")] == ["77 78"]
    assert d[("Service", "SystemCallFilter")] == ["@system-service", "~@privileged @resources"]
    # A blocked call must fail with EPERM (PortAudio may try to raise thread priority),
    # not kill the daemon with SIGSYS.
    assert d[("Service", "SystemCallErrorNumber")] == ["EPERM"]
    # The static group edgevoice (sysusers.d) may read the status file, others may not. Under
    # DynamicUser= systemd refuses a user whose name exists only as a group, so the user
    # (dynamic) must not be called edgevoice, which the unit name would imply.
    (user,) = d[("Service", "User")]
    assert user and user != "edgevoice"
    assert ("Service", "IPAddressDeny") not in d  # it has to reach the API
    assert ("Service", "PrivateDevices") not in d  # it would hide /dev/snd


_ALSA_PROBE = textwrap.dedent(
    """
    import ctypes, sys
    lib = ctypes.CDLL(sys.argv[1])
    lib.snd_config_update.restype = ctypes.c_int
    rc = lib.snd_config_update()
    if rc < 0:
        print("update failed", rc)
        sys.exit(1)
    top = ctypes.c_void_p.in_dll(lib, "snd_config")
    lib.snd_config_search.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                      ctypes.POINTER(ctypes.c_void_p)]
    lib.snd_config_get_ascii.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p)]
    for key in sys.argv[2:]:
        node = ctypes.c_void_p()
        if lib.snd_config_search(top, key.encode(), ctypes.byref(node)) < 0:
            print(key, "<missing>")
            continue
        text = ctypes.c_char_p()
        lib.snd_config_get_ascii(node, ctypes.byref(text))
        print(key, (text.value or b"").decode())
    """
)


def test_asound_conf_parses_and_includes_system_config() -> None:
    libasound = ctypes.util.find_library("asound")
    if libasound is None:
        pytest.skip("libasound (alsa-lib) is not installed")
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("/usr/share/alsa/alsa.conf (alsa-lib data) is not installed")
    keys = ["defaults.pcm.card", "pcm.default.type", "ctl.default.type", "pcm.hw.type"]
    env = dict(os.environ, ALSA_CONFIG_PATH=str(ASOUND_CONF))
    proc = subprocess.run(
        [sys.executable, "-c", _ALSA_PROBE, libasound, *keys],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ALSA lib" not in proc.stderr, proc.stderr  # alsa-lib reports parse errors there
    values = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert values == {
        "defaults.pcm.card": "0",
        "pcm.default.type": "plug",
        "ctl.default.type": "hw",
        "pcm.hw.type": "hw",  # defined by the included /usr/share/alsa/alsa.conf
    }
