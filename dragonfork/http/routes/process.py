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
from dragonfork.process.progress import IOInfo, StreamInfo, log_json
from dragonfork.process.registry import ProcessExists, ProcessNotFound
from dragonfork.process.runner import ManagedProcess, ProcessView, StartRefused
from dragonfork.process.schema import Command, IOConfig, ProcessConfig

VIEWS = ("config", "state", "report", "metadata")


def stream_json(stream: StreamInfo) -> dict[str, Any]:
    """What FFmpeg's prelude tells of one stream, in the field names datarhei's progress and probe share."""
    fields: dict[str, Any] = {
        "stream": stream.index,
        "type": stream.type,
        "codec": stream.codec,
        "coder": stream.codec,
        "fps": stream.fps or 0.0,
    }
    if stream.type == "video":
        fields.update(pix_fmt=stream.pix_fmt or "", width=stream.width or 0, height=stream.height or 0)
    elif stream.type == "audio":
        fields.update(
            sampling_hz=stream.sample_rate or 0, layout=stream.layout or "", channels=stream.channels or 0
        )
    return fields


def progress_io_json(config_ios: list[IOConfig], io: IOInfo) -> list[dict[str, Any]]:
    """One datarhei ``api.ProgressIO`` per stream of an FFmpeg input or output.

    What FFmpeg's prelude tells (codec, resolution, rate, sample rate, layout, nominal bitrate) is filled
    in. FFmpeg's ``-progress`` counts frames and bytes for the whole run only, so the per-stream counters
    (``frame``, ``packet``, ``pps``, ``size_kb``) stay 0: datarhei needs its patched FFmpeg for those.
    ``avstream`` (datarhei's playout module) is left out, there being none here.
    """
    io_id = config_ios[io.index].id if io.index < len(config_ios) else ""
    return [
        {
            "id": io_id,
            "address": io.address,
            "index": io.index,
            "format": io.format,
            **stream_json(stream),
            "frame": 0,
            "keyframe": 0,
            "packet": 0,
            "pps": 0.0,
            "q": 0.0,
            "size_kb": 0,
            "bitrate_kbit": stream.bitrate_kbit or 0.0,
            "extradata_size_bytes": 0,
        }
        for stream in io.streams
    ]


def probe_json(inputs: list[IOInfo]) -> list[dict[str, Any]]:
    """datarhei's ``api.ProbeIO`` for every stream of every probed input."""
    return [
        {
            "url": io.address,
            "format": io.format,
            "index": io.index,
            "language": stream.language or "und",
            **stream_json(stream),
            "bitrate_kbps": stream.bitrate_kbit or 0.0,
            "duration_sec": 0.0,
        }
        for io in inputs
        for stream in io.streams
    ]


def progress_json(process: ManagedProcess, view: ProcessView) -> dict[str, Any]:
    """datarhei's ``api.Progress``: the totals of FFmpeg's last ``-progress`` block and the streams."""
    values = dataclasses.asdict(view.progress) if view.progress else {}
    resolved = process.resolved
    return {
        "inputs": [entry for io in view.inputs for entry in progress_io_json(resolved.input, io)],
        "outputs": [entry for io in view.outputs for entry in progress_io_json(resolved.output, io)],
        "frame": values.get("frame", 0),
        "packet": 0,  # FFmpeg's -progress has no packet count
        "fps": values.get("fps", 0.0),
        "q": values.get("q", 0.0),
        "size_kb": values.get("size_bytes", 0) // 1024,
        "time": values.get("time_seconds", 0.0),
        "bitrate_kbit": values.get("bitrate_kbit", 0.0),
        "speed": values.get("speed", 0.0),
        "drop": values.get("drop", 0),
        "dup": values.get("dup", 0),
    }


def reconnect_seconds(process: ManagedProcess, view: ProcessView) -> int:
    """Seconds until the supervisor starts FFmpeg again, -1 when it will not (datarhei's semantics)."""
    if view.order != "start" or view.run_started_at is not None or not process.config.reconnect:
        return -1
    return max(0, int(process.config.reconnect_delay_seconds - (time.time() - view.state_since)))


def state_json(core: Core, process: ManagedProcess) -> dict[str, Any]:
    view = process.view()
    return {
        "order": view.order,
        "exec": view.exec_state,
        "runtime_seconds": int(view.uptime_seconds),
        "reconnect_seconds": reconnect_seconds(process, view),
        "state_since": int(view.state_since),
        "restarts": view.restarts,
        "last_logline": view.last_logline,
        "last_error": view.last_error,
        "progress": progress_json(process, view),
        "cpu_usage": round(view.cpu_percent, 2),
        "memory_bytes": view.memory_bytes,
        "command": view.command,
        "webrtc": {"ready": view.stream_live, "viewers": core.whep.viewer_count(process.id)},
    }


