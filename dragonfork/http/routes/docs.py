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

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import swagger_ui_bundle
from quart import Blueprint, jsonify, send_from_directory
from quart_trio.wrappers import TrioResponse as Response

from dragonfork import __version__
from dragonfork.config import Settings
from dragonfork.http.read_only import changes_state
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
    "resource": "WHEP or WHIP session id (the last segment of the Location header)",
    "name": "Stream name (what a WHIP publisher publishes, what {whip,name=NAME} reads)",
    "storage": "Filesystem name (GET /api/v3/fs lists them: disk, mem)",
    "filepath": "Path of a file in the filesystem",
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


def _map(values: Schema) -> Schema:
    return {"type": "object", "additionalProperties": values}


_SESSION_STATS = _object({"sessions": _INTEGER, "traffic_rx_mb": _INTEGER, "traffic_tx_mb": _INTEGER})
_BOOLEAN: Schema = {"type": "boolean"}
_ANY: Schema = {}


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


# What FFmpeg's prelude tells of a stream, shared by datarhei's api.ProgressIO and api.ProbeIO: the video
# fields are present for video streams, the audio ones for audio streams.
_STREAM_FIELDS: dict[str, Schema] = {
    "stream": _INTEGER,
    "type": {"type": "string", "enum": ["video", "audio", "data", "subtitle", "other"]},
    "codec": _STRING,
    "coder": _STRING,
    "fps": _NUMBER,
    "pix_fmt": _STRING,
    "width": _INTEGER,
    "height": _INTEGER,
    "sampling_hz": _INTEGER,
    "layout": _STRING,
    "channels": _INTEGER,
}
_PER_KIND = ("pix_fmt", "width", "height", "sampling_hz", "layout", "channels")
# datarhei Core's log lines: ["<unix seconds>", "<line>"]
_LOG = _array({**_array(_STRING), "minItems": 2, "maxItems": 2})
_NAMED_LIST = _array(_ref("api.SkillsFormat"))
# the clients an ingest server refused last (GET /api/v3/ingest)
_REFUSED = _array(_object({"remote": _STRING, "reason": _STRING, "message": _STRING, "at": _NUMBER}))

