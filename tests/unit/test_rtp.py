"""RTP header parsing, wrap-around helpers, and the source's per-datagram path fed with hostile input."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dragonfork import metrics
from dragonfork.stream.frames import MediaKind
from dragonfork.stream.ingest.h264 import START_CODE
from dragonfork.stream.ingest.rtp import Unwrapper, is_rtcp, parse_rtp, sequence_delta
from dragonfork.stream.ingest.rtp_udp import RTP_PACKET_SIZE, RtpReceiver
from dragonfork.stream.keyframe_cache import KeyframeCache
from dragonfork.stream.track import H264, OPUS, Track


def rtp_packet(
    payload: bytes = b"\x41\x9a",
    *,
    payload_type: int = 96,
    sequence: int = 1,
    timestamp: int = 90_000,
    ssrc: int = 0x11223344,
    marker: bool = False,
    csrcs: int = 0,
    extension_words: int | None = None,
    padding: int = 0,
    version: int = 2,
) -> bytes:
    """An RTP packet built by hand (RFC 3550 section 5.1)."""
    first = version << 6 | (0x20 if padding else 0) | (0x10 if extension_words is not None else 0) | csrcs
    second = (0x80 if marker else 0) | payload_type
    header = struct.pack("!BBHII", first, second, sequence, timestamp, ssrc)
    header += b"".join(struct.pack("!I", 0xC0000000 + index) for index in range(csrcs))
    if extension_words is not None:
        header += struct.pack("!HH", 0xBEDE, extension_words) + bytes(4 * extension_words)
    tail = bytes(padding - 1) + bytes([padding]) if padding else b""
    return header + payload + tail


def test_parse_reads_the_fixed_header_fields() -> None:
    packet = parse_rtp(
        rtp_packet(b"\x65\x88", payload_type=96, sequence=65535, timestamp=4_000_000_000, marker=True)
    )

    assert packet is not None
    assert (packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc, packet.marker) == (
        96,
        65535,
        4_000_000_000,
        0x11223344,
        True,
    )
    assert bytes(packet.payload) == b"\x65\x88"


@pytest.mark.parametrize(
    ("options", "payload"),
    [
        ({"csrcs": 3}, b"\x41\x01\x02"),
        ({"extension_words": 2}, b"\x41\x01"),
        ({"extension_words": 0}, b"\x41"),
        ({"padding": 4}, b"\x41\x01\x02"),
        ({"padding": 1}, b"\x7c\x85"),
        ({"csrcs": 15, "extension_words": 1, "padding": 3}, b"\x41"),
        ({}, b""),
    ],
)
def test_parse_skips_csrcs_extension_and_padding(options: dict[str, Any], payload: bytes) -> None:
    packet = parse_rtp(rtp_packet(payload, **options))

    assert packet is not None
    assert bytes(packet.payload) == payload


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        rtp_packet()[:11],
        rtp_packet(version=1),
        rtp_packet(version=0),
        rtp_packet(version=3),
        rtp_packet(b"", csrcs=1)[:15],  # CSRC list runs past the end
        rtp_packet(b"", extension_words=0)[:14],  # extension header cut short
        rtp_packet(b"", extension_words=3)[:20],  # extension length beyond the datagram
        rtp_packet(b"\x41", padding=1)[:-1] + b"\x00",  # padding count 0
        rtp_packet(b"\x41", padding=2)[:-1] + b"\x09",  # padding count larger than what follows the header
    ],
)
def test_parse_rejects_malformed_datagrams(datagram: bytes) -> None:
    assert parse_rtp(datagram) is None


def test_rtcp_is_told_apart_from_rtp() -> None:
    sender_report = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x11223344, 1, 2, 3, 4, 5)

    assert is_rtcp(sender_report)
    assert not is_rtcp(rtp_packet(payload_type=96, marker=True))
    assert not is_rtcp(rtp_packet(payload_type=111))
    assert not is_rtcp(b"garbage!")


@pytest.mark.parametrize(
    ("newer", "older", "delta"),
    [(5, 5, 0), (0, 65535, 1), (65535, 0, -1), (10, 65530, 16), (32767, 0, 32767), (32768, 0, -32768)],
)
def test_sequence_delta_wraps_at_16_bits(newer: int, older: int, delta: int) -> None:
    assert sequence_delta(newer, older) == delta


def test_unwrapper_counts_on_across_the_wrap_and_back_for_reordering() -> None:
    sequences = Unwrapper(16)
    assert [sequences.unwrap(value) for value in (65534, 65535, 0, 1, 0, 2)] == [
        65534,
        65535,
        65536,
        65537,
        65536,
        65538,
    ]

    timestamps = Unwrapper(32)
    step = 3600
    start = (1 << 32) - 2 * step
    raw = [(start + index * step) & 0xFFFFFFFF for index in range(5)]
    assert [timestamps.unwrap(value) for value in raw] == [start + index * step for index in range(5)]


@given(st.binary(max_size=200))
def test_parse_never_raises_on_random_bytes(datagram: bytes) -> None:
    packet = parse_rtp(datagram)

    if packet is not None:
        assert len(packet.payload) <= len(datagram) - 12


@given(
    payload=st.binary(max_size=64),
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    csrcs=st.integers(0, 15),
    extension_words=st.none() | st.integers(0, 5),
    padding=st.integers(0, 255),
)
def test_parse_round_trips_every_header_layout(
    payload: bytes,
    payload_type: int,
    sequence: int,
    timestamp: int,
    marker: bool,
    csrcs: int,
    extension_words: int | None,
    padding: int,
) -> None:
    datagram = rtp_packet(
        payload,
        payload_type=payload_type,
        sequence=sequence,
        timestamp=timestamp,
        marker=marker,
        csrcs=csrcs,
        extension_words=extension_words,
        padding=padding,
    )

    packet = parse_rtp(memoryview(datagram))

    assert packet is not None
    assert (packet.payload_type, packet.sequence, packet.timestamp, packet.marker) == (
        payload_type,
        sequence,
        timestamp,
        marker,
    )
    assert bytes(packet.payload) == payload


# --- the source's per-datagram path ----------------------------------------------------------------------


def dropped_packets(kind: MediaKind, reason: str) -> float:
    labels = {"kind": kind, "reason": reason}
    return metrics.REGISTRY.get_sample_value("dragonfork_webrtc_packets_dropped_total", labels) or 0.0


def make_source(kind: MediaKind, sock: socket.socket) -> RtpReceiver:
    """A receiver writing into a track of its own (the socket is never read: datagrams are handed in)."""
    codec = H264 if kind == "video" else OPUS
    track = Track(codec, cache=KeyframeCache() if kind == "video" else None, subscriber_buffer=8)
    return RtpReceiver(track, sock, stream_name="test-rtp")


def valid_video_packets(sequence: int, timestamp: int) -> list[bytes]:
    """One keyframe access unit: STAP-A with SPS and PPS, then an IDR slice in two FU-A fragments."""
    stap_a = b"\x78" + b"\x00\x03\x67\x42\xc0" + b"\x00\x02\x68\xce"
    return [
        rtp_packet(stap_a, sequence=sequence, timestamp=timestamp),
        rtp_packet(b"\x7c\x85" + bytes(50), sequence=(sequence + 1) & 0xFFFF, timestamp=timestamp),
        rtp_packet(
            b"\x7c\x45" + bytes(20), sequence=(sequence + 2) & 0xFFFF, timestamp=timestamp, marker=True
        ),
    ]


def good_datagrams(kind: MediaKind) -> list[bytes]:
    """A valid stream to send after hostile input: 30 keyframe access units (video) or one Opus packet.

    Thirty access units span more sequence numbers than the late-packet window, so whatever sequence number
    the hostile packets left the depacketizer expecting, it resynchronises and publishes the later ones.
    """
    if kind == "audio":
        return [rtp_packet(b"\xfc\x01", payload_type=111)]
    return [
        datagram
        for index in range(30)
        for datagram in valid_video_packets(1000 + 3 * index, 1_234_567 + 3000 * index)
    ]


hostile_datagrams = st.lists(
    st.one_of(
        st.binary(max_size=80),
        st.builds(
            rtp_packet,
            st.binary(max_size=40),
            payload_type=st.sampled_from([96, 111, 0, 72]),
            sequence=st.integers(0, 0xFFFF),
            timestamp=st.integers(0, 0xFFFFFFFF),
            marker=st.booleans(),
        ),
        st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 60)).map(
            lambda args: valid_video_packets(args[0], args[1])[args[2] % 3][: args[2]]
        ),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(datagrams=hostile_datagrams, kind=st.sampled_from(["video", "audio"]))
def test_source_survives_random_and_truncated_datagrams(datagrams: list[bytes], kind: MediaKind) -> None:
    """Whatever arrives on the port, the source counts it, never raises, and keeps publishing good frames."""
    malformed_before = dropped_packets(kind, "malformed")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        source = make_source(kind, sock)
        with source.track.subscribe() as subscription:
            for index, datagram in enumerate(datagrams):
                source.handle_datagram(memoryview(datagram), float(index))
            good = good_datagrams(kind)
            for datagram in good:
                source.handle_datagram(datagram, 99.0)

            assert source.packets == len(datagrams) + len(good)
            assert source.malformed <= len(datagrams)
            malformed_after = dropped_packets(kind, "malformed")
            assert malformed_after - malformed_before == source.malformed
            received = []
            while True:
                try:
                    received.append(subscription.frames.receive_nowait())
                except trio.WouldBlock:
                    break
    assert all(frame.kind == kind for frame in received)
    if kind == "video":
        assert all(frame.data.startswith(START_CODE) for frame in received)
        assert source.track.keyframes >= 1
    else:
        assert source.track.frames >= 1


@pytest.mark.parametrize("kind", ["video", "audio"])
def test_source_counts_garbage_and_foreign_payload_types_as_malformed(kind: MediaKind) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        source = make_source(kind, sock)
        source.handle_datagram(b"garbage", 1.0)
        source.handle_datagram(rtp_packet(b"\x41", payload_type=0), 2.0)
        source.handle_datagram(struct.pack("!BBHIIIIII", 0x80, 200, 6, 1, 2, 3, 4, 5, 6), 3.0)  # RTCP SR

    assert (source.packets, source.malformed, source.track.frames) == (3, 2, 0)
    assert source.last_packet_at == 3.0


def test_an_oversize_audio_packet_is_dropped_before_it_reaches_a_viewer() -> None:
    """Regression: one 1,412-byte datagram with payload type 111 was forwarded whole, and aiortc's SRTP step
    ("packet is too long") ended the audio sender of every viewer. Anything above FFmpeg's ``-pkt_size`` is
    now counted and dropped; packets that fit still flow."""
    oversize_before = dropped_packets("audio", "oversize")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        source = make_source("audio", sock)
        with source.track.subscribe() as subscription:
            spoofed = rtp_packet(bytes(1400), payload_type=111)
            assert len(spoofed) == 1412
            source.handle_datagram(spoofed, 1.0)
            largest = rtp_packet(bytes(RTP_PACKET_SIZE - 12), payload_type=111)
            source.handle_datagram(largest, 2.0)
            frames = [subscription.frames.receive_nowait()]
            with pytest.raises(trio.WouldBlock):
                subscription.frames.receive_nowait()
    assert (source.oversize, source.malformed, source.track.frames) == (1, 0, 1)
    assert frames[0].size == RTP_PACKET_SIZE - 12
    assert dropped_packets("audio", "oversize") - oversize_before == 1
