"""The server: DNS, TCP, TLS (and the clock TLS depends on), handshake, one session.update.

DNS, TCP and TLS are tried directly (through the HTTP proxy websocket-client would use,
when one is set: then DNS and TCP concern the proxy and TLS is proven by the handshake).
After TLS, one `HEAD /` on the same connection fetches the server's `Date` header to
compare the clocks; nothing else is sent without the key. The handshake and the
session.update go through the daemon's own code (`compose.make_transport`,
`RealtimeSession.establish`), so they succeed or fail exactly as the daemon's would; the
session is closed right after `session.updated`: no audio is sent, nothing is billed
beyond that round trip.
"""

from __future__ import annotations

import datetime
import email.utils
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from edgevoice.audio import g711
from edgevoice.doctor.verdicts import Check, failed, passed, skipped, warned
from edgevoice.errors import (
    AuthError,
    ConfigError,
    ConnectionLost,
    EdgeVoiceError,
    ModelRejected,
)
from edgevoice.realtime import protocol
from edgevoice.realtime.link import SessionLink
from edgevoice.realtime.transport import Transport
from edgevoice.settings import DEFAULT_REALTIME_MODEL, Settings

CLOCK_SKEW_WARN_S = 60.0
MAX_HEAD_BYTES = 16 * 1024
CLOCK_FIX = ("set the clock and keep it set: `sudo timedatectl set-ntp true` (boards "
             "without a real-time clock need network time before edgevoice starts)")


@dataclass
class _Target:
    host: str
    port: int
    secure: bool
    proxy: str = ""


def _target(url: str) -> _Target:
    from edgevoice.realtime.transport import _proxy_for

    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    proxy_host, proxy_port, _ = _proxy_for(host, secure)
    if proxy_host:
        return _Target(proxy_host, int(proxy_port or 80), secure, f"{proxy_host}:{proxy_port}")
    return _Target(host, port, secure)


