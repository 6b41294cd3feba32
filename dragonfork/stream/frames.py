"""The unit that flows from a stream to its subscribers: one complete, already-encoded media frame."""

from __future__ import annotations

import dataclasses
from typing import Literal

MediaKind = Literal["video", "audio"]

VIDEO_CLOCK_RATE = 90_000
AUDIO_CLOCK_RATE = 48_000


@dataclasses.dataclass(frozen=True, slots=True)
class MediaFrame:
    """One access unit as FFmpeg produced it, depacketized once per stream and shared by every viewer.

    ``data`` is Annex B (``00 00 00 01`` + NAL unit, repeated) for H.264 and the raw codec frame for audio
    (an Opus packet, or an AAC frame without ADTS header: its configuration is ``Track.config``).
    ``timestamp`` is the RTP timestamp unwrapped to a monotonically growing integer in ``clock_rate`` units,
    so a viewer can hand it to aiortc as ``pts`` with ``time_base = 1/clock_rate``.
    ``packet_count`` and ``size`` are the RTP packets and payload bytes the frame arrived in (for metrics and
    the keyframe-cache bounds). ``keyframe`` is true for an H.264 access unit containing an IDR slice.
    ``timestamp`` is the decode time; ``composition_offset`` (same clock) is how much later the frame is
    shown, non-zero only for streams with B-frames whose publisher says so (RTMP's composition time).
    """

    kind: MediaKind
    data: bytes
    timestamp: int
    clock_rate: int
    keyframe: bool
    packet_count: int
    size: int
    received_at: float  # trio.current_time() when the last packet of the frame arrived
    composition_offset: int = 0
