"""WHEP (``/api/v3/whep/{processID}``): the IETF draft's HTTP rules plus this project's error matrix.

POST offer → 201 + answer (Location, ETag, Link ice-server); PATCH trickle-ice-sdpfrag → 204 (ICE restart:
422; without ``If-Match`` 428); a PATCH whose ``If-Match`` is not the session's ETag → 412; DELETE → 204,
idempotent; HEAD/GET on the endpoint or a session → 204 without a body (draft-04), 404 when it does not
exist. Every route answers CORS preflights; ``Authorization`` is listed explicitly because a literal ``*``
does not cover it.
"""

from __future__ import annotations

import time

from quart import Blueprint, g, request
from quart_trio.wrappers import TrioResponse as Response

from dragonfork import metrics
from dragonfork.core import Core
from dragonfork.http.errors import read_body
from dragonfork.http.routes.signalling import add_cors, api_error, created
from dragonfork.http.routes.signalling import preflight as preflight_response
from dragonfork.http.viewers import request_client
from dragonfork.servers.whep import WhepRefused

PREFIX = "/api/v3/whep"


def whep_blueprint(core: Core) -> Blueprint:
    bp = Blueprint("whep", __name__)
    webrtc = core.settings.webrtc

    @bp.after_request
    async def _cors_and_metrics(response: Response) -> Response:
        add_cors(response, webrtc.allowed_origins)
        if request.method != "OPTIONS":
            metrics.WHEP_REQUESTS.labels(request.method, str(response.status_code)).inc()
            metrics.WHEP_REQUEST_DURATION.labels(request.method).observe(time.perf_counter() - g.started)
        return response

    @bp.route(f"{PREFIX}/<process_id>", methods=["OPTIONS"])
    @bp.route(f"{PREFIX}/<process_id>/<resource_id>", methods=["OPTIONS"])
    async def preflight(process_id: str, resource_id: str | None = None):  # type: ignore[no-untyped-def]
        return preflight_response(resource_id)

    @bp.get(f"{PREFIX}/<process_id>")  # Quart answers HEAD from GET routes
    async def endpoint(process_id: str):  # type: ignore[no-untyped-def]
        try:
            core.whep.check_endpoint(process_id)
        except WhepRefused as refused:
            raise api_error(refused) from None
        return Response(status=204, headers={"Accept-Post": "application/sdp"})

    @bp.get(f"{PREFIX}/<process_id>/<resource_id>")
    async def session_resource(process_id: str, resource_id: str):  # type: ignore[no-untyped-def]
        try:
            etag = core.whep.session_etag(process_id, resource_id)
        except WhepRefused as refused:
            raise api_error(refused) from None
        return Response(status=204, headers={"ETag": etag, "Accept-Patch": "application/trickle-ice-sdpfrag"})

    @bp.post(f"{PREFIX}/<process_id>")
    async def offer(process_id: str):  # type: ignore[no-untyped-def]
        offer_sdp = (await read_body("application/sdp")).decode("utf-8", "replace")
        try:
            session = await core.whep.new_session(process_id, offer_sdp, request_client())
        except WhepRefused as refused:
            raise api_error(refused) from None
        location = f"{PREFIX}/{process_id}/{session.resource_id}"
        return created(location, session.answer, session.etag, core.whep.settings.viewer.ice_servers)

    @bp.patch(f"{PREFIX}/<process_id>/<resource_id>")
    async def trickle(process_id: str, resource_id: str):  # type: ignore[no-untyped-def]
        body = (await read_body("application/trickle-ice-sdpfrag")).decode("utf-8", "replace")
        try:
            await core.whep.trickle(process_id, resource_id, body, if_match=request.headers.get("If-Match"))
        except WhepRefused as refused:
            raise api_error(refused) from None
        return Response(status=204)

    @bp.delete(f"{PREFIX}/<process_id>/<resource_id>")
    async def end_session(process_id: str, resource_id: str):  # type: ignore[no-untyped-def]
        core.whep.end_session(process_id, resource_id)
        return Response(status=204)

    return bp
