"""``python -m dragonfork.bench.perpacket --viewers 100``: server CPU per forwarded packet, quickly.

The development loop for the fast path's per-packet cost (``nox -s bench`` takes 30 minutes and measures
everything; this takes about a minute and measures one thing). It starts the benchmark's dragonfork server
(pinned to the first CPU, the viewers to the others, as the bench does), measures an idle window, lets
``--viewers`` real WebRTC viewers join at the bench's rate, settles, and measures a window. Printed (and as
JSON with ``--json``): µs of server CPU (user + system, the process's own) per packet the viewers received,
in all and above the idle window's CPU, loss, the viewers' own CPU, the load average, and signalling (WHEP
POST → 201: as the viewers saw it, on the wire as ``signalling_latency`` captures it on lo, and as the
server's histogram has it) and connection times of the joins; with ``--hop``, then the server hop
(``hop_latency``); with ``--profile SECONDS``, then a py-spy profile of the server sorted into the bench's
buckets (``bench/profile.py``), µs per packet each.
``--workers 1 2`` measures one server after the other, each with that ``webrtc.workers`` (above 1 on every
CPU, its workers' CPU, RSS and packets counted with the server's), and prints them side by side;
``--every-cpu`` runs the 1-worker server on every CPU too, beside the viewers, as the 2-worker one has to
run on a machine that also carries the viewers (docs/whep.md: what that costs per packet).
CPU seconds per packet are far less sensitive to a shared machine than wall-clock figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import trio

from dragonfork.bench.media import make_clip
from dragonfork.bench.servers import RunningServer, dragonfork_server
from dragonfork.bench.suite import (
    JOIN_RATE,
    SETUP_TIMEOUT,
    SuiteSettings,
    WireSignalling,
    hop_latency,
    measure_window,
    profile_server,
    say,
    server_meter,
    signalling_on_the_wire,
)
from dragonfork.loadtest.report import session_figures
from dragonfork.loadtest.runner import LoadTestOptions, open_load_test, workers_for

_POST_BUCKETS = "dragonfork_webrtc_whep_request_duration_seconds_bucket{"


async def per_packet(
    viewers: int,
    seconds: float,
    settle: float,
    workdir: Path,
    *,
    hop: bool = False,
    profile: float = 0.0,
    workers: int = 1,
    every_cpu: bool = False,
    cpus: list[int] | None = None,
) -> dict[str, Any]:
    """One server measured; ``cpus``: the machine's CPUs to place it and the viewers on (by default this
    process's; a run leaves this process on the viewers' CPUs, so runs after the first must be given them)."""
    cpus = cpus or sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) >= 2 else (None, None)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    if workers > 1 or every_cpu:
        server_cpus = set(cpus)  # a core per worker, as ``nox -s bench`` runs them; beside the viewers
    clip = make_clip(Path.home() / ".cache" / "dragonfork" / "bench")
    async with dragonfork_server(
        workdir, clip, keyframe_cache=True, cpus=server_cpus, workers=workers
    ) as server:
        meter = server_meter(server)
        options = LoadTestOptions(
            target=server.target, workers=workers_for(viewers), worker_cpus=client_cpus, lifetime=600
        )
        async with open_load_test(options) as test:
            idle = await measure_window(server, test, meter, seconds / 2)
            say(f"{viewers} viewers joining")
            wire = WireSignalling()
            async with signalling_on_the_wire(server, wire):
                await test.join(viewers, viewers / JOIN_RATE)
                await test.wait_for_setups(SETUP_TIMEOUT)
            await trio.sleep(settle)
            window = await measure_window(server, test, meter, seconds)
            hop_figures = await hop_latency(server, seconds, viewers) if hop else None
            profiled = None
            if profile:
                # the collapsed stacks outlive the run's directory, for a closer look
                settings = SuiteSettings(workdir=Path(tempfile.gettempdir()), profile_seconds=profile)
                profiled = await profile_server(server, test, meter, settings)
            served = await _post_durations(server)
        joins = session_figures(list(test.setups.values()), test.ends)
    packets_per_second = window["packets_per_second"]
    busy = window["server_cpu_percent"] / 100
    above_idle = busy - idle["server_cpu_percent"] / 100
    return {
        "workers": workers,
        "server_cpus": sorted(server_cpus) if server_cpus else None,
        "viewers": viewers,
        "connected": window["connected"],
        "us_per_packet": round(1e6 * busy / packets_per_second, 2) if packets_per_second else None,
        "us_per_packet_above_idle": round(1e6 * above_idle / packets_per_second, 2)
        if packets_per_second
        else None,
        "server_cpu_percent": window["server_cpu_percent"],
        "server_rss_mib": window["server_rss_mib"],
        "idle_server_cpu_percent": idle["server_cpu_percent"],
        "packets_per_second": packets_per_second,
        "loss_percent": window["loss_percent"],
        "server_drops": window["server_drops"],
        "client_cpu_percent": window["client_cpu_percent"],
        "load_average": window["load_average"],
        "hop_latency": hop_figures,
        "profile": profiled,
        "joins": {
            "connected": joins["connected"],
            "failures": joins["failures"],
            "signalling_seconds": joins["signalling_seconds"],
            "connected_seconds": joins["connected_seconds"],
            "server_post_seconds_at_most": served,
            "post_on_the_wire": wire.figures(),
        },
    }


async def _post_durations(server: RunningServer) -> dict[str, float] | None:
    """The server's own WHEP POST durations (its histogram): the bucket bound under which half, 95 % lie.

    The viewers measure POST → 201 in their own event loops, which share CPUs with everything they do; the
    server's histogram tells how much of that time the server itself took to answer.
    """
    if server.metrics_url is None:
        return None
    async with httpx.AsyncClient(timeout=5.0) as http:
        text = (await http.get(server.metrics_url)).text
    buckets = []
    for line in text.splitlines():
        if line.startswith(_POST_BUCKETS) and 'method="POST"' in line:
            bound = line.split('le="')[1].split('"')[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return None
    return {
        name: next(bound for bound, count in buckets if count >= share * total)
        for name, share in (("p50", 0.5), ("p95", 0.95))
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dragonfork.bench.perpacket", description=__doc__)
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="the measuring window")
    parser.add_argument("--settle", type=float, default=4.0, help="seconds after the last join")
    parser.add_argument("--hop", action="store_true", help="then the server hop (kernel timestamps; root)")
    parser.add_argument(
        "--profile", type=float, default=0.0, metavar="SECONDS", help="then py-spy the server this long"
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="webrtc.workers of the server; several: one server after the other (e.g. --workers 1 2)",
    )
    parser.add_argument(
        "--every-cpu",
        action="store_true",
        help="every server on every CPU, beside the viewers (as webrtc.workers above 1 always runs), so a "
        "1-worker run is measured as a 2-worker one is, not alone on the first CPU",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    runs = []
    cpus = sorted(os.sched_getaffinity(0))  # every run places its server and viewers on these
    for workers in args.workers:
        with tempfile.TemporaryDirectory(prefix="dragonfork-perpacket-") as workdir:
            run = functools.partial(
                per_packet,
                hop=args.hop,
                profile=args.profile,
                workers=workers,
                every_cpu=args.every_cpu,
                cpus=cpus,
            )
            runs.append(trio.run(run, args.viewers, args.seconds, args.settle, Path(workdir)))
    if args.json:
        print(json.dumps(runs if len(runs) > 1 else runs[0], indent=2))
        return 0
    for figures in runs:
        _print(figures)
    return 0


def _print(figures: dict[str, Any]) -> None:
    cpus = ",".join(str(cpu) for cpu in figures["server_cpus"] or []) or "any"
    print(f"webrtc.workers {figures['workers']} on CPUs {cpus} (CPU and RSS: the server and its workers):")
    signalling = figures["joins"]["signalling_seconds"] or {}
    wire = figures["joins"]["post_on_the_wire"]
    on_the_wire = wire["answer_ms"] or {}
    print(
        f"{figures['connected']}/{figures['viewers']} viewers: {figures['us_per_packet']} µs of server CPU"
        f" per forwarded packet ({figures['us_per_packet_above_idle']} above idle),"
        f" server {figures['server_cpu_percent']} % of a core, {figures['packets_per_second']} packets/s,"
        f" loss {figures['loss_percent']} %, clients {figures['client_cpu_percent']} %,"
        f" load {figures['load_average']}; joins: POST → 201 p50 {1000 * signalling.get('p50', 0):.0f}"
        f" / p95 {1000 * signalling.get('p95', 0):.0f} ms as the viewers saw it, on the wire p50"
        f" {on_the_wire.get('p50')} / p95 {on_the_wire.get('p95')} ms (statuses {wire['statuses']}"
        f"{', errors ' + '; '.join(wire['errors']) if wire['errors'] else ''};"
        " the server's histogram: at most"
        f" {figures['joins']['server_post_seconds_at_most']} s),"
        f" failures {figures['joins']['failures'] or 'none'}, RSS {figures['server_rss_mib']} MiB"
    )
    hop = figures["hop_latency"]
    if hop:
        last = hop.get("last_packet_ms") or {}
        print(
            f"server hop (last packet in → out): p50 {last.get('p50')} / p95 {last.get('p95')} /"
            f" p99 {last.get('p99')} ms over {hop.get('frames')} frames"
            f" of {hop.get('viewer_streams')} streams"
            f" ({hop.get('streams_not_aligned')} not aligned) {hop.get('error', '')}"
        )
    profiled = figures["profile"]
    if profiled:
        if "error" in profiled:
            print(f"profile: {profiled['error']}")
        else:
            print(
                f"py-spy: {profiled['us_per_packet']} µs per packet over {profiled['samples']} samples"
                f" ({profiled['collapsed_stacks']})"
            )
            for row in profiled["buckets"] + profiled["paths"]:
                print(f"  {row['us_per_packet']:6.2f} µs {row['share_percent']:5.1f} %  {row['name']}")


if __name__ == "__main__":
    sys.exit(main())
