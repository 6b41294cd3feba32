"""Derived figures (CPU per viewer, capacity, dragonfork/Janus ratios), the Markdown report and the plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOSS_LIMIT_PERCENT = 0.1
SERVERS = {
    "dragonfork": "dragonfork",
    "dragonfork_workers": "dragonfork, webrtc.workers: 2 (CPU and RSS: the server and its workers summed)",
    "janus": "Janus, 1 event loop",
    "janus_default": "Janus, default config (a thread per viewer)",
}
SHORT = {
    "dragonfork": "dragonfork",
    "dragonfork_workers": "dragonfork, 2 workers",
    "janus": "Janus, 1 loop",
    "janus_default": "Janus, default",
}
COLOURS = {
    "dragonfork": "tab:blue",
    "dragonfork_workers": "tab:green",
    "janus": "tab:orange",
    "janus_default": "tab:red",
}
WORKERS_TARGET = 1.8  # issue 14: viewers at < 0.1 % loss with 2 workers ÷ with 1
FAIR_COMPARISON = (
    "The load generator shares this 2-core machine, so the 2-worker run cannot have two cores to itself: "
    "it runs on both CPUs beside the viewers, and its capacity is the CPU per viewer summed over the server "
    "and its workers, extrapolated to two cores (the 1-worker run: the server alone, pinned to one CPU, "
    "extrapolated to one). The largest step measured is bounded by the clients as much as by the server."
)


def _all_connected(step: dict[str, Any]) -> bool:
    return bool(step.get("connected", step["viewers"]) >= step["viewers"])


def _clean_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Steps that count for capacity: every viewer connected, under the loss limit, and not limited by the
    client CPUs (a step whose joins failed carries fewer viewers than its number says)."""
    return [
        s
        for s in steps
        if _all_connected(s) and s["loss_percent"] < LOSS_LIMIT_PERCENT and not s["client_limited"]
    ]


def cpu_per_viewer(fan_out: dict[str, Any]) -> dict[str, Any] | None:
    """Least-squares line of server CPU (% of a core) against viewers over the idle window and clean steps."""
    points = [(0, fan_out["idle"]["server_cpu_percent"])]
    points += [(s["viewers"], s["server_cpu_percent"]) for s in _clean_steps(fan_out["steps"])]
    if len(points) < 3:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    intercept = mean_y - slope * mean_x
    clean = _clean_steps(fan_out["steps"])
    cores = fan_out.get("workers", 1)  # dragonfork serves viewers on this many cores (its workers)
    return {
        "cpu_percent_per_viewer": round(slope, 3),
        "cpu_percent_base": round(intercept, 1),
        "viewers_per_core_extrapolated": round((100 - intercept / cores) / slope) if slope > 0 else None,
        "serving_cores": cores,
        "viewers_extrapolated": round((100 * cores - intercept) / slope) if slope > 0 else None,
        "largest_step_under_loss_limit": max((s["viewers"] for s in clean), default=None),
        "points": len(points),
    }


def complete(results: dict[str, Any]) -> None:
    """Add what is derived from the measurements: capacity per server, notes, the headline table."""
    notes = []
    for name, label in SERVERS.items():
        fan_out = _get(results, name, "fan_out")
        if not fan_out:
            continue
        results[name]["derived"] = cpu_per_viewer(fan_out)
        limited = [s["viewers"] for s in fan_out["steps"] if s["client_limited"]]
        if limited:
            notes.append(f"{label}: client-limited at {limited} viewers (the viewers' CPUs were > 85 % busy)")
        short = [f"{s.get('connected')}/{s['viewers']}" for s in fan_out["steps"] if not _all_connected(s)]
        if short:
            notes.append(
                f"{label}: not every viewer connected (connected/joined: {', '.join(short)}); "
                "those steps are left out of CPU per viewer"
            )
        if fan_out.get("stopped"):
            notes.append(f"{label}: {fan_out['stopped']}")
        loads = [fan_out["idle"]["load_average"]] + [s["load_average"] for s in fan_out["steps"]]
        notes.append(f"{label}: load average during the sweep {min(loads)}–{max(loads)} (2 CPUs)")
    results["notes"] = notes
    results["headline"] = headline(results)


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return round(ours / theirs, 2)


