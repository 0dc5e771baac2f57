"""Local Realtime-compatible server for demos and tests (needs the ``devserver`` extra)."""

from .server import DevServer, SessionRecord

__all__ = ["DevServer", "SessionRecord"]
