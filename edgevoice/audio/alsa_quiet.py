"""Keep the noise that PortAudio's back-ends print at start-up out of the terminal and journal,
and never hide the reason PortAudio failed (or aborted the process).

``pyaudio.PyAudio()`` probes every ALSA PCM in the configuration and tries to reach a JACK
server. On a board without those (no card 0, no JACK) it prints dozens of lines such as
``ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM cards.pcm.rear`` and
``jack server is not running or cannot be started`` straight to file descriptor 2, where
they look like errors in ``journalctl`` although nothing is wrong.

But the same channel carries the real reasons when PortAudio cannot start (alsa-lib 1.2.8,
PortAudio 19.6, PyAudio 0.2.14):

* an ALSA configuration with a syntax error makes ``Pa_Initialize`` fail with the useless
  ``[Errno -9999] Unanticipated host error``; only alsa-lib's lines say why, e.g.
  ``ALSA lib conf.c:2007:(_snd_config_load_with_include) _toplevel_:1:25:Unexpected char``
  and ``... /etc/x.conf may be old or corrupted: consider to remove or fix it``;
* ``ALSA_CONFIG_PATH`` naming a file that does not exist makes PortAudio *abort the process*
  (``pa_linux_alsa.c:1454: BuildDeviceList: Assertion `devIdx < numDeviceNames' failed``,
  SIGABRT) right after alsa-lib's ``Cannot access file /x.conf``.

Hence:

1. ``install_alsa_error_handler()`` points ``snd_lib_error_set_handler`` (libasound.so.2) at
   a no-op ctypes callback, so alsa-lib stays silent *outside* the quiet sections (a stream's
   recover messages...). Inside a section alsa-lib's own handler is back, so its messages are
   formatted and captured like everything else. The callback object is kept alive at module
   level; an ``atexit`` hook restores the default handler so no Python callback can run
   during interpreter finalisation.
2. ``quiet_stderr()`` points fd 2 at a pipe around the noisy C calls (``PyAudio()``,
   ``open()``). A small helper process (the same Python, ``-I -S``, no edgevoice import)
   reads it and, as each line arrives, forwards every line that is *not* known noise
   (``is_noise``) to the real stderr, and copies every line to a temporary file that this
   process reads when the section ends. Because the helper is another process, nothing
   is lost when PortAudio aborts: the kernel keeps what was written in the pipe, the helper
   drains it after our death and the assertion text, alsa-lib's reason and faulthandler's
   traceback (enabled for the section when it was not already) reach the terminal or the
   journal. The helper ignores SIGINT/SIGTERM/SIGHUP (it ends at end-of-file), so the
   service manager's stop signal cannot cut it short, and it is a separate process, so a
   C library printing while we hold the GIL can never block on a full pipe for long.
   If the helper cannot be started, fd 2 goes to the temporary file instead and the kept
   lines are written to the real stderr when the section ends (nothing survives an abort
   then).
3. When an exception leaves the outermost section, the meaningful captured lines (not the
   noise) are added to its message: ``cannot initialise PortAudio: [Errno -9999]
   Unanticipated host error (stderr: ALSA lib conf.c:...Unexpected char; ...)``. So the
   reason reaches the log, the status file and STATUS=, not only stderr.

alsa-lib's configuration complaints shown on stderr in the last ``SHOWN_AGAIN_AFTER_S`` are
not shown again (a daemon that retries the device every few seconds would repeat them); they
still go into the messages.

Thread safety: sections are serialised by a module lock (re-entrant; nested sections do not
redirect again), which also serialises PortAudio initialisation across threads. If the body
hangs in C, fd 2 stays redirected until it returns; that is the watchdog's case anyway.
"""

from __future__ import annotations

import atexit
import ctypes
import faulthandler
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import IO

log = logging.getLogger(__name__)

