"""HLS out of memfs: the issue's Restreamer-style output, unchanged, played by FFmpeg as an HLS client over
HTTP while its cleanup rules hold the segment count, and nothing left once the process is deleted.

The watch lasts until more segments were made than ``max_files`` allows (not for a fixed time), so the
bound is proven on a loaded machine as on a quiet one, and no longer than that takes."""

from __future__ import annotations

import re
import subprocess
import threading
import time

import imageio_ffmpeg
from harness import Server, file_names, restreamer_hls_process

PLAY_SECONDS = 20
# the segments' cleanup rule of the output
MAX_FILES = restreamer_hls_process("restreamer")["output"][0]["cleanup"][0]["max_files"]


def test_restreamer_hls_plays_in_ffmpeg_within_max_files_and_delete_leaves_nothing(server: Server) -> None:
    process_id = "restreamer"
    assert server.api("POST", "/api/v3/process", json=restreamer_hls_process(process_id)).status_code in (
        200,
        201,
    )
    playlist = f"{server.url}/memfs/{process_id}.m3u8"
    server.wait_for(
        lambda: server.api("GET", f"/memfs/{process_id}.m3u8").text.count(".ts") >= 2, 30, "two segments"
    )

    most_segments = 0
    segments_made = 0  # the highest segment number seen, plus one (they are numbered from 0)
    watching = True

    def watch() -> None:
        nonlocal most_segments, segments_made
        while watching:
            names = file_names(server, "mem", f"/{process_id}_*.ts")
            most_segments = max(most_segments, len(names))
            numbers = [int(match.group(1)) for name in names if (match := re.search(r"_(\d+)\.ts$", name))]
            segments_made = max([segments_made, *(number + 1 for number in numbers)])
            time.sleep(0.5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        player = subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                "-hide_banner",
                "-nostats",
                "-v",
                "warning",
                "-progress",
                "pipe:1",
                "-i",
                playlist,
                "-t",
                str(PLAY_SECONDS),
                "-f",
                "null",
                "-",
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=PLAY_SECONDS + 30,
        )
        server.wait_for(lambda: segments_made > MAX_FILES, 60, f"more than {MAX_FILES} segments made")
    finally:
        watching = False
        watcher.join()

    assert player.returncode == 0, player.stderr
    played_us = max(int(value) for value in re.findall(r"^out_time_us=(\d+)$", player.stdout, re.M))
    frames = max(int(value) for value in re.findall(r"^frame=(\d+)$", player.stdout, re.M))
    assert played_us >= (PLAY_SECONDS - 0.5) * 1e6, player.stdout[-500:]
    assert frames >= 25 * (PLAY_SECONDS - 1)
    assert 2 <= most_segments <= MAX_FILES, most_segments
    assert server.state(process_id)["exec"] == "running"

    assert server.api("DELETE", f"/api/v3/process/{process_id}").status_code == 200
    assert file_names(server, "mem", f"/{process_id}*") == []
    assert server.api("GET", f"/memfs/{process_id}.m3u8").status_code == 404
