"""Keep the noise that PortAudio's back-ends print at start-up out of the terminal and journal.

``pyaudio.PyAudio()`` probes every ALSA PCM in the configuration and tries to reach a JACK
server. On a board without those (no card 0, no JACK) it prints dozens of lines such as
``ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM cards.pcm.rear`` and
``jack server is not running or cannot be started`` straight to file descriptor 2, where
they look like errors in ``journalctl`` although nothing is wrong.

Two layers:

1. ``install_alsa_error_handler()`` points ``snd_lib_error_set_handler`` (libasound.so.2) at
   a no-op ctypes callback, so alsa-lib stops printing at all, also later (stream open,
   recover). The callback object is kept alive at module level; an ``atexit`` hook restores
   the default handler so no Python callback can run during interpreter finalisation.
2. ``quiet_stderr()`` temporarily points fd 2 at an anonymous temporary file around the
   noisy C calls (``PyAudio()``, ``open()``), for the messages that do not go through
   alsa-lib (libjack, PortAudio's own ``Expression ... failed`` lines). When the section
   ends fd 2 is restored (also on exceptions) and every captured line that is *not* known
   noise is written to the real stderr, so output from other threads during the window is
   delayed, not lost. A temporary file (not a pipe) is used so a chatty C library can never
   block on a full pipe while we hold the GIL.

Thread safety: sections are serialised by a module lock (re-entrant; nested sections do not
redirect again), which also serialises PortAudio initialisation across threads. If the body
hangs in C, fd 2 stays redirected until it returns; that is the watchdog's case anyway.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO

log = logging.getLogger(__name__)

# Lines known to be start-up noise of alsa-lib, libjack and PortAudio's ALSA host API.
_NOISE = re.compile(
    rb"^(?:ALSA lib "
    rb"|Cannot connect to server"
    rb"|jack server is not running"
    rb"|JackShmReadWritePtr"
    rb"|Jack(?:Client|Socket|Posix|Shm)"
    rb"|connect\(2\) call to \S*jack"
    rb"|attempt to connect to server failed"
    rb"|Expression '.*' failed in '.*pa_linux_alsa\.c'"
    rb"|Expression '.*' failed in '.*pa_unix_util\.c'"
    rb")"
)


class _State:
    """Module state, guarded by ``lock`` (a class instead of ``global`` statements)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.depth = 0
        self.saved_fd = -1
        self.capture: IO[bytes] | None = None
        self.suppressed = 0
        self.handler_installed = False
        self.alsa_errors_swallowed = 0


_state = _State()

_HANDLER_TYPE = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
)


def _swallow_alsa_error(
    _file: bytes | None, _line: int, _function: bytes | None, _err: int, _fmt: bytes | None
) -> None:
    # The real prototype is variadic; ignoring the trailing arguments is safe with the
    # Linux calling conventions of amd64, arm64 and armhf (the caller cleans up).
    _state.alsa_errors_swallowed += 1


_handler = _HANDLER_TYPE(_swallow_alsa_error)  # must stay referenced while installed


def _load_libasound() -> ctypes.CDLL | None:
    for name in ("libasound.so.2", ctypes.util.find_library("asound")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def install_alsa_error_handler() -> bool:
    """Route alsa-lib error messages to a no-op. Idempotent; False if libasound is absent."""
    with _state.lock:
        if _state.handler_installed:
            return True
        lib = _load_libasound()
        if lib is None:
            return False
        try:
            setter = lib.snd_lib_error_set_handler
        except AttributeError:
            return False
        setter.argtypes = [_HANDLER_TYPE]
        setter.restype = ctypes.c_int
        setter(_handler)
        _state.handler_installed = True

        def _restore() -> None:
            # Back to alsa-lib's default before finalisation: no Python callbacks after that.
            setter(_HANDLER_TYPE())  # a NULL function pointer

        atexit.register(_restore)
        return True


def is_noise(line: bytes) -> bool:
    """True for a line that is known ALSA/JACK/PortAudio start-up noise."""
    return _NOISE.match(line.lstrip()) is not None


def suppressed_count() -> int:
    """Lines dropped so far by quiet_stderr() plus alsa-lib errors swallowed by the handler."""
    return _state.suppressed + _state.alsa_errors_swallowed


def _flush_python_stderr() -> None:
    with suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()


def _begin() -> None:
    _flush_python_stderr()
    try:
        saved = os.dup(2)
    except OSError:
        return  # no fd 2 at all: nothing to protect
    capture = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _end()
    try:
        os.dup2(capture.fileno(), 2)
    except OSError:
        os.close(saved)
        capture.close()
        return
    _state.saved_fd, _state.capture = saved, capture


def _end() -> None:
    saved, capture = _state.saved_fd, _state.capture
    _state.saved_fd, _state.capture = -1, None
    if capture is None:
        return
    _flush_python_stderr()
    try:
        os.dup2(saved, 2)
    finally:
        os.close(saved)
    try:
        capture.seek(0)
        data = capture.read()
    finally:
        capture.close()
    kept: list[bytes] = []
    dropped = 0
    for line in data.splitlines(keepends=True):
        if is_noise(line):
            dropped += 1
        else:
            kept.append(line)
    _state.suppressed += dropped
    out = b"".join(kept)
    while out:
        try:
            n = os.write(2, out)
        except OSError:
            break
        out = out[n:]
    if dropped:
        log.debug("suppressed %d lines of ALSA/JACK start-up noise", dropped)


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hide ALSA/JACK/PortAudio noise printed to fd 2 inside the block; keep other output."""
    install_alsa_error_handler()
    with _state.lock:
        if _state.depth == 0:
            _begin()
        _state.depth += 1
        try:
            yield
        finally:
            _state.depth -= 1
            if _state.depth == 0:
                _end()
