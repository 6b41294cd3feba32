"""Browser fixtures: Debian's headless Chromium driven by Playwright, screenshots saved as test artifacts.

The browser is ``/usr/bin/chromium`` (``nox -s e2e`` installs the Debian package when it is missing), never a
Playwright download. It keeps Chromium's defaults that matter for WebRTC: host candidates stay hidden behind
mDNS names, so every test also proves the server connects through peer-reflexive candidates.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "e2e"
DOC_IMAGES = REPO / "docs" / "images"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]
PUBLISHER_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
"""A fake camera and microphone, granted without a prompt (WHIP publishers). A page with that permission
gets raw host candidates instead of mDNS names, so only the publishing browser has it."""
VIEWPORT = {"width": 1280, "height": 800}
# The bottom of the page's content: <main> or an open dialog, whichever reaches lower.
CONTENT_BOTTOM_JS = """Math.ceil(Math.max(
  ...[...document.querySelectorAll("main, dialog[open]")].map((node) => node.getBoundingClientRect().bottom)
))"""


@pytest.fixture(scope="session")
def playwright_session() -> Iterator[Playwright]:
    """One Playwright for the session (its sync API runs one instance at a time)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `nox -s e2e` installs it (apt-get install chromium chromium-driver)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="session")
def browser(playwright_session: Playwright) -> Iterator[Browser]:
    """One Chromium for the session (each test gets its own fresh context); a temporary profile."""
    browser = playwright_session.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def publishing_browser(playwright_session: Playwright) -> Iterator[Browser]:
    """A second Chromium whose pages can publish: a fake camera and microphone (``PUBLISHER_ARGS``)."""
    browser = playwright_session.chromium.launch(
        executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *PUBLISHER_ARGS]
    )
    yield browser
    browser.close()


def _pages_of(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Open pages in fresh browser contexts; uncaught script errors in any of them fail the test."""
    contexts = []
    errors: list[str] = []

    def open_page(**context_options: Any) -> Page:
        context = browser.new_context(**{"viewport": VIEWPORT, **context_options})
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Pages of the viewing browser (mDNS host candidates, as Chromium's defaults have them)."""
    yield from _pages_of(browser)


@pytest.fixture
def new_publisher_page(publishing_browser: Browser) -> Iterator[Callable[..., Page]]:
    """Pages of the publishing browser (a fake camera and microphone)."""
    yield from _pages_of(publishing_browser)


@pytest.fixture
def page(new_page: Callable[..., Page]) -> Page:
    return new_page()


@pytest.fixture(scope="session")
def screenshot() -> Callable[..., Path]:
    """Save a screenshot under test-artifacts/e2e/; with UPDATE_DOC_SCREENSHOTS=1, ``doc=True`` ones also go
    to docs/images/ (the README's pictures)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def save(page: Page, name: str, *, doc: bool = False) -> Path:
        path = ARTIFACTS / f"{name}.png"
        # Down to the end of the content (plus a margin), not the empty rest of the window.
        height = page.evaluate(CONTENT_BOTTOM_JS) + 24
        viewport = page.viewport_size or VIEWPORT
        clip = {"x": 0, "y": 0, "width": viewport["width"], "height": min(height, viewport["height"])}
        page.screenshot(path=str(path), clip=clip)
        if doc and os.environ.get("UPDATE_DOC_SCREENSHOTS") == "1":
            DOC_IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOC_IMAGES / path.name)
        return path

    return save


@pytest.fixture(scope="session")
def figures() -> Iterator[dict[str, Any]]:
    """Measured figures (e.g. Play → first frame), written to test-artifacts/e2e/figures.json at the end."""
    measured: dict[str, Any] = {}
    yield measured
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "figures.json").write_text(json.dumps(measured, indent=2) + "\n")
