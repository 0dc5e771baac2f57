"""The checks in their order, each skipped when one it needs did not pass.

Order (and so the exit code: that of the first failing check): config, models, key file
(only when run by hand), api key, alsa config, device, device open, level, dns, tcp, tls,
clock, handshake, session. Without valid settings nothing else can run; the audio and the
DNS/TCP/TLS checks do not need the key, the handshake and the session do.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgevoice.doctor.audio_checks import check_audio, use_service_alsa_config
from edgevoice.doctor.config_checks import check_config, check_models
from edgevoice.doctor.key_checks import check_key
from edgevoice.doctor.network_checks import check_network
from edgevoice.doctor.service import ServicePaths, service_paths
from edgevoice.doctor.verdicts import Check, skipped

LATER = ("api key", "device", "dns", "handshake", "session")


def run_checks(config: Path | None, seconds: float,
               service: ServicePaths | None = None) -> list[Check]:
    # The report says everything; the daemon's own log lines (device opened, session
    # configured) would only repeat it, unredacted by a handler nobody configured.
    edgevoice_log = logging.getLogger("edgevoice")
    saved = edgevoice_log.propagate, list(edgevoice_log.handlers)
    edgevoice_log.propagate = False
    edgevoice_log.handlers = [logging.NullHandler()]
    try:
        return _run(config, seconds, service or service_paths())
    finally:
        edgevoice_log.propagate, edgevoice_log.handlers = saved


def _run(config: Path | None, seconds: float, service: ServicePaths) -> list[Check]:
    config_check, settings = check_config(config)
    if settings is None:
        return [config_check, *(skipped(name, config_check, "no valid configuration")
                                for name in LATER)]
    checks = [config_check, check_models(settings)]
    key_checks, key = check_key(settings.server, service)
    checks += key_checks
    checks.append(use_service_alsa_config(service))  # before PortAudio starts
    checks += check_audio(settings.audio, seconds)
    checks += check_network(settings, key, key_checks[-1])
    return checks
