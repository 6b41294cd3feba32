"""RTMP ingest in the browser: the admin UI's publishers and OBS settings, and a WHEP player of an RTMP feed.

A real FFmpeg publishes over RTMP (as OBS would), the admin UI's form creates the process reading
``{rtmp,name=live.stream}``, and headless Chromium plays ``/api/v3/whep/live`` with video and audio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from e2e_helpers import (
    admin_alert_of_a_server_down,
    create_ingest_process,
    video_pixels,
    wait_for_media,
    wait_for_webrtc_ready,
    whep_url,
)
from harness import Server, free_port, running_server
from rtmp_helpers import Publisher, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.e2e

TOKEN = "e2e-rtmp-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    directory = tmp_path_factory.mktemp("rtmp-e2e")
    with running_server(
        directory, CORE_RTMP_ENABLE="true", CORE_RTMP_ADDRESS=f":{port}", CORE_RTMP_TOKEN=TOKEN
    ) as running:
        running.rtmp_port = port  # type: ignore[attr-defined]
        url = f"rtmp://127.0.0.1:{port}/live.stream?token={TOKEN}"
        with Publisher(url, Path(directory) / "publisher.log"):
            wait_until(lambda: running.api("GET", "/api/v3/rtmp").json() != [], 20, "the publisher")
            yield running


def test_admin_lists_the_publisher_creates_the_process_and_shows_obs_settings(
    new_page: Callable[..., Page], server: Server, screenshot: Callable[..., Any]
) -> None:
    page = new_page(permissions=["clipboard-read", "clipboard-write"])
    page.goto(server.url)
    page.wait_for_selector("#publisher-rows tr[data-publisher='live.stream']")
    port = server.rtmp_port  # type: ignore[attr-defined]
    assert f"rtmp://127.0.0.1:{port}" in page.inner_text("#publish-here")

    # The form's "From a publisher" shortcut fills the input; WebRTC on, no other output.
    create_ingest_process(page, "live", "rtmp", "live.stream")
    wait_for_webrtc_ready(server, "live")

    # The process row says what to paste into OBS: server URL and stream key, each with a copy button.
    page.click("tr[data-id=live] .publish-to summary")
    block = page.locator("tr[data-id=live] .publish-to")
    assert f"rtmp://127.0.0.1:{port}" in block.inner_text()
    block.locator(".copyable", has_text="Stream key").locator("button").click()
    page.wait_for_selector("tr[data-id=live] .publish-to button:text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == f"live.stream?token={TOKEN}"
    screenshot(page, "admin-rtmp-ingest", doc=True)


def test_browser_plays_the_rtmp_feed_over_whep(page: Page, server: Server) -> None:
    wait_for_webrtc_ready(server, "live")
    page.goto(f"{server.url}/whep-player.html?url={quote(whep_url(server, 'live'), safe='')}")
    page.click("#play")
    wait_for_media(page, server, frames=30, timeout=15)
    pixels = video_pixels(page, "video")
    assert (pixels["width"], pixels["height"]) == (320, 240) and pixels["litFraction"] > 0.5, pixels


def test_admin_shows_why_the_rtmp_server_is_down(new_page: Callable[..., Page], tmp_path: Path) -> None:
    """A reload to an address another socket holds: the publishers panel says the server is down and why."""
    alert, port = admin_alert_of_a_server_down(new_page, tmp_path, "rtmp")
    assert alert.startswith("RTMP server is down:") and f"127.0.0.1:{port}" in alert, alert


def test_admin_lists_a_refused_publisher_with_the_cause(page: Page, server: Server, tmp_path: Path) -> None:
    url = f"rtmp://127.0.0.1:{server.rtmp_port}/intruder.stream?token=wrong"  # type: ignore[attr-defined]
    with Publisher(url, tmp_path / "refused.log"):
        wait_until(lambda: server.api("GET", "/api/v3/ingest").json()["rtmp"]["refused"], 20, "the refusal")
    page.goto(server.url)
    refusal = page.wait_for_selector("#ingest-refusals li[data-protocol=RTMP]")
    assert refusal is not None
    assert refusal.inner_text().endswith("refused: invalid token"), refusal.inner_text()
    assert page.locator("#publisher-rows tr[data-publisher='live.stream']").count() == 1  # the live one stays
