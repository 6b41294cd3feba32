"""WHIP (``/api/v3/whip/{name}``, RFC 9725) and the Matroska read of a published stream.

POST offer → 201 + answer (Location, ETag, Link ice-server); PATCH trickle-ice-sdpfrag → 204 (ICE restart:
422; without ``If-Match`` 428); DELETE → 204, idempotent; CORS as on WHEP. Authentication is the API's
(``Authorization: Bearer`` with an access token whenever ``api.auth.enable``), as for WHEP.
``GET /api/v3/whip/{name}/stream.mkv`` is what ``{whip,name=NAME}`` expands to: the live stream as Matroska
for FFmpeg, authorised by the ``?key=`` the expansion carries instead of a token (``is_reader_path``).
"""

from __future__ import annotations

from quart import Blueprint, request
from quart_trio.wrappers import TrioResponse as Response

from dragonfork.core import Core
from dragonfork.http.errors import ApiError, read_body
from dragonfork.http.routes.signalling import add_cors, api_error, created
from dragonfork.http.routes.signalling import preflight as preflight_response
from dragonfork.http.viewers import request_client
from dragonfork.servers.whip import WhipRefused, WhipServer

PREFIX = "/api/v3/whip"
READER_FILE = "stream.mkv"


def is_reader_path(path: str) -> bool:
    """A Matroska read (authorised by its key, not by the API's token)."""
    return path.startswith(PREFIX + "/") and path.endswith("/" + READER_FILE)


def whip_blueprint(core: Core) -> Blueprint:
    bp = Blueprint("whip", __name__)
    webrtc = core.settings.webrtc

    def service() -> WhipServer:
        if core.whip is None:
            raise ApiError(404, "WHIP ingest is off: set whip.enable and webrtc.enable", field="whip.enable")
        return core.whip

    @bp.after_request
    async def _cors(response: Response) -> Response:
        add_cors(response, webrtc.allowed_origins)
        return response

    @bp.route(f"{PREFIX}/<name>", methods=["OPTIONS"])
    @bp.route(f"{PREFIX}/<name>/<resource_id>", methods=["OPTIONS"])
    async def preflight(name: str, resource_id: str | None = None):  # type: ignore[no-untyped-def]
        return preflight_response(resource_id)

    @bp.post(f"{PREFIX}/<name>")
    async def offer(name: str):  # type: ignore[no-untyped-def]
        whip = service()
        offer_sdp = (await read_body("application/sdp")).decode("utf-8", "replace")
        try:
            session = await whip.new_session(name, offer_sdp, request_client())
        except WhipRefused as refused:
            raise api_error(refused) from None
        location = f"{PREFIX}/{name}/{session.resource_id}"
        return created(location, session.answer, session.etag, whip.settings.publisher.ice_servers)

    @bp.get(f"{PREFIX}/<name>/<resource_id>")
    async def session_resource(name: str, resource_id: str):  # type: ignore[no-untyped-def]
        try:
            etag = service().session_etag(name, resource_id)
        except WhipRefused as refused:
            raise api_error(refused) from None
        return Response(status=204, headers={"ETag": etag, "Accept-Patch": "application/trickle-ice-sdpfrag"})

    @bp.patch(f"{PREFIX}/<name>/<resource_id>")
    async def trickle(name: str, resource_id: str):  # type: ignore[no-untyped-def]
        whip = service()
        body = (await read_body("application/trickle-ice-sdpfrag")).decode("utf-8", "replace")
        try:
            await whip.trickle(name, resource_id, body, if_match=request.headers.get("If-Match"))
        except WhipRefused as refused:
            raise api_error(refused) from None
        return Response(status=204)

    @bp.delete(f"{PREFIX}/<name>/<resource_id>")
    async def end_session(name: str, resource_id: str):  # type: ignore[no-untyped-def]
        service().end_session(name, resource_id)
        return Response(status=204)

    @bp.get(f"{PREFIX}/<name>/{READER_FILE}")
    async def read(name: str):  # type: ignore[no-untyped-def]
        whip = service()
        try:
            whip.check_reader_key(request.args.get("key", ""))
            chunks = await whip.read_matroska(name)
        except WhipRefused as refused:
            raise api_error(refused) from None
        response = Response(chunks, status=200, headers={"Content-Type": "video/x-matroska"})
        response.timeout = None  # a live stream: no response deadline
        return response

    return bp
