"""The live Matroska writer of ``{whip,name=}`` (FFmpeg reads its output: tests/integration/test_whip.py)."""

from __future__ import annotations

from dragonfork.servers.whip.matroska import OPUS_HEAD, MatroskaWriter
from dragonfork.stream.frames import AUDIO_CLOCK_RATE, VIDEO_CLOCK_RATE, MediaFrame

SPS = bytes.fromhex("6742c01ed9005a1e88")
PPS = bytes.fromhex("68ce3c80")
START = b"\x00\x00\x00\x01"
KEYFRAME = START + SPS + START + PPS + START + b"\x65\x88\x84"
DELTA = START + b"\x41\x9a\x02"
CLUSTER = b"\x1f\x43\xb6\x75"


def video(timestamp: int, data: bytes, at: float) -> MediaFrame:
    return MediaFrame("video", data, timestamp, VIDEO_CLOCK_RATE, data == KEYFRAME, 1, len(data), at)


def audio(timestamp: int, at: float) -> MediaFrame:
    return MediaFrame("audio", b"\xfc\xff\xfe", timestamp, AUDIO_CLOCK_RATE, True, 1, 3, at)


def test_nothing_is_written_before_a_keyframe_with_its_parameter_sets() -> None:
    writer = MatroskaWriter(has_audio=True)

    assert writer.write(audio(1_000, 10.0)) == b""
    assert writer.write(video(90_000, DELTA, 10.0)) == b""
    header = writer.write(video(93_600, KEYFRAME, 10.04))

    assert header.startswith(b"\x1a\x45\xdf\xa3") and b"matroska" in header
    assert b"V_MPEG4/ISO/AVC" in header and b"A_OPUS" in header and OPUS_HEAD in header
    avcc_record = bytes([1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1, 0, len(SPS)]) + SPS + bytes([1, 0, len(PPS)]) + PPS
    assert avcc_record in header
    # The keyframe's block: length-prefixed NAL units, keyframe flag set, at time 0 of a new cluster.
    assert header.endswith(
        b"\x00\x00\x80"
        + len(SPS).to_bytes(4, "big")
        + SPS
        + b"\x00\x00\x00\x04"
        + PPS
        + b"\x00\x00\x00\x03\x65\x88\x84"
    )
    assert header.count(CLUSTER) == 1


def test_both_tracks_share_one_timeline_from_their_arrival() -> None:
    writer = MatroskaWriter(has_audio=True)
    writer.write(video(500_000, KEYFRAME, 20.0))

    # Audio's RTP clock starts anywhere: its first frame is placed where it arrived (100 ms later).
    first_audio = writer.write(audio(7_777_000, 20.1))
    later_audio = writer.write(audio(7_777_000 + 960, 20.12))
    delta = writer.write(video(500_000 + 3_600, DELTA, 20.04))

    assert first_audio.endswith(b"\x82\x00\x64\x80\xfc\xff\xfe")  # track 2, +100 ms
    assert later_audio.endswith(b"\x82\x00\x78\x80\xfc\xff\xfe")  # +120 ms
    assert delta.endswith(b"\x81\x00\x28\x00\x00\x00\x00\x03\x41\x9a\x02")  # track 1, +40 ms, no key flag


def test_a_cluster_starts_at_each_later_keyframe_and_at_least_every_two_seconds() -> None:
    writer = MatroskaWriter(has_audio=False)
    writer.write(video(0, KEYFRAME, 0.0))

    assert CLUSTER not in writer.write(video(90_000, DELTA, 1.0))
    assert CLUSTER in writer.write(video(2 * 90_000, DELTA, 2.0))
    assert CLUSTER in writer.write(video(int(2.5 * 90_000), KEYFRAME, 2.5))
