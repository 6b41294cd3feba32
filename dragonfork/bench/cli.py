"""``dragonfork bench [--out DIR] [--quick] [--repeats N] [--no-janus]``: the benchmarks (``nox -s bench``).

Runs, on this machine, against dragonfork and then Janus with the same FFmpeg command and the same viewers:
fan-out capacity, server-hop latency, time to first frame (dragonfork with the keyframe cache on and off),
signalling times, a py-spy profile of dragonfork at 100 viewers, and dragonfork's memfs under 200 concurrent
HLS clients (``--memfs-only`` runs just that and prints its figures). The fan-out sweeps behind the headline
run ``--repeats`` times, interleaved, and the report quotes their medians (see METHOD). Writes
``results.json``, ``README.md`` (the tables) and PNG plots into ``--out``.

About 30 minutes with the default 3 repeats: a fan-out sweep takes ~2.4 min, a round of the three ~7 min,
and what runs once ~9 min (the joins one at a time ~3, ingest ~3, Janus's default config's sweep, memfs);
each repeat more adds a round. ``--quick`` is a smoke run: ~5 min, 3 of them ingest (which it does not
shorten).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import trio

if TYPE_CHECKING:
    from dragonfork.bench.servers import RunningServer

    # what a sweep's first round also runs on its server: (the server, that server's results) → None
    OnServer = Callable[[RunningServer, dict[str, Any]], Awaitable[None]]

HELP = "benchmark dragonfork against Janus on this machine (writes docs/benchmarks)"
DEFAULT_REPEATS = 3
# the whole suite: what runs once (~9 min at the defaults) and each round of sweeps (~7 min), with room
ONCE_TIMEOUT, ROUND_TIMEOUT = 25 * 60.0, 20 * 60.0

METHOD = """\
- **One machine, split in two.** The server under test (and the FFmpeg feeding it) runs pinned to CPU 0
  with `taskset`; the viewers, the orchestrator, the packet capture and py-spy are pinned to the other CPUs.
  Server CPU is the server process's own user + system time (psutil), its FFmpeg reported separately.
  Nothing else of ours runs on CPU 0, but the machine is shared: other engineers' tests run at the same
  time, so every window records the load average, and CPU-time figures (which contention inflates little)
  are more trustworthy than latency tails (which it inflates a lot).
- **Stream.** One pre-encoded clip played in real time by FFmpeg with `-c copy` into RTP. dragonfork's own
  process builds that FFmpeg command; Janus's mountpoint is fed by the very same command with the RTP ports
  changed. Janus forwards FFmpeg's packets as they are (up to 1200 bytes); dragonfork re-packetizes each
  frame once per stream (aiortc's H.264 packetizer, up to 1300 bytes; its fast path then only protects and
  sends per viewer), so it sends about 10 % fewer, larger packets for the same bytes.
- **Viewers.** Real WebRTC peers (aiortc): WHEP for dragonfork, Janus's HTTP API (streaming plugin
  `watch`/`start`) for Janus; ICE + DTLS + SRTP as a browser does. Each viewer takes aiortc's full receive
  path until its first complete keyframe (SPS + PPS + IDR, contiguous to the marker packet), then counts
  RTP from the clear header of each SRTP packet without decrypting (aiortc's full path costs ~110 µs of
  client CPU per packet, the counting path ~18 µs), feeding aiortc's own receiver statistics so RTCP
  receiver reports stay true. No NACKs after the first keyframe: loss is reported as sent.
  Loss = expected (from RTP sequence numbers) − received.
- **Fan-out.** Viewers join at 10 per second up to each step and stay; after 4 s of settling a 10 s window
  measures. The sweep stops after a step whose server CPU reaches 90 % of a core.
- **Repeats.** The sweeps behind the headline (dragonfork, dragonfork with `webrtc.workers` 2, Janus with
  one event loop) run `--repeats` times (default 3), interleaved: round 1 runs the three one after the
  other, then round 2, and so on, each on a freshly started server, so that a drift of the shared
  machine's load hits all three alike. Every figure (CPU per viewer, viewers per core, CPU and packets
  per CPU-s per step, hop p50/p95/p99 per step, signalling during the sweep) is derived from each sweep
  on its own and quoted as its median over the sweeps, min–max in brackets; every ratio (dragonfork ÷
  Janus, 2 workers ÷ 1) is a ratio of those medians. The profile is taken in the first dragonfork sweep
  only; the joins one at a time (keyframe cache on and off, Janus), the memfs reads, ingest and Janus's
  default config run once. "Client-limited" marks
  steps where the viewers' CPUs were over 85 % busy: their loss may be the clients'. `socket_receive_drops`
  in the JSON (UDP receive-buffer overflows, machine-wide) tells whether packets died in a viewer's socket.
