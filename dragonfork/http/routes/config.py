"""``/api/v3/config``: datarhei's config document, ``PUT`` (store) and ``/reload`` (apply); one service each.

``PUT`` answers ``"OK"`` after storing; 400 (``Invalid JSON``, ``Invalid config version``; each key and
value in ``details``) when the body cannot be decoded into settings; 409 with datarhei's
``{key: [messages]}`` when values contradict each other. ``GET /api/v3/config/reload`` applies the stored
configuration and answers ``"OK"``; what changed, what restarted and what waits for the next start is in
the server log.
"""

from __future__ import annotations

import json

from quart import Blueprint, jsonify
from quart_trio.wrappers import TrioResponse as Response

from dragonfork.http.errors import ApiError, read_json
from dragonfork.settings_service import ConfigConflict, ConfigRejected, SettingsService


def config_blueprint(config: SettingsService) -> Blueprint:
    bp = Blueprint("config", __name__)

    @bp.get("/api/v3/config")
    async def get_config():  # type: ignore[no-untyped-def]
        return jsonify(config.document())

    @bp.put("/api/v3/config")
    async def put_config():  # type: ignore[no-untyped-def]
        body = await read_json()
        try:
            await config.update(body)
        except ConfigRejected as exc:
            raise ApiError(400, f"{exc.message}: {exc.details[0]}", details=exc.details) from None
        except ConfigConflict as exc:
            return Response(json.dumps(exc.errors), status=409, content_type="application/json")
        return jsonify("OK")

    @bp.get("/api/v3/config/reload")
    async def reload_config():  # type: ignore[no-untyped-def]
        await config.reload()
        return jsonify("OK")

    return bp
