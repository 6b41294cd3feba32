"""The media hub against a real FFmpeg: port pair, RTP publisher, fan-out, keyframe cache, teardown.

FFmpeg runs the RTP legs the supervisor builds (see tests/hub_helpers.py) on a 320x240@25 test pattern with a
2 s GOP. Every test starts its own FFmpeg and kills it on exit.
"""

from __future__ import annotations

import itertools
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import av
import pytest
import trio
from hub_helpers import FPS, LiveStream
from hub_helpers import live_stream as hub_live_stream

from dragonfork import metrics
from dragonfork.stream.frames import AUDIO_CLOCK_RATE, VIDEO_CLOCK_RATE, MediaFrame
from dragonfork.stream.ingest.h264 import NAL_IDR, NAL_PPS, NAL_SPS, START_CODE
from dragonfork.stream.ingest.ports import VIDEO_RECEIVE_BUFFER, PortRangeExhausted, bind_port_pair
from dragonfork.stream.ingest.rtp_udp import RtpIngestSettings, RtpUdpPublisher
from dragonfork.stream.stream import Stream, StreamSettings
from dragonfork.stream.track import Subscription

VIDEO_STEP = VIDEO_CLOCK_RATE // FPS  # RTP timestamp distance between consecutive video frames
AUDIO_STEP = AUDIO_CLOCK_RATE // 50  # 20 ms Opus frames


@asynccontextmanager
async def live_stream(settings: StreamSettings | None = None) -> AsyncIterator[LiveStream]:
    async with hub_live_stream(settings=settings, gop_seconds=2.0, wait_for_media=False) as live:
        yield live


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)
    assert condition(), what


async def take(subscription: Subscription, count: int) -> list[MediaFrame]:
    return [await subscription.frames.receive() for _ in range(count)]


def nal_types(annex_b: bytes) -> list[int]:
    return [nal[0] & 0x1F for nal in annex_b.split(START_CODE) if nal]


def assert_contiguous(frames: list[MediaFrame], step: int) -> None:
    gaps = [later.timestamp - earlier.timestamp for earlier, later in itertools.pairwise(frames)]
    assert gaps == [step] * len(gaps), f"timestamp steps {sorted(set(gaps))}, expected only {step}"


def dropped_packets(kind: str, reason: str) -> float:
    labels = {"kind": kind, "reason": reason}
    return metrics.REGISTRY.get_sample_value("dragonfork_webrtc_packets_dropped_total", labels) or 0.0


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_whole_frames_arrive_decode_and_every_idr_carries_sps_and_pps() -> None:
    video_frames: list[MediaFrame] = []
    audio_frames: list[MediaFrame] = []
    received_before = sample("dragonfork_webrtc_source_packets_total", kind="video")
    async with live_stream() as live:
        stream = live.stream
        assert stream.audio is not None

        with stream.video.subscribe() as video, stream.audio.subscribe() as audio, trio.fail_after(20):

            async def read_audio() -> None:
                async for frame in audio.frames:
                    audio_frames.append(frame)

            async with trio.open_nursery() as readers:
                readers.start_soon(read_audio)
                while sum(frame.keyframe for frame in video_frames) < 3:  # three GOPs: ~4.1 s
                    video_frames.append(await video.frames.receive())
                readers.cancel_scope.cancel()

        video_source, audio_source = live.video, live.audio
        print(
            f"video: {video_source.packets} packets, {video_source.bytes} payload bytes, "
            f"{stream.video.frames} frames ({stream.video.keyframes} keyframes), "
            f"{len(video_frames)} received; audio: {audio_source.packets} packets, "
            f"{stream.audio.frames} frames, {len(audio_frames)} received"
        )
        assert stream.has_media()
        assert (video_source.malformed, audio_source.malformed) == (0, 0)
        assert (video.dropped_packets, audio.dropped_packets) == (0, 0)
        received = sample("dragonfork_webrtc_source_packets_total", kind="video") - received_before
        assert received == video_source.packets
        idle = sample("dragonfork_webrtc_source_idle_seconds", process="itest", kind="video")
        assert 0 <= idle < 1

    first = video_frames[0]
    assert first.keyframe
    assert {NAL_SPS, NAL_PPS, NAL_IDR} <= set(nal_types(first.data))
    keyframes = [frame for frame in video_frames if frame.keyframe]
    for keyframe in keyframes:  # x264 defaults (no global header for RTP): parameter sets before every IDR
        types = nal_types(keyframe.data)
        assert types.index(NAL_SPS) < types.index(NAL_PPS) < types.index(NAL_IDR), types
    assert all(NAL_IDR not in nal_types(frame.data) for frame in video_frames if not frame.keyframe)
    assert_contiguous(video_frames, VIDEO_STEP)
    assert all(frame.kind == "video" and frame.clock_rate == VIDEO_CLOCK_RATE for frame in video_frames)
    assert sum(frame.packet_count for frame in video_frames) > len(video_frames)  # FU-A fragments were joined

    decoder = av.CodecContext.create("h264", "r")
    pictures = [picture for frame in video_frames for picture in decoder.decode(av.Packet(frame.data))]
    assert len(pictures) >= len(video_frames) - 2
    assert {(picture.width, picture.height) for picture in pictures} == {(320, 240)}

    assert len(audio_frames) >= 150
    assert all(frame.kind == "audio" and frame.clock_rate == AUDIO_CLOCK_RATE for frame in audio_frames)
    assert_contiguous(audio_frames, AUDIO_STEP)
    opus = av.CodecContext.create("opus", "r")
    samples = [block.samples for frame in audio_frames[:10] for block in opus.decode(av.Packet(frame.data))]
    assert samples == [AUDIO_STEP] * 10


