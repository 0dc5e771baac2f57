"""One glibc malloc arena for the daemon's threads (issue 12: resident memory <= 45 MB).

glibc gives each new thread an arena of its own at its first malloc (up to 8 per core),
whether or not threads contend, and memory freed in one arena is never reused by another.
The daemon's threads (capture, uplink, session reader, PortAudio's callback) allocate
their blocks, JSON and chunks while holding the GIL, so one arena costs them no waiting;
separate arenas only add each one's free space and fragmentation: measured with the real
daemon streaming (`benchmarks/bench_daemon.py --only memory`), about 0.6 to 1 MB more
resident memory after 10 minutes, and a slower climb to it. What allocates without the
GIL (OpenSSL's record buffers in SSL_read/SSL_write on a wss:// connection, PortAudio and
ALSA) now shares the arena's lock too: short sections, but the bench's ws:// never
measures them.

Set once, before the first thread starts (glibc fixes the limit the first time a thread
needs an arena). MALLOC_ARENA_MAX (or glibc.malloc.arena_max in GLIBC_TUNABLES) in the
environment is the user's choice and wins; anything but glibc is left alone.
"""

from __future__ import annotations

import ctypes
import os

M_ARENA_MAX = -8  # glibc <malloc.h>


def limit_malloc_arenas(arenas: int = 1) -> bool:
    """Cap glibc's malloc arenas at `arenas`; True when the cap was set."""
    if os.environ.get("MALLOC_ARENA_MAX") or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        os.confstr("CS_GNU_LIBC_VERSION")  # raises where the C library is not glibc
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
