"""``dragonfork loadtest --url URL --peers N --duration D [--token T] [--ramp S] [--out DIR]``.

N real WebRTC viewers (aiortc peers that count RTP instead of decoding it) join over ``--ramp`` seconds,
stay ``--duration`` seconds, and leave. A progress line shows while it runs; a JSON and a Markdown report are
written to ``--out``. Only this machine is a valid target unless ``--allow-remote`` is given. Exit codes:
0 some viewers connected, 1 none did, 2 bad arguments or a refused target.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psutil
import trio

from dragonfork.loadtest import report as reports
from dragonfork.loadtest.server_probe import ProcessMeter, Usage, cpu_percent, find_listener, is_local_host

if TYPE_CHECKING:
    from dragonfork.loadtest.runner import LoadTest

HELP = "load a WHEP stream with N real WebRTC viewers and report (local targets only by default)"

MAX_PEERS = 1000
MAX_DURATION = 3600.0
MAX_RAMP = 600.0
MAX_TIMEOUT = 60.0
PROGRESS_INTERVAL = 0.5
SAMPLE_INTERVAL = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", required=True, help="WHEP endpoint (or Janus HTTP API root with --janus-mountpoint)"
    )
    parser.add_argument("--peers", type=int, required=True, help=f"viewers, 1-{MAX_PEERS}")
    parser.add_argument(
        "--duration", type=float, required=True, help="seconds every viewer stays after the ramp"
    )
    parser.add_argument("--token", help="bearer token for the Authorization header")
    parser.add_argument(
        "--ramp", type=float, default=None, help="seconds over which viewers join (default N/20)"
    )
    parser.add_argument(
        "--out", default="loadtest-results", help="directory for the JSON and Markdown report"
    )
    parser.add_argument("--workers", type=int, help="worker processes (default: one per 60 viewers)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for signalling and for ICE+DTLS")
    parser.add_argument(
        "--max-reconnects", type=int, default=3, help="per viewer, when the server ends a session"
    )
    parser.add_argument(
        "--janus-mountpoint", type=int, help="load a Janus streaming mountpoint instead of WHEP"
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow a target that is not this machine (yours to load!)"
    )


def main(args: argparse.Namespace) -> int:
    problem = _check_arguments(args)
    if problem:
        print(f"dragonfork loadtest: {problem}", file=sys.stderr)
        return 2
    result = trio.run(run_loadtest, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "loadtest-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(reports.markdown(result))
    print(reports.markdown(result))
    print(f"report: {out / stem}.json and .md", file=sys.stderr)
    return 0 if result["sessions"]["connected"] else 1


def _check_arguments(args: argparse.Namespace) -> str | None:
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"--url must be an http(s) URL, got {args.url!r}"
    if not args.allow_remote and not is_local_host(parts.hostname):
        return (
            f"{parts.hostname} is not this machine; a load test sends real traffic, so a remote target needs "
            "--allow-remote (and the permission of whoever runs it)"
        )
    if not 1 <= args.peers <= MAX_PEERS:
        return f"--peers must be 1-{MAX_PEERS}"
    if not 0 < args.duration <= MAX_DURATION:
        return f"--duration must be in (0, {MAX_DURATION:g}] seconds"
    if args.ramp is not None and not 0 <= args.ramp <= MAX_RAMP:
        return f"--ramp must be in [0, {MAX_RAMP:g}] seconds"
    if args.workers is not None and not 1 <= args.workers <= args.peers:
        return f"--workers must be 1-{args.peers} (at most one per viewer)"
    if not 0 < args.timeout <= MAX_TIMEOUT:
        return f"--timeout must be in (0, {MAX_TIMEOUT:g}] seconds"
    return None


async def run_loadtest(args: argparse.Namespace) -> dict[str, Any]:
    # aiortc and PyAV load here, not when the command line is parsed
    from dragonfork.loadtest.runner import LoadTestOptions, open_load_test, workers_for
    from dragonfork.loadtest.viewer import Target

    ramp = args.peers / 20 if args.ramp is None else args.ramp
    workers = args.workers or workers_for(args.peers)
    target = Target(args.url, args.token, args.janus_mountpoint)
    options = LoadTestOptions(
        target=target,
        workers=workers,
        timeout=args.timeout,
        max_reconnects=args.max_reconnects,
        lifetime=ramp + args.duration + 2 * args.timeout + 60,
    )
    parts = urlsplit(args.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    server = find_listener(port) if is_local_host(parts.hostname or "") else None
    server_name = " ".join(server.cmdline()[:4]) if server is not None else ""
    meter = ProcessMeter(server) if server is not None else None
    samples: list[dict[str, Any]] = []
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    async with open_load_test(options) as test, trio.open_nursery() as nursery:
        if meter is not None:
            nursery.start_soon(_sample, meter, samples)
        nursery.start_soon(_show_progress, test, time.monotonic() + ramp + args.duration)
        await test.join(args.peers, ramp)
        await test.wait_for_setups(2 * args.timeout + 5)
        await trio.sleep(args.duration)
        nursery.cancel_scope.cancel()
    print(file=sys.stderr)
    return build_report(args, test, ramp, workers, started_at, server, server_name, samples)


async def _sample(meter: ProcessMeter, samples: list[dict[str, Any]]) -> None:
    """Sample the server until cancelled, or until it exits (the load test and its report go on)."""
    try:
        first = previous = meter.read()
        while True:
            await trio.sleep(SAMPLE_INTERVAL)
            usage = meter.read()
            samples.append(_sample_row(first, previous, usage))
            previous = usage
    except psutil.NoSuchProcess:
        print("\nthe server process exited; its samples end here", file=sys.stderr)


def _sample_row(first: Usage, before: Usage, after: Usage) -> dict[str, Any]:
    server, children = cpu_percent(before, after)
    return {
        "t": round(after.at - first.at, 2),
        "cpu_percent": round(server, 1),
        "rss_bytes": after.rss_bytes,
        "children_cpu_percent": round(children, 1),
        "children_rss_bytes": after.children_rss_bytes,
    }


async def _show_progress(test: LoadTest, ends_at: float) -> None:
    interactive = sys.stderr.isatty()
    while True:
        remaining = max(0.0, ends_at - time.monotonic())
        line = f"{test.progress()} | {remaining:.0f} s left"
        print(f"\r{line}\x1b[K" if interactive else line, end="" if interactive else "\n", file=sys.stderr)
        await trio.sleep(PROGRESS_INTERVAL if interactive else 5.0)


def machine() -> str:
    load = os.getloadavg()
    return f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, load average {load[0]:.2f}"


def build_report(
    args: argparse.Namespace,
    test: LoadTest,
    ramp: float,
    workers: int,
    started_at: str,
    server: Any,
    server_name: str,
    samples: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "run": {
            "url": args.url,
            "peers": args.peers,
            "duration_seconds": args.duration,
            "ramp_seconds": ramp,
            "workers": workers,
            "started_at": started_at,
            "machine": machine(),
            "signalling_label": "WHEP POST → 201"
            if args.janus_mountpoint is None
            else "Janus create → start",
        },
        "sessions": reports.session_figures(list(test.setups.values()), test.ends),
        "viewers": reports.viewer_figures(test.counters),
        "reconnects": test.reconnects,
        "server": None if server is None else {"pid": server.pid, "name": server_name, "samples": samples},
    }
