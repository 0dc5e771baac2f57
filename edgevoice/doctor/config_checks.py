"""Configuration checks: the file parses and validates; the models configured are current."""

from __future__ import annotations

from pathlib import Path

from edgevoice.doctor.verdicts import Check, failed, passed, warned
from edgevoice.errors import EXIT_CONFIG, ConfigError
from edgevoice.realtime.models import retirements
from edgevoice.settings import Settings, load_settings


def check_config(path: Path | None) -> tuple[Check, Settings | None]:
    """The settings as the daemon would load them (one line naming the key when invalid)."""
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        where = str(path) if path is not None else "the built-in defaults"
        return failed("config", str(exc),
                      f"edit {where}: the key and the accepted values are named above "
                      "(config/edgevoice.yaml documents every key)", EXIT_CONFIG), None
    source = str(path) if path is not None else "no file, built-in defaults"
    model = (settings.session.transcription_model if settings.session.mode == "transcribe"
             else settings.server.model)
    what = f"{settings.session.mode}, {model}"
    return passed("config", f"{source}: valid ({what}, {settings.server.url})"), settings


def check_models(settings: Settings) -> Check:
    """A model with an announced shutdown is a warning naming its date (it still works)."""
    # As the daemon warns at start: an Azure deployment name is not a model name.
    realtime = settings.server.model if settings.server.dialect == "openai" else None
    transcription = settings.session.transcription_model
    found = retirements(realtime, transcription)
    if not found:
        names = [n for n in (realtime, transcription) if n]
        return passed("models", ", ".join(names) + ": current (no announced shutdown)")
    detail = "; ".join(f"{r.setting}: {r.model} shuts down on {r.shutdown.isoformat()}"
                       for r in found)
    return warned("models", detail, "; ".join(r.warning() for r in found))
