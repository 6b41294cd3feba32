"""VP8 (RFC 7741) and VP9 (RFC 9628) depacketization: frames rebuilt from their RTP payloads, keyframes
told apart, a frame that lost a packet dropped whole."""

from __future__ import annotations

from dragonfork.stream.ingest.vpx import VpxDepacketizer, vp8_descriptor, vp9_descriptor

Frame = tuple[bytes, int, bool, int, int]


def depacketizer(codec: str) -> tuple[VpxDepacketizer, list[Frame], list[int]]:
    frames: list[Frame] = []
    dropped: list[int] = []
    return VpxDepacketizer(codec, lambda *frame: frames.append(frame), dropped.append), frames, dropped


# VP8: X=1 with a 15-bit picture id (I, M), S on a frame's first packet; P=0 in a keyframe's payload header.
VP8_KEY_START = bytes([0x90, 0x80, 0x81, 0x23]) + b"\x10\x02\x00\x9d\x01\x2a"
VP8_MORE = bytes([0x80, 0x80, 0x81, 0x23]) + b"more"
VP8_DELTA_START = bytes([0x90, 0x80, 0x81, 0x24]) + b"\x31delta"


def test_vp8_descriptors() -> None:
    assert vp8_descriptor(VP8_KEY_START) == (4, True, True)
    assert vp8_descriptor(VP8_MORE) == (4, False, False)
    assert vp8_descriptor(VP8_DELTA_START) == (4, True, False)
    assert vp8_descriptor(b"\x10") is None and vp8_descriptor(b"\x80") is None


def test_vp8_frames_are_rebuilt_and_keyframes_flagged() -> None:
    vp8, frames, dropped = depacketizer("VP8")

    assert vp8.push(1, 3000, False, VP8_KEY_START)
    assert vp8.push(2, 3000, True, VP8_MORE)
    assert vp8.push(3, 6000, True, VP8_DELTA_START)

    assert frames == [
        (VP8_KEY_START[4:] + b"more", 3000, True, 2, len(VP8_KEY_START) + len(VP8_MORE)),
        (b"\x31delta", 6000, False, 1, len(VP8_DELTA_START)),
    ]
    assert dropped == []


def test_a_frame_that_lost_a_packet_is_dropped_and_the_next_one_kept() -> None:
    vp8, frames, dropped = depacketizer("VP8")

    vp8.push(1, 3000, False, VP8_KEY_START)
    vp8.push(3, 3000, True, VP8_MORE)  # packet 2 lost
    vp8.push(4, 6000, False, VP8_MORE)  # a new frame's continuation: its first packet never came
    vp8.push(5, 6000, True, VP8_MORE)
    vp8.push(6, 9000, True, VP8_DELTA_START)

    assert [frame[1] for frame in frames] == [9000]
    assert dropped == [2, 2]


# VP9, flexible mode (as browsers send it): I with a 15-bit picture id, F; B on the first packet, E on the
# last; P=1 (inter-predicted) with one reference index.
VP9_KEY_START = bytes([0x98, 0x80, 0x01]) + b"key"  # I F B, P=0
VP9_KEY_END = bytes([0x94, 0x80, 0x01]) + b"end"  # I F E
VP9_DELTA = bytes([0xDC, 0x80, 0x02, 0x02]) + b"delta"  # I P F B E, P_DIFF 1 (N=0)


def test_vp9_descriptors_and_frames() -> None:
    assert vp9_descriptor(VP9_KEY_START) == (3, True, True)
    assert vp9_descriptor(VP9_DELTA) == (4, True, False)
    vp9, frames, dropped = depacketizer("VP9")

    vp9.push(10, 90, False, VP9_KEY_START)
    vp9.push(11, 90, True, VP9_KEY_END)
    vp9.push(12, 3090, True, VP9_DELTA)

    assert [(frame[0], frame[2]) for frame in frames] == [(b"keyend", True), (b"delta", False)]
    assert dropped == []


def test_a_vp9_scalability_structure_is_skipped() -> None:
    # V=1: one spatial layer with its resolution (Y), no picture group: N_S=0, Y=1, G=0, then 640x360.
    with_structure = bytes([0x8A, 0x80, 0x01, 0x10, 0x02, 0x80, 0x01, 0x68]) + b"key"

    assert vp9_descriptor(with_structure) == (8, True, True)
