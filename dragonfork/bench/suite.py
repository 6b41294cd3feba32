"""The benchmark phases, run against one server at a time with the same viewers (``dragonfork.loadtest``).

- ``fan_out``: viewers join in steps (1, 10, 25, 50, 100, 200 by default) and stay; at each step a window
  measures the server process's CPU (its FFmpeg separately), packets the viewers received, loss per viewer,
  RSS; at 1, 10, 100 and 200 viewers the kernel measures the server hop (``hop_latency``); at 100 py-spy
  profiles the server. The sweep stops after the step where the server's core saturates.
- ``first_frames``: viewers join one at a time, each leaving once its first complete keyframe arrived and
  decoded: time to first frame, signalling and ICE+DTLS times on an otherwise idle server.

CPU and RSS are measured on the server's process only (psutil, user + system time), plus, for dragonfork
with ``webrtc.workers`` above 1, its WebRTC worker processes (``server_cpu_percent`` and ``server_rss_mib``
are then sums over the server and its workers: what serves the viewers, whichever process it is; FFmpeg
apart). The server hop is captured from the UDP ports of all of them. The
server runs on the CPUs in ``server_cpus``; viewers, this orchestrator, the packet capture and py-spy run on
``client_cpus``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import trio

from dragonfork.bench import profile
from dragonfork.bench.media import GOP_SECONDS
from dragonfork.bench.servers import RunningServer
from dragonfork.loadtest.report import loss_percent, percentiles, session_figures
from dragonfork.loadtest.runner import LoadTest, LoadTestOptions, open_load_test, workers_for
from dragonfork.loadtest.server_probe import ProcessMeter, cpu_percent

JOIN_RATE = 10.0  # viewers per second while a step ramps up
SETUP_TIMEOUT = 40.0
SATURATED_PERCENT = 90.0  # of one core: the sweep stops after such a step
CLIENT_BUSY_PERCENT = 85.0  # of the client CPUs: figures of such a step are marked client-limited
SIGNALLING_CAPTURE_SECONDS = 600  # a join phase's capture ends by itself after this at the latest
CAPTURE_ALL_UP_TO = 10  # viewers; above, the latency capture samples the viewer streams


@dataclasses.dataclass
class SuiteSettings:
    steps: tuple[int, ...] = (1, 10, 25, 50, 100, 200)
    latency_steps: tuple[int, ...] = (1, 10, 100, 200)  # 200: the share of capacity is in the report
    profile_step: int | None = 100  # None: no py-spy profile (the bench's repeats after the first)
    settle_seconds: float = 4.0
    window_seconds: float = 10.0
    latency_seconds: float = 8.0
    profile_seconds: float = 12.0
    first_frame_joins: int = 30
    server_cpus: set[int] | None = None
    client_cpus: set[int] | None = None
    workdir: Path = Path(".")


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def server_meter(server: RunningServer) -> ProcessMeter:
    feeds = (psutil.Process(server.feed_pid),) if server.feed_pid else ()
    return ProcessMeter(psutil.Process(server.pid), feeds)


def _udp_receive_buffer_errors() -> int:
    """Datagrams the kernel dropped machine-wide because a socket's receive buffer was full (v4 + v6)."""
    total = 0
    snmp = Path("/proc/net/snmp").read_text().splitlines()
    udp = [line.split() for line in snmp if line.startswith("Udp:")]
    if len(udp) == 2:
        total += int(udp[1][udp[0].index("RcvbufErrors")])
    for line in Path("/proc/net/snmp6").read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == "Udp6RcvbufErrors":
            total += int(value.strip())
    return total


def _rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return total


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def _server_drops(server: RunningServer) -> dict[str, float]:
    """dragonfork's own count of packets it did not forward, by reason (empty for Janus)."""
    if server.metrics_url is None:
        return {}
    drops: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=5.0) as http:
        text = (await http.get(server.metrics_url)).text
    for line in text.splitlines():
        if line.startswith("dragonfork_webrtc_packets_dropped_total{"):
            labels, _, value = line.partition("} ")
            reason = labels.split('reason="')[1].split('"')[0]
            drops[reason] = drops.get(reason, 0.0) + float(value)
    return drops


