#!/usr/bin/python3
"""Render edgevoice's argparse parser (edgevoice.cli.build_parser) as edgevoice(1), on stdout.

Run at package build time by debian/rules (argparse-manpage is not in Debian 12):
    PYTHONPATH=. python3 debian/make-manpage.py > debian/edgevoice.1
The date comes from SOURCE_DATE_EPOCH (set by dpkg-buildpackage from debian/changelog), so
the page is reproducible.
"""

from __future__ import annotations

import argparse
import os
import time

from edgevoice import __version__
from edgevoice.cli import build_parser

DESCRIPTION = (
    "edgevoice captures a microphone through ALSA/PortAudio, resamples it to 24 kHz mono "
    "and streams it into an OpenAI Realtime session (or a compatible server) over a "
    "WebSocket. It runs as the systemd service edgevoice.service (edgevoice run); the other "
    "commands check the configuration, list the audio devices and show the daemon's status."
)
EXIT_STATUS = [
    ("0", "stopped on request, or the command succeeded"),
    ("1", "any other failure"),
    ("2", "usage error (no command, an unknown option)"),
    ("77", "the server rejected the credentials; systemd does not restart the service"),
    ("78", "the configuration is invalid (the message names the key); not restarted either"),
]
FILES = [
    ("/etc/edgevoice/config.yaml", "the service's configuration (every key is optional)"),
    ("/etc/edgevoice/openai-api-key", "the API key (mode 0600), passed to the service as "
     "the systemd credential openai-api-key"),
    ("/usr/share/edgevoice/asound.conf", "the ALSA configuration of the service; "
     "edgevoice devices uses it too when ALSA_CONFIG_PATH is not set"),
    ("/usr/share/doc/edgevoice/README.md.gz", "installation, configuration, troubleshooting"),
]


def esc(text: str) -> str:
    """Text as roff: backslashes, minus signs, and a leading control character escaped."""
    text = " ".join(text.split()).replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def options(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    lines: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        invocation = formatter._format_action_invocation(action)
        lines += [".TP", f"\\fB{esc(invocation)}\\fR", esc(formatter._expand_help(action)
                                                           if action.help else "")]
    return lines


def render(parser: argparse.ArgumentParser) -> str:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    prog = parser.prog
    out = [f'.TH {prog.upper()} 1 "{date}" "{prog} {__version__}" "User Commands"',
           ".SH NAME", f"{prog} \\- {esc(parser.description or '')}",
           ".SH SYNOPSIS", esc(parser.format_usage().removeprefix("usage: ")),
           ".SH DESCRIPTION", esc(DESCRIPTION), ".SH OPTIONS", *options(parser),
           ".SH COMMANDS"]
    for group in parser._actions:
        if not isinstance(group, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in group._choices_actions}
        for name, sub in group.choices.items():
            out += [f".SS {name}", esc(sub.format_usage().removeprefix("usage: ")), ".PP",
                    esc(sub.description or helps.get(name, "")), *options(sub)]
    out.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        out += [".TP", f"\\fB{code}\\fR", esc(meaning)]
    out.append(".SH FILES")
    for path, meaning in FILES:
        out += [".TP", f"\\fI{esc(path)}\\fR", esc(meaning)]
    out += [".SH SEE ALSO", "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(build_parser()), end="")
