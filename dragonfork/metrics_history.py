"""The recent history of the server's own metrics, for datarhei's ``/api/v3/metrics`` and the UI's charts.

A Trio task in the root nursery (:meth:`MetricsHistory.run`) samples every gauge and counter of
:data:`dragonfork.metrics.REGISTRY`, and datarhei's system metrics (:class:`SystemMetrics`: ``uptime_uptime``,
``cpu_*``, ``mem_*``, ``disk_*``, which its clients show as the server's resources), each
``metrics.interval_sec`` seconds and keeps ``metrics.range_sec``
seconds of points per series (a series is a metric name with one set of label values, as Prometheus counts
them). Memory is bounded twice: points per series by the range, series by :data:`MAX_SERIES` (a series that
has not been seen for a whole range, e.g. a deleted process's, is forgotten).

Queries follow datarhei Core: a metric is selected by its name and label patterns, each a regular
expression that must be found in the label's value (RE2 syntax and linear-time matching, as in Go, so a
pattern sent by a client cannot stall the server); ``timerange_sec`` 0 asks for the current values only.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import re2  # type: ignore[import-not-found]
import trio
from prometheus_client import CollectorRegistry

MAX_SERIES = 2000  # with the default 600 s / 2 s: at most ~41 MB (69 B per point measured)
MAX_PATTERN_LENGTH = 256
_KINDS = frozenset({"gauge", "counter"})
_LABEL_NAME = re2.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class BadPattern(ValueError):
    """A label pattern that is not a regular expression; ``field`` names it in the query."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Description:
    name: str
    description: str
    labels: tuple[str, ...]


@dataclass(slots=True)
class Series:
    name: str
    labels: dict[str, str]
    points: collections.deque[tuple[float, float]]  # (unix seconds, value), oldest first


@dataclass(frozen=True, slots=True)
class Selector:
    """One ``{name, labels}`` of a query, with its label patterns compiled."""

    name: str
    patterns: tuple[tuple[str, object], ...]

    def matches(self, series: Series) -> bool:
        return series.name == self.name and all(
            key in series.labels and pattern.search(series.labels[key])  # type: ignore[attr-defined]
            for key, pattern in self.patterns
        )


