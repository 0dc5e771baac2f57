"""EchoGate: half-duplex hold, tail, local barge-in with pre-roll; and the PipeWire drop-in.

The gate is pure logic: synthetic chunks carry their level, a fake clock and a fake player
stand in for time and playback. The drop-in is checked with PipeWire's own tools when they
are installed (Debian: pipewire-bin, libpipewire-0.3-modules, libspa-0.2-modules).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fakes import FakeClock

from edgevoice.daemon.backlog import AudioChunk
from edgevoice.daemon.echo_gate import EchoGate

CHUNK_MS = 20
CHUNK_S = CHUNK_MS / 1000
TAIL_MS = 300
PREROLL_MS = 300
BARGE_IN_DB = 12.0
PCM = b"\x01\x00" * (24 * CHUNK_MS)  # never all zeros: a zero chunk would be a fake


@dataclass
class FakePlayer:
    playing: bool = False
    last_played_at: float | None = None
    level_dbfs: float = -120.0
    barge_ins: list[float] = field(default_factory=list)


class Rig:
    """A gate on a fake clock and player; ``feed(mic_dbfs)`` captures one chunk."""

    def __init__(self, *, mode: str = "half_duplex", barge_in_db: float | None = BARGE_IN_DB,
                 preroll_ms: int = PREROLL_MS) -> None:
        self.clock = FakeClock()
        self.player = FakePlayer()
        self.seq = 0
        self.gate = EchoGate(
            mode=mode,  # type: ignore[arg-type]
            tail_ms=TAIL_MS, barge_in_db=barge_in_db, preroll_ms=preroll_ms,
            chunk_ms=CHUNK_MS, playing=lambda: self.player.playing,
            last_played_at=lambda: self.player.last_played_at,
            playback_level_dbfs=lambda: self.player.level_dbfs,
            on_barge_in=self._barge_in, clock=self.clock)

    def _barge_in(self) -> None:
        self.player.barge_ins.append(self.clock())
        # What the player does: flush; it reports "not playing" a callback period later.

    def feed(self, mic_dbfs: float) -> tuple[AudioChunk, list[AudioChunk]]:
        self.clock.advance(CHUNK_S)
        if self.player.playing:
            self.player.last_played_at = self.clock()
        chunk = AudioChunk(pcm=PCM, rms_dbfs=mic_dbfs, captured_at=self.clock(), seq=self.seq)
        self.seq += 1
        return chunk, self.gate.process(chunk)

    def play(self, seconds: float, level: float = -20.0, coupling: float = -6.0,
             noise_db: float = 1.5, rng: random.Random | None = None,
             vary_db: float = 0.0) -> list[AudioChunk]:
        """Speaker plays; the mic hears only the echo. Returns whatever the gate let out."""
        rng = rng or random.Random(7)
        self.player.playing = True
        out: list[AudioChunk] = []
        for _ in range(round(seconds / CHUNK_S)):
            self.player.level_dbfs = level + rng.uniform(-vary_db, vary_db)
            echo = self.player.level_dbfs + coupling + rng.uniform(-noise_db, noise_db)
            out += self.feed(echo)[1]
        return out

    def stop(self) -> None:
        self.player.playing = False
        self.player.level_dbfs = -120.0


def test_held_while_playing_and_during_the_tail_then_released() -> None:
    rig = Rig()
    _, out = rig.feed(-60.0)
    assert len(out) == 1  # nothing playing: streamed as is
    assert rig.play(2.0) == []  # the whole answer: nothing sent (no zero chunks either)
    rig.stop()
    ended = rig.clock()
    sent: list[AudioChunk] = []
    while rig.clock() < ended + TAIL_MS / 1000 - 1e-9:
        chunk, out = rig.feed(-60.0)
        if rig.clock() < ended + TAIL_MS / 1000 - 1e-9:
            assert out == [], f"sent {rig.clock() - ended:.3f} s after playback, in the tail"
        sent += out
    chunk, out = rig.feed(-30.0)
    assert out == [chunk]  # after the tail: streaming again, only the new chunk
    # 2 s of answer plus the tail (the chunk exactly at its end may go either way)
    assert rig.gate.stats.chunks_held in (100 + TAIL_MS // CHUNK_MS - 1, 100 + TAIL_MS // CHUNK_MS)
    assert rig.gate.stats.local_barge_ins == 0
    assert rig.player.barge_ins == []
    assert all(c.pcm == PCM for c in sent)


def test_loud_voice_over_the_answer_barges_in_with_preroll() -> None:
    rig = Rig()
    assert rig.play(1.5) == []  # echo only: the coupling is learnt
    estimate = rig.gate.echo_estimate_dbfs()
    assert estimate is not None and -30.0 < estimate < -22.0  # -20 dBFS played, -6 dB path
    held = rig.gate.stats.chunks_held
    voice = estimate + 20.0
    first_loud = None
    released: list[AudioChunk] = []
    trigger = None
    for i in range(10):
        chunk, out = rig.feed(voice)
        first_loud = first_loud or chunk
        if out:
            trigger, released = chunk, out
            assert i + 1 == rig.gate.trigger_chunks  # after the configured consecutive chunks
            break
    assert trigger is not None, "a voice 20 dB over the echo did not barge in"
    assert rig.gate.trigger_chunks in (2, 3)
    assert rig.player.barge_ins == [rig.clock()]
    assert rig.gate.stats.local_barge_ins == 1
    # Pre-roll first, in order, then the trigger chunk; it starts preroll_ms before it.
    assert released[-1] is trigger
    preroll = released[:-1]
    assert len(preroll) == PREROLL_MS // CHUNK_MS
    assert [c.seq for c in released] == list(range(released[0].seq, trigger.seq + 1))
    assert released[0].captured_at == pytest.approx(trigger.captured_at - PREROLL_MS / 1000)
    assert first_loud in preroll  # the first syllable goes out
    assert rig.gate.stats.chunks_released_preroll == len(preroll)
    assert rig.gate.stats.chunks_held == held + rig.gate.trigger_chunks - 1
    # The person keeps talking while playback still reports the cut answer: streamed, and
    # on_barge_in is not called again.
    for _ in range(5):
        chunk, out = rig.feed(voice)
        assert out == [chunk]
    rig.stop()
    for _ in range(30):  # the cut answer's tail: the person's sentence goes on
        chunk, out = rig.feed(voice - 10)
        assert out == [chunk]
    assert rig.player.barge_ins == [pytest.approx(trigger.captured_at)]
    # A new answer: held again.
    assert rig.play(0.5) == []


def test_one_click_does_not_barge_in() -> None:
    rig = Rig()
    rig.play(1.0)
    estimate = rig.gate.echo_estimate_dbfs()
    assert estimate is not None
    for _ in range(5):  # isolated loud chunks, each followed by echo
        assert rig.feed(estimate + 30.0)[1] == []
        assert rig.feed(estimate)[1] == []
    assert rig.player.barge_ins == []


def test_echo_alone_never_fires() -> None:
    rig = Rig()
    rng = random.Random(1234)
    # Speech-like playback: the level jumps around by ±12 dB; the mic follows it with a
    # fixed coupling plus ±3 dB of noise, for a minute of answers with pauses between them.
    for _answer in range(12):
        assert rig.play(4.0, level=-22.0, coupling=-4.0, noise_db=3.0, rng=rng,
                        vary_db=12.0) == []
        rig.stop()
        for _ in range(30):
            rig.feed(-65.0 + rng.uniform(-2, 2))
    assert rig.player.barge_ins == []
    assert rig.gate.stats.local_barge_ins == 0


def test_no_barge_in_before_the_coupling_is_known() -> None:
    rig = Rig()
    rig.player.playing = True
    rig.player.level_dbfs = -20.0
    for _ in range(5):  # the first chunks of the first answer: nothing learnt yet
        assert rig.feed(-3.0)[1] == []
    assert rig.player.barge_ins == []


def test_barge_in_disabled_still_holds() -> None:
    rig = Rig(barge_in_db=None)
    rig.play(1.0)
    for _ in range(50):
        assert rig.feed(-3.0)[1] == []  # as loud as it gets: still held, never fires
    assert rig.player.barge_ins == []
    assert rig.gate.stats.local_barge_ins == 0
    rig.stop()
    rig.clock.advance(TAIL_MS / 1000)
    chunk, out = rig.feed(-30.0)
    assert out == [chunk]


def test_mode_none_passes_everything() -> None:
    rig = Rig(mode="none")
    rig.player.playing = True
    rig.player.level_dbfs = -20.0
    for level in [-26.0] * 50 + [-3.0] * 10:
        chunk, out = rig.feed(level)
        assert out == [chunk]
    assert rig.player.barge_ins == []
    assert rig.gate.stats.chunks_held == 0


def test_barge_in_callback_failure_does_not_lose_the_voice() -> None:
    rig = Rig()
    rig.play(1.0)

    def broken() -> None:
        raise RuntimeError("player gone")

    rig.gate._on_barge_in = broken  # the seam under test
    estimate = rig.gate.echo_estimate_dbfs()
    assert estimate is not None
    out: list[AudioChunk] = []
    for _ in range(rig.gate.trigger_chunks):
        out += rig.feed(estimate + 20.0)[1]
    assert len(out) == PREROLL_MS // CHUNK_MS + 1


@pytest.mark.parametrize("kwargs", [
    {"mode": "full_duplex"}, {"chunk_ms": 0}, {"tail_ms": -1}, {"barge_in_db": 0.0},
    {"barge_in_db": float("nan")},
])
def test_rejects_nonsense(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "mode": "half_duplex", "tail_ms": 300, "barge_in_db": 12.0, "preroll_ms": 300,
        "chunk_ms": 20, "playing": lambda: False, "last_played_at": lambda: None,
        "playback_level_dbfs": lambda: -120.0, "on_barge_in": lambda: None}
    args.update(kwargs)
    with pytest.raises(ValueError):
        EchoGate(**args)  # type: ignore[arg-type]


# -- the PipeWire drop-in ---------------------------------------------------------------------

DROP_IN = Path(__file__).resolve().parent.parent / "config/pipewire/99-edgevoice-echo-cancel.conf"
MODULE = "libpipewire-module-echo-cancel"
NODES = {
    "edgevoice-echo-cancel-source": "Audio/Source",
    "edgevoice-echo-cancel-sink": "Audio/Sink",
    "edgevoice-echo-cancel-capture": "Stream/Input/Audio",
    "edgevoice-echo-cancel-playback": "Stream/Output/Audio",
}
PACKAGES = "pipewire-bin, libpipewire-0.3-modules and libspa-0.2-modules"


def _module_installed() -> bool:
    return any(Path(d).glob(f"pipewire-0.3/{MODULE}.so")
               for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                         "/usr/lib/arm-linux-gnueabihf", "/usr/lib64", "/usr/lib"))


def test_drop_in_parses_as_spa_json() -> None:
    tool = shutil.which("spa-json-dump")
    if tool is None:
        pytest.skip("spa-json-dump not installed (Debian: pipewire-bin)")
    done = subprocess.run([tool, str(DROP_IN)], capture_output=True, text=True, timeout=10,
                          check=False)
    assert done.returncode == 0, done.stderr
    conf = json.loads(done.stdout)
    assert list(conf) == ["context.modules"]
    [entry] = conf["context.modules"]
    assert entry["name"] == MODULE
    args = entry["args"]
    assert args["library.name"] == "aec/libspa-aec-webrtc"
    names = {args[f"{part}.props"]["node.name"]
             for part in ("capture", "source", "sink", "playback")}
    assert names == set(NODES)
    assert args["aec.args"]["webrtc.gain_control"] is False


@pytest.fixture
def pipewire_daemon(tmp_path: Path) -> Iterator[tuple[dict[str, str], subprocess.Popen[bytes]]]:
    """A throwaway PipeWire daemon: a minimal config plus the drop-in, its own socket."""
    if shutil.which("pipewire") is None or shutil.which("pw-dump") is None \
            or not _module_installed():
        pytest.skip(f"PipeWire or its echo-cancel module not installed (Debian: {PACKAGES})")
    conf = tmp_path / "conf"
    (conf / "pipewire.conf.d").mkdir(parents=True)
    (conf / "pipewire.conf").write_text("""
