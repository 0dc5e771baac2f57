"""The uplink worker: the one thread that sends, to whichever session is current.

It owns `send` for every session it was handed: audio and ordered events from the
backlog's ordered lane to the current session, urgent events (a new session's
configuration, the stall probe, a reload's update, later cancel and truncate) to the
session they name, ahead of any queued audio, and the WebSocket pings. Without a session
it sends no audio and the backlog fills (the outage buffer). A rollover hands it the next,
already configured session; it switches between two chunks when the old one is quiet, or
while no audio flows at all (a closed gate), or at a hard deadline, so every chunk goes to
exactly one session.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from edgevoice.audio.level import SILENCE_DBFS, SPEECH_DBFS
from edgevoice.clock import Clock
from edgevoice.daemon.backlog import AudioChunk, ChunkBacklog, ClientEvent, QueuedItem
from edgevoice.daemon.replay import REPLAY_MARGIN_S, earliest_unread
from edgevoice.daemon.stats import Stats
from edgevoice.daemon.worker import Worker
from edgevoice.errors import ConnectionLost
from edgevoice.realtime.link import SessionLink

log = logging.getLogger("edgevoice.uplink")

WAIT_S = 0.1  # longest wait for an item: pings and an idle switch are checked this often
# No audio for this long after a chunk inside an utterance: the gate closed (or capture
# stopped). A shorter gap is a capture hiccup: no idle switch, the utterance stays whole.
UTTERANCE_GAP_S = 0.5


class Uplink(Worker):
    def __init__(self, backlog: ChunkBacklog, stats: Stats, clock: Clock = time.monotonic,
                 keep_sent: int = 1500,
                 on_audio_sent: Callable[[int], None] | None = None,
                 audio_allowed: Callable[[], bool] | None = None) -> None:
        super().__init__("uplink", clock)
        self._backlog = backlog
        # The daily cap: told the 24 kHz PCM bytes of each audio chunk sent; while it says
        # no, audio queued before it was reached (an outage buffer) is dropped, not sent.
        self._on_audio_sent = on_audio_sent
        self._audio_allowed = audio_allowed
        # What the current session was sent and may not have read, newest last: replayed
        # if it dies unread. At most `keep_sent` items; usually only those sent since the
        # server's last event (`_forget_read`).
        self._sent: deque[tuple[float, QueuedItem]] = deque(maxlen=keep_sent)
        self._utterance_at: float | None = None  # when a chunk inside an utterance came
        self._stats = stats
        self._lock = threading.Lock()
        self._target: SessionLink | None = None
        self._next: SessionLink | None = None
        self._next_deadline = 0.0
        self._retired: SessionLink | None = None  # the old session after a switch
        self._replay_until_seq = -1  # chunks up to this seq were buffered during an outage
        self._replay_since: float | None = None  # pending: requeue what was sent since

    # -- Outbox --------------------------------------------------------------------------

    def submit(self, event: dict[str, Any], to: SessionLink | None,
               urgent: bool = True) -> None:
        item = ClientEvent(event, to, urgent)
        if urgent:
            self._backlog.put_urgent(item)
        else:
            self._backlog.put(item)

    # -- control, from the supervisor ----------------------------------------------------

    def attach(self, session: SessionLink, replay_until_seq: int) -> None:
        with self._lock:
            self._target = session
            self._next = None
            self._replay_until_seq = replay_until_seq
        self._backlog.wake()

    def detach(self, replay_since: float | None = None) -> SessionLink | None:
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
        self._backlog.wake()
        return old

    def offer_next(self, session: SessionLink, deadline: float) -> None:
        """Switch to `session` at the next quiet moment, or at `deadline` at the latest."""
        with self._lock:
            self._next = session
            self._next_deadline = deadline
        self._backlog.wake()

    def drop_pending(self, session: SessionLink) -> bool:
        """Forget `session` as the next one; False if the uplink switched to it meanwhile."""
        with self._lock:
            if self._next is session:
                self._next = None
                return True
            return False

    def forget_audio(self) -> int:
        """A mute: forget the audio kept for a replay (it must not go out again, to the
        next session); returns how many chunks. The commits and response.creates that
        closed it go too: replayed alone they would commit nothing and ask for an answer."""
        with self._lock:
            forgotten = sum(isinstance(item, AudioChunk) for _, item in self._sent)
            self._sent.clear()
            return forgotten

    def take_retired(self) -> SessionLink | None:
        with self._lock:
            old, self._retired = self._retired, None
            return old

    @property
    def target(self) -> SessionLink | None:
        with self._lock:
            return self._target

    @property
    def pending(self) -> SessionLink | None:
        with self._lock:
            return self._next

    def wake(self) -> None:
        self._backlog.wake()

    def drain(self, deadline: float) -> int:
        """On shutdown: let the worker send what is buffered until `deadline`; returns left."""
        while self._clock() < deadline and (len(self._backlog) or
                                            self._backlog.urgent_pending()) \
                and self.target is not None and not self.target.failed.is_set():
            self._stop.wait(0.02)
        return len(self._backlog)

    # -- the worker ----------------------------------------------------------------------

    def step(self, timeout: float = WAIT_S) -> None:
        """Send one item (or wait up to `timeout` for one); public for unit tests."""
        with self._lock:
            self._requeue_pending()
            target, pending = self._target, self._next
        for session in (target, pending):
            if session is not None and not session.failed.is_set():
                try:
                    session.ping_if_due()
                except ConnectionLost as exc:
                    self._send_failed(session, exc)
        streaming = target is not None and not target.failed.is_set()
        item = self._backlog.get(timeout, ordered=streaming)
        if item is None:
            with self._lock:
                at = self._utterance_at
                in_utterance = at is not None and self._clock() - at < UTTERANCE_GAP_S
                # No audio flows: a quiet moment (unless an utterance only paused).
                self._maybe_switch(SILENCE_DBFS, in_utterance)
            return
        if isinstance(item, ClientEvent) and item.urgent:
            self._send_urgent(item, target)
            return
        if isinstance(item, AudioChunk) and self._backlog.muted:
            self._stats.add("chunks_dropped_muted")  # taken just before the mute
            return
        if isinstance(item, AudioChunk) and self._audio_allowed is not None \
                and not self._audio_allowed():
            self._stats.add("chunks_capped")  # queued before the daily cap was reached
            return
        with self._lock:
            if isinstance(item, AudioChunk):
                self._maybe_switch(item.rms_dbfs, item.utterance)
                self._utterance_at = self._clock() if item.utterance else None
            session = self._target
            if session is None or self._replay_since is not None:
                # Detached meanwhile: this item is newer than any replayed one.
                self._backlog.push_front([item])
                return
        self._send_to_current(session, item)

    def _send_urgent(self, item: ClientEvent, target: SessionLink | None) -> None:
        """An interrupting event: to its session, or to the current one; never replayed
        (a cancel or a probe means nothing to the next session)."""
        session = item.to if item.to is not None else target
        if session is None or session.failed.is_set():
            log.debug("not sending %s: its session is gone", item.event.get("type"))
            return
        try:
            session.send_event(item.event)
        except ConnectionLost as exc:
            self._send_failed(session, exc)

    def _send_to_current(self, session: SessionLink, item: QueuedItem) -> None:
        wire_bytes = 0
        latency_ms = 0.0
        try:
            if isinstance(item, AudioChunk):
                wire_bytes = session.send_audio(item.pcm, item.rms_dbfs, item.captured_at)
                # captured_at is the capture callback's time.monotonic() (never the clock
                # seam): its last byte is in the socket now.
                latency_ms = (time.monotonic() - item.captured_at) * 1e3
            else:
                session.send_event(item.event)
        except ConnectionLost as exc:
            # Not sent: it goes back to the front and is replayed on the next session.
            self._backlog.push_front([item])
            self._send_failed(session, exc)
            return
        with self._lock:
            # Recorded even if just detached: then it is the newest item to replay.
            now = self._clock()
            self._sent.append((now, item))
            self._forget_read(session, now)
        if isinstance(item, AudioChunk):
            counts = {"chunks_sent": 1, "audio_bytes_sent": len(item.pcm),
                      "wire_audio_bytes_sent": wire_bytes}  # as encoded (G.711: 1/6)
            if item.seq <= self._replay_until_seq:
                counts["chunks_replayed"] = 1
            self._stats.add_many(counts, latency_ms=latency_ms)  # one lock, not five
            if self._on_audio_sent is not None:
                self._on_audio_sent(len(item.pcm))

    def _send_failed(self, session: SessionLink, exc: ConnectionLost) -> None:
        """A send that did not drain (`silent`) means the peer stopped reading: the session
        fails silent, so the supervisor replays all it may not have read (since its last
        sign of life), not just the audio in flight."""
        if exc.silent:
            self._stats.add("send_timeouts")
        session.fail(exc)

    def _forget_read(self, session: SessionLink, now: float) -> None:
        """Called with the lock held. Drop what no failure can replay any more: during a
        conversation the server's events come every few seconds, so the record holds those
        seconds instead of `stream.outage_buffer_s` (30 s: 2 MB of the daemon's memory).
        Nothing goes once the session failed or a replay is pending: its bound is set
        (the worker sends no audio to a failed session, so this covers only a send that
        was under way when the failure came)."""
        if self._replay_since is not None or session.failed.is_set():
            return
        floor = earliest_unread(session, now) - REPLAY_MARGIN_S
        sent = self._sent
        while sent and sent[0][0] < floor:
            sent.popleft()

    @property
    def kept_for_replay(self) -> int:
        """Items (chunks and ordered events) the current session may not have read."""
        with self._lock:
            return len(self._sent)

    def _requeue_pending(self) -> None:
        """Called with the lock held, from the worker thread only."""
        since, self._replay_since = self._replay_since, None
        if since is None:
            return
        again = [item for sent_at, item in self._sent if sent_at >= since]
        self._sent.clear()
        if again:
            self._backlog.push_front(again)
            log.info("replaying %d chunks the lost session may not have read", len(again))

    def _maybe_switch(self, chunk_rms: float, utterance: bool = False) -> None:
        """Called with the lock held, from the worker thread only. Inside an utterance
        (the speech gate is open) only the deadline switches: its turn stays whole."""
        nxt, old = self._next, self._target
        if nxt is None or old is None or nxt.failed.is_set():
            return  # a next session that died is the supervisor's to drop
        if old.failed.is_set():
            return  # the supervisor handles it: replay, fatal exits, then the switch
        quiet = not utterance and old.is_quiet() and chunk_rms < SPEECH_DBFS
        if quiet or self._clock() >= self._next_deadline:
            self._target, self._next, self._retired = nxt, None, old
            self._sent.clear()
            self._stats.add("rollovers")
            log.info("uplink switched to session %s (%s)", nxt.session_id,
                     "quiet moment" if quiet else "deadline")

