"""``dragonfork loadtest`` against the real server: one lavfi WebRTC process (320x240@25, transcoded to
H.264 + Opus), the tool's own worker processes with real aiortc viewers, its report read back from disk."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from harness import Server, free_port, lavfi_process, metric, running_server, wait_live, whep_url

STOP_BOUND = 15.0  # seconds a run may take beyond ramp + duration: workers start, setups, leaving
AUDIO_PACKETS_PER_SECOND = 50  # Opus, 20 ms frames
VIDEO_FRAMES_PER_SECOND = 25


class LoadTestRun:
    """One ``python -m dragonfork loadtest`` in the background, its report written under ``directory/out``."""

    def __init__(self, directory: Path, url: str, *options: str) -> None:
        self.out = directory / "out"
        self._stdout = directory / "loadtest.stdout"
        self._stderr = directory / "loadtest.stderr"
        command = [sys.executable, "-m", "dragonfork", "loadtest", "--url", url, "--out", str(self.out)]
        with self._stdout.open("wb") as stdout, self._stderr.open("wb") as stderr:
            self.process = subprocess.Popen([*command, *options], stdout=stdout, stderr=stderr)
        self.started = time.monotonic()

    def wait(self, timeout: float) -> float:
        """Seconds from start to exit; past ``timeout`` the run is killed and the test fails."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the load test ran past {timeout:.0f} s:\n{self.stderr()}") from None
        return time.monotonic() - self.started

    def stdout(self) -> str:
        return self._stdout.read_text()

    def stderr(self) -> str:
        return self._stderr.read_text()[-5000:]

    def reports(self) -> tuple[dict[str, Any], str]:
        """The JSON report and the Markdown one: exactly one of each, with the same name."""
        documents = sorted(self.out.glob("*.json"))
        assert len(documents) == 1, f"{sorted(self.out.glob('*'))}\n{self.stderr()}"
        assert sorted(self.out.glob("*.md")) == [documents[0].with_suffix(".md")]
        return json.loads(documents[0].read_text()), documents[0].with_suffix(".md").read_text()


@contextmanager
def loadtest(directory: Path, url: str, *options: str) -> Iterator[LoadTestRun]:
    run = LoadTestRun(directory, url, *options)
    try:
        yield run
    finally:
        if run.process.poll() is None:  # its workers stop by themselves when their stdin closes
            run.process.kill()
            run.process.wait()


