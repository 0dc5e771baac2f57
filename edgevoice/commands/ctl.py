"""`edgevoice ctl`: talk to the running daemon through its control socket.

Exit codes: 0 done; 1 the daemon refused the command (its reason on stderr, e.g. `say`
while offline or in transcribe mode); 2 no daemon to talk to (no socket, connection
refused, no reply) or a usage error (argparse's 2, e.g. an unknown command). Never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgevoice.commands.common import config_arg, load
from edgevoice.daemon.control import DEFAULT_SOCKET, request, resolve_socket
from edgevoice.errors import EXIT_FAILURE, EXIT_OK
from edgevoice.health.logsetup import redact

EXIT_NO_DAEMON = 2
REPLY_TIMEOUT_S = 5.0


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "ctl", help="control the running daemon: mute, unmute, say, status",
        description="Send one command to the running daemon through its control socket "
                    "(control.socket). Exit 0 done, 1 refused by the daemon, 2 no daemon "
                    "or a usage error.")
    config_arg(parser)
    parser.add_argument("--socket", type=Path, default=None,
                        help="the control socket (default: control.socket from the "
                             f"configuration; 'auto' is {DEFAULT_SOCKET})")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("mute", help="stop sending microphone audio (drops what is queued; "
                                    "kept across reloads and restarts)")
    actions.add_parser("unmute", help="send microphone audio again")
    say = actions.add_parser("say", help="have the assistant speak TEXT in the session")
    say.add_argument("text", nargs="+", metavar="TEXT")
    actions.add_parser("status", help="print the daemon's status snapshot as JSON")
    parser.set_defaults(func=run)


def socket_path(args: argparse.Namespace) -> Path | None:
    """--socket, else the configuration's control.socket. "auto" outside the unit's
    environment means the packaged unit's RuntimeDirectory."""
    explicit: Path | None = args.socket
    if explicit is not None:
        return explicit
    setting = load(args).control.socket
    path = resolve_socket(setting)
    if path is None and setting == "auto":
        path = DEFAULT_SOCKET
    return path


def run(args: argparse.Namespace) -> int:
    path = socket_path(args)
    if path is None:
        print("edgevoice: the control socket is off (control.socket: null); pass --socket",
              file=sys.stderr)
        return EXIT_NO_DAEMON
    message: dict[str, Any] = {"cmd": args.action}
    if args.action == "say":
        message["text"] = " ".join(args.text)
    try:
        reply = request(path, message, timeout_s=REPLY_TIMEOUT_S)
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"edgevoice: no daemon is listening at {path} (is edgevoice running?)",
              file=sys.stderr)
        return EXIT_NO_DAEMON
    except PermissionError:
        print(f"edgevoice: permission denied on {path} (members of the daemon's group, "
              "edgevoice, may use it)", file=sys.stderr)
        return EXIT_NO_DAEMON
    except TimeoutError:
        print(f"edgevoice: the daemon at {path} did not answer within {REPLY_TIMEOUT_S:g}s",
              file=sys.stderr)
        return EXIT_NO_DAEMON
    except (OSError, ValueError) as exc:
        print(f"edgevoice: cannot talk to the daemon at {path}: {redact(str(exc))}",
              file=sys.stderr)
        return EXIT_NO_DAEMON
    if not reply["ok"]:
        print(f"edgevoice: {args.action} refused: {redact(str(reply.get('error', '')))}",
              file=sys.stderr)
        return EXIT_FAILURE
    print(_describe(args.action, reply))
    return EXIT_OK


def _describe(action: str, reply: dict[str, Any]) -> str:
    if action == "status":
        return json.dumps(reply.get("status", {}), indent=2, sort_keys=True)
    if action in ("mute", "unmute"):
        text = "muted" if reply.get("muted") else "unmuted"
        if not reply.get("changed", True):
            text += " (already)"
        if reply.get("dropped_chunks"):
            text += f"; dropped {reply['dropped_chunks']} queued audio chunks"
        if reply.get("warning"):
            text += f"; warning: {reply['warning']}"
        return text
    return f"sent to session {reply.get('session', '?')}"
