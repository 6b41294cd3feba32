"""Live publishers: ``GET /api/v3/rtmp``, ``GET /api/v3/srt`` (datarhei's shapes) and ``GET /api/v3/ingest``
(the admin UI's).

``/api/v3/srt`` answers one ``api.SRTChannels`` object, as datarhei Core sends it (its swagger document says
an array of them; datarhei's handler and its clients use the object). ``/api/v3/ingest`` has one entry per
ingest protocol (RTMP, SRT, WHIP): whether it is
enabled, what an encoder needs to publish (port, app, stream key token) and the live publishers with their
counters (WHIP: its endpoint path and whether it needs an API access token), the clients RTMP and SRT
refused last (``refused``: remote, reason, message, Unix time), and ``error`` when a config
reload could not restart the RTMP, SRT or WHIP server (its listener's cause). The RTMP token is here
because the admin UI builds OBS's stream key from it; ``/api/v3`` requires authentication whenever auth is
enabled.
"""

from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint, jsonify

from dragonfork.config import host_port
from dragonfork.core import RTMP_SERVICE, SRT_SERVICE, WHIP_SERVICE, Core


def _live(publisher: Any, now: float, *fields: str) -> dict[str, object]:
    """A live publisher's ``fields`` and its uptime (from its ``since``, a ``trio.current_time()``)."""
    return {name: getattr(publisher, name) for name in fields} | {
        "uptime_seconds": round(now - publisher.since, 1)
    }


def ingest_blueprint(core: Core) -> Blueprint:
    bp = Blueprint("ingest", __name__)

    @bp.get("/api/v3/rtmp")
    async def rtmp_channels():  # type: ignore[no-untyped-def]
        publishers = core.rtmp.publishers() if core.rtmp is not None else []
        return jsonify([{"name": publisher.path} for publisher in publishers])

    @bp.get("/api/v3/srt")
    async def srt_channels():  # type: ignore[no-untyped-def]
        if core.srt is None:
            return jsonify({"publisher": {}, "subscriber": {}, "connections": {}, "log": {}})
        return jsonify(core.srt.channels_view())

    @bp.get("/api/v3/ingest")
    async def ingest():  # type: ignore[no-untyped-def]
        settings = core.settings.rtmp
        now = trio.current_time()
        rtmp: dict[str, object] = {"enabled": core.rtmp is not None}
        if core.rtmp is not None:
            rtmp.update(
                port=host_port(settings.address)[1],
                tls_port=host_port(settings.address_tls)[1] if settings.enable_tls else None,
                app=settings.app,
                token=settings.token,
                publishers=[
                    _live(publisher, now, "name", "path", "remote", "bytes_received", "media_messages")
                    for publisher in core.rtmp.publishers()
                ],
                refused=core.rtmp.refusals.view(),
            )
        srt: dict[str, object] = {"enabled": core.srt is not None}
        if core.srt is not None:
            srt.update(
                port=host_port(core.settings.srt.address)[1],
                token=core.settings.srt.token,
                passphrase_set=bool(core.settings.srt.passphrase),
                publishers=core.srt.publishers(),
                refused=core.srt.refusals.view(),
            )
        whip: dict[str, object] = {"enabled": core.whip is not None}
        if core.whip is not None:
            whip.update(
                path="/api/v3/whip",
                bearer_token_required=core.settings.api.auth.enable,
                publishers=[
                    _live(publisher, now, "name", "remote", "state", "bytes_received", "packets_received")
                    for publisher in core.whip.publishers()
                ],
            )
        for entry, service in ((rtmp, RTMP_SERVICE), (srt, SRT_SERVICE), (whip, WHIP_SERVICE)):
            error = core.config.failure(service)  # a reload that could not restart it
            if error is not None:
                entry["error"] = error
        return jsonify({"rtmp": rtmp, "srt": srt, "whip": whip})

    return bp
