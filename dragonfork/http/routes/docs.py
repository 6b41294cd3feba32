"""``/api/swagger``: the OpenAPI description of every route and a Swagger UI that works offline.

The UI's files come from the ``swagger-ui-bundle`` wheel, so no CDN is needed. The process schema in the
description is generated from the same pydantic model that validates requests, so the two cannot drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import swagger_ui_bundle
from quart import Blueprint, jsonify, send_from_directory
from quart_trio.wrappers import TrioResponse as Response

from dragonfork import __version__
from dragonfork.process.schema import ProcessConfig

SWAGGER_DIR = Path(swagger_ui_bundle.swagger_ui_path)

_ERROR = {"$ref": "#/components/schemas/Error"}
_JSON = "application/json"
_SDP = "application/sdp"

# (method, path, summary, request body schema or media type, success status, error statuses)
ROUTES: list[tuple[str, str, str, Any, int, tuple[int, ...]]] = [
    ("get", "/api", "About this server", None, 200, ()),
    ("get", "/ping", "Liveness check (text 'pong')", None, 200, ()),
    ("get", "/metrics", "Prometheus metrics (text exposition format)", None, 200, (404,)),
    (
        "post",
        "/api/login",
        "Username/password → access and refresh JWT",
        {"$ref": "#/components/schemas/Login"},
        200,
        (400, 401, 415),
    ),
    ("get", "/api/login/refresh", "Refresh token (as Bearer) → new access token", None, 200, (401,)),
    (
        "get",
        "/api/v3/process",
        "List processes (filters: id, reference, idpattern, refpattern, filter)",
        None,
        200,
        (400, 401),
    ),
    (
        "post",
        "/api/v3/process",
        "Create a process",
        {"$ref": "#/components/schemas/ProcessConfig"},
        201,
        (400, 401, 409, 413, 415),
    ),
    ("get", "/api/v3/process/{id}", "One process (config, state, report, metadata)", None, 200, (401, 404)),
    (
        "put",
        "/api/v3/process/{id}",
        "Replace a process config (restarts it if it was started)",
        {"$ref": "#/components/schemas/ProcessConfig"},
        200,
        (400, 401, 404, 409, 413, 415),
    ),
    ("delete", "/api/v3/process/{id}", "Stop and delete a process", None, 200, (401, 404)),
    (
        "put",
        "/api/v3/process/{id}/command",
        "start | stop | restart | reload",
        {"$ref": "#/components/schemas/Command"},
        200,
        (400, 401, 404, 409, 415),
    ),
    ("get", "/api/v3/process/{id}/config", "The process config", None, 200, (401, 404)),
    (
        "get",
        "/api/v3/process/{id}/state",
        "Order, exec state, progress, CPU, memory, viewers",
        None,
        200,
        (401, 404),
    ),
    (
        "get",
        "/api/v3/process/{id}/report",
        "Prelude, log lines and the history of earlier runs",
        None,
        200,
        (401, 404),
    ),
    ("get", "/api/v3/process/{id}/probe", "Probe the process's inputs with FFmpeg", None, 200, (401, 404)),
    ("get", "/api/v3/process/{id}/metadata/{key}", "A metadata value of the process", None, 200, (401, 404)),
    (
        "put",
        "/api/v3/process/{id}/metadata/{key}",
        "Store a metadata value on the process (null removes)",
        {},
        200,
        (400, 401, 404, 415),
    ),
    ("get", "/api/v3/metadata", "All global metadata", None, 200, (401,)),
    ("get", "/api/v3/metadata/{key}", "A global metadata value", None, 200, (401, 404)),
    (
        "put",
        "/api/v3/metadata/{key}",
        "Store a global metadata value (null removes)",
        {},
        200,
        (400, 401, 415),
    ),
    ("get", "/api/v3/skills", "FFmpeg version, codecs, formats, protocols", None, 200, (401,)),
    (
        "get",
        "/api/v3/config",
        "The effective configuration and where each value came from",
        None,
        200,
        (401,),
    ),
    (
        "post",
        "/api/v3/whep/{id}",
        "WHEP: SDP offer → 201 + SDP answer (Location, ETag, Link ice-server)",
        _SDP,
        201,
        (400, 401, 404, 406, 409, 413, 415, 503, 504),
    ),
    (
        "patch",
        "/api/v3/whep/{id}/{resource}",
        "WHEP: trickle ICE candidates (application/trickle-ice-sdpfrag)",
        "application/trickle-ice-sdpfrag",
        204,
        (400, 401, 404, 415, 422),
    ),
    ("delete", "/api/v3/whep/{id}/{resource}", "WHEP: end the session (idempotent)", None, 204, (401,)),
]


def _operation(
    method: str, path: str, summary: str, body: Any, success: int, errors: tuple[int, ...]
) -> dict:
    operation: dict[str, Any] = {
        "summary": summary,
        "tags": [path.split("/")[3] if path.startswith("/api/v3/") else "server"],
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in ("id", "key", "resource")
            if "{" + name + "}" in path
        ],
        "responses": {str(success): {"description": "success"}}
        | {str(code): {"description": "error", "content": {_JSON: {"schema": _ERROR}}} for code in errors},
    }
    if isinstance(body, str):
        operation["requestBody"] = {"required": True, "content": {body: {"schema": {"type": "string"}}}}
    elif body is not None:
        operation["requestBody"] = {"required": True, "content": {_JSON: {"schema": body}}}
    if path.startswith("/api/v3"):
        operation["security"] = [{"bearer": []}]
    return operation


def openapi_document() -> dict[str, Any]:
    process_schema = ProcessConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    components = process_schema.pop("$defs", {})
    components["ProcessConfig"] = process_schema
    components["Error"] = {
        "type": "object",
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"}, "details": {}},
    }
    components["Login"] = {
        "type": "object",
        "required": ["username", "password"],
        "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
    }
    components["Command"] = {
        "type": "object",
        "required": ["command"],
        "properties": {"command": {"type": "string", "enum": ["start", "stop", "restart", "reload"]}},
    }
    paths: dict[str, dict[str, Any]] = {}
    for method, path, *rest in ROUTES:
        paths.setdefault(path, {})[method] = _operation(method, path, *rest)
    return {
        "openapi": "3.0.3",
        "info": {"title": "dragonfork API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
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
