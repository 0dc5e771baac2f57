"""`edgevoice status`: what the running daemon says about itself, from its status file.

Where the file is: `health.status_file`; "auto" (the default) is `$RUNTIME_DIRECTORY/
status.json` when systemd set that variable, else `/run/edgevoice/status.json` (the unit's
`RuntimeDirectory=edgevoice`), so a person running `edgevoice status` finds the service's.

The daemon rewrites the file every 2 s (atomically: a reader never sees half of it). It is
*running* when the pid in the file is alive (EPERM counts as alive: under `DynamicUser=`
the daemon is another user's process), and *stale* when the file was last updated more than
`STALE_AFTER_S` ago (or in the future: the clock moved).

Exit codes, as `systemctl status` (LSB) uses them:

- 0: running, and the status is fresh;
- 3: not running (no status file, the pid in it is gone, or it says "stopped"), or the
  status is stale (the last known status is still shown);
- 4: status unknown: the file cannot be read (permission denied: only the service and the
  `edgevoice` group may read it);
- 1: the file is not a status file (not a JSON object), or `health.status_file` is null
  (no status file is written), or another error of this command (78: invalid config).

`--json` prints the file's content plus `running` (bool, null when unknown), `stale`,
`age_s` and `status_file`; when there is no usable file, only those (and `error`).
Every text shown passes the log's redaction and loses control characters (a server's
error message is in the file; it must not drive the terminal).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgevoice.commands.common import config_arg, load
from edgevoice.errors import EXIT_FAILURE, EXIT_OK
from edgevoice.health.logsetup import redact
from edgevoice.health.status import STATUS_FILE_NAME, redact_data, runtime_path

EXIT_NOT_RUNNING = 3  # LSB "program is not running" (systemctl status of an inactive unit)
EXIT_UNKNOWN = 4  # LSB "program or service status is unknown"

DEFAULT_STATUS_FILE = Path("/run/edgevoice/status.json")  # the unit's RuntimeDirectory=
# The daemon writes every 2 s (daemon/app.py STATUS_FILE_EVERY_S): five missed updates.
STALE_AFTER_S = 10.0
MAX_FILE_BYTES = 1 << 20  # a status file is a few KiB

GROUP_HINT = ("members of the edgevoice group may read it: "
              "sudo usermod -aG edgevoice $USER, then log in again")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "status", help="show the running daemon's state (from its status file)",
        description="Show what the running daemon reports: state, session, model, rates, "
                    "reconnects, errors, audio captured and streamed, uptime. Exit 0 when "
                    "it runs and its status is fresh, 3 when it is not running or its "
                    "status is stale, 4 when the status file cannot be read (permission), "
                    "1 when the file is not a status file.")
    config_arg(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the status file's content plus running, stale, age_s")
    parser.set_defaults(func=run)


def status_path(setting: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The file to read: as the daemon resolves `health.status_file`, and for "auto" outside
    the service (no $RUNTIME_DIRECTORY) the unit's runtime directory."""
    path = runtime_path(setting, STATUS_FILE_NAME, environ)
    if path is None and setting == "auto":
        return DEFAULT_STATUS_FILE
    return path


def pid_alive(pid: object) -> bool | None:
    """Whether process `pid` exists; None when `pid` is not a usable pid."""
    # Never 0 or negative: kill(0, ...) and kill(-1, ...) address process groups.
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user (DynamicUser=)
    except (OSError, OverflowError):
        return None
    return True


