"""The admin UI (/) in headless Chromium against a real server with authentication on."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from e2e_helpers import (
    has_horizontal_scroll,
    stat,
    stored_config,
    video_pixels,
    viewers,
    wait_for_media,
    wait_for_webrtc_ready,
    whep_url,
)
from harness import TEST_AUDIO, TEST_VIDEO, Server, running_server

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.e2e

USERNAME = "admin"
PASSWORD = "e2e-password"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("admin"),
        CORE_API_AUTH_ENABLE="true",
        CORE_API_AUTH_USERNAME=USERNAME,
        CORE_API_AUTH_PASSWORD=PASSWORD,
        CORE_API_AUTH_JWT_SECRET="e2e-jwt-secret-that-is-long-enough",
    ) as running:
        running.login(USERNAME, PASSWORD)
        # Two processes besides the one the test creates, so the list shows more than one state.
        null_output = [{"id": "out", "address": "-", "options": ["-f", "null"]}]
        spare = {"id": "backup", "reference": "standby feed", "autostart": False, "output": null_output}
        spare["input"] = [{"id": "in", "address": TEST_VIDEO, "options": ["-re", "-f", "lavfi"]}]
        broken = {"id": "archive", "reference": "night recording", "output": null_output}
        broken["input"] = [{"id": "in", "address": "testsrc2=size=nonsense", "options": ["-f", "lavfi"]}]
        for config in (spare, broken):
            assert running.api("POST", "/api/v3/process", json=config).status_code == 200
        yield running


# The list shows one viewer and the figures of a process that has run for a few seconds.
STUDIO_WARM_WITH_ONE_VIEWER = """() => {
  const cell = (name) => document.querySelector(`tr[data-id=studio] [data-cell=${name}]`).textContent;
  return cell("viewers") === "1" && Number(cell("fps")) > 20 && parseInt(cell("uptime")) >= 3;
}"""


ACCESS_TOKEN_JS = "JSON.parse(sessionStorage.getItem('dragonfork.session')).access"


def access_token(page: Page) -> str:
    return str(page.evaluate(ACCESS_TOKEN_JS))


def log_in(page: Page, server: Server, password: str = PASSWORD) -> None:
    page.goto(f"{server.url}/")
    page.fill("#login input[name=username]", USERNAME)
    page.fill("#login input[name=password]", password)
    page.click("#login button[type=submit]")


def row(page: Page, process_id: str, cell: str) -> str:
    return page.inner_text(f"tr[data-id='{process_id}'] [data-cell={cell}]")


def fill_io(page: Page, kind: str, index: int, address: str, options: str) -> None:
    io_row = page.locator(f"[data-io={kind}] > .io-row").nth(index)
    io_row.locator("[name=io-address]").fill(address)
    io_row.locator("[name=io-options]").fill(options)


def test_admin_login_create_validate_webrtc_watch_log_delete(
    new_page: Callable[..., Page], server: Server, screenshot: Callable[..., Any], figures: dict[str, Any]
) -> None:
    page = new_page(permissions=["clipboard-read", "clipboard-write"])
    log_in(page, server, password="wrong")
    page.locator("#login .login-error", has_text="wrong username or password").wait_for()
    log_in(page, server)
    page.wait_for_selector("tr[data-id=backup]")
    assert row(page, "backup", "state") == "finished"
    page.wait_for_selector("tr[data-id=archive] .last-error")
    # The list shows why it failed, in FFmpeg's own words, set off from the row.
    assert row(page, "archive", "state") == "failed\nError opening input files: Invalid argument"
    highlight = page.locator("tr[data-id=archive] .last-error").evaluate(
        "e => { const s = getComputedStyle(e); return [s.backgroundColor, s.borderLeftWidth, s.color]; }"
    )
    assert highlight[0] not in ("rgba(0, 0, 0, 0)", "transparent") and highlight[1] == "3px", highlight
    screenshot(page, "admin-last-error")

    # Create through the form; the API's validation error appears beside the field it names.
    page.click("#new-process")
    page.fill("#editor input[name=id]", "studio one")
    page.fill("#editor input[name=reference]", "e2e studio")
    fill_io(page, "input", 0, TEST_VIDEO, "-re -f lavfi")
    page.click("#editor [data-add=input]")
    fill_io(page, "input", 1, TEST_AUDIO, "-re -f lavfi")
    fill_io(page, "output", 0, "-", "-map 0:v -c:v rawvideo -f null")
    page.check("#editor input[name='webrtc.force_transcode']")
    page.fill("#editor input[name='webrtc.audio_map']", "1:a:0")
    page.click("#editor button[type=submit]")
    id_error = page.locator("#editor input[name=id] + .field-error")
    id_error.wait_for()
    assert "may only contain letters, digits" in id_error.inner_text()
    assert page.get_attribute("#editor input[name=id]", "aria-invalid") == "true"
    screenshot(page, "admin-validation")
    page.fill("#editor input[name=id]", "studio")
    page.click("#editor button[type=submit]")
    page.wait_for_selector("#editor", state="hidden")
    page.wait_for_function("document.querySelector(\"tr[data-id=studio] .badge\")?.textContent === 'running'")
    config = server.api("GET", "/api/v3/process/studio/config").json()
    assert config["input"][1]["options"] == ["-re", "-f", "lavfi"]
    assert config["webrtc"] == config["webrtc"] | {
        "enabled": False,
        "force_transcode": True,
        "audio_map": "1:a:0",
    }

    # One click enables WebRTC (the server restarts the process with its WHEP legs).
    page.click("tr[data-id=studio] .switch input")
    server.wait_for(lambda: stored_config(server, "studio")["webrtc"]["enabled"], 5, "webrtc.enabled")
    wait_for_webrtc_ready(server, "studio")

    # Edit: drop the null output (the WHEP legs are output enough); the server restarts the process.
    page.click("tr[data-id=studio] button:text('Edit')")
    page.click("#editor [data-io=output] [data-action=remove]")
    page.click("#editor button[type=submit]")
    page.wait_for_selector("#editor", state="hidden")
    server.wait_for(
        lambda: not server.api("GET", "/api/v3/process/studio/config").json()["output"], 5, "edit"
    )
    wait_for_webrtc_ready(server, "studio")

    page.click("tr[data-id=studio] button:text('Copy WHEP URL')")
    page.wait_for_selector("tr[data-id=studio] button:text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == whep_url(server, "studio")

    # Watch it in the embedded player (the token goes along as Bearer).
    page.click("tr[data-id=studio] button:text('Watch')")
    wait_for_media(page, server, scope="#watch", timeout=10)
    pixels = video_pixels(page, "#watch video")
    assert (pixels["width"], pixels["height"]) == (320, 240) and pixels["litFraction"] > 0.5, pixels
    figures["admin_embedded_play_to_first_frame_ms"] = int(stat(page, "firstFrame", "#watch").split()[0])
    page.wait_for_selector("tr[data-id=studio] [data-cell=viewers] .figure:text-is('1')")
    screenshot(page, "admin-watch")
    page.click("#watch [data-action=close]")
    server.wait_for(lambda: viewers(server, "studio") == 0, 5, "the embedded viewer to leave")

    # A shared player link carrying a token plays on this server with authentication; the list counts it.
    link = f"{server.url}/whep-player.html?url={quote(whep_url(server, 'studio'), safe='')}"
    viewer = new_page()
    viewer.goto(f"{link}&token={access_token(page)}")
    wait_for_media(viewer, server, frames=5)
    page.wait_for_function(STUDIO_WARM_WITH_ONE_VIEWER)
    assert row(page, "studio", "memory").endswith("MiB") and row(page, "studio", "cpu").endswith("%")
    bitrate = row(page, "studio", "bitrate")
    assert re.fullmatch(r"[1-9][\d.]* [kM]bit/s", bitrate), bitrate
    # Trend lines from the metrics history (POST /api/v3/metrics) beside the figures.
    page.wait_for_selector("tr[data-id=studio] [data-cell=fps] svg.trend polyline", timeout=30_000)
    assert page.get_attribute("tr[data-id=studio] [data-cell=cpu] svg.trend", "aria-label") == (
        "CPU of studio, last 10 minutes"
    )
    screenshot(page, "admin", doc=True)
    viewer.close()

    # The log: the prelude of the current run and the history (the WebRTC toggle and the edit restarted it).
    page.click("tr[data-id=studio] button:text('Log')")
    page.wait_for_selector("#report .report-body pre")
    report_text = page.inner_text("#report .report-body")
    assert "Input #0, lavfi" in report_text and "History (2 earlier runs)" in report_text
    screenshot(page, "admin-log")
    page.click("#report [data-action=close]")

    # The raw JSON editor shows the stored config.
    page.click("tr[data-id=studio] button:text('Edit')")
    page.click("#editor [data-tab=json]")
    assert '"enabled": true' in page.input_value("#editor textarea[name=json]")
    page.click("#editor [data-action=cancel]")

    # Delete, after the confirmation.
    page.click("tr[data-id=studio] button:text('Delete')")
    assert "Delete process “studio”?" in page.inner_text("#confirm")
    page.click("#confirm button[value=ok]")
    page.wait_for_selector("tr[data-id=studio]", state="detached")
    assert server.api("GET", "/api/v3/process/studio").status_code == 404

    page.click("#logout")
    page.wait_for_selector("#login")
    assert page.is_hidden("#processes")


def test_admin_refreshes_the_token_before_it_expires(page: Page, server: Server) -> None:
    page.clock.install()
    log_in(page, server)
    page.wait_for_selector("tr[data-id=backup]")
    token_before = access_token(page)
    with page.expect_response("**/api/login/refresh") as refreshed:
        page.clock.fast_forward("09:30")  # access tokens last 10 minutes; the refresh is due a minute before
    assert refreshed.value.status == 200
    page.wait_for_function(f"{ACCESS_TOKEN_JS} !== '{token_before}'")
    page.clock.fast_forward("00:02")
    page.wait_for_selector("tr[data-id=backup]")
    assert page.is_hidden("#login")


def test_admin_fits_a_phone_screen(
    new_page: Callable[..., Page], server: Server, screenshot: Callable[..., Any]
) -> None:
    page = new_page(viewport={"width": 390, "height": 844})
    log_in(page, server)
    page.wait_for_selector("tr[data-id=backup]")
    assert not has_horizontal_scroll(page)
    screenshot(page, "admin-phone")
    page.click("#new-process")
    assert not has_horizontal_scroll(page)
    screenshot(page, "admin-phone-editor")
