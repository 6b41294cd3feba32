"""Viewers as the session collectors see them: the client of the current request, and their refusals."""

from __future__ import annotations

from urllib.parse import urlsplit

from quart import request

from dragonfork.http.errors import ApiError
from dragonfork.sessions import Client, SessionRefused


def request_client() -> Client:
    """Address, user agent and the referring site (its host only, as datarhei records it)."""
    try:
        referrer = urlsplit(request.headers.get("Referer", "")).hostname or ""
    except ValueError:
        referrer = ""
    return Client(
        address=request.remote_addr or "",
        user_agent=request.headers.get("User-Agent", "")[:256],
        referrer=referrer[:256],
    )


def refused(exc: SessionRefused) -> ApiError:
    """A new viewer over a ``sessions.*`` limit: 503 + Retry-After, naming the setting."""
    return ApiError(503, exc.message, field=exc.setting, headers={"Retry-After": str(exc.retry_after)})