def selector(name: str, labels: dict[str, str], where: str) -> Selector:
    """A compiled selector; :class:`BadPattern` names ``<where>.labels.<key>`` when a pattern is invalid."""
    compiled = []
    for key, pattern in labels.items():
        if not _LABEL_NAME.fullmatch(key):
            raise BadPattern(f"{where}.labels", f"{key[:40]!r} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        field_path = f"{where}.labels.{key}"
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise BadPattern(field_path, f"longer than {MAX_PATTERN_LENGTH} characters")
        try:
            compiled.append((key, re2.compile(pattern)))
        except re2.error as exc:
            reason = exc.args[0] if exc.args else "invalid"
            text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
            raise BadPattern(field_path, f"not a regular expression: {text}") from None
    return Selector(name, tuple(compiled))


Reading = tuple[str, dict[str, str], float]


@dataclass
class SystemMetrics:
    """datarhei Core's system metrics under its names, read from the machine (psutil) when sampled."""

    started_at: float
    disk_path: Path

    DESCRIPTIONS = (
        Description("uptime_uptime", "Current uptime in seconds", ()),
        Description("cpu_ncpu", "Number of logical CPUs in the system", ()),
        Description("cpu_system", "Percentage of CPU used for the system", ()),
        Description("cpu_user", "Percentage of CPU used for the user", ()),
        Description("cpu_idle", "Percentage of idle CPU", ()),
        Description("cpu_other", "Percentage of CPU used for other subsystems", ()),
        Description("mem_total", "Total available memory in bytes", ()),
        Description("mem_free", "Free memory in bytes", ()),
        Description("disk_total", "Total size of the disk in bytes", ("path",)),
        Description("disk_usage", "Number of used bytes on the disk", ("path",)),
    )

    def read(self) -> Iterable[Reading]:
        cpu = psutil.cpu_times_percent(interval=None)  # since the previous call: the last interval
        memory = psutil.virtual_memory()
        yield "uptime_uptime", {}, time.time() - self.started_at
        yield "cpu_ncpu", {}, float(os.cpu_count() or 1)
        yield "cpu_system", {}, cpu.system
        yield "cpu_user", {}, cpu.user
        yield "cpu_idle", {}, cpu.idle
        yield "cpu_other", {}, max(0.0, 100.0 - cpu.system - cpu.user - cpu.idle)
        yield "mem_total", {}, float(memory.total)
        yield "mem_free", {}, float(memory.available)
        try:
            disk = psutil.disk_usage(str(self.disk_path))
        except OSError:  # the directory is gone: no disk figures this time
            return
        yield "disk_total", {"path": str(self.disk_path)}, float(disk.total)
        yield "disk_usage", {"path": str(self.disk_path)}, float(disk.used)


@dataclass
class MetricsHistory:
    registry: CollectorRegistry
    range_seconds: int
    interval_seconds: int
    system: SystemMetrics | None = None
    series: dict[tuple[str, tuple[tuple[str, str], ...]], Series] = field(default_factory=dict)
    refused_series: int = 0  # new series not kept because MAX_SERIES were already kept

    @property
    def points_per_series(self) -> int:
        return max(1, self.range_seconds // max(1, self.interval_seconds))

    def describe(self) -> list[Description]:
        """Every gauge and counter the history keeps, sorted by name, as datarhei lists them."""
        found = []
        for family in self.registry.collect():
            if family.type in _KINDS:
                labels = sorted({key for sample in family.samples for key in sample.labels})
                name = family.name + ("_total" if family.type == "counter" else "")
                found.append(Description(name, family.documentation, tuple(labels)))
        found.extend(self.system.DESCRIPTIONS if self.system else ())
        return sorted(found, key=lambda description: description.name)

    def current(self) -> list[Series]:
        """The value of every series now, one point each (a query with ``timerange_sec`` 0)."""
        now = time.time()
        return [
            Series(name, labels, collections.deque([(now, value)]))
            for name, labels, value in self._read_all()
        ]

    def _read_all(self) -> Iterable[Reading]:
        if self.system is not None:
            yield from self.system.read()
        for family in self.registry.collect():
            if family.type not in _KINDS:
                continue
            for sample in family.samples:
                if sample.name.endswith("_created"):  # prometheus_client's creation timestamps
                    continue
                yield sample.name, dict(sample.labels), float(sample.value)

    def sample(self, now: float | None = None) -> None:
        """Append the current value of every series; forget series unseen for a whole range."""
        now = time.time() if now is None else now
        for name, labels, value in self._read_all():
            key = (name, tuple(sorted(labels.items())))
            series = self.series.get(key)
            if series is None:
                if len(self.series) >= MAX_SERIES:
                    self.refused_series += 1
                    continue
                series = self.series[key] = Series(
                    name, labels, collections.deque(maxlen=self.points_per_series)
                )
            series.points.append((now, value))
        horizon = now - self.range_seconds
        for key in [key for key, series in self.series.items() if series.points[-1][0] < horizon]:
            del self.series[key]

    def query(self, selectors: list[Selector], timerange: int, interval: int) -> list[Series]:
        """The series each selector matches: current values when ``timerange`` is 0, otherwise the points
        of the last ``timerange`` seconds, at most one per ``interval`` seconds (the latest of each)."""
        candidates = self.current() if timerange <= 0 else list(self.series.values())
        chosen: dict[int, Series] = {}
        for wanted in selectors:
            for series in candidates:
                if id(series) not in chosen and wanted.matches(series):
                    chosen[id(series)] = series
        if timerange <= 0:
            return list(chosen.values())
        since = time.time() - timerange
        step = max(interval, self.interval_seconds)
        return [
            Series(series.name, series.labels, collections.deque(_thin(series.points, since, step)))
            for series in chosen.values()
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample every ``interval_seconds`` until cancelled (a task of the root nursery)."""
        task_status.started()
        while True:
            self.sample()
            await trio.sleep(self.interval_seconds)


def _thin(points: Iterable[tuple[float, float]], since: float, step: float) -> list[tuple[float, float]]:
    """Points at or after ``since``, keeping the latest point of each ``step``-second bucket."""
    kept: dict[int, tuple[float, float]] = {}
    for at, value in points:
        if at >= since:
            kept[int(at // step)] = (at, value)
    return list(kept.values())
