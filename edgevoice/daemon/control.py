"""The local control socket: `edgevoice ctl` talks to the running daemon through it.

A Unix stream socket (`control.socket`: "auto" is `$RUNTIME_DIRECTORY/control.sock` under
systemd), mode 0660 in the process's group (`edgevoice` under the packaged unit), so the
members of that group may mute the microphone and nobody else. One JSON line each way:

    {"cmd": "mute"}                    -> {"ok": true, "muted": true, "dropped_chunks": 12, ...}
    {"cmd": "say", "text": "Hello"}    -> {"ok": true, "session": "sess_..."}
    {"cmd": "nope"}                    -> {"ok": false, "error": "unknown command 'nope' ..."}

One worker thread serves the clients one after another, each bounded: a client that sends
no complete line within `CLIENT_TIMEOUT_S`, or more than `MAX_REQUEST_BYTES`, is answered
with an error (when it still listens) and dropped. Commands run on this thread and never
wait for the network (`say` only queues its events with the sender), so a client can
neither block the daemon nor hold up the next client for long. A stale socket file (a
daemon that was killed) is replaced at start; the file is removed at stop, unless another
process has bound the path meanwhile.

The mute state lives in a file, so it survives a reload and a restart: present means muted
(`mute_state_path`): `$STATE_DIRECTORY/muted` under systemd (`StateDirectory=edgevoice`:
/var/lib/edgevoice/muted), else `<socket>.muted` beside the socket.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgevoice.clock import Clock
from edgevoice.daemon.worker import Worker
from edgevoice.health.logsetup import redact
from edgevoice.health.status import systemd_directory
from edgevoice.unix_socket import (
    bind_listener,
    peer_credentials,
    remove_own_socket,
)

log = logging.getLogger("edgevoice.control")

CLIENT_TIMEOUT_S = 2.0  # a client has this long to send its line, and again to read the reply
MAX_REQUEST_BYTES = 16 * 1024  # one request line, newline included
MAX_REPLY_BYTES = 1024 * 1024  # what `ctl` reads back (a status snapshot is a few KiB)
ACCEPT_WAIT_S = 0.25  # the worker comes round (beats, sees a stop) at least this often
# The packaged unit's RuntimeDirectory: where `ctl` looks when "auto" cannot be resolved
# from its own environment (it runs in a shell, not under the unit).
DEFAULT_SOCKET = Path("/run/edgevoice/control.sock")
MUTE_FILE_NAME = "muted"

Request = dict[str, Any]
Reply = dict[str, Any]
Command = Callable[[Request], Reply]


class ControlError(Exception):
    """A command the daemon refuses: the message goes back as `{"ok": false, "error": ...}`."""


def resolve_socket(setting: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The daemon's socket path: a path as given, "auto" under systemd, else none."""
    from edgevoice.health.status import runtime_path

    return runtime_path(setting, "control.sock", environ)


def mute_state_path(socket_path: Path | None,
                    environ: Mapping[str, str] | None = None) -> Path | None:
    """Where the mute state is kept: `$STATE_DIRECTORY/muted` (its first entry) when systemd
    set it, else `<socket>.muted` beside the socket; None without either (then a mute,
    impossible anyway without a socket, would not be kept)."""
    return state_path(MUTE_FILE_NAME, socket_path, environ)


def state_path(name: str, socket_path: Path | None,
               environ: Mapping[str, str] | None = None) -> Path | None:
    """Where a state file `name` is kept: `$STATE_DIRECTORY/<name>` (its first entry) when
    systemd set it, else `<socket>.<name>` beside the socket; None without either."""
    state = systemd_directory("STATE_DIRECTORY", environ)
    if state is not None:
        return state / name
    if socket_path is not None:
        return socket_path.with_name(f"{socket_path.name}.{name}")
    return None


def read_mute_state(path: Path | None) -> bool:
    """True if the state file says muted. An unreadable file counts as muted: privacy first."""
    if path is None:
        return False
    try:
        return path.exists()
    except OSError:
        return True


def write_mute_state(path: Path | None, muted: bool) -> None:
    """Persist the state (raises OSError); the file is created or removed."""
    if path is None:
        return
    if muted:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, b"muted by edgevoice ctl\n")
        finally:
            os.close(fd)
    else:
        path.unlink(missing_ok=True)


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode() + b"\n"


