"""A viewer's peer connection has no receive-side bitrate estimator (drop_receive_bitrate_estimator)."""

from __future__ import annotations

import asyncio
import gc

from aiortc import RTCPeerConnection
from aiortc.mediastreams import VideoStreamTrack
from aiortc.rate import RateBucket

from dragonfork.webrtc.rtp_tap import drop_receive_bitrate_estimator


def _rate_buckets() -> int:
    """Live buckets only: a previous test's peer connection may still be uncollected garbage."""
    gc.collect()
    return sum(isinstance(thing, RateBucket) for thing in gc.get_objects())


async def _new_buckets_of_a_sendonly_video_transceiver(drop: bool) -> int:
    before = _rate_buckets()
    pc = RTCPeerConnection()
    try:
        transceiver = pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        if drop:
            drop_receive_bitrate_estimator(transceiver.receiver)
        return _rate_buckets() - before
    finally:
        await pc.close()


def test_aiortc_still_gives_a_sendonly_video_transceiver_a_bitrate_estimator() -> None:
    # The premise: if aiortc stops doing this, the helper (and this test) can go.
    assert asyncio.run(_new_buckets_of_a_sendonly_video_transceiver(drop=False)) >= 1000


def test_the_viewer_drops_it() -> None:
    assert asyncio.run(_new_buckets_of_a_sendonly_video_transceiver(drop=True)) == 0