# Response schemas (and the request schemas that are not the process config), by component name: datarhei's
# names (its swagger's definitions) where datarhei has the thing, with dragonfork's additions as extra fields.
SCHEMAS: dict[str, Schema] = {
    "api.Error": _object({"code": _INTEGER, "message": _STRING, "details": _array(_STRING)}),
    "api.Login": _object({"username": _STRING, "password": _STRING}),
    "api.JWT": _object(
        {
            "access_token": _STRING,
            "access_expires_at": _INTEGER,
            "refresh_token": _STRING,
            "refresh_expires_at": _INTEGER,
        }
    ),
    "api.JWTRefresh": _object({"access_token": _STRING, "access_expires_at": _INTEGER}),
    "api.Command": _object({"command": {"type": "string", "enum": list(get_args(Command))}}),
    "api.Version": _object(
        {
            "number": _STRING,
            "repository_commit": _STRING,
            "repository_branch": _STRING,
            "build_date": _STRING,
            "arch": _STRING,
            "compiler": _STRING,
        },
        optional=("repository_commit", "repository_branch", "build_date", "arch", "compiler"),
    ),
    "api.About": _object(
        {
            "app": {"type": "string", "enum": ["datarhei-core"]},
            "auths": _array(_STRING),
            "name": _STRING,
            "id": _STRING,
            "created_at": {"type": "string", "format": "date-time"},
            "uptime_seconds": _INTEGER,
            "version": _ref("api.Version"),
        },
        optional=("name", "id", "created_at", "uptime_seconds"),  # left out without a valid token
    ),
    "api.ProgressIO": _object(
        {
            "id": _STRING,
            "address": _STRING,
            "index": _INTEGER,
            "format": _STRING,
            **_STREAM_FIELDS,
            "frame": _INTEGER,
            "keyframe": _INTEGER,
            "packet": _INTEGER,
            "pps": _NUMBER,
            "q": _NUMBER,
            "size_kb": _INTEGER,
            "bitrate_kbit": _NUMBER,
            "extradata_size_bytes": _INTEGER,
        },
        optional=_PER_KIND,
    ),
    "api.Progress": _object(
        {
            "inputs": _array(_ref("api.ProgressIO")),
            "outputs": _array(_ref("api.ProgressIO")),
            "frame": _INTEGER,
            "packet": _INTEGER,
            "fps": _NUMBER,
            "q": _NUMBER,
            "size_kb": _INTEGER,
            "time": _NUMBER,
            "bitrate_kbit": _NUMBER,
            "speed": _NUMBER,
            "drop": _INTEGER,
            "dup": _INTEGER,
        }
    ),
    "api.ProcessState": _object(
        {
            "order": {"type": "string", "enum": list(get_args(Order))},
            "exec": {"type": "string", "enum": list(get_args(ExecState))},
            "runtime_seconds": _INTEGER,
            "reconnect_seconds": _INTEGER,
            "state_since": _INTEGER,
            "restarts": _INTEGER,
            "last_logline": _STRING,
            "last_error": _STRING,
            "progress": _ref("api.Progress"),
            "cpu_usage": _NUMBER,
            "memory_bytes": _INTEGER,
            "command": _array(_STRING),
            "webrtc": _object({"ready": _BOOLEAN, "viewers": _INTEGER}),
        }
    ),
    "api.ProcessReportHistoryEntry": _object(
        {
            "created_at": _INTEGER,
            "prelude": _array(_STRING),
            "log": _LOG,
            "exited_at": _INTEGER,
            "exit_state": {"type": "string", "enum": ["finished", "failed", "killed"]},
            "exit_code": _nullable(_INTEGER),
            "progress": _nullable({"type": "object"}),
        }
    ),
    "api.ProcessReport": _object(
        {
            "created_at": _INTEGER,
            "prelude": _array(_STRING),
            "log": _LOG,
            "history": _array(_ref("api.ProcessReportHistoryEntry")),
        }
    ),
    "api.Process": _object(
        {
            "id": _STRING,
            "type": {"type": "string", "enum": ["ffmpeg"]},
            "reference": _STRING,
            "created_at": _INTEGER,
            "updated_at": _INTEGER,
            "config": _ref("api.ProcessConfig"),
            "state": _ref("api.ProcessState"),
            "report": _ref("api.ProcessReport"),
            "metadata": {"type": "object"},
        },
        optional=("config", "state", "report", "metadata"),  # present as the filter asks
    ),
    "api.ProbeIO": _object(
        {
            "url": _STRING,
            "format": _STRING,
            "index": _INTEGER,
            "language": _STRING,
            **_STREAM_FIELDS,
            "bitrate_kbps": _NUMBER,
            "duration_sec": _NUMBER,
        },
        optional=_PER_KIND,
    ),
    "api.Probe": _object(
        {
            "streams": _array(_ref("api.ProbeIO")),
            "log": _array(_STRING),
            "seconds": _NUMBER,
            "error": _STRING,
        },
        optional=("seconds", "error"),  # seconds on success, error when FFmpeg could not open an input
    ),
    "api.SkillsFormat": _object({"id": _STRING, "name": _STRING}),
    "api.SkillsCodec": _object(
        {"id": _STRING, "name": _STRING, "encoders": _array(_STRING), "decoders": _array(_STRING)}
    ),
    "api.SkillsDevice": _object({"id": _STRING, "name": _STRING, "devices": _array({"type": "object"})}),
    "api.SkillsLibrary": _object({"name": _STRING, "compiled": _STRING, "linked": _STRING}),
    "api.Skills": _object(
        {
            "ffmpeg": _object(
                {
                    "version": _STRING,
                    "version_full": _STRING,
                    "compiler": _STRING,
                    "configuration": _STRING,
                    "libraries": _array(_ref("api.SkillsLibrary")),
                }
            ),
            "filter": _NAMED_LIST,
            "hwaccels": _NAMED_LIST,
            "codecs": _object(
                {kind: _array(_ref("api.SkillsCodec")) for kind in ("audio", "video", "subtitle")}
            ),
            "devices": _object(
                {"demuxers": _array(_ref("api.SkillsDevice")), "muxers": _array(_ref("api.SkillsDevice"))}
            ),
            "formats": _object({"demuxers": _NAMED_LIST, "muxers": _NAMED_LIST}),
            "protocols": _object({"input": _NAMED_LIST, "output": _NAMED_LIST}),
        }
    ),
    # format=console: one line per event; format=raw: each event's fields (datarhei's api.LogEvent)
    "api.LogEvent": {"type": "object", "required": ["ts", "level", "message"]},
    "api.MetricsDescription": _object({"name": _STRING, "description": _STRING, "labels": _array(_STRING)}),
    "api.MetricsQuery": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "timerange_sec": {"type": "integer", "minimum": 0, "maximum": 86400},
            "interval_sec": {"type": "integer", "minimum": 0, "maximum": 86400},
            "metrics": _array(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 200},
                        "labels": {"type": "object", "additionalProperties": _STRING},
                    },
                }
            ),
        },
    },
    "api.MetricsResponse": _object(
        {
            "timerange_sec": _INTEGER,
            "interval_sec": _INTEGER,
            "metrics": _array(
                _object(
                    {
                        "name": _STRING,
                        "labels": {"type": "object", "additionalProperties": _STRING},
                        # [unix seconds, value], as datarhei's server writes them
                        "values": _array({**_array(_NUMBER), "minItems": 2, "maxItems": 2}),
                    }
                )
            ),
        }
    ),
    # datarhei's api.Config: the settings (as ConfigData) with when they were stored and applied; ours:
    # restart_required, the stored keys the running server takes only at its next start
    "api.Config": _object(
        {
            "created_at": _STRING,
            "loaded_at": _STRING,
            "updated_at": _STRING,
            "config": _ref("api.ConfigData"),
            "overrides": _array(_STRING),
            "restart_required": _array(_STRING),
        }
    ),
    # datarhei's api.Session* and api.WidgetProcess
    "api.Session": _object(
        {
            "id": _STRING,
            "reference": _STRING,
            "created_at": _INTEGER,
            "local": _STRING,
            "remote": _STRING,
            "extra": _STRING,
            "bytes_rx": _INTEGER,
            "bytes_tx": _INTEGER,
            "bandwidth_rx_kbit": _NUMBER,
            "bandwidth_tx_kbit": _NUMBER,
        }
    ),
    "api.SessionStats": _SESSION_STATS,
    "api.SessionSummary": _object(
        {
            "active": _object(
                {
                    "list": _array(_ref("api.Session")),
                    "sessions": _INTEGER,
                    "bandwidth_rx_mbit": _NUMBER,
                    "bandwidth_tx_mbit": _NUMBER,
                    "max_sessions": _INTEGER,
                    "max_bandwidth_rx_mbit": _NUMBER,
                    "max_bandwidth_tx_mbit": _NUMBER,
                }
            ),
            "summary": _object(
                {
                    "remote": _map(
                        _object({**_SESSION_STATS["properties"], "local": _map(_ref("api.SessionStats"))})
                    ),
                    "local": _map(_ref("api.SessionStats")),
                    "reference": _map(_ref("api.SessionStats")),
                    **_SESSION_STATS["properties"],
                }
            ),
        }
    ),
    "api.SessionsSummary": _map(_ref("api.SessionSummary")),
    "api.SessionsActive": _map(_array(_ref("api.Session"))),
    "api.WidgetProcess": _object(
        {"current_sessions": _INTEGER, "total_sessions": _INTEGER, "uptime": _INTEGER}
    ),
    # datarhei's api.RTMPChannel and api.SRTChannels (one object, as datarhei's handler answers it)
    "api.RTMPChannel": _object({"name": _STRING}),
    "api.SRTChannels": _object(
        {
            "publisher": _map(_INTEGER),
            "subscriber": _map(_array(_INTEGER)),
            "connections": _map(_object({"log": _map(_array(_ANY)), "stats": {"type": "object"}})),
            "log": _map(_array(_ANY)),
        }
    ),
    # ours: the admin UI's ingest panel; each protocol's details only while its server runs, ``error`` when
    # a config reload could not restart it
    "api.Ingest": _object(
        {
            "rtmp": _object(
                {
                    "enabled": _BOOLEAN,
                    "port": _INTEGER,
                    "tls_port": _nullable(_INTEGER),
                    "app": _STRING,
                    "token": _STRING,
                    "publishers": _array(
                        _object(
                            {
                                "name": _STRING,
                                "path": _STRING,
                                "remote": _STRING,
                                "uptime_seconds": _NUMBER,
                                "bytes_received": _INTEGER,
                                "media_messages": _INTEGER,
                            }
                        )
                    ),
                    "refused": _REFUSED,
                    "error": _STRING,
                },
                optional=("port", "tls_port", "app", "token", "publishers", "refused", "error"),
            ),
            "srt": _object(
                {
                    "enabled": _BOOLEAN,
                    "port": _INTEGER,
                    "token": _STRING,
                    "passphrase_set": _BOOLEAN,
                    "publishers": _array(
                        _object(
                            {
                                "name": _STRING,
                                "remote": _STRING,
                                "uptime_seconds": _NUMBER,
                                "bytes_received": _INTEGER,
                                "packets_received": _INTEGER,
                                "packets_retransmitted": _INTEGER,
                                "packets_dropped": _INTEGER,
                                "rtt_ms": _NUMBER,
                                "readers": _array(_object({"remote": _STRING, "bytes_sent": _INTEGER})),
                            }
                        )
                    ),
                    "refused": _REFUSED,
                    "error": _STRING,
                },
                optional=("port", "token", "passphrase_set", "publishers", "refused", "error"),
            ),
            "whip": _object(
                {
                    "enabled": _BOOLEAN,
                    "path": _STRING,
                    "bearer_token_required": _BOOLEAN,
                    "publishers": _array(
                        _object(
                            {
                                "name": _STRING,
                                "remote": _STRING,
                                "state": _STRING,
                                "uptime_seconds": _NUMBER,
                                "bytes_received": _INTEGER,
                                "packets_received": _INTEGER,
                            }
                        )
                    ),
                    "error": _STRING,
                },
                optional=("path", "bearer_token_required", "publishers", "error"),
            ),
        }
    ),
    # datarhei's api.FilesystemInfo and api.FileInfo (GET /api/v3/fs, /api/v3/fs/{storage})
    "api.FilesystemInfo": _object({"name": _STRING, "type": _STRING, "mount": _STRING}),
    "api.FileInfo": _object({"name": _STRING, "size_bytes": _INTEGER, "last_modified": _INTEGER}),
    # datarhei's api.ConfigError (409): each contradicting key with its messages
    "api.ConfigError": {"type": "object", "additionalProperties": _array(_STRING)},
}
# The process config's components, generated from the pydantic models, under datarhei's names.
_MODEL_NAMES = {
    "ProcessConfig": "api.ProcessConfig",
    "IOConfig": "api.ProcessConfigIO",
    "CleanupRule": "api.ProcessConfigIOCleanup",
    "Limits": "api.ProcessConfigLimits",
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    # A component schema name for a JSON body, ``_ANY`` for any JSON value, or a non-JSON media type.
    body: str | Schema | None = None
    status: int = 200
    also: tuple[int, ...] = ()  # other success statuses, without a body (a PUT: 201 new, 204 replaced)
    # A component schema name, a schema, or a non-JSON media type; None for an empty response.
    response: str | Schema | None = None
    errors: tuple[int, ...] = ()  # besides the derived ones
    query: tuple[tuple[str, str], ...] = ()
    not_found: bool = True  # whether an unknown path parameter is a 404
    public: bool = False  # under /api/v3 but without auth (datarhei's widget)
    error_bodies: tuple[tuple[int, str], ...] = ()  # statuses whose body is not an Error (datarhei's own)

    def error_statuses(self) -> list[int]:
        derived = set(self.errors) | {code for code, _ in self.error_bodies}
        if self.body is not None:
            derived |= {400, 413, 415}  # unparsable or invalid, too large, wrong Content-Type
        if self.not_found and "{" in self.path:
            derived.add(404)
        if self.path.startswith("/api/v3") and not self.public:
            derived.add(401)
        if changes_state(self.method, self.path):
            derived.add(403)  # api.read_only
        return sorted(derived)


def _signalling_routes(protocol: str, endpoint: str, offer: str) -> tuple[Route, ...]:
    """A WHEP or WHIP endpoint's offer and its session resource (``endpoint/{resource}``): exists, trickle,
    end."""
    session = endpoint + "/{resource}"
    return (
        Route(
            "post",
            endpoint,
            f"{protocol}: {offer}",
            body=_SDP,
            status=201,
            response=_SDP,
            errors=(406, 409, 503, 504),
        ),
        *(
            Route(method, session, f"{protocol}: the session exists (204 + ETag, no body)", status=204)
            for method in ("get", "head")
        ),
        Route(
            "patch",
            session,
            f"{protocol}: trickle ICE candidates (If-Match other than the ETag: 412; ICE restart: 428 "
            "without If-Match, else 422)",
            body=_TRICKLE,
            status=204,
            errors=(412, 422, 428),
        ),
        Route(
            "delete",
            session,
            f"{protocol}: end the session (idempotent: 204 for unknown sessions too)",
            status=204,
            not_found=False,
        ),
    )


def _file_routes(path: str, where: str, writes: tuple[str, ...]) -> tuple[Route, ...]:
    """A file's read (GET, HEAD; a single byte ``Range`` is a 206), write and delete, on ``path``.

    Under /api/v3 the API's auth covers all of them (401 derived); memfs asks for its own HTTP Basic
    credentials (storage.memory.auth) to write and delete."""
    credentials = (401,) if path.startswith("/memfs") else ()
    reads = tuple(
        Route(
            method,
            path,
            f"A file of {where}",
            response="*/*" if method == "get" else None,
            errors=(400, 403, 416),  # a bad path, an HLS session refused, a range outside the file
        )
        for method in ("get", "head")
    )
    stores = tuple(
        Route(
            method,
            path,
            f"Store a file in {where}: 201 when it is new, 204 when it replaced one",
            body="application/octet-stream",
            status=201,
            also=(204,),
            errors=(*credentials, 507),  # 507: the filesystem is full
        )
        for method in writes
    )
    remove = Route("delete", path, f"Remove a file of {where}", response=_TEXT, errors=(400, *credentials))
    return (*reads, *stores, remove)


_FILTER = (
    "filter",
    "Comma-separated views to include: config, state, report, metadata (default all)",
)

ROUTES: tuple[Route, ...] = (
    Route("get", "/api", "About this server", response="api.About"),
    Route("get", "/ping", "Liveness check (text 'pong')", response=_TEXT),
    Route(
        "get",
        "/metrics",
        "Prometheus metrics (text exposition format); with metrics.protect behind the API auth (or Basic)",
        response=_TEXT,
        errors=(401, 404, 429),
    ),
    Route(
        "post",
        "/api/login",
        "Username/password → access and refresh JWT (400 when auth is disabled)",
        body="api.Login",
        response="api.JWT",
        errors=(401, 429),
    ),
    *(
        Route(
            method,
            "/api/login/refresh",
            "Refresh token (as Bearer) → new access token",
            response="api.JWTRefresh",
            errors=(401, 429),
        )
        for method in ("get", "post")
    ),
    Route(
        "get",
        "/api/v3/process",
        "List processes",
        response=_array(_ref("api.Process")),
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
        "Create a process (400 for a duplicate id, as datarhei)",
        body="api.ProcessConfig",
        response="api.ProcessConfig",
    ),
    Route(
        "get",
        "/api/v3/process/{id}",
        "One process (config, state, report, metadata)",
        response="api.Process",
        errors=(400,),
        query=(_FILTER,),
    ),
    Route(
        "put",
        "/api/v3/process/{id}",
        "Update a process config: fields left out keep their value (restarts it if it was started)",
        body=_ANY,
        response="api.ProcessConfig",
    ),
    Route("delete", "/api/v3/process/{id}", "Stop and delete a process", response={"type": "string"}),
    Route(
        "put",
        "/api/v3/process/{id}/command",
        "start | stop | restart | reload (400 when a start is refused, as datarhei)",
        body="api.Command",
        response={"type": "string"},
    ),
    Route("get", "/api/v3/process/{id}/config", "The process config", response="api.ProcessConfig"),
    Route(
        "get",
        "/api/v3/process/{id}/state",
        "Order, exec state, progress, CPU, memory, viewers",
        response="api.ProcessState",
    ),
    Route(
        "get",
        "/api/v3/process/{id}/report",
        "Prelude, log lines and the history of earlier runs",
        response="api.ProcessReport",
    ),
    Route(
        "get", "/api/v3/process/{id}/probe", "Probe the process's inputs with FFmpeg", response="api.Probe"
    ),
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
    Route(
        "get",
        "/api/v3/skills",
        "FFmpeg version, codecs, filters, formats, devices, protocols",
        response="api.Skills",
    ),
    Route("get", "/api/v3/skills/reload", "Read the FFmpeg binary's skills again", response="api.Skills"),
    Route(
        "get",
        "/api/v3/log",
        "The server's recent log events: lines (format=console) or fields (format=raw)",
        response=_array({"anyOf": [_STRING, _ref("api.LogEvent")]}),
        errors=(400,),
        query=(("format", "console (default) or raw"),),
    ),
    Route(
        "get",
        "/api/v3/metrics",
        "The metrics the history keeps, with their description and labels",
        response=_array(_ref("api.MetricsDescription")),
        errors=(404,),
    ),
    Route(
        "post",
        "/api/v3/metrics",
        "Query the metrics history: name and label patterns (regular expressions) → series",
        body="api.MetricsQuery",
        response="api.MetricsResponse",
        errors=(404,),
    ),
    Route("get", "/api/v3/config", "The configuration (datarhei's document)", response="api.Config"),
    Route(
        "put",
        "/api/v3/config",
        "Store a full or partial v3 configuration (applied by /api/v3/config/reload)",
        body="api.SetConfig",
        response=_STRING,
        error_bodies=((409, "api.ConfigError"),),
    ),
    *(
        Route(
            "get",
            path,
            summary,
            response=schema,
            errors=(400,),
            query=(("collectors", "Comma-separated: hls, webrtc, rtmp, srt, ffmpeg (default all)"),),
        )
        for path, summary, schema in (
            (
                "/api/v3/session",
                "Sessions per collector: active ones and totals",
                "api.SessionsSummary",
            ),
            ("/api/v3/session/active", "The active sessions per collector", "api.SessionsActive"),
        )
    ),
    Route(
        "get",
        "/api/v3/widget/process/{id}",
        "Public: a process's current and total viewers and its uptime",
        response="api.WidgetProcess",
        public=True,
    ),
    Route("get", "/api/v3/config/reload", "Apply the stored configuration", response=_STRING),
    Route(
        "get",
        "/api/v3/fs",
        "The filesystems (disk, mem) and where they are mounted",
        response=_array(_ref("api.FilesystemInfo")),
    ),
    Route(
        "get",
        "/api/v3/fs/{storage}",
        "The files of a filesystem",
        response=_array(_ref("api.FileInfo")),
        errors=(400,),
        query=(
            ("glob", "Only the paths that match this pattern (*, **, ?, [...], {a,b})"),
            ("sort", "none (default), name, size or lastmod"),
            ("order", "asc (default) or desc"),
        ),
    ),
    *_file_routes("/api/v3/fs/{storage}/{filepath}", "a filesystem", ("put",)),
    *_file_routes("/memfs/{filepath}", "memfs", ("put", "post")),
    *_signalling_routes(
        "WHEP",
        "/api/v3/whep/{id}",
        "SDP offer → 201 + SDP answer (Location, ETag, Link ice-server)",
    ),
    *(
        Route(
            method,
            "/api/v3/whep/{id}",
            "WHEP: the endpoint exists (draft-04: 204 without a body)",
            status=204,
        )
        for method in ("get", "head")
    ),
    Route(
        "get",
        "/api/v3/rtmp",
        "The live RTMP publishers (datarhei's channels)",
        response=_array(_ref("api.RTMPChannel")),
    ),
    Route("get", "/api/v3/srt", "The SRT channels and connections (datarhei's)", response="api.SRTChannels"),
    Route(
        "get",
        "/api/v3/ingest",
        "RTMP, SRT and WHIP ingest: how to publish, live publishers, errors",
        response="api.Ingest",
    ),
    *_signalling_routes(
        "WHIP",
        "/api/v3/whip/{name}",
        "publisher's SDP offer → 201 + SDP answer (Location, ETag, Link ice-server); 404 while WHIP is off, "
        "409 for a live name, 503 over whip.max_publishers",
    ),
    Route(
        "get",
        "/api/v3/whip/{name}/stream.mkv",
        "The live stream NAME as Matroska (what {whip,name=NAME} reads; with API auth it needs ?key=, not "
        "a token); 404 when nothing goes live within webrtc.publisher_wait_seconds",
        response="video/x-matroska",
        errors=(403,),
        query=(("key", "The reader key {whip,name=NAME} expands to (with API auth)"),),
        public=True,
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
    error_schemas = {code: "api.Error" for code in route.error_statuses()} | dict(route.error_bodies)
    success: Schema = {"description": "success"}
    if route.response is not None:
        success["content"] = _content(route.response)
    operation: Schema = {
        "summary": route.summary,
        "tags": [route.path.split("/")[3] if route.path.startswith("/api/v3/") else "server"],
        "parameters": path_parameters + query_parameters,
        "responses": {str(route.status): success}
        | {str(code): {"description": "success"} for code in route.also}
        | {
            str(code): {"description": "error", "content": {_JSON: {"schema": _ref(error_schemas[code])}}}
            for code in route.error_statuses()
        },
    }
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": _content(route.body)}
    if route.path.startswith("/api/v3") and not route.public:
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


def _renamed(schema: Any) -> Any:
    """The generated schema with the model names replaced by datarhei's (``_MODEL_NAMES``)."""
    if isinstance(schema, list):
        return [_renamed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    renamed = {key: _renamed(value) for key, value in schema.items()}
    prefix = "#/components/schemas/"
    if isinstance(renamed.get("$ref"), str) and renamed["$ref"].startswith(prefix):
        name = renamed["$ref"].removeprefix(prefix)
        renamed["$ref"] = prefix + _MODEL_NAMES.get(name, name)
    return renamed


@functools.cache  # built on the first request, not at start-up (the schemas take ~0.1 s)
def openapi_document() -> dict[str, Any]:
    process_schema = ProcessConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    settings_schema = Settings.model_json_schema(ref_template="#/components/schemas/{model}")
    config_data = settings_schema | {
        "properties": {"created_at": _STRING, "version": _INTEGER, **settings_schema["properties"]}
    }
    set_config = settings_schema | {
        "properties": {"version": {"type": "integer", "enum": [3]}, **settings_schema["properties"]},
        "required": ["version"],
    }
    models = (
        process_schema.pop("$defs", {})
        | config_data.pop("$defs", {})
        | set_config.pop("$defs", {})
        | {"ProcessConfig": process_schema, "api.ConfigData": config_data, "api.SetConfig": set_config}
    )
    components = {_MODEL_NAMES.get(name, name): _renamed(schema) for name, schema in models.items()} | SCHEMAS
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

    @bp.get("/api/swagger")
    @bp.get("/api/swagger/index.html")
    async def swagger_ui():  # type: ignore[no-untyped-def]
        return Response(_INDEX, content_type="text/html; charset=utf-8")

    @bp.get("/api/swagger/doc.json")
    async def swagger_document():  # type: ignore[no-untyped-def]
        return jsonify(openapi_document())

    @bp.get("/api/swagger/static/<path:name>")
    async def swagger_static(name: str):  # type: ignore[no-untyped-def]
        return await send_from_directory(SWAGGER_DIR, name)

    return bp
