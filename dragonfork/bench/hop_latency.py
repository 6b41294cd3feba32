"""Server-hop latency, measured by the kernel: RTP into the source socket → the same frame out to each viewer.

Both ends of the hop are on this machine's loopback device (FFmpeg sends RTP to 127.0.0.1; viewers' ICE
pairs use this machine's interface address, which Linux routes over ``lo`` too), so one packet socket on
``lo`` sees both, stamped by the kernel (``SO_TIMESTAMPNS``) with one clock, independent of how busy the
server or the viewers are in user space:

- in: the source leg, FFmpeg → the server's video RTP port (plain RTP);
- out: every RTP packet the server sends to a viewer (SRTP: the RTP header stays in the clear), from the
  UDP ports of the server process or of its WebRTC worker processes (``--server-pid`` once for each).

A viewer's packets carry other sequence numbers and timestamps than the source's (the sender's random
offsets), but within one viewer's stream the RTP timestamp is the source's plus a constant. Keyframes are
many times the size of other frames in packets, so pairing the viewer's keyframes with the latest source
keyframe before them gives that constant (valid while the hop stays under a GOP, 2 s); then every frame of
the viewer pairs with its source frame. Per frame the hop is reported twice: last packet in → last packet out
(the frame fully forwarded) and first packet in → first packet out. A server that forwards whole frames
(dragonfork) cannot send the first packet before the last one arrived; a packet forwarder (Janus) can.

Needs root (a raw packet socket) and runs as its own process so its CPU never lands on the server's:

    python -m dragonfork.bench.hop_latency --input-port V --server-pid PID [--server-pid WORKER…] --seconds 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import psutil

from dragonfork.bench.lo_capture import (
    ANCILLARY_BYTES,
    LINK_HEADER,
    PACKET_OUTGOING,
    SKF_AD_PKTTYPE,
    Instruction,
    kernel_drops,
    kernel_ns,
    open_capture,
)
from dragonfork.loadtest.report import percentiles

SNAP_LENGTH = 96  # IP + UDP + RTP header (+ extension length word) is all we read
_VNET_HEADER = struct.Struct("=BBHHHH")  # virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_*

_ACCEPT, _DROP = 18, 19


def _filter(input_port: int, sample_mask: int) -> list[Instruction]:
    """Classic BPF after lo's link header: UDP over IPv4 or IPv6 (ICE may pair either), not the
    PACKET_OUTGOING copy (loopback shows every packet twice); everything to ``input_port``, and of the rest
    only packets whose source port has no bit of ``sample_mask`` set: a sample of the viewer streams, so that
    at many viewers the capture adds little kernel work to the server's sends."""
    return [
        (0x20, 0, 0, SKF_AD_PKTTYPE),  # 0: A = the packet's type
        (0x15, _DROP - 2, 0, PACKET_OUTGOING),  # 1: outgoing copy → drop
        (0x30, 0, 0, LINK_HEADER),  # 2: A = IP byte 0
        (0x54, 0, 0, 0xF0),  # 3: A &= 0xf0 (IP version)
        (0x15, 0, 9 - 5, 0x40),  # 4: IPv4 → 5, else → 9
        (0x30, 0, 0, LINK_HEADER + 9),  # 5: A = IPv4 protocol
        (0x15, 0, _DROP - 7, 17),  # 6: UDP → 7, else drop
        (0xB1, 0, 0, LINK_HEADER),  # 7: X = IPv4 header length
        (0x05, 0, 0, 13 - 9),  # 8: → 13
        (0x15, 0, _DROP - 10, 0x60),  # 9: IPv6 → 10, else drop
        (0x30, 0, 0, LINK_HEADER + 6),  # 10: A = IPv6 next header
        (0x15, 0, _DROP - 12, 17),  # 11: UDP → 12, else drop
        (0x01, 0, 0, 40),  # 12: X = 40 (IPv6 header)
        (0x48, 0, 0, LINK_HEADER + 2),  # 13: A = UDP destination port
        (0x15, _ACCEPT - 15, 0, input_port),  # 14: the source leg → accept
        (0x48, 0, 0, LINK_HEADER),  # 15: A = UDP source port
        (0x54, 0, 0, sample_mask),  # 16: A &= sample_mask
        (0x15, _ACCEPT - 18, _DROP - 18, 0),  # 17: sampled → accept, else drop
        (0x06, 0, 0, LINK_HEADER + SNAP_LENGTH),  # 18: accept the first SNAP_LENGTH bytes of IP
        (0x06, 0, 0, 0),  # 19: drop
    ]


_RTP = struct.Struct("!BBHII")


@dataclass(slots=True)
class Frame:
    first: int  # ns, first packet of the frame
    last: int  # ns, last packet
    packets: int


@dataclass
class Capture:
    source: dict[int, Frame] = field(default_factory=dict)  # RTP timestamp → frame (the server's input)
    viewers: dict[tuple[int, int], dict[int, Frame]] = field(default_factory=lambda: defaultdict(dict))
    packets_in: int = 0
    packets_out: int = 0
    kernel_drops: int = 0


def _add(frames: dict[int, Frame], timestamp: int, at: int, packets: int = 1) -> None:
    frame = frames.get(timestamp)
    if frame is None:
        frames[timestamp] = Frame(at, at, packets)
    else:
        frame.last = at
        frame.packets += packets


