"""The load test's report: setup and first-frame percentiles, packets and loss per viewer, reconnects,
the server's CPU and memory over time; as a JSON document and as Markdown."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

PERCENTILES = (50, 95, 99)
MARKDOWN_SAMPLE_ROWS = 30  # the JSON has every sample; the table shows about this many


def percentiles(values: Iterable[float], points: Sequence[int] = PERCENTILES) -> dict[str, float] | None:
    """Nearest-rank percentiles (``p50``...) and ``max`` of ``values``; None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    count = len(ordered)
    result = {f"p{point}": ordered[max(0, -(-point * count // 100) - 1)] for point in points}
    result["max"] = ordered[-1]
    return {key: round(value, 4) for key, value in result.items()}


def loss_percent(received: int, expected: int) -> float:
    return 0.0 if expected <= 0 else round(100.0 * max(expected - received, 0) / expected, 4)


def viewer_figures(counters: dict[int, list[int]]) -> dict[str, Any]:
    """Packets and loss per viewer from ``{viewer: [video rx, expected, audio rx, expected, ...]}``."""
    rows = list(counters.values())
    video = [row[0] for row in rows]
    audio = [row[2] for row in rows]
    received = sum(row[0] + row[2] for row in rows)
    expected = sum(row[1] + row[3] for row in rows)
    per_viewer_loss = [loss_percent(row[0] + row[2], row[1] + row[3]) for row in rows]
    return {
        "viewers": len(rows),
        "video_packets_per_viewer": _spread(video),
        "audio_packets_per_viewer": _spread(audio),
        "packets_received": received,
        "packets_expected": expected,
        "loss_percent": loss_percent(received, expected),
        "loss_percent_per_viewer": percentiles(per_viewer_loss),
        "viewers_over_0_1_percent_loss": sum(loss > 0.1 for loss in per_viewer_loss),
    }


def _spread(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": round(sum(values) / len(values), 1), "min": min(values), "max": max(values)}


def session_figures(setups: list[dict[str, Any]], ends: list[dict[str, Any]]) -> dict[str, Any]:
    """Setup times, time to first frame, failures and server-ended sessions, from the session reports."""
    succeeded = [s for s in setups if s["connected_seconds"] is not None]
    errors = Counter(_error_kind(s["error"]) for s in setups if s["connected_seconds"] is None)
    first_frames = [
        e["time_to_first_frame_seconds"] for e in ends if e["time_to_first_frame_seconds"] is not None
    ]
    return {
        "attempts": len(setups),
        "connected": len(succeeded),
        "failed": sum(errors.values()),
        "failures": dict(errors.most_common()),
        "signalling_seconds": percentiles(s["signalling_seconds"] for s in succeeded),
        "connected_seconds": percentiles(s["connected_seconds"] for s in succeeded),
        "time_to_first_frame_seconds": percentiles(first_frames),
        "sessions_without_first_frame": sum(
            1 for e in ends if e["connected_seconds"] is not None and e["time_to_first_frame_seconds"] is None
        ),
        "keyframes_decoded": sum(1 for e in ends if e["keyframe_decoded"]),
        "keyframes_not_decodable": sum(1 for e in ends if e["keyframe_decoded"] is False),
        "sessions_ended_by_server": sum(1 for e in ends if e["ended"] == "server"),
    }


def _error_kind(error: str | None) -> str:
    """An error message without its variable tail, so equal failures count together ("HTTP 503")."""
    message = (error or "unknown").removeprefix("SignallingError: ")
    return message.split(":")[0] if message.startswith("HTTP") else message[:80]


def _fmt(value: Any, scale: float = 1.0, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value * scale:.{digits}f}"


def _percentile_row(name: str, figures: dict[str, float] | None, scale: float = 1000.0) -> str:
    figures = figures or {}
    return (
        f"| {name} | " + " | ".join(_fmt(figures.get(k), scale) for k in ("p50", "p95", "p99", "max")) + " |"
    )


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (the JSON document has every figure; this shows the ones people read)."""
    run, sessions, viewers = report["run"], report["sessions"], report["viewers"]
    video = (viewers["video_packets_per_viewer"] or {}).get("mean")
    audio = (viewers["audio_packets_per_viewer"] or {}).get("mean")
    loss = viewers["loss_percent_per_viewer"] or {}
    lines = [
        f"# Load test: {run['peers']} viewers of {run['url']}",
        "",
        f"{run['started_at']} · {run['duration_seconds']} s after a {run['ramp_seconds']} s ramp · "
        f"{run['workers']} worker processes · {run['machine']}",
        "",
        "| setup | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        _percentile_row(run["signalling_label"], sessions["signalling_seconds"]),
        _percentile_row("ICE + DTLS connected", sessions["connected_seconds"]),
        _percentile_row("time to first frame (complete keyframe)", sessions["time_to_first_frame_seconds"]),
        "",
        f"- sessions: {sessions['attempts']} attempts, {sessions['connected']} connected, "
        f"{sessions['failed']} failed {sessions['failures'] or ''}; "
        f"{sessions['sessions_ended_by_server']} ended by the server; {report['reconnects']} reconnects",
        f"- packets per viewer (video / audio, mean): {_fmt(video)} / {_fmt(audio)}; "
        f"received {viewers['packets_received']} of {viewers['packets_expected']}",
        f"- loss: {viewers['loss_percent']} % overall; per viewer p50/p99/max "
        + "/".join(_fmt(loss.get(k), 1, 3) for k in ("p50", "p99", "max"))
        + f" %; {viewers['viewers_over_0_1_percent_loss']} viewers over 0.1 %",
    ]
    server = report.get("server")
    if server:
        lines += [
            "",
            f"Server process {server['pid']} ({server['name']}), sampled every second:",
            "",
            "| t s | server CPU % of a core | server RSS MiB | children CPU % | children RSS MiB |",
            "|---|---|---|---|---|",
        ]
        samples = server["samples"]
        lines += [
            f"| {s['t']:.0f} | {s['cpu_percent']:.0f} | {s['rss_bytes'] / 2**20:.0f} | "
            f"{s['children_cpu_percent']:.0f} | {s['children_rss_bytes'] / 2**20:.0f} |"
            for s in samples[:: max(1, len(samples) // MARKDOWN_SAMPLE_ROWS)]
        ]
    else:
        lines += ["", "Server CPU and memory: not sampled (the server is not a process on this machine)."]
    return "\n".join(lines) + "\n"
