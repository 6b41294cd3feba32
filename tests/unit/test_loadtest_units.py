"""``dragonfork loadtest``'s parts that need no server: percentiles and the report, keyframe detection and
header-only counting of RTP, the local-target check and the server probe, and the command line's refusals
(which must happen before any traffic: every refused target here is a documentation address, and the runs
get a closed local port as HTTP proxy, so even a broken refusal could not reach another machine)."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import psutil
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.rtcrtpreceiver import StreamStatistics
from harness import TEST_VIDEO, free_port
from hypothesis import given
from hypothesis import strategies as st

from dragonfork.loadtest import report
from dragonfork.loadtest.runner import workers_for
from dragonfork.loadtest.server_probe import ProcessMeter, Usage, cpu_percent, find_listener, is_local_host
from dragonfork.loadtest.viewer import (
    KeyframeAssembler,
    SignallingError,
    _counting_datagram_handler,
    decodes_to_picture,
    nal_types,
)

SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address
REMOTE_HOSTS = ("192.0.2.1", "198.51.100.7", "203.0.113.9", "2001:db8::1", "8.8.8.8")

# --- percentiles and the report ---------------------------------------------------------------------------


def nearest_rank(values: list[float], point: int) -> float:
    """The nearest-rank percentile in exact integer arithmetic: the ceil(point/100 * n)-th smallest value."""
    return sorted(values)[max(0, -(-point * len(values) // 100) - 1)]


def test_percentiles_of_known_values() -> None:
    assert report.percentiles([]) is None
    assert report.percentiles([0.25]) == {"p50": 0.25, "p95": 0.25, "p99": 0.25, "max": 0.25}
    assert report.percentiles([5, 1, 4, 2, 3]) == {"p50": 3, "p95": 5, "p99": 5, "max": 5}
    assert report.percentiles(range(1, 101)) == {"p50": 50, "p95": 95, "p99": 99, "max": 100}
    assert report.percentiles(iter([0.123456, 0.2])) == {"p50": 0.1235, "p95": 0.2, "p99": 0.2, "max": 0.2}


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=300))
def test_default_percentiles_are_nearest_rank(values: list[int]) -> None:
    figures = report.percentiles(values)
    assert figures is not None
    assert figures == {**{f"p{p}": nearest_rank(values, p) for p in (50, 95, 99)}, "max": max(values)}


def test_percentiles_at_other_points_are_nearest_rank_too() -> None:
    """BUG (latent; every caller uses the default points): ``point / 100 * n`` in floating point lands just
    above an integer for e.g. 7 % of 100 (7.000000000000001), so ``ceil`` picks the next rank."""
    points = (7, 14, 28, 56)
    assert report.percentiles(range(1, 101), points) == {"p7": 7, "p14": 14, "p28": 28, "p56": 56, "max": 100}


def test_loss_percent() -> None:
    assert report.loss_percent(0, 0) == 0.0
    assert report.loss_percent(99, 100) == 1.0
    assert report.loss_percent(2, 3) == 33.3333
    assert report.loss_percent(101, 100) == 0.0  # duplicates do not make negative loss


def session(viewer: int, attempt: int = 0, **fields: Any) -> dict[str, Any]:
    """One session report as a worker sends it (``SessionReport.to_json``)."""
    base: dict[str, Any] = {
        "viewer": viewer,
        "attempt": attempt,
        "status": 201,
        "signalling_seconds": None,
        "connected_seconds": None,
        "time_to_first_frame_seconds": None,
        "keyframe_decoded": None,
        "ended": "left",
        "error": None,
        "duration_seconds": 5.0,
    }
    return {**base, **fields}


def hand_made_result(samples: int) -> dict[str, Any]:
    """Three viewers: two connected (one was ended by the server once and came back), one refused with 503."""
    connected = [
        session(0, signalling_seconds=0.010, connected_seconds=0.040, time_to_first_frame_seconds=0.050),
        session(1, signalling_seconds=0.020, connected_seconds=0.060, time_to_first_frame_seconds=0.090),
        session(1, 1, signalling_seconds=0.030, connected_seconds=0.080),
    ]
    refused = session(2, status=503, ended="error", error="HTTP 503: full", duration_seconds=0.01)
    ends = [
        connected[0],
        {**connected[1], "ended": "server", "keyframe_decoded": True},
        connected[2],
        refused,
    ]
    counters = {0: [100, 100, 50, 50, 0, 1], 1: [200, 210, 100, 100, 1, 1], 2: [0, 0, 0, 0, 0, 0]}
    return {
        "run": {
            "url": "http://127.0.0.1:8080/api/v3/whep/cam",
            "peers": 3,
            "duration_seconds": 5.0,
            "ramp_seconds": 1.0,
            "workers": 1,
            "started_at": "2026-01-02T03:04:05+00:00",
            "machine": "test: 2 CPUs",
            "signalling_label": "WHEP POST → 201",
        },
        "sessions": report.session_figures([*connected, refused], ends),
        "viewers": report.viewer_figures(counters),
        "reconnects": 1,
        "server": {
            "pid": 4242,
            "name": "python -m dragonfork serve",
            "samples": [
                {
                    "t": float(t),
                    "cpu_percent": 12.0,
                    "rss_bytes": 100 * 2**20,
                    "children_cpu_percent": 5.0,
                    "children_rss_bytes": 38 * 2**20,
                }
                for t in range(1, samples + 1)
            ],
        },
    }


def test_figures_from_hand_made_sessions_and_counters() -> None:
    result = hand_made_result(samples=3)
    assert result["sessions"] == {
        "attempts": 4,
        "connected": 3,
        "failed": 1,
        "failures": {"HTTP 503": 1},
        "signalling_seconds": {"p50": 0.02, "p95": 0.03, "p99": 0.03, "max": 0.03},
        "connected_seconds": {"p50": 0.06, "p95": 0.08, "p99": 0.08, "max": 0.08},
        "time_to_first_frame_seconds": {"p50": 0.05, "p95": 0.09, "p99": 0.09, "max": 0.09},
        "sessions_without_first_frame": 1,
        "keyframes_decoded": 1,
        "keyframes_not_decodable": 0,
        "sessions_ended_by_server": 1,
    }
    assert result["viewers"] == {
        "viewers": 3,
        "video_packets_per_viewer": {"mean": 100.0, "min": 0, "max": 200},
        "audio_packets_per_viewer": {"mean": 50.0, "min": 0, "max": 100},
        "packets_received": 450,
        "packets_expected": 460,
        "loss_percent": 2.1739,
        "loss_percent_per_viewer": {"p50": 0.0, "p95": 3.2258, "p99": 3.2258, "max": 3.2258},
        "viewers_over_0_1_percent_loss": 1,
    }
    assert json.loads(json.dumps(result)) == result


def test_http_failures_are_keyed_by_status() -> None:
    """BUG: ``report._error_kind`` keys a failure that starts with ``"HTTP"`` by its status, but viewers
    record a refusal as ``"SignallingError: HTTP 503: <JSON body>"`` (``f"{type(exc).__name__}: {exc}"`` in
    ``Viewer._session``), so that branch never fires: the key is the first 80 characters of the JSON body
    (the Markdown prints that fragment), and refusals with one status but other words count apart."""
    body = json.dumps(
        {
            "code": 503,
            "message": "stream 'cam' is full (8 viewers); retry in 2 s",
            "details": ["webrtc.max_peers_per_stream: stream 'cam' is full (8 viewers); retry in 2 s"],
        }
    )
    error = SignallingError(503, f"HTTP 503: {body}")
    refused = [
        session(viewer, status=503, ended="error", error=f"{type(error).__name__}: {error}")
        for viewer in range(2)
    ]
    figures = report.session_figures(refused, refused)
    assert figures["failures"] == {"HTTP 503": 2}


def test_markdown_shows_the_figures_people_read() -> None:
    text = report.markdown(hand_made_result(samples=90))
    assert text.startswith("# Load test: 3 viewers of http://127.0.0.1:8080/api/v3/whep/cam\n")
    assert "5.0 s after a 1.0 s ramp · 1 worker processes · test: 2 CPUs" in text
    assert "| WHEP POST → 201 | 20.0 | 30.0 | 30.0 | 30.0 |" in text
    assert "| ICE + DTLS connected | 60.0 | 80.0 | 80.0 | 80.0 |" in text
    assert "| time to first frame (complete keyframe) | 50.0 | 90.0 | 90.0 | 90.0 |" in text
    assert "4 attempts, 3 connected, 1 failed {'HTTP 503': 1}; 1 ended by the server; 1 reconnects" in text
    assert "(video / audio, mean): 100.0 / 50.0; received 450 of 460" in text
    assert "loss: 2.1739 % overall; per viewer p50/p99/max 0.000/3.226/3.226 %; 1 viewers over 0.1 %" in text
    assert "Server process 4242 (python -m dragonfork serve), sampled every second:" in text
    sample_rows = [line for line in text.splitlines() if line.startswith("| ") and line.endswith("| 38 |")]
    assert len(sample_rows) == report.MARKDOWN_SAMPLE_ROWS  # 90 samples thinned to every third
    assert sample_rows[0] == "| 1 | 12 | 100 | 5 | 38 |" and sample_rows[1].startswith("| 4 |")


def test_markdown_of_a_run_where_nobody_connected_and_nothing_was_sampled() -> None:
    refused = session(0, status=409, ended="error", error="HTTP 409: no media yet")
    result = {
        **hand_made_result(samples=0),
        "sessions": report.session_figures([refused], [refused]),
        "viewers": report.viewer_figures({}),
        "reconnects": 0,
        "server": None,
    }
    text = report.markdown(result)
    assert "| WHEP POST → 201 | – | – | – | – |" in text
    assert "1 attempts, 0 connected, 1 failed {'HTTP 409': 1}" in text
    assert "(video / audio, mean): – / –; received 0 of 0" in text
    assert "not sampled (the server is not a process on this machine)" in text


def test_workers_for() -> None:
    assert [workers_for(peers) for peers in (1, 60, 61, 120, 121, 1000)] == [1, 1, 2, 2, 3, 17]


# --- H.264 over RTP: NAL types and the first complete keyframe ----------------------------------------------


def test_nal_types_of_each_payload_shape() -> None:
    assert nal_types(b"") == ([], False)
    assert nal_types(b"\x65\x88\x84") == ([5], True)  # a single NAL unit: an IDR slice
    stap_a = b"\x78" + b"\x00\x03\x67\x42\xc0" + b"\x00\x02\x68\xce" + b"\x00\x02\x06\x05"
    assert nal_types(stap_a) == ([7, 8, 6], True)
    assert nal_types(stap_a[:-1]) == ([7, 8, 6], True)  # the last unit cut short still names its type
    assert nal_types(b"\x78\x00\x03") == ([], True)  # a size with no unit after it
    assert nal_types(b"\x7c\x85" + bytes(10)) == ([5], True)  # FU-A start of an IDR
    assert nal_types(b"\x7c\x05" + bytes(10)) == ([], False)  # FU-A middle
    assert nal_types(b"\x7c\x45" + bytes(10)) == ([], False)  # FU-A end
    assert nal_types(b"\x7c") == ([], False)


@given(st.binary(max_size=64))
def test_nal_types_of_any_bytes(payload: bytes) -> None:
    types, starts = nal_types(payload)
    assert all(0 <= kind < 32 for kind in types)
    assert starts or not types


@pytest.fixture(scope="module")
def keyframe() -> bytes:
    """One real H.264 keyframe (Annex B: SPS, PPS, SEI, IDR) of the test pattern, from FFmpeg's x264."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", TEST_VIDEO]
    command += ["-frames:v", "1", "-c:v", "libx264", "-preset", "ultrafast", "-f", "h264", "-"]
    return subprocess.run(command, capture_output=True, check=True, timeout=30).stdout


