"""The WHEP player page (/whep-player.html) in headless Chromium against the real server and FFmpeg."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from e2e_helpers import (
    command,
    has_horizontal_scroll,
    player_status,
    stat,
    video_pixels,
    viewer_close_reasons,
    viewers,
    wait_for_media,
    wait_for_webrtc_ready,
    whep_requests,
    whep_url,
)
from harness import Server, lavfi_process, running_server

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.e2e

PROCESS = "cam"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with one small test pattern over WHEP; at most one viewer, so the cap is easy to reach."""
    with running_server(tmp_path_factory.mktemp("player"), CORE_WEBRTC_MAX_PEERS_PER_STREAM="1") as running:
        response = running.api("POST", "/api/v3/process", json=lavfi_process(PROCESS, webrtc=True))
        assert response.status_code == 200, response.text
        wait_for_webrtc_ready(running, PROCESS)
        yield running


@pytest.fixture(autouse=True)
def no_viewer_left(server: Server) -> Iterator[None]:
    """Each test starts and ends with nobody watching (the cap is one viewer)."""
    server.wait_for(lambda: viewers(server, PROCESS) == 0, 10, "the previous viewer to leave")
    yield
    server.wait_for(lambda: viewers(server, PROCESS) == 0, 10, "the test's viewers to leave")


def player_link(server: Server, token: str = "") -> str:
    link = f"{server.url}/whep-player.html?url={quote(whep_url(server, PROCESS), safe='')}"
    return link + (f"&token={quote(token)}" if token else "")


def test_play_decodes_video_and_audio_shows_stats_and_stop_deletes(
    page: Page, server: Server, screenshot: Callable[..., Any], figures: dict[str, Any]
) -> None:
    patches: list[tuple[str, int]] = []  # (body, status) of each trickle PATCH
    page.on(
        "response",
        lambda response: (
            patches.append((response.request.post_data or "", response.status))
            if response.request.method == "PATCH"
            else None
        ),
    )
    page.goto(f"{server.url}/whep-player.html")
    page.fill("input[name=url]", whep_url(server, PROCESS))
    page.click("#play")
    wait_for_media(page, server, timeout=10)

    pixels = video_pixels(page, "video")
    assert (pixels["width"], pixels["height"]) == (320, 240), pixels
    assert pixels["litFraction"] > 0.5, f"the video is (mostly) black: {pixels}"
    assert "playing" in player_status(page)
    assert page.eval_on_selector("video", "video => video.muted && !video.paused"), "muted autoplay"
    assert stat(page, "codec").startswith("H264 (Constrained Baseline"), stat(page, "codec")
    assert "profile-level-id=42e01f" in stat(page, "fmtp")
    assert stat(page, "resolution") == "320×240"
    assert stat(page, "transport") == "connected · connected"
    assert "⇄" in stat(page, "pair")
    first_frame_ms = int(stat(page, "firstFrame").split()[0])
    assert 0 < first_frame_ms < 10_000
    figures["chromium_play_to_first_frame_ms"] = first_frame_ms
    # The candidates came after the 201 and went out as PATCH; Chromium hid its host addresses behind
    # mDNS names, so the connection above was found through connectivity checks (peer-reflexive).
    assert patches, "no trickle PATCH was sent"
    assert all(status == 204 for _, status in patches), patches
    assert any(".local" in body for body, _ in patches), [body for body, _ in patches]
    page.wait_for_function(
        "document.querySelector('[data-stat=videoBitrate]').textContent.includes('kbit/s')"
    )
    page.click("[data-stat=framesDecoded]")  # park the pointer away from the video for the picture
    screenshot(page, "player", doc=True)

    with page.expect_response(lambda response: response.request.method == "DELETE") as deleted:
        page.click("#stop")
    assert deleted.value.status == 204
    assert "Stopped" in player_status(page)
    server.wait_for(lambda: viewers(server, PROCESS) == 0, 3, "the viewer to end after Stop")
    assert viewer_close_reasons(server)[-1] == "delete"


def test_shareable_link_autoplays_and_leaving_the_page_deletes_the_session(
    page: Page, server: Server
) -> None:
    page.goto(player_link(server))
    assert page.input_value("input[name=url]") == whep_url(server, PROCESS)
    wait_for_media(page, server, frames=10, timeout=10)  # nobody clicked Play
    assert viewers(server, PROCESS) == 1
    deletes_before = whep_requests(server, "DELETE", 204)

    page.goto("about:blank")  # pagehide: DELETE with keepalive (and the peer connection closes)
    server.wait_for(lambda: viewers(server, PROCESS) == 0, 3, "the viewer to end when the page is left")
    server.wait_for(lambda: whep_requests(server, "DELETE", 204) == deletes_before + 1, 3, "the DELETE")


def test_full_stream_says_so_and_gets_in_when_a_seat_frees(
    new_page: Callable[..., Page], server: Server, screenshot: Callable[..., Any]
) -> None:
    first = new_page()
    first.goto(player_link(server))
    wait_for_media(first, server, frames=5)

    second = new_page()
    second.goto(player_link(server))
    second.wait_for_selector(".player-status[data-state=waiting]")
    status = player_status(second)
    # The countdown starts at Retry-After (5 s; the player's own backoff would say 1 s) and is read at once.
    assert re.search(r"The stream is full, try again in [45] s \(503\)", status), status
    assert "Retrying automatically" in status
    screenshot(second, "player-503")

    first.close()  # its seat frees; the second page retries on its own
    wait_for_media(second, server, frames=5, timeout=15)
    assert viewers(server, PROCESS) == 1


def test_stopping_the_process_ends_the_stream_and_starting_it_resumes_playback(
    page: Page, server: Server, screenshot: Callable[..., Any]
) -> None:
    page.goto(player_link(server))
    wait_for_media(page, server, frames=5)

    command(server, PROCESS, "stop")
    started = time.monotonic()
    page.wait_for_selector(".player-status[data-state=ended]", timeout=10_000)
    status = player_status(page)
    assert re.search(
        r"The stream has ended: the process is (finished|finishing)\. Checking again in \d+ s", status
    ), status
    screenshot(page, "player-ended")
    assert time.monotonic() - started < 10

    command(server, PROCESS, "start")
    page.wait_for_selector(".player-status[data-state=playing]", timeout=25_000)
    wait_for_media(page, server, frames=5)


def test_player_fits_a_phone_screen(
    new_page: Callable[..., Page], server: Server, screenshot: Callable[..., Any]
) -> None:
    page = new_page(viewport={"width": 390, "height": 844})
    page.goto(player_link(server))
    wait_for_media(page, server, frames=5)
    assert not has_horizontal_scroll(page)
    screenshot(page, "player-phone")
