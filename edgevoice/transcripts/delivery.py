"""From the downlink threads to the sinks without ever making them wait.

`submit` (on a session's reader thread) only puts the record into a bounded queue: when the
queue is full the record is dropped and counted (`transcripts_dropped`), so a slow disk
never holds up the server's events. One writer thread takes records off, turns them into
JSON lines and hands each line to every sink in turn; a line every sink took is counted as
`transcripts_delivered`, one a sink failed to write as `transcripts_dropped` (the sink
logs its problem once). At stop the writer finishes what is queued (bounded by the join
timeout), then closes the sinks.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from edgevoice.transcripts.record import Transcript

log = logging.getLogger("edgevoice.transcripts")

QUEUE_RECORDS = 256  # a burst of transcripts is a handful; 256 means the sinks are stuck
WAIT_S = 0.25  # the writer comes round (sees a stop) at least this often


class Sink(Protocol):
    name: str

    def write(self, line: bytes) -> bool:
        """Write one line; False when it could not (the sink logged why)."""
        ...

    def close(self) -> None: ...


class Delivery:
    def __init__(self, sinks: Sequence[Sink], count: Callable[[str, int], None], *,
                 max_queued: int = QUEUE_RECORDS) -> None:
        self.sinks = tuple(sinks)
        self._count = count
        self._queue: queue.Queue[Transcript] = queue.Queue(max_queued)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="transcripts", daemon=True)
        self._dropping = False

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: Transcript) -> bool:
        """Queue `record` for the sinks; never blocks. False: dropped (queue full or
        stopped), counted."""
        if self._stop.is_set():
            self._count("transcripts_dropped", 1)
            return False
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._count("transcripts_dropped", 1)
            if not self._dropping:  # once per burst: the journal is not a second queue
                self._dropping = True
                log.warning("transcripts dropped: the sinks do not keep up (%d queued)",
                            self._queue.maxsize,
                            extra={"edgevoice": {"EVENT": "transcripts.dropped"}})
            return False
        self._dropping = False
        return True

    def stop(self, timeout: float) -> bool:
        """Stop the writer after what is queued; False if it did not end within
        `timeout` (then the sinks are left to it)."""
        self._stop.set()
        if self._thread.ident is None:
            self._close_sinks()
            return True
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            log.warning("transcript writer did not stop within %.1fs", timeout,
                        extra={"edgevoice": {"EVENT": "worker.stuck"}})
            return False
        return True

    def _main(self) -> None:
        try:
            while True:
                try:
                    record = self._queue.get(timeout=WAIT_S)
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
                self._write(record)
        finally:
            self._close_sinks()

    def _write(self, record: Transcript) -> None:
        line = record.line()
        ok = True
        for sink in self.sinks:
            try:
                ok = sink.write(line) and ok
            except Exception:  # a bug in one sink must not stop the others
                log.exception("transcript sink %s failed", sink.name)
                ok = False
        self._count("transcripts_delivered" if ok else "transcripts_dropped", 1)

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing transcript sink %s failed", sink.name)
