"""WHIP ingest from a browser: Chromium's fake camera publishes through the npm package ``whip-whep``
(``WHIPClient``, installed by the test setup into a cache directory), a process reads ``{whip,name=cam3}``,
and a second page plays the process over WHEP with video and audio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from e2e_helpers import (
    create_ingest_process,
    npm_package,
    video_pixels,
    wait_for_media,
    wait_for_webrtc_ready,
    whep_url,
)
from harness import Server, running_server
from rtmp_helpers import play
from whep_peers import play as whep_play

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.e2e

WHIP_WHEP_VERSION = "1.2.0"
PUBLISH = """async ([url, onlyVideoCodec]) => {
  const constraints = { video: { width: 320, height: 240 }, audio: true };
  const media = await navigator.mediaDevices.getUserMedia(constraints);
  const pc = new RTCPeerConnection();
  for (const track of media.getTracks()) {
    const transceiver = pc.addTransceiver(track, { direction: "sendonly" });
    if (track.kind === "video" && onlyVideoCodec) {
      const codecs = RTCRtpSender.getCapabilities("video").codecs;
      transceiver.setCodecPreferences(codecs.filter((c) => c.mimeType === onlyVideoCodec));
    }
  }
  const client = new window.WHIPClient();
  await client.publish(pc, url);
  window.publisher = { pc, client };
  return pc.getTransceivers().map((t) => t.sender.track.kind);
}"""


@pytest.fixture(scope="module")
def whip_client() -> str:
    """whip-whep's whip.js as a module script that puts ``WHIPClient`` on ``window``."""
    script = (npm_package(f"whip-whep@{WHIP_WHEP_VERSION}") / "whip-whep" / "whip.js").read_text()
    return script + "\nwindow.WHIPClient = WHIPClient;\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("whip-e2e")) as running:
        yield running


def test_chromium_publishes_over_whip_and_a_browser_plays_the_process(
    new_page: Callable[..., Page],
    new_publisher_page: Callable[..., Page],
    server: Server,
    whip_client: str,
    screenshot: Callable[..., Any],
) -> None:
    publisher = new_publisher_page()
    publisher.goto(f"{server.url}/ping")
    publisher.add_script_tag(content=whip_client, type="module")
    publisher.wait_for_function("window.WHIPClient !== undefined")
    kinds = publisher.evaluate(PUBLISH, [f"{server.url}/api/v3/whip/cam3", None])
    assert sorted(kinds) == ["audio", "video"]
    server.wait_for(
        lambda: (
            [p["name"] for p in server.api("GET", "/api/v3/ingest").json()["whip"]["publishers"]] == ["cam3"]
        ),
        15,
        "the browser's WHIP session",
    )

    # The admin UI lists the publisher, says where to publish, and its form makes the process.
    admin = new_page()
    admin.goto(server.url)
    row = admin.wait_for_selector("#publisher-rows tr[data-publisher='cam3']")
    assert "WHIP" in row.inner_text()
    assert f"{server.url}/api/v3/whip/NAME" in admin.inner_text("#publish-here")
    create_ingest_process(admin, "browsercam", "whip", "cam3")
    wait_for_webrtc_ready(server, "browsercam", timeout=30)
    admin.click("tr[data-id=browsercam] .publish-to summary")
    assert f"{server.url}/api/v3/whip/cam3" in admin.inner_text("tr[data-id=browsercam] .publish-to")
    screenshot(admin, "admin-whip-ingest")

    player = new_page()
    player.goto(f"{server.url}/whep-player.html?url={quote(whep_url(server, 'browsercam'), safe='')}")
    player.click("#play")
    wait_for_media(player, server, frames=30, timeout=20)
    pixels = video_pixels(player, "video")
    assert pixels["width"] > 0 and pixels["litFraction"] > 0.3, pixels
    screenshot(player, "whip-browser-publisher")

    publisher.evaluate("window.publisher.client.stop()")  # DELETE: the publisher leaves
    server.wait_for(lambda: server.state("browsercam")["exec"] != "running", 15, "the input to end")


def test_chromium_publishing_vp9_only_is_read_as_vp9_and_transcoded_for_webrtc(
    new_publisher_page: Callable[..., Page], server: Server, whip_client: str
) -> None:
    publisher = new_publisher_page()
    publisher.goto(f"{server.url}/ping")
    publisher.add_script_tag(content=whip_client, type="module")
    publisher.wait_for_function("window.WHIPClient !== undefined")
    publisher.evaluate(PUBLISH, [f"{server.url}/api/v3/whip/vp9cam", "video/VP9"])

    read = play(f"{server.url}/api/v3/whip/vp9cam/stream.mkv", seconds=2)
    assert "Video: vp9" in read.stderr and "Audio: opus" in read.stderr, read.stderr[-1500:]
    config = {"id": "vp9view", "input": [{"address": "{whip,name=vp9cam}"}], "output": []}
    config["webrtc"] = {"enabled": True}
    assert server.api("POST", "/api/v3/process", json=config).status_code == 200
    wait_for_webrtc_ready(server, "vp9view", timeout=30)
    report = whep_play(whep_url(server, "vp9view"), duration=3)
    assert report["video_frames_decoded"] > 20 and report["audio_frames"] > 30, report
    publisher.evaluate("window.publisher.client.stop()")
