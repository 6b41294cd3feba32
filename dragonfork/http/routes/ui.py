"""The browser side: the admin UI at ``/``, the WHEP player at ``/whep-player.html``, their files at ``/ui/``.

Plain files from ``dragonfork/http/static`` (vanilla ES modules and CSS, no build step, no CDN), so a fresh
``pip install`` serves them. They are public like any web page: the data they show comes from ``/api/v3``,
which checks the token. ``Cache-Control: no-cache`` makes browsers revalidate, so an upgrade is picked up
at the next reload.
"""

from __future__ import annotations

from pathlib import Path

from quart import Blueprint, Response, send_from_directory

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


async def _static(name: str) -> Response:
    response = await send_from_directory(STATIC_DIR, name)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def ui_blueprint() -> Blueprint:
    bp = Blueprint("ui", __name__)

    @bp.get("/")
    async def admin():  # type: ignore[no-untyped-def]
        return await _static("index.html")

    @bp.get("/whep-player.html")
    async def player():  # type: ignore[no-untyped-def]
        return await _static("whep-player.html")

    @bp.get("/ui/<path:name>")
    async def asset(name: str):  # type: ignore[no-untyped-def]
        return await _static(name)

    return bp
