"""The whole daemon: CPU per audio second, per thread, memory, start-up, capture-to-wire.

Issue 12, deliverable 1 (whole daemon and per-thread profile). The real `edgevoice run`
process (``python -m edgevoice run``) captures 48 kHz stereo from the ALSA FIFO microphone
(``edgevoice/audio/fifo_mic.py``, fed in real time by a ``FifoWriter`` in this process) and
streams to the devserver (in this process: its CPU is the bench's, not the daemon's) over
127.0.0.1. Scenarios, each a fresh daemon:

* ``streaming``: the uplink alone (playback off, ``stream.gate: always``), room noise;
* ``playback``: talk turns the devserver answers, played to the ALSA FIFO speaker
  (``edgevoice/audio/fifo_speaker.py``, paced like a sound card);
* ``idle_gate``: ``stream.gate: vad`` in a quiet room (nothing should be sent); reported
  as not available when the daemon streams the room anyway or refuses the setting;
* ``memory``: 10 minutes of talk turns compressed (the writer runs ``--speedup`` times
  faster than real time; everything per chunk happens as often per audio second, timers
  less often), VmRSS sampled over the run; edgevoice is byte-compiled first, as installed.

CPU is utime+stime of the process (``/proc/PID/stat``) and of each thread
(``/proc/PID/task/*/stat``) over a window after a warm-up, divided by the audio seconds
the microphone delivered in it (the writer's frames), as % of one core; wake-ups are each
thread's voluntary context switches per second (``/proc/PID/task/*/status``). Python names
the daemon's threads only inside Python (comm is "python" for all), so names come from
``py-spy dump --json`` (``pip install py-spy``; without it threads show by id); threads
without a Python name are PortAudio's (found by the FIFO their blocking read or write is
on, ``/proc/PID/task/TID/syscall``) or native pools (OpenBLAS). Start-up: exec to
``READY=1`` on a notify socket bound here, and exec to the first
``input_audio_buffer.append`` at the server. Capture-to-wire latency is the daemon's own
record (``capture_to_wire_ms`` in the status file: a block's arrival in the PortAudio
callback to its chunk's last byte handed to the socket), over the window. Imports that
`edgevoice run` does not use: ``-X importtime`` for the cost, ``daemon_usage.py`` for use.

Never fails on a timing: each target is printed met or missed. Needs PortAudio and
alsa-lib (``make deps``). Run: ``python benchmarks/bench_daemon.py [--seconds S]
[--speedup N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from machine import machine  # noqa: E402  (benchmarks/)
from signals import speech  # noqa: E402  (tests/: the project's one speech generator)
from systemd_fixtures import NotifyRecorder  # noqa: E402

from edgevoice.audio.fifo_mic import FifoWriter, make_fifo_microphone  # noqa: E402
from edgevoice.audio.fifo_speaker import FifoSpeaker, make_fifo_speaker  # noqa: E402
from edgevoice.devserver import DevServer  # noqa: E402

RATE, CHANNELS, CHUNK_MS = 48000, 2, 20
BLOCK = RATE * CHUNK_MS // 1000
MIC_PCM, SPEAKER_PCM = "evbench_mic", "evbench_speaker"
KEY = "bench-key-for-the-local-devserver"
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGET_PCT = {"streaming": 1.0, "playback": 1.5, "idle_gate": 0.3}  # % of one core
TARGET_RSS_MB = 45.0
TARGET_START_S = 1.0
TARGET_LATENCY_MS = CHUNK_MS + 5.0
FLAT_MB = 1.0  # "flat": at most this much growth over the second half of the memory run


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


# -- /proc -----------------------------------------------------------------------------------


@dataclass
class Task:
    ticks: int  # utime + stime
    stime: int  # of which in the kernel
    voluntary: int
    involuntary: int
    run_ns: int = 0  # schedstat: exact time on a CPU (0 where the kernel has no schedstat)


def schedstat_ns(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _stat_ticks(text: str) -> int:
    return sum(_stat_user_sys(text))


def _stat_user_sys(text: str) -> tuple[int, int]:
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]), int(fields[12])  # utime, stime (fields 14, 15 of stat)


def process_ticks(pid: int) -> int:
    return _stat_ticks(Path(f"/proc/{pid}/stat").read_text())


def tasks(pid: int) -> dict[int, Task]:
    out: dict[int, Task] = {}
    for entry in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            status = (entry / "status").read_text()
            vol = re.search(r"^voluntary_ctxt_switches:\s*(\d+)", status, re.M)
            invol = re.search(r"^nonvoluntary_ctxt_switches:\s*(\d+)", status, re.M)
            user, system = _stat_user_sys((entry / "stat").read_text())
            out[int(entry.name)] = Task(user + system, system,
                                        int(vol.group(1)) if vol else 0,
                                        int(invol.group(1)) if invol else 0,
                                        schedstat_ns(entry / "schedstat"))
    return out


def rss_mb(pid: int) -> float:
    match = re.search(r"^VmRSS:\s*(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def rss_by_mapping(pid: int, top: int = 10) -> list[tuple[str, float]]:
    """Resident MB per mapped file (``[heap]``, anonymous memory as ``[anon]``), largest
    first, from ``/proc/PID/smaps``: where the resident memory is."""
    sizes: dict[str, int] = {}
    name = "[anon]"
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        head = line.split(None, 5)
        if head and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):
            path = head[5].strip() if len(head) > 5 else ""
            name = Path(path).name if path.startswith("/") else (path or "[anon]")
        elif line.startswith("Rss:"):
            sizes[name] = sizes.get(name, 0) + int(line.split()[1])
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1])
    return [(n, round(kb / 1024, 1)) for n, kb in ranked[:top]]


def blocked_on(pid: int, tid: int) -> str | None:
    """The file a thread is blocked reading or writing (its syscall's first argument taken
    as a descriptor), or None."""
    try:
        parts = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
        if len(parts) < 2 or not parts[1].startswith("0x"):
            return None
        fd = int(parts[1], 16)
        return os.readlink(f"/proc/{pid}/fd/{fd}") if fd < 65536 else None
    except (OSError, ValueError):
        return None


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def python_threads(pid: int) -> list[dict[str, Any]]:
    """The Python threads, from ``py-spy dump --json`` (empty without py-spy)."""
    exe = py_spy()
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "dump", "--json", "--pid", str(pid)], check=False,
                             capture_output=True, text=True, timeout=20)
        threads = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return []
    return [t for t in threads if isinstance(t, dict)]


def profile_summary(raw: str, names: dict[str, str], top: int = 8) -> dict[str, Any]:
    """Per thread: samples, and the functions holding most of them (self and inclusive),
    from ``py-spy record --format raw --threads`` (``thread (TID)...;frame;...;leaf N``);
    ``names`` maps the OS thread id to the name in the thread table."""
    per: dict[str, dict[str, Any]] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]
        match = re.match(r"thread \((\d+)\)", thread)  # the OS thread id
        name = names.get(match.group(1), thread) if match else thread
        slot = per.setdefault(name, {"samples": 0, "self": {}, "inclusive": {}})
        n = int(count)
        slot["samples"] += n
        calls = [re.sub(r" \((.*?):\d+\)$", r" (\1)", f) for f in frames[1:]]
        if calls:
            slot["self"][calls[-1]] = slot["self"].get(calls[-1], 0) + n
        for call in set(calls):
            slot["inclusive"][call] = slot["inclusive"].get(call, 0) + n
    out: dict[str, Any] = {}
    for name, slot in per.items():
        total = slot["samples"]
        out[name] = {"samples": total, **{
            kind: [(f, round(100.0 * n / total, 1)) for f, n in
                   sorted(slot[kind].items(), key=lambda kv: -kv[1])[:top]]
            for kind in ("self", "inclusive")}}
    return out


# -- one daemon run --------------------------------------------------------------------------


def room(seconds: float, seed: int) -> npt.NDArray[np.int16]:
    """Faint room noise (about -62 dBFS), never one buffer repeated."""
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(0.0, 25.0, round(seconds * RATE))).astype(np.int16)


def room_stream(seed: int) -> Iterator[npt.NDArray[np.int16]]:
    rng = np.random.default_rng(seed)
    for _ in itertools.count():
        yield np.round(rng.normal(0.0, 25.0, RATE)).astype(np.int16)


def turns(seconds: float, every_s: float, talk_s: float) -> npt.NDArray[np.int16]:
    """Talk turns of ``talk_s`` every ``every_s`` over room noise (answers fit the gaps)."""
    talk = [(t + 1.0, t + 1.0 + talk_s) for t in np.arange(0.0, seconds - 1.5, every_s)]
    out: npt.NDArray[np.int16] = speech(seconds, RATE, talk=talk)
    return out


@dataclass
class Run:
    """What one daemon run measured."""

    name: str
    exit_code: int | None = None
    ready_s: float | None = None
    first_append_s: float | None = None
    audio_s: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    exact_cpu_s: float | None = None  # schedstat
    profile: dict[str, Any] = field(default_factory=dict)
    rss_map: list[tuple[str, float]] = field(default_factory=list)
    threads: list[dict[str, Any]] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (audio s, MB)
    latency: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    window_counters: dict[str, int] = field(default_factory=dict)
    note: str = ""
    log_tail: str = ""

    @property
    def pct(self) -> float | None:
        return 100.0 * self.cpu_s / self.audio_s if self.audio_s > 0 else None

    @property
    def exact_pct(self) -> float | None:
        if self.exact_cpu_s is None or self.audio_s <= 0:
            return None
        return 100.0 * self.exact_cpu_s / self.audio_s


def _read_status(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def window_latency(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """p50/p99/max of the chunks sent between two status snapshots (bucket upper edges)."""
    def buckets(snap: dict[str, Any]) -> dict[float, int]:
        lat = snap.get("capture_to_wire_ms")
        raw = lat.get("buckets", []) if isinstance(lat, dict) else []
        return {float(edge): int(n) for edge, n in raw}

    if not isinstance(after.get("capture_to_wire_ms"), dict):
        return {"available": False}
    b0, b1 = buckets(before), buckets(after)
    diff = sorted((edge, n - b0.get(edge, 0)) for edge, n in b1.items() if n > b0.get(edge, 0))
    count = sum(n for _, n in diff)

    def quantile(q: float) -> float | None:
        if not count:
            return None
        rank, seen = max(1, int(np.ceil(q * count))), 0
        for edge, n in diff:
            seen += n
            if seen >= rank:
                return edge
        return diff[-1][0]

    return {"available": True, "count": count, "p50": quantile(0.5), "p99": quantile(0.99),
            "max_bucket": diff[-1][0] if diff else None,
            "since_start": {k: after["capture_to_wire_ms"].get(k)
                            for k in ("count", "p50", "p99", "max")}}


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.server = DevServer(api_key=KEY, keep_history=False)

    def config(self, directory: Path, *, playback: bool, gate: str) -> dict[str, Any]:
        config: dict[str, Any] = {
            "audio": {"device": MIC_PCM, "rate": RATE, "channels": CHANNELS,
                      "chunk_ms": CHUNK_MS},
            "server": {"url": self.server.url, "api_key_env": "EDGEVOICE_BENCH_KEY"},
            "session": {"mode": "conversation"},
            "stream": {"gate": gate},
            "health": {"status_file": str(directory / "status.json")},
            "logging": {"level": "info", "journald": "off"},
        }
        if gate != "always":
            config["stream"]["vad"] = "energy"
        if playback:
            config["playback"] = {"enabled": True, "device": SPEAKER_PCM, "rate": RATE,
                                  "echo": "none"}
        return config

    def run(self, name: str, signal_: Any, *, seconds: float, warmup_s: float = 3.0,
            playback: bool = False, gate: str = "always", speedup: float = 1.0,
            sample_s: float = 0.5, prefix: list[str] | None = None,
            extra_env: dict[str, str] | None = None) -> Run:
        """Start a daemon on a fresh FIFO microphone (and speaker), measure ``seconds`` of
        audio after ``warmup_s``, stop it."""
        result = Run(name)
        directory = self.workdir / name
        directory.mkdir(parents=True, exist_ok=True)
        fifo, alsa = make_fifo_microphone(directory, MIC_PCM, RATE, CHANNELS)
        speaker: FifoSpeaker | None = None
        fifos = {str(fifo): "portaudio-in (callback)"}
        if playback:
            spk_fifo, text = make_fifo_speaker(directory, SPEAKER_PCM, RATE, 1)
            with alsa.open("a") as f:
                f.write(text)
            speaker = FifoSpeaker(spk_fifo)
            speaker.start()
            fifos[str(spk_fifo)] = "portaudio-out (callback)"
        config = self.config(directory, playback=playback, gate=gate)
        config_path = directory / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        status_path = directory / "status.json"
        writer = FifoWriter(fifo, rate=round(RATE * speedup), channels=CHANNELS,
                            chunk_frames=BLOCK, signal=signal_, keep_open=False)
        writer.start()
        notify = NotifyRecorder()
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env.update(ALSA_CONFIG_PATH=str(alsa), NOTIFY_SOCKET=notify.address,
                   EDGEVOICE_BENCH_KEY=KEY, PYTHONUNBUFFERED="1", **(extra_env or {}))
        log_path = directory / "daemon.log"
        pin = ["taskset", "-c", self.args.cpus] if self.args.cpus else []
        command = [*pin, *(prefix or [sys.executable, "-m", "edgevoice"]), "run", "--config",
                   str(config_path)]
        proc: subprocess.Popen[bytes] | None = None
        try:
            with log_path.open("wb") as log:
                started = time.monotonic()
                proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log,
                                        env=env, cwd=directory)
                self._measure(result, proc, started, notify, writer, status_path, fifos,
                              seconds=seconds, warmup_s=warmup_s, speedup=speedup,
                              sample_s=sample_s)
        finally:
            if proc is not None:
                result.exit_code = stop(proc)
            notify.close()
            writer.stop(5.0)
            if speaker is not None:
                speaker.stop(5.0)
        result.status = _read_status(status_path)  # written again at exit
        result.log_tail = log_path.read_text(errors="replace")[-3000:]
        return result

    def _measure(self, result: Run, proc: subprocess.Popen[bytes], started: float,
                 notify: NotifyRecorder, writer: FifoWriter, status_path: Path,
                 fifos: dict[str, str], *, seconds: float, warmup_s: float, speedup: float,
                 sample_s: float) -> None:
        pid = proc.pid
        if notify.wait_for("READY=1", timeout=20):
            result.ready_s = notify.lines("READY=1")[0].at - started

        def first_append(s: DevServer) -> float | None:
            times = [r.first_append_at for r in s.sessions()
                     if r.first_append_at is not None and r.opened_at >= started]
            return min(times) if times else None

        if self.server.wait_for(lambda s: first_append(s) is not None or
                                proc.poll() is not None, 20):
            at = first_append(self.server)
            result.first_append_s = at - started if at is not None else None
        if proc.poll() is not None:
            result.note = f"the daemon exited ({proc.returncode}) before streaming"
            return
        time.sleep(warmup_s / speedup if speedup > 1 else warmup_s)
        status0 = _read_status(status_path)
        t0, frames0 = time.monotonic(), writer.frames_written
        ticks0, tasks0 = process_ticks(pid), tasks(pid)
        profiler: subprocess.Popen[bytes] | None = None
        profile_path = status_path.parent / "profile.txt"
        exe = py_spy()
        if self.args.profile and exe is not None:
            profiler = subprocess.Popen(
                [exe, "record", "--nonblocking", "--threads", "--format", "raw", "--rate",
                 "250", "--duration", str(max(1, round(seconds / speedup))), "--pid",
                 str(pid), "-o", str(profile_path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        votes: dict[int, dict[str, int]] = {}
        while proc.poll() is None:
            now = time.monotonic()
            audio = (writer.frames_written - frames0) / RATE
            with contextlib.suppress(OSError):
                result.rss_mb.append((round(audio, 2), round(rss_mb(pid), 2)))
                for tid in tasks0:
                    path = blocked_on(pid, tid)
                    if path in fifos:
                        slot = votes.setdefault(tid, {})
                        slot[fifos[path]] = slot.get(fifos[path], 0) + 1
            if audio >= seconds or now - t0 > seconds / speedup * 3 + 30:
                break
            time.sleep(sample_s)
        if proc.poll() is not None:
            result.note = f"the daemon exited ({proc.returncode}) during the measurement"
            return
        ticks1, tasks1 = process_ticks(pid), tasks(pid)
        result.rss_map = rss_by_mapping(pid)
        result.wall_s = time.monotonic() - t0
        result.audio_s = (writer.frames_written - frames0) / RATE
        result.cpu_s = (ticks1 - ticks0) / CLK_TCK
        # /proc/PID/schedstat is the main thread's alone: add up the threads
        exact = sum(t.run_ns - tasks0.get(tid, Task(0, 0, 0, 0)).run_ns
                    for tid, t in tasks1.items())
        result.exact_cpu_s = exact / 1e9 if any(t.run_ns for t in tasks1.values()) else None
        time.sleep(2.2)  # one more status file
        status1 = _read_status(status_path)
        result.latency = window_latency(status0, status1)
        c0, c1 = status0.get("counters", {}), status1.get("counters", {})
        result.window_counters = {k: int(c1.get(k, 0)) - int(c0.get(k, 0)) for k in c1
                                  if isinstance(c1.get(k), int)}
        threads = python_threads(pid)
        names = {int(t["os_thread_id"]): str(t.get("thread_name") or "?") for t in threads
                 if t.get("os_thread_id")}
        for tid, t1 in sorted(tasks1.items()):
            t0_ = tasks0.get(tid, Task(0, 0, 0, 0))
            if tid in names:
                name = "main" if names[tid] == "MainThread" else names[tid]
            elif tid in votes:
                name = max(votes[tid].items(), key=lambda kv: kv[1])[0]
            else:
                name = "native, no Python name" if names else f"tid {tid}"
            ticks = t1.ticks - t0_.ticks
            run_s = (t1.run_ns - t0_.run_ns) / 1e9 if t1.run_ns else None
            result.threads.append({
                "tid": tid, "name": name,
                "pct": round(100.0 * ticks / CLK_TCK / result.audio_s, 3)
                if result.audio_s else None,
                "sys_share": round((t1.stime - t0_.stime) / ticks, 2) if ticks else None,
                "exact_pct": round(100.0 * run_s / result.audio_s, 3)
                if result.audio_s and run_s is not None else None,
                "wakeups_per_s": round((t1.voluntary - t0_.voluntary) / result.wall_s, 1),
                "preempted_per_s": round((t1.involuntary - t0_.involuntary) / result.wall_s,
                                         1)})
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(30)
            by_tid = {str(t["tid"]): str(t["name"]) for t in result.threads}
            with contextlib.suppress(OSError):
                result.profile = profile_summary(profile_path.read_text(), by_tid)


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


# -- imports ---------------------------------------------------------------------------------


IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def import_costs(log_text: str) -> tuple[dict[str, float], dict[str, tuple[int, str]]]:
    """Self import time (ms) per module from ``-X importtime`` lines, and each module's
    depth and importer (the tree is printed children first, indented by depth)."""
    costs: dict[str, float] = {}
    entries: list[tuple[int, str]] = []
    for line in log_text.splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            name = match.group(4)
            costs[name] = costs.get(name, 0.0) + int(match.group(1)) / 1e3
            entries.append((len(match.group(3)), name))
    parents: dict[str, tuple[int, str]] = {}
    stack: list[tuple[int, str]] = []
    for depth, name in reversed(entries):
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents.setdefault(name, (depth, stack[-1][1] if stack else ""))
        stack.append((depth, name))
    return costs, parents


def group(name: str) -> str:
    """edgevoice modules one by one; anything else by its top-level package."""
    return name if name.startswith("edgevoice") else name.split(".", maxsplit=1)[0]


def unused_imports(costs: dict[str, float], parents: dict[str, tuple[int, str]],
                   used: set[str]) -> list[dict[str, Any]]:
    """Groups imported at start whose code never ran after import (nor any submodule's),
    costliest first, with the module that imported them."""
    used_groups = {group(m) for m in used}
    total: dict[str, float] = {}
    for module, ms in costs.items():
        total[group(module)] = total.get(group(module), 0.0) + ms

    def importer(g: str) -> str:
        members = [(parents.get(m, (0, ""))[0], m) for m in costs if group(m) == g]
        top = min(members)[1] if members else g
        return parents.get(top, (0, ""))[1]

    rows = [{"module": g, "import_ms": round(ms, 1), "imported_by": importer(g)}
            for g, ms in total.items()
            if g not in used_groups and ms >= 1.0 and not g.startswith("_")
            and not any(u.startswith(g + ".") for u in used_groups)
            and g not in ("encodings", "site", "builtins", "sys", "sitecustomize")]
    return sorted(rows, key=lambda r: -float(r["import_ms"]))


# -- the report ------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(report: dict[str, Any]) -> None:
    print(f"whole daemon: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
          f"load {report['machine']['load_before']} before; 48 kHz stereo, "
          f"{report['chunk_ms']} ms chunks")
    print("\nCPU per audio second, % of one core: utime+stime (10 ms ticks), and exact "
          "(schedstat)")
    print(f"{'scenario':<12} {'audio s':>8} {'% core':>7} {'exact':>7} {'target':>7}  "
          f"{'verdict':<19} {'RSS MB':>7} {'sent/capt':>9}")
    for key, sc in report["scenarios"].items():
        target = TARGET_PCT.get(key)
        print(f"{key:<12} {fmt(sc['audio_s'], '.1f'):>8} {fmt(sc['pct_of_core']):>7} "
              f"{fmt(sc.get('exact_pct')):>7} {fmt(target, '.1f') if target else '-':>7}  "
              f"{sc['verdict']:<19} {fmt(sc.get('rss_mb_end'), '.1f'):>7} "
              f"{fmt(sc.get('sent_ratio')):>9}")
        if sc.get("note"):
            print(f"{'':<12} {sc['note']}")
    for key, sc in report["scenarios"].items():
        if not sc.get("threads"):
            continue
        print(f"\n{key}: per thread (% of one core per audio second; wake-ups = voluntary "
              "context switches/s)")
        print(f"  {'thread':<28} {'% core':>7} {'exact':>7} {'kernel':>6} {'wake/s':>7} "
              f"{'preempt/s':>9}")
        for t in sorted(sc["threads"], key=lambda t: -(t["exact_pct"] or t["pct"] or 0)):
            print(f"  {t['name']:<28} {fmt(t['pct'], '.3f'):>7} {fmt(t['exact_pct'], '.3f'):>7}"
                  f" {fmt(t['sys_share'], '.0%'):>6} {t['wakeups_per_s']:>7.1f} "
                  f"{t['preempted_per_s']:>9.1f}")
        for name, prof in (sc.get("profile") or {}).items():
            print(f"    {name}: {prof['samples']} samples; self: " + "; ".join(
                f"{f} {p:g}%" for f, p in prof["self"][:5]))
    st = report["startup"]
    if st["runs"]:
        print(f"\nstart-up over {st['runs']} starts   {'median':>7} {'max':>7} {'target':>7}")
    for label, key in (("exec to READY=1", "ready_s"),
                       ("exec to first append", "first_append_s")) if st["runs"] else ():
        print(f"  {label:<28} {fmt(st[key]['median']):>7} {fmt(st[key]['max']):>7} "
              f"{TARGET_START_S:>7.2f}  {st[key]['verdict']}")
    if report["scenarios"]:
        print(f"\ncapture-to-wire (ms, window)  {'p50':>6} {'p99':>6} {'max':>6} "
              f"{'target p99':>10}")
    for key, sc in report["scenarios"].items():
        lat = sc.get("latency") or {}
        if lat.get("available"):
            print(f"  {key:<27} {fmt(lat['p50']):>6} {fmt(lat['p99']):>6} "
                  f"{fmt(lat['max_bucket']):>6} {TARGET_LATENCY_MS:>10.1f}  {lat['verdict']} "
                  f"({lat['count']} chunks)")
    mem = report.get("memory")
    if mem:
        print(f"\nmemory ({mem['audio_min']:.1f} min of audio at {mem['speedup']:g}x): VmRSS "
              + ", ".join(f"{m:g} min {v:.1f} MB" for m, v in mem["rss_at_min"])
              + f"; growth over the second half {mem['growth_mb']:+.2f} MB "
              f"(flat: <= {FLAT_MB:g}) {verdict(mem['flat'])}; end {mem['rss_mb_end']:.1f} MB "
              f"(target {TARGET_RSS_MB:g}) {verdict(mem['rss_ok'])}")
        if mem.get("rss_map"):
            print("  resident MB by mapping: " + ", ".join(f"{n} {mb:g}"
                                                        for n, mb in mem["rss_map"]))
    imp = report.get("imports")
    if imp:
        print(f"\nimports: {imp['total_ms']:.0f} ms at start (under -X importtime); imported "
              "but never run after import (self import ms, imported by):")
        for row in imp["unused"][:15]:
            print(f"  {row['module']:<36} {row['import_ms']:>6.1f}  {row['imported_by']}")


def summarise(run: Run, target: float | None) -> dict[str, Any]:
    captured = run.window_counters.get("chunks_captured", 0)
    sent = run.window_counters.get("chunks_sent", 0)
    pct = run.pct
    out: dict[str, Any] = {
        "audio_s": round(run.audio_s, 2), "wall_s": round(run.wall_s, 2),
        "cpu_s": round(run.cpu_s, 3), "pct_of_core": round(pct, 3) if pct is not None else None,
        "target_pct": target, "verdict": verdict(pct <= target if pct is not None and target
                                                 else None),
        "ready_s": run.ready_s, "first_append_s": run.first_append_s,
        "exit_code": run.exit_code, "threads": run.threads,
        "rss_mb_end": run.rss_mb[-1][1] if run.rss_mb else None,
        "exact_pct": round(run.exact_pct, 3) if run.exact_pct is not None else None,
        "profile": run.profile,
        "sent_ratio": round(sent / captured, 3) if captured else None,
        "window_counters": run.window_counters, "note": run.note,
    }
    lat = dict(run.latency)
    if lat.get("available"):
        lat["verdict"] = verdict(lat["p99"] <= TARGET_LATENCY_MS if lat["p99"] else None)
    out["latency"] = lat
    for key in ("seconds_played", "playback_underruns", "barge_ins"):
        if key in run.status:
            out[key] = run.status[key]
    out["responses"] = run.status.get("counters", {}).get("responses")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="audio seconds measured per real-time scenario (default 15)")
    parser.add_argument("--memory-minutes", type=float, default=10.0)
    parser.add_argument("--speedup", type=float, default=12.0,
                        help="how much faster than real time the memory run's microphone "
                             "delivers (default 12)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" /
                        "daemon.json")
    parser.add_argument("--chunk-ms", type=int, default=20,
                        choices=(10, 20, 40, 50, 100),
                        help="audio.chunk_ms (also the PortAudio buffer; default 20)")
    parser.add_argument("--profile", action="store_true",
                        help="also sample each scenario with py-spy record (where the time "
                             "goes, per thread and function)")
    parser.add_argument("--cpus", default="",
                        help="run the daemon under `taskset -c CPUS` (e.g. 1: one CPU)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="scenarios to run (streaming playback idle_gate memory imports)")
    args = parser.parse_args()
    global CHUNK_MS, BLOCK, TARGET_LATENCY_MS  # noqa: PLW0603 - one run, one chunk size
    CHUNK_MS = args.chunk_ms
    BLOCK = RATE * CHUNK_MS // 1000
    TARGET_LATENCY_MS = CHUNK_MS + 5.0
    only = set(args.only) if args.only else {"streaming", "playback", "idle_gate", "memory",
                                              "imports"}
    began = time.monotonic()
    report: dict[str, Any] = {
        "machine": machine(),
        "targets": {"pct_of_core": TARGET_PCT, "rss_mb": TARGET_RSS_MB,
                    "start_s": TARGET_START_S, "capture_to_wire_p99_ms": TARGET_LATENCY_MS},
        "chunk_ms": CHUNK_MS,
        "scenarios": {},
    }
    runs: list[Run] = []
    # As installed (dh_python3's py3compile, pip): edgevoice byte-compiled. A checkout run
    # with PYTHONDONTWRITEBYTECODE compiles every module at each start instead, which
    # leaves the compiler's scratch in the heap (about 1.7 MB more resident memory).
    report["byte_compiled"] = compileall.compile_dir(str(ROOT / "edgevoice"), quiet=1)
    with tempfile.TemporaryDirectory(prefix="evbench-") as tmp:
        bench = Bench(args, Path(tmp))
        bench.server.start()
        try:
            if "streaming" in only:
                run = bench.run("streaming", room_stream(1), seconds=args.seconds)
                runs.append(run)
                report["scenarios"]["streaming"] = summarise(run, TARGET_PCT["streaming"])
            if "playback" in only:
                signal_ = turns(30.0, every_s=6.0, talk_s=1.5)
                run = bench.run("playback", signal_, seconds=args.seconds + 4, playback=True)
                runs.append(run)
                report["scenarios"]["playback"] = summarise(run, TARGET_PCT["playback"])
            if "idle_gate" in only:
                run = bench.run("idle_gate", room_stream(2), seconds=args.seconds,
                                gate="vad")
                runs.append(run)
                sc = summarise(run, TARGET_PCT["idle_gate"])
                ratio = sc.get("sent_ratio")
                if run.audio_s <= 0 or ratio is None or ratio > 0.5:
                    why = run.note or (f"{ratio:.0%} of the room was streamed"
                                       if ratio is not None else "nothing measured")
                    sc["verdict"] = "not available yet"
                    sc["note"] = f"the speech gate is not in effect: {why}"
                report["scenarios"]["idle_gate"] = sc
            if "memory" in only:
                minutes = args.memory_minutes
                run = bench.run("memory", turns(60.0, every_s=5.0, talk_s=1.5),
                                seconds=minutes * 60, warmup_s=0.0, speedup=args.speedup,
                                sample_s=0.25)
                runs.append(run)
                report["scenarios"]["memory"] = summarise(run, None)
                report["memory"] = memory_summary(run, args.speedup)
            if "imports" in only:
                report["imports"] = imports(bench)
        finally:
            bench.server.stop()
    starts = [r for r in runs if r.ready_s is not None]
    report["startup"] = {"runs": len(starts)}
    for key in ("ready_s", "first_append_s"):
        values = [getattr(r, key) for r in runs if getattr(r, key) is not None]
        median = statistics.median(values) if values else None
        report["startup"][key] = {
            "median": round(median, 3) if median is not None else None,
            "max": round(max(values), 3) if values else None, "all": values,
            "verdict": verdict(median <= TARGET_START_S if median is not None else None)}
    report["bench_s"] = round(time.monotonic() - began, 1)
    print_report(report)
    for run in runs:
        if run.note or run.exit_code not in (0, None):
            print(f"\n{run.name}: {run.note or ''} exit {run.exit_code}; log tail:\n"
                  f"{run.log_tail[-1200:]}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\n({report['bench_s']:.0f} s; JSON in {args.json})")
    return 0


def memory_summary(run: Run, speedup: float) -> dict[str, Any]:
    samples = run.rss_mb
    audio_min = run.audio_s / 60
    out: dict[str, Any] = {"speedup": speedup, "audio_min": round(audio_min, 2),
                           "samples": samples}
    if len(samples) < 4:
        out.update(growth_mb=float("nan"), flat=None, rss_mb_end=float("nan"), rss_ok=None,
                   rss_at_min=[])
        return out
    xs = np.array([a for a, _ in samples]) / 60
    ys = np.array([m for _, m in samples])
    half = xs >= xs[-1] / 2
    slope = float(np.polyfit(xs[half], ys[half], 1)[0]) if half.sum() >= 2 else 0.0
    growth = slope * float(xs[-1] - xs[half][0])
    marks = [float(m) for m in (1, 2, 5, 10) if m <= xs[-1] + 1e-9] or [round(xs[-1], 1)]
    out.update(growth_mb=round(growth, 3), flat=growth <= FLAT_MB, rss_map=run.rss_map,
               rss_mb_end=float(ys[-1]), rss_ok=float(ys.max()) <= TARGET_RSS_MB,
               rss_max_mb=float(ys.max()),
               rss_at_min=[(m, float(ys[np.argmin(np.abs(xs - m))])) for m in marks])
    return out


def imports(bench: Bench) -> dict[str, Any]:
    """What `edgevoice run` imports and never runs: one run under -X importtime for the
    costs, one under daemon_usage.py for the use (each a few seconds of streaming)."""
    timed = bench.run("importtime", room_stream(3), seconds=3.0, warmup_s=0.5,
                      prefix=[sys.executable, "-X", "importtime", "-m", "edgevoice"])
    costs, parents = import_costs((bench.workdir / "importtime" / "daemon.log").read_text(
        errors="replace"))
    out_path = bench.workdir / "used.json"
    traced = bench.run("usage", room_stream(4), seconds=3.0, warmup_s=0.5,
                       prefix=[sys.executable, str(ROOT / "benchmarks" / "daemon_usage.py")],
                       extra_env={"EDGEVOICE_USAGE_OUT": str(out_path)})
    try:
        used = set(json.loads(out_path.read_text())["used"])
    except (OSError, json.JSONDecodeError, KeyError):
        return {"total_ms": sum(costs.values()), "unused": [],
                "note": f"usage run failed: {traced.note} {traced.log_tail[-300:]}"}
    return {"total_ms": round(sum(costs.values()), 1),
            "unused": unused_imports(costs, parents, used),
            "importtime_exit": timed.exit_code}


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
