"""journald integration: structured fields, PRIORITY, and no secret in any journal field.

When no journald listens on /run/systemd/journal/socket and the tests run as root, the
module fixture starts ``/lib/systemd/systemd-journald`` directly. Outside systemd it needs no
socket activation and no notify socket: it creates /run/systemd/journal/{socket,stdout,
dev-log,io.systemd.journal} itself and, with the default Storage=auto and no flush request,
writes a runtime journal under /run/log/journal/<machine-id>/ (it needs /etc/machine-id).
The fixture stops it with SIGTERM afterwards (SIGKILL if it hangs) and removes the runtime
directories it created, also when a test fails.

The secret reaches the child processes only through their environment: journald records the
command line of every logging process (_CMDLINE), so an argument would leak by itself.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import KEY, running_daemon, wav_config
from fakes import wait_until
from signals import speech

from edgevoice.devserver import DevServer

pytestmark = [pytest.mark.integration, pytest.mark.root]

REPO = Path(__file__).resolve().parent.parent
JOURNALD = "/lib/systemd/systemd-journald"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
JOURNAL_STDOUT = "/run/systemd/journal/stdout"
RUNTIME_JOURNAL = "/run/log/journal"
# Directories journald creates when it starts on a system without systemd (innermost
# first); the fixture removes those that did not exist before.
CREATED_BY_JOURNALD = ("/run/systemd/journal", RUNTIME_JOURNAL, "/run/log")
LOCK_PATH = "/run/lock/edgevoice-test-journald.lock"
START_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Journal:
    directory: str | None  # for journalctl --directory; None: the default system journal
    started: bool


def _journald_listening() -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(JOURNAL_SOCKET)
        except OSError:
            return False
    return True


def _can_read_system_journal() -> bool:
    if os.geteuid() == 0:
        return True
    names = set()
    for gid in os.getgroups():
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return bool(names & {"systemd-journal", "adm", "wheel"})


@pytest.fixture(scope="module")
def journal() -> Iterator[Journal]:
    if shutil.which("journalctl") is None:
        pytest.skip("journalctl is not installed")
    os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
    with open(LOCK_PATH, "a") as lock:
        # Serialise concurrent runs of this module: one starts journald, nobody else may
        # start a second one or stop it underneath.
        if not wait_until(lambda: _try_lock(lock.fileno()), 60.0):
            pytest.skip(f"{LOCK_PATH} is held by another test run for over 60 s")
        if _journald_listening():
            if not _can_read_system_journal():
                pytest.skip("journald runs, but this user may not read the system journal")
            yield Journal(directory=None, started=False)
            return
        if os.geteuid() != 0:
            pytest.skip(
                "systemd-journald is not running (nothing listens on "
                f"{JOURNAL_SOCKET}) and starting {JOURNALD} needs root"
            )
        if not os.access(JOURNALD, os.X_OK):
            pytest.skip(f"systemd-journald is not running and {JOURNALD} is missing")
        if not Path("/etc/machine-id").is_file():
            pytest.skip("systemd-journald needs /etc/machine-id, which does not exist")
        yield from _run_journald()


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _run_journald() -> Iterator[Journal]:
    existed = {path: os.path.lexists(path) for path in CREATED_BY_JOURNALD}
    # No NOTIFY_SOCKET/LISTEN_FDS/WATCHDOG_*: journald must not think systemd runs it.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(
            [JOURNALD],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            up = wait_until(
                lambda: _journald_listening() or proc.poll() is not None, START_TIMEOUT_S
            )
            if not up or proc.poll() is not None:
                output.seek(0)
                text = output.read().decode(errors="replace").strip()
                pytest.skip(
                    f"{JOURNALD} did not come up (exit status {proc.poll()}, "
                    f"listening={_journald_listening()}): {text or 'no output'}"
                )
            yield Journal(directory=RUNTIME_JOURNAL, started=True)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
            for path, was_there in existed.items():
                if not was_there:
                    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------
# reading the journal
# ----------------------------------------------------------------------------------------


def _journalctl(journal: Journal, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = ["journalctl", "--no-pager"]
    if journal.directory is not None and os.path.isdir(journal.directory):
        cmd.append(f"--directory={journal.directory}")
    return subprocess.run([*cmd, *args], capture_output=True, timeout=60, check=False)


def _sync() -> None:
    # Ask journald to write everything out (varlink io.systemd.Journal.Synchronize); root
    # only, and not fatal: the readers below wait with a deadline anyway.
    subprocess.run(["journalctl", "--sync"], capture_output=True, timeout=30, check=False)


def _decode(value: Any) -> str:
    # journalctl -o json prints values that are not printable UTF-8 as arrays of bytes.
    if isinstance(value, list):
        return bytes(value).decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def read_entries(journal: Journal, *matches: str, since: float) -> list[dict[str, str]]:
    _sync()
    proc = _journalctl(journal, "-o", "json", "--all", f"--since=@{int(since)}", *matches)
    assert proc.returncode in (0, 1), proc.stderr.decode(errors="replace")
    entries = []
    for line in proc.stdout.splitlines():
        if line.strip():
            raw = json.loads(line)
            entries.append({key: _decode(value) for key, value in raw.items()})
    return entries


def wait_for_entries(
    journal: Journal, count: int, *matches: str, since: float
) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []

    def enough() -> bool:
        nonlocal found
        found = read_entries(journal, *matches, since=since)
        return len(found) >= count

    assert wait_until(enough, READ_TIMEOUT_S), (
        f"expected {count} entries for {matches}, got {len(found)}: {found}"
    )
    return found


def assert_secret_nowhere(journal: Journal, since: float, *secret_values: str) -> None:
    """No field name or value of any entry since ``since`` contains a secret (raw export)."""
    _sync()
    proc = _journalctl(journal, "-o", "export", "--all", f"--since=@{int(since)}")
    assert proc.returncode in (0, 1), proc.stderr.decode(errors="replace")
    assert proc.stdout, "journalctl -o export returned nothing"
    for value in secret_values:
        assert value.encode() not in proc.stdout, "a secret reached the journal"


# ----------------------------------------------------------------------------------------
# the logging child processes
# ----------------------------------------------------------------------------------------

CHILD_ON = textwrap.dedent(
    """
    import logging, os, sys
    from edgevoice.health.logsetup import add_secret, setup_logging

    ident, sid = sys.argv[1], sys.argv[2]
    key = os.environ.pop("EDGEVOICE_TEST_KEY")
    late_key = os.environ.pop("EDGEVOICE_TEST_LATE_KEY")
    setup_logging("debug", journald="on", secrets=[key], identifier=ident)
    log = logging.getLogger("edgevoice.test")

    def ev(event, **more):
        return {"edgevoice": {"EVENT": event, "SESSION": sid, **more}}

    log.info("session %s created", sid, extra=ev("session.created"))
    log.warning("connection closed: going away", extra=ev("ws.closed", CLOSE_CODE=1001))
    log.error("server rejected key %s", key, extra=ev("server.error", ERROR_CODE="invalid_api_key"))
    try:
        raise RuntimeError("handshake failed: Authorization: Bearer " + key)
    except RuntimeError:
        log.exception("handshake failed", extra=ev("ws.handshake"))
    log.critical("api-key: " + key, extra=ev("key.critical"))
    log.debug("headers %s", {"Authorization": "Bearer " + key, "api-key": key}, extra=ev("debug"))
    log.info("extra fields", extra=ev("extra.secret", ERROR_CODE="key=" + key))
    add_secret(late_key)
    log.info("late key %s", late_key, extra=ev("late.key"))
    """
)


def _run_on_journal_stream(ident: str, key: str, code: str, *args: str) -> int:
    """Run `code` in a child whose stderr is a journald stream named `ident`."""
    stream = _journal_stream(ident)
    with stream:
        st = os.fstat(stream.fileno())
        proc = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=REPO,
            env=_child_env(EDGEVOICE_TEST_KEY=key, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}"),
            stdout=subprocess.DEVNULL,
            stderr=stream.fileno(),
            timeout=60,
            check=False,
        )
    return proc.returncode


def _child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _new_key() -> str:
    return "sk-proj-" + secrets.token_urlsafe(36)


def test_structured_fields_priority_and_no_secret(journal: Journal) -> None:
    since = time.time() - 2
    ident = f"edgevoice-test-{uuid.uuid4().hex[:12]}"
    sid = f"sess_{uuid.uuid4().hex[:16]}"
    key, late_key = _new_key(), _new_key()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_ON, ident, sid],
        cwd=REPO,
        env=_child_env(EDGEVOICE_TEST_KEY=key, EDGEVOICE_TEST_LATE_KEY=late_key),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # journald "on" worked: no fallback warning, nothing on stderr
    assert key not in proc.stdout + proc.stderr

    entries = wait_for_entries(journal, 8, f"SYSLOG_IDENTIFIER={ident}", since=since)
    by_event = {e.get("EDGEVOICE_EVENT"): e for e in entries}
    assert set(by_event) == {
        "session.created",
        "ws.closed",
        "server.error",
        "ws.handshake",
        "key.critical",
        "debug",
        "extra.secret",
        "late.key",
    }
    for entry in entries:
        assert entry["EDGEVOICE_SESSION"] == sid
        assert entry["_TRANSPORT"] == "journal"
        assert entry["LOGGER"] == "edgevoice.test"
        assert "EXCEPTION_INFO" not in entry

    created = by_event["session.created"]
    assert created["MESSAGE"] == f"session {sid} created"
    assert created["PRIORITY"] == "6"
    assert created["CODE_ARGS"] == f"('{sid}',)"  # clean arguments are kept

    closed = by_event["ws.closed"]
    assert closed["PRIORITY"] == "4"
    assert closed["EDGEVOICE_CLOSE_CODE"] == "1001"

    error = by_event["server.error"]
    assert error["PRIORITY"] == "3"
    assert error["EDGEVOICE_ERROR_CODE"] == "invalid_api_key"
    assert error["MESSAGE"] == "server rejected key [REDACTED]"
    assert "CODE_ARGS" not in error  # the raw arguments are gone

    handshake = by_event["ws.handshake"]
    assert handshake["PRIORITY"] == "3"
    assert (
        "RuntimeError: handshake failed: Authorization: Bearer [REDACTED]"
        in handshake["EXCEPTION_TEXT"]
    )
    assert "Traceback (most recent call last)" in handshake["MESSAGE"]

    assert by_event["key.critical"]["PRIORITY"] == "2"
    assert by_event["key.critical"]["MESSAGE"] == "api-key: [REDACTED]"
    assert by_event["debug"]["PRIORITY"] == "7"
    assert "[REDACTED]" in by_event["debug"]["MESSAGE"]
    assert by_event["extra.secret"]["EDGEVOICE_ERROR_CODE"] == "key=[REDACTED]"
    assert by_event["late.key"]["MESSAGE"] == "late key [REDACTED]"

    # In no field of any entry (including the trusted ones journald adds, e.g. _CMDLINE).
    for entry in read_entries(journal, since=since):
        for name, value in entry.items():
            assert key not in name + value and late_key not in name + value, name
    assert_secret_nowhere(journal, since, key, late_key)


CHILD_PIECES = textwrap.dedent(
    """
    import logging, os, sys
    from edgevoice.health.logsetup import setup_logging

    ident = sys.argv[1]
    key = os.environ.pop("EDGEVOICE_TEST_KEY")
    setup_logging("debug", journald=sys.argv[2], secrets=[key], identifier=ident)
    log = logging.getLogger("edgevoice.pieces")
    for n in range(8, len(key) + 1):
        # A server message echoing the key, shortened at every position.
        text = "Incorrect API key provided: " + key[:n]
        log.error("server error: %s", text, extra={"edgevoice": {"EVENT": "cut", "BODY": text}})
    log.warning("shortened by the format: %.45s", "key=" + key)
    log.warning("the end of it: %s", key[-20:])
    """
)


@pytest.mark.parametrize("mode", ["on", "off"])
def test_pieces_of_the_key_never_reach_the_journal(journal: Journal, mode: str) -> None:
    """Native journal fields (on) and the stderr stream (off): every run of 8 characters of
    the key is redacted, wherever a shortened text cut it."""
    since = time.time() - 2
    ident = f"edgevoice-pieces-{uuid.uuid4().hex[:12]}"
    key = _new_key()
    assert _run_on_journal_stream(ident, key, CHILD_PIECES, ident, mode) == 0
    count = len(key) - 8 + 1 + 2
    entries = wait_for_entries(journal, count, f"SYSLOG_IDENTIFIER={ident}", since=since)
    assert {e["_TRANSPORT"] for e in entries} == {"journal" if mode == "on" else "stdout"}
    assert sum("[REDACTED]" in e["MESSAGE"] for e in entries) == count
    _sync()
    export = _journalctl(journal, "-o", "export", "--all", f"--since=@{int(since)}").stdout
    # Every 8-character run of the key but its first ("sk-proj-", shared by every test key).
    leaked = [key[i:i + 8] for i in range(1, len(key) - 7) if key[i:i + 8].encode() in export]
    assert not leaked, f"pieces of the key in the journal: {leaked[:3]}"


CHILD_AUTO = textwrap.dedent(
    """
    import logging, os, sys
    if sys.argv[3] == "without-systemd-python":
        sys.modules["systemd"] = None  # as if python3-systemd were not installed
    from edgevoice.health.logsetup import setup_logging

    ident, sid = sys.argv[1], sys.argv[2]
    key = os.environ.pop("EDGEVOICE_TEST_KEY")
    setup_logging("info", journald="auto", secrets=[key], identifier=ident)
    logging.getLogger("edgevoice.auto").warning(
        "closed after %s", "Bearer " + key,
        extra={"edgevoice": {"EVENT": "auto.test", "SESSION": sid}},
    )
    logging.getLogger("edgevoice.auto").info("second line\\nof one record")
    """
)


def _journal_stream(identifier: str) -> socket.socket:
    """A stdout/stderr stream into journald, as systemd sets up for StandardError=journal."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(JOURNAL_STDOUT)
    sock.shutdown(socket.SHUT_RD)
    # identifier, unit id, priority, level prefix, forward to syslog, kmsg, console
    sock.sendall(f"{identifier}\n\n6\n1\n0\n0\n0\n".encode())
    return sock


