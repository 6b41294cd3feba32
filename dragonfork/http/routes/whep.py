"""WHEP (``/api/v3/whep/{processID}``): the IETF draft's HTTP rules plus this project's error matrix.

POST offer → 201 + answer (Location, ETag, Link ice-server); PATCH trickle-ice-sdpfrag → 204 (ICE restart:
422); DELETE → 204, idempotent. Every route answers CORS preflights; ``Authorization`` is listed explicitly
because a literal ``*`` does not cover it.
"""

from __future__ import annotations

import functools
import hashlib
import time

from quart import Blueprint, g, request
from quart_trio.wrappers import TrioResponse as Response

from dragonfork import metrics
from dragonfork.core import Core
from dragonfork.http.errors import ApiError, read_body
from dragonfork.process.registry import ProcessNotFound
from dragonfork.process.runner import RunEnded
from dragonfork.webrtc.sdp import SdpRejected
from dragonfork.webrtc.sessions import ViewerCapReached
from dragonfork.webrtc.viewer import AnswerTimeout, CloseReason, Viewer, ViewerClosed

RETRY_AFTER_NOT_READY = "2"
RETRY_AFTER_FULL = "5"
PREFIX = "/api/v3/whep"


def _link_headers(core: Core) -> list[str]:
    links = []
    for server in core.viewer_settings.ice_servers:
        link = f'<{server["urls"]}>; rel="ice-server"'
        if server.get("username"):
            link += f'; username="{server["username"]}"; credential="{server["credential"]}"'
            link += '; credential-type="password"'
        links.append(link)
    return links


def whep_blueprint(core: Core) -> Blueprint:
    bp = Blueprint("whep", __name__)
    webrtc = core.settings.webrtc

    @bp.after_request
    async def _cors_and_metrics(response: Response) -> Response:
        origin = request.headers.get("Origin")
        allowed = webrtc.allowed_origins
        if "*" in allowed:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin and origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Expose-Headers"] = "Location, ETag, Link, Retry-After, Accept-Patch"
        if request.method != "OPTIONS":
            metrics.WHEP_REQUESTS.labels(request.method, str(response.status_code)).inc()
            metrics.WHEP_REQUEST_DURATION.labels(request.method).observe(time.perf_counter() - g.started)
        return response

    @bp.route(f"{PREFIX}/<process_id>", methods=["OPTIONS"])
    @bp.route(f"{PREFIX}/<process_id>/<resource_id>", methods=["OPTIONS"])
    async def preflight(process_id: str, resource_id: str | None = None):  # type: ignore[no-untyped-def]
        methods = "POST, OPTIONS" if resource_id is None else "PATCH, DELETE, OPTIONS"
        headers = {
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
            "Access-Control-Max-Age": "86400",
            "Allow": methods,
        }
        if resource_id is None:
            headers["Accept-Post"] = "application/sdp"
        else:
            headers["Accept-Patch"] = "application/trickle-ice-sdpfrag"
        return Response(status=204, headers=headers)

    @bp.post(f"{PREFIX}/<process_id>")
    async def offer(process_id: str):  # type: ignore[no-untyped-def]
        try:
            process = core.registry.get(process_id)
        except ProcessNotFound as exc:
            raise ApiError(404, str(exc), {"field": "processID"}) from None
        if not (process.config.webrtc.enabled and webrtc.enable):
            raise ApiError(404, f"process {process_id!r} does not serve WebRTC (webrtc.enabled is false)")
        offer_sdp = (await read_body("application/sdp")).decode("utf-8", "replace")
        run = process.run
        if run is None or run.stream is None or not run.stream.has_media():
            raise ApiError(
                409,
                f"process {process_id!r} has no media yet (state {process.state}); retry shortly",
                {"state": process.state},
                headers={"Retry-After": RETRY_AFTER_NOT_READY},
            )
        viewer = Viewer(process_id, core.viewer_settings)
        run_viewer = functools.partial(
            core.sessions.run_viewer, viewer, max_viewers=webrtc.max_peers_per_stream
        )
        try:
            answer = await run.start_viewer(run_viewer, offer_sdp)
        except ViewerCapReached:
            cap = webrtc.max_peers_per_stream
            raise ApiError(
                503,
                f"stream {process_id!r} is full ({cap} viewer{'' if cap == 1 else 's'}); retry in "
                f"{RETRY_AFTER_FULL} s",
                {"field": "webrtc.max_peers_per_stream"},
                headers={"Retry-After": RETRY_AFTER_FULL},
            ) from None
        except SdpRejected as exc:
            raise ApiError(exc.status, exc.message, {"field": "offer"}) from None
        except AnswerTimeout as exc:
            raise ApiError(504, str(exc)) from None
        except (RunEnded, ViewerClosed):
            raise ApiError(
                409,
                f"the session on {process_id!r} ended while it was being set up; retry shortly",
                headers={"Retry-After": RETRY_AFTER_NOT_READY},
            ) from None
        headers = {
            "Location": f"{PREFIX}/{process_id}/{viewer.id}",
            # A strong tag that changes with the answer (and so with the ICE credentials).
            "ETag": f'"{hashlib.sha256(answer.encode()).hexdigest()[:24]}"',
            "Content-Type": "application/sdp",
            "Accept-Patch": "application/trickle-ice-sdpfrag",
        }
        response = Response(answer, status=201, headers=headers)
        for link in _link_headers(core):
            response.headers.add("Link", link)
        return response

    @bp.patch(f"{PREFIX}/<process_id>/<resource_id>")
    async def trickle(process_id: str, resource_id: str):  # type: ignore[no-untyped-def]
        body = (await read_body("application/trickle-ice-sdpfrag")).decode("utf-8", "replace")
        viewer = core.sessions.get(resource_id)
        if viewer is None or viewer.process_id != process_id:
            raise ApiError(
                404, f"no WHEP session {resource_id!r} on process {process_id!r}", {"field": "resource"}
            )
        try:
            await viewer.add_remote_candidates(body)
        except SdpRejected as exc:
            raise ApiError(exc.status, exc.message, {"field": "sdpfrag"}) from None
        return Response(status=204)

    @bp.delete(f"{PREFIX}/<process_id>/<resource_id>")
    async def end_session(process_id: str, resource_id: str):  # type: ignore[no-untyped-def]
        viewer = core.sessions.get(resource_id)
        if viewer is not None and viewer.process_id == process_id:
            viewer.close(CloseReason.DELETE)
        return Response(status=204)

    return bp