@pytest.fixture(scope="module")
def keyframe_payloads(keyframe: bytes) -> list[bytes]:
    """That keyframe as RTP payloads from aiortc's packetizer (what the server sends): STAP-A, then FU-As."""
    payloads = H264Encoder._packetize(H264Encoder._split_bitstream(keyframe))
    assert nal_types(payloads[0]) == ([7, 8, 6], True) and len(payloads) >= 4
    return payloads


P_FRAME = [b"\x7c\x81" + bytes(40), b"\x7c\x01" + bytes(40), b"\x7c\x41" + bytes(40)]  # a P slice in FU-As


class Feed:
    """Pushes frames into an assembler with consecutive sequence numbers (some may be lost or reordered)."""

    def __init__(self, *, keep_payloads: bool = True, first_sequence: int = 1000) -> None:
        self.assembler = KeyframeAssembler(keep_payloads=keep_payloads)
        self.sequence = first_sequence
        self.timestamp = 90_000

    def frame(
        self, payloads: list[bytes], *, lose: tuple[int, ...] = (), order: list[int] | None = None
    ) -> bool:
        """One frame (marker on its last packet); True when a push reported the first complete keyframe."""
        packets = [
            ((self.sequence + index) & 0xFFFF, index == len(payloads) - 1, payload)
            for index, payload in enumerate(payloads)
        ]
        self.sequence = (self.sequence + len(payloads)) & 0xFFFF
        self.timestamp += 3600
        indices = order if order is not None else list(range(len(payloads)))
        results = [
            self.assembler.push(packets[i][0], self.timestamp, packets[i][1], packets[i][2])
            for i in indices
            if i not in lose
        ]
        assert not any(results[:-1]), "completed before the frame's last packet"
        return bool(results) and results[-1]


