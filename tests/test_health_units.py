"""Unit tests for edgevoice.health: notify, heartbeat/watchdog gate, logging redaction.

The notify tests talk to a real AF_UNIX datagram socket bound by the test with SO_PASSCRED,
the way systemd's notify socket is, and check the sender's pid from SCM_CREDENTIALS.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeClock

from edgevoice.health import logsetup
from edgevoice.health.heartbeat import HeartbeatRegistry, WatchdogGate
from edgevoice.health.logsetup import (
    REDACTED,
    RedactingFilter,
    StructuredFormatter,
    journal_stream_matches,
    setup_logging,
    syslog_priority,
)
from edgevoice.health.notify import (
    NOTIFY_ENV_VARS,
    STATUS_MAX_BYTES,
    Notifier,
    NullNotifier,
    SystemdNotifier,
    make_notifier,
    read_notify_environment,
    sanitize_status,
    scrub_child_environment,
    scrub_notify_environment,
)


def _have_systemd_python() -> bool:
    try:
        import systemd.daemon
        import systemd.journal  # noqa: F401
    except ImportError:
        return False
    return True


from systemd_fixtures import NotifyListener  # noqa: E402

HAVE_SYSTEMD_PYTHON = _have_systemd_python()
needs_systemd_python = pytest.mark.skipif(
    not HAVE_SYSTEMD_PYTHON, reason="systemd-python (python3-systemd) is not installed"
)

# ----------------------------------------------------------------------------------------
# notify: a real notify socket
# ----------------------------------------------------------------------------------------

@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest) -> Iterator[NotifyListener]:
    lst = NotifyListener(request.param)
    yield lst
    lst.close()


@pytest.fixture
def clean_notify_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in NOTIFY_ENV_VARS:
        monkeypatch.delenv(key, raising=False)


def _exercise(notifier: Notifier, lst: NotifyListener) -> None:
    """Send every kind of message and check payloads and the sender pid."""
    me = os.getpid()

    notifier.ready()
    payload, pid, uid, gid = lst.receive()
    assert payload == "READY=1"
    assert (pid, uid, gid) == (me, os.getuid(), os.getgid())

    notifier.status("streaming to gpt-realtime 48k→24k,\nsession 12m\r\n  0 reconnects\x00")
    payload, pid, _, _ = lst.receive()
    assert payload == "STATUS=streaming to gpt-realtime 48k→24k, session 12m 0 reconnects"
    assert pid == me

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    payload, pid, _, _ = lst.receive()
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", payload)
    assert match, payload
    assert before <= int(match.group(1)) <= after
    assert pid == me

    notifier.watchdog_ping()
    assert lst.receive()[:2] == ("WATCHDOG=1", me)

    notifier.stopping()
    assert lst.receive()[:2] == ("STOPPING=1", me)
    lst.assert_nothing_pending()


@needs_systemd_python
def test_libsystemd_path_sends_exact_payloads(
    listener: NotifyListener, clean_notify_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    notifier = SystemdNotifier(listener.address)
    assert notifier.uses_libsystemd
    _exercise(notifier, listener)


def test_fallback_without_systemd_python(
    listener: NotifyListener, clean_notify_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes "import systemd.daemon" raise ImportError, which is
    # exactly what a missing python3-systemd looks like to the code.
    monkeypatch.setitem(sys.modules, "systemd", None)
    monkeypatch.setitem(sys.modules, "systemd.daemon", None)
    with pytest.raises(ImportError):
        import systemd.daemon  # noqa: F401
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    notifier = make_notifier()
    assert isinstance(notifier, SystemdNotifier)
    assert not notifier.uses_libsystemd
    assert "NOTIFY_SOCKET" not in os.environ
    _exercise(notifier, listener)


def test_make_notifier_scrubs_environment_and_still_sends(
    listener: NotifyListener, clean_notify_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = make_notifier()
    assert isinstance(notifier, SystemdNotifier)
    assert notifier.watchdog_interval_s == 15.0
    for key in NOTIFY_ENV_VARS:
        assert key not in os.environ
    # A child process sees none of them (unset in the C environment too).
    out = subprocess.run(
        ["/usr/bin/env"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    for key in NOTIFY_ENV_VARS:
        assert f"{key}=" not in out
    # libsystemd can no longer find the socket, so the notifier sends the datagram itself.
    assert not notifier.uses_libsystemd
    _exercise(notifier, listener)


def test_make_notifier_without_socket_is_null(clean_notify_env: None) -> None:
    env = {"WATCHDOG_USEC": "30000000", "PATH": "/usr/bin"}
    notifier = make_notifier(env)
    assert isinstance(notifier, NullNotifier)
    assert notifier.watchdog_interval_s is None
    assert env == {"PATH": "/usr/bin"}
    for call in (notifier.ready, notifier.stopping, notifier.reloading, notifier.watchdog_ping):
        call()
    notifier.status("anything")
    assert isinstance(notifier, Notifier)


def test_make_notifier_without_scrub_keeps_environment() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "10000000"}
    notifier = make_notifier(env, scrub=False, sd_notify=False)
    assert isinstance(notifier, SystemdNotifier)
    assert env["NOTIFY_SOCKET"] == "/run/systemd/notify"
    assert notifier.watchdog_interval_s == 5.0


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None) -> None:
    env = {"NOTIFY_SOCKET": "@x"}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if pid == "self":
        env["WATCHDOG_PID"] = str(os.getpid())
    elif pid == "other":
        env["WATCHDOG_PID"] = str(os.getpid() + 1)
    notifier = SystemdNotifier.from_environment(read_notify_environment(env), sd_notify=False)
    assert notifier.watchdog_interval_s == expected


def test_scrub_helpers() -> None:
    env = {"NOTIFY_SOCKET": "@a", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "HOME": "/"}
    assert scrub_child_environment(env) == {"HOME": "/"}
    assert len(env) == 4  # the copy is scrubbed, not the input
    scrub_notify_environment(env)
    assert env == {"HOME": "/"}


def test_sanitize_status() -> None:
    assert sanitize_status("a\nb\r\nc\td") == "a b c d"
    assert sanitize_status("nul\x00byte\x1b[31m") == "nulbyte[31m"
    long = sanitize_status("é" * 2000)
    assert len(long.encode()) <= STATUS_MAX_BYTES
    assert long.endswith("...")


def test_unsupported_address_rejected() -> None:
    with pytest.raises(OSError, match="unsupported"):
        SystemdNotifier("vsock:2:1234", sd_notify=False)
    assert isinstance(make_notifier({"NOTIFY_SOCKET": "vsock:2:1234"}), NullNotifier)


def test_send_failure_never_raises_and_warns_once(
    caplog: pytest.LogCaptureFixture, clean_notify_env: None
) -> None:
    notifier = SystemdNotifier("/nonexistent/edgevoice/notify", sd_notify=False)
    with caplog.at_level(logging.DEBUG, logger="edgevoice.health.notify"):
        notifier.ready()
        notifier.watchdog_ping()
        notifier.status("x")
    levels = [r.levelno for r in caplog.records if r.name == "edgevoice.health.notify"]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]


# ----------------------------------------------------------------------------------------
# heartbeat and the watchdog gate, with a fake clock
# ----------------------------------------------------------------------------------------


class RecordingNotifier:
    def __init__(self, interval: float | None = 15.0) -> None:
        self._interval = interval
        self.pings = 0

    @property
    def watchdog_interval_s(self) -> float | None:
        return self._interval

    def ready(self) -> None:
        pass

    def status(self, line: str) -> None:
        pass

    def stopping(self) -> None:
        pass

    def reloading(self) -> None:
        pass

    def watchdog_ping(self) -> None:
        self.pings += 1


def test_registry_stale_and_starved() -> None:
    clock = FakeClock()
    reg = HeartbeatRegistry(clock)
    reg.register("uplink")
    reg.register("capture", expect_progress=True)
    reg.beat("downlink")  # registers on first beat
    assert reg.workers() == ["capture", "downlink", "uplink"]
    clock.advance(5)
    reg.beat("capture")
    reg.progress("capture", 480)
    reg.progress("capture", 480)
    assert reg.progress_count("capture") == 960
    clock.advance(6)
    now = clock()
    assert reg.stale(now, 10) == ["downlink", "uplink"]
    assert reg.starved(now, 10) == []
    assert reg.beat_age("uplink", now) == 11
    clock.advance(5)
    assert reg.starved(clock(), 10) == ["capture"]
    # Deliberately closed device (reopen backoff): not expected to deliver.
    reg.expect_progress("capture", False)
    clock.advance(100)
    assert reg.starved(clock(), 10) == []
    # Expected again: gets a fresh full period.
    reg.expect_progress("capture", True)
    clock.advance(9)
    assert reg.starved(clock(), 10) == []
    clock.advance(2)
    assert reg.starved(clock(), 10) == ["capture"]
    reg.unregister("capture")
    assert reg.starved(clock(), 10) == []
    assert "capture" not in reg.workers()
    # Exactly max_age old is still fresh.
    reg.beat("edge")
    clock.advance(10)
    assert "edge" not in reg.stale(clock(), 10)


def test_registry_with_copied_timestamps() -> None:
    """A supervisor may copy the workers' own timestamps into the registry (``at=``)."""
    clock = FakeClock()
    reg = HeartbeatRegistry(clock)
    worker_beat = clock()
    last_audio = clock()
    for _ in range(3):  # the supervisor ticks; the audio timestamp does not move
        clock.advance(4)
        worker_beat = clock()
        reg.beat("capture", at=worker_beat)
        reg.progress("audio", 480, at=last_audio)
    assert reg.progress_count("audio") == 480  # one arrival, reported three times
    assert reg.stale(clock(), 10) == []
    assert reg.starved(clock(), 10) == ["audio"]  # 12 s without audio
    last_audio = clock()
    reg.progress("audio", 480, at=last_audio)
    assert reg.starved(clock(), 10) == []
    assert reg.progress_count("audio") == 960
    reg.beat("downlink", at=clock() - 60)
    assert reg.stale(clock(), 10) == ["downlink"]
    reg.forget("downlink")  # e.g. no connection: waiting in backoff is healthy
    assert reg.stale(clock(), 10) == []


