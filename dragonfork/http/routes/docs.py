"""``/api/swagger``: the OpenAPI description of every route and a Swagger UI that works offline.

The UI's files come from the ``swagger-ui-bundle`` wheel, so no CDN is needed. The process schema in the
description is generated from the same pydantic model that validates requests, so the two cannot drift.

The description is precise enough to test the server against (``tests/integration/test_api_fuzz.py`` fuzzes
every operation from it): each route lists its parameters, its request body, the schema of its success
response and every error status it can answer with, each error a JSON ``{"code", "message", "details"}``.
The error statuses that follow from the shape of a route are derived, not listed by hand: a body brings
400/413/415, a path parameter 404, ``/api/v3`` 401.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import swagger_ui_bundle
from quart import Blueprint, jsonify, send_from_directory
from quart_trio.wrappers import TrioResponse as Response

from dragonfork import __version__
from dragonfork.process.schema import Command, ExecState, Order, ProcessConfig

SWAGGER_DIR = Path(swagger_ui_bundle.swagger_ui_path)

Schema = dict[str, Any]

_JSON = "application/json"
_SDP = "application/sdp"
_TRICKLE = "application/trickle-ice-sdpfrag"
_TEXT = "text/plain"
_PATH_PARAMETERS = {
    "id": "Process id",
    "key": "Metadata key",
    "resource": "WHEP session id (the last segment of the Location header)",
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """An object whose properties are all present in every response, except the ``optional`` ones."""
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "properties": properties,
    }


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


_STRING: Schema = {"type": "string"}
_INTEGER: Schema = {"type": "integer"}
_NUMBER: Schema = {"type": "number"}
_BOOLEAN: Schema = {"type": "boolean"}
_ANY: Schema = {}
_NAMED = _object({"id": _STRING, "name": _STRING})


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


_STREAM_INFO = _object(
    {
        "index": _INTEGER,
        "file_index": _INTEGER,
        "type": {"type": "string", "enum": ["video", "audio", "data", "subtitle", "other"]},
        "codec": _STRING,
        "profile": _nullable(_STRING),
        "pix_fmt": _nullable(_STRING),
        "width": _nullable(_INTEGER),
        "height": _nullable(_INTEGER),
        "fps": _nullable(_NUMBER),
        "sample_rate": _nullable(_INTEGER),
        "channels": _nullable(_INTEGER),
        "bitrate_kbit": _nullable(_NUMBER),
        "language": _nullable(_STRING),
    }
)
# datarhei Core's log lines: ["<unix seconds>", "<line>"]
_LOG = _array({**_array(_STRING), "minItems": 2, "maxItems": 2})

# Response schemas (and the request schemas that are not the process config), by component name.
SCHEMAS: dict[str, Schema] = {
    "Error": _object({"code": _INTEGER, "message": _STRING, "details": _ANY}),
    "Login": _object({"username": _STRING, "password": _STRING}),
    "Tokens": _object(
        {
            "access_token": _STRING,
            "access_expires_at": _INTEGER,
            "refresh_token": _STRING,
            "refresh_expires_at": _INTEGER,
        }
    ),
    "AccessToken": _object({"access_token": _STRING, "access_expires_at": _INTEGER}),
    "Command": _object({"command": {"type": "string", "enum": list(get_args(Command))}}),
    "About": _object(
        {
            "app": _STRING,
            "name": _STRING,
            "id": _STRING,
            "version": _object({"number": _STRING}),
            "created_at": _INTEGER,
            "uptime_seconds": _INTEGER,
            "auths": _array(_STRING),
        }
    ),
    "StreamInfo": _STREAM_INFO,
    "IOInfo": _object(
        {"index": _INTEGER, "format": _STRING, "address": _STRING, "streams": _array(_ref("StreamInfo"))}
    ),
    "Progress": _object(
        {
            "frame": _INTEGER,
            "fps": _NUMBER,
            "q": _NUMBER,
            "size_kb": _INTEGER,
            "time": _NUMBER,
            "bitrate_kbit": _NUMBER,
            "speed": _NUMBER,
            "drop": _INTEGER,
            "dup": _INTEGER,
            "input": _array(_ref("IOInfo")),
            "output": _array(_ref("IOInfo")),
        }
    ),
    "ProcessState": _object(
        {
            "order": {"type": "string", "enum": list(get_args(Order))},
            "exec": {"type": "string", "enum": list(get_args(ExecState))},
            "runtime_seconds": _INTEGER,
            "state_since": _INTEGER,
            "restarts": _INTEGER,
            "last_logline": _STRING,
            "last_error": _STRING,
            "progress": _ref("Progress"),
            "cpu_usage": _NUMBER,
            "memory_bytes": _INTEGER,
            "command": _array(_STRING),
            "webrtc": _object({"ready": _BOOLEAN, "viewers": _INTEGER}),
        }
    ),
    "RunHistory": _object(
        {
            "created_at": _INTEGER,
            "exited_at": _INTEGER,
            "exit_state": {"type": "string", "enum": ["finished", "failed", "killed"]},
            "exit_code": _nullable(_INTEGER),
            "prelude": _array(_STRING),
            "log": _LOG,
            "progress": _nullable({"type": "object"}),
        }
    ),
    "ProcessReport": _object(
        {
            "created_at": _nullable(_NUMBER),
            "prelude": _array(_STRING),
            "log": _LOG,
            "history": _array(_ref("RunHistory")),
        }
    ),
    "Process": _object(
        {
            "id": _STRING,
            "type": {"type": "string", "enum": ["ffmpeg"]},
            "reference": _STRING,
            "created_at": _INTEGER,
            "updated_at": _INTEGER,
            "config": _ref("ProcessConfig"),
            "state": _ref("ProcessState"),
            "report": _ref("ProcessReport"),
            "metadata": {"type": "object"},
        },
        optional=("config", "state", "report", "metadata"),  # present as the filter asks
    ),
    "Probe": _object(
        {
            "streams": _array(_object({**_STREAM_INFO["properties"], "address": _STRING})),
            "log": _array(_STRING),
            "seconds": _NUMBER,
            "error": _STRING,
        },
        optional=("seconds", "error"),  # seconds on success, error when FFmpeg could not open an input
    ),
    "Skills": _object(
        {
            "ffmpeg": _object({"version": _STRING, "version_full": _STRING}),
            "codecs": _object({kind: _array(_ref("Codec")) for kind in ("audio", "video", "subtitle")}),
            "formats": _object({"demuxers": _array(_NAMED), "muxers": _array(_NAMED)}),
            "protocols": _object({"input": _array(_NAMED), "output": _array(_NAMED)}),
        }
    ),
    "Codec": _object(
        {"id": _STRING, "name": _STRING, "encoders": _array(_STRING), "decoders": _array(_STRING)}
    ),
    "EffectiveConfig": _object(
        {
            "config_file": _nullable(_STRING),
            "loaded_at": _INTEGER,
            "config": {
                "type": "object",
                "additionalProperties": _object(
                    {"value": _ANY, "source": {"type": "string", "enum": ["default", "file", "env"]}}
                ),
            },
            "ignored_file_keys": _array(_STRING),
        }
    ),
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    # A component schema name for a JSON body, ``_ANY`` for any JSON value, or a non-JSON media type.
    body: str | Schema | None = None
    status: int = 200
    # A component schema name, a schema, or a non-JSON media type; None for an empty response.
    response: str | Schema | None = None
    errors: tuple[int, ...] = ()  # besides the derived ones
    query: tuple[tuple[str, str], ...] = ()
    not_found: bool = True  # whether an unknown path parameter is a 404

    def error_statuses(self) -> list[int]:
        derived = set(self.errors)
        if self.body is not None:
            derived |= {400, 413, 415}  # unparsable or invalid, too large, wrong Content-Type
        if self.not_found and "{" in self.path:
            derived.add(404)
        if self.path.startswith("/api/v3"):
            derived.add(401)
        return sorted(derived)


_FILTER = (
    "filter",
    "Comma-separated views to include: config, state, report, metadata (default all)",
)

ROUTES: tuple[Route, ...] = (
    Route("get", "/api", "About this server", response="About"),
    Route("get", "/ping", "Liveness check (text 'pong')", response=_TEXT),
    Route("get", "/metrics", "Prometheus metrics (text exposition format)", response=_TEXT, errors=(404,)),
    Route(
        "post",
        "/api/login",
        "Username/password → access and refresh JWT (400 when auth is disabled)",
        body="Login",
        response="Tokens",
        errors=(401,),
    ),
    *(
        Route(
            method,
            "/api/login/refresh",
            "Refresh token (as Bearer) → new access token",
            response="AccessToken",
            errors=(401,),
        )
        for method in ("get", "post")
    ),
    Route(
        "get",
        "/api/v3/process",
        "List processes",
        response=_array(_ref("Process")),
        errors=(400,),
        query=(
            ("id", "Comma-separated process ids"),
            ("reference", "Exact reference"),
            ("idpattern", "Glob pattern on the id"),
            ("refpattern", "Glob pattern on the reference"),
            _FILTER,
        ),
    ),
    Route(
        "post",
        "/api/v3/process",
        "Create a process",
        body="ProcessConfig",
        status=201,
        response="ProcessConfig",
        errors=(409,),
    ),
    Route(
        "get",
        "/api/v3/process/{id}",
        "One process (config, state, report, metadata)",
        response="Process",
        errors=(400,),
        query=(_FILTER,),
    ),
    Route(
        "put",
        "/api/v3/process/{id}",
        "Replace a process config (restarts it if it was started)",
        body="ProcessConfig",
        response="ProcessConfig",
        errors=(409,),
    ),
    Route("delete", "/api/v3/process/{id}", "Stop and delete a process", response={"type": "string"}),
    Route(
        "put",
        "/api/v3/process/{id}/command",
        "start | stop | restart | reload",
        body="Command",
        response={"type": "string"},
        errors=(409,),
    ),
    Route("get", "/api/v3/process/{id}/config", "The process config", response="ProcessConfig"),
    Route(
        "get",
        "/api/v3/process/{id}/state",
        "Order, exec state, progress, CPU, memory, viewers",
        response="ProcessState",
    ),
    Route(
        "get",
        "/api/v3/process/{id}/report",
        "Prelude, log lines and the history of earlier runs",
        response="ProcessReport",
    ),
    Route("get", "/api/v3/process/{id}/probe", "Probe the process's inputs with FFmpeg", response="Probe"),
    Route(
        "get",
        "/api/v3/process/{id}/metadata/{key}",
        "A metadata value of the process",
        response=_ANY,
    ),
    Route(
        "put",
        "/api/v3/process/{id}/metadata/{key}",
        "Store a metadata value on the process (null removes)",
        body=_ANY,
        response=_ANY,
    ),
    Route("get", "/api/v3/metadata", "All global metadata", response={"type": "object"}),
    Route("get", "/api/v3/metadata/{key}", "A global metadata value", response=_ANY),
    Route(
        "put",
        "/api/v3/metadata/{key}",
        "Store a global metadata value (null removes)",
        body=_ANY,
        response=_ANY,
    ),
    Route("get", "/api/v3/skills", "FFmpeg version, codecs, formats, protocols", response="Skills"),
    Route(
        "get",
        "/api/v3/config",
        "The effective configuration and where each value came from",
        response="EffectiveConfig",
    ),
    Route(
        "post",
        "/api/v3/whep/{id}",
        "WHEP: SDP offer → 201 + SDP answer (Location, ETag, Link ice-server)",
        body=_SDP,
        status=201,
        response=_SDP,
        errors=(406, 409, 503, 504),
    ),
    Route(
        "patch",
        "/api/v3/whep/{id}/{resource}",
        "WHEP: trickle ICE candidates (an ICE restart is refused with 422)",
        body=_TRICKLE,
        status=204,
        errors=(422,),
    ),
    Route(
        "delete",
        "/api/v3/whep/{id}/{resource}",
        "WHEP: end the session (idempotent: 204 for unknown sessions too)",
        status=204,
        not_found=False,
    ),
)


def _content(body: str | Schema) -> dict[str, Any]:
    """``content`` of a request or response: a media type with any text, or JSON of a schema."""
    if isinstance(body, str) and "/" in body:
        return {body: {"schema": {"type": "string"}}}
    return {_JSON: {"schema": _ref(body) if isinstance(body, str) else body}}


def _operation(route: Route) -> Schema:
    path_parameters = [
        {"name": name, "in": "path", "required": True, "description": text, "schema": _STRING}
        for name, text in _PATH_PARAMETERS.items()
        if "{" + name + "}" in route.path
    ]
    query_parameters = [
        {"name": name, "in": "query", "required": False, "description": text, "schema": _STRING}
        for name, text in route.query
    ]
    success: Schema = {"description": "success"}
    if route.response is not None:
        success["content"] = _content(route.response)
    operation: Schema = {
        "summary": route.summary,
        "tags": [route.path.split("/")[3] if route.path.startswith("/api/v3/") else "server"],
        "parameters": path_parameters + query_parameters,
        "responses": {str(route.status): success}
        | {
            str(code): {"description": "error", "content": {_JSON: {"schema": _ref("Error")}}}
            for code in route.error_statuses()
        },
    }
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": _content(route.body)}
    if route.path.startswith("/api/v3"):
        operation["security"] = [{"bearer": []}]
    return operation


def openapi30(schema: Any) -> Any:
    """A pydantic (JSON Schema 2020-12) schema in OpenAPI 3.0's dialect of JSON Schema.

    ``const`` becomes a one-value ``enum``, numeric ``exclusiveMinimum``/``exclusiveMaximum`` become a bound
    plus the boolean flag, and a ``$ref`` with sibling keywords (which 3.0 ignores) moves into ``allOf``.
    """
    if isinstance(schema, list):
        return [openapi30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: openapi30(value) for key, value in schema.items()}
    if "const" in converted:
        converted["enum"] = [converted.pop("const")]
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(converted.get(exclusive), int | float) and not isinstance(converted[exclusive], bool):
            converted[bound] = converted.pop(exclusive)
            converted[exclusive] = True
    if "$ref" in converted and len(converted) > 1:
        converted["allOf"] = [{"$ref": converted.pop("$ref")}]
    return converted


def openapi_document() -> dict[str, Any]:
    process_schema = ProcessConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    components = process_schema.pop("$defs", {}) | {"ProcessConfig": process_schema} | SCHEMAS
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method] = _operation(route)
    return {
        "openapi": "3.0.3",
        "info": {"title": "dragonfork API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": openapi30(components),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


_INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dragonfork API</title>
<link rel="stylesheet" href="/api/swagger/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/api/swagger/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/api/swagger/doc.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""


def docs_blueprint() -> Blueprint:
    bp = Blueprint("docs", __name__)
    document = openapi_document()

    @bp.get("/api/swagger")
    @bp.get("/api/swagger/index.html")
    async def swagger_ui():  # type: ignore[no-untyped-def]
        return Response(_INDEX, content_type="text/html; charset=utf-8")

    @bp.get("/api/swagger/doc.json")
    async def swagger_document():  # type: ignore[no-untyped-def]
        return jsonify(document)

    @bp.get("/api/swagger/static/<path:name>")
    async def swagger_static(name: str):  # type: ignore[no-untyped-def]
        return await send_from_directory(SWAGGER_DIR, name)

    return bp
