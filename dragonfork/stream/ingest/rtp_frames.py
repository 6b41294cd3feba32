"""RTP packets of one track → whole frames written into that track (any RTP publisher: FFmpeg's legs, WHIP).

The publisher parses and validates its packets (its own way: FFmpeg's loopback UDP datagrams, aiortc's
decrypted SRTP) and pushes them here in arrival order: H.264 goes through the RFC 6184 depacketizer, VP8
and VP9 through theirs (``vpx.py``), every Opus packet is one frame, timestamps are unwrapped to a growing
integer. A video frame that lost a packet is dropped whole and the track resynchronises at the next keyframe
(``Track.lost``).
"""

from __future__ import annotations

from dragonfork import metrics
from dragonfork.stream.frames import MediaFrame
from dragonfork.stream.ingest.h264 import H264Depacketizer
from dragonfork.stream.ingest.rtp import RtpPacket, Unwrapper
from dragonfork.stream.ingest.vpx import VpxDepacketizer
from dragonfork.stream.track import Track


class RtpFrameWriter:
    """Writes the frames of one RTP stream into ``track`` (video: H.264/VP8/VP9, audio: one per packet)."""

    __slots__ = ("track", "clock_rate", "_timestamps", "_depacketizer", "_received_at", "_dropped_incomplete")

    def __init__(self, track: Track) -> None:
        self.track = track
        self.clock_rate = track.codec.clock_rate
        self._timestamps = Unwrapper(32)
        self._depacketizer: H264Depacketizer | VpxDepacketizer | None = None
        if track.codec.name == "H264":
            self._depacketizer = H264Depacketizer(self._publish_video, self._drop_incomplete_frame)
        elif track.kind == "video":  # VP8, VP9
            self._depacketizer = VpxDepacketizer(
                track.codec.name, self._publish_video, self._drop_incomplete_frame
            )
        self._received_at = 0.0
        self._dropped_incomplete = metrics.PACKETS_DROPPED.labels(track.kind, "incomplete_frame")

    def push(self, packet: RtpPacket, received_at: float) -> bool:
        """Add one packet (arrival order); False when its payload is not valid for the track's codec."""
        self._received_at = received_at
        depacketizer = self._depacketizer
        if depacketizer is None:
            return self._publish_audio(packet)
        return depacketizer.push(packet.sequence, packet.timestamp, packet.marker, packet.payload)

    def _publish_audio(self, packet: RtpPacket) -> bool:
        payload = packet.payload
        if not payload:
            return False
        self.track.write(
            MediaFrame(
                "audio",
                bytes(payload),
                self._timestamps.unwrap(packet.timestamp),
                self.clock_rate,
                True,  # every Opus packet decodes on its own
                1,
                len(payload),
                self._received_at,
            )
        )
        return True

    def _publish_video(
        self, data: bytes, rtp_timestamp: int, keyframe: bool, packets: int, size: int
    ) -> None:
        self.track.write(
            MediaFrame(
                "video",
                data,
                self._timestamps.unwrap(rtp_timestamp),
                self.clock_rate,
                keyframe,
                packets,
                size,
                self._received_at,
            )
        )

    def _drop_incomplete_frame(self, packets: int) -> None:
        self._dropped_incomplete.inc(packets)
        self.track.lost()
