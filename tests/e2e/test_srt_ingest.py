"""SRT ingest in the browser: the admin UI lists the SRT publisher and the URL to copy, its form creates the
process reading ``{srt,name=cam2}``, and headless Chromium plays ``/api/v3/whep/cam2``.

A real FFmpeg (libsrt) publishes ``srt://127.0.0.1:PORT?streamid=cam2,mode:publish``; the process is a
libsrt reader of the SRT server and publishes the stream into the hub through its RTP legs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from e2e_helpers import (
    admin_alert_of_a_server_down,
    video_pixels,
    wait_for_media,
    wait_for_webrtc_ready,
    whep_url,
)
from harness import Server, running_server
from rtmp_helpers import wait_until
from srt_helpers import free_udp_port, publish_live, srt_url, stop

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_udp_port()
    directory = tmp_path_factory.mktemp("srt-e2e")
    with running_server(directory, CORE_SRT_ENABLE="true", CORE_SRT_ADDRESS=f":{port}") as running:
        running.srt_port = port  # type: ignore[attr-defined]
        publisher = publish_live(
            srt_url(port, "cam2,mode:publish"), Path(directory) / "publisher.log", audio=True
        )
        try:
            wait_until(lambda: running.api("GET", "/api/v3/srt").json()["publisher"], 20, "the publisher")
            yield running
        finally:
            stop(publisher)


def test_admin_lists_the_srt_publisher_creates_the_process_and_shows_the_srt_url(
    new_page: Callable[..., Page], server: Server, screenshot: Callable[..., Any]
) -> None:
    page = new_page(permissions=["clipboard-read", "clipboard-write"])
    page.goto(server.url)
    row = page.wait_for_selector("#publisher-rows tr[data-publisher='cam2']")
    assert row is not None and "SRT" in row.inner_text()
    port = server.srt_port  # type: ignore[attr-defined]
    assert f"srt://127.0.0.1:{port}?streamid=NAME,mode:publish" in page.inner_text("#publish-here")

    page.click("#new-process")
    page.fill("#editor input[name=id]", "cam2")
    page.select_option("#editor select[name=ingest-protocol]", "srt")
    page.fill("#editor input[name=ingest-name]", "cam2")
    page.click("#editor [data-add=ingest]")
    assert page.input_value("#editor [data-io=input] input[name=io-address]") == "{srt,name=cam2}"
    page.click("#editor [data-io=output] [data-action=remove]")
    page.check("#editor input[name='webrtc.enabled']")
    page.click("#editor button[type=submit]")
    page.wait_for_selector("#editor", state="hidden")
    wait_for_webrtc_ready(server, "cam2")

    page.click("tr[data-id=cam2] .publish-to summary")
    block = page.locator("tr[data-id=cam2] .publish-to")
    block.locator(".copyable", has_text="FFmpeg URL").locator("button").click()
    page.wait_for_selector("tr[data-id=cam2] .publish-to button:text('Copied')")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == f"srt://127.0.0.1:{port}?streamid=cam2,mode:publish"
    assert "Stream id" in block.inner_text()
    wait_until(lambda: "1 reader" in page.inner_text("#publisher-rows"), 10, "the process as a reader")
    screenshot(page, "admin-srt-ingest")


def test_browser_plays_the_srt_feed_over_whep(page: Page, server: Server) -> None:
    wait_for_webrtc_ready(server, "cam2")
    page.goto(f"{server.url}/whep-player.html?url={quote(whep_url(server, 'cam2'), safe='')}")
    page.click("#play")
    wait_for_media(page, server, frames=30, timeout=15)
    pixels = video_pixels(page, "video")
    assert (pixels["width"], pixels["height"]) == (320, 240) and pixels["litFraction"] > 0.5, pixels


def test_admin_shows_why_the_srt_server_is_down(new_page: Callable[..., Page], tmp_path: Path) -> None:
    """A reload to an address another socket holds: the publishers panel says the server is down and why."""
    alert, port = admin_alert_of_a_server_down(new_page, tmp_path, "srt")
    assert alert.startswith("SRT server is down:") and f"127.0.0.1:{port}" in alert, alert


def test_admin_lists_a_refused_publisher_with_the_cause(page: Page, server: Server, tmp_path: Path) -> None:
    """A second publisher of the live cam2 is refused; the publishers panel says so, cam2 stays live."""
    url = srt_url(server.srt_port, "cam2,mode:publish")  # type: ignore[attr-defined]
    second = publish_live(url, tmp_path / "second.log", seconds=10)
    try:
        wait_until(lambda: server.api("GET", "/api/v3/ingest").json()["srt"]["refused"], 20, "the refusal")
    finally:
        stop(second)
    page.goto(server.url)
    refusal = page.wait_for_selector("#ingest-refusals li[data-protocol=SRT]")
    assert refusal is not None and "cam2" in refusal.inner_text(), refusal and refusal.inner_text()
    assert page.locator("#publisher-rows tr[data-publisher='cam2']").count() == 1
