"""The supervisor: the main thread's loop over connection lifecycle and health.

It is the one place that decides what a failure means (retry, roll over, exit 77/78), so
the workers only report. It ticks a few times a second: long enough to cost nothing, short
enough that a stop request, a due watchdog ping or an expiring session is acted on in time.
Connecting happens on a helper thread so that the loop never blocks on the network.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgevoice.daemon.backlog import ChunkBacklog
from edgevoice.daemon.backoff import Backoff
from edgevoice.daemon.capture_worker import CaptureWorker
from edgevoice.daemon.stats import Stats
from edgevoice.daemon.uplink import Uplink
from edgevoice.errors import (
    EXIT_OK,
    AuthError,
    ConfigError,
    ConnectionLost,
    EdgeVoiceError,
)
from edgevoice.realtime.session import RealtimeSession
from edgevoice.realtime.transport import Clock
from edgevoice.settings import Settings

log = logging.getLogger("edgevoice.supervisor")

TICK_S = 0.1
STOP_BUDGET_S = 1.0  # flush what can be sent on shutdown, then close
DRAIN_OLD_SESSION_S = 3.0  # after a rollover, let the old session's last events arrive
QUIET_LOG_AFTER = 5  # consecutive failures logged individually, then one summary line
REPLAY_GUARD_S = 0.25  # audio in flight when a connection closes or resets


def _retry_after(error: EdgeVoiceError) -> float | None:
    """The server's minimum wait (HTTP 429 Retry-After), if it named one."""
    return error.retry_after_s if isinstance(error, ConnectionLost) else None


