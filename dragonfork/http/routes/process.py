"""``/api/v3/process`` and ``/api/v3/metadata``: datarhei Core v3's process API."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, get_args

from pydantic import ValidationError
from quart import Blueprint, jsonify, request

from dragonfork.core import Core
from dragonfork.http.errors import ApiError, read_json, validation_error
from dragonfork.process.access import AddressDenied
from dragonfork.process.probe import ProbeError, probe_inputs
from dragonfork.process.progress import IOInfo, Progress, log_json
from dragonfork.process.registry import ProcessExists, ProcessNotFound
from dragonfork.process.runner import ManagedProcess, StartRefused
from dragonfork.process.schema import Command, ProcessConfig

VIEWS = ("config", "state", "report", "metadata")


def _io_json(io: IOInfo) -> dict[str, Any]:
    return dataclasses.asdict(io)


def progress_json(progress: Progress | None, inputs: list[IOInfo], outputs: list[IOInfo]) -> dict[str, Any]:
    values = dataclasses.asdict(progress) if progress else {}
    return {
        "frame": values.get("frame", 0),
        "fps": values.get("fps", 0.0),
        "q": values.get("q", 0.0),
        "size_kb": values.get("size_bytes", 0) // 1024,
        "time": values.get("time_seconds", 0.0),
        "bitrate_kbit": values.get("bitrate_kbit", 0.0),
        "speed": values.get("speed", 0.0),
        "drop": values.get("drop", 0),
        "dup": values.get("dup", 0),
        "input": [_io_json(io) for io in inputs],
        "output": [_io_json(io) for io in outputs],
    }


def state_json(core: Core, process: ManagedProcess) -> dict[str, Any]:
    view = process.view()
    return {
        "order": view.order,
        "exec": view.exec_state,
        "runtime_seconds": int(view.uptime_seconds),
        "state_since": int(view.state_since),
        "restarts": view.restarts,
        "last_logline": view.last_logline,
        "last_error": view.last_error,
        "progress": progress_json(view.progress, view.inputs, view.outputs),
        "cpu_usage": round(view.cpu_percent, 2),
        "memory_bytes": view.memory_bytes,
        "command": view.command,
        "webrtc": {"ready": view.stream_live, "viewers": core.whep.viewer_count(process.id)},
    }


def report_json(process: ManagedProcess) -> dict[str, Any]:
    view = process.view()
    return {
        "created_at": view.run_started_at,
        "prelude": view.prelude,
        "log": log_json(view.log),
        "history": [entry.to_json() for entry in view.history],
    }


def process_json(core: Core, process: ManagedProcess, views: tuple[str, ...] = VIEWS) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": process.id,
        "type": "ffmpeg",
        "reference": process.config.reference,
        "created_at": int(process.created_at),
        "updated_at": int(process.updated_at),
    }
    if "config" in views:
        body["config"] = process.config.model_dump(mode="json")
    if "state" in views:
        body["state"] = state_json(core, process)
    if "report" in views:
        body["report"] = report_json(process)
    if "metadata" in views:
        body["metadata"] = process.metadata
    return body


def _views() -> tuple[str, ...]:
    raw = request.args.get("filter", "")
    if not raw:
        return VIEWS
    wanted = tuple(view.strip() for view in raw.split(",") if view.strip())
    unknown = [view for view in wanted if view not in VIEWS]
    if unknown:
        raise ApiError(
            400, f"filter: unknown view {unknown[0]!r}; use {', '.join(VIEWS)}", {"field": "filter"}
        )
    return wanted


def process_blueprint(core: Core) -> Blueprint:
    bp = Blueprint("process", __name__)
    registry = core.registry

    def lookup(process_id: str) -> ManagedProcess:
        try:
            return registry.get(process_id)
        except ProcessNotFound as exc:
            raise ApiError(404, str(exc), {"field": "id"}) from None

    async def parse_config(body: Any) -> ProcessConfig:
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object (a process config)", {"field": "body"})
        try:
            return registry.validate(body)
        except ValidationError as exc:
            raise validation_error(exc, "config") from None
        except AddressDenied as exc:
            raise ApiError(
                400, str(exc), {"field": exc.field, "address": exc.address, "rule": exc.rule}
            ) from None

    @bp.get("/api/v3/process")
    async def list_processes():  # type: ignore[no-untyped-def]
        ids = [part for part in request.args.get("id", "").split(",") if part] or None
        found = registry.find(
            ids=ids,
            reference=request.args.get("reference"),
            idpattern=request.args.get("idpattern"),
            refpattern=request.args.get("refpattern"),
        )
        views = _views()
        return jsonify([process_json(core, process, views) for process in found])

    @bp.post("/api/v3/process")
    async def create_process():  # type: ignore[no-untyped-def]
        config = await parse_config(await read_json())
        try:
            process = await registry.create(config)
        except ProcessExists as exc:
            raise ApiError(409, str(exc), {"field": "id"}) from None
        return jsonify(process.config.model_dump(mode="json")), 201

    @bp.get("/api/v3/process/<process_id>")
    async def get_process(process_id: str):  # type: ignore[no-untyped-def]
        return jsonify(process_json(core, lookup(process_id), _views()))

    @bp.put("/api/v3/process/<process_id>")
    async def replace_process(process_id: str):  # type: ignore[no-untyped-def]
        lookup(process_id)
        config = await parse_config(await read_json())
        try:
            process = await registry.replace(process_id, config)
        except ProcessExists as exc:
            raise ApiError(409, str(exc), {"field": "id"}) from None
        except ProcessNotFound as exc:
            raise ApiError(404, str(exc), {"field": "id"}) from None
        return jsonify(process.config.model_dump(mode="json"))

    @bp.delete("/api/v3/process/<process_id>")
    async def delete_process(process_id: str):  # type: ignore[no-untyped-def]
        lookup(process_id)
        try:
            await registry.delete(process_id)
        except ProcessNotFound as exc:
            raise ApiError(404, str(exc), {"field": "id"}) from None
        return jsonify("OK")

    @bp.put("/api/v3/process/<process_id>/command")
    async def command(process_id: str):  # type: ignore[no-untyped-def]
        lookup(process_id)
        body = await read_json()
        allowed = get_args(Command)
        if not isinstance(body, dict) or body.get("command") not in allowed:
            raise ApiError(400, f"command: must be one of {', '.join(allowed)}", {"field": "command"})
        try:
            await registry.command(process_id, body["command"])
        except StartRefused as exc:
            raise ApiError(409, str(exc), {"field": "command"}) from None
        except ProcessNotFound as exc:
            raise ApiError(404, str(exc), {"field": "id"}) from None
        return jsonify("OK")

    @bp.get("/api/v3/process/<process_id>/config")
    async def get_config(process_id: str):  # type: ignore[no-untyped-def]
        return jsonify(lookup(process_id).config.model_dump(mode="json"))

    @bp.get("/api/v3/process/<process_id>/state")
    async def get_state(process_id: str):  # type: ignore[no-untyped-def]
        return jsonify(state_json(core, lookup(process_id)))

    @bp.get("/api/v3/process/<process_id>/report")
    async def get_report(process_id: str):  # type: ignore[no-untyped-def]
        return jsonify(report_json(lookup(process_id)))

    @bp.get("/api/v3/process/<process_id>/probe")
    async def probe(process_id: str):  # type: ignore[no-untyped-def]
        process = lookup(process_id)
        started = time.monotonic()
        try:
            inputs = await probe_inputs(
                core.settings.ffmpeg_binary,
                [(io.options, io.address) for io in process.resolved.input],
                timeout=core.settings.ffmpeg.probe_timeout_seconds,
            )
        except ProbeError as exc:
            return jsonify({"streams": [], "log": [str(exc)], "error": str(exc)})
        streams = [{**dataclasses.asdict(s), "address": io.address} for io in inputs for s in io.streams]
        return jsonify({"streams": streams, "log": [], "seconds": round(time.monotonic() - started, 3)})

    @bp.get("/api/v3/metadata/<key>")
    @bp.get("/api/v3/process/<process_id>/metadata/<key>")
    async def get_metadata(key: str, process_id: str | None = None):  # type: ignore[no-untyped-def]
        store = lookup(process_id).metadata if process_id else registry.metadata
        if key not in store:
            raise ApiError(404, f"metadata key {key!r} not found", {"field": "key"})
        return jsonify(store[key])

    @bp.put("/api/v3/metadata/<key>")
    @bp.put("/api/v3/process/<process_id>/metadata/<key>")
    async def put_metadata(key: str, process_id: str | None = None):  # type: ignore[no-untyped-def]
        if process_id:
            lookup(process_id)
        value = await read_json()
        try:
            await registry.set_metadata(key, value, process_id)
        except ValueError as exc:
            raise ApiError(400, str(exc), {"field": "key"}) from None
        except ProcessNotFound as exc:
            raise ApiError(404, str(exc), {"field": "id"}) from None
        return jsonify(value)

    @bp.get("/api/v3/metadata")
    async def all_metadata():  # type: ignore[no-untyped-def]
        return jsonify(registry.metadata)

    return bp
