"""Derived figures (CPU per viewer, capacity, dragonfork/Janus ratios), the Markdown report and the plots.

A server's fan-out sweep may be repeated (``dragonfork bench --repeats N``): every figure is derived from
each repeat on its own and then reduced to its median over the repeats, shown with its min–max
(``over_repeats``); ratios are ratios of those medians. A results.json from before repeats (one
``fan_out``, no ``fan_out_repeats``) reads as one repeat.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypedDict

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


class Spread(TypedDict):
    """One figure over repeats: its median, lowest and highest value, and how many repeats had it."""

    median: float
    min: float
    max: float
    repeats: int


def over_repeats(
    sources: Iterable[dict[str, Any] | None], figure: Callable[[dict[str, Any]], Any]
) -> Spread | None:
    """The median (with min and max) over repeats of ``figure``, derived from each repeat's own figures.

    Every figure of the report goes through here, so that each is derived per repeat first and reduced
    after: the median of the repeats' CPU per viewer, not a slope through medians of steps. A repeat that
    lacks the figure (its sweep stopped before that step, its capture failed) is left out; None if none
    has it.
    """
    values = sorted(
        value
        for value in (figure(source) for source in sources if source)
        if isinstance(value, int | float) and not isinstance(value, bool)
    )
    if not values:
        return None
    return {"median": statistics.median(values), "min": values[0], "max": values[-1], "repeats": len(values)}


def figure_at(*path: str, scale: float = 1.0, step: int | None = None) -> Callable[[dict[str, Any]], Any]:
    """The figure under ``path`` (scaled; None where missing) of a repeat's figures, for ``over_repeats``;
    with ``step``, of that repeat's fan-out step with so many viewers."""

    def figure(figures: dict[str, Any]) -> Any:
        found = _get(figures if step is None else _step(figures, step), *path)
        return found * scale if isinstance(found, int | float) and scale != 1.0 else found

    return figure


