"""The JSON lines file: appended, one whole line per write, rotated by size.

Not `logging.handlers.RotatingFileHandler`: its errors go to `handleError` (a traceback on
stderr for every line, where one journal line per problem is wanted), it creates files
with the umask's mode (the transcripts are private: 0640), and every line would pass
through a LogRecord and a formatter. What is kept of it is the naming: `name.1` is the
newest rotated file, `name.<keep>` the oldest.

Each line is one `os.write` on an O_APPEND descriptor (no buffer to flush, so a reader or
a crash never sees half a line). Before a line would take the file past `max_bytes` it is
rotated (a single line larger than that gets a file of its own). A failure (disk full,
directory gone, permissions) is logged once per distinct problem, the line counted as not
written, and the file reopened with the next line; writing again is logged once too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("edgevoice.transcripts")

FILE_MODE = 0o640


class JsonlFile:
    name = "file"

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._keep = keep
        self._fd: int | None = None
        self._size = 0
        self._problem = ""

    def write(self, line: bytes) -> bool:
        try:
            if self._fd is None:
                self._open()
            if self._size and self._size + len(line) > self._max_bytes:
                self._rotate()
            assert self._fd is not None
            view = memoryview(line)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self._size += n
        except OSError as exc:
            self._close_fd()
            self._report(str(exc))
            return False
        if self._problem:
            self._problem = ""
            log.info("transcripts written to %s again", self.path,
                     extra={"edgevoice": {"EVENT": "transcripts.file_ok"}})
        return True

    def close(self) -> None:
        self._close_fd()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     FILE_MODE)
        try:
            info = os.fstat(fd)
            if info.st_size == 0:  # new (or empty): exactly 0640, whatever the umask
                os.fchmod(fd, FILE_MODE)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._size = fd, info.st_size

    def _rotate(self) -> None:
        self._close_fd()
        name = str(self.path)
        for i in range(self._keep - 1, 0, -1):
            older = f"{name}.{i}"
            if os.path.exists(older):
                os.replace(older, f"{name}.{i + 1}")
        os.replace(name, f"{name}.1")
        self._open()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                self._report(str(exc))

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            log.error("cannot write transcripts to %s: %s (the daemon streams on; lines are "
                      "counted as dropped until it works)", self.path, problem,
                      extra={"edgevoice": {"EVENT": "transcripts.file_failed"}})
