"""systemd service notifications: READY, STATUS, STOPPING, RELOADING and the watchdog.

The supervisor only sees the :class:`Notifier` Protocol. ``make_notifier()`` picks the
concrete class from the environment systemd hands a ``Type=notify`` service:

``NOTIFY_SOCKET``
    the datagram socket of the service manager (a path, or ``@name`` for an abstract
    socket). Without it nobody listens and :class:`NullNotifier` is used.
``WATCHDOG_USEC`` / ``WATCHDOG_PID``
    the watchdog timeout, and the process it applies to. ``watchdog_interval_s`` is half the
    timeout (sd_watchdog_enabled(3) recommends pinging at that rate), or ``None`` when no
    watchdog is configured or it is meant for another process.

After reading them ``make_notifier()`` removes the three variables from ``os.environ`` so
that no child process inherits them (a child would otherwise talk to the manager in our
name, or believe it has a watchdog).

Sending: with systemd-python importable *and* ``NOTIFY_SOCKET`` still present in the
environment, messages go through ``systemd.daemon.notify`` (sd_notify(3)). libsystemd reads
the address from the environment on every call, so once the environment has been scrubbed
(the default) or when systemd-python is not installed, the notifier sends the same datagram
itself to the address it captured. Both paths produce identical datagrams; the kernel
attaches our credentials (SCM_CREDENTIALS) because the manager's socket has SO_PASSCRED,
which is what ``NotifyAccess=main`` checks.

Notifications never raise: a lost notification must not take the daemon down. Failures are
logged once at WARNING and afterwards at DEBUG.

STATUS= is public: ``systemctl status`` shows it to every local user. ``status()`` passes the
line through the same redaction as the log (``edgevoice.health.logsetup.redact``: registered
secrets, any 8+ character piece of one, credential-looking values) before it is shortened,
so no caller can leak the API key through it.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Protocol, runtime_checkable

from edgevoice.health.logsetup import redact

__all__ = [
    "NOTIFY_ENV_VARS",
    "STATUS_MAX_BYTES",
    "Notifier",
    "NotifyEnvironment",
    "NullNotifier",
    "SystemdNotifier",
    "make_notifier",
    "read_notify_environment",
    "sanitize_status",
    "scrub_child_environment",
    "scrub_notify_environment",
]

log = logging.getLogger(__name__)

NOTIFY_ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

# systemd (252) reads notifications into a PIPE_BUF (4096 byte) buffer and ignores larger
# datagrams entirely, so a long STATUS line would silently drop the whole message.
STATUS_MAX_BYTES = 1024

SdNotify = Callable[[str], object]


@runtime_checkable
class Notifier(Protocol):
    """What the supervisor tells the service manager."""

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC), None without watchdog."""
        ...

    def ready(self) -> None:
        """READY=1: startup (or a reload) finished."""
        ...

    def status(self, line: str) -> None:
        """STATUS=<one human-readable line> (a SystemdNotifier redacts and shortens it)."""
        ...

    def stopping(self) -> None:
        """STOPPING=1: shutdown has begun."""
        ...

    def reloading(self) -> None:
        """RELOADING=1 (with MONOTONIC_USEC): a reload has begun; call ready() after it."""
        ...

    def watchdog_ping(self) -> None:
        """WATCHDOG=1: the service is healthy."""
        ...


def sanitize_status(line: str, max_bytes: int = STATUS_MAX_BYTES) -> str:
    """Make ``line`` a single, redacted STATUS value: no newlines or control characters,
    no secret, bounded size.

    Every run of whitespace (including CR/LF) becomes one space, other control characters
    (NUL makes systemd reject the whole datagram) are dropped, secrets are redacted (after
    the clean-up, which could join the pieces of a key, and before the cut, which could
    leave a piece of it that is no longer recognisable as a whole key), and the result is
    cut to ``max_bytes`` of UTF-8 without splitting a character.
    """
    text = " ".join(line.split())
    text = "".join(ch for ch in text if ch.isprintable())
    text = redact(text)
    data = text.encode("utf-8")
    if len(data) > max_bytes:
        text = data[: max_bytes - 3].decode("utf-8", errors="ignore").rstrip() + "..."
    return text


def _positive_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number > 0 else None