- **Server-hop latency.** A packet socket on `lo` (kernel timestamps, one clock) sees both the source leg
  (FFmpeg → the server's video RTP port) and every packet the server sends to a viewer (from the UDP ports
  of the server and, with `webrtc.workers` 2, of its worker processes). Per viewer, the RTP timestamp
  offset is found by pairing keyframes (many packets) and every frame is then matched to its source frame.
  "last packet" = the frame's last packet in → its last packet out to that viewer; "first
  packet" the same for first packets. It is the server's hop, not the viewers' processing. Only each
  viewer's main video stream counts: retransmissions (RTX, answering a NACK or a PLI) are left out.
- **Time to first frame.** 30 joins one at a time, each after a random pause of up to one GOP (2 s, seeded)
  so that joins land at every phase of the GOP; each viewer leaves when its first complete keyframe has
  arrived and decoded (PyAV). Measured from WHEP POST sent (Janus: `create` request sent) to the arrival of
  the keyframe's last packet. Signalling = WHEP POST → 201 (Janus: create → attach → watch → offer → start
  acknowledged, our answer included); connected = ICE + DTLS done, from the same start. Both as the
  viewers time them, in their own event loops beside the other viewers on the client CPUs. During the
  sweep's joins dragonfork's POSTs are also captured on lo (`bench/signalling_latency.py`, kernel
  timestamps, only while viewers join): "on the wire" = the request's last byte in → the 201's first byte
  out, the server's answer without the clients' delays in reading it.
- **Profile.** py-spy samples dragonfork's stacks at 100 viewers; each sample is charged to the innermost
  frame of a known component; with the server's CPU seconds and the packets the viewers received in the
  same window this gives µs per forwarded packet per component. On loopback a `sendto` also delivers the
  packet into the viewer's socket and wakes the viewer's process, in the sender's CPU time; Janus pays the
  same per packet sent. py-spy names frames by line, so the fast path's inner loop is split into its two C
  calls (libsrtp's protect, the kernel's sendto) and the Python around them."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="docs/benchmarks", help="directory for results.json, README.md, plots"
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (small steps, few joins)")
    parser.add_argument("--no-janus", action="store_true", help="skip Janus")
    parser.add_argument(
        "--memfs-only", action="store_true", help="only the memfs HLS read benchmark; print its figures"
    )
    parser.add_argument("--steps", help="comma-separated viewer counts (default 1,10,25,50,100,200)")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="a second fan-out sweep with webrtc.workers N on every CPU (default 2; 1: skip it)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help=f"fan-out sweeps per server behind the headline, interleaved (default {DEFAULT_REPEATS}; "
        "--quick: 1)",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite README.md and the plots from OUT/results.json"
    )


def main(args: argparse.Namespace) -> int:
    from dragonfork.bench.suite import SuiteSettings

    out = Path(args.out)
    if args.render_only:
        _write(json.loads((out / "results.json").read_text()), out)
        print(f"rewrote {out / 'README.md'} and the plots", file=sys.stderr)
        return 0

    settings = SuiteSettings()
    if args.quick:
        settings = SuiteSettings(
            steps=(1, 5), latency_steps=(1, 5), profile_step=5, settle_seconds=2, window_seconds=4,
            latency_seconds=4, profile_seconds=4, first_frame_joins=3,
        )  # fmt: skip
    if args.steps:
        settings.steps = tuple(int(step) for step in args.steps.split(","))
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        settings.server_cpus, settings.client_cpus = {cpus[0]}, set(cpus[1:])
        os.sched_setaffinity(0, settings.client_cpus)  # this process and everything it starts but the servers
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dragonfork-bench-") as workdir:
        settings.workdir = Path(workdir)
        if args.memfs_only:
            print(json.dumps(trio.run(run_memfs_reads, settings), indent=2))
            return 0
        repeats = args.repeats if args.repeats is not None else 1 if args.quick else DEFAULT_REPEATS
        results = trio.run(run_suite, settings, not args.no_janus, args.workers, max(1, repeats))
        _write(results, out)
    print(f"wrote {out / 'README.md'} and {out / 'results.json'}", file=sys.stderr)
    failed = [name for name, figures in results.items() if isinstance(figures, dict) and figures.get("error")]
    return 1 if failed else 0


