"""Chaos rounds against the real server: kill -9 under writers, stop/start cycles with viewers, many clients
racing on few ids, and a flood of hostile RTP. Every round is bounded in count and time; traffic is loopback.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from harness import Server, ffmpeg_children, lavfi_process, metric, running_server, wait_live, whep_url
from whep_peers import play, start_client

pytestmark = pytest.mark.chaos

VIEWER_LOOP = Path(__file__).with_name("viewer_loop.py")
ONE_REQUEST_PER_CONNECTION = httpx.Limits(max_keepalive_connections=0)
"""The registry rounds open a connection per request: on main (before issue 9's keep-alive work) a request
on a reused keep-alive connection after an early error answer can stall, which would hide what they test."""


@contextmanager
def looping_viewers(url: str, count: int) -> Iterator[list[dict[str, Any]]]:
    """``count`` WHEP viewers in one subprocess that reconnect whenever the server ends them; yields the
    reports of the sessions that ended so far (filled in by a reader thread)."""
    proc = subprocess.Popen(
        [sys.executable, str(VIEWER_LOOP), url, str(count)], stdout=subprocess.PIPE, text=True
    )
    reports: list[dict[str, Any]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            reports.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield reports
    finally:
        proc.kill()
        proc.wait()
        reader.join(5)


def resources(server: Server) -> tuple[int, int]:
    assert server.proc is not None
    process = psutil.Process(server.proc.pid)
    return process.num_fds(), process.num_threads()


def webrtc_gauges(server: Server, process_id: str) -> tuple[float, float, float]:
    return (
        metric(server, "dragonfork_webrtc_viewers_active", process=process_id),
        metric(server, "dragonfork_webrtc_sources_active", kind="video"),
        metric(server, "dragonfork_webrtc_sources_active", kind="audio"),
    )


def test_thirty_stop_start_cycles_with_three_viewers_end_every_viewer_and_return_to_baseline(
    tmp_path: Path,
) -> None:
    process_id = "cycles"
    with running_server(tmp_path) as server:
        config = lavfi_process(process_id, webrtc=True, output=[])
        assert server.api("POST", "/api/v3/process", json=config).status_code < 300
        wait_live(server, process_id)
        baseline: tuple[int, int] | None = None
        stopped = 0.0
        with looping_viewers(whep_url(server, process_id), 3) as reports:
            connected = 0.0  # viewers that reached ICE+DTLS connected, over all cycles
            for cycle in range(31):  # one warm-up cycle, then 30 measured ones

                def three_connected(connected_before: float = connected) -> bool:
                    setups = metric(server, "dragonfork_webrtc_viewer_setup_seconds_count")
                    active = metric(server, "dragonfork_webrtc_viewers_active", process=process_id)
                    return active == 3 and setups >= connected_before + 3

                server.wait_for(three_connected, 20, f"3 connected viewers in cycle {cycle}")
                connected = metric(server, "dragonfork_webrtc_viewer_setup_seconds_count")
                if cycle == 1:
                    stopped = metric(
                        server, "dragonfork_webrtc_viewers_closed_total", reason="process_stopped"
                    )
                ended_before = sum(report["server_closed"] for report in reports)
                command = {"command": "stop"}
                assert (
                    server.api("PUT", f"/api/v3/process/{process_id}/command", json=command).status_code
                    == 200
                )
                server.wait_for(
                    lambda ended_before=ended_before: (
                        sum(r["server_closed"] for r in reports) >= ended_before + 3
                    ),
                    5,
                    f"every viewer to see the end in cycle {cycle}",
                )
                assert webrtc_gauges(server, process_id) == (0, 0, 0)
                if cycle == 0:
                    baseline = resources(server)
                command = {"command": "start"}
                assert (
                    server.api("PUT", f"/api/v3/process/{process_id}/command", json=command).status_code
                    == 200
                )
            closed = (
                metric(server, "dragonfork_webrtc_viewers_closed_total", reason="process_stopped") - stopped
            )
            assert closed == 90
            assert (
                server.api(
                    "PUT", f"/api/v3/process/{process_id}/command", json={"command": "stop"}
                ).status_code
                == 200
            )
        assert baseline is not None
        server.wait_for(lambda: webrtc_gauges(server, process_id) == (0, 0, 0), 10, "gauges at zero")
        server.wait_for(  # Trio retires an idle worker thread after 10 s
            lambda: all(now <= then for now, then in zip(resources(server), baseline, strict=True)),
            20,
            f"fds and threads back to {baseline} (now {resources(server)})",
        )
        failed = [report for report in reports if report["error"] and report["status"] == 201]
        assert not failed, failed[:3]


def test_kill_9_during_thirty_concurrent_writers_five_rounds(tmp_path: Path) -> None:
    """Every acknowledged write is there after the restart, no FFmpeg of the killed server is left, and the
    streams play."""
    acknowledged: set[str] = set()
    with running_server(tmp_path) as server:
        body = lavfi_process("live", webrtc=True, output=[])
        assert server.api("POST", "/api/v3/process", json=body).status_code < 300
        for round_ in range(5):
            wait_live(server, "live")
            stop_writing = threading.Event()

            def writer(
                index: int, round_: int = round_, stop_writing: threading.Event = stop_writing
            ) -> None:
                with httpx.Client(
                    base_url=server.url, timeout=5, limits=ONE_REQUEST_PER_CONNECTION
                ) as client:
                    serial = 0
                    while not stop_writing.is_set():
                        process_id = f"w{round_}-{index}-{serial}"
                        serial += 1
                        config = lavfi_process(process_id, autostart=serial % 10 == 0)
                        try:
                            response = client.post("/api/v3/process", json=config)
                        except httpx.TransportError:
                            return  # the server is gone
                        if response.status_code in (200, 201):
                            acknowledged.add(process_id)
                            if serial % 10 == 0:  # a delete in flight leaves the entry's fate open
                                acknowledged.discard(process_id)
                                with contextlib.suppress(httpx.TransportError):
                                    client.delete(f"/api/v3/process/{process_id}")

            with ThreadPoolExecutor(30) as pool:
                for index in range(30):
                    pool.submit(writer, index)
                time.sleep(1.5)
                children = ffmpeg_children(server)
                assert server.proc is not None
                server.proc.send_signal(signal.SIGKILL)
                server.proc.wait()
                stop_writing.set()
            _, alive = psutil.wait_procs(children, timeout=5)
            assert not alive, f"round {round_}: FFmpeg children survived the server: {alive}"
            server.start()
            ids = {p["id"] for p in server.api("GET", "/api/v3/process").json()}
            missing = acknowledged - ids
            assert not missing, f"round {round_}: acknowledged writes lost: {sorted(missing)[:5]}"
        wait_live(server, "live")
        report = play(whep_url(server, "live"), duration=2)
        assert report["error"] is None and report["video_frames_decoded"] > 10, report


def test_thirty_clients_on_five_ids_for_twenty_seconds_leave_one_ffmpeg_per_running_process(
    tmp_path: Path,
) -> None:
    ids = [f"id{index}" for index in range(5)]
    statuses: dict[int, int] = {}
    latencies: list[float] = []  # operations on one process wait for each other (its operation lock)
    with running_server(tmp_path) as server:

        def client(seed: int) -> None:
            rng = random.Random(seed)
            deadline = time.monotonic() + 20
            with httpx.Client(base_url=server.url, timeout=60, limits=ONE_REQUEST_PER_CONNECTION) as http:
                while time.monotonic() < deadline:
                    asked_at = time.monotonic()
                    process_id = rng.choice(ids)
                    operation = rng.choice(["create", "replace", "delete", "start", "stop", "restart"])
                    if operation == "create":
                        response = http.post(
                            "/api/v3/process", json=lavfi_process(process_id, autostart=rng.random() < 0.5)
                        )
                    elif operation == "replace":
                        new_id = rng.choice(ids)
                        response = http.put(f"/api/v3/process/{process_id}", json=lavfi_process(new_id))
                    elif operation == "delete":
                        response = http.delete(f"/api/v3/process/{process_id}")
                    else:
                        response = http.put(
                            f"/api/v3/process/{process_id}/command", json={"command": operation}
                        )
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    latencies.append(time.monotonic() - asked_at)

        with ThreadPoolExecutor(30) as pool:
            list(pool.map(client, range(30)))
        assert not any(status >= 500 for status in statuses), statuses

        def consistent() -> bool:
            processes = server.api("GET", "/api/v3/process").json()
            started = {p["id"]: p["state"]["command"] for p in processes if p["state"]["order"] == "start"}
            if any(p["state"]["exec"] != "running" for p in processes if p["id"] in started):
                return False
            commands = sorted(child.cmdline() for child in ffmpeg_children(server))
            return commands == sorted(started.values())

        server.wait_for(consistent, 20, "exactly one FFmpeg per process ordered to start, none other")
        db_ids = sorted(entry["config"]["id"] for entry in server.db()["processes"])
        api_ids = sorted(p["id"] for p in server.api("GET", "/api/v3/process").json())
        assert db_ids == api_ids and len(set(api_ids)) == len(api_ids)
        print(
            f"statuses over 20 s: {dict(sorted(statuses.items()))}, {len(api_ids)} processes left, "
            f"slowest request {max(latencies):.1f} s, median {sorted(latencies)[len(latencies) // 2]:.2f} s"
        )


def hostile_datagrams(count: int) -> Iterator[bytes]:
    """Garbage, foreign RTP of both payload types (oversize audio among it), RTCP and empty datagrams."""
    rng = random.Random(8)
    for index in range(count):
        kind = index % 5
        if kind == 0:
            yield rng.randbytes(rng.randrange(1, 200))
        elif kind == 1:
            yield (
                struct.pack("!BBHII", 0x80, 96, index & 0xFFFF, index * 3000, 0xBAD)
                + b"\x7c\x05"
                + bytes(900)
            )
        elif kind == 2:
            yield struct.pack("!BBHII", 0x80, 111, index & 0xFFFF, index * 960, 0xBAD) + bytes(1400)
        elif kind == 3:
            yield struct.pack("!BBHIIIIII", 0x80, 200, 6, 1, 2, 3, 4, 5, 6)
        else:
            yield b""


def test_two_hundred_thousand_hostile_datagrams_leave_a_viewer_decoding_video_and_audio(
    tmp_path: Path,
) -> None:
    with running_server(tmp_path) as server:
        body = lavfi_process("target", webrtc=True, output=[])
        assert server.api("POST", "/api/v3/process", json=body).status_code < 300
        wait_live(server, "target")
        ports = [
            int(port)
            for port in re.findall(r"rtp://127\.0\.0\.1:(\d+)\?", " ".join(server.state("target")["command"]))
        ]
        assert len(ports) == 2, ports
        viewer = start_client(whep_url(server, "target"), duration=12)
        time.sleep(2)
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for datagram in hostile_datagrams(200_000):
                sender.sendto(datagram, ("127.0.0.1", ports[sent % 2]))
                sent += 1
        assert sent == 200_000
        report = viewer.report()
        assert report["error"] is None and not report["server_closed"], report
        assert report["video_frames_decoded"] > 200 and report["audio_frames"] > 400, report
        assert server.api("GET", "/ping").status_code == 200
        after = play(whep_url(server, "target"), duration=2)
        assert after["error"] is None and after["video_frames_decoded"] > 10 and after["audio_frames"] > 20, (
            after
        )