def test_keyframe_found_when_joining_at_its_start(keyframe_payloads: list[bytes]) -> None:
    feed = Feed()
    assert feed.frame(keyframe_payloads)
    assert feed.assembler.complete and feed.assembler.keyframe is not None
    assert decodes_to_picture(feed.assembler.keyframe)
    assert not feed.frame(keyframe_payloads)  # only the first one is reported


def test_keyframe_found_after_joining_in_the_middle_of_another_frame(keyframe_payloads: list[bytes]) -> None:
    feed = Feed()
    assert not feed.frame(P_FRAME[1:])  # the middle and the end of a P frame
    assert feed.frame(keyframe_payloads)


@pytest.mark.parametrize(
    "lose", [(0,), (0, 1), (3,), (-1,)], ids=["parameter-sets", "joined-mid-idr", "middle", "marker"]
)
def test_incomplete_keyframe_waits_for_the_next(
    keyframe_payloads: list[bytes], lose: tuple[int, ...]
) -> None:
    feed = Feed()
    lost = tuple(index % len(keyframe_payloads) for index in lose)
    assert not feed.frame(keyframe_payloads, lose=lost)
    assert not feed.assembler.complete
    assert not feed.frame(P_FRAME)
    assert feed.frame(keyframe_payloads)
    assert feed.assembler.keyframe is not None and decodes_to_picture(feed.assembler.keyframe)


