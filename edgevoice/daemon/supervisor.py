"""The supervisor: the main thread's loop over connection lifecycle and health.

It is the one place that decides what a failure means (retry, roll over, exit 77/78), so
the workers only report. It ticks ten times a second while something is under way (a
connect, a switch, a probe, an outage) and otherwise only when something is due (the
caller's `next_tick_in`: a watchdog ping, the status file), at least every IDLE_TICK_S:
each wake-up of the main thread costs CPU (the GIL, the tick's own work), which is what an
idle device spends most. A signal or a finished connect wakes it at once (`Waker`).
Connecting happens on a helper thread so that the loop never blocks on the network.

A reload hands it new settings (`apply_settings`): session fields go to the open sessions as
partial updates, and a changed server or mode opens a new session that replaces the
current one at a quiet moment, exactly as a rollover does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgevoice.clock import Clock
from edgevoice.daemon.backlog import ChunkBacklog
from edgevoice.daemon.backoff import Backoff
from edgevoice.daemon.ports import CaptureControl, UplinkControl
from edgevoice.daemon.replay import unread_since
from edgevoice.daemon.stats import Stats
from edgevoice.errors import (
    EXIT_OK,
    AuthError,
    ConfigError,
    ConnectionLost,
    EdgeVoiceError,
    EndpointRejected,
)
from edgevoice.realtime.link import SessionLink
from edgevoice.settings import Settings

log = logging.getLogger("edgevoice.supervisor")

TICK_S = 0.1  # while something is under way
IDLE_TICK_S = 0.5  # streaming steadily or idle: a session's failure is seen within this
STOP_BUDGET_S = 1.0  # flush what can be sent on shutdown, then close
DRAIN_OLD_SESSION_S = 3.0  # after a rollover, let the old session's last events arrive
QUIET_LOG_AFTER = 5  # consecutive failures logged individually, then one summary line
SWITCH_AFTER_RELOAD_S = 30.0  # a changed server replaces the session by then, quiet or not
ENDPOINT_RETRY_S = 300.0  # at least this long between tries of a server that rejected us
STOP_BUDGET_WORKERS_S = 2.5  # every worker asked to stop, then all joined within this


def _retry_after(error: EdgeVoiceError) -> float | None:
    """The server's minimum wait (HTTP 429 Retry-After), if it named one."""
    return error.retry_after_s if isinstance(error, ConnectionLost) else None


def reconnect_reason(error: EdgeVoiceError, expired: bool) -> str:
    """The fixed label (stats.RECONNECT_REASONS) for why a streaming session ended."""
    if expired:
        return "expired"
    if isinstance(error, EndpointRejected):
        return "rejected"
    if not isinstance(error, ConnectionLost):
        return "other"
    text = str(error)
    if error.close_code == 1009 or text.startswith("frame too large"):
        return "frame_too_large"
    if error.silent:
        if "no pong" in text:
            return "pong_timeout"
        if "stopped reading" in text:
            return "send_timeout"
        return "stall"
    if error.close_code in (None, 1005, 1006):
        return "reset"
    return "closed"


