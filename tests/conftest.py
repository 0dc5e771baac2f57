"""Fixtures shared by the integration tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from daemon_harness import KEY
from systemd_fixtures import NotifyRecorder

from edgevoice.devserver import DevServer


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[DevServer]:
    """A devserver on 127.0.0.1 (free port) that expects the harness key (any key in a
    module marked `any_key`); always stopped."""
    srv = DevServer(api_key=None if request.node.get_closest_marker("any_key") else KEY)
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


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Whatever a test installs on the root logger is removed again afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), list(root.filters), root.level)
    yield
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    for flt in list(root.filters):
        if flt not in saved[1]:
            root.removeFilter(flt)
    root.setLevel(saved[2])