def test_keyframe_across_the_sequence_number_wrap(keyframe_payloads: list[bytes]) -> None:
    feed = Feed(first_sequence=0xFFFF - 1)
    assert feed.frame(keyframe_payloads)
    assert feed.assembler.keyframe is not None and decodes_to_picture(feed.assembler.keyframe)


def test_idr_without_parameter_sets_is_not_a_keyframe(
    keyframe: bytes, keyframe_payloads: list[bytes]
) -> None:
    feed = Feed()
    assert not feed.frame(keyframe_payloads[1:])
    idr_only = b"".join(
        b"\x00\x00\x00\x01" + nal for nal in H264Encoder._split_bitstream(keyframe) if nal[0] & 0x1F == 5
    )
    assert not decodes_to_picture(idr_only)
    assert decodes_to_picture(keyframe)
    assert not decodes_to_picture(b"not h264 at all")


def test_payloads_are_only_kept_when_asked(keyframe_payloads: list[bytes]) -> None:
    feed = Feed(keep_payloads=False)
    assert feed.frame(keyframe_payloads)
    assert feed.assembler.complete and feed.assembler.keyframe is None


@pytest.mark.parametrize("keep_payloads", [True, False])
def test_reordered_first_keyframe_is_found_whether_or_not_payloads_are_kept(
    keyframe_payloads: list[bytes], keep_payloads: bool
) -> None:
    """BUG (keep_payloads=False): without kept payloads the assembler keeps only the first payload to
    *arrive* (``payload if self.keep_payloads or not self._packets else b""`` in ``push``), then asks whether
    the frame's *lowest* sequence number starts a NAL unit, reading ``b""`` when the first two packets came
    swapped. The same packets give a time to first frame with --verify-keyframe and none without."""
    feed = Feed(keep_payloads=keep_payloads)
    order = [1, 0, *range(2, len(keyframe_payloads))]
    assert feed.frame(keyframe_payloads, order=order)


# --- counting RTP from the clear header (the fast path after the first keyframe) ---------------------------


def rtp(payload_type: int, sequence: int, ssrc: int, *, marker: bool = False) -> bytes:
    header = struct.pack(
        "!BBHII", 0x80, (0x80 if marker else 0) | payload_type, sequence, sequence * 3000, ssrc
    )
    return header + bytes(30)  # the SRTP-encrypted payload and tag, never read


