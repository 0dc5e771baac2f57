"""What the daemon's Unix sockets (control, transcripts) share: taking over a path.

A daemon that was killed leaves its socket file behind, and bind() then fails forever;
a second daemon must not steal a socket that is in use. So a path is replaced only when it
is a socket nobody answers on.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import struct
from pathlib import Path

log = logging.getLogger("edgevoice")

SOCKET_MODE = 0o660  # the daemon's user and group (edgevoice) only
BACKLOG = 8


def remove_stale_socket(path: Path, what: str) -> None:
    """Unlink a socket nobody listens on; refuse a live one or a file that is no socket.
    `what` names it in the log ("control socket")."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        # Nobody listens: a daemon that died left it behind.
        log.info("replacing the stale %s %s", what, path)
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path} is in use by another running process")


def peer_credentials(client: socket.socket) -> str:
    """`uid N pid M` of a connected client, for the log (Linux SO_PEERCRED)."""
    try:
        raw = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", raw)
    except (OSError, AttributeError, struct.error):
        return "unknown peer"
    return f"uid {uid} pid {pid}"


def remove_own_socket(path: Path, inode: tuple[int, int] | None, what: str) -> None:
    """Unlink the socket file at stop, unless another process has replaced it since
    (`inode`: (st_dev, st_ino) of the one this process bound)."""
    try:
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == inode:  # still ours
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove the %s %s: %s", what, path, exc)


def bind_listener(path: Path, what: str) -> tuple[socket.socket, tuple[int, int]]:
    """A listening socket at `path` (a stale one replaced), mode 0660 and the daemon's
    group set before listen(), so nobody can connect before that; returns it and the
    (st_dev, st_ino) of the file, for `remove_own_socket`."""
    remove_stale_socket(path, what)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        os.chmod(path, SOCKET_MODE)
        try:
            os.chown(path, -1, os.getegid())
        except OSError as exc:  # the directory's setgid group is kept then
            log.debug("cannot set the %s's group: %s", what, exc)
        info = os.stat(path)
        listener.listen(BACKLOG)
    except BaseException:
        listener.close()
        raise
    return listener, (info.st_dev, info.st_ino)
