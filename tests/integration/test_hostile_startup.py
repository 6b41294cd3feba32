"""Start-up and failure reporting (issue 9): a busy port stops start-up before anything runs, the disk
directory exists for the README's ``{diskfs}`` example, and ``last_error`` names FFmpeg's real cause."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from harness import TEST_AUDIO, TEST_VIDEO, running_server, server_env

# A keyframe a second: the first segment and the playlist come after about a second, not after x264's
# default 250-frame GOP (10 s).
HLS_EVERY_SECOND = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-f", "hls", "-hls_time", "1"]


def test_busy_http_port_stops_start_up_before_any_process_or_db_write(tmp_path: Path) -> None:
    # Before: the demo FFmpeg started and db.json was written, then the server exited.
    data = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = server_env(data, CORE_ADDRESS=f"127.0.0.1:{port}", CORE_DEMO="true")
        result = subprocess.run(
            [sys.executable, "-m", "dragonfork", "serve"], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot bind the HTTP address 127.0.0.1:{port}" in result.stderr, result.stderr
    assert not (data / "db.json").exists()
    assert "registry restored" not in result.stderr and "ffmpeg" not in result.stderr.lower()


def test_disk_directory_is_created_and_the_readme_diskfs_example_runs(tmp_path: Path) -> None:
    # Before: nothing created the disk directory, so the README's HLS example failed on a fresh install.
    disk = tmp_path / "fresh" / "disk"
    with running_server(tmp_path, CORE_STORAGE_DISK_DIR=str(disk)) as server:
        assert disk.is_dir()
        config = {
            "id": "pattern",
            "input": [{"id": "in", "address": TEST_VIDEO, "options": ["-re", "-f", "lavfi"]}],
            "output": [
                {
                    "id": "hls",
                    "address": "{diskfs}/{processid}.m3u8",
                    "options": HLS_EVERY_SECOND,
                }
            ],
        }
        assert server.api("POST", "/api/v3/process", json=config).status_code == 200
        server.wait_state("pattern", "running")
        server.wait_for(
            lambda: (disk / "pattern.m3u8").exists(), 15, "the HLS playlist in the disk directory"
        )


def test_last_error_is_the_cause_not_conversion_failed(tmp_path: Path) -> None:
    # Before: last_error was "Conversion failed!"; the cause was lines above it in the log.
    config = {
        "id": "bad-rate",
        "input": [{"id": "tone", "address": TEST_AUDIO, "options": ["-f", "lavfi", "-t", "1"]}],
        "output": [
            {"id": "out", "address": "-", "options": ["-c:a", "libopus", "-ar", "44100", "-f", "null"]}
        ],
        "reconnect": False,
    }
    with running_server(tmp_path) as server:
        assert server.api("POST", "/api/v3/process", json=config).status_code == 200
        state = server.wait_state("bad-rate", "failed")
        assert "Error while opening encoder" in state["last_error"], state["last_error"]
        log = server.api("GET", "/api/v3/process/bad-rate/report").text
        assert "Conversion failed!" in log
