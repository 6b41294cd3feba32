"""The admin UI's files view (list, size, age, open, delete per filesystem) and a process's live thumbnail
(its snapshot output in memfs), in headless Chromium."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from harness import TEST_VIDEO, Server, file_names

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.e2e


def snapshot_process(process_id: str) -> dict[str, Any]:
    return {
        "id": process_id,
        "reference": "thumbnail demo",
        "input": [{"id": "in", "address": TEST_VIDEO, "options": ["-re", "-f", "lavfi"]}],
        "output": [
            {
                "id": "snapshot",
                "address": "{memfs}/{processid}.jpg",
                "options": ["-update", "1", "-r", "0.2"],
                "cleanup": [{"pattern": "memfs:/{processid}.jpg", "purge_on_delete": True}],
            }
        ],
        "autostart": True,
    }


def test_thumbnail_and_files_view(page: Page, server: Server, screenshot: Callable[..., Any]) -> None:
    process_id = "thumbnailed"
    assert server.api("POST", "/api/v3/process", json=snapshot_process(process_id)).is_success
    server.wait_for(lambda: f"/{process_id}.jpg" in file_names(server, "mem"), 20, "the snapshot")
    assert server.api("PUT", "/api/v3/fs/mem/notes/readme.txt", content=b"x" * 2048).is_success
    assert server.api("PUT", "/api/v3/fs/disk/on-disk.txt", content=b"disk").is_success

    page.goto(server.url + "/")
    thumb = page.locator(f'tr[data-id="{process_id}"] img.thumb')
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth === 320 && !img.hidden",
        arg=thumb.element_handle(),
        timeout=20_000,
    )

    files = page.locator("#files")
    files.locator("#filesystem").select_option("mem")
    row = files.locator('tr[data-name="/notes/readme.txt"]')
    row.wait_for()
    assert row.locator('[data-cell="size"]').inner_text() == "2.0 KiB"
    assert row.locator("a").get_attribute("href") == "/memfs/notes/readme.txt"
    assert files.locator(f'tr[data-name="/{process_id}.jpg"]').count() == 1
    screenshot(page, "files-view", doc=True)

    row.locator("button", has_text="Delete").click()
    row.wait_for(state="detached")
    assert "/notes/readme.txt" not in file_names(server, "mem")

    files.locator("#filesystem").select_option("disk")
    disk_row = files.locator('tr[data-name="/on-disk.txt"]')
    disk_row.wait_for()
    assert disk_row.locator("a").get_attribute("href") == "/on-disk.txt"
    opened = page.request.get(server.url + "/on-disk.txt")
    assert opened.ok and opened.text() == "disk"

    assert server.api("DELETE", f"/api/v3/process/{process_id}").is_success
    assert f"/{process_id}.jpg" not in file_names(server, "mem")
