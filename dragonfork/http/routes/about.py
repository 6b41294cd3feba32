"""``/api`` (about), ``/ping``, ``/metrics`` and ``/api/v3/skills`` (+ ``/reload``)."""

from __future__ import annotations

import datetime
import platform
import sys
import time

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, jsonify, request
from quart_trio.wrappers import TrioResponse as Response

from dragonfork import DATARHEI_API_VERSION, __version__, metrics
from dragonfork.core import Core
from dragonfork.http.auth import TokenIssuer
from dragonfork.http.errors import ApiError
from dragonfork.process.skills import Skills, SkillsError, read_skills

_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}


def about_json(core: Core, authorized: bool) -> dict[str, object]:
    """datarhei's ``api.About``. ``app`` and ``version.number`` are what datarhei clients check before they
    connect (``datarhei-core``, the v16 API version implemented); dragonfork names itself where clients do not
    look: ``compiler``. Without a valid token (when auth is on) only the public part, as datarhei sends it:
    ``app``, ``auths`` and the major version."""
    auths = ["localjwt"] if core.settings.api.auth.enable else []
    if not authorized:
        major = DATARHEI_API_VERSION.split(".")[0]
        return {"app": "datarhei-core", "auths": auths, "version": {"number": f"{major}.0.0"}}
    started = datetime.datetime.fromtimestamp(core.started_at, datetime.UTC)
    machine = platform.machine().lower()
    return {
        "app": "datarhei-core",
        "auths": auths,
        "name": core.settings.name,
        "id": core.server_id,
        "created_at": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "uptime_seconds": int(time.time() - core.started_at),
        "version": {
            "number": DATARHEI_API_VERSION,
            "repository_commit": "",
            "repository_branch": "",
            "build_date": "",
            "arch": f"{sys.platform}/{_ARCHITECTURES.get(machine, machine)}",
            "compiler": f"dragonfork {__version__} (Python {platform.python_version()})",
        },
    }


def about_blueprint(core: Core, issuer: TokenIssuer) -> Blueprint:
    bp = Blueprint("about", __name__)
    skills_lock = trio.Lock()
    skills_cache: list[Skills] = []
    core.config.depend("skills", ("ffmpeg.binary",), lambda settings: skills_cache.clear())  # read anew

    @bp.get("/api")
    async def about():  # type: ignore[no-untyped-def]
        return jsonify(about_json(core, issuer.authorized(request.headers.get("Authorization"))))

    @bp.get("/ping")
    async def ping():  # type: ignore[no-untyped-def]
        return Response("pong", content_type="text/plain")

    @bp.get("/metrics")
    async def prometheus():  # type: ignore[no-untyped-def]
        if not (core.settings.metrics.enable and core.settings.metrics.enable_prometheus):
            raise ApiError(404, "metrics are disabled (metrics.enable_prometheus is false)")
        return Response(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST)

    async def read(reload: bool) -> dict[str, object]:
        """The FFmpeg binary's skills, read once and again on ``/api/v3/skills/reload``."""
        async with skills_lock:
            if reload or not skills_cache:
                try:
                    skills = await read_skills(core.settings.ffmpeg_binary)
                except SkillsError as exc:
                    raise ApiError(
                        500, f"cannot read FFmpeg's skills: {exc}", field="ffmpeg.binary"
                    ) from None
                skills_cache[:] = [skills]
        return skills_cache[0].to_json()

    @bp.get("/api/v3/skills")
    async def skills():  # type: ignore[no-untyped-def]
        return jsonify(await read(reload=False))

    @bp.get("/api/v3/skills/reload")
    async def reload_skills():  # type: ignore[no-untyped-def]
        return jsonify(await read(reload=True))

    return bp
