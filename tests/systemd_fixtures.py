"""Test helpers for the systemd side: a real notify socket that records what it receives."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass

_UCRED = struct.Struct("=iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid


class NotifyListener:
    """A datagram socket with SO_PASSCRED, like the service manager's notify socket."""

    def __init__(self, kind: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._dir: str | None = None
        if kind == "abstract":
            name = f"edgevoice-test-notify-{uuid.uuid4().hex}"
            self.sock.bind(b"\0" + name.encode())
            self.address = "@" + name
        else:
            # A short directory: sun_path holds 108 bytes, pytest's tmp_path can be longer.
            self._dir = tempfile.mkdtemp(prefix="evn-", dir="/tmp")
            path = os.path.join(self._dir, "notify")
            self.sock.bind(path)
            self.address = path
        self.sock.settimeout(5.0)

    def receive(self) -> tuple[str, int, int, int]:
        """One datagram: (payload, sender pid, uid, gid)."""
        data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        creds = [
            _UCRED.unpack(cmsg_data[: _UCRED.size])
            for level, kind, cmsg_data in ancdata
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        ]
        assert creds, "no SCM_CREDENTIALS on the datagram"
        pid, uid, gid = creds[0]
        return data.decode("utf-8"), pid, uid, gid

    def assert_nothing_pending(self) -> None:
        self.sock.settimeout(0.05)
        try:
            data = self.sock.recv(4096)
        except (TimeoutError, BlockingIOError):
            return
        finally:
            self.sock.settimeout(5.0)
        raise AssertionError(f"unexpected notification {data!r}")

    def close(self) -> None:
        self.sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


@dataclass(frozen=True)
class Notification:
    payload: str
    pid: int
    at: float  # time.monotonic() when received


class NotifyRecorder:
    """A NotifyListener drained by a thread, for a daemon that runs as a subprocess."""

    def __init__(self) -> None:
        self.listener = NotifyListener("path")
        self.listener.sock.settimeout(0.2)
        self._lock = threading.Condition()
        self.messages: list[Notification] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-recorder", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return self.listener.address

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                payload, pid, _uid, _gid = self.listener.receive()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                for line in payload.split("\n"):
                    if line:
                        self.messages.append(Notification(line, pid, time.monotonic()))
                self._lock.notify_all()

    def lines(self, prefix: str = "") -> list[Notification]:
        with self._lock:
            return [m for m in self.messages if m.payload.startswith(prefix)]

    def wait_for(self, prefix: str, count: int = 1, timeout: float = 10.0,
                 after: float = 0.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [m for m in self.messages if m.payload.startswith(prefix)
                         and m.at >= after]
                if len(found) >= count:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.listener.close()


WATCHDOG_USEC = 2_000_000
HALF_S = WATCHDOG_USEC / 2 / 1e6


def notify_env(notify: NotifyRecorder) -> dict[str, str]:
    """What systemd hands a Type=notify service with WatchdogSec=2s."""
    return {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]
