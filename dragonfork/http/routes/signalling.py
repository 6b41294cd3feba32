"""HTTP rules WHEP and WHIP share (RFC 9725 and the WHEP draft): refusals, CORS, preflights, Link headers.

Both protocols answer CORS preflights on every route, list ``Authorization`` explicitly (a literal ``*``
does not cover it) and expose ``Location``, ``ETag`` and ``Link`` so a page can read them.
"""

from __future__ import annotations

from quart import request
from quart_trio.wrappers import TrioResponse as Response

from dragonfork.http.errors import ApiError
from dragonfork.servers import SignallingRefused


def api_error(refused: SignallingRefused) -> ApiError:
    headers = dict(refused.headers)
    if refused.retry_after is not None:
        headers["Retry-After"] = str(refused.retry_after)
    return ApiError(
        refused.status, refused.message, field=refused.field or "", details=refused.details, headers=headers
    )


def link_headers(ice_servers: list[dict[str, str]]) -> list[str]:
    """``Link: <url>; rel="ice-server"`` values, with credentials where the server has them."""
    links = []
    for server in ice_servers:
        link = f'<{server["urls"]}>; rel="ice-server"'
        if server.get("username"):
            link += f'; username="{server["username"]}"; credential="{server["credential"]}"'
            link += '; credential-type="password"'
        links.append(link)
    return links


def add_cors(response: Response, allowed_origins: list[str]) -> None:
    origin = request.headers.get("Origin")
    if "*" in allowed_origins:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin and origin in allowed_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    response.headers["Access-Control-Expose-Headers"] = "Location, ETag, Link, Retry-After, Accept-Patch"


def preflight(resource_id: str | None) -> Response:
    """The answer to an OPTIONS on the endpoint (``resource_id`` None) or on a session resource."""
    methods = "POST, GET, HEAD, OPTIONS" if resource_id is None else "PATCH, DELETE, GET, HEAD, OPTIONS"
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


def created(location: str, answer: str, etag: str, ice_servers: list[dict[str, str]]) -> Response:
    """The 201 for an accepted offer: the answer, its session's Location and ETag, the ICE servers."""
    headers = {
        "Location": location,
        "ETag": etag,
        "Content-Type": "application/sdp",
        "Accept-Patch": "application/trickle-ice-sdpfrag",
    }
    response = Response(answer, status=201, headers=headers)
    for link in link_headers(ice_servers):
        response.headers.add("Link", link)
    return response
