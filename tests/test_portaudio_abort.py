"""A PortAudio failure is never silent, not even when PortAudio aborts the process.

What happens (alsa-lib 1.2.8, PortAudio 19.6, PyAudio 0.2.14), found with a broken
ALSA_CONFIG_PATH and ``python -c "import pyaudio; pyaudio.PyAudio()"``:

* a syntax error in the ALSA configuration: ``Pa_Initialize`` fails with ``[Errno -9999]
  Unanticipated host error``; only alsa-lib's lines (``conf.c ... Unexpected char``) say why;
* ``ALSA_CONFIG_PATH`` naming a missing file: alsa-lib prints ``Cannot access file`` and
  PortAudio aborts the process (``BuildDeviceList: Assertion `devIdx < numDeviceNames'
  failed``, SIGABRT).

Before the fix both were silent in edgevoice: alsa-lib's messages went to a no-op handler,
fd 2 pointed at a temporary file while PortAudio started, and an abort took that file (with
the assertion text and faulthandler's traceback) with it: ``edgevoice devices`` and
``edgevoice run`` died with status 134 and printed nothing.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import FAST, running_daemon
from fakes import wait_until

from edgevoice.audio import alsa_quiet
from edgevoice.errors import AudioDeviceError

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_ALSA_CONF = Path("/usr/share/alsa/alsa.conf")
PARSE_ERROR = "ALSA lib conf.c:2007:(_snd_config_load_with_include) _toplevel_:3:14:Unexpected char"

needs_alsa = pytest.mark.skipif(
    not SYSTEM_ALSA_CONF.exists(), reason="alsa-lib's configuration is not installed"
)


@pytest.fixture(autouse=True)
def fresh_shown() -> Iterator[None]:
    """Lines shown by an earlier test are not 'shown recently' for this one."""
    alsa_quiet._state.shown.clear()
    yield
    alsa_quiet._state.shown.clear()


def broken_config(tmp_path: Path) -> Path:
    path = tmp_path / "asound.conf"
    path.write_text(f"<{SYSTEM_ALSA_CONF}>\npcm.broken {{\n    type plug ]] }}\n")
    return path


def run(args: list[str], alsa_config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
    full_env.update(PYTHONPATH=str(ROOT), ALSA_CONFIG_PATH=str(alsa_config), **env)
    # communicate() reads stderr to its end: it also waits for the helper that may still
    # be forwarding after the process died.
    return subprocess.run([sys.executable, *args], env=full_env, capture_output=True,
                          text=True, timeout=45, check=False)


# -- the real thing -------------------------------------------------------------------------


@needs_alsa
def test_devices_with_an_alsa_syntax_error_names_it(tmp_path: Path) -> None:
    proc = run(["-m", "edgevoice", "devices"], broken_config(tmp_path))
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    # One line naming both what failed and why.
    assert last.startswith("edgevoice: cannot initialise PortAudio: "), proc.stderr
    assert "Unexpected char" in last and str(tmp_path / "asound.conf") in last, last
    assert "Unknown PCM" not in proc.stderr  # the routine noise stays hidden


@needs_alsa
def test_devices_when_portaudio_aborts_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-asound.conf"
    proc = run(["-m", "edgevoice", "devices"], missing)
    assert proc.returncode != 0, proc.stderr
    assert f"Cannot access file {missing}" in proc.stderr, proc.stderr
    if proc.returncode == -signal.SIGABRT:  # PortAudio 19.6 asserts; a later one may not
        assert "Assertion" in proc.stderr
        assert "Fatal Python error: Aborted" in proc.stderr  # where: faulthandler's stack
        assert "edgevoice/audio/devices.py" in proc.stderr  # the stack names the caller


@needs_alsa
@pytest.mark.integration
def test_daemon_killed_by_a_portaudio_abort_leaves_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-asound.conf"
    config = {**FAST, "server": {**FAST["server"], "url": "ws://127.0.0.1:9/v1/realtime"}}
    with running_daemon(tmp_path, config, env={"ALSA_CONFIG_PATH": str(missing)}) as daemon:
        code = daemon.wait_exit(30)
        assert code is not None and code != 0
        # The helper may still be forwarding what the dead process wrote into the pipe.
        assert wait_until(lambda: "Cannot access file" in daemon.log(), 5), daemon.log()
        if code == -signal.SIGABRT:
            assert wait_until(lambda: re.search(r"(?s)Fatal Python error: Aborted.*"
                                                r"in acquire\n", daemon.log()) is not None, 5)
        log = daemon.log()
    assert f"Cannot access file {missing}" in log


@needs_alsa
@pytest.mark.integration
def test_daemon_logs_the_alsa_syntax_error(tmp_path: Path) -> None:
    config = {**FAST, "server": {**FAST["server"], "url": "ws://127.0.0.1:9/v1/realtime"}}
    env = {"ALSA_CONFIG_PATH": str(broken_config(tmp_path))}
    with running_daemon(tmp_path, config, env=env) as daemon:
        # The capture worker retries (a late microphone is normal); each attempt's log line
        # carries alsa-lib's reason, alsa-lib's own lines are shown once.
        assert daemon.wait_log(r"capture device unavailable \(attempt 2\): cannot initialise "
                               r"PortAudio: .*Unexpected char", 20), daemon.log()
        assert daemon.stop() == 0
        log = daemon.log()
    assert log.count("Unexpected char") >= 3
    assert log.count("(_snd_config_load_with_include)") >= 1


# -- quiet_stderr itself ---------------------------------------------------------------------

_ABORT_IN_SECTION = textwrap.dedent(
    """
    import os
    from edgevoice.audio.alsa_quiet import quiet_stderr
    with quiet_stderr():
        os.write(2, b"ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM cards.pcm.rear\\n")
        os.write(2, b"jack server is not running or cannot be started\\n")
        os.write(2, b"the reason it is about to die\\n")
        os.abort()
    """
)


def test_abort_inside_a_section_still_shows_the_reason() -> None:
    proc = run(["-c", _ABORT_IN_SECTION], SYSTEM_ALSA_CONF)
    assert proc.returncode == -signal.SIGABRT
    assert "the reason it is about to die" in proc.stderr
    assert "Fatal Python error: Aborted" in proc.stderr  # faulthandler, on for the section
    assert "Unknown PCM" not in proc.stderr and "jack" not in proc.stderr.lower()


def test_failure_in_a_section_carries_the_meaningful_lines(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(AudioDeviceError) as failed, alsa_quiet.quiet_stderr():
        os.write(2, b"ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM sysdefault\n")
        os.write(2, (PARSE_ERROR + "\n").encode())
        os.write(2, b"2026-01-01 00:00:00,000 WARNING  edgevoice.supervisor: other thread\n")
        raise AudioDeviceError("cannot initialise PortAudio: [Errno -9999] Unanticipated")
    message = str(failed.value)
    assert message == (f"cannot initialise PortAudio: [Errno -9999] Unanticipated "
                       f"(stderr: {PARSE_ERROR})")
    assert alsa_quiet.last_captured() == [PARSE_ERROR]
    err = capfd.readouterr().err
    assert PARSE_ERROR in err and "other thread" in err and "Unknown PCM" not in err

    # An OSError (what PyAudio() raises) keeps its type and errno.
    with pytest.raises(OSError) as os_failed, alsa_quiet.quiet_stderr():
        os.write(2, (PARSE_ERROR + "\n").encode())
        raise OSError(-9999, "Unanticipated host error")
    assert os_failed.value.errno == -9999
    assert str(os_failed.value) == (f"[Errno -9999] Unanticipated host error "
                                    f"(stderr: {PARSE_ERROR})")
    # Shown once only: the daemon retries the device every few seconds.
    assert PARSE_ERROR not in capfd.readouterr().err


def test_without_the_helper_the_file_capture_still_works(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_helper(*args: object) -> None:
        raise OSError("cannot start")

    monkeypatch.setattr(alsa_quiet, "_start_helper", no_helper)
    with pytest.raises(AudioDeviceError, match=r"Unexpected char"), alsa_quiet.quiet_stderr():
        os.write(2, b"ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM sysdefault\n")
        os.write(2, (PARSE_ERROR + "\n").encode())
        raise AudioDeviceError("cannot initialise PortAudio")
    assert capfd.readouterr().err == PARSE_ERROR + "\n"
    with alsa_quiet.quiet_stderr():
        os.write(2, b"a real problem\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "a real problem\nafter\n"


def test_noise_classification() -> None:
    noise = [
        b"ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM cards.pcm.rear",
        b"ALSA lib confmisc.c:855:(parse_card) cannot find card '0'",
        b"ALSA lib conf.c:5180:(_snd_config_evaluate) function snd_func_refer returned error",
        b"ALSA lib conf.c:5703:(snd_config_expand) Evaluate error: No such file or directory",
        b"Expression 'ret' failed in 'src/hostapi/alsa/pa_linux_alsa.c', line: 1736",
        b"Cannot connect to server socket err = No such file or directory",
    ]
    reasons = [
        PARSE_ERROR.encode(),
        b"ALSA lib conf.c:4615:(snd_config_update_r) /x.conf may be old or corrupted",
        b"ALSA lib conf.c:4555:(snd_config_update_r) Cannot access file /nonexistent.conf",
        b"ALSA lib conf.c:4096:(config_file_open) /root/.asoundrc may be old or corrupted",
        b"ALSA lib conf.c:4018:(snd_config_hooks_call) function snd_config_hook_load returned",
        b"python: src/hostapi/alsa/pa_linux_alsa.c:1454: BuildDeviceList: Assertion `x' failed.",
    ]
    assert all(alsa_quiet.is_noise(line) for line in noise)
    assert not any(alsa_quiet.is_noise(line) for line in reasons)


_PRIORITY = textwrap.dedent(
    """
    import os
    from edgevoice.audio.alsa_quiet import quiet_stderr
    with quiet_stderr():
        os.write(2, b"<3>edgevoice.x: a log record from another thread\\n")
        os.write(2, b"a reason from C\\n")
    """
)


def test_on_the_journal_stream_forwarded_lines_get_a_priority(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    with err.open("wb") as out:
        st = os.fstat(out.fileno())
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env.update(PYTHONPATH=str(ROOT), JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        proc = subprocess.run([sys.executable, "-c", _PRIORITY], env=env, stdout=out,
                              stderr=out, timeout=30, check=False)
    assert proc.returncode == 0
    assert err.read_text().splitlines() == [
        "<3>edgevoice.x: a log record from another thread",  # kept as it was
        "<4>a reason from C",  # journald would file it at info (6) otherwise
    ]
