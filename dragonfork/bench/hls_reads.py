"""memfs under HLS load: N concurrent clients fetch the live playlist and its newest segment from /memfs in a
closed loop (no pause between requests), while a probe measures ``GET /ping`` on the same server.

The stream is the benchmark clip (720p30, 2 s GOP) copied by the server's own FFmpeg into memfs as HLS, so
the segments have the size a real 2 Mbit/s live stream has. Bounded: ``clients`` ≤ 500, ``seconds`` ≤ 120,
loopback only.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import psutil
import trio

from dragonfork.bench.servers import RunningServer, ServerFailed
from dragonfork.loadtest.report import percentiles

PROCESS_ID = "bench-hls"
MAX_CLIENTS = 500
MAX_SECONDS = 120.0
PING_INTERVAL = 0.02
READY_TIMEOUT = 30.0


def _ms(values: list[float]) -> dict[str, float] | None:
    return percentiles(value * 1000 for value in values)


async def memfs_reads(server: RunningServer, clients: int = 200, seconds: float = 15.0) -> dict[str, Any]:
    if not 1 <= clients <= MAX_CLIENTS or not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"clients must be 1..{MAX_CLIENTS} and seconds 0..{MAX_SECONDS}")
    assert server.metrics_url is not None
    api = server.metrics_url.removesuffix("/metrics")
    if not api.startswith("http://127.0.0.1:"):
        raise ValueError("the memfs read benchmark runs against loopback only")
    config = {
        "id": PROCESS_ID,
        "input": [{"id": "clip", "address": "{diskfs}/clip.mkv", "options": ["-re", "-stream_loop", "-1"]}],
        "output": [
            {
                "id": "hls",
                "address": "{memfs}/{processid}.m3u8",
                "options": [
                    "-map",
                    "0",
                    "-c",
                    "copy",
                    "-f",
                    "hls",
                    "-hls_time",
                    "2",
                    "-hls_list_size",
                    "6",
                    "-hls_flags",
                    "delete_segments",
                    "-method",
                    "PUT",
                ],  # fmt: skip
                "cleanup": [{"pattern": "memfs:/{processid}*", "purge_on_delete": True}],
            }
        ],
    }
    playlist_url = f"{api}/memfs/{PROCESS_ID}.m3u8"
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as http:
        created = await http.post(f"{api}/api/v3/process", json=config)
        if created.status_code not in (200, 201):
            raise ServerFailed(f"creating the HLS process: HTTP {created.status_code} {created.text}")
        try:
            with trio.fail_after(READY_TIMEOUT):
                while (await http.get(playlist_url)).text.count(".ts") < 3:
                    await trio.sleep(0.5)
            return await _load(http, api, playlist_url, server.pid, clients, seconds)
        finally:
            await http.delete(f"{api}/api/v3/process/{PROCESS_ID}")


async def _load(
    http: httpx.AsyncClient, api: str, playlist_url: str, pid: int, clients: int, seconds: float
) -> dict[str, Any]:
    playlist_times: list[float] = []
    segment_times: list[float] = []
    ping_times: list[float] = []
    errors: dict[str, int] = {}
    received = 0

    def failed(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def timed_get(url: str) -> httpx.Response | None:
        began = time.perf_counter()
        try:
            response = await http.get(url)
        except httpx.HTTPError as exc:
            failed(type(exc).__name__)
            return None
        elapsed = time.perf_counter() - began
        if response.status_code != 200:
            failed(f"HTTP {response.status_code}")
            return None
        (playlist_times if url == playlist_url else segment_times).append(elapsed)
        return response

    async def player(deadline: float) -> None:
        nonlocal received
        while trio.current_time() < deadline:
            playlist = await timed_get(playlist_url)
            segments = [
                line for line in (playlist.text if playlist else "").splitlines() if line.endswith(".ts")
            ]
            if segments and (segment := await timed_get(f"{api}/memfs/{segments[-1]}")) is not None:
                received += len(segment.content)

    async def probe(deadline: float) -> None:
        async with httpx.AsyncClient(timeout=5.0) as own:
            while trio.current_time() < deadline:
                began = time.perf_counter()
                try:
                    ok = (await own.get(f"{api}/ping")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    ping_times.append(time.perf_counter() - began)
                else:
                    failed("ping")
                await trio.sleep(PING_INTERVAL)

    server_process = psutil.Process(pid)
    cpu_before, wall_before = sum(server_process.cpu_times()[:2]), time.monotonic()
    deadline = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe, deadline)
        for _ in range(clients):
            nursery.start_soon(player, deadline)
    wall = time.monotonic() - wall_before
    requests = len(playlist_times) + len(segment_times)
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": requests,
        "requests_per_second": round(requests / wall, 1),
        "megabytes_per_second": round(received / wall / 1e6, 1),
        "playlist_ms": _ms(playlist_times),
        "segment_ms": _ms(segment_times),
        "ping_ms": _ms(ping_times),
        "errors": errors,
        "server_cpu_percent": round(100 * (sum(server_process.cpu_times()[:2]) - cpu_before) / wall, 1),
    }
