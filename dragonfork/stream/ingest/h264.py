"""H.264 RTP depacketization (RFC 6184, packetization mode 1) into Annex B access units.

FFmpeg's RTP muxer sends each access unit (one video frame) as single NAL unit packets (types 1-23), STAP-A
aggregates (24, e.g. SPS + PPS [+ SEI] before an IDR) and FU-A fragments (28) of slices larger than the packet
size; the marker bit is set on the last packet of the access unit. The depacketizer rebuilds the access unit
as Annex B (``00 00 00 01`` before every NAL unit), which is what decoders and aiortc's H.264 packetizer take.

An access unit that lost a packet is dropped whole (``depacketizer.py``).
"""

from __future__ import annotations

from dragonfork.stream.ingest.depacketizer import IDLE, DroppedFrameSink, FrameDepacketizer, FrameSink

NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
STAP_A = 24
FU_A = 28

START_CODE = b"\x00\x00\x00\x01"


class H264Depacketizer(FrameDepacketizer):
    """Turns the RTP payloads of one H.264 stream, in arrival order, into complete Annex B access units.

    ``push`` never raises on payload contents: it returns False for a payload that is not valid RFC 6184
    (the access unit it belongs to is then dropped). An access unit ends on the marker bit, or, in case the
    marker is missing, when a packet with a new timestamp arrives. A sequence gap damages the access unit in
    progress and the one the next packet belongs to (the lost packets may have started it), and both are
    dropped. ``keyframe`` is true when the access unit holds an IDR slice, whether sent as a single NAL unit,
    inside a STAP-A (usually after the SPS and PPS) or as FU-A fragments.
    """

    __slots__ = ("_in_fragment",)

    def __init__(self, on_access_unit: FrameSink, on_frame_dropped: DroppedFrameSink) -> None:
        super().__init__(on_access_unit, on_frame_dropped)
        self._in_fragment = False

    def push(self, sequence: int, timestamp: int, marker: bool, payload: bytes | memoryview) -> bool:
        """Add one RTP packet's payload; returns False when the payload is not valid H.264 RTP."""
        gap = self._arrival(sequence)
        if gap is None:
            return True
        if timestamp != self._timestamp:
            if self._timestamp != IDLE:
                self._damaged |= gap
                self._end_access_unit()
            self._timestamp = timestamp
            self._damaged = gap
        elif gap:
            self._damaged = True

        self._packets += 1
        self._size += len(payload)
        well_formed = self._append(payload)
        if not well_formed:
            self._damaged = True
        if marker:
            self._end_access_unit()
        return well_formed

    def _end_access_unit(self) -> None:
        complete = not self._in_fragment  # a fragmented NAL unit whose end was lost
        self._in_fragment = False
        self._finish(complete=complete)

    def _append(self, payload: bytes | memoryview) -> bool:
        if not payload:
            return False
        header = payload[0]
        nal_type = header & 0x1F
        if nal_type == FU_A:
            return self._append_fragment(payload, header)
        if self._in_fragment:
            # A new NAL unit while a fragmented one is open: the fragment's end was lost.
            self._damaged = True
            self._in_fragment = False
        if 1 <= nal_type <= 23:
            self._buffer += START_CODE
            self._buffer += payload
            if nal_type == NAL_IDR:
                self._keyframe = True
            return True
        if nal_type == STAP_A:
            return self._append_aggregate(payload)
        return False  # 0 and 25-31 (STAP-B, MTAP, FU-B, reserved) are not valid in packetization mode 1

    def _append_fragment(self, payload: bytes | memoryview, indicator: int) -> bool:
        if len(payload) < 3:
            return False
        fu_header = payload[1]
        if fu_header & 0x80:  # start of a fragmented NAL unit
            inner_type = fu_header & 0x1F
            if fu_header & 0x40 or not 1 <= inner_type <= 23:
                return False  # start and end in one FU, or a fragmented aggregate: both forbidden
            if self._in_fragment:
                self._damaged = True  # the previous fragmented NAL unit never ended
            self._buffer += START_CODE
            self._buffer.append((indicator & 0xE0) | inner_type)
            if inner_type == NAL_IDR:
                self._keyframe = True
            self._in_fragment = True
        elif not self._in_fragment:
            self._damaged = True  # a continuation whose start was lost
            return True
        self._buffer += payload[2:]
        if fu_header & 0x40:
            self._in_fragment = False
        return True

    def _append_aggregate(self, payload: bytes | memoryview) -> bool:
        size = len(payload)
        offset = 1
        while offset < size:
            if offset + 2 > size:
                return False
            end = offset + 2 + ((payload[offset] << 8) | payload[offset + 1])
            offset += 2
            if end == offset or end > size:
                return False
            nal_type = payload[offset] & 0x1F
            if not 1 <= nal_type <= 23:
                return False
            self._buffer += START_CODE
            self._buffer += payload[offset:end]
            if nal_type == NAL_IDR:
                self._keyframe = True
            offset = end
        return size > 1
