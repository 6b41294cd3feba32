"""The bench report over repeated fan-out sweeps: medians and min–max of each derived figure, ratios of
medians, and a results.json from before repeats (one ``fan_out``) still rendering as one repeat.

The results dicts are synthetic but shaped as ``dragonfork bench`` writes them; each repeat's server CPU
lies exactly on a line (base + slope × viewers), so its least-squares CPU per viewer is that slope.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dragonfork.bench import report
from dragonfork.bench.cli import METHOD

STEPS = (1, 10, 25, 50, 100)
SIGNALLING = "signalling (WHEP POST → 201 / Janus create → start), joins during the fan-out sweep, p95, ms"
WIRE = "WHEP POST → 201 on the wire (kernel timestamps on lo), joins during the fan-out sweep, p95, ms"


def sweep(
    base: float,
    slope: float,
    *,
    workers: int = 1,
    hop_p99_at_100: float = 7.0,
    signalling_p95: float = 0.03,
    wire_p95: float | None = None,
    packets_per_cpu_second_at_100: int = 70_000,
    profiled: bool = False,
) -> dict[str, Any]:
    """One fan-out sweep whose server CPU is ``base`` + ``slope`` × viewers at every step, no loss."""

    def window(viewers: int) -> dict[str, Any]:
        return {
            "viewers": viewers,
            "connected": viewers,
            "server_cpu_percent": base + slope * viewers,
            "ffmpeg_cpu_percent": 1.5,
            "packets_per_second": 260 * viewers,
            "packets_per_cpu_second": packets_per_cpu_second_at_100 if viewers == 100 else 50_000,
            "loss_percent": 0.0,
            "loss_percent_per_viewer": {"max": 0.0},
            "server_rss_mib": 100.0 + viewers,
            "rss_per_viewer_kib": 1024.0,
            "client_cpu_percent": 20.0,
            "client_limited": False,
            "load_average": 1.0,
        }

    steps = [window(viewers) for viewers in STEPS]
    for step in steps:
        if step["viewers"] in (1, 10, 100):
            p99 = hop_p99_at_100 if step["viewers"] == 100 else 2.0
            hop = {"p50": 0.6, "p95": 1.2, "p99": p99}
            step["hop_latency"] = {
                "last_packet_ms": hop, "first_packet_ms": hop, "frames": 240, "viewer_streams": 2,
                "streams_not_aligned": 0,
            }  # fmt: skip
    profile = {
        "samples": 1000, "cpu_seconds": 3.0, "packets_forwarded": 300_000, "us_per_packet": 10.0,
        "buckets": [{"name": "sendto", "share_percent": 60.0, "us_per_packet": 6.0}],
        "paths": [{"name": "fast path", "share_percent": 90.0, "us_per_packet": 9.0}], "viewers": 100,
    }  # fmt: skip
    idle = {**window(0), "server_cpu_percent": base}
    figures = {
        "idle": idle,
        "steps": steps,
        "stopped": None,
        "profile": profile if profiled else None,
        "setup": {"signalling_seconds": {"p50": 0.016, "p95": signalling_p95}},
        "workers": workers,
    }
    if wire_p95 is not None:
        figures["signalling_on_the_wire"] = {
            "answer_ms": {"p50": 9.0, "p95": wire_p95},
            "statuses": {"201": 100},
        }
    return figures


def one_join_at_a_time(ttff_p95: float) -> dict[str, Any]:
    times = {"p50": ttff_p95 / 2, "p95": ttff_p95}
    return {
        "attempts": 3, "time_to_first_frame_seconds": times, "signalling_seconds": times,
        "connected_seconds": times, "keyframes_decoded": 3, "failed": 0, "time_to_first_frame_values": [0.05],
    }  # fmt: skip


RUN = {
    "date": "2026-12-02 15:00 UTC", "duration_minutes": 25.0, "machine": "2 × CPU", "load_before": 0.5,
    "load_after": 1.0, "versions": {"dragonfork": "0.1.0"}, "stream": "a clip", "repeats": 3,
}  # fmt: skip


@pytest.fixture
def three_repeats() -> dict[str, Any]:
    """dragonfork, its 2 workers and Janus, 3 sweeps each: the spreads quoted in the bench brief."""
    return {
        "dragonfork": {
            "fan_out_repeats": [
                sweep(5.0, 0.2, hop_p99_at_100=7.6, signalling_p95=0.0427, wire_p95=21.0, profiled=True),
                sweep(
                    5.0,
                    0.25,
                    hop_p99_at_100=9.1,
                    signalling_p95=0.0186,
                    wire_p95=14.0,
                    packets_per_cpu_second_at_100=65_000,
                ),
                sweep(
                    5.0,
                    0.3,
                    hop_p99_at_100=7.3,
                    signalling_p95=0.0300,
                    wire_p95=28.5,
                    packets_per_cpu_second_at_100=80_000,
                ),
            ],
            "first_frames_cache_on": one_join_at_a_time(0.063),
            "first_frames_cache_off": one_join_at_a_time(0.090),
        },
        "dragonfork_workers": {
            "fan_out_repeats": [sweep(8.0, slope, workers=2) for slope in (0.26, 0.28, 0.30)],
        },
        "janus": {
            "fan_out_repeats": [sweep(2.0, slope) for slope in (0.4, 0.5, 0.45)],
            "first_frames": one_join_at_a_time(1.3),
        },
        "run": dict(RUN),
    }


def headline_row(results: dict[str, Any], figure: str) -> dict[str, Any]:
    return next(row for row in results["headline"] if row["figure"] == figure)


def test_over_repeats_takes_the_median_of_the_repeats_that_have_the_figure() -> None:
    repeats = [{"a": 3.0}, {"a": 1.0}, {"a": None}, {}, None, {"a": True}, {"a": 2.0}, {"a": 10.0}]

    spread = report.over_repeats(repeats, report.figure_at("a"))

    assert spread == {"median": 2.5, "min": 1.0, "max": 10.0, "repeats": 4}
    assert report.over_repeats(repeats, report.figure_at("missing")) is None


def test_a_count_is_shown_whole_even_when_its_median_falls_between_two_repeats() -> None:
    spread = report.over_repeats([{"viewers": 379}, {"viewers": 440}], report.figure_at("viewers"))

    assert spread is not None and spread["median"] == 409.5
    assert report._spread_cell(spread, 2) == "410 (379–440)"
    assert report._spread_cell(
        report.over_repeats([{"cpu": 0.2}, {"cpu": 0.3}], report.figure_at("cpu")), 3
    ) == ("0.250 (0.200–0.300)")


def test_derived_figures_are_medians_over_repeats_with_their_range(three_repeats: dict[str, Any]) -> None:
    report.complete(three_repeats)

    ours = three_repeats["dragonfork"]
    assert [d["cpu_percent_per_viewer"] for d in ours["derived_repeats"]] == [0.2, 0.25, 0.3]
    # per repeat: 95 / 0.2 = 475, 95 / 0.25 = 380, 95 / 0.3 = 317 viewers per core
    assert ours["derived"]["cpu_percent_per_viewer"] == 0.25
    assert ours["derived"]["viewers_per_core_extrapolated"] == 380
    assert three_repeats["janus"]["derived"]["cpu_percent_per_viewer"] == 0.45

    cpu = headline_row(three_repeats, "server CPU per viewer, % of a core")
    assert (cpu["dragonfork"], cpu["janus"], cpu["ratio"]) == (0.25, 0.45, 0.56)
    assert cpu["dragonfork_spread"] == {"median": 0.25, "min": 0.2, "max": 0.3, "repeats": 3}
    hop = headline_row(three_repeats, "server hop at 100 viewers, p99, ms")
    assert hop["dragonfork_spread"] == {"median": 7.6, "min": 7.3, "max": 9.1, "repeats": 3}
    signalling = headline_row(three_repeats, SIGNALLING)
    assert signalling["dragonfork"] == 30.0
    assert (signalling["dragonfork_spread"]["min"], signalling["dragonfork_spread"]["max"]) == (
        pytest.approx(18.6),
        pytest.approx(42.7),
    )
    # the server's answer on the wire: dragonfork's alone (Janus's joins are not one HTTP request)
    wire = headline_row(three_repeats, WIRE)
    assert wire["dragonfork_spread"] == {"median": 21.0, "min": 14.0, "max": 28.5, "repeats": 3}
    assert (wire["janus"], wire["ratio"]) == (None, None)


def test_ratios_are_of_the_medians_not_medians_of_ratios(three_repeats: dict[str, Any]) -> None:
    report.complete(three_repeats)

    # viewers per core, dragonfork 475 / 380 / 317 against Janus 245 / 196 / 218: the per-repeat ratios
    # 1.94 / 1.94 / 1.45 have the median 1.94, the medians 380 and 218 the ratio 1.74
    capacity = headline_row(
        three_repeats, "viewers per core at < 0.1 % loss (extrapolated; higher is better)"
    )
    assert (capacity["dragonfork"], capacity["janus"], capacity["ratio"]) == (380, 218, 1.74)
    # 2 workers on 2 cores: 192 / 0.26, 0.28, 0.30 = 738 / 686 / 640 viewers, median 686; 1 worker 380
    workers = "\n".join(report._workers_lines(three_repeats))
    assert "| 380 (317–475) | 686 (640–738) | 1.81 |" in workers
    assert "Capacity ratio 2 workers ÷ 1 (median ÷ median over 3 sweeps each): **1.81**" in workers
    assert f"target ≥ {report.WORKERS_TARGET}: met" in workers


def test_markdown_quotes_medians_with_their_ranges(three_repeats: dict[str, Any]) -> None:
    report.complete(three_repeats)

    text = report.markdown(three_repeats, METHOD)

    assert "the median over 3 sweeps per server, run interleaved" in text
    assert "| server CPU per viewer, % of a core | 0.25 (0.20–0.30) | 0.45 (0.40–0.50) | 0.56 |" in text
    assert "| server hop at 100 viewers, p99, ms | 7.60 (7.30–9.10) | 7.00 | 1.09 |" in text
    assert f"| {SIGNALLING} | 30.00 (18.60–42.70) |" in text
    assert "**0.250 (0.200–0.300) % of a core**" in text
    assert "about **380 (317–475) viewers per core**" in text
    # the fan-out table: per step, the median with its range (packets per server CPU-s at 100 viewers)
    assert "| 70000 (65000–80000) |" in text
    # the latency table: dragonfork's hop at 100 viewers (26 % of its 380 viewers), p50 / p95 / p99
    assert "| dragonfork | 100 | 26 % | 0.60 / 1.20 / 7.60 (7.30–9.10) |" in text
    assert "| dragonfork | 1 | 0.3 % |" in text
    assert "## Where dragonfork's per-packet time goes (100 viewers)" in text  # the first sweep's profile


def test_a_results_json_from_before_repeats_renders_as_one_repeat(three_repeats: dict[str, Any]) -> None:
    old = {
        name: {
            **{k: v for k, v in server.items() if k != "fan_out_repeats"},
            "fan_out": server["fan_out_repeats"][0],
        }
        for name, server in three_repeats.items()
        if name != "run"
    }
    old["run"] = {k: v for k, v in RUN.items() if k != "repeats"}
    single = copy.deepcopy(old)

    report.complete(single)
    text = report.markdown(single, METHOD)

    assert single["dragonfork"]["derived"]["cpu_percent_per_viewer"] == 0.2
    assert headline_row(single, "server CPU per viewer, % of a core")["ratio"] == 0.5  # 0.2 / 0.4
    assert "One fan-out sweep per server in this run (no repeats)." in text
    assert "| server CPU per viewer, % of a core | 0.20 | 0.40 | 0.50 |" in text
    assert "**0.200 % of a core** (+5.0 % base) → about **475 viewers per core**" in text
    assert "Capacity ratio 2 workers ÷ 1 (one sweep each): **1.55**" in text  # 738 / 475
    assert "## Where dragonfork's per-packet time goes (100 viewers)" in text
    assert "| 100 | 25.0 | 1.5 | 26000 | 70000 | 0.000 |" in text  # the sweep's own figures, no ranges


def test_plotted_steps_are_medians_with_their_distances_to_min_and_max(three_repeats: dict[str, Any]) -> None:
    repeats = three_repeats["dragonfork"]["fan_out_repeats"]

    viewers, medians, errors = report._step_medians(repeats, "server_cpu_percent", with_idle=True)

    # at 100 viewers the three sweeps drew 25, 30 and 35 % of a core
    assert viewers == [0, *STEPS]
    assert medians[-1] == pytest.approx(30.0)
    assert (errors[0][-1], errors[1][-1]) == (pytest.approx(5.0), pytest.approx(5.0))
    assert medians[0] == 5.0 and errors[0][0] == errors[1][0] == 0.0  # the idle windows agree
