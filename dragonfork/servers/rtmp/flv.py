"""FLV audio/video tag bodies (what RTMP media messages carry) ⇄ the hub's frames.

The hub keeps H.264 as Annex B access units and the codec configuration beside the track (``Track.config``:
the AVCDecoderConfigurationRecord, the AAC AudioSpecificConfig). FLV carries H.264 length-prefixed (AVCC)
with the configuration in a "sequence header" tag, and AAC as raw frames with its own sequence header; these
functions translate between the two, and ``parse_video``/``parse_audio`` refuse what we cannot carry with a
message that names the codec (``UnsupportedMedia``), including Enhanced RTMP's FourCC video (HEVC, AV1, VP9).
"""

from __future__ import annotations

import dataclasses

START_CODE = b"\x00\x00\x00\x01"
NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8

CODEC_AVC = 7
SOUND_AAC = 10
SOUND_EX_HEADER = 9
AVC_SEQUENCE_HEADER = 0
AVC_NALU = 1
AVC_END_OF_SEQUENCE = 2
AAC_SEQUENCE_HEADER = 0
AAC_RAW = 1
FRAME_KEY = 1
FRAME_INFO = 5

AAC_TAG_BYTE = 0xAF  # AAC, 44 kHz, 16 bit, stereo: fixed for AAC whatever the real stream is

_LEGACY_VIDEO = {2: "Sorenson H.263", 3: "Screen video", 4: "On2 VP6", 5: "VP6 alpha", 6: "Screen video 2"}
_SOUND_FORMATS = {
    0: "linear PCM", 1: "ADPCM", 2: "MP3", 3: "linear PCM LE", 4: "Nellymoser 16 kHz",
    5: "Nellymoser 8 kHz", 6: "Nellymoser", 7: "G.711 A-law", 8: "G.711 mu-law", 11: "Speex", 14: "MP3 8 kHz",
}  # fmt: skip


class UnsupportedMedia(ValueError):
    """A codec or tag we do not carry (the publisher is refused with this message)."""


class MalformedMedia(ValueError):
    """A tag body that is not what its header claims (the tag is dropped and counted)."""


@dataclasses.dataclass(frozen=True, slots=True)
class VideoTag:
    sequence_header: bool
    keyframe: bool
    composition_ms: int
    body: bytes
    """The AVCDecoderConfigurationRecord for a sequence header, AVCC NAL units otherwise."""


@dataclasses.dataclass(frozen=True, slots=True)
class AudioTag:
    sequence_header: bool
    body: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class AvcConfig:
    record: bytes
    nal_length_size: int
    parameter_sets: bytes
    """SPS and PPS as Annex B, prepended to keyframes that do not carry their own."""


def parse_video(payload: bytes) -> VideoTag | None:
    """One video message; None for tags that carry no frame (end of sequence, info frames)."""
    if not payload:
        raise MalformedMedia("empty video message")
    first = payload[0]
    if first & 0x80:
        fourcc = payload[1:5].decode("latin-1", "replace") if len(payload) >= 5 else "?"
        raise UnsupportedMedia(
            f"Enhanced RTMP video (FourCC {fourcc!r}) is not supported; publish H.264 (codec id 7)"
        )
    frame_type, codec = first >> 4, first & 0x0F
    if codec != CODEC_AVC:
        name = _LEGACY_VIDEO.get(codec, f"codec id {codec}")
        raise UnsupportedMedia(f"video codec {name} is not supported; publish H.264")
    if frame_type == FRAME_INFO:
        return None
    if len(payload) < 5:
        raise MalformedMedia(f"AVC video message of {len(payload)} bytes (header needs 5)")
    packet_type = payload[1]
    composition = int.from_bytes(payload[2:5], "big", signed=True)
    if packet_type == AVC_END_OF_SEQUENCE:
        return None
    if packet_type not in (AVC_SEQUENCE_HEADER, AVC_NALU):
        raise MalformedMedia(f"AVC packet type {packet_type} is not 0, 1 or 2")
    return VideoTag(packet_type == AVC_SEQUENCE_HEADER, frame_type == FRAME_KEY, composition, payload[5:])