def _utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _resolve(host: str, port: int, timeout: float) -> list[Any]:
    """getaddrinfo on a helper thread (it cannot be interrupted), abandoned at the timeout."""
    box: dict[str, Any] = {}

    def lookup() -> None:
        try:
            box["result"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc

    thread = threading.Thread(target=lookup, name=f"resolve-{host}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return list(box["result"])


def check_network(settings: Settings, api_key: str | None, key_check: Check) -> list[Check]:
    server = settings.server
    target = _target(server.url)
    timeout = server.connect_timeout_s
    via = f" (proxy {target.proxy})" if target.proxy else ""
    names = ["dns", "tcp", "tls", "clock", "handshake", "session"]

    # DNS
    try:
        addresses = _resolve(target.host, target.port, timeout)
    except OSError as exc:
        text = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        dns = failed("dns", f"cannot resolve {target.host}{via}: {text}",
                     "check the network and /etc/resolv.conf (`resolvectl status`); is "
                     "server.url right?")
        return [dns, *(skipped(n, dns) for n in names[1:3]), _local_clock(time.time()),
                *(skipped(n, dns) for n in names[4:])]
    shown = sorted({a[4][0] for a in addresses})
    checks = [passed("dns", f"{target.host}{via} -> {', '.join(shown[:4])}")]

    # TCP
    started = time.monotonic()
    sock: socket.socket | None = None
    errors: list[str] = []
    for family, kind, proto, _, address in addresses:
        attempt = socket.socket(family, kind, proto)
        attempt.settimeout(timeout)
        try:
            attempt.connect(address)
        except OSError as exc:
            attempt.close()
            errors.append(_os_text(exc) if len(addresses) == 1 else
                          f"{address[0]}: {_os_text(exc)}")
            continue
        sock = attempt
        break
    if sock is None:
        tcp = failed("tcp", f"cannot connect to {target.host}:{target.port}{via}: "
                     + "; ".join(errors[:3]),
                     "the server is down or a firewall blocks the port: is server.url "
                     "right, does `curl -I https://<host>/` work from here?")
        return [*checks, tcp, skipped("tls", tcp), _local_clock(time.time()),
                *(skipped(n, tcp) for n in names[4:])]
    checks.append(passed("tcp", f"connected to {sock.getpeername()[0]}:{target.port}{via} "
                         f"in {1000 * (time.monotonic() - started):.0f} ms"))

    # TLS and the clock
    try:
        checks.extend(_tls_and_clock(sock, settings, target, timeout))
    finally:
        sock.close()
    tls = checks[-2]

    # The handshake and the session.update, through the daemon's own code
    if not key_check.ok or api_key is None:
        why = "no API key to authenticate with"
        return [*checks, skipped("handshake", key_check, why),
                skipped("session", key_check, why)]
    if tls.verdict == "fail":
        return [*checks, skipped("handshake", tls), skipped("session", tls)]
    return checks + _session_checks(settings, api_key)


def _os_text(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return exc.strerror or str(exc)


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """As the transport builds it (server.ca_file, else WEBSOCKET_CLIENT_CA_BUNDLE)."""
    cafile, capath = ca_file, None
    bundle = os.environ.get("WEBSOCKET_CLIENT_CA_BUNDLE")
    if not cafile and bundle:
        cafile, capath = (bundle, None) if os.path.isfile(bundle) else (None, bundle)
    return ssl.create_default_context(cafile=cafile, capath=capath)


def _tls_and_clock(sock: socket.socket, settings: Settings, target: _Target,
                   timeout: float) -> list[Check]:
    now = time.time()
    host = urlsplit(settings.server.url).hostname or ""
    if not target.secure:
        tls = warned("tls", "not used: server.url is ws:// (unencrypted; the key travels in "
                     "clear)", "use a wss:// URL") if not _is_local(host) else \
            passed("tls", "not used: ws:// to a local server")
        return [tls, _local_clock(now)]
    if target.proxy:
        return [passed("tls", f"through proxy {target.proxy}: verified by the handshake"),
                _local_clock(now)]
    try:
        tls_sock = _tls_context(settings.server.ca_file).wrap_socket(
            sock, server_hostname=host, do_handshake_on_connect=False)
        tls_sock.settimeout(timeout)
        tls_sock.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        message = str(exc.verify_message or exc)
        if "expired" in message or "not yet valid" in message:
            return [
                failed("tls", f"certificate of {host} rejected: {message}",
                       "the certificate is fine if the clock is wrong: see clock"),
                failed("clock", f"the local clock says {_utc(now)} and the server's "
                       f"certificate is '{message}': the clock is probably wrong", CLOCK_FIX),
            ]
        return [failed("tls", f"certificate of {host} rejected: {message}",
                       "a proxy or firewall intercepting TLS, or a private server: point "
                       "server.ca_file at its CA certificate"), _local_clock(now)]
    except (OSError, ssl.SSLError) as exc:
        return [failed("tls", f"TLS handshake with {host} failed: {_os_text(exc)}",
                       "something between here and the server breaks TLS (proxy, captive "
                       "portal, firewall)"), _local_clock(now)]
    try:
        cert = tls_sock.getpeercert() or {}
        until = str(cert.get("notAfter", "?"))
        tls = passed("tls", f"{tls_sock.version()}, certificate for {host} verified "
                     f"(valid until {until})")
        return [tls, _server_clock(tls_sock, host, timeout)]
    finally:
        tls_sock.close()


def _is_local(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _local_clock(now: float) -> Check:
    if now < datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC).timestamp():
        return failed("clock", f"the local clock says {_utc(now)}: it is not set", CLOCK_FIX)
    return passed("clock", f"local clock {_utc(now)} (no server time to compare with)")


def _server_clock(sock: ssl.SSLSocket, host: str, timeout: float) -> Check:
    """Compare with the Date header of one `HEAD /` (no key is sent)."""
    deadline = time.monotonic() + timeout
    head = b""
    try:
        sock.sendall(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: edgevoice-check\r\n"
                     "Connection: close\r\n\r\n".encode("ascii"))
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            data = sock.recv(4096)
            if not data:
                break
            head += data
    except OSError:
        pass
    now = time.time()
    match = re.search(rb"(?im)^date:[ \t]*([^\r\n]+)", head)
    if not match:
        return _local_clock(now)
    try:
        server_time = email.utils.parsedate_to_datetime(match.group(1).decode("latin-1"))
    except (ValueError, TypeError):
        return _local_clock(now)
    skew = now - server_time.timestamp()
    if abs(skew) > CLOCK_SKEW_WARN_S:
        return warned("clock", f"the local clock is {abs(skew):.0f} s "
                      f"{'ahead of' if skew > 0 else 'behind'} the server's "
                      f"({_utc(now)} here)", CLOCK_FIX)
    return passed("clock", f"within {max(1.0, abs(skew)):.0f} s of the server's "
                  f"({_utc(now)})")


# -- the handshake and the session --------------------------------------------------------


class _Connected:
    """The transport, connected already: establish()'s connect() does nothing again."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner

    @property
    def closed(self) -> bool:
        return self._inner.closed

    def connect(self) -> None:
        pass

    def send_event(self, event: dict[str, Any]) -> None:
        self._inner.send_event(event)

    def ping_if_due(self) -> None:
        self._inner.ping_if_due()

    def recv_text(self) -> str | None:
        return self._inner.recv_text()

    def close(self, code: int = 1000, reason: str = "") -> None:
        self._inner.close(code, reason)

    def abort(self) -> None:
        self._inner.abort()


class _SendNow:
    """The Outbox reduced to "send on the calling thread" (only one event is ever sent)."""

    def submit(self, event: dict[str, Any], to: SessionLink | None,
               urgent: bool = True) -> None:
        if to is None:
            raise ConnectionLost("no session to send to")
        to.send_event(event)


def _handshake_failure(exc: EdgeVoiceError) -> Check:
    text = str(exc)
    if isinstance(exc, AuthError):
        return failed("handshake", text,
                      "the server rejected the API key (HTTP 401/403): use a current key "
                      "of a project with Realtime access; for Azure set server.dialect: "
                      "azure", exc.exit_code)
    if isinstance(exc, ConfigError):  # a redirect, HTTP 400/404: url or model
        return failed("handshake", text, "check server.url and server.model (a current "
                      "model name, or the Azure deployment name)", exc.exit_code)
    status = re.search(r"HTTP (\d{3})", text)
    code = int(status.group(1)) if status else 0
    if code == 429 or (isinstance(exc, ConnectionLost) and exc.retry_after_s is not None):
        wait = exc.retry_after_s if isinstance(exc, ConnectionLost) else None
        waits = (f"the server asks to wait {wait:g} s (Retry-After)" if wait is not None
                 else "no Retry-After given")
        return failed("handshake", f"rate limited (HTTP 429): {waits}",
                      f"wait {wait:g} s and try again" if wait is not None else
                      "wait a minute and try again; then check the account's rate limits "
                      "(many devices on one key? a restart loop?)")
    if 500 <= code < 600:
        return failed("handshake", text, f"server trouble (HTTP {code}), not this setup: "
                      "try again later (status.openai.com); the daemon retries by itself")
    return failed("handshake", text, "the server accepted TCP but not the WebSocket "
                  "upgrade: a proxy in the way, or server.url is not a Realtime endpoint")


def _session_checks(settings: Settings, api_key: str) -> list[Check]:
    from edgevoice.compose import make_transport
    from edgevoice.realtime.session import RealtimeSession, new_dispatcher

    server = settings.server
    transport = make_transport(server, settings.session.mode, api_key)
    try:
        transport.connect()
    except EdgeVoiceError as exc:
        hand = _handshake_failure(exc)
        return [hand, skipped("session", hand)]
    asked = server.model if settings.session.mode == "conversation" else "transcription"
    checks = [passed("handshake", f"WebSocket upgrade accepted ({asked}, "
                     f"{settings.session.mode})")]
    session = RealtimeSession(_Connected(transport), settings.session, new_dispatcher(),
                              _SendNow(), update_timeout_s=server.session_update_timeout_s,
                              name="check")
    try:
        session.establish(threading.Event())
    except EdgeVoiceError as exc:
        session.abort()
        if isinstance(exc, AuthError):
            fix = "the server rejected the key or the account: check the key and billing"
        elif isinstance(exc, ModelRejected):
            fix = (f"set {'server.model' if 'server.model' in str(exc) else 'the model'} "
                   f"to a current model (the default is {DEFAULT_REALTIME_MODEL}; for Azure, "
                   "the deployment name)")
        elif isinstance(exc, ConfigError):
            fix = ("change the session.* setting named above (config/edgevoice.yaml lists "
                   "the accepted values)")
        else:
            fix = "the server did not answer the session.update in time: try again"
        return [*checks, failed("session", str(exc), fix, exc.exit_code)]
    try:
        session.close(1000, "edgevoice check done")
    except EdgeVoiceError:
        session.abort()
    fmt = settings.session.input_format
    wire = f"{protocol.FORMAT_TYPES[fmt]} {g711.wire_rate(fmt)} Hz"
    done = passed("session", f"session.update accepted (session {session.session_id or '?'}): "
                  f"input {wire}, as edgevoice sends; closed, no audio sent")
    return [*checks, done]
