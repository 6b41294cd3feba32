"""What the browser tests look at: the player's stats panel, the pixels of a <video>, the server's viewers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import Server, free_port, running_server

if TYPE_CHECKING:
    from playwright.sync_api import Page

_MEDIA_FLOWING = """({scope, frames}) => {
  const root = document.querySelector(scope);
  const value = (key) => Number(root.querySelector(`[data-stat=${key}]`).textContent) || 0;
  return value("framesDecoded") > frames && value("audioPackets") > 0;
}"""

# Draw the current frame on a canvas and count the pixels that are not (nearly) black.
_VIDEO_PIXELS = """(video) => {
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext("2d");
  context.drawImage(video, 0, 0);
  const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
  let lit = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] > 60) lit++;
  return { width: canvas.width, height: canvas.height, litFraction: lit / (data.length / 4) };
}"""


def whep_url(server: Server, process_id: str) -> str:
    return f"{server.url}/api/v3/whep/{process_id}"


def stat(page: Page, key: str, scope: str = "body") -> str:
    return page.inner_text(f"{scope} [data-stat={key}]")


def player_status(page: Page, scope: str = "body") -> str:
    return page.inner_text(f"{scope} .player-status")


def wait_for_media(
    page: Page, server: Server, *, scope: str = "body", frames: int = 30, timeout: float = 10
) -> None:
    """Wait until the player decoded more than ``frames`` video frames and received audio packets."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(_MEDIA_FLOWING, arg={"scope": scope, "frames": frames}, timeout=timeout * 1000)
    except PlaywrightTimeout:
        raise AssertionError(
            f"no media within {timeout} s: {player_status(page, scope)!r}\n"
            f"{page.inner_text(f'{scope} .player-stats')}\n--- server log ---\n{server.log()[-4000:]}"
        ) from None


def video_pixels(page: Page, selector: str) -> dict[str, Any]:
    return dict(page.eval_on_selector(selector, _VIDEO_PIXELS))


def command(server: Server, process_id: str, name: str) -> None:
    response = server.api("PUT", f"/api/v3/process/{process_id}/command", json={"command": name})
    assert response.status_code == 200, response.text


def stored_config(server: Server, process_id: str) -> dict[str, Any]:
    return dict(server.api("GET", f"/api/v3/process/{process_id}/config").json())


def viewers(server: Server, process_id: str) -> int:
    return int(server.state(process_id)["webrtc"]["viewers"])


def wait_for_webrtc_ready(server: Server, process_id: str, timeout: float = 20) -> None:
    server.wait_for(
        lambda: server.state(process_id)["webrtc"]["ready"], timeout, f"{process_id} to have media"
    )


def viewer_close_reasons(server: Server) -> list[str]:
    """The reason of every ``viewer_closed`` event in the server log, oldest first."""
    return [entry["reason"] for entry in server.logged("viewer_closed")]


def whep_requests(server: Server, method: str, status: int) -> float:
    """The server's count of WHEP requests with this method and answer status (from /metrics)."""
    prefix = f'dragonfork_webrtc_whep_requests_total{{method="{method}",status="{status}"}} '
    for line in server.api("GET", "/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


def has_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth > window.innerWidth"))


def npm_package(spec: str) -> Path:
    """``node_modules`` holding the npm package ``spec`` (``name@version``), installed once into a cache
    directory outside the repository (never copied into it)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dragonfork-e2e" / "npm"
    modules = cache / "node_modules"
    name, _, version = spec.rpartition("@")
    package_json = modules / name / "package.json"
    if not package_json.exists() or json.loads(package_json.read_text()).get("version") != version:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(cache), "--no-audit", "--no-fund", spec],
            check=True,
            timeout=300,
        )
    return modules


def create_ingest_process(page: Page, process_id: str, protocol: str, name: str) -> None:
    """In the admin UI's form: a process reading publisher NAME of ``protocol`` (the form's shortcut), with
    WebRTC on and no other output; checks the shortcut wrote ``{protocol,name=NAME}``."""
    page.click("#new-process")
    page.fill("#editor input[name=id]", process_id)
    page.select_option("#editor select[name=ingest-protocol]", protocol)
    page.fill("#editor input[name=ingest-name]", name)
    page.click("#editor [data-add=ingest]")
    address = page.input_value("#editor [data-io=input] input[name=io-address]")
    assert address == f"{{{protocol},name={name}}}", address
    page.click("#editor [data-io=output] [data-action=remove]")
    page.check("#editor input[name='webrtc.enabled']")
    page.click("#editor button[type=submit]")
    page.wait_for_selector("#editor", state="hidden")


def admin_alert_of_a_server_down(
    new_page: Callable[..., Page], directory: Path, section: str
) -> tuple[str, int]:
    """The admin UI's alert for the ingest server ``section`` (``rtmp`` or ``srt``) after a config reload
    moved it to a port another socket holds, and that port."""
    config_file = directory / "core.json"
    config_file.write_text(json.dumps({section: {"enable": True, "address": f"127.0.0.1:{free_port()}"}}))
    kind = socket.SOCK_STREAM if section == "rtmp" else socket.SOCK_DGRAM
    with (
        running_server(directory, CORE_CONFIGFILE=str(config_file)) as server,
        socket.socket(type=kind) as taken,
    ):
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        update = {"version": 3, section: {"address": f"127.0.0.1:{port}"}}
        assert server.api("PUT", "/api/v3/config", json=update).json() == "OK"
        assert server.api("GET", "/api/v3/config/reload").json() == "OK"
        page = new_page()
        page.goto(server.url)
        alert = page.wait_for_selector(f"#ingest-errors [role=alert][data-protocol={section.upper()}]")
        assert alert is not None
        return alert.inner_text(), port