async def measure_window(
    server: RunningServer, test: LoadTest, meter: ProcessMeter, seconds: float
) -> dict[str, Any]:
    """Server CPU/RSS, what the viewers received and lost, client CPU, socket drops, over ``seconds``
    (CPU and RSS of the server and its WebRTC workers together)."""
    usage0, counters0, drops0 = meter.read(), test.snapshot(), await _server_drops(server)
    worker_pids = server.worker_pids()
    workers0 = _cpu_seconds(worker_pids)
    clients0, socket_drops0, started = (
        _cpu_seconds(test.worker_pids),
        _udp_receive_buffer_errors(),
        time.monotonic(),
    )
    await trio.sleep(seconds)
    usage1, counters1, drops1 = meter.read(), test.snapshot(), await _server_drops(server)
    workers1 = _cpu_seconds(worker_pids)
    clients1, socket_drops1, elapsed = (
        _cpu_seconds(test.worker_pids),
        _udp_receive_buffer_errors(),
        time.monotonic() - started,
    )
    server_percent, children_percent = cpu_percent(usage0, usage1)
    workers_percent = 100.0 * (workers1 - workers0) / elapsed  # the meter counts them with its children
    feed_percent = children_percent - workers_percent
    received = expected = 0
    viewer_loss = []
    for viewer, after in counters1.items():
        before = counters0.get(viewer, [0, 0, 0, 0, 0, 0])
        got = after[0] + after[2] - before[0] - before[2]
        wanted = after[1] + after[3] - before[1] - before[3]
        received, expected = received + got, expected + wanted
        viewer_loss.append(loss_percent(got, wanted))
    workers_rss = _rss_bytes(worker_pids)
    server_cpu_seconds = usage1.cpu_seconds - usage0.cpu_seconds + workers1 - workers0
    client_cpus = len(os.sched_getaffinity(test.worker_pids[0])) if test.worker_pids else 1
    client_percent = 100.0 * (clients1 - clients0) / elapsed / client_cpus
    return {
        "seconds": round(elapsed, 2),
        "connected": test.connected,
        "server_cpu_percent": round(server_percent + workers_percent, 1),
        "workers_cpu_percent": round(workers_percent, 1),
        "ffmpeg_cpu_percent": round(feed_percent, 1),
        "server_rss_mib": round((usage1.rss_bytes + workers_rss) / 2**20, 1),
        "workers_rss_mib": round(workers_rss / 2**20, 1),
        "packets_received": received,
        "packets_expected": expected,
        "packets_per_second": round(received / elapsed),
        "packets_per_cpu_second": round(received / server_cpu_seconds) if server_cpu_seconds > 0 else None,
        "loss_percent": loss_percent(received, expected),
        "loss_percent_per_viewer": percentiles(viewer_loss),
        "viewers_over_0_1_percent_loss": sum(loss > 0.1 for loss in viewer_loss),
        "client_cpu_percent": round(client_percent, 1),
        "client_limited": client_percent >= CLIENT_BUSY_PERCENT,
        "socket_receive_drops": socket_drops1 - socket_drops0,
        "server_drops": {reason: drops1[reason] - drops0.get(reason, 0.0) for reason in drops1},
        "load_average": round(os.getloadavg()[0], 2),
    }


async def hop_latency(server: RunningServer, seconds: float, viewers: int) -> dict[str, Any]:
    """The kernel-timestamped server hop (its own process, on the client CPUs like this one).

    Above ``CAPTURE_ALL_UP_TO`` viewers only about one viewer stream in eight is captured: every captured
    packet costs the sending server a little kernel time, which matters when the server's core is nearly full.
    """
    sample_mask = 0 if viewers <= CAPTURE_ALL_UP_TO else 7
    senders = [arg for pid in server.sender_pids() for arg in ("--server-pid", str(pid))]
    command = [
        sys.executable, "-m", "dragonfork.bench.hop_latency",
        "--input-port", str(server.video_port), *senders, "--seconds", str(seconds),
        "--sample-mask", str(sample_mask),
    ]  # fmt: skip
    with trio.fail_after(seconds + 120):
        result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        return {"error": result.stderr.decode(errors="replace")[-500:]}
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


