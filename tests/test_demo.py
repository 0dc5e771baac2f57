"""`make demo` as a user runs it: sample -> ALSA PCM -> daemon -> devserver, then a summary."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_streams_two_turns_and_leaves_nothing_behind() -> None:
    result = subprocess.run([sys.executable, "-m", "edgevoice.demo"], capture_output=True,
                            text=True, timeout=120, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert re.search(r"speech turns\s+2\b", out), out
    assert re.search(r"responses received\s+2\b", out), out
    assert re.search(r"server errors\s+0\b", out), out
    assert "Traceback" not in out
    assert "ALSA lib" not in out  # PortAudio's start-up noise is kept out
    leftover = subprocess.run(["pgrep", "-f", "edgevoice (run|devserver).*edgevoice-demo|"
                               "edgevoice devserver --port 0 --quiet --api-key demo"],
                              capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == "", leftover.stdout