def report_json(process: ManagedProcess) -> dict[str, Any]:
    """datarhei's ``api.ProcessReport``: the current (or last) run's prelude and log, the earlier runs.

    ``created_at`` is when that run started; before the first run, when the process was created.
    """
    view = process.view()
    if view.run_started_at is not None:
        created_at = view.run_started_at
    elif view.history:
        created_at = view.history[-1].created_at
    else:
        created_at = process.created_at
    return {
        "created_at": int(created_at),
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


def updated_config(current: ProcessConfig, body: Any) -> Any:
    """A PUT body applied onto the current config, as datarhei does: fields the body leaves out keep their
    value (objects such as ``limits`` field by field), lists such as ``input`` are replaced whole."""
    if not isinstance(body, dict):
        return body
    merged = current.model_dump(mode="json")
    for key, value in body.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _views() -> tuple[str, ...]:
    raw = request.args.get("filter", "")
    if not raw:
        return VIEWS
    wanted = tuple(view.strip() for view in raw.split(",") if view.strip())
    unknown = [view for view in wanted if view not in VIEWS]
    if unknown:
        raise ApiError(400, f"filter: unknown view {unknown[0]!r}; use {', '.join(VIEWS)}", field="filter")
    return wanted


def process_blueprint(core: Core) -> Blueprint:
    bp = Blueprint("process", __name__)
    registry = core.registry

    def lookup(process_id: str) -> ManagedProcess:
        try:
            return registry.get(process_id)
        except ProcessNotFound as exc:
            raise ApiError(404, str(exc), field="id") from None

    async def parse_config(body: Any) -> ProcessConfig:
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object (a process config)", field="body")
        try:
            return registry.validate(body)
        except ValidationError as exc:
            raise validation_error(exc, "config") from None
        except AddressDenied as exc:
            raise ApiError(400, str(exc), field=exc.field) from None

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
            raise ApiError(400, str(exc), field="id") from None  # datarhei: 400 "Invalid process config"
        return jsonify(process.config.model_dump(mode="json"))

    @bp.get("/api/v3/process/<process_id>")
    async def get_process(process_id: str):  # type: ignore[no-untyped-def]
        return jsonify(process_json(core, lookup(process_id), _views()))

    @bp.put("/api/v3/process/<process_id>")
    async def replace_process(process_id: str):  # type: ignore[no-untyped-def]
        current = lookup(process_id).config
        config = await parse_config(updated_config(current, await read_json()))
        try:
            process = await registry.replace(process_id, config)
        except ProcessExists as exc:
            raise ApiError(400, str(exc), field="id") from None
        except ProcessNotFound as exc:
            raise ApiError(404, str(exc), field="id") from None
        return jsonify(process.config.model_dump(mode="json"))

    @bp.delete("/api/v3/process/<process_id>")
    async def delete_process(process_id: str):  # type: ignore[no-untyped-def]
        lookup(process_id)
        try:
            await registry.delete(process_id)
        except ProcessNotFound as exc:
            raise ApiError(404, str(exc), field="id") from None
        return jsonify("OK")

    @bp.put("/api/v3/process/<process_id>/command")
    async def command(process_id: str):  # type: ignore[no-untyped-def]
        lookup(process_id)
        body = await read_json()
        allowed = get_args(Command)
        if not isinstance(body, dict) or body.get("command") not in allowed:
            raise ApiError(400, f"command: must be one of {', '.join(allowed)}", field="command")
        try:
            await registry.command(process_id, body["command"])
        except StartRefused as exc:
            raise ApiError(400, str(exc), field="command") from None  # datarhei: 400 "Command failed"
        except ProcessNotFound as exc:
            raise ApiError(404, str(exc), field="id") from None
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
        return jsonify(
            {"streams": probe_json(inputs), "log": [], "seconds": round(time.monotonic() - started, 3)}
        )

    @bp.get("/api/v3/metadata/<key>")
    @bp.get("/api/v3/process/<process_id>/metadata/<key>")
    async def get_metadata(key: str, process_id: str | None = None):  # type: ignore[no-untyped-def]
        store = lookup(process_id).metadata if process_id else registry.metadata
        if key not in store:
            raise ApiError(404, f"metadata key {key!r} not found", field="key")
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
            raise ApiError(400, str(exc), field="key") from None
        except ProcessNotFound as exc:
            raise ApiError(404, str(exc), field="id") from None
        return jsonify(value)

    @bp.get("/api/v3/metadata")
    async def all_metadata():  # type: ignore[no-untyped-def]
        return jsonify(registry.metadata)

    return bp