async def test_late_subscriber_starts_from_the_keyframe_cache_burst() -> None:
    async with live_stream() as live:
        stream = live.stream
        await wait_until(lambda: stream.has_media() and stream.video.frames >= 10, "ten video frames")
        bursts_before = sample("dragonfork_webrtc_keyframe_cache_bursts_total")

        with stream.video.subscribe() as late, trio.fail_after(10):
            subscribed_at = trio.current_time()
            frames = await take(late, 40)

        assert late.started_from_cache
        assert sample("dragonfork_webrtc_keyframe_cache_bursts_total") == bursts_before + 1
        assert frames[0].keyframe
        assert frames[0].received_at < subscribed_at  # replayed, not live
        assert_contiguous(frames, VIDEO_STEP)  # the burst joins the live frames without a gap or repeat
        assert late.dropped_packets == 0
        replayed = sum(frame.received_at < subscribed_at for frame in frames)
        print(f"late subscriber: {replayed} frames replayed from the cache, then live")


async def test_without_the_cache_a_new_subscriber_waits_for_the_next_idr() -> None:
    async with live_stream(StreamSettings(keyframe_cache_enabled=False)) as live:
        stream = live.stream
        await wait_until(lambda: stream.has_media() and stream.video.frames >= 5, "five video frames")
        skipped_before = dropped_packets("video", "awaiting_keyframe")

        with stream.video.subscribe() as subscription, trio.fail_after(10):
            subscribed_at = trio.current_time()
            first = await subscription.frames.receive()

        assert not subscription.started_from_cache
        assert first.keyframe
        assert first.received_at > subscribed_at
        assert subscription.dropped_packets > 0  # the rest of the GOP it joined in, skipped
        assert dropped_packets("video", "awaiting_keyframe") - skipped_before == subscription.dropped_packets
        print(f"waited {first.received_at - subscribed_at:.2f} s for the next IDR")


async def test_slow_subscriber_loses_its_own_frames_and_resumes_at_a_keyframe() -> None:
    buffer = 16
    async with live_stream(StreamSettings(subscriber_buffer_frames=buffer)) as live:
        stream = live.stream
        await wait_until(stream.has_media, "a keyframe")
        slow_before = dropped_packets("video", "slow_viewer")

        with stream.video.subscribe() as slow, stream.video.subscribe() as fast, trio.fail_after(15):
            # The slow one reads nothing meanwhile. 30 frames into the GOP, so the next live frame is no IDR.
            fast_frames = await take(fast, 30)
            assert slow.dropped_packets > 0
            assert fast.dropped_packets == 0

            queued = [slow.frames.receive_nowait() for _ in range(buffer)]
            resumed = await slow.frames.receive()

        assert_contiguous(fast_frames, VIDEO_STEP)
        assert fast_frames[0].keyframe
        assert queued[0].keyframe
        assert_contiguous(queued, VIDEO_STEP)
        assert resumed.keyframe
        assert resumed.timestamp > queued[-1].timestamp + VIDEO_STEP
        assert dropped_packets("video", "slow_viewer") > slow_before
        print(f"slow subscriber dropped {slow.dropped_packets} packets, the fast one none")


async def test_datagrams_from_anyone_but_our_ffmpeg_never_reach_the_stream() -> None:
    """Regression for two defects: an orphaned FFmpeg of a killed server kept sending to the same ports and
    its packets interleaved with the new run's (no frame completed), and one spoofed 1,412-byte audio packet
    reached every viewer. The receiving sockets are connected to our FFmpeg's source ports now: valid RTP
    from another sender (the "orphan") and an oversize packet with payload type 111 never get in."""
    async with live_stream() as live:
        stream = live.stream
        assert stream.audio is not None
        incomplete_before = dropped_packets("video", "incomplete_frame")
        with stream.video.subscribe() as video, stream.audio.subscribe() as audio, trio.fail_after(15):
            before = await take(video, 5)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as orphan:
                for sequence in range(200):  # an interleaved H.264 stream, and the spoofed audio packet
                    fu_a = b"\x7c\x05" + bytes(900)
                    orphan_rtp = struct.pack("!BBHII", 0x80, 96, sequence, 3000 * sequence, 0xBAD) + fu_a
                    orphan.sendto(orphan_rtp, ("127.0.0.1", live.publisher.video_leg.port))
                    spoofed = struct.pack("!BBHII", 0x80, 111, sequence, 960 * sequence, 0xBAD) + bytes(1400)
                    orphan.sendto(spoofed, ("127.0.0.1", live.publisher.audio_leg.port))
                sender = orphan.getsockname()
            after = await take(video, 2 * FPS)
            audio_frames = [await audio.frames.receive() for _ in range(50)]

        assert sender[1] not in (live.publisher.video_leg.source_port, live.publisher.audio_leg.source_port)
        assert (live.video.malformed, live.video.oversize) == (0, 0)  # nothing foreign got as far as parsing
        assert (live.audio.malformed, live.audio.oversize) == (0, 0)
        assert dropped_packets("video", "incomplete_frame") == incomplete_before
        assert_contiguous(before + after, VIDEO_STEP)  # not one frame lost
        assert max(frame.size for frame in audio_frames) < 1200