def _step(fan_out: dict[str, Any] | None, viewers: int) -> dict[str, Any] | None:
    if not fan_out:
        return None
    return next((s for s in fan_out["steps"] if s["viewers"] == viewers), None)


def _get(figures: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(figures, dict):
            return None
        figures = figures.get(key)
    return figures


def headline(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures that compare the two servers, each with the ratio dragonfork / Janus."""
    ours, theirs = results.get("dragonfork", {}), results.get("janus", {})
    rows: list[tuple[str, Any, Any]] = [
        (
            "server CPU per viewer, % of a core",
            _get(ours, "derived", "cpu_percent_per_viewer"),
            _get(theirs, "derived", "cpu_percent_per_viewer"),
        ),
        (
            "server CPU per viewer, % of a core, vs Janus's default config",
            _get(ours, "derived", "cpu_percent_per_viewer"),
            _get(results.get("janus_default"), "derived", "cpu_percent_per_viewer"),
        ),
        (
            "viewers per core at < 0.1 % loss (extrapolated; higher is better)",
            _get(ours, "derived", "viewers_per_core_extrapolated"),
            _get(theirs, "derived", "viewers_per_core_extrapolated"),
        ),
    ]
    for viewers in (10, 100):
        rows.append(
            (
                f"server CPU at {viewers} viewers, % of a core",
                _get(_step(ours.get("fan_out"), viewers), "server_cpu_percent"),
                _get(_step(theirs.get("fan_out"), viewers), "server_cpu_percent"),
            )
        )
    for viewers in (1, 10, 100):
        for point in ("p50", "p95", "p99"):
            rows.append(
                (
                    f"server hop at {viewers} viewers, {point}, ms",
                    _get(_step(ours.get("fan_out"), viewers), "hop_latency", "last_packet_ms", point),
                    _get(_step(theirs.get("fan_out"), viewers), "hop_latency", "last_packet_ms", point),
                )
            )
    for point in ("p50", "p95"):
        janus_ttff = _get(theirs, "first_frames", "time_to_first_frame_seconds", point)
        for label, key in (("cache on", "first_frames_cache_on"), ("cache off", "first_frames_cache_off")):
            ours_ttff = _get(ours, key, "time_to_first_frame_seconds", point)
            rows.append(
                (
                    f"time to first frame, {point}, ms (dragonfork keyframe {label})",
                    None if ours_ttff is None else ours_ttff * 1000,
                    None if janus_ttff is None else janus_ttff * 1000,
                )
            )
    setup_figures = (
        ("signalling (WHEP POST → 201 / Janus create → start)", "signalling_seconds"),
        ("ICE + DTLS connected", "connected_seconds"),
        ("time to first frame", "time_to_first_frame_seconds"),
    )
    for when, ours_key, theirs_key in (
        ("one join at a time", ("first_frames_cache_on",), ("first_frames",)),
        ("joins during the fan-out sweep", ("fan_out", "setup"), ("fan_out", "setup")),
    ):
        for label, key in setup_figures:
            if key == "time_to_first_frame_seconds" and when == "one join at a time":
                continue  # above, with the cache on and off
            for point in ("p50", "p95"):
                a = _get(ours, *ours_key, key, point)
                b = _get(theirs, *theirs_key, key, point)
                rows.append(
                    (
                        f"{label}, {when}, {point}, ms",
                        None if a is None else a * 1000,
                        None if b is None else b * 1000,
                    )
                )
    return [
        {"figure": name, "dragonfork": _round(a), "janus": _round(b), "ratio": _ratio(a, b)}
        for name, a, b in rows
    ]


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _triple(
    figures: dict[str, Any] | None, keys: tuple[str, ...], scale: float = 1.0, digits: int = 1
) -> str:
    figures = figures or {}
    return " / ".join(_cell(None if figures.get(k) is None else figures[k] * scale, digits) for k in keys)


def _fan_out_table(fan_out: dict[str, Any]) -> list[str]:
    idle = fan_out["idle"]
    lines = [
        _row(
            "viewers", "server CPU %", "FFmpeg CPU %", "packets/s received", "packets per server CPU-s",
            "loss %", "worst viewer loss %", "server RSS MiB", "RSS per viewer KiB", "client CPU %",
            "load avg",
        ),
        _row(*["---"] * 11),
        _row(
            "0 (idle)", _cell(idle["server_cpu_percent"]), _cell(idle["ffmpeg_cpu_percent"]),
            "–", "–", "–", "–", _cell(idle["server_rss_mib"]), "–", "–", idle["load_average"],
        ),
    ]  # fmt: skip
    for s in fan_out["steps"]:
        lines.append(
            _row(
                f"{s['viewers']}{' (client-limited)' if s['client_limited'] else ''}",
                _cell(s["server_cpu_percent"]),
                _cell(s["ffmpeg_cpu_percent"]),
                s["packets_per_second"],
                _cell(s["packets_per_cpu_second"]),
                _cell(s["loss_percent"], 3),
                _cell(_get(s, "loss_percent_per_viewer", "max"), 3),
                _cell(s["server_rss_mib"]),
                _cell(s["rss_per_viewer_kib"]),
                _cell(s["client_cpu_percent"]),
                s["load_average"],
            )  # fmt: skip
        )
    return lines


def _latency_table(results: dict[str, Any]) -> list[str]:
    points = ("p50", "p95", "p99")
    lines = [
        _row(
            "server", "viewers", "last packet in → out p50 / p95 / p99 ms", "first packet p50 / p95 / p99 ms",
            "frames", "streams aligned",
        ),
        _row(*["---"] * 6),
    ]  # fmt: skip
    for name, label in SERVERS.items():
        for s in (_get(results, name, "fan_out") or {}).get("steps", []):
            hop = s.get("hop_latency")
            if not hop or "error" in hop:
                continue
            aligned = hop["viewer_streams"] - hop["streams_not_aligned"]
            lines.append(
                _row(
                    label,
                    s["viewers"],
                    _triple(hop["last_packet_ms"], points, digits=2),
                    _triple(hop["first_packet_ms"], points, digits=2),
                    hop["frames"],
                    f"{aligned}/{hop['viewer_streams']}",
                )  # fmt: skip
            )
    return lines


def _first_frame_table(results: dict[str, Any]) -> list[str]:
    points = ("p50", "p95")
    lines = [
        _row(
            "server", "joins", "first frame p50 / p95 ms", "signalling p50 / p95 ms",
            "ICE+DTLS connected p50 / p95 ms", "keyframes decoded", "failures",
        ),
        _row(*["---"] * 7),
    ]  # fmt: skip
    for label, figures in (
        ("dragonfork, keyframe cache on", _get(results, "dragonfork", "first_frames_cache_on")),
        ("dragonfork, keyframe cache off", _get(results, "dragonfork", "first_frames_cache_off")),
        (SERVERS["janus"], _get(results, "janus", "first_frames")),
    ):
        if not figures:
            continue
        lines.append(
            _row(
                label,
                figures["attempts"],
                _triple(figures["time_to_first_frame_seconds"], points, 1000, 0),
                _triple(figures["signalling_seconds"], points, 1000, 0),
                _triple(figures["connected_seconds"], points, 1000, 0),
                figures["keyframes_decoded"],
                figures["failed"],
            )  # fmt: skip
        )
    return lines


def _profile_table(figures: dict[str, Any]) -> list[str]:
    lines = [
        f"py-spy, {figures['samples']} busy samples; server CPU {figures['cpu_seconds']} s for "
        f"{figures['packets_forwarded']} packets received by the viewers = **{figures['us_per_packet']} µs "
        "per forwarded packet**.",
        "",
        _row("where (innermost known frame)", "share of samples %", "µs per forwarded packet"),
        _row("---", "---", "---"),
    ]
    lines += [_row(b["name"], b["share_percent"], _cell(b["us_per_packet"], 2)) for b in figures["buckets"]]
    lines += ["", _row("call path (inclusive)", "share %", "µs per packet"), _row("---", "---", "---")]
    lines += [_row(p["name"], p["share_percent"], _cell(p["us_per_packet"], 2)) for p in figures["paths"]]
    return lines


def _workers_lines(results: dict[str, Any]) -> list[str]:
    """1 worker (viewers in the server) against 2 worker processes, from CPU summed over the processes."""
    one, two = _get(results, "dragonfork", "derived"), _get(results, "dragonfork_workers", "derived")
    if not one or not two:
        return ["Not measured in this run (`dragonfork bench --workers 2`)."]
    rows = [
        ("CPU per viewer, % of a core (server + workers)", "cpu_percent_per_viewer"),
        (
            "viewers at < 0.1 % loss on the serving cores (extrapolated; 1 core / 2 cores)",
            "viewers_extrapolated",
        ),
        ("largest step measured under 0.1 % loss", "largest_step_under_loss_limit"),
    ]
    lines = ["| figure | webrtc.workers 1 | webrtc.workers 2 | ratio |", "|---|---|---|---|"]
    lines += [
        _row(label, _cell(one[key], 2), _cell(two[key], 2), _cell(_ratio(two[key], one[key]), 2))
        for label, key in rows
    ]
    ratio = _ratio(two["viewers_extrapolated"], one["viewers_extrapolated"])
    verdict = "met" if ratio is not None and ratio >= WORKERS_TARGET else "not met"
    lines += [
        "",
        f"Capacity ratio 2 workers ÷ 1: **{_cell(ratio, 2)}** (target ≥ {WORKERS_TARGET}: {verdict}). "
        + FAIR_COMPARISON,
    ]
    return lines


def _capacity_sentence(derived: dict[str, Any]) -> str:
    limit = LOSS_LIMIT_PERCENT
    return (
        f"CPU per viewer (least squares over the idle window and the steps under {limit} % loss): "
        f"**{derived['cpu_percent_per_viewer']} % of a core** (+{derived['cpu_percent_base']} % base) → "
        f"about **{derived['viewers_per_core_extrapolated']} viewers per core** at < {limit} % loss; "
        f"largest step measured under that loss: {derived['largest_step_under_loss_limit']} viewers."
    )


def _memfs_reads_table(reads: dict[str, Any]) -> list[str]:
    lines = [
        "Each client plays the live stream as an HLS player does (a playlist reload per target duration, "
        f"every new segment once, from 3 segments behind the live edge) for {reads['seconds']} s; "
        "`GET /ping` is probed every 20 ms meanwhile from a process of its own. "
        f"{reads['requests']} requests, **{reads['requests_per_second']} requests/s**, "
        f"{reads['megabytes_per_second']} MB/s, server CPU {reads['server_cpu_percent']} % of a core, "
        f"errors: {reads['errors'] or 'none'}.",
        "",
        "| request | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for label, key in (("playlist", "playlist_ms"), ("segment", "segment_ms"), ("GET /ping", "ping_ms")):
        figures = reads.get(key) or {}
        lines.append(_row(label, *(_cell(figures.get(point)) for point in ("p50", "p95", "p99", "max"))))
    return lines


def _ingest_lines(ingest: dict[str, Any] | None) -> list[str]:
    """Latency per ingest protocol (median/p95) and the server's CPU per publisher."""
    if not ingest:
        return ["Not measured in this run."]
    if "error" in ingest:
        return [f"Failed: `{ingest['error']}`"]
    lines = [
        _row("protocol", "path", "median ms", "p95 ms", "frames", "server CPU per publisher (% of a core)"),
        _row("---", "---", "---:", "---:", "---:", "---:"),
    ]
    for protocol, figures in ingest.items():
        latency, cpu = figures.get("latency", {}), figures.get("cpu", {})
        if "error" in latency:
            lines.append(_row(protocol, f"failed: {latency['error']}", "", "", "", ""))
            continue
        lines.append(
            _row(
                protocol.upper(),
                latency["path"],
                latency["median_ms"],
                latency["p95_ms"],
                latency["frames_measured"],
                f"{cpu.get('server_cpu_percent_per_publisher')} "
                f"at {cpu.get('publisher_mbit_per_second')} Mbit/s",
            )
        )
    streams = {figures.get("stream") for figures in ingest.values()}
    return [*lines, "", f"Stream: {', '.join(sorted(str(stream) for stream in streams))}."]


def markdown(results: dict[str, Any], method: str) -> str:
    info = results["run"]
    lines = [
        "# Benchmarks: dragonfork and Janus, same stream, same viewers, same machine",
        "",
        f"Latest run: **{info['date']}**, {info['duration_minutes']} minutes, on {info['machine']}. "
        f"Load average before / after: {info['load_before']} / {info['load_after']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".",
        "",
        "Reproduce with `nox -s bench` (not part of the default `nox` run). Stream: " + info["stream"] + ".",
        "",
        "## Headline: dragonfork and Janus (1 event loop)",
        "",
        "ratio = dragonfork ÷ Janus; for CPU and times lower is better, for viewers per core higher.",
        "",
        "| figure | dragonfork | Janus | ratio |",
        "|---|---|---|---|",
    ]
    lines += [
        _row(row["figure"], _cell(row["dragonfork"], 2), _cell(row["janus"], 2), _cell(row["ratio"], 2))
        for row in results["headline"]
    ]
    for name, label in SERVERS.items():
        server = results.get(name)
        if not server:
            continue
        lines += ["", f"## Fan-out: {label}", ""]
        if server.get("error"):
            lines.append(f"Failed: `{server['error']}`")
            continue
        fan_out = server.get("fan_out")
        if fan_out:
            lines += _fan_out_table(fan_out)
            derived = server.get("derived")
            if derived:
                lines += ["", _capacity_sentence(derived)]
            if fan_out.get("stopped"):
                lines += ["", f"Sweep stopped: {fan_out['stopped']}"]
    lines += ["", "## Every core: viewers in WebRTC worker processes (`webrtc.workers`)", ""]
    lines += _workers_lines(results)
    lines += ["", "## Server-hop latency (kernel timestamps on lo, per video frame)", ""] + _latency_table(
        results
    )
    lines += ["", "## Time to first frame and signalling (one join at a time, otherwise idle server)", ""]
    lines += _first_frame_table(results)
    figures = _get(results, "dragonfork", "fan_out", "profile")
    if figures and "error" not in figures:
        lines += ["", f"## Where dragonfork's per-packet time goes ({figures['viewers']} viewers)", ""]
        lines += _profile_table(figures)
    reads = _get(results, "dragonfork", "memfs_reads")
    if reads:
        lines += ["", f"## memfs under {reads['clients']} concurrent HLS clients (dragonfork only)", ""]
        lines += _memfs_reads_table(reads)
    lines += ["", "## Ingest: publisher → viewer (`python -m dragonfork.bench.ingest`)", ""]
    lines += _ingest_lines(results.get("ingest"))
    lines += ["", "## Plots", ""]
    lines += [f"![{plot}]({plot})" for plot in results.get("plots", [])]
    lines += ["", "## Method", "", method]
    notes = results.get("notes") or []
    if notes:
        lines += ["", "## Notes on this run", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out: Path) -> list[str]:
    """PNG plots next to the report; returns their file names (none when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for name, draw in (
        ("fanout.png", _plot_fan_out),
        ("latency.png", _plot_latency),
        ("ttff.png", _plot_first_frames),
        ("profile.png", _plot_profile),
    ):
        figure = draw(results, plt)
        if figure is not None:
            figure.tight_layout()
            figure.savefig(out / name, dpi=110)
            plt.close(figure)
            written.append(name)
    return written


def _plot_fan_out(results: dict[str, Any], plt: Any) -> Any:
    figure, (cpu_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in SERVERS:
        fan_out = _get(results, name, "fan_out")
        if not fan_out:
            continue
        steps = fan_out["steps"]
        viewers = [0] + [s["viewers"] for s in steps]
        server = [fan_out["idle"]["server_cpu_percent"]] + [s["server_cpu_percent"] for s in steps]
        ffmpeg = [fan_out["idle"]["ffmpeg_cpu_percent"]] + [s["ffmpeg_cpu_percent"] for s in steps]
        cpu_axis.plot(viewers, server, "o-", color=COLOURS[name], label=SHORT[name])
        cpu_axis.plot(viewers, ffmpeg, ":", color=COLOURS[name], linewidth=1)
        loss_axis.plot(
            [s["viewers"] for s in steps], [s["loss_percent"] for s in steps], "o-", color=COLOURS[name],
            label=SHORT[name],
        )  # fmt: skip
        for s in steps:
            if s["client_limited"]:
                loss_axis.annotate("client-limited", (s["viewers"], s["loss_percent"]), fontsize=8)
    cpu_axis.axhline(100, color="grey", linewidth=0.8)
    cpu_axis.set(xlabel="viewers", ylabel="CPU, % of one core", title="Server CPU (dotted: its FFmpeg)")
    loss_axis.axhline(LOSS_LIMIT_PERCENT, color="grey", linewidth=0.8, linestyle="--")
    loss_axis.set(xlabel="viewers", ylabel="loss %", title="Packet loss at the viewers")
    cpu_axis.legend(fontsize=8)
    loss_axis.legend(fontsize=8)
    return figure


def _plot_latency(results: dict[str, Any], plt: Any) -> Any:
    bars = [
        (name, s["viewers"], s["hop_latency"]["last_packet_ms"])
        for name in SERVERS
        for s in (_get(results, name, "fan_out") or {}).get("steps", [])
        if _get(s, "hop_latency", "last_packet_ms")
    ]
    if not bars:
        return None
    figure, axis = plt.subplots(figsize=(9, 4))
    for index, (name, _, hop) in enumerate(bars):
        for k, point in enumerate(("p50", "p95", "p99")):
            axis.bar(index + k * 0.25, hop[point], 0.25, color=COLOURS[name], alpha=(1.0, 0.7, 0.4)[k])
    axis.set_xticks(
        [index + 0.25 for index in range(len(bars))],
        [f"{SHORT[name]}\n{viewers} viewers" for name, viewers, _ in bars],
        fontsize=7,
    )
    axis.set(
        ylabel="ms, log scale (bars: p50, p95, p99)", title="Server hop: last packet of a frame in → out"
    )
    axis.set_yscale("log")
    return figure


def _plot_first_frames(results: dict[str, Any], plt: Any) -> Any:
    figure, axis = plt.subplots(figsize=(7, 4))
    for label, figures, name, style in (
        (
            "dragonfork, keyframe cache on",
            _get(results, "dragonfork", "first_frames_cache_on"),
            "dragonfork",
            "-",
        ),
        (
            "dragonfork, keyframe cache off",
            _get(results, "dragonfork", "first_frames_cache_off"),
            "dragonfork",
            "--",
        ),
        (SERVERS["janus"], _get(results, "janus", "first_frames"), "janus", "-"),
    ):
        values = (figures or {}).get("time_to_first_frame_values") or []
        if values:
            axis.step(
                [v * 1000 for v in values], [(i + 1) / len(values) for i in range(len(values))],
                style, color=COLOURS[name], where="post", label=label,
            )  # fmt: skip
    axis.set(
        xlabel="ms from signalling start", ylabel="fraction of joins", title="Time to first complete keyframe"
    )
    axis.legend(fontsize=8)
    return figure


def _plot_profile(results: dict[str, Any], plt: Any) -> Any:
    profiled = _get(results, "dragonfork", "fan_out", "profile")
    if not profiled or "error" in profiled or not profiled.get("us_per_packet"):
        return None
    buckets = [b for b in profiled["buckets"] if b["us_per_packet"]][::-1]
    figure, axis = plt.subplots(figsize=(10, 4.5))
    axis.barh(
        [b["name"] for b in buckets], [b["us_per_packet"] for b in buckets], color=COLOURS["dragonfork"]
    )
    axis.set(
        xlabel="µs of server CPU per forwarded packet",
        title=f"dragonfork at {profiled['viewers']} viewers: where the time goes",
    )
    axis.tick_params(axis="y", labelsize=7)
    return figure