class NotifyEnvironment:
    """The notification-related variables as systemd set them for this process."""

    __slots__ = ("socket", "watchdog_pid", "watchdog_usec")

    def __init__(
        self,
        socket: str | None,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        self.socket = socket or None
        self.watchdog_usec = watchdog_usec
        self.watchdog_pid = watchdog_pid

    def __repr__(self) -> str:
        return (
            f"NotifyEnvironment(socket={self.socket!r}, watchdog_usec={self.watchdog_usec!r},"
            f" watchdog_pid={self.watchdog_pid!r})"
        )


def read_notify_environment(environ: Mapping[str, str] | None = None) -> NotifyEnvironment:
    """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (invalid values count as unset)."""
    env = os.environ if environ is None else environ
    return NotifyEnvironment(
        socket=env.get("NOTIFY_SOCKET") or None,
        watchdog_usec=_positive_int(env.get("WATCHDOG_USEC")),
        watchdog_pid=_positive_int(env.get("WATCHDOG_PID")),
    )


def scrub_child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of ``env`` without the service-manager notification variables.

    Use it for the ``env=`` of any subprocess the daemon starts.
    """
    return {key: value for key, value in env.items() if key not in NOTIFY_ENV_VARS}


def scrub_notify_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Remove the notification variables from ``environ`` (default: ``os.environ``).

    Deleting from ``os.environ`` also unsets them in the C environment, so neither
    ``subprocess`` nor a library that forks and execs passes them on.
    """
    env = os.environ if environ is None else environ
    for key in NOTIFY_ENV_VARS:
        env.pop(key, None)


def _load_sd_notify() -> SdNotify | None:
    """``systemd.daemon.notify`` if systemd-python is importable, else None."""
    try:
        daemon = importlib.import_module("systemd.daemon")
    except (ImportError, OSError):
        return None
    notify = getattr(daemon, "notify", None)
    return notify if callable(notify) else None


def _socket_address(address: str) -> str | bytes:
    """Translate a NOTIFY_SOCKET value into an AF_UNIX address for ``sendto``."""
    if address.startswith("@"):
        # Abstract namespace: a leading NUL byte, and no trailing padding.
        return b"\0" + address[1:].encode("utf-8")
    if address.startswith("/"):
        return address
    raise OSError(f"unsupported NOTIFY_SOCKET address {address!r} (not a path or @abstract)")


def send_datagram(address: str, payload: str) -> None:
    """Send one notification datagram to ``address`` (the sd_notify wire protocol)."""
    target = _socket_address(address)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(payload.encode("utf-8"), target)


class SystemdNotifier:
    """Notifications to the service manager listening on ``address``."""

    def __init__(
        self,
        address: str,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
        sd_notify: SdNotify | bool | None = True,
    ) -> None:
        """``sd_notify``: True = use systemd-python when importable, False = never, or a
        callable to use instead of ``systemd.daemon.notify``."""
        if not address:
            raise ValueError("SystemdNotifier needs a NOTIFY_SOCKET address")
        _socket_address(address)  # reject unusable addresses early
        self.address = address
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._watchdog_pid = watchdog_pid
        if sd_notify is True:
            self._sd_notify: SdNotify | None = _load_sd_notify()
        elif sd_notify is False or sd_notify is None:
            self._sd_notify = None
        else:
            self._sd_notify = sd_notify
        self._lock = threading.Lock()
        self._failed_once = False

    @classmethod
    def from_environment(
        cls, env: NotifyEnvironment, *, sd_notify: SdNotify | bool | None = True
    ) -> SystemdNotifier:
        if env.socket is None:
            raise ValueError("NOTIFY_SOCKET is not set")
        return cls(
            env.socket,
            watchdog_usec=env.watchdog_usec,
            watchdog_pid=env.watchdog_pid,
            sd_notify=sd_notify,
        )

    @property
    def uses_libsystemd(self) -> bool:
        """Whether the next message goes through ``systemd.daemon.notify``."""
        return self._sd_notify is not None and os.environ.get("NOTIFY_SOCKET") == self.address

    @property
    def watchdog_interval_s(self) -> float | None:
        if self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self) -> None:
        self._send("READY=1")

    def status(self, line: str) -> None:
        # sanitize_status redacts: every caller's line is covered, whatever it carries.
        self._send("STATUS=" + sanitize_status(line))

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def reloading(self) -> None:
        # systemd >= 253 wants the CLOCK_MONOTONIC time of the reload request next to
        # RELOADING=1 (Type=notify-reload); older managers ignore the extra field.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def watchdog_ping(self) -> None:
        self._send("WATCHDOG=1")

    def _send(self, payload: str) -> None:
        try:
            if self.uses_libsystemd:
                assert self._sd_notify is not None
                self._sd_notify(payload)
            else:
                send_datagram(self.address, payload)
        except Exception as exc:  # noqa: BLE001 - a notification must never kill the daemon
            with self._lock:
                first = not self._failed_once
                self._failed_once = True
            kind = payload.split("=", 1)[0]
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "service manager notification %s to %s failed: %s",
                kind,
                self.address,
                exc,
                extra={"edgevoice": {"EVENT": "notify.failed"}},
            )

    def __repr__(self) -> str:
        return f"SystemdNotifier({self.address!r}, watchdog={self.watchdog_interval_s!r})"


class NullNotifier:
    """No service manager is listening: every notification is a no-op."""

    @property
    def watchdog_interval_s(self) -> float | None:
        return None

    def ready(self) -> None:
        pass

    def status(self, line: str) -> None:
        pass

    def stopping(self) -> None:
        pass

    def reloading(self) -> None:
        pass

    def watchdog_ping(self) -> None:
        pass

    def __repr__(self) -> str:
        return "NullNotifier()"


def make_notifier(
    environ: MutableMapping[str, str] | None = None,
    *,
    scrub: bool = True,
    sd_notify: SdNotify | bool | None = True,
) -> Notifier:
    """Build the notifier for this process from ``environ`` (default ``os.environ``).

    With ``scrub`` (the default) the notification variables are removed from ``environ``
    after reading, so child processes never inherit them. Call this once, early.
    """
    env = os.environ if environ is None else environ
    settings = read_notify_environment(env)
    if scrub:
        scrub_notify_environment(env)
    if settings.socket is None:
        return NullNotifier()
    try:
        return SystemdNotifier.from_environment(settings, sd_notify=sd_notify)
    except (OSError, ValueError) as exc:
        log.warning("ignoring NOTIFY_SOCKET: %s", exc)
        return NullNotifier()