@dataclasses.dataclass
class WireSignalling:
    """WHEP POSTs and their answers captured on lo over one or more join phases
    (``signalling_on_the_wire``)."""

    answers_ms: list[float] = dataclasses.field(default_factory=list)  # of the 201s
    statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    unpaired: int = 0
    kernel_drops: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)

    def add(self, captured: dict[str, Any]) -> None:
        self.answers_ms += captured["answers_ms"]
        self.statuses.update(captured["statuses"])
        self.unpaired += captured["unpaired"]
        self.kernel_drops += captured["kernel_drops"]

    def figures(self) -> dict[str, Any]:
        return {
            "answer_ms": percentiles(self.answers_ms),
            "statuses": dict(sorted(self.statuses.items())),
            "unpaired": self.unpaired,
            "kernel_drops": self.kernel_drops,
            "errors": self.errors,
        }


@contextlib.asynccontextmanager
async def signalling_on_the_wire(server: RunningServer, into: WireSignalling) -> AsyncIterator[None]:
    """Capture the WHEP POSTs to ``server`` and their answers on lo while the block runs, into ``into``
    (``bench/signalling_latency.py``: the server's answer time without the clients' own delays).

    Only around joins: while a packet socket is open on lo every packet the server sends passes its filter
    in the kernel, on loopback in the sender's time, which would add to the CPU the sweep's windows measure.
    Nothing for a server without a WHEP endpoint (Janus) or without root.
    """
    url = urlsplit(server.target.url)
    if server.target.janus_mountpoint is not None or url.port is None or os.geteuid() != 0:
        yield
        return
    command = [
        sys.executable, "-m", "dragonfork.bench.signalling_latency",
        "--port", str(url.port), "--path", url.path, "--seconds", str(SIGNALLING_CAPTURE_SECONDS),
    ]  # fmt: skip
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = bytearray()
    try:
        with trio.move_on_after(30):  # "ready": capturing (a capture that fails says why on exit)
            while b"\n" not in output and (chunk := await process.stdout.receive_some(4096)):
                output += chunk
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(30):
            while chunk := await process.stdout.receive_some(65536):
                output += chunk
        with contextlib.suppress(ProcessLookupError):
            process.kill()  # when it did not end by itself
        await process.wait()
        text = output.decode(errors="replace")
        try:
            into.add(json.loads(text.splitlines()[-1]))
        except (IndexError, KeyError, TypeError, json.JSONDecodeError):
            into.errors.append(f"exit {process.returncode}: {text[-300:]}")


async def profile_server(
    server: RunningServer, test: LoadTest, meter: ProcessMeter, settings: SuiteSettings
) -> Any:
    output = settings.workdir / f"profile-{server.name}-{test.joined}-viewers.txt"
    usage0, counters0 = meter.read(), test.snapshot()
    try:
        recorded = await trio.to_thread.run_sync(profile.record, server.pid, settings.profile_seconds, output)
    except subprocess.CalledProcessError as exc:
        return {"error": f"py-spy failed: {exc.stderr.decode(errors='replace')[-300:]}"}
    usage1, counters1 = meter.read(), test.snapshot()
    if not recorded:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    packets = sum(
        row[0] + row[2] - counters0.get(viewer, [0] * 6)[0] - counters0.get(viewer, [0] * 6)[2]
        for viewer, row in counters1.items()
    )
    figures = profile.analyse(output, usage1.cpu_seconds - usage0.cpu_seconds, packets)
    figures["collapsed_stacks"] = str(output)
    figures["viewers"] = test.joined
    return figures


