"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from daemon_harness import KEY
from systemd_fixtures import NotifyRecorder

from edgevoice.devserver import DevServer


@pytest.fixture
def server() -> Iterator[DevServer]:
    """A devserver on 127.0.0.1 (free port) that expects the harness key; always stopped."""
    srv = DevServer(api_key=KEY)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def notify() -> Iterator[NotifyRecorder]:
    """A notify socket drained by a thread, as systemd's would be; always closed."""
    recorder = NotifyRecorder()
    try:
        yield recorder
    finally:
        recorder.close()
