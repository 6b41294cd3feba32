"""The keyframe cache: latest IDR onwards, bounded by packets and bytes, invalid until the next IDR."""

from __future__ import annotations

import itertools

from dragonfork.stream.frames import VIDEO_CLOCK_RATE, MediaFrame
from dragonfork.stream.keyframe_cache import KeyframeCache

_timestamps = itertools.count(0, 3600)


def frame(*, keyframe: bool = False, packets: int = 1, size: int = 1000) -> MediaFrame:
    return MediaFrame(
        kind="video",
        data=b"\x00\x00\x00\x01" + bytes(size),
        timestamp=next(_timestamps),
        clock_rate=VIDEO_CLOCK_RATE,
        keyframe=keyframe,
        packet_count=packets,
        size=size,
        received_at=0.0,
    )


def test_empty_cache_and_frames_before_the_first_keyframe_give_no_snapshot() -> None:
    cache = KeyframeCache()
    assert cache.snapshot() is None

    cache.add(frame())
    cache.add(frame())

    assert cache.snapshot() is None
    assert (cache.packet_count, cache.size) == (0, 0)


def test_snapshot_holds_the_latest_keyframe_and_everything_after_it() -> None:
    cache = KeyframeCache()
    old_gop = [frame(keyframe=True, packets=10), frame(), frame()]
    new_gop = [frame(keyframe=True, packets=12, size=14_000), frame(packets=2, size=1500), frame()]

    for item in old_gop + new_gop:
        cache.add(item)

    assert cache.snapshot() == tuple(new_gop)
    assert (cache.packet_count, cache.size) == (15, 16_500)


def test_exceeding_the_packet_bound_invalidates_until_the_next_keyframe() -> None:
    cache = KeyframeCache(max_packets=10, max_bytes=1_000_000)
    cache.add(frame(keyframe=True, packets=6))
    cache.add(frame(packets=4))
    assert cache.snapshot() is not None  # exactly at the bound

    cache.add(frame(packets=1))
    assert cache.snapshot() is None
    cache.add(frame(packets=1))
    assert cache.snapshot() is None

    restart = frame(keyframe=True, packets=3)
    cache.add(restart)
    assert cache.snapshot() == (restart,)


def test_exceeding_the_byte_bound_invalidates_until_the_next_keyframe() -> None:
    cache = KeyframeCache(max_packets=512, max_bytes=10_000)
    cache.add(frame(keyframe=True, size=9_000))
    cache.add(frame(size=1_001))

    assert cache.snapshot() is None
    assert (cache.packet_count, cache.size) == (0, 0)


def test_a_keyframe_larger_than_the_bounds_is_not_cached() -> None:
    cache = KeyframeCache(max_packets=4, max_bytes=1_000_000)

    cache.add(frame(keyframe=True, packets=5))
    cache.add(frame(packets=1))

    assert cache.snapshot() is None


def test_invalidate_forgets_the_gop_until_the_next_keyframe() -> None:
    cache = KeyframeCache()
    cache.add(frame(keyframe=True))
    cache.add(frame())

    cache.invalidate()
    cache.add(frame())

    assert cache.snapshot() is None
    keyframe = frame(keyframe=True)
    cache.add(keyframe)
    assert cache.snapshot() == (keyframe,)


def test_defaults_are_512_packets_and_2_mib() -> None:
    cache = KeyframeCache()

    assert (cache.max_packets, cache.max_bytes) == (512, 2 * 1024 * 1024)
