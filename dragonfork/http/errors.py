"""JSON errors ``{"code", "message", "details"}`` and the request-body rules every route shares.

Every response is quart-trio's ``TrioResponse`` (imported as ``Response``): Quart's own class iterates an
empty body through asyncio's executor, which under trio-asyncio can fail outside the request.

Bad input never becomes a 500: a wrong content type is 415, an oversized body 413, unparsable JSON or a
schema violation 400 with the field path in the message. Unexpected exceptions are logged with their
traceback and answered with a generic 500 that carries no traceback.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from quart import current_app, request
from quart_trio.wrappers import TrioResponse as Response


class ApiError(Exception):
    def __init__(
        self, code: int, message: str, details: Any = None, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def error_response(
    code: int, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps({"code": code, "message": message, "details": details if details is not None else []})
    response = Response(body, status=code, content_type="application/json")
    response.headers.update(headers or {})
    return response


def validation_error(exc: ValidationError, prefix: str = "") -> ApiError:
    """A pydantic error as a 400 naming each invalid field path (``input.0.address``)."""
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in (*([prefix] if prefix else []), *error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        details.append({"field": path, "message": message})
    first = details[0]
    text = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    return ApiError(400, f"invalid {prefix or 'request'}: {text}", details)


async def read_body(content_type: str) -> bytes:
    """The request body, after checking its media type (415) and size (413)."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    received = (request.mimetype or "").lower()
    if received != content_type:
        raise ApiError(
            415, f"Content-Type must be {content_type}, got {received or 'none'}", {"field": "Content-Type"}
        )
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body is larger than {limit} bytes", {"field": "body", "limit": limit})
    body = await request.get_data(cache=False, as_text=False)
    assert isinstance(body, bytes)
    return body


async def read_json() -> Any:
    body = await read_body("application/json")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}", {"field": "body"}) from None