@pytest.mark.parametrize("variant", ["with-systemd-python", "without-systemd-python"])
def test_auto_mode_under_journal_stream(journal: Journal, variant: str) -> None:
    since = time.time() - 2
    ident = f"edgevoice-auto-{uuid.uuid4().hex[:12]}"
    sid = f"sess_{uuid.uuid4().hex[:16]}"
    key = _new_key()
    assert _run_on_journal_stream(ident, key, CHILD_AUTO, ident, sid, variant) == 0

    if variant == "with-systemd-python":
        # JOURNAL_STREAM matched fd 2: native journal protocol with structured fields.
        entries = wait_for_entries(journal, 2, f"SYSLOG_IDENTIFIER={ident}", since=since)
        assert {e["_TRANSPORT"] for e in entries} == {"journal"}
        first = next(e for e in entries if e.get("EDGEVOICE_EVENT") == "auto.test")
        assert first["EDGEVOICE_SESSION"] == sid
        assert first["PRIORITY"] == "4"
        assert first["MESSAGE"] == "closed after Bearer [REDACTED]"
        assert any(e["MESSAGE"] == "second line\nof one record" for e in entries)
    else:
        # Fallback to stderr: no timestamp (journald adds its own), <N> priority prefixes,
        # structured fields appended to the text, and one entry per record: a line break
        # inside a message is folded.
        entries = wait_for_entries(journal, 2, f"SYSLOG_IDENTIFIER={ident}", since=since)
        assert {e["_TRANSPORT"] for e in entries} == {"stdout"}
        messages = [(e["PRIORITY"], e["MESSAGE"]) for e in entries]
        assert messages == [
            (
                "4",
                f"edgevoice.auto: closed after Bearer [REDACTED] [event=auto.test session={sid}]",
            ),
            ("6", "edgevoice.auto: second line of one record"),
        ]
    assert_secret_nowhere(journal, since, key)