class Waker:
    """What the main loop sleeps on: a pipe, so that a signal can end the sleep as well as a
    thread. Made Python's signal wake-up fd (in the main thread), the C-level handler writes
    to it, so a SIGTERM or SIGHUP (whose Python handlers only set flags) ends the wait at
    once. A threading.Event cannot be set from a Python signal handler safely (the handler
    may run while the main thread holds the Event's lock). Open only while the loop runs:
    `wake()` before or after is a no-op, and no descriptor outlives the loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fds: tuple[int, int] | None = None
        self._old_wakeup_fd: int | None = None

    def open(self) -> None:
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        with self._lock:
            self._fds = (read, write)
        if threading.current_thread() is threading.main_thread():  # not in a unit test's
            self._old_wakeup_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)

    def wake(self) -> None:
        """From any thread."""
        with self._lock:
            if self._fds is not None:
                with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending
                    os.write(self._fds[1], b"\0")

    def wait(self, timeout: float) -> None:
        fds = self._fds
        if fds is None:
            time.sleep(max(0.0, timeout))
            return
        if select.select([fds[0]], [], [], max(0.0, timeout))[0]:
            try:
                while os.read(fds[0], 512):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None
        with self._lock:
            fds, self._fds = self._fds, None
        for fd in fds or ():
            os.close(fd)


@dataclass
class _Attempt:
    session: SessionLink
    thread: threading.Thread
    cancel: threading.Event
    generation: int  # of the connection settings it was made with
    error: EdgeVoiceError | None = None
    for_rollover: bool = False
    done: bool = False  # establish() returned (its thread may not have ended yet)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        make_session: Callable[[str], SessionLink],
        capture: CaptureControl,
        uplink: UplinkControl,
        backlog: ChunkBacklog,
        stats: Stats,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        on_tick: Callable[[], None] | None = None,
        on_session_ready: Callable[[SessionLink], None] | None = None,
        next_tick_in: Callable[[], float | None] | None = None,
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
        self._on_session_ready = on_session_ready  # a new session is configured: seed it
        self._next_tick_in = next_tick_in  # seconds until on_tick has something due
        r = settings.reconnect
        self._backoff = Backoff(r.initial_s, r.max_s, r.multiplier)
        self._waker = Waker()
        self.stop_requested = False  # set from a signal handler: a plain flag, nothing else
        self._attempt: _Attempt | None = None
        self._next_attempt_at = 0.0
        self._rollover_retry_at = 0.0
        self._connected_since: float | None = None
        self._failures_in_row = 0
        self._draining: list[tuple[SessionLink, float]] = []
        self._session_no = 0
        # Connection settings (server, mode) change on reload; sessions made before are
        # replaced. Until one session with the current ones has been configured, a server
        # that rejects the endpoint or the model means the settings are wrong (exit 78).
        self._generation = 0
        self._current_generation = 0  # of the session the uplink streams to
        self._pending_generation = 0  # of the next session, until the switch
        self._factory_before_reload: Callable[[str], SessionLink] | None = None
        self._settings_proven = False
        self._replace_by: float | None = None  # replace the current session by then
        self._workers_started = False
        self.exit_code = EXIT_OK
        self.deadline: float | None = None  # `run --duration`: stop cleanly at this time

    def request_stop(self) -> None:
        self.stop_requested = True
        self._waker.wake()  # a thread's request (a signal's handler only sets a flag)

    @property
    def settings(self) -> Settings:
        return self._settings

    def replace_session_factory(self, make_session: Callable[[str], SessionLink]) -> None:
        """The next sessions are made from reloaded session settings; the open ones got the
        changes as an update. If the server rejects that update, the factory from before
        comes back (`_reload_rejected`): the next session must not carry a value the server
        refused, or a routine reconnect would end the daemon with exit 78."""
        self._factory_before_reload = self._make_session
        self._make_session = make_session

    def apply_settings(self, new: Settings,
                       make_session: Callable[[str], SessionLink] | None = None) -> None:
        """A reload: `make_session` is given when the connection settings changed."""
        now = self._clock()
        self._settings = new
        r = new.reconnect
        self._backoff.reconfigure(r.initial_s, r.max_s, r.multiplier)
        if make_session is not None:
            self._make_session = make_session
            self._generation += 1
            self._settings_proven = False
            self._rollover_retry_at = 0.0
            attempt = self._attempt
            if attempt is not None:  # made with the old settings: start over
                attempt.cancel.set()
                attempt.session.abort()
            pending = self._uplink.pending
            if pending is not None and self._uplink.drop_pending(pending):
                pending.abort()
            if self._uplink.target is not None:
                self._replace_by = now + SWITCH_AFTER_RELOAD_S
                log.info("reload: connection settings changed; opening a new session to "
                         "switch to at a quiet moment")
            else:
                self._next_attempt_at = now
            return
        sessions = [self._uplink.target, self._uplink.pending]
        if self._attempt is not None:
            sessions.append(self._attempt.session)
        for session in sessions:
            if session is not None and not session.failed.is_set():
                session.reconfigure(new.session)

    # -- main loop -----------------------------------------------------------------------

    def start_workers(self) -> None:
        if self._workers_started:
            return
        self._workers_started = True
        self._capture.start()
        self._uplink.start()
        self._stats.set(state="connecting")

    def run(self) -> int:
        self.start_workers()
        self._waker.open()
        try:
            while not self.stop_requested:
                now = self._clock()
                if self.deadline is not None and now >= self.deadline:
                    log.info("run duration reached; stopping")
                    break
                fatal = self.step(now)
                if fatal is not None:
                    self.exit_code = fatal.exit_code
                    log.critical("%s", fatal, extra={"edgevoice": {"EVENT": "fatal"}})
                    self._stats.set(state="failed", last_error=str(fatal))
                    break
                if self._on_tick is not None:
                    self._on_tick()
                if not self.stop_requested:
                    self._waker.wait(self._wait_s(self._clock()))
        finally:
            try:
                self._shutdown()
            finally:
                self._waker.close()
        return self.exit_code

    def _wait_s(self, now: float) -> float:
        """How long the loop may sleep: TICK_S while something is under way, else until
        the next thing due (the run's deadline, the caller's), at most IDLE_TICK_S."""
        target = self._uplink.target
        if target is None or self._attempt is not None or self._draining or \
                self._uplink.pending is not None or target.probe_sent_at is not None or \
                target.failed.is_set():
            return TICK_S
        wait = IDLE_TICK_S
        if self.deadline is not None:
            wait = min(wait, self.deadline - now)
        due = self._next_tick_in() if self._next_tick_in is not None else None
        if due is not None:
            wait = min(wait, due)
        return max(0.0, wait)

    def step(self, now: float) -> EdgeVoiceError | None:
        """One look at every session and attempt; returns a fatal error to exit with."""
        attempt = self._attempt
        if attempt is not None and (attempt.done or not attempt.thread.is_alive()):
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
        if pending is not None and pending.failed.is_set() and \
                self._uplink.drop_pending(pending):
            # The next session died before the switch: forget it, roll over again after a
            # backoff delay (a server that accepts and drops sessions is not hammered).
            delay = self._backoff.next_delay(_retry_after(pending.failure)
                                             if pending.failure is not None else None)
            self._rollover_retry_at = now + delay
            log.warning("next session %s failed before the switch: %s; retry in %.1fs",
                        pending.session_id, pending.failure, delay)
            pending.abort()
        if current is None and self._attempt is None and now >= self._next_attempt_at:
            self._start_attempt(for_rollover=False)
        if current is not None:
            self._check_stable(now)
            self._check_rollover(current, now)
            fatal = self._check_stall(current, now)
            if fatal is not None:
                return fatal
        for session in (current, self._uplink.pending):
            text = session.take_reload_rejection() if session is not None else None
            if text:
                self._reload_rejected(text)
        self._close_retired(now)
        return None

    def _reload_rejected(self, text: str) -> None:
        self._stats.set(reload=text)
        if self._factory_before_reload is not None:
            self._make_session = self._factory_before_reload
            self._factory_before_reload = None
            log.warning("the next sessions keep the session settings from before the reload",
                        extra={"edgevoice": {"EVENT": "reload_reverted"}})

    # -- connecting ----------------------------------------------------------------------

    def _start_attempt(self, for_rollover: bool) -> None:
        self._session_no += 1
        session = self._make_session(f"s{self._session_no}")
        cancel = threading.Event()
        attempt = _Attempt(session, threading.Thread(), cancel, self._generation,
                           for_rollover=for_rollover)

        def establish() -> None:
            try:
                session.establish(cancel)
            except EdgeVoiceError as exc:
                attempt.error = exc
            except Exception as exc:
                log.exception("unexpected error while connecting")
                attempt.error = ConnectionLost(f"unexpected {type(exc).__name__} while "
                                               "connecting")
            finally:
                attempt.done = True
                self._waker.wake()  # streaming (or the retry) starts without a tick's delay

        attempt.thread = threading.Thread(target=establish, name=f"connect-{session.name}",
                                          daemon=True)
        self._attempt = attempt
        if not for_rollover:
            self._stats.set(state="connecting")
        attempt.thread.start()

    def _attempt_finished(self, attempt: _Attempt, now: float) -> EdgeVoiceError | None:
        error = attempt.error
        if attempt.generation != self._generation:
            attempt.session.abort()  # made with settings a reload replaced
            return None
        if error is None and attempt.cancel.is_set():
            error = ConnectionLost("cancelled")
        if error is not None:
            attempt.session.abort()
            return self._connect_failed(error, now, attempt.for_rollover)
        session = attempt.session
        session.start_reader()
        if self._on_session_ready is not None:
            self._on_session_ready(session)  # before any audio: urgent events go first
        self._settings_proven = True
        self._stats.add("connections")
        self._stats.set(session_id=session.session_id, reload="")
        if attempt.for_rollover and self._uplink.target is not None:
            deadline = self._switch_deadline(self._uplink.target, now)
            if self._replace_by is not None:
                deadline = min(deadline, self._replace_by)
            self._uplink.offer_next(session, deadline)
            self._pending_generation = attempt.generation
            log.info("next session %s ready; switching at a quiet moment",
                     session.session_id)
            return None
        self._current_generation = attempt.generation
        self._replace_by = None
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
        if isinstance(error, EndpointRejected) and self._settings_proven:
            self._endpoint_rejected(error, now, for_rollover)
            return None
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

    def _endpoint_rejected(self, error: EdgeVoiceError, now: float,
                           for_rollover: bool) -> None:
        """A server that accepted these settings before now rejects them: a proxy's
        hiccup, most likely. Never fatal then, but slow and loud."""
        self._stats.add("connect_failures")
        delay = max(ENDPOINT_RETRY_S, self._backoff.next_delay())
        if for_rollover:
            self._rollover_retry_at = now + delay
        else:
            self._next_attempt_at = now + delay
            self._failures_in_row += 1
            self._stats.set(state="offline", last_error=str(error),
                            detail=f"server rejects what worked before; retry in "
                                   f"{delay:.0f}s")
        log.error("%s; it worked before, so retrying in %.0fs (fix the settings if this "
                  "persists)", error, delay, extra={"edgevoice": {"EVENT": "endpoint_rejected"}})

    # -- while streaming -----------------------------------------------------------------

    def _session_failed(self, session: SessionLink, now: float) -> EdgeVoiceError | None:
        error = session.failure or ConnectionLost("session ended")
        if isinstance(error, EndpointRejected) and self._settings_proven:
            error = ConnectionLost(str(error))  # it streamed: retry (with the long backoff)
            self._next_attempt_at = now + ENDPOINT_RETRY_S
        elif isinstance(error, AuthError | ConfigError):
            return error
        self._uplink.detach(replay_since=unread_since(session, error))
        session.abort()
        self._connected_since = None
        self._stats.reconnect(reconnect_reason(error, session.expired))
        pending = self._uplink.pending
        code = error.close_code if isinstance(error, ConnectionLost) else None
        log.warning("session %s ended: %s", session.session_id, error,
                    extra={"edgevoice": {"EVENT": "session_lost", "SESSION": session.session_id,
                                         "CLOSE_CODE": code}})
        if pending is not None:
            self._uplink.attach(pending, self._capture.next_seq - 1)
            self._current_generation = self._pending_generation
            self._connected_since = now
            return None
        if session.expired:
            self._next_attempt_at = now  # expiry is routine: reconnect at once
        else:
            self._next_attempt_at = max(self._next_attempt_at,
                                        now + self._backoff.next_delay(_retry_after(error)))
        self._stats.set(state="offline", last_error=str(error))
        return None

    def _check_stable(self, now: float) -> None:
        since = self._connected_since
        if since is not None and self._backoff.attempts and \
                now - since >= self._settings.reconnect.stable_after_s:
            self._backoff.reset()

    def _switch_deadline(self, current: SessionLink, now: float) -> float:
        expires = current.expires_at_wall
        if expires is None:
            return now
        # Switch no later than 5 s before expiry, quiet moment or not.
        return now + max(0.0, expires - self._wall() - 5.0)

    def _check_rollover(self, current: SessionLink, now: float) -> None:
        if self._attempt is not None or self._uplink.pending is not None or \
                now < self._rollover_retry_at:
            return
        if self._current_generation != self._generation:
            log.info("opening a session with the reloaded connection settings")
            self._start_attempt(for_rollover=True)
            return
        expires = current.expires_at_wall
        if expires is None:
            return
        remaining = expires - self._wall()
        if remaining <= self._settings.reconnect.rollover_margin_s:
            log.info("session %s expires in %.0fs; opening the next one",
                     current.session_id, remaining)
            self._start_attempt(for_rollover=True)

    def _check_stall(self, current: SessionLink, now: float) -> EdgeVoiceError | None:
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
            current.probe()  # sent by the uplink, ahead of any queued audio
        return None

    def _close_retired(self, now: float) -> None:
        retired = self._uplink.take_retired()
        if retired is not None:  # the uplink switched to the next session
            self._current_generation = self._pending_generation
            if self._current_generation == self._generation:
                self._replace_by = None
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
        # Every stop first, then the joins, within one budget.
        self._uplink.request_stop()
        self._capture.request_stop()
        attempt = self._attempt
        if attempt is not None:
            attempt.cancel.set()
            attempt.session.abort()
        join_by = self._clock() + STOP_BUDGET_WORKERS_S
        self._uplink.join(max(0.1, join_by - self._clock()))
        if attempt is not None:
            attempt.thread.join(max(0.1, min(1.0, join_by - self._clock())))
        sessions = [s for s in (self._uplink.detach(), self._uplink.pending,
                                self._uplink.take_retired()) if s is not None]
        sessions += [s for s, _ in self._draining]
        for session in sessions:
            session.close(1000, "client stopping",
                          join_timeout_s=max(0.1, min(1.0, join_by - self._clock())))
        if not self._capture.join(max(0.1, join_by - self._clock())):
            log.warning("capture did not stop in time (a read hangs in the driver)")
        self._stats.set(state="stopped")
