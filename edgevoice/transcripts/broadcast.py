"""The transcript socket: every connected local reader gets each line, none holds us up.

A Unix stream socket (mode 0660, the process's group, as the control socket), write-only:
what a reader sends is read and thrown away (that is also how a reader's end of file is
seen). One thread serves everything with `selectors` over non-blocking sockets: it
accepts readers, sends each its pending bytes when the socket takes them, and reads the
wake-up pipe. `write` (the delivery thread) only appends the line to each reader's pending
buffer and wakes the thread; a reader whose pending bytes pass `max_buffer` (it stopped
reading: the kernel's socket buffer is full and ours filled up behind it) is dropped and
logged, never waited for. A reader gets the lines from when it connected; there is no
history (the JSON lines file has it).

A stale socket file (a daemon that was killed) is replaced at start, a path owned by a
live process or not a socket is refused; the file is removed at stop unless another
process has bound the path meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from edgevoice.unix_socket import bind_listener, peer_credentials, remove_own_socket

log = logging.getLogger("edgevoice.transcripts")

MAX_BUFFER = 256 * 1024  # pending bytes per reader before it is dropped
MAX_READERS = 32
SELECT_S = 0.5
RECV_BYTES = 4096


@dataclass(eq=False)
class _Reader:
    sock: socket.socket
    who: str
    pending: bytearray = field(default_factory=bytearray)
    overflow: bool = False
    wants_write: bool = False


class SocketBroadcast:
    name = "socket"

    def __init__(self, path: Path, *, max_buffer: int = MAX_BUFFER,
                 max_readers: int = MAX_READERS) -> None:
        self.path = path
        self._max_buffer = max_buffer
        self._max_readers = max_readers
        self._lock = threading.Lock()
        self._readers: dict[int, _Reader] = {}  # by file descriptor
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._main, name="transcripts-socket",
                                        daemon=True)
        self.dropped = 0  # readers dropped for not keeping up (tests, logs)

    # -- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Bind on the caller's thread (an unusable path is reported at once), then serve.
        Raises OSError when the path cannot be used."""
        try:
            self._listener = self._bind()
        except BaseException:
            self._wake_r.close()
            self._wake_w.close()
            self._selector.close()
            raise
        for sock in (self._wake_r, self._wake_w, self._listener):
            sock.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread.start()

    def close(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self._wake()
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("transcript socket thread did not stop within %.1fs", timeout)

    @property
    def readers(self) -> int:
        with self._lock:
            return len(self._readers)

    def _bind(self) -> socket.socket:
        listener, self._inode = bind_listener(self.path, "transcript socket")
        log.info("transcript socket listening at %s", self.path,
                 extra={"edgevoice": {"EVENT": "transcripts.listening"}})
        return listener

    # -- the delivery thread -------------------------------------------------------------

    def write(self, line: bytes) -> bool:
        """Queue `line` for every reader (never blocks); always True: a reader that
        cannot take it is the reader's problem."""
        with self._lock:
            for reader in self._readers.values():
                if reader.overflow:
                    continue
                reader.pending += line
                if len(reader.pending) > self._max_buffer:
                    reader.overflow = True
        self._wake()
        return True

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            self._wake_w.send(b"\0")

    # -- the socket thread ---------------------------------------------------------------

    def _main(self) -> None:
        try:
            while not self._stop.is_set():
                for key, events in self._selector.select(SELECT_S):
                    sock = key.fileobj
                    if sock is self._listener:
                        self._accept()
                    elif sock is self._wake_r:
                        self._drain_wake()
                    else:
                        self._serve(key.fd, events)
                self._flush_all()
        except Exception:
            log.exception("transcript socket failed; readers get no more lines")
        finally:
            self._cleanup()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("transcript socket: accept failed: %s", exc)
                return
            who = peer_credentials(sock)
            if self.readers >= self._max_readers:
                log.warning("transcript reader %s refused: %d readers already", who,
                            self._max_readers,
                            extra={"edgevoice": {"EVENT": "transcripts.reader_refused"}})
                sock.close()
                continue
            sock.setblocking(False)
            reader = _Reader(sock, who)
            with self._lock:
                self._readers[sock.fileno()] = reader
            self._selector.register(sock, selectors.EVENT_READ)
            log.info("transcript reader %s connected", who,
                     extra={"edgevoice": {"EVENT": "transcripts.reader"}})

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(RECV_BYTES):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _serve(self, fd: int, events: int) -> None:
        reader = self._readers.get(fd)
        if reader is None:
            return
        if events & selectors.EVENT_READ:
            try:
                data = reader.sock.recv(RECV_BYTES)  # thrown away: the socket is write-only
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._remove(reader, "")

    def _flush_all(self) -> None:
        """Send what each reader's socket takes now; drop readers over their bound."""
        with self._lock:
            readers = list(self._readers.values())
        for reader in readers:
            with self._lock:
                overflow = reader.overflow
                pending = len(reader.pending)
            if overflow:
                self.dropped += 1
                self._remove(reader, f"not reading ({pending} bytes waiting)")
                continue
            if pending and not self._send(reader):
                continue
            self._want_write(reader)

    def _send(self, reader: _Reader) -> bool:
        """Send what the socket takes now; False when the reader is gone (removed)."""
        with self._lock:
            try:
                n = reader.sock.send(reader.pending)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                error = f"gone ({exc.strerror or exc})"
            else:
                del reader.pending[:n]
                return True
        self._remove(reader, error)
        return False

    def _want_write(self, reader: _Reader) -> None:
        with self._lock:
            want = bool(reader.pending)
        if want != reader.wants_write:
            reader.wants_write = want
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self._selector.modify(reader.sock, mask)

    def _remove(self, reader: _Reader, why: str) -> None:
        with self._lock:
            if self._readers.pop(reader.sock.fileno(), None) is None:
                return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(reader.sock)
        reader.sock.close()
        if why:
            log.warning("transcript reader %s dropped: %s", reader.who, why,
                        extra={"edgevoice": {"EVENT": "transcripts.reader_dropped"}})
        else:
            log.info("transcript reader %s disconnected", reader.who,
                     extra={"edgevoice": {"EVENT": "transcripts.reader_gone"}})

    def _cleanup(self) -> None:
        with self._lock:
            readers = list(self._readers.values())
            self._readers.clear()
        for reader in readers:
            reader.sock.close()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
            remove_own_socket(self.path, self._inode, "transcript socket")
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