def fan_out_repeats(server: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A server's fan-out sweeps, one per repeat (a results.json from before repeats has one: ``fan_out``)."""
    if not isinstance(server, dict):
        return []
    if "fan_out_repeats" in server:
        return [fan_out for fan_out in server["fan_out_repeats"] if fan_out]
    return [server["fan_out"]] if server.get("fan_out") else []


def dragonfork_profile(results: dict[str, Any]) -> dict[str, Any] | None:
    """The py-spy profile: taken in dragonfork's first sweep only (later repeats skip it)."""
    return next((f["profile"] for f in fan_out_repeats(results.get("dragonfork")) if f.get("profile")), None)


def _derived(server: dict[str, Any] | None, key: str) -> Spread | None:
    """A capacity figure (``cpu_per_viewer``) over the server's repeats (``complete`` derives them)."""
    return over_repeats((server or {}).get("derived_repeats") or [], figure_at(key))


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
    """Add what is derived from the measurements: capacity per server (per repeat and the medians), notes,
    the headline table."""
    notes = []
    for name, label in SERVERS.items():
        repeats = fan_out_repeats(results.get(name))
        if not repeats:
            continue
        server = results[name]
        server["derived_repeats"] = [cpu_per_viewer(fan_out) for fan_out in repeats]
        keys = next((derived.keys() for derived in server["derived_repeats"] if derived), ())
        medians = {key: _median(_derived(server, key)) for key in keys}
        server["derived"] = medians or None
        for index, fan_out in enumerate(repeats):
            where = label if len(repeats) == 1 else f"{label}, repeat {index + 1}"
            limited = [s["viewers"] for s in fan_out["steps"] if s["client_limited"]]
            if limited:
                notes.append(
                    f"{where}: client-limited at {limited} viewers (the viewers' CPUs were > 85 % busy)"
                )
            short = [
                f"{s.get('connected')}/{s['viewers']}" for s in fan_out["steps"] if not _all_connected(s)
            ]
            if short:
                notes.append(
                    f"{where}: not every viewer connected (connected/joined: {', '.join(short)}); "
                    "those steps are left out of CPU per viewer"
                )
            if fan_out.get("stopped"):
                notes.append(f"{where}: {fan_out['stopped']}")
        loads = [f["idle"]["load_average"] for f in repeats] + [
            s["load_average"] for f in repeats for s in f["steps"]
        ]
        notes.append(f"{label}: load average during the sweeps {min(loads)}–{max(loads)} (2 CPUs)")
    results["notes"] = notes
    results["headline"] = headline(results)


def _median(spread: Spread | None) -> Any:
    return None if spread is None else _round(spread["median"])


def _ratio(ours: Spread | None, theirs: Spread | None) -> float | None:
    """The ratio of two medians over repeats."""
    if ours is None or theirs is None or theirs["median"] == 0:
        return None
    return round(ours["median"] / theirs["median"], 2)


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


def _one_run(first_frames: dict[str, Any] | None, key: str, point: str) -> Spread | None:
    """A time (ms) of the joins one at a time: measured once per run, a spread over one."""
    return over_repeats([first_frames], figure_at(key, point, scale=1000))


def headline(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures that compare the two servers: each the median over repeats (with its spread), and the
    ratio of the medians dragonfork / Janus."""
    ours, theirs = results.get("dragonfork") or {}, results.get("janus") or {}
    ours_sweeps, theirs_sweeps = fan_out_repeats(ours), fan_out_repeats(theirs)
    rows: list[tuple[str, Spread | None, Spread | None]] = []

    def sweep_row(name: str, figure: Callable[[dict[str, Any]], Any]) -> None:
        rows.append((name, over_repeats(ours_sweeps, figure), over_repeats(theirs_sweeps, figure)))

    for name, key, other in (
        ("server CPU per viewer, % of a core", "cpu_percent_per_viewer", theirs),
        (
            "server CPU per viewer, % of a core, vs Janus's default config",
            "cpu_percent_per_viewer",
            results.get("janus_default"),
        ),
        (
            "viewers per core at < 0.1 % loss (extrapolated; higher is better)",
            "viewers_per_core_extrapolated",
            theirs,
        ),
    ):
        rows.append((name, _derived(ours, key), _derived(other, key)))
    for viewers in (10, 100):
        sweep_row(
            f"server CPU at {viewers} viewers, % of a core",
            figure_at("server_cpu_percent", step=viewers),
        )
    for viewers in (1, 10, 100, 200):
        for point in ("p50", "p95", "p99"):
            sweep_row(
                f"server hop at {viewers} viewers, {point}, ms",
                figure_at("hop_latency", "last_packet_ms", point, step=viewers),
            )
    ours_alone, theirs_alone = ours.get("first_frames_cache_on"), theirs.get("first_frames")
    for point in ("p50", "p95"):
        janus_ttff = _one_run(theirs_alone, "time_to_first_frame_seconds", point)
        for label, key in (("cache on", "first_frames_cache_on"), ("cache off", "first_frames_cache_off")):
            rows.append(
                (
                    f"time to first frame, {point}, ms (dragonfork keyframe {label})",
                    _one_run(ours.get(key), "time_to_first_frame_seconds", point),
                    janus_ttff,
                )
            )
    setup_figures = (
        ("signalling (WHEP POST → 201 / Janus create → start)", "signalling_seconds"),
        ("ICE + DTLS connected", "connected_seconds"),
        ("time to first frame", "time_to_first_frame_seconds"),
    )
    for label, key in setup_figures[:2]:  # time to first frame one join at a time: above, cache on and off
        for point in ("p50", "p95"):
            rows.append(
                (
                    f"{label}, one join at a time, {point}, ms",
                    _one_run(ours_alone, key, point),
                    _one_run(theirs_alone, key, point),
                )
            )
    for label, key in setup_figures:
        for point in ("p50", "p95"):
            sweep_row(
                f"{label}, joins during the fan-out sweep, {point}, ms",
                figure_at("setup", key, point, scale=1000),
            )
            if key == "signalling_seconds":  # the server's answer alone (Janus's is not HTTP request/answer)
                sweep_row(
                    f"WHEP POST → 201 on the wire (kernel timestamps on lo), joins during the fan-out sweep,"
                    f" {point}, ms",
                    figure_at("signalling_on_the_wire", "answer_ms", point),
                )
    return [
        {
            "figure": name,
            "dragonfork": _median(a),
            "janus": _median(b),
            "ratio": _ratio(a, b),
            "dragonfork_spread": a,
            "janus_spread": b,
        }
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


def _spread_cell(spread: Spread | None, digits: int = 1) -> str:
    """ "median (min–max)" over repeats; the median alone when one repeat had it or all agree."""
    if spread is None:
        return "–"
    if isinstance(spread["min"], int) and isinstance(spread["max"], int):
        digits = 0  # counts (viewers, packets): a median between two is still shown as a whole one
    text = _cell(spread["median"], digits)
    if spread["min"] != spread["max"]:
        text += f" ({_cell(spread['min'], digits)}–{_cell(spread['max'], digits)})"
    return text


def _triple(
    sources: list[dict[str, Any]], key: str, points: tuple[str, ...], scale: float = 1.0, digits: int = 1
) -> str:
    """Percentiles ``points`` of ``key`` (e.g. p50 / p95 / p99), each over the repeats in ``sources``."""
    return " / ".join(
        _spread_cell(
            over_repeats(sources, figure_at(key, point, scale=scale)),
            digits,
        )
        for point in points
    )


def _steps_by_viewers(repeats: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Each step's measurements over the repeats, by viewer count (a sweep that stopped early has fewer)."""
    steps: dict[int, list[dict[str, Any]]] = {}
    for fan_out in repeats:
        for step in fan_out["steps"]:
            steps.setdefault(step["viewers"], []).append(step)
    return dict(sorted(steps.items()))


def _fan_out_table(repeats: list[dict[str, Any]]) -> list[str]:
    idle = [fan_out["idle"] for fan_out in repeats]

    def cell(sources: list[dict[str, Any]], key: str, digits: int = 1) -> str:
        return _spread_cell(over_repeats(sources, figure_at(*key.split("."))), digits)

    lines = [
        _row(
            "viewers", "server CPU %", "FFmpeg CPU %", "packets/s received", "packets per server CPU-s",
            "loss %", "worst viewer loss %", "server RSS MiB", "RSS per viewer KiB", "client CPU %",
            "load avg",
        ),
        _row(*["---"] * 11),
        _row(
            "0 (idle)", cell(idle, "server_cpu_percent"), cell(idle, "ffmpeg_cpu_percent"),
            "–", "–", "–", "–", cell(idle, "server_rss_mib"), "–", "–", cell(idle, "load_average", 2),
        ),
    ]  # fmt: skip
    for viewers, steps in _steps_by_viewers(repeats).items():
        limited = sum(s["client_limited"] for s in steps)
        if limited:
            label = (
                f"{viewers} (client-limited{'' if len(repeats) == 1 else f' in {limited} of {len(steps)}'})"
            )
        else:
            label = str(viewers)
        lines.append(
            _row(
                label,
                cell(steps, "server_cpu_percent"),
                cell(steps, "ffmpeg_cpu_percent"),
                cell(steps, "packets_per_second", 0),
                cell(steps, "packets_per_cpu_second", 0),
                cell(steps, "loss_percent", 3),
                cell(steps, "loss_percent_per_viewer.max", 3),
                cell(steps, "server_rss_mib"),
                cell(steps, "rss_per_viewer_kib"),
                cell(steps, "client_cpu_percent"),
                cell(steps, "load_average", 2),
            )  # fmt: skip
        )
    return lines


def _hop_captures(results: dict[str, Any]) -> list[tuple[str, int, list[dict[str, Any]]]]:
    """(server, viewers, the hop-latency captures of that step over the repeats), where any succeeded."""
    captures = []
    for name in SERVERS:
        for viewers, steps in _steps_by_viewers(fan_out_repeats(results.get(name))).items():
            hops = [
                s["hop_latency"] for s in steps if s.get("hop_latency") and "error" not in s["hop_latency"]
            ]
            if hops:
                captures.append((name, viewers, hops))
    return captures


def _share_of_capacity(results: dict[str, Any], name: str, viewers: int) -> str:
    """``viewers`` as a share of the server's extrapolated capacity (all its serving cores; the median)."""
    capacity = _derived(results.get(name), "viewers_extrapolated")
    if not capacity or not capacity["median"]:
        return "–"
    share = 100 * viewers / capacity["median"]
    return f"{share:.0f} %" if share >= 10 else f"{share:.1f} %"


def _latency_table(results: dict[str, Any]) -> list[str]:
    points = ("p50", "p95", "p99")
    lines = [
        _row(
            "server", "viewers", "of its capacity", "last packet in → out p50 / p95 / p99 ms",
            "first packet p50 / p95 / p99 ms", "frames", "streams aligned",
        ),
        _row(*["---"] * 7),
    ]  # fmt: skip
    for name, viewers, hops in _hop_captures(results):
        aligned = sum(hop["viewer_streams"] - hop["streams_not_aligned"] for hop in hops)
        lines.append(
            _row(
                SERVERS[name],
                viewers,
                _share_of_capacity(results, name, viewers),
                _triple(hops, "last_packet_ms", points, digits=2),
                _triple(hops, "first_packet_ms", points, digits=2),
                _spread_cell(over_repeats(hops, figure_at("frames")), 0),
                f"{aligned}/{sum(hop['viewer_streams'] for hop in hops)}",
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
                _triple([figures], "time_to_first_frame_seconds", points, 1000, 0),
                _triple([figures], "signalling_seconds", points, 1000, 0),
                _triple([figures], "connected_seconds", points, 1000, 0),
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
    """1 worker (viewers in the server) against 2 worker processes, from CPU summed over the processes:
    medians over the repeats, and ratios of those medians."""
    one, two = results.get("dragonfork"), results.get("dragonfork_workers")
    if not _get(one, "derived") or not _get(two, "derived"):
        return ["Not measured in this run (`dragonfork bench --workers 2`)."]
    rows = [
        ("CPU per viewer, % of a core (server + workers)", "cpu_percent_per_viewer"),
        (
            "viewers at < 0.1 % loss on the serving cores (extrapolated; 1 core / 2 cores)",
            "viewers_extrapolated",
        ),
        ("largest step measured under 0.1 % loss", "largest_step_under_loss_limit"),
    ]
    lines = [
        "| figure | webrtc.workers 1 | webrtc.workers 2 | ratio of the medians |",
        "|---|---|---|---|",
    ]
    for label, key in rows:
        ones, twos = _derived(one, key), _derived(two, key)
        lines.append(_row(label, _spread_cell(ones, 2), _spread_cell(twos, 2), _cell(_ratio(twos, ones), 2)))
    ratio = _ratio(_derived(two, "viewers_extrapolated"), _derived(one, "viewers_extrapolated"))
    verdict = "met" if ratio is not None and ratio >= WORKERS_TARGET else "not met"
    lines += [
        "",
        f"Capacity ratio 2 workers ÷ 1 ({_of_medians(_repeat_count(results))}): "
        f"**{_cell(ratio, 2)}** (target ≥ {WORKERS_TARGET}: {verdict}). " + FAIR_COMPARISON,
    ]
    return lines


def _capacity_sentence(server: dict[str, Any]) -> str:
    limit = LOSS_LIMIT_PERCENT
    repeats = len(server.get("derived_repeats") or [])
    over = f", per sweep; median (min–max) over {repeats} sweeps" if repeats > 1 else ""
    return (
        f"CPU per viewer (least squares over the idle window and the steps under {limit} % loss{over}): "
        f"**{_spread_cell(_derived(server, 'cpu_percent_per_viewer'), 3)} % of a core** "
        f"(+{_spread_cell(_derived(server, 'cpu_percent_base'))} % base) → "
        f"about **{_spread_cell(_derived(server, 'viewers_per_core_extrapolated'), 0)} viewers per core** "
        f"at < {limit} % loss; largest step measured under that loss: "
        f"{_spread_cell(_derived(server, 'largest_step_under_loss_limit'), 0)} viewers."
    )


def _repeats_sentence(repeats: int) -> str:
    if repeats == 1:
        return "One fan-out sweep per server in this run (no repeats)."
    return (
        f"Each fan-out figure is the median over {repeats} sweeps per server, run interleaved (dragonfork, "
        "dragonfork with workers, Janus, and again), with its min–max in brackets; the joins one at a time "
        "run once."
    )


def _of_medians(repeats: int) -> str:
    return "one sweep each" if repeats == 1 else f"median ÷ median over {repeats} sweeps each"


def _repeat_count(results: dict[str, Any]) -> int:
    """Fan-out sweeps per server in this run (1 for a results.json from before repeats)."""
    return int(_get(results, "run", "repeats") or len(fan_out_repeats(results.get("dragonfork"))) or 1)


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
        _repeats_sentence(_repeat_count(results))
        + " ratio = dragonfork ÷ Janus (of the medians); for CPU and times lower is better, for viewers "
        "per core higher.",
        "",
        "| figure | dragonfork | Janus | ratio of the medians |",
        "|---|---|---|---|",
    ]
    lines += [
        _row(
            row["figure"],
            _spread_cell(row["dragonfork_spread"], 2),
            _spread_cell(row["janus_spread"], 2),
            _cell(row["ratio"], 2),
        )
        for row in results["headline"]
    ]
    for name, label in SERVERS.items():
        server = results.get(name)
        if not server:
            continue
        lines += ["", f"## Fan-out: {label}", ""]
        if server.get("error"):
            lines += [f"Failed: `{server['error']}`", ""]
        repeats = fan_out_repeats(server)
        if not repeats:
            continue
        if len(repeats) > 1:
            lines += [f"Per step: median (min–max) over {len(repeats)} sweeps.", ""]
        lines += _fan_out_table(repeats)
        if server.get("derived"):
            lines += ["", _capacity_sentence(server)]
        stopped = [f["stopped"] for f in repeats if f.get("stopped")]
        if stopped:
            counted = "" if len(repeats) == 1 else f" ({len(stopped)} of {len(repeats)} sweeps)"
            lines += ["", f"Sweep stopped{counted}: {stopped[0]}"]
    lines += ["", "## Every core: viewers in WebRTC worker processes (`webrtc.workers`)", ""]
    lines += _workers_lines(results)
    lines += ["", "## Server-hop latency (kernel timestamps on lo, per video frame)", ""] + _latency_table(
        results
    )
    lines += [
        "",
        "“Of its capacity”: the step's viewers as a share of that server's extrapolated viewers at < 0.1 % "
        "loss on its serving cores (the median over its sweeps; the fan-out tables above).",
    ]
    lines += ["", "## Time to first frame and signalling (one join at a time, otherwise idle server)", ""]
    lines += _first_frame_table(results)
    figures = dragonfork_profile(results)
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


def _step_medians(
    repeats: list[dict[str, Any]], key: str, with_idle: bool
) -> tuple[list[int], list[float], list[list[float]]]:
    """Viewers, the median of ``key`` per step over the repeats, and the distances down and up to its
    min and max (matplotlib's ``yerr``); the idle window as 0 viewers if ``with_idle``."""
    by_viewers = _steps_by_viewers(repeats)
    if with_idle:
        by_viewers = {0: [f["idle"] for f in repeats], **by_viewers}
    viewers: list[int] = []
    medians: list[float] = []
    errors: list[list[float]] = [[], []]
    for count, steps in by_viewers.items():
        spread = over_repeats(steps, figure_at(key))
        if spread is None:
            continue
        viewers.append(count)
        medians.append(spread["median"])
        below, above = _error_bar(spread)
        errors[0].append(below)
        errors[1].append(above)
    return viewers, medians, errors


def _error_bar(spread: Spread) -> tuple[float, float]:
    """The distances from the median down to the min and up to the max (matplotlib's ``yerr``)."""
    return spread["median"] - spread["min"], spread["max"] - spread["median"]


def _plot_fan_out(results: dict[str, Any], plt: Any) -> Any:
    figure, (cpu_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in SERVERS:
        repeats = fan_out_repeats(results.get(name))
        if not repeats:
            continue
        viewers, server, spread = _step_medians(repeats, "server_cpu_percent", with_idle=True)
        cpu_axis.errorbar(
            viewers, server, yerr=spread, fmt="o-", capsize=3, color=COLOURS[name], label=SHORT[name]
        )
        viewers, ffmpeg, _ = _step_medians(repeats, "ffmpeg_cpu_percent", with_idle=True)
        cpu_axis.plot(viewers, ffmpeg, ":", color=COLOURS[name], linewidth=1)
        viewers, loss, spread = _step_medians(repeats, "loss_percent", with_idle=False)
        loss_axis.errorbar(
            viewers, loss, yerr=spread, fmt="o-", capsize=3, color=COLOURS[name], label=SHORT[name]
        )
        for count, steps in _steps_by_viewers(repeats).items():
            if any(s["client_limited"] for s in steps):
                loss_axis.annotate("client-limited", (count, loss[viewers.index(count)]), fontsize=8)
    cpu_axis.axhline(100, color="grey", linewidth=0.8)
    cpu_axis.set(
        xlabel="viewers", ylabel="CPU, % of one core",
        title="Server CPU, median and min–max over repeats (dotted: its FFmpeg)",
    )  # fmt: skip
    loss_axis.axhline(LOSS_LIMIT_PERCENT, color="grey", linewidth=0.8, linestyle="--")
    loss_axis.set(xlabel="viewers", ylabel="loss %", title="Packet loss at the viewers")
    cpu_axis.legend(fontsize=8)
    loss_axis.legend(fontsize=8)
    return figure


def _plot_latency(results: dict[str, Any], plt: Any) -> Any:
    bars = [
        (name, viewers, over_repeats(hops, figure_at("last_packet_ms", point)))
        for name, viewers, hops in _hop_captures(results)
        for point in ("p50", "p95", "p99")
    ]
    if not bars:
        return None
    figure, axis = plt.subplots(figsize=(9, 4))
    for index, (name, _, spread) in enumerate(bars):
        if spread is None:
            continue
        group, k = divmod(index, 3)
        axis.bar(
            group + k * 0.25, spread["median"], 0.25, color=COLOURS[name], alpha=(1.0, 0.7, 0.4)[k],
            yerr=[[bar] for bar in _error_bar(spread)], capsize=2,
        )  # fmt: skip
    labels = [f"{SHORT[name]}\n{viewers} viewers" for name, viewers, _ in bars[::3]]
    axis.set_xticks([group + 0.25 for group in range(len(labels))], labels, fontsize=7)
    axis.set(
        ylabel="ms, log scale (bars: p50, p95, p99)",
        title="Server hop: last packet of a frame in → out (median, min–max over repeats)",
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
    profiled = dragonfork_profile(results)
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
