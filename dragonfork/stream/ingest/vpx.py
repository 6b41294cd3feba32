"""VP8 (RFC 7741) and VP9 (RFC 9628) RTP depacketization into whole frames.

Each RTP payload starts with a payload descriptor, then a piece of the frame. A frame starts on the packet
whose descriptor says so (VP8: S=1 with partition index 0; VP9: B=1) and ends on the RTP marker bit (VP9
also says so with E=1). The frame's bytes are the pieces without their descriptors. A VP8 frame is a
keyframe when the first byte of its payload header has P=0 (RFC 7741 section 4.3); a VP9 frame when its
first packet's descriptor has P=0 (not inter-predicted) and it starts a frame. As with H.264, a frame that
lost a packet is dropped whole (a sequence gap, a continuation without its start; ``depacketizer.py``), so
the track resyncs at the next keyframe.
"""

from __future__ import annotations

from dragonfork.stream.ingest.depacketizer import IDLE, DroppedFrameSink, FrameDepacketizer, FrameSink


def vp8_descriptor(payload: bytes | memoryview) -> tuple[int, bool, bool] | None:
    """(descriptor size, starts a frame, keyframe) of a VP8 payload; None when malformed."""
    size = len(payload)
    if size < 1:
        return None
    first = payload[0]
    offset = 1
    if first & 0x80:  # X: extension byte
        if size < 2:
            return None
        extension = payload[1]
        offset = 2
        if extension & 0x80:  # I: picture id, 7 or 15 bits
            if offset >= size:
                return None
            offset += 2 if payload[offset] & 0x80 else 1
        if extension & 0x40:  # L: TL0PICIDX
            offset += 1
        if extension & 0x30:  # T or K: TID/Y/KEYIDX
            offset += 1
    if offset >= size:
        return None
    starts = bool(first & 0x10) and first & 0x07 == 0
    keyframe = starts and not payload[offset] & 0x01
    return offset, starts, keyframe


def vp9_descriptor(payload: bytes | memoryview) -> tuple[int, bool, bool] | None:
    """(descriptor size, starts a frame, keyframe) of a VP9 payload; None when malformed."""
    size = len(payload)
    if size < 1:
        return None
    first = payload[0]
    picture_id, inter, layers, flexible = first & 0x80, first & 0x40, first & 0x20, first & 0x10
    begins, scalability = bool(first & 0x08), first & 0x02
    offset = 1
    if picture_id:
        if offset >= size:
            return None
        offset += 2 if payload[offset] & 0x80 else 1
    if layers:
        offset += 1 if flexible else 2  # TID/U/SID/D, plus TL0PICIDX in non-flexible mode
    if flexible and inter:
        for _ in range(3):  # up to 3 reference indices, each with N (another follows)
            if offset >= size:
                return None
            more = payload[offset] & 0x01
            offset += 1
            if not more:
                break
    if scalability:
        if offset >= size:
            return None
        structure = payload[offset]
        offset += 1
        spatial_layers = (structure >> 5) + 1
        if structure & 0x10:  # Y: a resolution per spatial layer
            offset += 4 * spatial_layers
        if structure & 0x08:  # G: picture group description
            if offset >= size:
                return None
            groups = payload[offset]
            offset += 1
            for _ in range(groups):
                if offset >= size:
                    return None
                references = (payload[offset] >> 2) & 0x03
                offset += 1 + references
    if offset >= size:
        return None
    return offset, begins, begins and not inter


class VpxDepacketizer(FrameDepacketizer):
    """Turns the RTP payloads of one VP8 or VP9 stream, in arrival order, into whole frames."""

    __slots__ = ("_descriptor",)

    def __init__(self, codec: str, on_frame: FrameSink, on_frame_dropped: DroppedFrameSink) -> None:
        super().__init__(on_frame, on_frame_dropped)
        self._descriptor = vp8_descriptor if codec == "VP8" else vp9_descriptor

    def push(self, sequence: int, timestamp: int, marker: bool, payload: bytes | memoryview) -> bool:
        """Add one RTP packet's payload; returns False when the payload descriptor is malformed."""
        gap = self._arrival(sequence)
        if gap is None:
            return True
        described = self._descriptor(payload)
        if described is None:
            self._damaged = True
            return False
        offset, starts, keyframe = described
        if starts or timestamp != self._timestamp:
            if self._timestamp != IDLE:
                self._finish(complete=False)  # a frame without its last packet
            self._timestamp, self._keyframe = timestamp, keyframe
            self._damaged = not starts  # a continuation whose start was lost
        elif gap:
            self._damaged = True
        self._buffer += payload[offset:]
        self._packets += 1
        self._size += len(payload)
        if marker:
            self._finish(complete=True)
        return True
