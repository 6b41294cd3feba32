"""JSON errors as datarhei Core sends them and the request-body rules every route shares.

An error body is ``{"code": int, "message": str, "details": [str, ...]}`` (datarhei's ``api.Error``). Each
entry of ``details`` is one fault, prefixed with the path of the field it concerns when there is one
(``"input.0.address: must not contain U+0000"``), so a client can show it beside that field.

Every response is quart-trio's ``TrioResponse`` (imported as ``Response``): Quart's own class iterates an
empty body through asyncio's executor, which under trio-asyncio can fail outside the request.

Bad input never becomes a 500: a wrong content type is 415, an oversized body 413, unparsable JSON, JSON
the server cannot keep (``NaN``, deep nesting, U+0000, lone surrogates) or a schema violation 400 with the
field path in the message. Unexpected exceptions are logged with their
traceback and answered with a generic 500 that carries no traceback.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any

from pydantic import ValidationError
from quart import current_app, request
from quart_trio.wrappers import TrioResponse as Response

MAX_JSON_DEPTH = 64
_PLAIN_NAME = re.compile(r"[\w-]+")
# The only way U+0000 or a lone surrogate gets into parsed JSON: raw, both are invalid (a control character,
# not UTF-8). Bodies without these escapes (nearly all) skip the string checks.
_SUSPECT_ESCAPE = re.compile(rb"\\u(0000|d[89a-f])", re.IGNORECASE)


def field_detail(field: str, text: str) -> str:
    """One ``details`` entry: ``"<field>: <text>"``, without repeating a field the text already names."""
    return text if not field or text.startswith(f"{field}:") else f"{field}: {text}"


class ApiError(Exception):
    """An error answer. ``details`` defaults to the message, prefixed with ``field`` when one is named."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        field: str = "",
        details: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details if details is not None else [field_detail(field, message)]
        self.headers = headers or {}


def error_response(
    code: int, message: str, details: list[str] | None = None, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(
        {"code": code, "message": message, "details": details if details is not None else [message]}
    )
    response = Response(body, status=code, content_type="application/json")
    response.headers.update(headers or {})
    return response


def field_and_text(parts: list[str], text: str) -> tuple[str, str]:
    """A field path from the plain names at the start of ``parts``; the rest (keys a client made up, which
    may hold any character) is quoted in the text: ``("metrics.0.labels", "at '#?': ...")``."""
    plain = len(list(itertools.takewhile(_PLAIN_NAME.fullmatch, parts)))
    if plain < len(parts):
        text = f"at {'.'.join(parts[plain:])[:60]!r}: {text}"
    return ".".join(parts[:plain]), text


def validation_error(exc: ValidationError, what: str = "request") -> ApiError:
    """A pydantic error as a 400 with one ``details`` entry per fault, each naming its field path in the
    body (``input.0.address: ...``); the message names the first one (``invalid config: input.0...``).

    A field the model does not know is named as unknown; a path through keys that are not plain names
    (anything a client sends) stops at the last plain part and quotes the rest in the text.
    """
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        parts = [str(part) for part in error["loc"]]
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden" and parts:
            message = f"unknown field {parts.pop()[:60]!r}: neither datarhei's nor dragonfork's"
        path, message = field_and_text(parts, message)
        # Model-level errors name their field in the message ("output: at least one ..."); a body of the
        # wrong type has no path of its own.
        if not path and not re.match(r"[\w.]+: ", message):
            path = "body"
        details.append(field_detail(path, message))
    return ApiError(400, f"invalid {what}: {details[0]}", details=details)


async def read_body(content_type: str) -> bytes:
    """The request body, after checking its media type (415) and size (413)."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    received = (request.mimetype or "").lower()
    if received != content_type:
        raise ApiError(
            415, f"Content-Type must be {content_type}, got {received or 'none'}", field="Content-Type"
        )
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body is larger than {limit} bytes", field="body")
    body = await request.get_data(cache=False, as_text=False)
    assert isinstance(body, bytes)
    return body


async def read_json() -> Any:
    """The body parsed as JSON; a 400 naming the field unless it is fit to keep (:func:`check_json`)."""
    body = await read_body("application/json")
    try:
        value = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ApiError(400, f"body: nests deeper than {MAX_JSON_DEPTH} levels", field="body") from None
    except ValueError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}", field="body") from None
    check_json(value, check_text=_SUSPECT_ESCAPE.search(body) is not None)
    return value


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def check_json(value: Any, *, check_text: bool) -> None:
    """Refuse what ``json.loads`` accepts but the server must not keep, with a 400 naming the field.

    That is nesting deeper than ``MAX_JSON_DEPTH`` (stored values go back out through recursive encoders),
    and strings or keys with U+0000 (it ends a C string: an FFmpeg argument, a file name) or with a lone
    UTF-16 surrogate (``"\\ud800"``: no UTF-8 encoder can write one). Non-finite numbers (``NaN``,
    ``1e999``) are refused while parsing: JSON has no such values.
    """
    found = _json_problem(value, 1, check_text) if isinstance(value, str | dict | list) else None
    if found is not None:
        path, problem = found
        field, text = field_and_text(list(reversed(path)), problem)
        field = field or "body"
        raise ApiError(400, f"{field}: {text}", field=field)


def _json_problem(value: Any, depth: int, check_text: bool) -> tuple[list[str], str] | None:
    """The reversed path to the first problem and what it is; recursion stops at ``MAX_JSON_DEPTH``."""
    if isinstance(value, str):
        return _text_problem(value) if check_text else None
    if depth > MAX_JSON_DEPTH:
        return [], f"nests deeper than {MAX_JSON_DEPTH} levels"
    if isinstance(value, dict):
        if check_text and any(_text_problem(key) for key in value):
            return [], "a key contains U+0000 or a lone UTF-16 surrogate"
        entries: Any = value.items()
    else:
        entries = enumerate(value)
    worth_a_look = (str, dict, list) if check_text else (dict, list)
    for key, child in entries:
        if isinstance(child, worth_a_look) and (found := _json_problem(child, depth + 1, check_text)):
            found[0].append(str(key))
            return found
    return None


def _text_problem(text: str) -> tuple[list[str], str] | None:
    if "\x00" in text:
        return [], "contains U+0000"
    try:
        text.encode()
    except UnicodeEncodeError:
        return [], "contains a lone UTF-16 surrogate"
    return None
