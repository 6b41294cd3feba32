"""The in-process metrics history behind datarhei's ``/api/v3/metrics``: sampling, bounds, queries."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dragonfork import metrics_history
from dragonfork.metrics_history import BadPattern, MetricsHistory, SystemMetrics, selector


def registry_with_metrics() -> tuple[CollectorRegistry, Gauge, Counter]:
    registry = CollectorRegistry()
    fps = Gauge("test_process_fps", "Frames per second", ["process"], registry=registry)
    requests = Counter("test_requests", "Requests", ["route"], registry=registry)
    Histogram("test_seconds", "Durations", registry=registry).observe(0.1)
    return registry, fps, requests


def test_describe_lists_gauges_and_counters_by_sample_name() -> None:
    registry, fps, requests = registry_with_metrics()
    fps.labels("cam").set(25)
    requests.labels("/api").inc()
    history = MetricsHistory(registry, range_seconds=60, interval_seconds=2)
    described = {entry.name: entry for entry in history.describe()}
    assert set(described) == {"test_process_fps", "test_requests_total"}  # histograms are not kept
    assert described["test_process_fps"].labels == ("process",)
    assert described["test_process_fps"].description == "Frames per second"


def test_points_per_series_are_bounded_by_the_range() -> None:
    registry, fps, _ = registry_with_metrics()
    fps.labels("cam").set(1)
    history = MetricsHistory(registry, range_seconds=10, interval_seconds=2)
    start = time.time() - 100
    for step in range(50):
        fps.labels("cam").set(step)
        history.sample(now=start + 2 * step)
    (series,) = [s for s in history.series.values() if s.name == "test_process_fps"]
    assert len(series.points) == 5 and series.points[-1] == (start + 98, 49.0)


def test_series_unseen_for_a_whole_range_are_forgotten() -> None:
    registry, fps, _ = registry_with_metrics()
    fps.labels("gone").set(1)
    history = MetricsHistory(registry, range_seconds=10, interval_seconds=2)
    history.sample(now=1000)
    fps.remove("gone")
    fps.labels("stays").set(2)
    history.sample(now=1005)
    assert {s.labels.get("process") for s in history.series.values() if s.name == "test_process_fps"} == {
        "gone",
        "stays",
    }
    history.sample(now=1011)
    assert {s.labels.get("process") for s in history.series.values() if s.name == "test_process_fps"} == {
        "stays"
    }


def test_the_number_of_series_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_history, "MAX_SERIES", 3)
    registry, fps, _ = registry_with_metrics()
    for number in range(5):
        fps.labels(f"p{number}").set(number)
    history = MetricsHistory(registry, range_seconds=10, interval_seconds=2)
    history.sample()
    assert len(history.series) == 3 and history.refused_series > 0


def test_query_selects_by_name_and_label_patterns_and_thins_by_interval() -> None:
    registry, fps, _ = registry_with_metrics()
    history = MetricsHistory(registry, range_seconds=60, interval_seconds=1)
    now = time.time()
    for step in range(20):
        fps.labels("cam-1").set(step)
        fps.labels("cam-2").set(100 + step)
        fps.labels("lobby").set(200 + step)
        history.sample(now=now - 19 + step)
    found = history.query([selector("test_process_fps", {"process": "^cam-"}, "metrics.0")], 10, 5)
    assert sorted(s.labels["process"] for s in found) == ["cam-1", "cam-2"]
    for series in found:
        times = [at for at, _ in series.points]
        assert all(at >= now - 10 for at in times)
        assert len(times) <= 3 and len({int(at // 5) for at in times}) == len(times)  # one per 5 s bucket
        assert series.points[-1][1] in (19.0, 119.0)  # the latest point of the last bucket


def test_a_timerange_of_zero_answers_the_current_values() -> None:
    registry, fps, _ = registry_with_metrics()
    fps.labels("cam").set(7)
    history = MetricsHistory(registry, range_seconds=60, interval_seconds=1)  # never sampled
    (series,) = history.query([selector("test_process_fps", {}, "metrics.0")], 0, 0)
    assert [value for _, value in series.points] == [7.0]


def test_bad_label_patterns_name_the_field() -> None:
    with pytest.raises(BadPattern) as raised:
        selector("x", {"process": "("}, "metrics.3")
    assert raised.value.field == "metrics.3.labels.process" and "regular expression" in str(raised.value)
    with pytest.raises(BadPattern, match="not a label name") as raised:
        selector("x", {"#?": "cam"}, "metrics.1")
    assert raised.value.field == "metrics.1.labels"
    with pytest.raises(BadPattern, match="longer than"):
        selector("x", {"process": "a" * 1000}, "metrics.0")


def test_label_patterns_match_in_linear_time() -> None:
    """A pattern that backtracks exponentially in Python's re module is linear in RE2 (as in Go)."""
    registry, fps, _ = registry_with_metrics()
    fps.labels("a" * 64 + "!").set(1)
    history = MetricsHistory(registry, range_seconds=60, interval_seconds=1)
    started = time.perf_counter()
    assert history.query([selector("test_process_fps", {"process": "^(a+)+$"}, "metrics.0")], 0, 0) == []
    assert time.perf_counter() - started < 5  # Python's re would take 2**64 steps


async def test_run_samples_every_interval(autojump_clock: trio.abc.Clock) -> None:
    registry, fps, _ = registry_with_metrics()
    fps.labels("cam").set(1)
    history = MetricsHistory(registry, range_seconds=60, interval_seconds=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(history.run)
        await trio.sleep(9)
        nursery.cancel_scope.cancel()
    (series,) = [s for s in history.series.values() if s.name == "test_process_fps"]
    assert len(series.points) == 5  # at 0, 2, 4, 6 and 8 s


def test_datarhei_system_metrics_are_the_machines(tmp_path: Path) -> None:
    registry, _, _ = registry_with_metrics()
    system = SystemMetrics(started_at=time.time() - 5, disk_path=tmp_path)
    history = MetricsHistory(registry, range_seconds=60, interval_seconds=1, system=system)
    described = {entry.name for entry in history.describe()}
    assert {"uptime_uptime", "cpu_ncpu", "cpu_idle", "mem_total", "mem_free", "disk_usage"} <= described
    now = {series.name: series for series in history.current()}
    value = {name: series.points[-1][1] for name, series in now.items()}
    assert value["cpu_ncpu"] == os.cpu_count()
    assert value["mem_total"] == psutil.virtual_memory().total and 0 < value["mem_free"] <= value["mem_total"]
    assert 5 <= value["uptime_uptime"] < 60
    assert 0 <= value["cpu_idle"] <= 100
    assert now["disk_total"].labels == {"path": str(tmp_path)} and value["disk_usage"] <= value["disk_total"]