class ControlServer(Worker):
    """The socket's worker: `commands` maps a request's `cmd` to what answers it."""

    def __init__(self, path: Path, commands: Mapping[str, Command], *,
                 clock: Clock = time.monotonic, client_timeout_s: float = CLIENT_TIMEOUT_S,
                 max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        super().__init__("control", clock)
        self.path = path
        self._commands = dict(commands)
        self._client_timeout_s = client_timeout_s
        self._max_request = max_request_bytes
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self.served = 0  # requests answered (tests)
        self.dropped = 0  # clients dropped: silent, too long, gone

    # -- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Bind (on the caller's thread: an unusable path is reported at once), then serve.

        Raises OSError when the path cannot be used (a live daemon owns it, it is not a
        socket, the directory is missing or not writable)."""
        self._listener = self._bind()
        super().start()

    def _bind(self) -> socket.socket:
        path = self.path
        listener, self._inode = bind_listener(path, "control socket")
        listener.settimeout(ACCEPT_WAIT_S)
        log.info("control socket listening at %s", path,
                 extra={"edgevoice": {"EVENT": "control.listening"}})
        return listener

    def cleanup(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.close()
        remove_own_socket(self.path, self._inode, "control socket")

    # -- the worker ----------------------------------------------------------------------

    def step(self) -> None:
        listener = self._listener
        if listener is None:
            self.sleep(ACCEPT_WAIT_S)
            return
        try:
            client, _ = listener.accept()
        except TimeoutError:
            return
        except OSError as exc:
            if not self.stopping:
                log.warning("control socket: accept failed: %s", exc)
                self.sleep(ACCEPT_WAIT_S)
            return
        with client:
            self._serve(client)

    def _serve(self, client: socket.socket) -> None:
        who = peer_credentials(client)
        line = self._read_line(client)
        if isinstance(line, str):  # an error: tell the client if it still listens
            self.dropped += 1
            log.warning("control client %s dropped: %s", who, line,
                        extra={"edgevoice": {"EVENT": "control.dropped"}})
            self._reply(client, {"ok": False, "error": line})
            return
        reply = self._handle(line, who)
        self._reply(client, reply)
        self.served += 1

    def _read_line(self, client: socket.socket) -> bytes | str:
        """The request line (without its newline), or why there is none."""
        deadline = self._clock() + self._client_timeout_s
        data = b""
        while True:
            end = data.find(b"\n")
            if end >= 0:
                return data[:end] if end < self._max_request else "request too long"
            if len(data) >= self._max_request:
                return f"request too long (more than {self._max_request} bytes)"
            left = deadline - self._clock()
            if left <= 0 or self.stopping:
                return f"no complete request within {self._client_timeout_s:g}s"
            client.settimeout(min(left, ACCEPT_WAIT_S))
            self.beat = self._clock()
            try:
                piece = client.recv(self._max_request + 1 - len(data))
            except TimeoutError:
                continue
            except OSError as exc:
                return f"receive failed: {exc}"
            if not piece:  # a request without its newline, then end of file, is fine
                if len(data) >= self._max_request:
                    return "request too long"
                return data if data else "closed without a request"
            data += piece

    def _handle(self, line: bytes, who: str) -> Reply:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "error": "not a JSON line"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'expected an object like {"cmd": "status"}'}
        name = request["cmd"]
        command = self._commands.get(name)
        if command is None:
            known = ", ".join(sorted(self._commands))
            return {"ok": False, "error": f"unknown command {name[:40]!r} (known: {known})"}
        log.info("control: %s (from %s)", name, who,
                 extra={"edgevoice": {"EVENT": f"control.{name}"}})
        try:
            reply = command(request)
        except ControlError as exc:
            return {"ok": False, "error": redact(str(exc))}
        except Exception as exc:  # a bug in a command must not end the control socket
            log.exception("control command %s failed", name)
            return {"ok": False, "error": redact(f"internal error: {exc}")}
        return {"ok": True, **reply}

    def _reply(self, client: socket.socket, reply: Reply) -> None:
        client.settimeout(self._client_timeout_s)
        try:
            client.sendall(encode(reply))
        except OSError as exc:
            log.debug("control client went away before the reply: %s", exc)


def request(path: Path, message: Mapping[str, Any], timeout_s: float = 5.0) -> Reply:
    """The client side (`edgevoice ctl`): one request, one reply. Raises OSError when no
    daemon listens (FileNotFoundError, ConnectionRefusedError), ValueError on a bad reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(encode(message))
        data = b""
        while b"\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
            if len(data) > MAX_REPLY_BYTES:
                raise ValueError("reply too long")
    if not data:
        raise ValueError("the daemon closed the connection without a reply")
    reply = json.loads(data.split(b"\n", 1)[0])
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ValueError("not a control reply")
    return reply