def parse_audio(payload: bytes) -> AudioTag:
    if not payload:
        raise MalformedMedia("empty audio message")
    sound_format = payload[0] >> 4
    if sound_format == SOUND_EX_HEADER:
        raise UnsupportedMedia("Enhanced RTMP audio is not supported; publish AAC")
    if sound_format != SOUND_AAC:
        name = _SOUND_FORMATS.get(sound_format, f"sound format {sound_format}")
        raise UnsupportedMedia(f"audio codec {name} is not supported; publish AAC")
    if len(payload) < 2 or payload[1] not in (AAC_SEQUENCE_HEADER, AAC_RAW):
        raise MalformedMedia("AAC audio message without a valid AAC packet type")
    return AudioTag(payload[1] == AAC_SEQUENCE_HEADER, payload[2:])


def parse_avc_config(record: bytes) -> AvcConfig:
    """Read an AVCDecoderConfigurationRecord (ISO 14496-15): NAL length size, SPS and PPS."""
    if len(record) < 7 or record[0] != 1:
        raise MalformedMedia("AVC sequence header is not an AVCDecoderConfigurationRecord (version 1)")
    nal_length_size = (record[4] & 0x03) + 1
    if nal_length_size == 3:
        raise MalformedMedia("AVC NAL length size 3 is not valid")
    offset = 5
    sets: list[bytes] = []
    for count_mask in (0x1F, 0xFF):
        if offset >= len(record):
            raise MalformedMedia("AVC sequence header truncated before its parameter sets")
        count = record[offset] & count_mask
        offset += 1
        for _ in range(count):
            size = int.from_bytes(record[offset : offset + 2], "big")
            offset += 2
            if size == 0 or offset + size > len(record):
                raise MalformedMedia("AVC sequence header has a truncated parameter set")
            sets.append(record[offset : offset + size])
            offset += size
    if not sets:
        raise MalformedMedia("AVC sequence header has no SPS/PPS")
    return AvcConfig(record, nal_length_size, b"".join(START_CODE + nal for nal in sets))


def avcc_to_annex_b(body: bytes, config: AvcConfig) -> tuple[bytes, bool]:
    """Length-prefixed NAL units → Annex B (SPS/PPS prepended to an IDR without them); (data, keyframe)."""
    size = config.nal_length_size
    offset = 0
    parts: list[bytes] = []
    keyframe = has_sps = False
    end = len(body)
    while offset < end:
        if offset + size > end:
            raise MalformedMedia("AVC NAL unit length truncated")
        length = int.from_bytes(body[offset : offset + size], "big")
        offset += size
        if length == 0 or offset + length > end:
            raise MalformedMedia(f"AVC NAL unit of {length} bytes overruns the message")
        nal_type = body[offset] & 0x1F
        keyframe |= nal_type == NAL_IDR
        has_sps |= nal_type == NAL_SPS
        parts.append(START_CODE)
        parts.append(body[offset : offset + length])
        offset += length
    if not parts:
        raise MalformedMedia("AVC message has no NAL units")
    if keyframe and not has_sps:
        parts.insert(0, config.parameter_sets)
    return b"".join(parts), keyframe


def video_tag(keyframe: bool, composition_ms: int, avcc: bytes) -> bytes:
    return (
        bytes([0x17 if keyframe else 0x27, AVC_NALU]) + composition_ms.to_bytes(3, "big", signed=True) + avcc
    )


def video_sequence_header(record: bytes) -> bytes:
    return bytes([0x17, AVC_SEQUENCE_HEADER, 0, 0, 0]) + record


def audio_tag(raw: bytes) -> bytes:
    return bytes([AAC_TAG_BYTE, AAC_RAW]) + raw


def audio_sequence_header(config: bytes) -> bytes:
    return bytes([AAC_TAG_BYTE, AAC_SEQUENCE_HEADER]) + config
