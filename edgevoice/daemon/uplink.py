"""The uplink worker: owns `send`, moves audio from the backlog into the current session.

Without a session it sends nothing and the backlog fills (the outage buffer). A rollover
hands it the next, already configured session; it switches between two chunks when the
old one is quiet (or at a hard deadline), so every chunk goes to exactly one session.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from edgevoice.daemon.backlog import AudioChunk, ChunkBacklog
from edgevoice.daemon.stats import Stats
from edgevoice.errors import ConnectionLost
from edgevoice.realtime.session import RealtimeSession
from edgevoice.realtime.transport import Clock

log = logging.getLogger("edgevoice.uplink")


class Uplink:
    def __init__(self, backlog: ChunkBacklog, stats: Stats, clock: Clock = time.monotonic,
                 keep_sent: int = 1500) -> None:
        self._backlog = backlog
        # What the current session was sent, newest last: replayed if it dies unread.
        self._sent: deque[tuple[float, AudioChunk]] = deque(maxlen=keep_sent)
        self._stats = stats
        self._clock = clock
        self._lock = threading.Condition()
        self._target: RealtimeSession | None = None
        self._next: RealtimeSession | None = None
        self._next_deadline = 0.0
        self._retired: RealtimeSession | None = None  # the old session after a switch
        self._replay_until_seq = -1  # chunks up to this seq were buffered during an outage
        self._replay_since: float | None = None  # pending: requeue what was sent since
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self.beat = clock()

    # -- control, from the supervisor ----------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def attach(self, session: RealtimeSession, replay_until_seq: int) -> None:
        with self._lock:
            self._target = session
            self._next = None
            self._replay_until_seq = replay_until_seq
            self._lock.notify_all()

    def detach(self, replay_since: float | None = None) -> RealtimeSession | None:
        """Stop sending to the current session; with `replay_since`, the worker puts what
        it sent to that session since then back in front of the backlog (in its own thread,
        so the order of chunks is never mixed up with a chunk it is just giving back)."""
        with self._lock:
            old, self._target = self._target, None
            if replay_since is not None:
                pending = self._replay_since
                self._replay_since = replay_since if pending is None else min(pending,
                                                                              replay_since)
            else:
                self._sent.clear()
            return old

    def offer_next(self, session: RealtimeSession, deadline: float) -> None:
        """Switch to `session` at the next quiet moment, or at `deadline` at the latest."""
        with self._lock:
            self._next = session
            self._next_deadline = deadline
            self._lock.notify_all()

    def drop_pending(self, session: RealtimeSession) -> None:
        with self._lock:
            if self._next is session:
                self._next = None

    def take_retired(self) -> RealtimeSession | None:
        with self._lock:
            old, self._retired = self._retired, None
            return old

    @property
    def target(self) -> RealtimeSession | None:
        with self._lock:
            return self._target

    @property
    def pending(self) -> RealtimeSession | None:
        with self._lock:
            return self._next

    def stop(self, timeout: float) -> bool:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def drain(self, deadline: float) -> int:
        """On shutdown: let the worker send what is buffered until `deadline`; returns left."""
        while self._clock() < deadline and len(self._backlog) and self.target is not None \
                and not self.target.failed.is_set():
            self._stop.wait(0.02)
        return len(self._backlog)

    # -- the worker ----------------------------------------------------------------------

    def _requeue_pending(self) -> None:
        """Called with the lock held, from the worker thread only."""
        since, self._replay_since = self._replay_since, None
        if since is None:
            return
        again = [chunk for sent_at, chunk in self._sent if sent_at >= since]
        self._sent.clear()
        if again:
            self._backlog.push_front(again)
            log.info("replaying %d chunks the lost session may not have read", len(again))

    def _current(self) -> RealtimeSession | None:
        with self._lock:
            self._requeue_pending()
            if self._target is None or self._target.failed.is_set():
                self._lock.wait(0.25)
                return None
            return self._target

    def _maybe_switch(self, chunk_rms: float) -> None:
        """Called with the lock held, from the worker thread only."""
        nxt, old = self._next, self._target
        if nxt is None or old is None:
            return
        if old.failed.is_set():
            return  # the supervisor handles it: replay, fatal exits, then the switch
        quiet = old.is_quiet() and chunk_rms < -45.0
        if quiet or self._clock() >= self._next_deadline:
            self._target, self._next, self._retired = nxt, None, old
            self._sent.clear()
            self._stats.add("rollovers")
            log.info("uplink switched to session %s (%s)", nxt.session_id,
                     "quiet moment" if quiet else "deadline")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat = self._clock()
            session = self._current()
            if session is None:
                continue
            chunk = self._backlog.get(timeout=0.25)
            if chunk is None:
                continue
            with self._lock:
                self._maybe_switch(chunk.rms_dbfs)
                session = self._target
                if session is None or self._replay_since is not None:
                    # Detached meanwhile: this chunk is newer than any replayed one.
                    self._backlog.push_front([chunk])
                    continue
            try:
                session.send_audio(chunk.pcm, chunk.rms_dbfs)
            except ConnectionLost as exc:
                # Not sent: it goes back to the front and is replayed on the next session.
                self._backlog.push_front([chunk])
                session.fail(exc)
                continue
            with self._lock:
                # Recorded even if just detached: then it is the newest chunk to replay.
                self._sent.append((self._clock(), chunk))
            self._stats.add("chunks_sent")
            self._stats.add("audio_bytes_sent", len(chunk.pcm))
            if chunk.seq <= self._replay_until_seq:
                self._stats.add("chunks_replayed")