def test_counting_handler_counts_rtp_and_passes_everything_else_on() -> None:
    video: dict[int, StreamStatistics] = {}  # ssrc → aiortc's receiver statistics, as its receivers keep them
    audio: dict[int, StreamStatistics] = {}
    passed_on: list[bytes] = []
    handler = _counting_datagram_handler(
        {102: (video, 90_000), 111: (audio, 48_000)}, lambda data, addr: passed_on.append(data)
    )
    address = ("127.0.0.1", 5000)
    for sequence in (65534, 65535, 0, 2):  # wraps, and 1 is lost
        handler(rtp(102, sequence, 0xA, marker=sequence == 2), address)
    handler(rtp(111, 7, 0xB, marker=True), address)  # marker + 111 = 239, outside RTCP's 192-223
    others = [
        bytes([0x80, 200]) + bytes(26),  # RTCP sender report
        bytes([0x81, 201]) + bytes(30),  # RTCP receiver report
        bytes([0x00, 0x01, 0x00, 0x00]) + bytes(16),  # STUN binding request
        bytes([0x16, 0xFE, 0xFD]) + bytes(20),  # DTLS record
        rtp(96, 1, 0xC),  # a payload type the receivers do not know
        rtp(102, 3, 0xA)[:11],  # shorter than an RTP header
    ]
    for datagram in others:
        handler(datagram, address)
    assert passed_on == others
    assert (video[0xA].packets_received, video[0xA].packets_expected) == (4, 5)
    assert (audio[0xB].packets_received, audio[0xB].packets_expected) == (1, 1)


# --- local targets and the server probe --------------------------------------------------------------------


def interface_addresses() -> set[str]:
    """This machine's interface addresses, asked of the kernel directly (not the way the tool asks)."""
    addresses = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on this interface
            addresses.add(socket.inet_ntoa(answer[20:24]))
    for line in Path("/proc/net/if_inet6").read_text().splitlines():
        addresses.add(str(ipaddress.IPv6Address(bytes.fromhex(line.split()[0]))))
    return addresses


def test_loopback_names_are_local() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert is_local_host(host), host


def test_this_machines_own_addresses_are_local() -> None:
    own = {address for address in interface_addresses() if not ipaddress.ip_address(address).is_loopback}
    assert own, "this machine has no interface address besides loopback"
    for address in own:
        assert is_local_host(address), address


def test_other_machines_are_not_local() -> None:
    own = interface_addresses()
    neighbours = {  # the next address in each of our own IPv4 networks: on our LAN, but not us
        str(
            next(
                a for a in (ipaddress.ip_address(address) + step for step in range(1, 9)) if str(a) not in own
            )
        )
        for address in own
        if ipaddress.ip_address(address).version == 4 and not ipaddress.ip_address(address).is_loopback
    }
    remote = set(REMOTE_HOSTS) | neighbours | {"10.255.255.254", "fd12:3456::1"}
    assert not remote & own
    for host in sorted(remote):
        assert not is_local_host(host), host


def test_find_listener_names_the_process_on_a_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        listener = find_listener(port)
        assert listener is not None and listener.pid == os.getpid()
    assert find_listener(port) is None


def test_process_meter_keeps_a_childs_cpu_after_it_exits() -> None:
    meter = ProcessMeter(psutil.Process())
    before = meter.read()
    busy = "import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    busy += "sys.stdout.write('x'); sys.stdout.flush(); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", busy], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.read(1) == b"x"
        during = meter.read()
    finally:
        child.kill()
        child.wait()
    after = meter.read()
    assert during.children_cpu_seconds - before.children_cpu_seconds >= 0.3
    assert during.children_rss_bytes > 0 and during.rss_bytes > 10 * 2**20
    assert after.children_cpu_seconds >= during.children_cpu_seconds  # an exited child still counts
    assert after.cpu_seconds >= during.cpu_seconds >= before.cpu_seconds
    assert after.at > during.at > before.at


def test_cpu_percent_is_of_one_core_between_two_readings() -> None:
    first = Usage(at=10.0, cpu_seconds=2.0, rss_bytes=1, children_cpu_seconds=1.0, children_rss_bytes=1)
    second = Usage(at=12.0, cpu_seconds=3.0, rss_bytes=1, children_cpu_seconds=1.5, children_rss_bytes=1)
    assert cpu_percent(first, second) == (50.0, 25.0)
    assert all(math.isfinite(value) for value in cpu_percent(first, first))


