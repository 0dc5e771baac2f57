"""Which ALSA capture devices are open right now, and by whom (from /proc/asound).

PortAudio leaves a hardware device it cannot open out of its device list ("possibly busy",
pa_linux_alsa.c BuildDeviceList), so a microphone held by the running daemon looks
*missing* to a second process, not busy. The kernel says who holds it: every open capture
substream has `/proc/asound/cardN/pcmMc/subK/status` with its state and `owner_pid`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_CARD_LINE = re.compile(r"^\s*(\d+)\s+\[([^\]]*)\]\s*:\s*(.*?)\s+-\s+(.*)$")


@dataclass(frozen=True)
class BusyCapture:
    card: int
    device: int
    card_id: str
    card_name: str
    owner_pid: int
    owner: str  # the owner's command line ("" if hidden)

    @property
    def label(self) -> str:
        return f"{self.card_name} (hw:{self.card},{self.device})"

    @property
    def by_edgevoice(self) -> bool:
        return "edgevoice" in self.owner

    def matches(self, spec: str | int) -> bool:
        """Whether an audio.device name could mean this device (an index cannot tell)."""
        if isinstance(spec, int) or not spec.strip() or spec.strip().isdigit():
            return False
        wanted = spec.strip().casefold()
        return any(wanted in text.casefold() for text in
                   (self.label, self.card_id, f"hw:{self.card},{self.device}"))


def _read(path: Path, limit: int = 64 * 1024) -> str:
    try:
        with path.open("rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _cards(proc: Path) -> dict[int, tuple[str, str]]:
    cards: dict[int, tuple[str, str]] = {}
    for line in _read(proc / "asound" / "cards").splitlines():
        match = _CARD_LINE.match(line)
        if match:
            cards[int(match.group(1))] = (match.group(2).strip(), match.group(4).strip())
    return cards


def busy_captures(proc: Path = PROC) -> list[BusyCapture]:
    """Every open capture substream with its owner."""
    cards = _cards(proc)
    found: list[BusyCapture] = []
    for status in sorted((proc / "asound").glob("card*/pcm*c/sub*/status")):
        text = _read(status)
        if not text or text.strip() == "closed":
            continue
        owner = re.search(r"(?m)^owner_pid\s*:\s*(\d+)", text)
        card_m = re.fullmatch(r"card(\d+)", status.parents[2].name)
        dev_m = re.fullmatch(r"pcm(\d+)c", status.parents[1].name)
        if owner is None or card_m is None or dev_m is None:
            continue
        pid, card = int(owner.group(1)), int(card_m.group(1))
        cmdline = _read(proc / str(pid) / "cmdline", 4096).replace("\0", " ").strip()
        card_id, card_name = cards.get(card, (f"card{card}", f"card {card}"))
        found.append(BusyCapture(card, int(dev_m.group(1)), card_id, card_name, pid, cmdline))
    return found


def holder_of(spec: str | int, proc: Path = PROC) -> BusyCapture | None:
    """The open capture device `spec` most likely names: one matching it by name, else,
    for a spec that names no card ("default", an index), the only one edgevoice holds."""
    busy = busy_captures(proc)
    for item in busy:
        if item.matches(spec):
            return item
    held = [item for item in busy if item.by_edgevoice]
    return held[0] if len(held) == 1 and not _names_a_card(spec) else None


def _names_a_card(spec: str | int) -> bool:
    return isinstance(spec, str) and not spec.strip().isdigit() and \
        spec.strip().casefold() != "default"