@pytest.fixture(scope="module")
def camera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with one live WebRTC process, ``cam``; nothing else watches it."""
    with running_server(tmp_path_factory.mktemp("loadtest")) as server:
        assert (
            server.api("POST", "/api/v3/process", json=lavfi_process("cam", webrtc=True)).status_code == 200
        )
        wait_live(server, "cam")
        yield server


def forwarded(server: Server) -> dict[str, float]:
    return {
        kind: metric(server, "dragonfork_webrtc_rtp_packets_forwarded_total", kind=kind)
        for kind in ("video", "audio")
    }


def assert_percentiles(figures: dict[str, float] | None, below: float) -> None:
    assert figures is not None
    assert 0 < figures["p50"] <= figures["p95"] <= figures["p99"] <= figures["max"] < below, figures


def test_four_viewers_for_four_seconds(camera: Server, tmp_path: Path) -> None:
    peers, duration, ramp = 4, 4.0, 1.0
    url = whep_url(camera, "cam")
    before = forwarded(camera)
    with loadtest(tmp_path, url, "--peers", "4", "--duration", "4", "--ramp", "1") as run:
        elapsed = run.wait(ramp + duration + STOP_BOUND)
    assert run.process.returncode == 0, run.stderr()
    sent = {kind: count - before[kind] for kind, count in forwarded(camera).items()}
    result, markdown = run.reports()
    print(f"{peers} viewers, {duration} s after a {ramp} s ramp: the run took {elapsed:.1f} s")
    print(markdown)
    assert elapsed > ramp + duration

    assert result["run"]["url"] == url and result["run"]["peers"] == peers
    sessions, viewers = result["sessions"], result["viewers"]
    assert sessions["attempts"] == sessions["connected"] == peers and sessions["failed"] == 0, sessions
    assert result["reconnects"] == 0 and sessions["sessions_ended_by_server"] == 0
    assert_percentiles(sessions["signalling_seconds"], below=10)
    assert_percentiles(sessions["connected_seconds"], below=10)
    assert_percentiles(sessions["time_to_first_frame_seconds"], below=10)
    assert sessions["signalling_seconds"]["p50"] <= sessions["connected_seconds"]["p50"]
    assert sessions["sessions_without_first_frame"] == 0

    assert viewers["viewers"] == peers
    audio, video = viewers["audio_packets_per_viewer"], viewers["video_packets_per_viewer"]
    # Every viewer stayed at least the duration, none longer than ramp, duration and setup/leave time.
    assert 0.9 * AUDIO_PACKETS_PER_SECOND * duration <= audio["min"], audio
    assert audio["max"] <= AUDIO_PACKETS_PER_SECOND * (ramp + duration + 3), audio
    assert video["min"] >= VIDEO_FRAMES_PER_SECOND * duration, video  # at least a packet per frame
    # Opus goes out one packet per frame, so the viewers count what the server says it sent...
    assert abs(audio["mean"] * peers - sent["audio"]) <= 0.01 * sent["audio"] + 2 * peers, (audio, sent)
    # ...while aiortc re-packetizes H.264 (FFmpeg's packets are what the server counts): same magnitude.
    assert 0.5 * sent["video"] <= video["mean"] * peers <= 2 * sent["video"], (video, sent)
    assert viewers["packets_received"] > 0 and viewers["loss_percent"] <= 0.5, viewers

    server = result["server"]
    assert server is not None and server["pid"] == camera.proc.pid and "dragonfork serve" in server["name"]
    samples = server["samples"]
    assert len(samples) >= duration - 1, samples
    assert [s["t"] for s in samples] == sorted({s["t"] for s in samples})
    assert all(s["rss_bytes"] > 20 * 2**20 and s["children_rss_bytes"] > 0 for s in samples), samples
    assert max(s["cpu_percent"] for s in samples) > 0 and max(s["children_cpu_percent"] for s in samples) > 0

    assert markdown.startswith(f"# Load test: {peers} viewers of {url}\n")
    assert f"Server process {camera.proc.pid} (" in markdown and "| WHEP POST → 201 |" in markdown
    assert markdown in run.stdout()
    assert f"{peers} joined" in run.stderr() and f"report: {run.out}" in run.stderr()


def command(server: Server, process_id: str, action: str) -> None:
    response = server.api("PUT", f"/api/v3/process/{process_id}/command", json={"command": action})
    assert response.status_code == 200, response.text


def test_stream_ended_mid_run_counts_reconnects_and_still_stops_on_time(
    camera: Server, tmp_path: Path
) -> None:
    peers, duration = 3, 8.0
    options = ("--peers", "3", "--duration", "8", "--ramp", "0", "--max-reconnects", "10")
    with loadtest(tmp_path, whep_url(camera, "cam"), *options) as run:
        camera.wait_for(
            lambda: camera.state("cam")["webrtc"]["viewers"] == peers, 20, "the load test's viewers"
        )
        time.sleep(1)
        command(camera, "cam", "stop")
        camera.wait_state("cam", "finished")
        command(camera, "cam", "start")
        wait_live(camera, "cam")
        restarted_after = time.monotonic() - run.started
        elapsed = run.wait(duration + STOP_BOUND)
    assert run.process.returncode == 0, run.stderr()
    result, markdown = run.reports()
    print(f"stream back after {restarted_after:.1f} s; the run took {elapsed:.1f} s\n{markdown}")
    sessions = result["sessions"]
    assert sessions["sessions_ended_by_server"] == peers, sessions
    assert result["reconnects"] >= peers
    assert result["reconnects"] == sessions["attempts"] - peers, "a reconnect is a session after the first"
    assert sessions["connected"] >= 2 * peers, "every viewer came back"
    assert sessions["sessions_without_first_frame"] == 0, (
        "every session, after the restart too, had a picture"
    )
    assert result["viewers"]["loss_percent"] <= 1
    assert f"{peers} ended by the server; {result['reconnects']} reconnects" in markdown


class WorkerOutput:
    """The JSON lines a load-test worker writes, read as they come."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.events: list[dict[str, Any]] = []
        self._stream = stream
        self._pending = b""

    async def until(self, predicate: Callable[[list[dict[str, Any]]], bool]) -> None:
        while not predicate(self.events):
            chunk = await self._stream.receive_some()
            assert chunk, f"the worker ended its output early: {self.events}"
            *lines, self._pending = (self._pending + chunk).split(b"\n")
            self.events += [json.loads(line) for line in lines if line.strip()]

    def setups(self) -> list[dict[str, Any]]:
        return [e["report"] for e in self.events if e["ev"] == "session" and e["phase"] == "setup"]