context.properties = { core.daemon = true core.name = pipewire-0 support.dbus = false }
context.spa-libs = {
    audio.convert.* = audioconvert/libspa-audioconvert
    support.*       = support/libspa-support
}
context.modules = [
    { name = libpipewire-module-protocol-native }
    { name = libpipewire-module-access args = { } }
    { name = libpipewire-module-client-node }
    { name = libpipewire-module-adapter }
]
""")
    shutil.copy(DROP_IN, conf / "pipewire.conf.d" / DROP_IN.name)
    # Its own runtime directory, short: a socket path must fit in 108 bytes.
    run = Path(tempfile.mkdtemp(prefix="ev-pw-"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIPEWIRE_", "XDG_", "DBUS_"))}
    env.update(PIPEWIRE_CONFIG_DIR=str(conf), XDG_RUNTIME_DIR=str(run),
               XDG_CONFIG_HOME=str(tmp_path / "home-config"), HOME=str(tmp_path),
               PIPEWIRE_DEBUG="2")
    log = (tmp_path / "pipewire.log").open("wb")
    proc = subprocess.Popen(["pipewire"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    client_env = {k: v for k, v in env.items() if k != "PIPEWIRE_CONFIG_DIR"}
    try:
        yield client_env, proc  # pw-dump reads the stock client.conf
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(run, ignore_errors=True)
        print((tmp_path / "pipewire.log").read_text(errors="replace")[-4000:])


@pytest.mark.integration
def test_drop_in_loads_in_pipewire_and_creates_the_nodes(
        pipewire_daemon: tuple[dict[str, str], subprocess.Popen[bytes]]) -> None:
    env, proc = pipewire_daemon
    deadline = time.monotonic() + 10
    found: dict[str, str] = {}
    done = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "PipeWire refused the configuration (its log is below)"
        done = subprocess.run(["pw-dump"], env=env, capture_output=True, text=True,
                              timeout=5, check=False)
        if done.returncode == 0 and done.stdout.strip():
            found = {o["info"]["props"].get("node.name"): o["info"]["props"].get("media.class")
                     for o in json.loads(done.stdout)
                     if o.get("type", "").endswith(":Node") and o.get("info")}
            if set(NODES) <= set(found):
                break
        time.sleep(0.2)
    assert {k: found.get(k) for k in NODES} == NODES, \
        f"nodes seen: {found}; pw-dump: {done and done.stderr[-2000:]}"