async def run_memfs_reads(settings: Any) -> dict[str, Any]:
    from dragonfork.bench.hls_reads import memfs_reads
    from dragonfork.bench.media import make_clip
    from dragonfork.bench.servers import dragonfork_server

    clip = make_clip(Path.home() / ".cache" / "dragonfork" / "bench")
    load_before = os.getloadavg()[0]
    async with dragonfork_server(
        settings.workdir, clip, keyframe_cache=True, cpus=settings.server_cpus
    ) as server:
        figures = await memfs_reads(server)
    return {**figures, "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


async def run_suite(settings: Any, with_janus: bool, workers: int = 1, repeats: int = 1) -> dict[str, Any]:
    """Every phase; the fan-out sweeps behind the headline (dragonfork, dragonfork with ``workers``, Janus
    with one event loop) ``repeats`` times, interleaved round by round, each on a freshly started server.

    The phases that do not feed the medians run once: the joins one at a time and the memfs reads (first
    round), the py-spy profile (first dragonfork sweep), then the keyframe cache off, ingest and Janus's
    default config after the rounds. A server that fails is not started again in later rounds.

    Every repeat is a full sweep (all steps, the hop captures included): CPU per viewer is a least-squares
    line through the idle window and every clean step up to 200 viewers, the workers' capacity ratio needs
    the largest step, and the hop p99 at 1, 10, 100 and 200 viewers is a headline figure, so a shorter
    repeat would be another estimator whose values a median must not mix with the first's. The captures cost
    4 × 8 s of a ~2.5 min sweep; 3 full repeats keep the run at ~32 min (it was ~16 with one).
    """
    from dragonfork.bench.hls_reads import memfs_reads
    from dragonfork.bench.media import DESCRIPTION, make_clip
    from dragonfork.bench.servers import ServerFailed, dragonfork_server, janus_server
    from dragonfork.bench.suite import fan_out, first_frames, say

    started, load_before = time.monotonic(), os.getloadavg()[0]
    results: dict[str, Any] = {}
    clip = make_clip(Path.home() / ".cache" / "dragonfork" / "bench")
    workdir, cpus = settings.workdir, settings.server_cpus
    every_cpu = (settings.server_cpus or set()) | (settings.client_cpus or set()) or None
    feed: list[str] | None = None

    async def sweep(
        key: str,
        server_context: AbstractAsyncContextManager[RunningServer],
        sweep_settings: Any,
        before: OnServer | None = None,
        after: OnServer | None = None,
    ) -> bool:
        """One fan-out sweep into ``results[key]["fan_out_repeats"]``, with ``before``/``after`` run on the
        same server (first round); False, and the error in ``results[key]``, if the server failed."""
        figures = results.setdefault(key, {})
        try:
            async with server_context as server:
                if before is not None:
                    await before(server, figures)
                sweep_started = time.monotonic()
                measured = await fan_out(server, sweep_settings)
                measured["sweep_seconds"] = round(time.monotonic() - sweep_started, 1)
                figures.setdefault("fan_out_repeats", []).append(measured)
                if after is not None:
                    await after(server, figures)
        except ServerFailed as exc:
            figures["error"] = str(exc)
            return False
        return True

    async def dragonfork_first_frames(server: RunningServer, figures: dict[str, Any]) -> None:
        nonlocal feed
        feed = server.feed_command
        figures["first_frames_cache_on"] = await first_frames(server, settings)

    async def dragonfork_memfs_reads(server: RunningServer, figures: dict[str, Any]) -> None:
        say("dragonfork: memfs under HLS clients")
        figures["memfs_reads"] = await memfs_reads(server)

    async def janus_first_frames(server: RunningServer, figures: dict[str, Any]) -> None:
        figures["first_frames"] = await first_frames(server, settings)

    with trio.fail_after(ONCE_TIMEOUT + ROUND_TIMEOUT * repeats):
        ours_running, workers_running, janus_running = True, workers > 1, with_janus
        round_minutes: list[float] = []
        for index in range(repeats):
            round_started, first = time.monotonic(), index == 0
            say(f"round {index + 1} of {repeats}")
            # the profile is one-time: later sweeps skip py-spy (its window and its pauses of the server)
            round_settings = settings if first else dataclasses.replace(settings, profile_step=None)
            if ours_running:
                ours_running = await sweep(
                    "dragonfork",
                    dragonfork_server(workdir, clip, keyframe_cache=True, cpus=cpus),
                    round_settings,
                    before=dragonfork_first_frames if first else None,
                    after=dragonfork_memfs_reads if first else None,
                )
            if workers_running:
                say(f"dragonfork: webrtc.workers {workers}, on every CPU")
                workers_running = await sweep(
                    "dragonfork_workers",
                    dragonfork_server(workdir, clip, keyframe_cache=True, cpus=every_cpu, workers=workers),
                    round_settings,
                )
            if janus_running and feed is not None:  # one event loop, as Janus advises for many viewers
                janus_running = await sweep(
                    "janus",
                    janus_server(workdir, feed, event_loops=1, cpus=cpus),
                    round_settings,
                    before=janus_first_frames if first else None,
                )
            round_minutes.append(round((time.monotonic() - round_started) / 60, 1))
            say(f"round {index + 1} of {repeats} took {round_minutes[-1]} minutes")
        if ours_running:
            say("dragonfork: restarting with the keyframe cache off")
            try:
                async with dragonfork_server(workdir, clip, keyframe_cache=False, cpus=cpus) as server:
                    results["dragonfork"]["first_frames_cache_off"] = await first_frames(server, settings)
            except ServerFailed as exc:
                results["dragonfork"]["error"] = str(exc)
        say("ingest: RTMP, SRT and WHIP publisher → WHEP viewer latency, CPU per publisher")
        results["ingest"] = await ingest_figures(settings.server_cpus)
        if with_janus and feed is not None:
            say("Janus: its default config (a thread per viewer), one sweep")
            await sweep("janus_default", janus_server(workdir, feed, event_loops=None, cpus=cpus), settings)
    results["run"] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_minutes": round((time.monotonic() - started) / 60, 1),
        "repeats": repeats,
        "round_minutes": round_minutes,
        "machine": machine_description(),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "server_cpus": sorted(settings.server_cpus or []),
        "client_cpus": sorted(settings.client_cpus or []),
        "versions": versions(),
        "stream": DESCRIPTION,
    }
    return results


