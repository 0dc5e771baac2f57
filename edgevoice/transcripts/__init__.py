"""Completed transcripts delivered to files and local programs, one JSON object a line.

The parts, each with one job:

- `router.TranscriptRouter` registers on the one dispatcher and turns a completed user
  transcript (`conversation.item.input_audio_transcription.completed`) or an assistant's
  (`response.output_audio_transcript.done`, `response.output_text.done`) into a
  `record.Transcript`, with wall-clock times mapped from the session's audio timeline;
  `spans.DeliveredSpans` keeps a transcript of replayed audio from being delivered twice.
- `delivery.Delivery` takes records from the downlink threads without ever blocking them
  (a bounded queue, drops counted) and writes them from one thread to the sinks:
  `jsonl.JsonlFile` (appended, rotated by size) and `broadcast.SocketBroadcast` (a Unix
  socket every local reader gets each line from).
- `paths` resolves the settings' "auto" and relative paths; `service.start_delivery`
  builds and starts the sinks the settings ask for.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgevoice.transcripts.delivery import Delivery
    from edgevoice.transcripts.record import Transcript
    from edgevoice.transcripts.router import TranscriptRouter
    from edgevoice.transcripts.service import start_delivery

__all__ = ["Delivery", "Transcript", "TranscriptRouter", "start_delivery"]

# Imported on first use (issue 12, lazy imports): the daemon always needs the router, the
# sinks (delivery, the socket, the file) only when the settings name one.
_WHERE = {"Delivery": "delivery", "Transcript": "record", "TranscriptRouter": "router",
          "start_delivery": "service"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
