"""CORS on the API as datarhei Core configures it for ``/api``, so a UI served from another origin works.

datarhei answers every origin (``*``) on ``/api`` with the methods ``GET HEAD PUT POST DELETE PATCH``, the
request headers ``Origin Content-Length Content-Type Authorization`` (listed: a ``*`` would not cover
``Authorization``), ``Content-Length`` exposed and preflights cached for a day. A preflight (``OPTIONS`` with
``Access-Control-Request-Method``) is answered ``204`` before routing and auth: it never carries a token.
The WHEP routes keep their own policy (``webrtc.allowed_origins``, WHEP's headers), set in their blueprint.
"""

from __future__ import annotations

from quart import Blueprint, request
from quart_trio.wrappers import TrioResponse as Response

API_PREFIX = "/api"
OWN_POLICY_PREFIXES = ("/api/v3/whep",)

RESPONSE_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Content-Length",
}
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET, HEAD, PUT, POST, DELETE, PATCH",
    "Access-Control-Allow-Headers": "Origin, Content-Length, Content-Type, Authorization",
    "Access-Control-Max-Age": str(24 * 60 * 60),
}


def _covered() -> bool:
    path = request.path
    return (path == API_PREFIX or path.startswith(API_PREFIX + "/")) and not path.startswith(
        OWN_POLICY_PREFIXES
    )


def is_preflight() -> bool:
    """An API CORS preflight: the app answers it without asking for a token."""
    return (
        request.method == "OPTIONS"
        and "Access-Control-Request-Method" in request.headers
        and "Origin" in request.headers
        and _covered()
    )


def cors_blueprint() -> Blueprint:
    bp = Blueprint("cors", __name__)

    @bp.before_app_request
    async def _preflight() -> Response | None:
        if not is_preflight():
            return None
        response = Response("", status=204)
        response.headers.update(PREFLIGHT_HEADERS)
        return response

    @bp.after_app_request
    async def _headers(response: Response) -> Response:
        if "Origin" in request.headers and _covered():
            response.headers.update(RESPONSE_HEADERS)
            response.vary.add("Origin")
        return response

    return bp
