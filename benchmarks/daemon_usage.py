"""Run `edgevoice` (as ``python -m edgevoice``) and record which modules' code ran after import.

Used by ``bench_daemon.py`` to list what `edgevoice run` imports but never uses (issue 12:
lazy imports). A profile hook (every thread the daemon starts, set before any of them) notes
the module of every Python function called, and of every C function (``c_call``), unless an
import is in progress on that thread (a ``<frozen importlib._bootstrap>`` frame on the
stack): what runs at import (decorators, dataclasses, ``re.compile`` of constants) does not
count as use. PortAudio's callback thread is created in C and is not profiled; what it calls
(``pyaudio_source``'s callback, numpy) is used elsewhere too. At exit the module names go to
the JSON file named by ``EDGEVOICE_USAGE_OUT``. Only the standard library is imported here
before the hook is on, so nothing the daemon imports is hidden. Slow: never time a run of it.

    EDGEVOICE_USAGE_OUT=used.json python benchmarks/daemon_usage.py run --config ...
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import threading
from types import FrameType
from typing import Any

_BOOTSTRAP = "<frozen importlib._bootstrap"


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith(_BOOTSTRAP):
            return True
        frame = frame.f_back
    return False


def main() -> None:
    out = os.environ["EDGEVOICE_USAGE_OUT"]
    seen: set[object] = set()
    used: set[str] = set()

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            if code in seen or _importing(frame):
                return
            seen.add(code)
            name = frame.f_globals.get("__name__")
            if isinstance(name, str):
                used.add(name)
        elif event == "c_call":
            module = getattr(arg, "__module__", None)
            if not isinstance(module, str):
                owner = getattr(arg, "__self__", None)
                module = type(owner).__module__ if owner is not None else None
            if isinstance(module, str) and module not in used and not _importing(frame):
                used.add(module)

    def dump() -> None:
        sys.setprofile(None)
        threading.setprofile(None)
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"used": sorted(used), "imported": sorted(sys.modules)}, f)

    atexit.register(dump)
    threading.setprofile(hook)
    sys.setprofile(hook)
    sys.argv = ["edgevoice", *sys.argv[1:]]
    runpy.run_module("edgevoice", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