def _segments(vnet_header: bytes, udp_payload: int) -> int:
    """How many datagrams one captured packet is: a UDP-segmented send (``UDP_SEGMENT``: a run of a frame's
    packets in one call, as dragonfork's fast path sends) crosses lo whole and is cut on delivery."""
    gso_size = _VNET_HEADER.unpack_from(vnet_header)[3]
    return -(-udp_payload // gso_size) if gso_size else 1


def capture(input_port: int, server_pids: list[int], seconds: float, sample_mask: int = 0) -> Capture:
    """Record the source leg's video frames and the (sampled) viewer streams' frames for ``seconds``; the
    viewers' packets are those sent from a UDP port of one of ``server_pids`` (the server, its workers)."""
    server_ports = {
        conn.laddr.port for pid in server_pids for conn in psutil.Process(pid).net_connections(kind="udp")
    } - {input_port, input_port + 1}
    result = Capture()
    with open_capture(_filter(input_port, sample_mask), vnet_header=True) as sock:
        deadline = time.monotonic() + seconds
        source, viewers = result.source, result.viewers
        while time.monotonic() < deadline:
            try:
                captured, ancdata, _, _ = sock.recvmsg(
                    _VNET_HEADER.size + LINK_HEADER + SNAP_LENGTH, ANCILLARY_BYTES
                )
            except TimeoutError:
                continue
            data = captured[_VNET_HEADER.size + LINK_HEADER :]
            header = (data[0] & 0x0F) * 4 if data[0] >> 4 == 4 else 40  # IPv6: no extension headers here
            at = kernel_ns(ancdata)
            if len(data) < header + 8 + 12 or at is None:
                continue
            src_port, dst_port, udp_length = struct.unpack_from("!HHH", data, header)
            first, second, _, timestamp, ssrc = _RTP.unpack_from(data, header + 8)
            if first >> 6 != 2 or 192 <= second <= 223:
                continue  # not RTP (STUN, DTLS, RTCP)
            if dst_port == input_port:
                result.packets_in += 1
                _add(source, timestamp, at)
            elif src_port in server_ports:
                segments = _segments(captured, udp_length - 8)
                result.packets_out += segments
                _add(viewers[(dst_port, ssrc)], timestamp, at, segments)
        result.kernel_drops = kernel_drops(sock)
    return result


def _keyframes(frames: dict[int, Frame]) -> list[int]:
    """RTP timestamps of the frames with at least three times the median packet count."""
    if not frames:
        return []
    median = statistics.median(frame.packets for frame in frames.values())
    return [ts for ts, frame in frames.items() if frame.packets >= max(3 * median, median + 5)]


def _offset(source: dict[int, Frame], viewer: dict[int, Frame]) -> int | None:
    """The viewer's RTP timestamp minus the source's, from keyframe pairs (the most common one)."""
    source_keyframes = sorted(_keyframes(source), key=lambda ts: source[ts].first)
    votes: Counter[int] = Counter()
    for ts_out in _keyframes(viewer):
        sent = viewer[ts_out].last
        earlier = [ts for ts in source_keyframes if source[ts].first <= sent]
        if earlier:
            votes[(ts_out - earlier[-1]) & 0xFFFFFFFF] += 1
    return votes.most_common(1)[0][0] if votes else None


def analyse(result: Capture) -> dict[str, object]:
    """Per-frame hops of every viewer video stream (audio streams, one packet per timestamp, are skipped)."""
    last_hops: list[float] = []
    first_hops: list[float] = []
    streams = unmatched = 0
    largest: dict[int, tuple[int, int]] = {}  # viewer port → (packets, ssrc) of its largest stream
    for (port, ssrc), frames in result.viewers.items():
        packets = sum(frame.packets for frame in frames.values())
        if packets > largest.get(port, (0, 0))[0]:
            largest[port] = (packets, ssrc)
    for (port, ssrc), frames in result.viewers.items():
        if largest[port][1] != ssrc:
            continue  # audio, or retransmissions (RTX: a NACK's or a PLI's answer, sent again on purpose)
        if len(frames) < 10 or sum(f.packets for f in frames.values()) < 1.5 * len(frames):
            continue  # too short to judge
        streams += 1
        offset = _offset(result.source, frames)
        if offset is None:
            unmatched += 1
            continue
        pairs = [(result.source.get((ts - offset) & 0xFFFFFFFF), frame) for ts, frame in frames.items()]
        matched = [(source, frame) for source, frame in pairs if source is not None]
        agree = sum(
            abs(source.packets - frame.packets) <= max(2, source.packets // 6) for source, frame in matched
        )
        if len(matched) < 0.8 * len(pairs) or agree < 0.8 * len(matched):
            unmatched += 1
            continue
        for source, frame in matched:
            last_hops.append((frame.last - source.last) / 1e6)
            first_hops.append((frame.first - source.first) / 1e6)
    return {
        "viewer_streams": streams,
        "streams_not_aligned": unmatched,
        "frames": len(last_hops),
        "packets_in": result.packets_in,
        "packets_out": result.packets_out,
        "kernel_drops": result.kernel_drops,
        "last_packet_ms": percentiles(last_hops),
        "first_packet_ms": percentiles(first_hops),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dragonfork.bench.hop_latency")
    parser.add_argument("--input-port", type=int, required=True, help="the server's video RTP port")
    parser.add_argument(
        "--server-pid",
        type=int,
        action="append",
        required=True,
        help="a process that sends to the viewers: the server, and each of its WebRTC workers",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--sample-mask", type=int, default=0, help="keep viewer streams whose server port & MASK == 0"
    )
    args = parser.parse_args(argv)
    print(json.dumps(analyse(capture(args.input_port, args.server_pid, args.seconds, args.sample_mask))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
