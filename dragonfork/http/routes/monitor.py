"""``/api/v3/log`` (the server's recent log events) and ``/api/v3/metrics`` (describe, query), as datarhei.

A metrics query answers each value as datarhei's server writes it, ``[unix seconds, value]`` (its
``MetricsResponseValue.MarshalJSON``; the swagger's object form is not what goes over the wire).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Blueprint, jsonify, request

from dragonfork import logs
from dragonfork.core import Core
from dragonfork.http.errors import ApiError, read_json, validation_error
from dragonfork.metrics_history import BadPattern, Series, selector

MAX_QUERY_METRICS = 1000


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetricSelector(_Query):
    name: str = Field(min_length=1, max_length=200)
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)


class MetricsQuery(_Query):
    """datarhei's ``api.MetricsQuery``."""

    timerange_sec: int = Field(0, ge=0, le=86400)
    interval_sec: int = Field(0, ge=0, le=86400)
    metrics: list[MetricSelector] = Field(default_factory=list, max_length=MAX_QUERY_METRICS)


def _value(value: float) -> float | int:
    """Integers without decimals, other values to three (as datarhei writes them)."""
    return int(value) if value.is_integer() else round(value, 3)


def series_json(series: Series) -> dict[str, Any]:
    return {
        "name": series.name,
        "labels": series.labels,
        "values": [[int(at), _value(value)] for at, value in series.points],
    }


def monitor_blueprint(core: Core) -> Blueprint:
    bp = Blueprint("monitor", __name__)
    history = core.metrics_history

    @bp.get("/api/v3/log")
    async def server_log():  # type: ignore[no-untyped-def]
        form = request.args.get("format", "console")
        if form not in ("console", "raw"):
            raise ApiError(400, f"format: must be console or raw, got {form!r}", field="format")
        return jsonify(logs.RECENT.raw() if form == "raw" else logs.RECENT.console())

    def require_metrics() -> None:
        if not core.settings.metrics.enable:
            raise ApiError(404, "metrics are disabled (metrics.enable is false)", field="metrics.enable")

    @bp.get("/api/v3/metrics")
    async def describe_metrics():  # type: ignore[no-untyped-def]
        require_metrics()
        return jsonify(
            [
                {"name": found.name, "description": found.description, "labels": list(found.labels)}
                for found in history.describe()
            ]
        )

    @bp.post("/api/v3/metrics")
    async def query_metrics():  # type: ignore[no-untyped-def]
        require_metrics()
        try:
            query = MetricsQuery.model_validate(await read_json())
        except ValidationError as exc:
            raise validation_error(exc, "metrics query") from None
        try:
            selectors = [
                selector(wanted.name, wanted.labels, f"metrics.{index}")
                for index, wanted in enumerate(query.metrics)
            ]
        except BadPattern as exc:
            raise ApiError(400, f"invalid metrics query: {exc}", details=[str(exc)]) from None
        found = history.query(selectors, query.timerange_sec, query.interval_sec)
        return jsonify(
            {
                "timerange_sec": history.range_seconds,
                "interval_sec": history.interval_seconds,
                "metrics": [series_json(series) for series in found],
            }
        )

    return bp
