"""Failures stay local, against the real server: each test makes one thing fail for real and checks that only
it failed (its state names the cause, the failure is counted) while the server and the other processes go on.

These are also the regression tests of the defects issue 8 lists under "Why" (each test says which).
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import imageio_ffmpeg
import psutil
import pytest
from harness import (
    TEST_VIDEO,
    Server,
    ffmpeg_children,
    free_udp_range,
    lavfi_process,
    metric,
    running_server,
    wait_live,
    whep_url,
)
from whep_peers import play

from dragonfork.servers.whep.workers import WORKER_MODULE

pytestmark = pytest.mark.chaos


def running_ids(server: Server) -> set[str]:
    processes = server.api("GET", "/api/v3/process").json()
    return {p["id"] for p in processes if p["state"]["exec"] == "running"}


def failures(server: Server, component: str, cause: str) -> float:
    return metric(server, "dragonfork_failures_total", component=component, cause=cause)


# --- a process run that cannot start --------------------------------------------------------------------


def test_an_exhausted_port_range_fails_that_process_only_also_after_a_restart(tmp_path: Path) -> None:
    """Regression: a third WebRTC process with two UDP pairs in the range ended the server with a
    PortRangeExhausted traceback, and a restart on the same data directory died the same way at once."""
    first, _ = free_udp_range()
    overrides = {"CORE_WEBRTC_PORT_FIRST": str(first), "CORE_WEBRTC_PORT_LAST": str(first + 3)}
    with running_server(tmp_path, **overrides) as server:
        for index in range(3):
            body = lavfi_process(f"cam{index}", webrtc=True, reconnect=True, reconnect_delay_seconds=1)
            assert server.api("POST", "/api/v3/process", json=body).status_code == 200
        assert server.api("POST", "/api/v3/process", json=lavfi_process("plain")).status_code == 200
        for _ in range(2):  # the first server, then a new one on the same data directory
            server.wait_for(lambda: len(running_ids(server) & {"cam0", "cam1", "cam2"}) == 2, 20, "two cams")
            server.wait_state("plain", "running")
            [starved] = {"cam0", "cam1", "cam2"} - running_ids(server)
            state = server.wait_state(starved, "failed")
            assert "CORE_WEBRTC_PORT_FIRST" in state["last_error"], state
            assert "CORE_WEBRTC_PORT_LAST" in state["last_error"], state
            assert failures(server, "process", "port_range_exhausted") >= 1
            for live in {"cam0", "cam1", "cam2"} - {starved}:
                wait_live(server, live)
            assert server.api("GET", "/ping").status_code == 200
            assert server.stop() == 0
            server.start()
        report = play(whep_url(server, sorted({"cam0", "cam1", "cam2"} - {starved})[0]), duration=2)
        assert report["error"] is None and report["video_frames_decoded"] > 10, report


def test_a_probe_that_hangs_fails_that_process_and_counts(tmp_path: Path) -> None:
    """An input that accepts the connection and never sends: the probe is killed at its timeout."""
    with (
        socket.socket() as silent,
        running_server(tmp_path, CORE_FFMPEG_PROBE_TIMEOUT_SECONDS="1.5") as server,
    ):
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        hanging = {
            "id": "hangs",
            "input": [{"id": "in", "address": address, "options": []}],
            "output": [],
            "autostart": True,
            "webrtc": {"enabled": True},
        }
        assert (
            server.api("POST", "/api/v3/process", json=lavfi_process("fine", webrtc=True)).status_code < 300
        )
        assert server.api("POST", "/api/v3/process", json=hanging).status_code < 300
        state = server.wait_state("hangs", "failed", timeout=20)
        assert "timed out after 1.5 s" in state["last_error"] and address in state["last_error"], state
        assert failures(server, "process", "probe") >= 1
        assert not any(
            address in child.cmdline() for child in ffmpeg_children(server)
        )  # the probe was killed
        wait_live(server, "fine")
        report = play(whep_url(server, "fine"), duration=2)
        assert report["error"] is None and report["video_frames_decoded"] > 10, report


def test_a_missing_ffmpeg_binary_fails_the_processes_with_the_setting_to_change(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-ffmpeg")
    with running_server(tmp_path, CORE_FFMPEG_BINARY=missing) as server:
        assert server.api("POST", "/api/v3/process", json=lavfi_process("plain")).status_code < 300
        assert (
            server.api("POST", "/api/v3/process", json=lavfi_process("webrtc", webrtc=True)).status_code < 300
        )
        plain = server.wait_state("plain", "failed")
        assert "CORE_FFMPEG_BINARY" in plain["last_error"] and missing in plain["last_error"], plain
        assert failures(server, "process", "spawn") >= 1
        with_webrtc = server.wait_state("webrtc", "failed")
        assert missing in with_webrtc["last_error"], with_webrtc
        assert server.api("GET", "/ping").status_code == 200
        assert server.api("GET", "/api/v3/process").status_code == 200


# --- crash safety ---------------------------------------------------------------------------------------


def test_after_kill_9_no_ffmpeg_survives_and_a_restart_plays_again(tmp_path: Path) -> None:
    """Regression: ``kill -9`` of the server left its FFmpeg children running (and sending RTP to the ports
    the restarted server binds again). The children die with the server now (PR_SET_PDEATHSIG), and so do
    its WebRTC worker processes (``webrtc.workers: 2`` here)."""
    with running_server(tmp_path, CORE_WEBRTC_WORKERS="2") as server:
        for index in range(2):
            body = lavfi_process(f"cam{index}", webrtc=True)
            assert server.api("POST", "/api/v3/process", json=body).status_code < 300
            wait_live(server, f"cam{index}")
        pids = [child.pid for child in ffmpeg_children(server)]
        assert len(pids) == 2
        # Past the 10 s after which Trio retires an idle worker thread: had a worker thread forked FFmpeg,
        # PR_SET_PDEATHSIG (tied to the forking thread) would have killed it by now.
        time.sleep(max(0.0, 12 - (time.time() - max(psutil.Process(pid).create_time() for pid in pids))))
        assert sorted(child.pid for child in ffmpeg_children(server)) == sorted(pids)
        assert server.proc is not None
        assert play(whep_url(server, "cam0"), duration=1)["error"] is None  # the first offer starts them
        workers = [
            child.pid
            for child in psutil.Process(server.proc.pid).children()
            if WORKER_MODULE in child.cmdline()
        ]
        assert len(workers) == 2
        ledger = sorted(int(path.name) for path in (server.data_dir / "children").iterdir())
        assert ledger == sorted(pids + workers)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        gone, alive = psutil.wait_procs(
            [psutil.Process(pid) for pid in pids + workers if psutil.pid_exists(pid)], timeout=5
        )
        assert not alive, f"FFmpeg children or WebRTC workers survived the server: {alive}"
        server.start()
        for index in range(2):
            wait_live(server, f"cam{index}")
        report = play(whep_url(server, "cam1"), duration=2)
        assert report["error"] is None and report["video_frames_decoded"] > 10, report
        assert report["packets_lost"] == 0, report


def test_a_restarted_server_kills_ffmpeg_left_in_its_ledger_and_nothing_else(tmp_path: Path) -> None:
    """The second net: children recorded by a server that died are killed at start, after checking that the
    pid still belongs to that FFmpeg (a reused pid, here a plain ``sleep``, is left alone)."""
    data_dir = tmp_path / "data"
    (data_dir / "children").mkdir(parents=True)
    binary = imageio_ffmpeg.get_ffmpeg_exe()
    orphan = subprocess.Popen(
        [binary, "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i", TEST_VIDEO, "-f", "null", "-"],
        start_new_session=True,
    )
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        for process, argv0 in ((orphan, binary), (bystander, binary)):  # the bystander's record lies
            entry = {
                "pid": process.pid,
                "start_time": psutil.Process(process.pid).create_time(),
                "binary": argv0,
            }
            (data_dir / "children" / str(process.pid)).write_text(json.dumps(entry))
        with running_server(tmp_path) as server:
            assert orphan.wait(timeout=5) == -signal.SIGKILL
            assert bystander.poll() is None
            assert list((data_dir / "children").iterdir()) == []
            assert "killing an FFmpeg left running by a previous server" in server.log()
    finally:
        for process in (orphan, bystander):
            process.kill()
            process.wait()


# --- registry atomicity ---------------------------------------------------------------------------------


def test_delete_racing_start_never_leaves_an_ffmpeg_without_its_process(tmp_path: Path) -> None:
    """Regression: ``DELETE`` racing ``PUT …/command start`` answered 200 to both in 1 of 10 tries, the
    process was gone from the API and its FFmpeg ran on unreachable until shutdown. (The old code failed
    here at the first attempt.)"""
    with running_server(tmp_path) as server:
        for attempt in range(6):
            process_id = f"race{attempt}"
            body = lavfi_process(process_id, autostart=False)
            assert server.api("POST", "/api/v3/process", json=body).status_code < 300
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                start = pool.submit(
                    server.api, "PUT", f"/api/v3/process/{process_id}/command", json={"command": "start"}
                )
                delete = pool.submit(server.api, "DELETE", f"/api/v3/process/{process_id}")
                statuses = (start.result().status_code, delete.result().status_code)
            assert delete.result().status_code == 200, statuses
            assert start.result().status_code in (200, 404), statuses
            assert server.api("GET", f"/api/v3/process/{process_id}").status_code == 404
            server.wait_for(lambda: not ffmpeg_children(server), 10, f"no FFmpeg after attempt {attempt}")


def test_replace_racing_create_of_its_new_id_keeps_exactly_one(tmp_path: Path) -> None:
    """Regression: ``Registry.replace`` checked the new id, awaited ``halt()``, then wrote; a create of that
    id in between was overwritten and its FFmpeg ran on without a process."""
    with running_server(tmp_path) as server:
        for attempt in range(6):
            old_id, new_id = f"old{attempt}", f"new{attempt}"
            body = lavfi_process(old_id)  # running, so replace has a halt() to await
            assert server.api("POST", "/api/v3/process", json=body).status_code < 300
            server.wait_state(old_id, "running")
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                replace = pool.submit(
                    server.api, "PUT", f"/api/v3/process/{old_id}", json=lavfi_process(new_id)
                )
                create = pool.submit(server.api, "POST", "/api/v3/process", json=lavfi_process(new_id))
                statuses = sorted((replace.result().status_code, create.result().status_code))
            assert statuses == [200, 400], statuses  # the loser's id exists: datarhei's 400
            ids = [p["id"] for p in server.api("GET", "/api/v3/process").json()]
            assert ids.count(new_id) == 1 and (old_id in ids) == (replace.result().status_code == 400), ids

            def one_ffmpeg_per_process() -> bool:
                return len(ffmpeg_children(server)) == len(server.api("GET", "/api/v3/process").json())

            server.wait_for(one_ffmpeg_per_process, 15, f"one FFmpeg per process after attempt {attempt}")
            for process_id in (old_id, new_id):
                server.api("DELETE", f"/api/v3/process/{process_id}")