def _gate(
    interval: float | None = 15.0, max_age: float | None = None
) -> tuple[FakeClock, HeartbeatRegistry, RecordingNotifier, WatchdogGate]:
    clock = FakeClock()
    reg = HeartbeatRegistry(clock)
    notifier = RecordingNotifier(interval)
    gate = WatchdogGate(reg, notifier, clock=clock, max_age_s=max_age)
    return clock, reg, notifier, gate


def test_gate_pings_when_due_and_healthy() -> None:
    clock, reg, notifier, gate = _gate()
    reg.register("capture", expect_progress=True)
    assert gate.enabled and gate.max_age_s == 15.0
    assert gate.seconds_until_due() == 0.0
    assert gate.tick() is True  # first healthy tick pings at once
    assert notifier.pings == 1
    for _ in range(14):
        clock.advance(1)
        reg.beat("capture")
        reg.progress("capture")
        assert gate.tick() is False
    assert gate.seconds_until_due() == pytest.approx(1.0)
    clock.advance(1)
    reg.beat("capture")
    reg.progress("capture")
    assert gate.tick() is True
    assert notifier.pings == 2 == gate.pings


def test_gate_withholds_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    clock, reg, notifier, gate = _gate(interval=15.0, max_age=10.0)
    reg.register("capture", expect_progress=True)
    reg.register("uplink")
    caplog.set_level(logging.INFO, logger="edgevoice.health.heartbeat")
    assert gate.tick() is True

    # The uplink wedges; capture keeps going.
    for _ in range(40):
        clock.advance(1)
        reg.beat("capture")
        reg.progress("capture")
        gate.tick()
    assert notifier.pings == 1  # nothing after the uplink went stale at +11s
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "worker uplink silent for 11.0s" in warnings[0].getMessage()
    assert getattr(warnings[0], "edgevoice", None) == {
        "EVENT": "watchdog.unhealthy",
        "STALE": "uplink",
    }

    # Now audio stops too: the set of culprits changed, so one more warning.
    for _ in range(15):
        clock.advance(1)
        reg.beat("capture")
        gate.tick()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "no capture data for 11.0s" in warnings[1].getMessage()

    # Everything recovers: one info line, and a ping right away (it is overdue).
    reg.beat("uplink")
    reg.beat("capture")
    reg.progress("capture")
    assert gate.tick() is True
    assert gate.tick() is False
    infos = [r for r in caplog.records if "healthy again" in r.getMessage()]
    assert len(infos) == 1
    assert notifier.pings == 2


