"""The exception tree, arranged by what the supervisor must do about each failure.

The class decides the action (retry, exit 77, exit 78), so a handler never has to parse
messages to know whether to reconnect.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CREDENTIALS = 77  # systemd: RestartPreventExitStatus, a restart cannot fix a bad key
EXIT_CONFIG = 78  # EX_CONFIG


class EdgeVoiceError(Exception):
    """Base of every error edgevoice raises on purpose."""

    exit_code = EXIT_FAILURE


class ConfigError(EdgeVoiceError):
    """The settings (file, value, or a session shape the server rejected) are wrong."""

    exit_code = EXIT_CONFIG


class AudioDeviceError(EdgeVoiceError):
    """The capture or playback device failed, vanished, or cannot be opened."""


class TransportError(EdgeVoiceError):
    """Anything that went wrong talking to the server."""


class ConnectionLost(TransportError):
    """Transient: reconnect with backoff.

    ``retry_after_s`` carries a server-imposed minimum wait (HTTP 429 Retry-After).
    ``silent`` marks a peer that stopped answering (stall, no pong): whatever was sent since
    its last sign of life is presumed unread and is replayed to the next session.
    """

    def __init__(
        self,
        message: str,
        *,
        close_code: int | None = None,
        retry_after_s: float | None = None,
        silent: bool = False,
    ) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.retry_after_s = retry_after_s
        self.silent = silent


class AuthError(TransportError):
    """Fatal: the server rejected the credentials or the account; retrying cannot help."""

    exit_code = EXIT_CREDENTIALS


class ProtocolError(TransportError):
    """The server sent something we cannot interpret (malformed JSON, wrong frame type)."""


class EndpointRejected(ConfigError):
    """The server refused the endpoint itself (HTTP 400/404 at handshake, a redirect).

    Fatal on the first connection after start or reload (the settings are wrong); once a
    connection with these settings has worked, the supervisor retries it with a long
    backoff instead: one bad answer from a proxy must not take an unattended device down.
    """


class ModelRejected(EndpointRejected):
    """The server does not know (or no longer serves) the configured model."""


class SessionConfigRejected(ConfigError):
    """The server refused our session shape (an ``error`` for ``session.update``, close 4000)."""