@dataclass
class _Attempt:
    session: RealtimeSession
    thread: threading.Thread
    cancel: threading.Event
    error: EdgeVoiceError | None = None
    for_rollover: bool = False


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        make_session: Callable[[str], RealtimeSession],
        capture: CaptureWorker,
        uplink: Uplink,
        backlog: ChunkBacklog,
        stats: Stats,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._make_session = make_session
        self._capture = capture
        self._uplink = uplink
        self._backlog = backlog
        self._stats = stats
        self._clock = clock
        self._wall = wall_clock
        self._on_tick = on_tick
        r = settings.reconnect
        self._backoff = Backoff(r.initial_s, r.max_s, r.multiplier)
        self._wake = threading.Event()
        self.stop_requested = False  # set from a signal handler: a plain flag, nothing else
        self._attempt: _Attempt | None = None
        self._next_attempt_at = 0.0
        self._rollover_retry_at = 0.0
        self._connected_since: float | None = None
        self._failures_in_row = 0
        self._draining: list[tuple[RealtimeSession, float]] = []
        self._session_no = 0
        self.exit_code = EXIT_OK
        self.deadline: float | None = None  # `run --duration`: stop cleanly at this time

    def request_stop(self) -> None:
        self.stop_requested = True

    # -- main loop -----------------------------------------------------------------------

    def run(self) -> int:
        self._capture.start()
        self._uplink.start()
        self._stats.set(state="connecting")
        try:
            while not self.stop_requested:
                now = self._clock()
                if self.deadline is not None and now >= self.deadline:
                    log.info("run duration reached; stopping")
                    break
                fatal = self._step(now)
                if fatal is not None:
                    self.exit_code = fatal.exit_code
                    log.critical("%s", fatal, extra={"edgevoice": {"EVENT": "fatal"}})
                    self._stats.set(state="failed", last_error=str(fatal))
                    break
                if self._on_tick is not None:
                    self._on_tick()
                self._wake.wait(TICK_S)
        finally:
            self._shutdown()
        return self.exit_code

    def _step(self, now: float) -> EdgeVoiceError | None:
        attempt = self._attempt
        if attempt is not None and not attempt.thread.is_alive():
            self._attempt = None
            fatal = self._attempt_finished(attempt, now)
            if fatal is not None:
                return fatal
        current = self._uplink.target
        if current is not None and current.failed.is_set():
            fatal = self._session_failed(current, now)
            if fatal is not None:
                return fatal
            current = self._uplink.target  # the rollover session, if one was ready
        pending = self._uplink.pending
        if pending is not None and pending.failed.is_set():
            # The next session died before the switch: forget it, roll over again later.
            self._uplink.drop_pending(pending)
            log.warning("next session %s failed before the switch: %s", pending.session_id,
                        pending.failure)
            pending.abort()
        if current is None and self._attempt is None and now >= self._next_attempt_at:
            self._start_attempt(for_rollover=False)
        if current is not None:
            self._check_stable(now)
            self._check_rollover(current, now)
            fatal = self._check_stall(current, now)
            if fatal is not None:
                return fatal
        self._close_retired(now)
        return None

    # -- connecting ----------------------------------------------------------------------

    def _start_attempt(self, for_rollover: bool) -> None:
        self._session_no += 1
        session = self._make_session(f"s{self._session_no}")
        cancel = threading.Event()
        attempt = _Attempt(session, threading.Thread(), cancel, for_rollover=for_rollover)

        def establish() -> None:
            try:
                session.establish(cancel)
            except EdgeVoiceError as exc:
                attempt.error = exc
            except Exception as exc:
                log.exception("unexpected error while connecting")
                attempt.error = ConnectionLost(f"unexpected {type(exc).__name__} while "
                                               "connecting")

        attempt.thread = threading.Thread(target=establish, name=f"connect-{session.name}",
                                          daemon=True)
        self._attempt = attempt
        if not for_rollover:
            self._stats.set(state="connecting")
        attempt.thread.start()

    def _attempt_finished(self, attempt: _Attempt, now: float) -> EdgeVoiceError | None:
        error = attempt.error
        if error is None and attempt.cancel.is_set():
            error = ConnectionLost("cancelled")
        if error is not None:
            attempt.session.abort()
            return self._connect_failed(error, now, attempt.for_rollover)
        session = attempt.session
        session.start_reader()
        self._stats.add("connections")
        self._stats.set(session_id=session.session_id)
        if attempt.for_rollover and self._uplink.target is not None:
            deadline = self._switch_deadline(self._uplink.target, now)
            self._uplink.offer_next(session, deadline)
            log.info("next session %s ready; switching at a quiet moment",
                     session.session_id)
            return None
        if self._failures_in_row >= QUIET_LOG_AFTER:
            log.info("connected again after %d failed attempts", self._failures_in_row)
        self._failures_in_row = 0
        replay_until = self._capture.next_seq - 1
        buffered = len(self._backlog)
        if not self._settings.stream.replay:
            buffered = self._backlog.clear()
            if buffered:
                log.info("discarded %d buffered chunks (stream.replay is off)", buffered)
            buffered = 0
        self._uplink.attach(session, replay_until)
        self._connected_since = now
        self._stats.set(state="streaming", detail="", last_error="")
        log.info("streaming to %s (%d chunks buffered to replay)",
                 self._settings.server.model, buffered,
                 extra={"edgevoice": {"EVENT": "streaming", "SESSION": session.session_id}})
        return None

    def _connect_failed(self, error: EdgeVoiceError, now: float,
                        for_rollover: bool) -> EdgeVoiceError | None:
        if isinstance(error, AuthError | ConfigError):
            return error
        self._stats.add("connect_failures")
        if for_rollover:
            # The current session still streams: try again after a backoff delay.
            delay = self._backoff.next_delay(_retry_after(error))
            self._rollover_retry_at = now + delay
            log.warning("could not open the next session: %s; retry in %.1fs", error, delay)
            return None
        delay = self._backoff.next_delay(_retry_after(error))
        self._next_attempt_at = now + delay
        self._failures_in_row += 1
        self._stats.set(state="offline", last_error=str(error),
                        detail=f"retry in {delay:.0f}s (#{self._failures_in_row})")
        if self._failures_in_row <= QUIET_LOG_AFTER:
            log.warning("connection failed: %s; retry in %.1fs (#%d)", error, delay,
                        self._failures_in_row,
                        extra={"edgevoice": {"EVENT": "connect_failed"}})
        elif self._failures_in_row == QUIET_LOG_AFTER + 1:
            log.warning("still failing to connect (%s); will keep retrying quietly, up to "
                        "every %.0fs", error, self._settings.reconnect.max_s)
        return None

    # -- while streaming -----------------------------------------------------------------

    def _session_failed(self, session: RealtimeSession, now: float) -> EdgeVoiceError | None:
        error = session.failure or ConnectionLost("session ended")
        if isinstance(error, AuthError | ConfigError):
            return error
        self._uplink.detach(replay_since=self._unread_since(session, error))
        session.abort()
        self._connected_since = None
        self._stats.add("reconnects")
        pending = self._uplink.pending
        code = error.close_code if isinstance(error, ConnectionLost) else None
        log.warning("session %s ended: %s", session.session_id, error,
                    extra={"edgevoice": {"EVENT": "session_lost", "SESSION": session.session_id,
                                         "CLOSE_CODE": code}})
        if pending is not None:
            self._uplink.attach(pending, self._capture.next_seq - 1)
            self._connected_since = now
            return None
        if session.expired:
            self._next_attempt_at = now  # expiry is routine: reconnect at once
        else:
            self._next_attempt_at = now + self._backoff.next_delay(_retry_after(error))
        self._stats.set(state="offline", last_error=str(error))
        return None

    def _unread_since(self, session: RealtimeSession, error: EdgeVoiceError) -> float:
        """From when on the lost session probably never read what it was sent.

        No ack exists for appends, so this is a bound, not knowledge: after a close or
        reset, the audio in flight when it happened (REPLAY_GUARD_S); after a silent death,
        everything since the server's last sign of life. The price is a possible duplicate
        of that much audio, which is better than a hole in the user's speech.
        """
        silent = isinstance(error, ConnectionLost) and error.silent
        return session.last_event_at if silent else session.failed_at - REPLAY_GUARD_S

    def _check_stable(self, now: float) -> None:
        since = self._connected_since
        if since is not None and self._backoff.attempts and \
                now - since >= self._settings.reconnect.stable_after_s:
            self._backoff.reset()

    def _switch_deadline(self, current: RealtimeSession, now: float) -> float:
        expires = current.expires_at_wall
        if expires is None:
            return now
        # Switch no later than 5 s before expiry, quiet moment or not.
        return now + max(0.0, expires - self._wall() - 5.0)

    def _check_rollover(self, current: RealtimeSession, now: float) -> None:
        if self._attempt is not None or self._uplink.pending is not None or \
                now < self._rollover_retry_at:
            return
        expires = current.expires_at_wall
        if expires is None:
            return
        remaining = expires - self._wall()
        if remaining <= self._settings.reconnect.rollover_margin_s:
            log.info("session %s expires in %.0fs; opening the next one",
                     current.session_id, remaining)
            self._start_attempt(for_rollover=True)

    def _check_stall(self, current: RealtimeSession, now: float) -> EdgeVoiceError | None:
        limit = self._settings.health.stall_timeout_s
        probe_at = current.probe_sent_at
        if probe_at is not None:
            if now - probe_at > self._settings.server.session_update_timeout_s:
                self._stats.add("stalls")
                current.fail(ConnectionLost(
                    f"session stalled: no server event for {now - current.last_event_at:.0f}s "
                    "and no answer to a probe", silent=True))
            return None
        if current.stalled_for(now) > limit:
            log.warning("no server event for %.0fs while sending speech; probing the session",
                        now - current.last_event_at,
                        extra={"edgevoice": {"EVENT": "stall_probe",
                                             "SESSION": current.session_id}})
            try:
                current.probe()
            except ConnectionLost as exc:
                current.fail(exc)
        return None

    def _close_retired(self, now: float) -> None:
        retired = self._uplink.take_retired()
        if retired is not None:
            self._draining.append((retired, now + DRAIN_OLD_SESSION_S))
            self._stats.set(session_id=self._uplink.target.session_id
                            if self._uplink.target else "")
            self._connected_since = now
        keep = []
        for session, until in self._draining:
            if now >= until or session.failed.is_set():
                session.close(1000)
                log.info("closed previous session %s", session.session_id)
            else:
                keep.append((session, until))
        self._draining = keep

    # -- stopping ------------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._stats.set(state="stopping")
        deadline = self._clock() + STOP_BUDGET_S
        left = self._uplink.drain(deadline)
        if left:
            log.info("stopping with %d chunks unsent", left)
        self._uplink.stop(timeout=1.0)
        attempt = self._attempt
        if attempt is not None:
            attempt.cancel.set()
            attempt.session.abort()
            attempt.thread.join(1.0)
        sessions = [s for s in (self._uplink.detach(), self._uplink.pending,
                                self._uplink.take_retired()) if s is not None]
        sessions += [s for s, _ in self._draining]
        for session in sessions:
            session.close(1000, "client stopping", join_timeout_s=1.0)
        if not self._capture.stop(timeout=2.5):
            log.warning("capture did not stop within 2.5s (a read hangs in the driver)")
        self._stats.set(state="stopped")