def test_gate_without_watchdog_never_pings(caplog: pytest.LogCaptureFixture) -> None:
    clock, reg, notifier, gate = _gate(interval=None)
    reg.register("capture")
    assert not gate.enabled
    assert gate.max_age_s == WatchdogGate.DEFAULT_MAX_AGE_S
    assert gate.seconds_until_due() is None
    assert gate.tick() is False
    clock.advance(60)
    caplog.set_level(logging.WARNING, logger="edgevoice.health.heartbeat")
    assert gate.tick() is False
    assert gate.evaluate().stale_workers == ("capture",)
    assert notifier.pings == 0
    assert len(caplog.records) == 1  # still reports the stale worker


def test_gate_thread_safety() -> None:
    clock, reg, notifier, gate = _gate(interval=0.001)
    stop = threading.Event()

    def worker(name: str) -> None:
        while not stop.is_set():
            reg.beat(name)
            reg.progress(name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(2000):
            clock.advance(0.001)
            gate.tick()
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    assert notifier.pings == gate.pings > 0


def test_gate_rejects_bad_intervals() -> None:
    reg = HeartbeatRegistry()
    with pytest.raises(ValueError):
        WatchdogGate(reg, RecordingNotifier(0.0))
    with pytest.raises(ValueError):
        WatchdogGate(reg, RecordingNotifier(), max_age_s=0)


# ----------------------------------------------------------------------------------------
# redaction
# ----------------------------------------------------------------------------------------

KEY = "sk-" + "proj-UNITtestKEY0123456789abcdefghijklmnop"  # built: no key-shaped literal


@pytest.fixture
def redacted_log() -> Iterator[tuple[logging.Logger, io.StringIO, RedactingFilter]]:
    """An isolated logger -> handler(filter) -> StringIO, formatter includes exceptions."""
    flt = RedactingFilter([KEY])
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(flt)
    logger = logging.getLogger(f"edgevoice.test.redact.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, buf, flt
    logger.removeHandler(handler)


def test_secret_in_message(redacted_log: tuple[logging.Logger, io.StringIO, Any]) -> None:
    logger, buf, _ = redacted_log
    logger.info(f"key is {KEY}!")
    logger.info(KEY)
    assert KEY not in buf.getvalue()
    assert buf.getvalue() == f"INFO key is {REDACTED}!\nINFO {REDACTED}\n"


def test_secret_in_args_collapses_record() -> None:
    flt = RedactingFilter([KEY])
    record = logging.LogRecord("x", logging.INFO, "f.py", 1, "using %s on %s", (KEY, "host"), None)
    assert flt.filter(record) is True
    assert record.args is None
    assert record.msg == f"using {REDACTED} on host"
    assert KEY not in str(vars(record))


def test_clean_args_are_kept_for_code_args() -> None:
    flt = RedactingFilter([KEY])
    record = logging.LogRecord("x", logging.INFO, "f.py", 1, "closed %d %s", (1001, "going"), None)
    flt.filter(record)
    assert record.msg == "closed %d %s"
    assert record.args == (1001, "going")


def test_secret_in_mapping_args_and_unused_arg() -> None:
    flt = RedactingFilter([KEY])
    rec = logging.LogRecord("x", logging.INFO, "f", 1, "%(host)s", ({"host": "h", "k": KEY},), None)
    flt.filter(rec)
    assert rec.getMessage() == "h"
    assert KEY not in repr(rec.args)
    rec2 = logging.LogRecord("x", logging.INFO, "f", 1, "hi", (KEY,), None)  # bad format
    flt.filter(rec2)
    assert KEY not in str(vars(rec2))


def test_secret_in_exception(redacted_log: tuple[logging.Logger, io.StringIO, Any]) -> None:
    logger, buf, _ = redacted_log
    try:
        try:
            raise KeyError(KEY)
        except KeyError as inner:
            raise RuntimeError(f"handshake rejected for key {KEY}") from inner
    except RuntimeError:
        logger.exception("connect failed")
    out = buf.getvalue()
    assert "RuntimeError: handshake rejected for key [REDACTED]" in out
    assert "KeyError" in out
    assert KEY not in out


def test_exception_object_is_dropped_from_record() -> None:
    flt = RedactingFilter([KEY])
    try:
        raise ValueError(KEY)
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "boom", None, sys.exc_info())
    record.stack_info = f"Stack (most recent call last):\n  {KEY}"
    flt.filter(record)
    assert record.exc_info is None
    assert record.exc_text and "ValueError: [REDACTED]" in record.exc_text
    assert KEY not in str(vars(record))
    # Formatting still shows the (redacted) traceback.
    assert "ValueError: [REDACTED]" in logging.Formatter().format(record)


def test_exception_as_message_object() -> None:
    flt = RedactingFilter([KEY])
    record = logging.LogRecord("x", logging.ERROR, "f", 1, OSError(KEY), None, None)
    flt.filter(record)
    assert record.getMessage() == REDACTED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.DEF-123_x~+/==", "Authorization: Bearer [REDACTED]"),
        ("authorization=Basic dXNlcjpwYXNz", "authorization=Basic [REDACTED]"),
        (
            "headers {'Authorization': 'Bearer tok123'}",
            "headers {'Authorization': 'Bearer [REDACTED]'}",
        ),
        ("sent Bearer eyJhbGciOi.eyJzdWIi.sig and more", "sent Bearer [REDACTED] and more"),
        ("api-key: 0123456789abcdef", "api-key: [REDACTED]"),
        ('{"api-key": "0123456789abcdef", "x": 1}', '{"api-key": "[REDACTED]", "x": 1}'),
        (
            "wss://h/realtime?api-key=abcd1234&deployment=d",
            "wss://h/realtime?api-key=[REDACTED]&deployment=d",
        ),
        ("X-Api-Key: zzz999", "X-Api-Key: [REDACTED]"),
        ("api_key='abc123'", "api_key='[REDACTED]'"),
        ("bad key " + "sk-" + "abcdefghijklmnop0123 given", "bad key [REDACTED] given"),
        # Over-redaction is the accepted price of catching every bearer token.
        ("the bearer of bad news", "the bearer [REDACTED] bad news"),
        ("plain text stays", "plain text stays"),
    ],
)
def test_credential_patterns(text: str, expected: str) -> None:
    flt = RedactingFilter()
    assert flt.redact(text) == expected
    assert flt.redact(expected) == expected  # idempotent


