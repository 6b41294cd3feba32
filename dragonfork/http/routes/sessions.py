"""``/api/v3/session`` and ``/session/active`` (behind API auth), the public ``/api/v3/widget/process/{id}``.

``?collectors=hls,webrtc`` picks collectors (default: all of them: hls, webrtc, rtmp, srt, ffmpeg); a
well-formed name this server has no collector for gets an empty entry, as in datarhei.
"""

from __future__ import annotations

import re

from quart import Blueprint, jsonify, request

from dragonfork.core import Core
from dragonfork.http.errors import ApiError
from dragonfork.process.registry import ProcessNotFound
from dragonfork.sessions import COLLECTORS

WIDGET_PREFIX = "/api/v3/widget/"
_COLLECTOR_NAME = re.compile(r"^[0-9A-Za-z]{1,64}$")  # datarhei's rule for collector ids


def _collectors() -> list[str]:
    raw = request.args.get("collectors", "")
    names = [name.strip() for name in raw.split(",") if name.strip()] or list(COLLECTORS)
    for name in names:
        if not _COLLECTOR_NAME.match(name):
            raise ApiError(
                400,
                f"collectors: {name[:64]!r} is not a collector name (letters and digits)",
                field="collectors",
            )
    return list(dict.fromkeys(names))


def sessions_blueprint(core: Core) -> Blueprint:
    bp = Blueprint("sessions", __name__)

    @bp.get("/api/v3/session")
    async def summary():  # type: ignore[no-untyped-def]
        return jsonify(core.client_sessions.summary_json(_collectors()))

    @bp.get("/api/v3/session/active")
    async def active():  # type: ignore[no-untyped-def]
        return jsonify(core.client_sessions.active_json(_collectors()))

    @bp.get(f"{WIDGET_PREFIX}process/<process_id>")
    async def widget(process_id: str):  # type: ignore[no-untyped-def]
        try:
            process = core.registry.get(process_id)
        except ProcessNotFound:
            raise ApiError(404, f"unknown process ID {process_id!r}") from None
        current, total = core.client_sessions.viewers_of(process.id, process.config.reference)
        return jsonify(
            {"current_sessions": current, "total_sessions": total, "uptime": int(process.uptime_seconds())}
        )

    return bp
