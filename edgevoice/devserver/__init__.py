"""Local Realtime-compatible server for demos and tests (needs the ``devserver`` extra).

`DevServer` is imported on first use: `edgevoice --help` and every other command build the
devserver's options (`main.add_arguments`) without importing websockets and the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import DevServer, SessionRecord

__all__ = ["DevServer", "SessionRecord"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