# --- the command line refuses before any traffic ----------------------------------------------------------


def run_cli(
    out: Path, *arguments: str, timeout: float = 30
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``python -m dragonfork loadtest ... --out OUT`` with HTTP sent to a closed local port as proxy."""
    closed = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    env.update(HTTP_PROXY=closed, HTTPS_PROXY=closed, ALL_PROXY=closed)
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "dragonfork", "loadtest", *arguments, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return completed, time.monotonic() - started


REFUSED = {
    "remote": (["--url", "http://192.0.2.1/api/v3/whep/cam"], "192.0.2.1 is not this machine"),
    "remote-port": (["--url", "http://198.51.100.7:8080/whep"], "198.51.100.7 is not this machine"),
    "remote-ipv6": (["--url", "https://[2001:db8::1]/whep"], "2001:db8::1 is not this machine"),
    "remote-behind-userinfo": (["--url", "http://127.0.0.1@203.0.113.9/whep"], "203.0.113.9 is not this"),
    "public": (["--url", "http://8.8.8.8/whep"], "8.8.8.8 is not this machine"),
    "not-http": (["--url", "ftp://127.0.0.1/whep"], "--url must be an http(s) URL"),
    "no-host": (["--url", "http:///whep"], "--url must be an http(s) URL"),
    "no-peers": (["--peers", "0"], "--peers must be 1-1000"),
    "too-many-peers": (["--peers", "1001"], "--peers must be 1-1000"),
    "no-duration": (["--duration", "0"], "--duration must be in (0, 3600] seconds"),
    "negative-duration": (["--url", "http://localhost:9/w", "--duration", "-1"], "--duration must be in (0"),
    "too-long": (["--duration", "3600.5"], "--duration must be in (0, 3600] seconds"),
    "nan-duration": (["--duration", "nan"], "--duration must be in (0, 3600] seconds"),
    "negative-ramp": (["--ramp", "-1"], "--ramp must be in [0, 600] seconds"),
    "too-long-ramp": (["--ramp", "inf"], "--ramp must be in [0, 600] seconds"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_cli_refuses_before_any_traffic(tmp_path: Path, case: str) -> None:
    assert not set(REMOTE_HOSTS) & interface_addresses(), "a 'remote' test address is this machine's"
    changes, message = REFUSED[case]
    defaults = {"--url": "http://[::1]:9/api/v3/whep/cam", "--peers": "2", "--duration": "1"}
    arguments = {**defaults, **dict(zip(changes[::2], changes[1::2], strict=True))}
    out = tmp_path / "out"
    completed, elapsed = run_cli(out, *[item for pair in arguments.items() for item in pair])
    assert completed.returncode == 2, completed
    assert completed.stderr.startswith(f"dragonfork loadtest: {message}"), completed.stderr
    assert completed.stdout == ""
    assert not out.exists()
    assert elapsed < 10, f"took {elapsed:.1f} s: it did more than refuse"


def test_remote_refusal_names_the_way_out(tmp_path: Path) -> None:
    completed, _ = run_cli(
        tmp_path / "out", "--url", "http://198.51.100.7/whep", "--peers", "1", "--duration", "1"
    )
    assert completed.returncode == 2
    assert "needs --allow-remote" in completed.stderr


@pytest.mark.parametrize(
    "option, value", [("--workers", "-1"), ("--timeout", "-1")], ids=["negative-workers", "negative-timeout"]
)
def test_cli_refuses_other_nonsense_numbers_too(tmp_path: Path, option: str, value: str) -> None:
    """BUG: ``cli._check_arguments`` bounds --peers, --duration and --ramp but not --workers or --timeout.
    ``--workers -1`` starts no worker and dies in ``LoadTest.join`` (ZeroDivisionError, traceback, exit 1);
    ``--timeout -1`` runs a whole load test in which every setup times out at once (exit 1). Nothing caps
    --workers either: ``--workers 5000 --peers 1`` would start 5000 Python processes (not tried here)."""
    out = tmp_path / "out"
    completed, _ = run_cli(
        out, "--url", f"http://127.0.0.1:{free_port()}/whep", "--peers", "2", "--duration", "1",
        "--ramp", "1", option, value,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert option in completed.stderr
    assert not out.exists()