class StatusUnreadable(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def read_status(path: Path) -> tuple[dict[str, Any], float]:
    """The file's JSON object and its modification time. Raises FileNotFoundError when there
    is none, StatusUnreadable otherwise."""
    try:
        with path.open("rb") as handle:
            mtime = os.fstat(handle.fileno()).st_mtime
            raw = handle.read(MAX_FILE_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(path) from None
    except PermissionError:
        raise StatusUnreadable(f"cannot read {path}: permission denied ({GROUP_HINT})",
                               EXIT_UNKNOWN) from None
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        raise StatusUnreadable(f"cannot read {path}: {reason}", EXIT_UNKNOWN) from None
    if len(raw) > MAX_FILE_BYTES:
        raise StatusUnreadable(f"{path} is not a status file (over {MAX_FILE_BYTES} bytes)",
                               EXIT_FAILURE)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StatusUnreadable(
            f"{path} is not a status file (invalid JSON: {exc}); the daemon replaces it "
            "atomically, so something else wrote it or it is damaged", EXIT_FAILURE) from None
    if not isinstance(data, dict):
        raise StatusUnreadable(f"{path} is not a status file (not a JSON object)",
                               EXIT_FAILURE)
    return data, mtime


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def assess(data: Mapping[str, Any], mtime: float, now: float) -> dict[str, Any]:
    """`running`, `stale` and `age_s` for a status read at `now` (wall clock)."""
    updated = _number(data.get("updated_at"))
    age = now - (updated if updated is not None else mtime)
    stale = not -STALE_AFTER_S <= age <= STALE_AFTER_S
    alive = pid_alive(data.get("pid"))
    running = (not stale) if alive is None else alive
    if data.get("state") == "stopped":
        running = False  # written on the way out
    return {"running": running, "stale": stale, "age_s": round(age, 1)}


def exit_code(verdict: Mapping[str, Any]) -> int:
    return EXIT_OK if verdict["running"] and not verdict["stale"] else EXIT_NOT_RUNNING


# -- the text for a person -----------------------------------------------------------------

def clean(value: object) -> str:
    """Printable, redacted text (no escape sequences from the file reach the terminal)."""
    text = redact(str(value))
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if seconds < 60:
        return f"{max(0.0, seconds):.1f}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _breakdown(by: object, total: int) -> str:
    text = f"{total}"
    if isinstance(by, dict):
        parts = sorted(((str(k), _int(v)) for k, v in by.items() if _int(v) > 0),
                       key=lambda kv: (-kv[1], kv[0]))
        if parts:
            text += " (" + ", ".join(f"{clean(k)} {v}" for k, v in parts) + ")"
    return text


def _khz(rate: float) -> str:
    return f"{rate / 1000:g} kHz"


def _bill_rows(data: Mapping[str, Any], c: Mapping[str, Any],
               chunks: Callable[[int], str]) -> list[tuple[str, str]]:
    """The current session's share of the bill, and the day's count against the cap."""
    rows: list[tuple[str, str]] = []
    s_captured = _number(data.get("session_seconds_captured"))
    s_streamed = _number(data.get("session_seconds_streamed"))
    if s_captured is not None and s_streamed is not None:
        text = f"{s_captured:.2f} s captured, {s_streamed:.2f} s streamed"
        if s_captured:
            text += f" ({100.0 * s_streamed / s_captured:.1f} %)"
        rows.append(("this session", text))
    today = _number(data.get("streamed_today_s"))
    if today is not None:
        cap = _number(data.get("max_streamed_s_per_day"))
        text = f"{today:.2f} s streamed"
        text += f" of a {cap:g} s daily cap" if cap is not None else " (no daily cap)"
        held = _int(c.get("chunks_capped"))
        if held:
            text += f"; held back by the cap: {chunks(held)}"
        rows.append(("today", text))
    return rows


def headline(data: Mapping[str, Any], verdict: Mapping[str, Any], path: Path) -> str:
    age = verdict["age_s"]
    pid = data.get("pid")
    pid_text = f"pid {clean(pid)}" if pid is not None else "no pid in the file"
    if data.get("state") == "stopped":
        return (f"edgevoice is not running (it stopped {duration(age)} ago; "
                f"last status in {path})")
    if pid_alive(pid) is False:
        return (f"edgevoice is not running ({pid_text} is gone; last status written "
                f"{duration(age)} ago to {path})")
    if verdict["stale"]:
        when = f"{duration(age)} ago" if age >= 0 else f"{duration(-age)} in the future"
        return (f"edgevoice status is STALE: last updated {when} ({pid_text}; it rewrites "
                f"{path} every 2s: hung or stopped? see journalctl -u edgevoice)")
    if not verdict["running"]:
        return f"edgevoice is not running ({pid_text}; status from {duration(age)} ago)"
    return f"edgevoice is running ({pid_text}), status updated {duration(age)} ago"


def render_text(data: Mapping[str, Any], verdict: Mapping[str, Any], path: Path) -> str:
    counters = data.get("counters")
    c: Mapping[str, Any] = counters if isinstance(counters, dict) else {}
    chunk_ms = _number(data.get("chunk_ms"))
    rows: list[tuple[str, str]] = []

    state = clean(data.get("state") or "unknown")
    for extra in ("detail", "waiting", "reload"):
        if data.get(extra):
            state += f": {clean(data[extra])}"
    if data.get("muted") is True:  # `edgevoice ctl mute`
        state += " (MUTED: no microphone audio leaves the device)"
    if data.get("capped") is True:  # stream.max_streamed_s_per_day
        state += f" (CAPPED: {clean(data.get('capped_reason') or 'daily cap reached')})"
    rows.append(("state", state))

    session = clean(data.get("session_id") or "none")
    age = _number(data.get("session_age_s"))
    if age is not None:
        session += f", {duration(age)} old"
    last_event = _number(data.get("last_server_event_age_s"))
    if last_event is not None:
        session += f", last server event {duration(last_event)} ago"
    rows.append(("session", session))

    model = clean(data.get("model") or "unknown")
    details = [f"mode {clean(data['mode'])}"] if data.get("mode") else []
    if chunk_ms is not None:
        details.append(f"{chunk_ms:g} ms chunks")
    rows.append(("model", model + (f" ({', '.join(details)})" if details else "")))

    rate = _number(data.get("capture_rate"))
    audio = f"{_khz(rate)} \u2192 24 kHz" if rate else "no microphone open"
    if data.get("capture_device"):
        audio += f" from {clean(data['capture_device'])}"
    rows.append(("rates", audio))
    raw_level = data.get("capture_level_dbfs")
    level = _number(raw_level)
    if raw_level == -math.inf:  # "-Infinity" in the file: all samples zero
        level_text = "digital silence (-inf dBFS)"
    else:
        level_text = f"{level:.1f} dBFS" if level is not None else "-"
    rows.append(("capture level", level_text))

    rows.append(("reconnects", _breakdown(data.get("reconnects_by_reason"),
                                          _int(c.get("reconnects")))))
    rows.append(("rollovers", str(_int(c.get("rollovers")))))
    rows.append(("stall recoveries", str(_int(c.get("stalls")))))
    rows.append(("server errors", _breakdown(data.get("server_errors_by_code"),
                                             _int(c.get("server_errors")))))
    rows.append(("last error", clean(data.get("last_error") or "none")))

    def chunks(n: int) -> str:
        seconds = f"{n * chunk_ms / 1000:.2f} s, " if chunk_ms is not None else ""
        return f"{seconds}{n} chunks"

    dropped = _int(c.get("chunks_dropped_outage"))
    rows.append(("dropped audio",
                 f"{chunks(dropped)} (outage buffer full); capture: "
                 f"{_int(c.get('capture_dropped_blocks'))} blocks dropped, "
                 f"{_int(c.get('capture_overflows'))} overflows"))
    rows.append(("replayed audio", chunks(_int(c.get("chunks_replayed")))))

    captured = _number(data.get("seconds_captured"))
    streamed = _number(data.get("seconds_streamed"))
    if captured is not None or streamed is not None:
        text = (f"{captured or 0.0:.2f} s captured, {streamed or 0.0:.2f} s streamed")
        if captured and streamed is not None:
            text += f" ({100.0 * streamed / captured:.1f} %)"
        queued = _number(data.get("uplink_queue_chunks"))
        if queued is not None:
            text += f", {queued:g} chunks queued"
        rows.append(("captured", text))
    rows += _bill_rows(data, c, chunks)
    if data.get("gate_mode"):  # the speech gate (stream.gate)
        gate = f"{clean(data['gate_mode'])}: {clean(data.get('gate') or 'unknown')}"
        if data.get("gate_reason"):
            gate += f" ({clean(data['gate_reason'])})"
        gated = _int(c.get("chunks_gated"))
        if gated:
            gate += f"; kept back: {chunks(gated)}"
        rows.append(("speech gate", gate))
    played = _number(data.get("seconds_played"))  # once playback exists
    if played is not None:
        rows.append(("played", f"{played:.2f} s, {_int(data.get('barge_ins'))} barge-ins"))

    uptime = _number(data.get("uptime_s"))
    text = duration(uptime) if uptime is not None else "-"
    started = _number(data.get("started_at"))
    if started is not None:
        text += time.strftime(" (since %Y-%m-%d %H:%M:%S %Z)", time.localtime(started))
    if data.get("version"):
        text += f", edgevoice {clean(data['version'])}"
    rows.append(("uptime", text))

    width = max(len(label) for label, _ in rows)
    lines = [headline(data, verdict, path)]
    lines += [f"  {label + ':':<{width + 1}} {value}" for label, value in rows]
    return "\n".join(lines)


# -- the command ---------------------------------------------------------------------------

def _fail_json(path: Path | None, running: bool | None, error: str) -> str:
    return json.dumps({"running": running, "stale": None, "age_s": None,
                       "status_file": str(path) if path else None, "error": clean(error)},
                      indent=2, sort_keys=True)


def run(args: argparse.Namespace) -> int:
    try:
        code = _run(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `edgevoice status | head -3`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return code


def _run(args: argparse.Namespace) -> int:
    settings = load(args)
    path = status_path(settings.health.status_file)
    if path is None:
        message = ("health.status_file is null in the configuration: the daemon writes no "
                   "status file (see systemctl status edgevoice)")
        if args.json:
            print(_fail_json(None, None, message))
        print(f"edgevoice: {message}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        data, mtime = read_status(path)
    except FileNotFoundError:
        message = f"not running (no status file at {path})"
        print(_fail_json(path, False, message) if args.json else f"edgevoice is {message}")
        return EXIT_NOT_RUNNING
    except StatusUnreadable as exc:
        if args.json:
            print(_fail_json(path, None, str(exc)))
        print(f"edgevoice: {clean(exc)}", file=sys.stderr)
        return exc.exit_code
    verdict = assess(data, mtime, time.time())
    if args.json:
        out = {**redact_data(data), **verdict, "status_file": str(path)}
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(render_text(data, verdict, path))
    return exit_code(verdict)