def test_pattern_across_template_and_args(
    redacted_log: tuple[logging.Logger, io.StringIO, Any],
) -> None:
    logger, buf, _ = redacted_log
    unknown = "tok_unknown_987654321"
    logger.debug("Authorization: Bearer %s", unknown)
    logger.debug("headers: %s", {"api-key": unknown})
    assert unknown not in buf.getvalue()
    assert buf.getvalue().count(REDACTED) == 2


def test_add_secret_later_and_stripped(
    redacted_log: tuple[logging.Logger, io.StringIO, RedactingFilter],
) -> None:
    logger, buf, flt = redacted_log
    late = "late-secret-value-42"
    logger.info("before %s", late)
    flt.add_secret(late + "\n")  # as read from a file
    logger.info("after %s", late)
    flt.add_secret("")  # ignored
    flt.add_secret("ab")  # too short to be a secret; ignored
    lines = buf.getvalue().splitlines()
    assert lines == [f"INFO before {late}", f"INFO after {REDACTED}"]
    assert flt.redact("abba") == "abba"


def test_extra_fields_redacted() -> None:
    flt = RedactingFilter([KEY])
    record = logging.LogRecord("x", logging.WARNING, "f", 1, "closed", None, None)
    caller_dict = {"EVENT": "ws.closed", "ERROR_CODE": f"bad {KEY}", "CLOSE_CODE": 1008}
    record.edgevoice = caller_dict
    record.detail = KEY
    flt.filter(record)
    assert getattr(record, "edgevoice", None) == {
        "EVENT": "ws.closed",
        "ERROR_CODE": f"bad {REDACTED}",
        "CLOSE_CODE": 1008,
    }
    assert getattr(record, "detail", None) == REDACTED
    assert caller_dict["ERROR_CODE"] == f"bad {KEY}"  # the caller's dict is not mutated


