"""Where the server's time goes: a py-spy profile of the server process, sorted into named buckets.

py-spy samples the server's Python stacks from outside; it stops the server for each sample (non-blocking
sampling truncates stacks), which at 100 samples per second costs the server about 1 % of its time. Its
idle detection misses some waits, so samples whose innermost frame is a known wait (Trio's epoll wait, a
thread's condition wait) are dropped as well: what remains is the server's busy time. Each sample goes to the
bucket of its innermost frame that belongs to a known bucket ("self time by component"); a few call paths
are also reported inclusively (everything below them). With the server's CPU seconds and the packets its
viewers received in the same window, a bucket's share becomes microseconds per forwarded packet.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# (bucket, test on one frame "function (path/file.py:line)"), innermost matching frame wins.
_UDP_SEND = (
    "StunProtocol.send_data (aioice/",
    "Connection.sendto (aioice/",
    "Connection.send (aioice/",
    "RTCIceTransport._send (aiortc/",
    "_SelectorDatagramTransport.sendto (asyncio/",
)


def _protect_lines() -> tuple[str, ...]:
    """How py-spy ends the frames of ``SrtpSocket``'s sends at their libsrtp calls: it names frames by line,
    so the C call of the fast path's inner loop is told apart from the Python around it."""
    source = (Path(__file__).parents[1] / "webrtc" / "aiortc_internals.py").read_text().splitlines()
    lines = tuple(
        f"aiortc_internals.py:{number})"
        for number, line in enumerate(source, 1)
        if "= protect(context, " in line
    )
    if not lines:
        raise RuntimeError("no srtp_protect call found in webrtc/aiortc_internals.py")
    return lines


_PROTECT_LINES = _protect_lines()
_FAST_PATH_SENDS = ("SrtpSocket._send_run (", "SrtpSocket._send_each (")
BUCKETS: list[tuple[str, Callable[[str], bool]]] = [
    (
        "fast path: SRTP protect (libsrtp, in place)",
        lambda f: f.startswith("SrtpSocket.send_") and f.endswith(_PROTECT_LINES),
    ),
    (
        "fast path: sendmsg (UDP segmentation) / sendto (kernel, loopback delivery included)",
        lambda f: f.startswith(_FAST_PATH_SENDS),
    ),
    ("fast path: per-viewer loop, copy into the SRTP buffer", lambda f: f.startswith("SrtpSocket.")),
    (
        "fast path: fan-out (packetize once, wire per layout, RTCP; webrtc/fanout.py)",
        lambda f: "webrtc/fanout.py" in f,
    ),
    ("fast path: H.264 packetizer (webrtc/h264.py)", lambda f: "dragonfork/webrtc/h264.py" in f),
    (
        "SRTP/SRTCP by pylibsrtp (aiortc path, sender reports, unprotect of the peer RTCP)",
        lambda f: "pylibsrtp/" in f,
    ),
    (
        "UDP send: aioice → asyncio transport → kernel (loopback delivery included)",
        lambda f: f.startswith(_UDP_SEND),
    ),
    ("aiortc H.264 packetizer (codecs/h264.py)", lambda f: "aiortc/codecs/" in f),
    ("aiortc rtp.py (RTP header + serialize; the fast path's RTCP parse)", lambda f: "aiortc/rtp.py" in f),
    ("aiortc wall clock per packet (clock.py: NTP time, twice)", lambda f: "aiortc/clock.py" in f),
    ("aiortc sender loop (rtcrtpsender.py)", lambda f: "aiortc/rtcrtpsender.py" in f),
    ("aiortc DTLS transport send wrapper (rtcdtlstransport.py)", lambda f: "aiortc/rtcdtlstransport.py" in f),
    ("aiortc/aioice other (RTCP, stats, rate, ICE)", lambda f: "aiortc/" in f or "aioice/" in f),
    ("dragonfork track hand-off (webrtc/track.py)", lambda f: "dragonfork/webrtc/track.py" in f),
    (
        "fast path: the peer's datagrams (PairReader: read, RTCP feedback, consent answers)",
        lambda f: f.startswith(("PairReader.", "feedback (")) and "webrtc/aiortc_internals.py" in f,
    ),
    ("dragonfork viewer tasks (webrtc/viewer.py)", lambda f: "dragonfork/webrtc/" in f),
    ("dragonfork RTP source + fan-out (stream/)", lambda f: "dragonfork/stream/" in f),
    ("Prometheus counters", lambda f: "prometheus_client/" in f),
    ("trio memory channels (per-viewer frame hand-off)", lambda f: "trio/_channel.py" in f),
    ("trio-asyncio bridge", lambda f: "trio_asyncio/" in f),
    ("asyncio machinery (handles, futures, tasks)", lambda f: "asyncio/" in f),
    ("trio scheduler (task switches, cancel scopes, deadlines)", lambda f: "trio/" in f),
    ("HTTP (hypercorn, quart, h11)", lambda f: any(name in f for name in ("hypercorn/", "quart", "h11/"))),
]
OTHER = "other"
IDLE_LEAVES = ("EpollIOManager.get_events (", "Condition.wait (", "Event.wait (")

# Call paths reported inclusively: share of samples with this frame anywhere in the stack.
PATHS: dict[str, str] = {
    "fast path (TrackFanout.write and below: packetize, protect, send)": "TrackFanout.write (",
    "aiortc sender path (RTCRtpSender._run_rtp and below)": "RTCRtpSender._run_rtp (",
    "RTP ingest (RtpReceiver.handle_datagram and below: parse, depacketize, fan-out)": "handle_datagram (",
    "track hand-off, Trio side (FrameTrack.put)": "FrameTrack.put (",
    "track hand-off, asyncio side (FrameTrack.recv)": "FrameTrack.recv (",
}


def record(pid: int, seconds: float, output: Path, rate: int = 100) -> bool:
    """py-spy's raw (collapsed stacks) profile of ``pid``; False when py-spy is not available."""
    binary = shutil.which("py-spy")
    if binary is None:
        return False
    command = [
        binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
        "--format", "raw", "--output", str(output),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=seconds + 60, capture_output=True)
    return output.exists()


def bucket_of(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for name, test in BUCKETS:
            if test(frame):
                return name
    return OTHER


def analyse(collapsed: Path, cpu_seconds: float, packets: int) -> dict[str, Any]:
    """Bucket shares of the samples, and microseconds per forwarded packet when ``packets`` is known."""
    buckets: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        total += samples
        buckets[bucket_of(frames)] += samples
        for name, marker in PATHS.items():
            if any(marker in frame for frame in frames):
                paths[name] += samples
    per_packet = 1e6 * cpu_seconds / packets if packets else None

    def row(name: str, samples: int) -> dict[str, Any]:
        share = samples / total if total else 0.0
        return {
            "name": name,
            "share_percent": round(100 * share, 1),
            "us_per_packet": None if per_packet is None else round(share * per_packet, 2),
        }

    return {
        "samples": total,
        "cpu_seconds": round(cpu_seconds, 2),
        "packets_forwarded": packets,
        "us_per_packet": None if per_packet is None else round(per_packet, 2),
        "buckets": [row(name, samples) for name, samples in buckets.most_common()],
        "paths": [row(name, paths[name]) for name in PATHS],
    }