# Lines known to be start-up noise of alsa-lib, libjack and PortAudio's ALSA host API.
_NOISE_PATTERN = (
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
# ... except alsa-lib's complaints about its configuration files: a syntax error, a file that
# cannot be read, a hook that failed. (conf.c's _snd_config_evaluate/snd_config_expand lines
# are the routine "no card 0" noise of evaluating the standard PCMs.)
_KEEP_PATTERN = rb"^ALSA lib conf\.c:\d+:\((?!_snd_config_evaluate\)|snd_config_expand\))"
_NOISE = re.compile(_NOISE_PATTERN)
_KEEP = re.compile(_KEEP_PATTERN)
# Our own log records, written to stderr by other threads during a section: shown, but they
# are not a reason for the section's failure.
_OWN_LOG = re.compile(
    rb"^(?:<\d>)?(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ +)?"
    rb"(?:edgevoice|websocket|root)[\w.]*: "
)

SHOWN_AGAIN_AFTER_S = 600.0
HELPER_EXIT_TIMEOUT_S = 2.0
MESSAGE_MAX_CHARS = 600  # of captured text added to an exception's message

# The helper process: stdin = the pipe that is fd 2 of the section, stdout = the capture
# file, stderr = the real stderr. argv: noise pattern, keep pattern, line prefix, then lines
# not to show again. Self-contained (runs with -I -S, edgevoice may not be importable).
_HELPER = r"""
import os, re, signal, sys
for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGPIPE"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)
noise = re.compile(os.fsencode(sys.argv[1]))
keep = re.compile(os.fsencode(sys.argv[2]))
prefix = os.fsencode(sys.argv[3])
quiet = {os.fsencode(a) for a in sys.argv[4:]}
def write(fd, data):
    while data:
        try:
            n = os.write(fd, data)
        except InterruptedError:
            continue
        except OSError:
            return
        data = data[n:]
def handle(line):
    write(1, line)
    text = line.lstrip()
    if noise.match(text) and not keep.match(text):
        return
    if line.rstrip(b"\r\n") in quiet:
        return
    has_priority = line[:1] == b"<" and line[2:3] == b">" and line[1:2].isdigit()
    write(2, line if has_priority or not prefix else prefix + line)
rest = b""
while True:
    try:
        chunk = os.read(0, 65536)
    except InterruptedError:
        continue
    except OSError:
        break
    if not chunk:
        break
    lines = (rest + chunk).split(b"\n")
    rest = lines.pop()
    for line in lines:
        handle(line + b"\n")
if rest:
    handle(rest + b"\n")
"""


class _State:
    """Module state, guarded by ``lock`` (a class instead of ``global`` statements)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.depth = 0
        self.saved_fd = -1
        self.capture: IO[bytes] | None = None
        self.helper: subprocess.Popen[bytes] | None = None
        self.faulthandler_enabled_here = False
        self.suppressed = 0
        self.handler_installed = False
        self.set_handler: Callable[[object], object] | None = None
        self.alsa_errors_swallowed = 0
        self.shown: dict[bytes, float] = {}  # line -> time.monotonic() it was last shown
        self.last_kept: list[str] = []


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
    """libasound by its soname; only if that fails, by ctypes.util's search, which runs
    ldconfig (6 ms) and imports shutil and subprocess's company (0.56 MB resident)."""
    try:
        return ctypes.CDLL("libasound.so.2")
    except OSError:
        pass
    from ctypes.util import find_library  # the fallback only

    name = find_library("asound")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _scratch_file() -> IO[bytes]:
    """Where the section's stderr is kept until it ends: a memory file (what
    tempfile.TemporaryFile gives on a tmpfs) without importing tempfile, which brings
    shutil, bz2 and lzma (0.56 MB resident for the daemon's whole life)."""
    try:
        fd = os.memfd_create("edgevoice-stderr", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux, or a kernel before 3.17
        import tempfile  # the fallback only

        return tempfile.TemporaryFile()
    return open(fd, "w+b")


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
        # Inside a quiet section the handler is alsa-lib's default (printing to fd 2).
        setter(_HANDLER_TYPE() if _state.depth else _handler)
        _state.set_handler = setter
        _state.handler_installed = True

        def _restore() -> None:
            # Back to alsa-lib's default before finalisation: no Python callbacks after that.
            _state.set_handler = None
            setter(_HANDLER_TYPE())  # a NULL function pointer

        atexit.register(_restore)
        return True


def _alsa_prints(prints: bool) -> None:
    """alsa-lib's own handler (it formats and prints to fd 2), or our no-op one."""
    setter = _state.set_handler
    if setter is not None:
        setter(_HANDLER_TYPE() if prints else _handler)


def is_noise(line: bytes) -> bool:
    """True for a line that is known ALSA/JACK/PortAudio start-up noise."""
    text = line.lstrip()
    return _NOISE.match(text) is not None and _KEEP.match(text) is None


def suppressed_count() -> int:
    """Lines dropped so far by quiet_stderr() plus alsa-lib errors swallowed by the handler."""
    return _state.suppressed + _state.alsa_errors_swallowed


def last_captured() -> list[str]:
    """The meaningful (not noise) lines captured by the last finished quiet section."""
    with _state.lock:
        return list(_state.last_kept)


def _flush_python_stderr() -> None:
    with suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()


def _line_prefix(fd: int) -> bytes:
    """``<4>`` when ``fd`` is journald's stream (it parses the priority), else nothing."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    try:
        st = os.fstat(fd)
        if sep and (st.st_dev, st.st_ino) == (int(dev), int(ino)):
            return b"<4>"
    except (OSError, ValueError):
        pass
    return b""


def _recently_shown(now: float) -> list[bytes]:
    """alsa-lib configuration complaints shown less than SHOWN_AGAIN_AFTER_S ago."""
    shown = _state.shown
    for line in [k for k, at in shown.items() if now - at >= SHOWN_AGAIN_AFTER_S]:
        del shown[line]
    return [line for line in shown if b"\0" not in line][-50:]


def _start_helper(saved: int, capture: IO[bytes], read_end: int) -> subprocess.Popen[bytes]:
    if not sys.executable:
        raise OSError("no Python interpreter to run the stderr helper")
    now = time.monotonic()
    args: list[bytes | str] = [
        sys.executable, "-I", "-S", "-c", _HELPER, os.fsdecode(_NOISE_PATTERN),
        os.fsdecode(_KEEP_PATTERN), os.fsdecode(_line_prefix(saved)),
        *(os.fsdecode(line) for line in _recently_shown(now)),
    ]
    # An empty environment: the helper needs none, and must not hold a copy of an API key
    # that came in through one.
    return subprocess.Popen(
        args, stdin=read_end, stdout=capture.fileno(), stderr=saved, close_fds=True, env={}
    )


def _begin() -> None:
    _flush_python_stderr()
    try:
        saved = os.dup(2)
    except OSError:
        return  # no fd 2 at all: nothing to protect
    capture = _scratch_file()  # closed in _end()
    helper: subprocess.Popen[bytes] | None = None
    target = capture.fileno()
    read_end = write_end = -1
    try:
        read_end, write_end = os.pipe()
        helper = _start_helper(saved, capture, read_end)
        target = write_end
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.debug("stderr helper unavailable (%s); capturing to a file", exc)
        helper = None
    finally:
        if read_end >= 0:
            os.close(read_end)
    try:
        os.dup2(target, 2)
    except OSError:
        os.close(saved)
        capture.close()
        if write_end >= 0:
            os.close(write_end)
        if helper is not None:
            helper.wait()
        return
    if write_end >= 0:
        os.close(write_end)  # fd 2 is now the pipe's only write end
    _state.saved_fd, _state.capture, _state.helper = saved, capture, helper
    if not faulthandler.is_enabled():
        # An abort inside the section must at least tell where it happened.
        with suppress(OSError, ValueError, RuntimeError):
            faulthandler.enable(file=2)
            _state.faulthandler_enabled_here = True
    _alsa_prints(True)


def _end() -> list[str]:
    """Restore fd 2; return the meaningful captured lines."""
    saved, capture, helper = _state.saved_fd, _state.capture, _state.helper
    _state.saved_fd, _state.capture, _state.helper = -1, None, None
    if capture is None:
        return []
    _alsa_prints(False)
    _flush_python_stderr()
    if _state.faulthandler_enabled_here:
        _state.faulthandler_enabled_here = False
        faulthandler.disable()
    try:
        os.dup2(saved, 2)  # closes the pipe's write end: the helper sees end-of-file
    finally:
        os.close(saved)
    if helper is not None:
        try:
            helper.wait(HELPER_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # Someone else holds the pipe (a child started during the section).
            log.debug("stderr helper did not finish in %.1f s; stopping it",
                      HELPER_EXIT_TIMEOUT_S)
            helper.kill()
            helper.wait()
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
        elif line.strip():
            kept.append(line)
    _state.suppressed += dropped
    now = time.monotonic()
    if helper is None:  # (the helper has shown them already)
        out = b"".join(line for line in kept if line.rstrip(b"\r\n") not in _state.shown)
        while out:
            try:
                n = os.write(2, out)
            except OSError:
                break
            out = out[n:]
    for line in kept:
        if _KEEP.match(line.lstrip()):
            _state.shown.setdefault(line.rstrip(b"\r\n"), now)
    if dropped:
        log.debug("suppressed %d lines of ALSA/JACK start-up noise", dropped)
    return [line.decode("utf-8", "replace").strip() for line in kept
            if not _OWN_LOG.match(line.lstrip())]


def _explain(exc: BaseException, lines: list[str]) -> None:
    """Add the captured reason to the message of ``exc`` (in place: it is being raised)."""
    text = "; ".join(lines)
    if len(text) > MESSAGE_MAX_CHARS:
        text = text[: MESSAGE_MAX_CHARS - 3] + "..."
    note = f"stderr: {text}"
    if isinstance(exc, OSError) and isinstance(exc.strerror, str):
        exc.strerror = f"{exc.strerror} ({note})"  # str(exc): "[Errno n] text (stderr: ...)"
    elif exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]} ({note})", *exc.args[1:])
    else:
        exc.add_note(note)


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hide ALSA/JACK/PortAudio noise printed to fd 2 inside the block; keep other output.

    Other output is shown on the real stderr as it arrives (it survives an abort), and an
    exception leaving the block carries it in its message.
    """
    install_alsa_error_handler()
    with _state.lock:
        if _state.depth == 0:
            _begin()
        _state.depth += 1
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            _state.depth -= 1
            if _state.depth == 0:
                kept = _end()
                _state.last_kept = kept
                if error is not None and kept and not isinstance(error, KeyboardInterrupt):
                    _explain(error, kept)
