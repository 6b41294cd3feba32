"""Start the real server (``python -m dragonfork serve``) on an ephemeral port, as a user would.

Tests talk to it over HTTP only, so every integration test runs the real HTTP → registry → FFmpeg path.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import imageio_ffmpeg
import psutil

# 320x240 at 25 fps keeps two cores free enough for several processes and viewers at once.
TEST_VIDEO = "testsrc2=size=320x240:rate=25"
TEST_AUDIO = "sine=frequency=440:sample_rate=48000"


# Ports the tests hand to servers and peers come from below the kernel's ephemeral range (32768-60999), so no
# client connection can take one between the check and the server's bind, and from a block of their own per
# pytest-xdist worker (gw0, gw1, ...; a serial run is block 0), so two workers are never handed the same port.
# WebRTC's UDP ranges (free_udp_range) are above this, from 30000.
PORT_BLOCK_SIZE = 2000
PORT_BLOCKS_FROM = 10000
PORT_BLOCKS = 10  # 10000-29999
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
_port_block = int(_worker[2:]) + 1 if _worker.startswith("gw") and _worker[2:].isdigit() else 0
_next_port = random.randrange(PORT_BLOCK_SIZE)  # where this run starts in its block (others may share it)


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port of this worker's block that is free now (bound once to check), never one handed out before in
    this test session (the block is walked in order), so two ``free_port()`` calls never collide."""
    global _next_port
    block_start = PORT_BLOCKS_FROM + (_port_block % PORT_BLOCKS) * PORT_BLOCK_SIZE
    for _ in range(PORT_BLOCK_SIZE):
        port = block_start + _next_port % PORT_BLOCK_SIZE
        _next_port += 1
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (by anything, another test run included), or in TIME_WAIT
            return port
    raise RuntimeError(f"no free port in {block_start}-{block_start + PORT_BLOCK_SIZE - 1}")


def free_udp_range(size: int = 40) -> tuple[int, int]:
    """A UDP port range for one server; binding is the reservation, so an overlap only costs a retry."""
    base = 30000 + 2 * random.randrange(0, 14000)
    return base, base + size - 1


def lavfi_process(
    process_id: str,
    *,
    webrtc: bool = False,
    audio: bool = True,
    output: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A process config reading the small test pattern (and tone) in real time."""
    inputs = [{"id": "video", "address": TEST_VIDEO, "options": ["-re", "-f", "lavfi"]}]
    if audio:
        inputs.append({"id": "audio", "address": TEST_AUDIO, "options": ["-re", "-f", "lavfi"]})
    config: dict[str, Any] = {
        "id": process_id,
        "input": inputs,
        "output": output
        if output is not None
        else [{"id": "null", "address": "-", "options": ["-map", "0:v", "-c:v", "rawvideo", "-f", "null"]}],
        "autostart": True,
    }
    if webrtc:
        config["webrtc"] = {"enabled": True, "video_map": "0:v:0", "audio_map": "1:a:0" if audio else "0:a:0"}
        config["webrtc"]["force_transcode"] = True
    config.update(extra)
    return config


class Server:
    """One running dragonfork server process."""

    def __init__(self, data_dir: Path, env: dict[str, str], log_path: Path) -> None:
        self.data_dir = data_dir
        host, port = env["CORE_ADDRESS"].rsplit(":", 1)
        self.port = int(port)
        self.url = f"http://{host if host not in ('', '0.0.0.0') else '127.0.0.1'}:{self.port}"
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.token: str | None = None
        self.started_seconds = 0.0

    def start(self, timeout: float = 60) -> None:
        """Until the server answers ``/ping``. A server that exits fails at once; the deadline is only for a
        start that hangs, so it is wide: starts took up to ~20 s at load averages near 15 on two cores."""
        log = self.log_path.open("ab")
        began = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dragonfork", "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = began + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ping", timeout=1).status_code == 200:
                    self.started_seconds = time.monotonic() - began
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.proc.kill()  # a server that never answered must not outlive the test (it would load the machine)
        self.proc.wait()
        raise RuntimeError(f"server did not answer /ping within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"server did not stop within {timeout} s:\n{self.log()}") from None
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:]

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"} if (token or self.token) else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self.client() as client:
            return client.request(method, path, **kwargs)

    def login(self, username: str, password: str) -> str:
        response = self.api("POST", "/api/login", json={"username": username, "password": password})
        response.raise_for_status()
        self.token = str(response.json()["access_token"])
        return self.token

    def logged(self, event: str) -> list[dict[str, Any]]:
        """The entries of ``event`` in the server's log, oldest first (the server logs JSON lines when its
        stderr is not a terminal, each with its ISO ``timestamp``: see ``logged_at``)."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{") and f'"{event}"' in line]
        return [entry for entry in entries if entry["event"] == event]

    def db(self) -> dict[str, Any]:
        return json.loads((self.data_dir / "db.json").read_text())

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}\n--- server log ---\n{self.log()}"
        )

    def state(self, process_id: str) -> dict[str, Any]:
        response = self.api("GET", f"/api/v3/process/{process_id}/state")
        response.raise_for_status()
        return dict(response.json())

    def wait_state(self, process_id: str, exec_state: str, timeout: float = 15) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def reached() -> bool:
            nonlocal last
            last = self.state(process_id)
            return last["exec"] == exec_state

        self.wait_for(reached, timeout, f"{process_id} to be {exec_state} (last: {last.get('exec')})")
        return last