@needs_systemd_python
def test_journal_handler_fields_and_redaction() -> None:
    from systemd import journal

    sent: list[dict[str, Any]] = []

    def fake_send(message: str, **fields: Any) -> None:
        sent.append({"MESSAGE": message, **fields})

    flt = RedactingFilter([KEY])
    handler = journal.JournalHandler(
        sender_function=logsetup._JournalSender(fake_send, flt), SYSLOG_IDENTIFIER="evtest"
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(flt)
    logger = logging.getLogger(f"edgevoice.test.journal.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    fields = {"EVENT": "session.created", "SESSION": "sess_1", "CLOSE_CODE": 1001}
    logger.info("created %s", "sess_1", extra={"edgevoice": fields})
    logger.warning("key %s", KEY, extra={"edgevoice": {"ERROR_CODE": "invalid_api_key"}})
    try:
        raise RuntimeError(f"api-key: {KEY}")
    except RuntimeError:
        logger.error("failed", exc_info=True)
    logger.critical("c")
    logger.debug("d")

    first = sent[0]
    assert first["MESSAGE"] == "created sess_1"
    assert first["EDGEVOICE_EVENT"] == "session.created"
    assert first["EDGEVOICE_SESSION"] == "sess_1"
    assert first["EDGEVOICE_CLOSE_CODE"] == "1001"
    assert first["CODE_ARGS"] == "('sess_1',)"
    assert first["PRIORITY"] == "6"
    assert first["SYSLOG_IDENTIFIER"] == "evtest"
    assert isinstance(first["CODE_LINE"], int)
    for entry in sent:
        for name in entry:
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", name), name  # no msg/args/levelname...
        assert "EXCEPTION_INFO" not in entry
        assert KEY not in repr(entry)
    assert sent[1]["EDGEVOICE_ERROR_CODE"] == "invalid_api_key"
    assert "CODE_ARGS" not in sent[1]
    assert "RuntimeError: api-key: [REDACTED]" in sent[2]["EXCEPTION_TEXT"]
    assert [e["PRIORITY"] for e in sent] == ["6", "4", "3", "2", "7"]


def test_syslog_priority_mapping() -> None:
    assert [syslog_priority(level) for level in (5, 10, 20, 25, 30, 40, 50, 60)] == [
        7, 7, 6, 4, 4, 3, 2, 1,
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------
# setup_logging
# ----------------------------------------------------------------------------------------


def _stat_env(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_stderr_format_with_timestamp_off_journal(
    root_logging: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    path = tmp_path / "err.log"
    with path.open("w") as stream:
        setup_logging("info", journald="auto", secrets=[KEY], stream=stream)
        logging.getLogger("edgevoice.t").warning(
            "closed with %s", KEY, extra={"edgevoice": {"EVENT": "ws.closed", "CLOSE_CODE": 1006}}
        )
        logging.getLogger("edgevoice.t").debug("hidden")
    text = path.read_text()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING  edgevoice\.t: closed with \[REDACTED\]"
        r" \[event=ws\.closed close_code=1006\]\n",
        text,
    ), text


def test_stderr_format_under_journal_stream(
    root_logging: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # journald "off": the stream handler, and JOURNAL_STREAM matching it means no timestamp
    # and a <priority> prefix on every line.
    path = tmp_path / "stream"
    path.touch()
    monkeypatch.setenv("JOURNAL_STREAM", _stat_env(path))
    with path.open("w") as stream:
        assert journal_stream_matches(stream.fileno())
        setup_logging("debug", journald="off", stream=stream)
        log = logging.getLogger("edgevoice.t")
        log.error("two\nlines", extra={"edgevoice": {"EVENT": "y"}})
        log.info("fine", extra={"edgevoice": {"EVENT": "x"}})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    # One line per message, fields after the text; a traceback keeps the priority per line.
    lines = path.read_text().splitlines()
    assert lines[:3] == ["<3>edgevoice.t: two lines [event=y]", "<6>edgevoice.t: fine [event=x]",
                         "<3>edgevoice.t: failed"]
    assert lines[3] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>ValueError: boom"


def test_journal_stream_mismatch(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.touch()
    b.touch()
    with a.open() as fa:
        assert journal_stream_matches(fa.fileno(), {"JOURNAL_STREAM": _stat_env(a)})
        assert not journal_stream_matches(fa.fileno(), {"JOURNAL_STREAM": _stat_env(b)})
        assert not journal_stream_matches(fa.fileno(), {"JOURNAL_STREAM": "garbage"})
        assert not journal_stream_matches(fa.fileno(), {})


def test_journald_on_without_systemd_python_falls_back(
    root_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "systemd", None)
    monkeypatch.setitem(sys.modules, "systemd.journal", None)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    setup_logging("info", journald="on", stream=stream)
    logging.getLogger("edgevoice.t").info("hello")
    out = stream.getvalue()
    assert "WARNING  edgevoice.health.logsetup: journald logging requested" in out
    assert "systemd-python is unusable" in out
    assert "logging to stderr" in out
    assert out.rstrip().endswith("edgevoice.t: hello")
    handlers = [h for h in logging.getLogger().handlers if getattr(h, "_edgevoice_installed", 0)]
    assert len(handlers) == 1
    assert isinstance(handlers[0].formatter, StructuredFormatter)


def test_setup_logging_replaces_own_handlers_and_quiets_websocket(root_logging: None) -> None:
    setup_logging("debug", journald="off", stream=io.StringIO())
    setup_logging("warning", journald="off", stream=io.StringIO())
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_edgevoice_installed", False)]
    assert len(ours) == 1
    assert logsetup.get_redacting_filter() in ours[0].filters
    assert logsetup.get_redacting_filter() in root.filters
    assert root.level == logging.WARNING
    assert logging.getLogger("websocket").level == logging.WARNING
    import websocket

    assert websocket._logging._traceEnabled is False


def test_setup_logging_validates() -> None:
    with pytest.raises(ValueError, match="level"):
        setup_logging("loud")
    with pytest.raises(ValueError, match="journald"):
        setup_logging("info", journald="maybe")


def test_module_level_add_secret(root_logging: None) -> None:
    stream = io.StringIO()
    setup_logging("info", journald="off", stream=stream)
    secret = f"module-level-{uuid.uuid4().hex}"
    logsetup.add_secret(secret)
    logging.getLogger("edgevoice.t").info("k=%s", secret)
    assert secret not in stream.getvalue()
    assert logsetup.redact(secret) == REDACTED
