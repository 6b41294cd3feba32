"""hls.js in headless Chromium plays the issue's Restreamer-style HLS output from /memfs.

hls.js comes from npm, installed by the test setup into a cache directory (never into the repository), and
is served to the browser from diskfs, next to a minimal player page: the same origin as /memfs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import npm_package, video_pixels
from harness import Server, file_names, restreamer_hls_process

pytestmark = pytest.mark.e2e

HLSJS_VERSION = "1.7.4"
# Past the six 2 s segments of the playlist hls.js loaded first: it keeps reloading the live playlist and
# plays segments made after it started (max_files under a longer run: tests/integration/test_files_hls.py).
PLAY_SECONDS = 12
PLAYER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>hls.js</title>
<style>body{margin:0;background:#111;color:#eee;font:14px sans-serif} video{width:640px;height:480px}</style>
</head><body>
<main><video id="video" muted autoplay playsinline></video><p id="status">loading</p></main>
<script src="hls.min.js"></script>
<script>
  window.fatalErrors = [];
  const video = document.getElementById("video");
  const hls = new Hls({ liveSyncDurationCount: 2 });
  hls.on(Hls.Events.ERROR, (_, data) => { if (data.fatal) window.fatalErrors.push(data.details); });
  hls.loadSource(new URLSearchParams(location.search).get("src"));
  hls.attachMedia(video);
  setInterval(() => {
    const size = `${video.videoWidth}x${video.videoHeight}`;
    document.getElementById("status").textContent =
      `hls.js ${Hls.version} · ${video.currentTime.toFixed(1)} s played · ${size}`;
  }, 250);
</script>
</body></html>
"""


@pytest.fixture(scope="session")
def hlsjs() -> Path:
    """hls.js from npm, installed once into a cache directory outside the repository."""
    return npm_package(f"hls.js@{HLSJS_VERSION}") / "hls.js" / "dist" / "hls.min.js"


def test_hlsjs_plays_the_restreamer_output_from_memfs(
    page: Any, server: Server, hlsjs: Path, screenshot: Callable[..., Any], figures: dict[str, Any]
) -> None:
    process_id = "hlsjs"
    assert server.api("POST", "/api/v3/process", json=restreamer_hls_process(process_id)).is_success
    server.wait_for(
        lambda: server.api("GET", f"/memfs/{process_id}.m3u8").text.count(".ts") >= 2, 30, "two segments"
    )
    for name, content in (("hls.min.js", hlsjs.read_bytes()), ("index.html", PLAYER_PAGE.encode())):
        assert server.api("PUT", f"/api/v3/fs/disk/hlsjs-player/{name}", content=content).is_success

    began = time.monotonic()
    page.goto(f"{server.url}/hlsjs-player/?src=/memfs/{process_id}.m3u8")
    page.wait_for_function("document.getElementById('video').currentTime > 0.5", timeout=30_000)
    figures["hlsjs_seconds_to_playing"] = round(time.monotonic() - began, 2)
    most_segments = 0
    deadline = time.monotonic() + PLAY_SECONDS + 15
    while page.evaluate("document.getElementById('video').currentTime") < PLAY_SECONDS:
        assert time.monotonic() < deadline, page.inner_text("#status")
        most_segments = max(most_segments, len(file_names(server, "mem", f"/{process_id}_*.ts")))
        time.sleep(1)

    assert page.evaluate("window.fatalErrors") == []
    pixels = video_pixels(page, "#video")
    assert (pixels["width"], pixels["height"]) == (320, 240)
    assert pixels["litFraction"] > 0.3, pixels
    assert 2 <= most_segments <= 12
    figures["hlsjs_max_segments"] = most_segments
    screenshot(page, "hls-player")

    assert server.api("DELETE", f"/api/v3/process/{process_id}").is_success
    assert file_names(server, "mem", f"/{process_id}*") == []
