"""Every Prometheus metric dragonfork exposes, in one place.

The core (process, stream, webrtc) updates these; the HTTP layer only renders them at ``/metrics``.
Label values that name a process are removed with ``forget_process`` when the process is deleted, so a
long-running server does not accumulate series for processes that no longer exist.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)

# --- the server itself -----------------------------------------------------------------------------------

# Prometheus's standard process_* series of the server (CPU seconds, resident memory, open fds): the server's
# event loop runs on one core, so rate(process_cpu_seconds_total) near 1 is the server at capacity.
ProcessCollector(registry=REGISTRY)
EVENT_LOOP_LAG = Gauge(
    "dragonfork_event_loop_lag_seconds",
    "How late the watchdog task woke up at its last tick (a busy or blocked event loop makes it grow)",
    registry=REGISTRY,
)

# --- processes -------------------------------------------------------------------------------------------

PROCESS_STATE = Gauge(
    "dragonfork_process_state",
    "1 for the state a process is in now, 0 for the others",
    ["process", "state"],
    registry=REGISTRY,
)
PROCESS_RESTARTS = Counter(
    "dragonfork_process_restarts_total",
    "FFmpeg restarts by the supervisor, by reason (reconnect, stale, limit)",
    ["process", "reason"],
    registry=REGISTRY,
)
PROCESS_FPS = Gauge(
    "dragonfork_process_fps", "Frames per second FFmpeg reports", ["process"], registry=REGISTRY
)
PROCESS_BITRATE = Gauge(
    "dragonfork_process_bitrate_kbits",
    "Output bitrate FFmpeg reports (kbit/s)",
    ["process"],
    registry=REGISTRY,
)
PROCESS_SPEED = Gauge(
    "dragonfork_process_speed",
    "Encoding speed FFmpeg reports (1.0 = realtime)",
    ["process"],
    registry=REGISTRY,
)
PROCESS_CPU = Gauge(
    "dragonfork_process_cpu_percent",
    "CPU of the FFmpeg child (100 = one core)",
    ["process"],
    registry=REGISTRY,
)
PROCESS_MEMORY = Gauge(
    "dragonfork_process_memory_bytes", "Resident memory of the FFmpeg child", ["process"], registry=REGISTRY
)
FAILURES = Counter(
    "dragonfork_failures_total",
    "Failures that ended one component and nothing else (process run, viewer, viewer sender), by cause",
    ["component", "cause"],
    registry=REGISTRY,
)
PROCESSES_RUNNING = Gauge("dragonfork_processes_running", "FFmpeg children running now", registry=REGISTRY)

# --- HTTP ------------------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "dragonfork_http_requests_total",
    "HTTP requests by route, method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "dragonfork_http_request_duration_seconds",
    "HTTP request latency by route",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)

LOGIN_FAILURES = Counter(
    "dragonfork_login_failures_total",
    "Failed logins (wrong credentials, bad refresh token, wrong Basic credentials on /metrics) by route",
    ["route"],
    registry=REGISTRY,
)
LOGIN_THROTTLED = Counter(
    "dragonfork_login_throttled_total",
    "Login attempts refused with 429 because their client address failed too often, by route",
    ["route"],
    registry=REGISTRY,
)

# --- WebRTC egress (WHEP) --------------------------------------------------------------------------------

WHEP_REQUESTS = Counter(
    "dragonfork_webrtc_whep_requests_total",
    "WHEP requests by method and response status",
    ["method", "status"],
    registry=REGISTRY,
)
WHEP_REQUEST_DURATION = Histogram(
    "dragonfork_webrtc_whep_request_duration_seconds",
    "WHEP request latency by method (POST includes creating the SDP answer)",
    ["method"],
    # fine around 30 ms, a join's latency objective, so that an alert on its p95 can tell 20 from 40 ms
    buckets=(0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
VIEWERS_ACTIVE = Gauge(
    "dragonfork_webrtc_viewers_active", "Viewers attached to a process now", ["process"], registry=REGISTRY
)
VIEWER_SETUP_SECONDS = Histogram(
    "dragonfork_webrtc_viewer_setup_seconds",
    "Time from the WHEP offer to ICE+DTLS connected",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10),
    registry=REGISTRY,
)
TIME_TO_FIRST_FRAME_SECONDS = Histogram(
    "dragonfork_webrtc_time_to_first_frame_seconds",
    "Time from the WHEP offer to the first video frame handed to the viewer's sender",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10),
    registry=REGISTRY,
)
VIEWERS_CLOSED = Counter(
    "dragonfork_webrtc_viewers_closed_total",
    "Viewers closed, by reason (delete, handshake_timeout, ice_failed, process_stopped, ...)",
    ["reason"],
    registry=REGISTRY,
)
RTP_PACKETS_FORWARDED = Counter(
    "dragonfork_webrtc_rtp_packets_forwarded_total",
    "RTP packets (as received from FFmpeg) forwarded to viewers, summed over viewers",
    ["kind"],
    registry=REGISTRY,
)
RTP_BYTES_FORWARDED = Counter(
    "dragonfork_webrtc_rtp_bytes_forwarded_total",
    "RTP payload bytes forwarded to viewers, summed over viewers",
    ["kind"],
    registry=REGISTRY,
)
PACKETS_DROPPED = Counter(
    "dragonfork_webrtc_packets_dropped_total",
    "RTP packets dropped, by reason (malformed, slow_viewer, awaiting_keyframe, ...)",
    ["kind", "reason"],
    registry=REGISTRY,
)
RTP_RETRANSMITTED = Counter(
    "dragonfork_webrtc_rtp_retransmitted_total",
    "RTP packets sent again to one viewer: its NACKs, and keyframe bursts answering its PLI/FIR",
    ["kind"],
    registry=REGISTRY,
)
KEYFRAME_BURSTS = Counter(
    "dragonfork_webrtc_keyframe_cache_bursts_total",
    "New viewers started from the keyframe cache instead of waiting for the next IDR",
    registry=REGISTRY,
)
SOURCES_ACTIVE = Gauge(
    "dragonfork_webrtc_sources_active", "RTP source tasks running", ["kind"], registry=REGISTRY
)
SOURCE_IDLE_SECONDS = Gauge(
    "dragonfork_webrtc_source_idle_seconds",
    "Seconds since a source last received an RTP packet",
    ["process", "kind"],
    registry=REGISTRY,
)
SOURCE_RECEIVED_PACKETS = Counter(
    "dragonfork_webrtc_source_packets_total",
    "RTP packets received from FFmpeg by the sources",
    ["kind"],
    registry=REGISTRY,
)

# --- sessions (who is watching what) ---------------------------------------------------------------------

SESSIONS_ACTIVE = Gauge(
    "dragonfork_sessions_active",
    "Active sessions by collector (hls, webrtc, rtmp, srt, ffmpeg)",
    ["collector"],
    registry=REGISTRY,
)
SESSIONS_TOTAL = Counter(
    "dragonfork_sessions_total",
    "Sessions that became active since the start, by collector",
    ["collector"],
    registry=REGISTRY,
)
SESSION_BYTES = Counter(
    "dragonfork_session_bytes_total",
    "Bytes sent (tx) to and received (rx) from session clients",
    ["collector", "direction"],
    registry=REGISTRY,
)
SESSIONS_REFUSED = Counter(
    "dragonfork_sessions_refused_total",
    "New viewers refused by a sessions.* limit (max_sessions, max_bitrate_mbit)",
    ["collector", "limit"],
    registry=REGISTRY,
)

_PER_PROCESS = (
    PROCESS_FPS,
    PROCESS_BITRATE,
    PROCESS_SPEED,
    PROCESS_CPU,
    PROCESS_MEMORY,
    VIEWERS_ACTIVE,
)


def forget_process(process_id: str) -> None:
    """Drop every series labelled with this process (called when the process is deleted)."""
    for gauge in _PER_PROCESS:
        with contextlib.suppress(KeyError):
            gauge.remove(process_id)
    labelled: tuple[Gauge | Counter, ...] = (
        PROCESS_STATE,
        PROCESS_RESTARTS,
        SOURCE_IDLE_SECONDS,
        FILES_CLEANUP_FAILURES,
    )
    for metric in labelled:
        for labels in list(metric._metrics):  # prometheus_client has no public label listing
            if labels[0] == process_id:
                metric.remove(*labels)


# --- files (memfs, diskfs) -------------------------------------------------------------------------------

FILESYSTEM_USED = Gauge(
    "dragonfork_filesystem_used_bytes",
    "Bytes stored in a filesystem (memfs: uploads in flight included)",
    ["filesystem"],
    registry=REGISTRY,
)
FILESYSTEM_LIMIT = Gauge(
    "dragonfork_filesystem_limit_bytes",
    "max_size_mbytes of a filesystem in bytes (0 is unlimited)",
    ["filesystem"],
    registry=REGISTRY,
)
FILESYSTEM_FILES = Gauge(
    "dragonfork_filesystem_files", "Files stored in a filesystem", ["filesystem"], registry=REGISTRY
)
FILES_CLEANED = Counter(
    "dragonfork_filesystem_removed_files_total",
    "Files removed by cleanup rules (rule), purge on delete (purge) or memfs purge when full (full)",
    ["filesystem", "reason"],
    registry=REGISTRY,
)
FILES_CLEANUP_FAILURES = Counter(
    "dragonfork_filesystem_cleanup_failures_total",
    "Cleanup rule checks that failed (a file could not be removed), by process",
    ["process"],
    registry=REGISTRY,
)
FILES_REFUSED = Counter(
    "dragonfork_filesystem_refused_writes_total",
    "Writes refused, by reason (full, auth, path)",
    ["filesystem", "reason"],
    registry=REGISTRY,
)
FILES_SERVED_BYTES = Counter(
    "dragonfork_filesystem_served_bytes_total",
    "Bytes of files served over HTTP",
    ["filesystem"],
    registry=REGISTRY,
)
# --- ingest servers (RTMP today; WHIP and SRT use the same series with their protocol label) -------------

INGEST_PUBLISHERS = Gauge(
    "dragonfork_ingest_publishers_active",
    "Publishers live now (publishing into the hub), by protocol",
    ["protocol"],
    registry=REGISTRY,
)
INGEST_BYTES = Counter(
    "dragonfork_ingest_bytes_received_total",
    "Bytes received from publishers (wire bytes), by protocol",
    ["protocol"],
    registry=REGISTRY,
)
INGEST_PACKETS = Counter(
    "dragonfork_ingest_packets_total",
    "Media packets received from publishers (RTMP: audio/video messages), by protocol and kind",
    ["protocol", "kind"],
    registry=REGISTRY,
)
INGEST_READERS = Gauge(
    "dragonfork_ingest_players",
    "Players reading a stream through an ingest server's own protocol (RTMP play), by protocol",
    ["protocol"],
    registry=REGISTRY,
)
WHIP_PUBLISHERS_CLOSED = Counter(
    "dragonfork_whip_publishers_closed_total",
    "WHIP publishers ended after their answer, by reason (delete, peer_closed, ice_failed, idle, ...)",
    ["reason"],
    registry=REGISTRY,
)
WHIP_KEYFRAME_REQUESTS = Counter(
    "dragonfork_whip_keyframe_requests_total",
    "RTCP PLIs sent to WHIP publishers: a reader was waiting for a keyframe, or the stream had none yet",
    registry=REGISTRY,
)
INGEST_REFUSALS = Counter(
    "dragonfork_ingest_refused_total",
    "Clients refused by an ingest server (bad handshake or chunks, token, name taken, codec), by reason",
    ["protocol", "reason"],
    registry=REGISTRY,
)

SRT_CONNECTIONS = Gauge(
    "dragonfork_srt_connections",
    "SRT connections open now, by role (publisher, reader)",
    ["role"],
    registry=REGISTRY,
)

SRT_BYTES = Counter(
    "dragonfork_srt_bytes_total",
    "SRT data bytes (with SRT headers) received from publishers and sent to readers, by stream",
    ["stream", "direction"],
    registry=REGISTRY,
)

SRT_PACKETS = Counter(
    "dragonfork_srt_packets_total",
    "SRT data packets by stream, direction (received, sent) and kind (data, retransmitted, lost, dropped)",
    ["stream", "direction", "kind"],
    registry=REGISTRY,
)

SRT_RTT = Gauge(
    "dragonfork_srt_rtt_seconds",
    "Smoothed round-trip time of a stream's SRT publisher, and the largest of its readers', by role",
    ["stream", "role"],
    registry=REGISTRY,
)


# --- counters of the WebRTC worker processes -------------------------------------------------------------

CounterKey = tuple[str, tuple[tuple[str, str], ...]]
"""A counter series: its family name (without ``_total``) and its labels, sorted."""


class CounterDeltas:
    """What this process's counters grew by since the last call (a WebRTC worker sends it to the server,
    which adds it to the same series: ``/metrics`` shows the sum over the server and its workers)."""

    def __init__(self) -> None:
        self._last: dict[CounterKey, float] = {}

    def take(self) -> list[tuple[str, dict[str, str], float]]:
        deltas = []
        for family in REGISTRY.collect():
            if family.type != "counter" or not family.name.startswith("dragonfork_"):
                continue
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue  # the ``_created`` timestamps
                key = (family.name, tuple(sorted(sample.labels.items())))
                delta = sample.value - self._last.get(key, 0.0)
                if delta:
                    self._last[key] = sample.value
                    deltas.append((family.name, sample.labels, delta))
        return deltas


def _counters_by_name() -> dict[str, Counter]:
    return {
        family.name: counter
        for counter in globals().values()
        if isinstance(counter, Counter)
        for family in counter.describe()
    }


_COUNTERS: dict[str, Counter] = {}


def add_counter_deltas(deltas: list[tuple[str, dict[str, str], float]]) -> None:
    """Add a worker's ``CounterDeltas.take()`` to this process's counters (unknown names are skipped)."""
    if not _COUNTERS:
        _COUNTERS.update(_counters_by_name())
    for name, labels, delta in deltas:
        counter = _COUNTERS.get(name)
        if counter is None or delta <= 0:
            continue
        try:
            (counter.labels(**labels) if labels else counter).inc(delta)
        except ValueError:
            continue  # labels that do not match the counter's: a worker of another version