async def fan_out(server: RunningServer, settings: SuiteSettings) -> dict[str, Any]:
    """Viewers in steps until the server's core saturates (see the module docstring)."""
    meter = server_meter(server)
    can_capture = os.geteuid() == 0
    result: dict[str, Any] = {
        "steps": [],
        "stopped": None,
        "profile": None,
        "setup": None,
        "workers": server.workers,
    }
    options = LoadTestOptions(
        target=server.target,
        workers=workers_for(max(settings.steps)),
        worker_cpus=settings.client_cpus,
        lifetime=1800,
    )
    wire = WireSignalling()
    async with open_load_test(options) as test:
        say(f"{server.name}: idle window")
        result["idle"] = await measure_window(server, test, meter, settings.window_seconds / 2)
        idle_rss = result["idle"]["server_rss_mib"]
        for step in settings.steps:
            added = step - test.joined
            say(f"{server.name}: {step} viewers (+{added})")
            async with signalling_on_the_wire(server, wire):
                await test.join(added, added / JOIN_RATE)
                await test.wait_for_setups(SETUP_TIMEOUT)
            await trio.sleep(settings.settle_seconds)
            figures = await measure_window(server, test, meter, settings.window_seconds)
            figures["viewers"] = step
            # the workers started with the stream, before the idle window: their own RSS is in its figure
            figures["rss_per_viewer_kib"] = round((figures["server_rss_mib"] - idle_rss) * 1024 / step, 1)
            say(
                f"{server.name}: {step} viewers: CPU {figures['server_cpu_percent']} %, "
                f"loss {figures['loss_percent']} %, {figures['packets_per_second']} packets/s, "
                f"clients {figures['client_cpu_percent']} %"
            )
            if step in settings.latency_steps and can_capture:
                say(f"{server.name}: server-hop latency at {step} viewers")
                before = meter.read()
                figures["hop_latency"] = await hop_latency(server, settings.latency_seconds, step)
                figures["hop_latency"]["server_cpu_percent"] = round(cpu_percent(before, meter.read())[0], 1)
            if step == settings.profile_step and server.name == "dragonfork":  # py-spy profiles Python
                say(f"{server.name}: py-spy profile at {step} viewers")
                result["profile"] = await profile_server(server, test, meter, settings)
            result["steps"].append(figures)
            if not server.alive():
                result["stopped"] = f"the server died at {step} viewers; log tail:\n{server.log_tail()}"
                break
            if figures["server_cpu_percent"] >= SATURATED_PERCENT * server.workers:
                result["stopped"] = f"the server's cores ({server.workers}) saturated at {step} viewers"
                break
    # joins while the fan-out grew: signalling, connection and first frames under load (sessions end above)
    result["setup"] = session_figures(list(test.setups.values()), test.ends)
    if server.target.janus_mountpoint is None and can_capture:
        result["signalling_on_the_wire"] = wire.figures()
    if not can_capture:
        result["hop_latency_skipped"] = "needs root for a packet socket on lo"
    return result


async def first_frames(server: RunningServer, settings: SuiteSettings) -> dict[str, Any]:
    """``first_frame_joins`` viewers one after another, each leaving once its first keyframe decoded."""
    joins = settings.first_frame_joins
    options = LoadTestOptions(
        target=server.target,
        workers=1,
        first_frame_only=True,
        verify_keyframe=True,
        max_reconnects=0,
        worker_cpus=settings.client_cpus,
        lifetime=joins * 30 + 60,
    )
    # Each join ends just after a keyframe, so a random pause of up to a GOP before the next one makes the
    # joins land at every phase of the GOP (reproducibly: seeded).
    spacing = random.Random(20_000)
    say(f"{server.name}: {joins} joins for time to first frame")
    async with open_load_test(options) as test:
        for joined in range(1, joins + 1):
            await test.join(1)
            await test.wait_for_ends(joined, timeout=30)
            await trio.sleep(spacing.uniform(0.0, GOP_SECONDS))
    figures = session_figures(list(test.setups.values()), test.ends)
    figures["time_to_first_frame_values"] = sorted(
        round(end["time_to_first_frame_seconds"], 4)
        for end in test.ends
        if end["time_to_first_frame_seconds"] is not None
    )
    figures["load_average"] = round(os.getloadavg()[0], 2)
    return figures
