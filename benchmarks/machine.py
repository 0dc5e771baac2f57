"""The machine a benchmark ran on, as every benchmark's JSON and header name it."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np


def cpu_model() -> str:
    """x86 says "model name"; a Raspberry Pi's arm64 kernel may only say "Model"."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """CPU, cores, Python, numpy and the load average before the run (a busy machine
    explains a slow figure)."""
    load = ""
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "load_before": load}
