"""``FrameTrack.put``: never waits, and bounds how far behind live a viewer can fall (trio's mock clock)."""

from __future__ import annotations

import trio
import trio.testing

from dragonfork import metrics
from dragonfork.stream.frames import MediaFrame, MediaKind
from dragonfork.webrtc.track import FrameTrack


def frame(kind: MediaKind = "video", *, keyframe: bool = False, packets: int = 3) -> MediaFrame:
    return MediaFrame(kind, b"\x00\x00\x00\x01\x41", 0, 90000, keyframe, packets, 100, 0.0)


def behind(kind: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "dragonfork_webrtc_packets_dropped_total", {"kind": kind, "reason": "viewer_behind"}
        )
        or 0.0
    )


async def test_frames_queue_without_waiting_while_the_sender_keeps_up(
    mock_clock: trio.testing.MockClock,
) -> None:
    track = FrameTrack("video", max_delay=1.0)
    for index in range(300):  # far more than any frame-count bound: time is the only limit
        assert track.put(frame(keyframe=index == 0))
        mock_clock.jump(0.002)
    assert track.queued == 300


async def test_a_video_viewer_that_falls_behind_skips_to_the_next_keyframe(
    mock_clock: trio.testing.MockClock,
) -> None:
    track = FrameTrack("video", max_delay=1.0)
    dropped_before = behind("video")
    assert track.put(frame(keyframe=True)) and track.put(frame())
    mock_clock.jump(1.5)  # the sender took nothing for 1.5 s
    assert not track.put(frame(packets=4)), "a delta frame after the drop would not decode"
    assert track.queued == 0
    assert behind("video") == dropped_before + 3 + 3 + 4
    assert track.put(frame(keyframe=True))
    assert track.queued == 1


async def test_audio_drops_the_stale_queue_and_goes_on(mock_clock: trio.testing.MockClock) -> None:
    track = FrameTrack("audio", max_delay=0.5)
    audio = frame("audio", keyframe=True, packets=1)
    for _ in range(5):
        track.put(audio)
    mock_clock.jump(0.6)
    assert track.put(audio)
    assert track.queued == 1


async def test_a_stopped_track_discards_frames(mock_clock: trio.testing.MockClock) -> None:
    track = FrameTrack("video")
    track.stop()
    assert track.put(frame(keyframe=True))
    assert track.queued == 0