# ----------------------------------------------------------------------------------------
# the daemon itself, logging natively to the journal
# ----------------------------------------------------------------------------------------


def test_daemon_journal_entries_have_structured_fields_and_no_key(
    journal: Journal, server: DevServer, tmp_path: Path
) -> None:
    since = time.time() - 1
    config = wav_config(tmp_path, server.url, speech(30.0),
                        {"logging": {"journald": "on", "level": "info"}})
    with running_daemon(tmp_path, config) as daemon:
        assert wait_until(lambda: any(s.first_append_at for s in server.sessions()), 15)
        server.close_all(1011, "test")
        assert wait_until(lambda: sum(1 for s in server.sessions() if s.first_append_at) >= 2,
                         15)
        pid = daemon.proc.pid
        assert daemon.stop() == 0
    lost = wait_for_entries(journal, 1, f"_PID={pid}", "EDGEVOICE_EVENT=session_lost",
                            since=since)[0]
    assert lost["EDGEVOICE_CLOSE_CODE"] == "1011"
    assert lost["EDGEVOICE_SESSION"].startswith("sess_")
    assert lost["PRIORITY"] == "4"
    assert lost["SYSLOG_IDENTIFIER"] == "edgevoice"
    configured = read_entries(journal, f"_PID={pid}", "EDGEVOICE_EVENT=session.updated",
                              since=since)
    assert len(configured) >= 2 and all(e["PRIORITY"] == "6" for e in configured)
    assert_secret_nowhere(journal, since, KEY)
