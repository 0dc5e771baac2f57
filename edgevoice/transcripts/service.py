"""The sinks the settings ask for, started, behind one `Delivery` (or none at all).

A sink that cannot start (the socket path is taken, the directory is missing) is logged
and left out; the daemon streams on without it, as without the control socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from edgevoice.settings import TranscriptsSettings
from edgevoice.transcripts.broadcast import SocketBroadcast
from edgevoice.transcripts.delivery import Delivery, Sink
from edgevoice.transcripts.jsonl import JsonlFile
from edgevoice.transcripts.paths import jsonl_path, socket_path

log = logging.getLogger("edgevoice.transcripts")


def start_delivery(settings: TranscriptsSettings, count: Callable[[str, int], None],
                   environ: Mapping[str, str] | None = None) -> Delivery | None:
    sinks: list[Sink] = []
    file_path = jsonl_path(settings.jsonl_file, environ)
    if file_path is not None:
        sinks.append(JsonlFile(file_path, settings.max_bytes, settings.keep))
        log.info("transcripts to %s", file_path,
                 extra={"edgevoice": {"EVENT": "transcripts.file"}})
    sock_path = socket_path(settings.socket, environ)
    if settings.socket is not None and sock_path is None:
        log.info("transcripts.socket: auto needs $RUNTIME_DIRECTORY (systemd); give a "
                    "path to have a transcript socket outside systemd",
                    extra={"edgevoice": {"EVENT": "transcripts.unavailable"}})
    if sock_path is not None:
        broadcast = SocketBroadcast(sock_path)
        try:
            broadcast.start()
        except OSError as exc:
            log.error("transcript socket %s unavailable, readers will not get transcripts: "
                      "%s", sock_path, exc,
                      extra={"edgevoice": {"EVENT": "transcripts.unavailable"}})
        else:
            sinks.append(broadcast)
    if not sinks:
        return None
    delivery = Delivery(sinks, count)
    delivery.start()
    return delivery
