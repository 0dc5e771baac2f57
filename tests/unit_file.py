"""Reading a systemd unit file in tests: (section, key) -> values, in order."""

from __future__ import annotations


def unit_directives(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values, keeping repeated keys (SystemCallFilter= twice, ...)."""
    directives: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        directives.setdefault((section, key.strip()), []).append(value.strip())
    return directives