def logged_at(entry: dict[str, Any]) -> float:
    """When the server logged ``entry``, on the wall clock (``time.time()``) the tests share with it."""
    return datetime.fromisoformat(entry["timestamp"]).timestamp()


def server_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CORE_")}
    first, last = free_udp_range()
    env.update(
        {
            "CORE_ADDRESS": f"127.0.0.1:{free_port()}",
            "CORE_DB_DIR": str(data_dir),
            "CORE_DEMO": "false",
            "CORE_LOG_LEVEL": "info",
            "CORE_FFMPEG_STOP_TIMEOUT_SECONDS": "5",
            "CORE_WEBRTC_PORT_FIRST": str(first),
            "CORE_WEBRTC_PORT_LAST": str(last),
        }
    )
    # Any test's server can run its viewers in WebRTC worker processes instead of in itself:
    # DRAGONFORK_TEST_WEBRTC_WORKERS=2 pytest tests/integration (its own overrides still win).
    if workers := os.environ.get("DRAGONFORK_TEST_WEBRTC_WORKERS"):
        env["CORE_WEBRTC_WORKERS"] = workers
    env.update(overrides)
    return env


@contextmanager
def running_server(tmp_path: Path, **overrides: str) -> Iterator[Server]:
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    server = Server(data_dir, server_env(data_dir, **overrides), tmp_path / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def running_logged_in(tmp_path: Path, username: str, password: str, **overrides: str) -> Iterator[Server]:
    """A server with ``api.auth`` on, logged in as ``username`` (``server.token`` is an access token)."""
    auth = {
        "CORE_API_AUTH_ENABLE": "true",
        "CORE_API_AUTH_USERNAME": username,
        "CORE_API_AUTH_PASSWORD": password,
    }
    with running_server(tmp_path, **auth, **overrides) as server:
        server.login(username, password)
        yield server


# --- WHEP and metrics helpers ------------------------------------------------------------------------------


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample from /metrics (0 when the series does not exist)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$")
    for line in server.api("GET", "/metrics").text.splitlines():
        match = pattern.match(line)
        if match and ",".join(sorted((match.group(1) or "").split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def ffmpeg_children(server: Server) -> list[psutil.Process]:
    """The server's FFmpeg children (probes included), alive now."""
    assert server.proc is not None
    binary = imageio_ffmpeg.get_ffmpeg_exe()
    try:
        children = psutil.Process(server.proc.pid).children()
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if child.cmdline()[:1] == [binary] and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.Error:
            pass
    return found


def whep_url(server: Server, process_id: str) -> str:
    return f"{server.url}/api/v3/whep/{process_id}"


def wait_live(server: Server, process_id: str) -> None:
    server.wait_for(lambda: server.state(process_id)["webrtc"]["ready"], 20, f"{process_id} to have media")


# --- systemd ------------------------------------------------------------------------------------------------


class NotifySocket:
    """A datagram socket standing in for systemd's ``$NOTIFY_SOCKET``; records (arrival time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def pings(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        return [at for at, message in self.messages if message == "WATCHDOG=1" and start <= at < end]

    def received(self, message: str) -> bool:
        return any(got == message for _, got in self.messages)

    def wait_for_pings(self, count: int, since: float, timeout: float = 15) -> None:
        """Until ``count`` pings arrived after ``since``: a healthy watchdog's rate, whatever the load."""
        self.wait_until(lambda: len(self.pings(since)) >= count, timeout, f"{count} pings")

    def wait_until(self, arrived: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not arrived():
            assert time.monotonic() < deadline, f"no {what} within {timeout} s: {self.messages}"
            time.sleep(0.02)

    @contextmanager
    def receiving(self) -> Iterator[NotifySocket]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self._sock.close()


# --- files (memfs, diskfs) ----------------------------------------------------------------------------------

# x264's default GOP is 250 frames (10 s at 25 fps); the issue's HLS output sets no -g. This pattern flips to
# its negative every second, so x264's scene-cut detection starts a new GOP there and 2 s segments can be cut.
SCENE_CUT_VIDEO = "testsrc2=size=320x240:rate=25,negate=enable='lt(mod(t\\,2)\\,1)'"


def restreamer_hls_process(process_id: str) -> dict[str, Any]:
    """The Restreamer-style HLS output of issue 11, unchanged, fed by the scene-cut test pattern."""
    return {
        "id": process_id,
        "input": [{"id": "in", "address": SCENE_CUT_VIDEO, "options": ["-re", "-f", "lavfi"]}],
        "output": [
            {
                "id": "hls",
                "address": "{memfs}/{processid}.m3u8",
                "options": [
                    "-c:v",
                    "libx264",
                    "-f",
                    "hls",
                    "-hls_time",
                    "2",
                    "-hls_list_size",
                    "6",
                    "-hls_flags",
                    "append_list+delete_segments",
                    "-hls_segment_filename",
                    "{memfs}/{processid}_%04d.ts",
                    "-method",
                    "PUT",
                ],  # fmt: skip
                "cleanup": [
                    {"pattern": "memfs:/{processid}_*.ts", "max_files": 12, "purge_on_delete": True},
                    {"pattern": "memfs:/{processid}.m3u8", "purge_on_delete": True},
                ],
            }
        ],
        "autostart": True,
    }


def file_names(server: Server, storage: str, glob: str = "") -> list[str]:
    response = server.api("GET", f"/api/v3/fs/{storage}", params={"glob": glob} if glob else None)
    response.raise_for_status()
    return [entry["name"] for entry in response.json()]
