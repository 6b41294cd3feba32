"""memfs under HLS load: N concurrent live HLS players read the playlist and its segments from /memfs, each
at a player's pace (a playlist reload per target duration, every new segment once), while a probe in a
process of its own measures ``GET /ping`` on the same server.

The stream is the benchmark clip (720p30, 2 s GOP) copied by the server's own FFmpeg into memfs as HLS, so
the segments have the size a real 2 Mbit/s live stream has. Bounded: ``clients`` ≤ 500, ``seconds`` ≤ 120,
loopback only.
"""

from __future__ import annotations

import http.client
import json
import sys
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
LIVE_EDGE_SEGMENTS = 3  # hls.js's default liveSyncDurationCount
TARGET_DURATION_SECONDS = 2.0  # -hls_time of the stream below
RAMP_SECONDS = 2.0  # clients join over this time, as players do, before the measured window
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
    async with httpx.AsyncClient(timeout=10.0) as client:
        created = await client.post(f"{api}/api/v3/process", json=config)
        if created.status_code not in (200, 201):
            raise ServerFailed(f"creating the HLS process: HTTP {created.status_code} {created.text}")
        try:
            with trio.fail_after(READY_TIMEOUT):
                while (await client.get(playlist_url)).text.count(".ts") < 3:
                    await trio.sleep(0.5)
            return await _load(api, f"/memfs/{PROCESS_ID}.m3u8", server.pid, clients, seconds)
        finally:
            await client.delete(f"{api}/api/v3/process/{PROCESS_ID}")


class _KeepAliveClient:
    """A minimal HTTP/1.1 keep-alive GET client on one Trio TCP stream: a request costs tens of µs of client
    CPU where httpx takes a millisecond, so 200 of them in one process measure the server, not themselves."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.buffer = b""

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.stream is None:
            self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            self.buffer = b""
        await self.stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buffer:
            await self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            await self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        if headers.get("connection") == "close":
            await self.close()
        return int(lines[0].split()[1]), body

    async def _fill(self) -> None:
        assert self.stream is not None
        data = await self.stream.receive_some(256 * 1024)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None


async def _load(api: str, playlist_path: str, pid: int, clients: int, seconds: float) -> dict[str, Any]:
    port = int(api.rsplit(":", 1)[1])
    playlist_times: list[float] = []
    segment_times: list[float] = []
    errors: dict[str, int] = {}
    received = 0

    def failed(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def timed_get(client: _KeepAliveClient, path: str, times: list[float]) -> bytes | None:
        began = time.perf_counter()
        try:
            status, body = await client.get(path)
        except OSError as exc:
            failed(type(exc).__name__)
            await client.close()
            return None
        if status != 200:
            failed(f"HTTP {status}")
            return None
        times.append(time.perf_counter() - began)
        return body

    async def player(deadline: float) -> None:
        """What a live HLS player does: reload the playlist once per target duration and fetch the segments
        it has not fetched yet, starting LIVE_EDGE_SEGMENTS from the end."""
        nonlocal received
        client = _KeepAliveClient(port)
        fetched: set[str] = set()
        try:
            while trio.current_time() < deadline:
                reload_at = trio.current_time() + TARGET_DURATION_SECONDS
                playlist = await timed_get(client, playlist_path, playlist_times)
                names = [line for line in (playlist or b"").decode().splitlines() if line.endswith(".ts")]
                # the newest entries may still be uploading while the playlist already names them
                for name in names[-LIVE_EDGE_SEGMENTS:-1] if len(names) > 1 else []:
                    if name not in fetched and (
                        segment := await timed_get(client, f"/memfs/{name}", segment_times)
                    ):
                        fetched.add(name)
                        received += len(segment)
                await trio.sleep_until(min(reload_at, deadline))
        finally:
            await client.close()

    ping: dict[str, Any] = {}

    async def probe() -> None:
        ping.update(await _ping_probe(api, seconds))

    server_process = psutil.Process(pid)
    deadline = trio.current_time() + RAMP_SECONDS + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(player, deadline)
            await trio.sleep(RAMP_SECONDS / clients)
        playlist_times.clear()
        segment_times.clear()
        received = 0
        cpu_before, wall_before = sum(server_process.cpu_times()[:2]), time.monotonic()
        nursery.start_soon(probe)
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
        "ping_ms": ping.get("ping_ms"),
        "errors": {**errors, **({"ping": ping["errors"]} if ping.get("errors") else {})},
        "server_cpu_percent": round(100 * (sum(server_process.cpu_times()[:2]) - cpu_before) / wall, 1),
    }


async def _ping_probe(api: str, seconds: float) -> dict[str, Any]:
    """``GET /ping`` every 20 ms for ``seconds``, from a process of its own (its own event loop, so the
    figures are the server's and not this process's 200 clients')."""
    done = await trio.run_process(
        [sys.executable, "-m", "dragonfork.bench.hls_reads", api, str(seconds)], capture_stdout=True
    )
    return dict(json.loads(done.stdout))


def _ping_for(api: str, seconds: float) -> dict[str, Any]:
    host, port = api.removeprefix("http://").rsplit(":", 1)
    times: list[float] = []
    errors = 0
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.perf_counter()
        try:
            connection.request("GET", "/ping")
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                times.append(time.perf_counter() - began)
            else:
                errors += 1
        except OSError:
            errors += 1
            connection.close()
        time.sleep(PING_INTERVAL)
    return {"ping_ms": _ms(times), "errors": errors}


if __name__ == "__main__":
    print(json.dumps(_ping_for(sys.argv[1], float(sys.argv[2]))))
