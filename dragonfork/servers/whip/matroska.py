"""A live Matroska stream of a hub stream (H.264, VP8 or VP9 + Opus): what ``{whip,name=NAME}`` gives FFmpeg.

FFmpeg reads Matroska over HTTP without any option, and Matroska is the one common container that carries
both of WebRTC's codecs as they arrive (FLV has no Opus, MPEG-TS needs a private Opus mapping). The stream
is the EBML header, a Segment of unknown size with Info and Tracks, then Clusters of unknown size with one
SimpleBlock per frame: nothing needs to be known in advance, and nothing is ever rewritten.

H.264 travels as Matroska's ``V_MPEG4/ISO/AVC``: length-prefixed NAL units with the
AVCDecoderConfigurationRecord (built from the first keyframe's SPS/PPS) as CodecPrivate; VP8 and VP9 as
``V_VP8``/``V_VP9``, frames as they are. The writer starts at a keyframe. Opus is ``A_OPUS`` with an
``OpusHead`` (48 kHz, stereo: WebRTC's Opus). Timestamps are milliseconds on one timeline for both tracks:
each track's RTP clock is placed where its first frame arrived (WebRTC's audio and video RTP clocks have
unrelated origins), so A/V alignment is within the arrival jitter of those two frames.
"""

from __future__ import annotations

import struct

from dragonfork.stream import avc
from dragonfork.stream.frames import MediaFrame

VIDEO_TRACK = 1
AUDIO_TRACK = 2
CLUSTER_MILLISECONDS = 2_000
"""A new cluster at least this often (and at every video keyframe after it): block offsets are int16 ms."""
CODEC_IDS = {"H264": "V_MPEG4/ISO/AVC", "VP8": "V_VP8", "VP9": "V_VP9"}
UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"
OPUS_HEAD = b"OpusHead" + bytes([1, 2]) + struct.pack("<HIhB", 312, 48_000, 0, 0)
"""Version 1, 2 channels, pre-skip 312 (libopus' and browsers' encoder delay), 48 kHz, gain 0, family 0."""


def _size(length: int) -> bytes:
    """An EBML variable-size integer for a data size (8 bytes: simple and always large enough)."""
    return (0x01 << 56 | length).to_bytes(8, "big")


def _element(element_id: int, payload: bytes) -> bytes:
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big") + _size(len(payload)) + payload


def _uint(element_id: int, value: int) -> bytes:
    return _element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _float(element_id: int, value: float) -> bytes:
    return _element(element_id, struct.pack(">d", value))


def _text(element_id: int, value: str) -> bytes:
    return _element(element_id, value.encode())


class MatroskaWriter:
    """Turns the frames of one stream, in arrival order, into a live Matroska byte stream."""

    def __init__(self, *, has_audio: bool, video_codec: str = "H264") -> None:
        self.has_audio = has_audio
        self.video_codec = video_codec
        self.started = False
        self._origins: dict[str, tuple[int, float]] = {}  # kind → (first timestamp, its arrival time)
        self._start_time = 0.0  # arrival time of the first video keyframe: time 0 of the file
        self._cluster_at: int | None = None  # timestamp (ms) of the open cluster

    def write(self, frame: MediaFrame) -> bytes:
        """The bytes for ``frame``: the header first (at the first video keyframe; for H.264 one carrying
        its SPS and PPS), then blocks. Frames before it give nothing (the file starts decodable).
        """
        out = b""
        h264 = self.video_codec == "H264"
        if not self.started:
            if frame.kind != "video" or not frame.keyframe:
                return b""
            config = avc.avc_config_from_access_unit(frame.data) if h264 else b""
            if config is None:
                return b""  # a keyframe without its parameter sets: wait for one with them
            out = self._header(config)
            self.started = True
            self._start_time = frame.received_at
        milliseconds = self._milliseconds(frame)
        if milliseconds < 0:
            return out  # audio from before the file's start
        video_keyframe = frame.kind == "video" and frame.keyframe
        cluster_at = self._cluster_at
        if (
            cluster_at is None
            or milliseconds - cluster_at >= CLUSTER_MILLISECONDS
            or (video_keyframe and milliseconds != cluster_at)
            or milliseconds < cluster_at
        ):
            out += b"\x1f\x43\xb6\x75" + UNKNOWN_SIZE + _uint(0xE7, milliseconds)
            self._cluster_at = cluster_at = milliseconds
        data = avc.annex_b_to_avcc(frame.data) if frame.kind == "video" and h264 else frame.data
        track = VIDEO_TRACK if frame.kind == "video" else AUDIO_TRACK
        header = bytes([0x80 | track]) + struct.pack(
            ">hB", milliseconds - cluster_at, 0x80 if frame.keyframe else 0
        )
        return out + _element(0xA3, header + data)

    def _milliseconds(self, frame: MediaFrame) -> int:
        origin = self._origins.get(frame.kind)
        if origin is None:
            origin = self._origins[frame.kind] = (frame.timestamp, frame.received_at)
        first_timestamp, first_arrival = origin
        offset = (first_arrival - self._start_time) * 1000
        return round(offset + (frame.timestamp - first_timestamp) * 1000 / frame.clock_rate)

    def _header(self, avc_config: bytes) -> bytes:
        ebml = _element(
            0x1A45DFA3,
            _uint(0x4286, 1)
            + _uint(0x42F7, 1)
            + _uint(0x42F2, 4)
            + _uint(0x42F3, 8)
            + _text(0x4282, "matroska")
            + _uint(0x4287, 4)
            + _uint(0x4285, 2),
        )
        info = _element(
            0x1549A966, _uint(0x2AD7B1, 1_000_000) + _text(0x4D80, "dragonfork") + _text(0x5741, "dragonfork")
        )
        tracks = _element(
            0xAE,
            _uint(0xD7, VIDEO_TRACK)
            + _uint(0x73C5, VIDEO_TRACK)
            + _uint(0x83, 1)
            + _text(0x86, CODEC_IDS[self.video_codec])
            + (_element(0x63A2, avc_config) if avc_config else b""),
        )
        if self.has_audio:
            tracks += _element(
                0xAE,
                _uint(0xD7, AUDIO_TRACK)
                + _uint(0x73C5, AUDIO_TRACK)
                + _uint(0x83, 2)
                + _text(0x86, "A_OPUS")
                + _element(0x63A2, OPUS_HEAD)
                + _element(0xE1, _float(0xB5, 48_000.0) + _uint(0x9F, 2)),
            )
        return ebml + b"\x18\x53\x80\x67" + UNKNOWN_SIZE + info + _element(0x1654AE6B, tracks)