async def test_cancelling_the_publisher_ends_subscribers_and_releases_the_ports() -> None:
    active_before = sample("dragonfork_webrtc_sources_active", kind="video")
    received: list[MediaFrame] = []
    channel_ended = trio.Event()
    subscribed = trio.Event()
    ports: list[int] = []
    streams: list[Stream] = []

    async def subscriber(stream: Stream) -> None:
        with stream.video.subscribe() as subscription:
            subscribed.set()
            async for frame in subscription.frames:
                received.append(frame)
        channel_ended.set()

    with trio.fail_after(15):
        async with trio.open_nursery() as outer:
            with trio.CancelScope() as run_scope:
                async with live_stream() as live:
                    ports[:] = [live.publisher.video_leg.port, live.publisher.audio_leg.port]
                    streams.append(live.stream)
                    outer.start_soon(subscriber, live.stream)
                    await subscribed.wait()
                    assert sample("dragonfork_webrtc_sources_active", kind="video") == active_before + 1
                    await wait_until(lambda: len(received) >= 5, "five frames")
                    assert live.stream.video.subscriber_count == 1
                    run_scope.cancel()
            await channel_ended.wait()

    [stream] = streams
    assert stream.video.subscriber_count == 0
    assert stream.audio is not None and stream.audio.subscriber_count == 0
    assert sample("dragonfork_webrtc_sources_active", kind="video") == active_before
    rebound = await bind_port_pair(ports[0], ports[1])
    rebound.close()
    assert [rebound.video_port, rebound.audio_port] == ports


async def test_a_publisher_without_audio_keeps_the_pair_reserved() -> None:
    publisher = await RtpUdpPublisher.bind(RtpIngestSettings(41_000, 41_999))
    try:
        assert publisher.audio_leg.port == publisher.video_leg.port + 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder, pytest.raises(OSError):
            intruder.bind(("127.0.0.1", publisher.audio_leg.port))
    finally:
        publisher.close()


# --- the port pair ----------------------------------------------------------------------------------------

PORT_TEST_FIRST = 29_000  # below the ephemeral range, away from the default 20000-20999


def udp_socket_on(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    return sock


async def test_a_taken_port_moves_on_to_the_next_pair_and_frees_the_half_it_bound() -> None:
    first = PORT_TEST_FIRST
    with udp_socket_on(first + 1):  # someone holds the audio half of the first pair
        pair = await bind_port_pair(first, first + 3)
        try:
            assert (pair.video_port, pair.audio_port) == (first + 2, first + 3)
            assert pair.video_socket.getsockname() == ("127.0.0.1", first + 2)
            assert pair.audio_socket.getsockname() == ("127.0.0.1", first + 3)
        finally:
            pair.close()
    udp_socket_on(first).close()  # the video half of the skipped pair was released again


async def test_pairs_start_even_rotate_and_are_exclusive() -> None:
    first, last = PORT_TEST_FIRST + 11, PORT_TEST_FIRST + 30  # odd start: the first pair is 12/13
    pairs = [await bind_port_pair(first, last) for _ in range(3)]
    try:
        ports = [pair.video_port for pair in pairs]
        assert len(set(ports)) == 3
        assert all(port % 2 == 0 and first <= port < last for port in ports)
        for pair in pairs:
            with pytest.raises(OSError):
                udp_socket_on(pair.video_port)
        pairs[0].close()
        again = await bind_port_pair(first, last)
        again.close()
        assert again.video_port not in ports  # the pair just released is not handed out at once
    finally:
        for pair in pairs:
            pair.close()


async def test_an_exhausted_range_names_itself() -> None:
    first = PORT_TEST_FIRST + 40
    held = await bind_port_pair(first, first + 1)
    try:
        with pytest.raises(PortRangeExhausted, match=f"{first}-{first + 1}"):
            await bind_port_pair(first, first + 1)
    finally:
        held.close()
    with pytest.raises(ValueError, match="no even/odd port pair"):
        await bind_port_pair(first + 1, first + 2)


async def test_the_video_socket_asks_for_a_large_receive_buffer() -> None:
    pair = await bind_port_pair(PORT_TEST_FIRST + 50, PORT_TEST_FIRST + 59)
    try:
        with open("/proc/sys/net/core/rmem_max") as limit:
            granted = min(VIDEO_RECEIVE_BUFFER, int(limit.read()))
        # Linux doubles the request for bookkeeping and caps it at net.core.rmem_max.
        assert pair.video_socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * granted
    finally:
        pair.close()
