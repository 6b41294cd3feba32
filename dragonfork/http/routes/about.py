"""``/api`` (about), ``/ping``, ``/metrics``, ``/api/v3/skills`` and ``/api/v3/config``."""

from __future__ import annotations

import time

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, jsonify
from quart_trio.wrappers import TrioResponse as Response

from dragonfork import __version__, metrics
from dragonfork.config import leaf_paths, redacted, settings_value
from dragonfork.core import Core
from dragonfork.http.errors import ApiError
from dragonfork.process.skills import Skills, read_skills


def effective_config(core: Core) -> dict[str, object]:
    """Each setting with its value (secrets redacted) and where it came from: default, file or env."""
    settings, sources = core.settings, core.loaded.sources
    values: dict[str, object] = {}
    for path in leaf_paths(type(settings)):
        key = ".".join(path)
        values[key] = {"value": redacted(key, settings_value(settings, key)), "source": sources[key]}
    return values


def about_blueprint(core: Core) -> Blueprint:
    bp = Blueprint("about", __name__)
    skills_lock = trio.Lock()
    skills_cache: list[Skills] = []

    @bp.get("/api")
    async def about():  # type: ignore[no-untyped-def]
        settings = core.settings
        return jsonify(
            {
                "app": "dragonfork",
                "name": settings.name,
                "id": settings.id,
                "version": {"number": __version__},
                "created_at": int(core.started_at),
                "uptime_seconds": int(time.time() - core.started_at),
                "auths": ["jwt"] if settings.api.auth.enable else [],
            }
        )

    @bp.get("/ping")
    async def ping():  # type: ignore[no-untyped-def]
        return Response("pong", content_type="text/plain")

    @bp.get("/metrics")
    async def prometheus():  # type: ignore[no-untyped-def]
        if not (core.settings.metrics.enable and core.settings.metrics.enable_prometheus):
            raise ApiError(404, "metrics are disabled (metrics.enable_prometheus is false)")
        return Response(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST)

    @bp.get("/api/v3/skills")
    async def skills():  # type: ignore[no-untyped-def]
        async with skills_lock:
            if not skills_cache:
                skills_cache.append(await read_skills(core.settings.ffmpeg_binary))
        return jsonify(skills_cache[0].to_json())

    @bp.get("/api/v3/config")
    async def config():  # type: ignore[no-untyped-def]
        return jsonify(
            {
                "config_file": core.loaded.config_file,
                "loaded_at": int(core.started_at),
                "config": effective_config(core),
                "ignored_file_keys": core.loaded.ignored_file_keys,
            }
        )

    return bp
