"""The time sources every worker takes by injection, so tests can run them on a fake clock.

Monotonic time drives timeouts, backoff and liveness; wall time only maps the server's
``expires_at`` (unix seconds) onto it.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]