async def test_worker_counts_only_the_reconnects_it_made() -> None:
    """BUG: ``Viewer.run`` (dragonfork/loadtest/viewer.py) adds one to ``reconnects`` *before* its reconnect
    delay; a viewer told to leave during that delay never reconnects but keeps the count. Here: two attempts
    on a closed port, then stop, and the worker reports 2 reconnects for one."""
    closed = f"http://127.0.0.1:{free_port()}/api/v3/whep/cam"
    argv = [sys.executable, "-m", "dragonfork.loadtest.worker", "--url", closed]
    argv += ["--lifetime", "30", "--timeout", "2", "--max-reconnects", "5"]
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert process.stdin is not None and process.stdout is not None
        try:
            output = WorkerOutput(process.stdout)
            await output.until(lambda events: any(e["ev"] == "ready" for e in events))
            await process.stdin.send_all(b'{"join": [0]}\n')
            await output.until(lambda events: len(output.setups()) == 2)
            await process.stdin.send_all(b'{"stop": true}\n')
            await output.until(lambda events: events[-1]["ev"] == "done")
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
    setups = output.setups()
    assert [s["attempt"] for s in setups] == [0, 1]
    assert all(s["connected_seconds"] is None and "ConnectError" in s["error"] for s in setups), setups
    stats = [e for e in output.events if e["ev"] == "stats"][-1]["viewers"]
    assert list(stats) == ["0"] and stats["0"][:4] == [0, 0, 0, 0] and stats["0"][5] == 0, stats
    assert stats["0"][4] == len(setups) - 1, f"{stats['0'][4]} reconnects reported for {len(setups)} attempts"


def test_server_exiting_mid_run_still_gives_a_report(tmp_path: Path) -> None:
    """BUG: when the server process exits during a run, ``cli._sample`` (dragonfork/loadtest/cli.py) calls
    ``ProcessMeter.read`` on it, psutil raises NoSuchProcess, and the whole load test dies with a traceback
    and writes no report, although the viewers' figures (and the samples until the exit) are there."""
    with running_server(tmp_path / "server") as server:
        assert (
            server.api("POST", "/api/v3/process", json=lavfi_process("cam", webrtc=True)).status_code == 200
        )
        wait_live(server, "cam")
        options = (
            "--peers",
            "2",
            "--duration",
            "4",
            "--ramp",
            "0",
            "--max-reconnects",
            "1",
            "--timeout",
            "2",
        )
        with loadtest(tmp_path, whep_url(server, "cam"), *options) as run:
            server.wait_for(
                lambda: server.state("cam")["webrtc"]["viewers"] == 2, 20, "the load test's viewers"
            )
            time.sleep(1.5)
            assert server.stop() == 0
            run.wait(4 + STOP_BOUND)
    assert "Traceback" not in run.stderr(), run.stderr()
    assert run.process.returncode == 0
    result, _ = run.reports()
    assert result["sessions"]["sessions_ended_by_server"] == 2
    assert result["server"] is not None and result["server"]["samples"], "samples until the server exited"
