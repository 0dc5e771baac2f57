"""`limit_malloc_arenas`: the daemon's threads share one glibc malloc arena (issue 12, memory).

Each case runs in a fresh interpreter, since the cap is process-wide and glibc fixes it the
first time a thread needs an arena: threads allocate at the same time, then glibc's own
``malloc_info`` says how many arenas the process has.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import running_daemon, wav_config
from signals import speech

from edgevoice.devserver import DevServer

try:
    os.confstr("CS_GNU_LIBC_VERSION")
    GLIBC = True
except (AttributeError, OSError, ValueError):  # pragma: no cover - not glibc
    GLIBC = False

pytestmark = pytest.mark.skipif(not GLIBC, reason="mallopt(M_ARENA_MAX) is glibc's")

CHILD = r"""
import ctypes, json, os, sys, tempfile, threading
from edgevoice.malloc_arenas import limit_malloc_arenas

capped = limit_malloc_arenas() if sys.argv[1] == "cap" else None
start = threading.Barrier(6)

def work():
    start.wait()
    for _ in range(2000):
        blocks = [bytearray(4000) for _ in range(20)]  # above pymalloc's 512 B: malloc
        del blocks

threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "info.xml")
    f = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, f)
    libc.fclose(f)
    with open(path) as info:
        arenas = info.read().count("<heap nr=")
print(json.dumps({"capped": capped, "arenas": arenas}))
"""


@pytest.fixture(autouse=True)
def _no_malloc_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A MALLOC_ARENA_MAX or glibc tunables of whoever runs the tests would win."""
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)


def _child(mode: str, **env: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env}, check=True)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_capped_process_keeps_one_arena_for_all_its_threads() -> None:
    assert _child("cap") == {"capped": True, "arenas": 1}


def test_without_the_cap_concurrent_threads_get_arenas_of_their_own() -> None:
    # The control: the same work does create arenas, so the case above can fail.
    result = _child("none")
    assert isinstance(result["arenas"], int) and result["arenas"] > 1


def test_malloc_arena_max_in_the_environment_wins() -> None:
    result = _child("cap", MALLOC_ARENA_MAX="3")
    assert result["capped"] is False
    assert isinstance(result["arenas"], int) and 1 < result["arenas"] <= 3


# A glibc thread arena reserves this much, aligned to it: 2 * DEFAULT_MMAP_THRESHOLD_MAX
# (64 MiB on 64-bit, 1 MiB on 32-bit, e.g. armhf on a Pi Zero 2 W).
HEAP_MAX = 64 << 20 if struct.calcsize("P") == 8 else 1 << 20


def thread_arenas(pid: int) -> int:
    """glibc thread arenas in /proc/PID/maps: an anonymous read-write mapping at a 64 MiB
    boundary whose reservation continues as an inaccessible mapping up to the next one."""
    rows = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        rows.append((start, end, fields[1], len(fields) > 5))
    after = [*rows[1:], (0, 0, "", True)]
    return sum(1 for (start, end, perms, named), nxt in zip(rows, after, strict=True)
               if not named and perms.startswith("rw") and start % HEAP_MAX == 0
               and (end == start + HEAP_MAX
                    or (nxt[0] == end and nxt[2].startswith("---")
                        and nxt[1] == start + HEAP_MAX)))


def _arenas_while_streaming(server: DevServer, tmp_path: Path, env: dict[str, str]) -> int:
    tmp_path.mkdir()
    config = wav_config(tmp_path, server.url, speech(20.0))
    before = server.stats()["appends"]
    with running_daemon(tmp_path, config, env=env) as daemon:
        assert server.wait_for(lambda s: s.stats()["appends"] >= before + 25, 20), \
            daemon.log()[-2000:]
        arenas = thread_arenas(daemon.proc.pid)
        assert daemon.stop() == 0
    return arenas


@pytest.mark.integration
def test_the_daemon_runs_on_one_arena(server: DevServer, tmp_path: Path) -> None:
    assert _arenas_while_streaming(server, tmp_path / "capped", {}) == 0
    # The control: the user's MALLOC_ARENA_MAX wins, and then its threads get arenas,
    # which the same check finds.
    assert _arenas_while_streaming(server, tmp_path / "user", {"MALLOC_ARENA_MAX": "8"}) > 0