async def ingest_figures(server_cpus: set[int] | None) -> dict[str, Any]:
    """``python -m dragonfork.bench.ingest --json`` in its own process (its viewer runs plain asyncio)."""
    command = [sys.executable, "-m", "dragonfork.bench.ingest", "--json"]
    if server_cpus:
        command += ["--server-cpus", ",".join(str(cpu) for cpu in sorted(server_cpus))]
    result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        return {"error": result.stderr.decode(errors="replace")[-1500:]}
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def _write(results: dict[str, Any], out: Path) -> None:
    from dragonfork.bench import report

    report.complete(results)
    profiled = report.dragonfork_profile(results) or {}
    stacks = profiled.get("collapsed_stacks")
    if stacks and Path(stacks).exists():
        shutil.copy(stacks, out / Path(stacks).name)
        profiled["collapsed_stacks"] = Path(stacks).name
    results["plots"] = report.plots(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "README.md").write_text(report.markdown(results, METHOD))


def machine_description() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "CPU")
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} × {model}, {memory:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def versions() -> dict[str, str]:
    import aiortc

    from dragonfork import __version__
    from dragonfork.bench.media import ffmpeg_binary

    found = {"dragonfork": __version__, "aiortc": aiortc.__version__}
    ffmpeg = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True, check=False)
    found["FFmpeg"] = ffmpeg.stdout.split(" ")[2] if ffmpeg.stdout.startswith("ffmpeg version") else "?"
    if shutil.which("janus"):
        janus = subprocess.run(["janus", "--version"], capture_output=True, text=True, check=False)
        line = next((line for line in janus.stdout.splitlines() if line.startswith("Janus version")), "")
        found["Janus"] = line.rsplit("(", 1)[-1].rstrip(")") if "(" in line else "?"
    return found
