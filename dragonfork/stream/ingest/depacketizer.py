"""What every video depacketizer shares (H.264 in ``h264.py``, VP8/VP9 in ``vpx.py``): the RTP payloads of
one stream, in arrival order, collected into whole frames, and a frame that lost a packet dropped whole.

A decoder given half a frame shows garbage, while a dropped frame lets the consumer wait for the next
keyframe and restart cleanly (``Track.lost``). Each codec's subclass parses its payloads into ``_buffer`` and
decides where a frame starts and ends; this base checks the sequence numbers (``_arrival``), counts, and
hands a frame over or drops it (``_finish``).
"""

from __future__ import annotations

from collections.abc import Callable

from dragonfork.stream.ingest.rtp import sequence_delta

IDLE = -1  # the timestamp slot between frames (RTP timestamps are never negative)

LATE_PACKET_WINDOW = 64
"""A packet up to this many sequence numbers behind the expected one is a late duplicate or reordered packet
and is ignored; a bigger jump either way is a gap (lost packets or a new sender) and resynchronises."""

FrameSink = Callable[[bytes, int, bool, int, int], None]
"""Receives ``(frame, rtp_timestamp, keyframe, packet_count, payload_bytes)`` per complete frame."""

DroppedFrameSink = Callable[[int], None]
"""Receives the number of packets of a frame dropped because it was incomplete or damaged."""


class FrameDepacketizer:
    """The frame in progress (``_buffer`` from the packets of RTP timestamp ``_timestamp``, ``IDLE`` between
    frames), whether it is ``_damaged``, and the counts of frames handed over and dropped."""

    __slots__ = (
        "_on_frame",
        "_on_frame_dropped",
        "_buffer",
        "_timestamp",
        "_expected_sequence",
        "_packets",
        "_size",
        "_keyframe",
        "_damaged",
        "frames",
        "frames_dropped",
        "late_packets",
    )

    def __init__(self, on_frame: FrameSink, on_frame_dropped: DroppedFrameSink) -> None:
        self._on_frame = on_frame
        self._on_frame_dropped = on_frame_dropped
        self._buffer = bytearray()
        self._timestamp = IDLE
        self._expected_sequence: int | None = None
        self._packets = 0
        self._size = 0
        self._keyframe = False
        self._damaged = False
        self.frames = 0
        self.frames_dropped = 0
        self.late_packets = 0

    def _arrival(self, sequence: int) -> bool | None:
        """Whether packets were lost right before ``sequence`` (a gap); None for a late duplicate or a
        reordered packet, which the caller ignores."""
        expected = self._expected_sequence
        gap = False
        if expected is not None and sequence != expected:
            if 0 < sequence_delta(expected, sequence) <= LATE_PACKET_WINDOW:
                self.late_packets += 1
                return None
            gap = True
        self._expected_sequence = (sequence + 1) & 0xFFFF
        return gap

    def _finish(self, *, complete: bool) -> None:
        """Hand over the frame in progress, unless it is not ``complete``, damaged or empty (then drop it),
        and reset for the next one."""
        good = complete and not self._damaged and bool(self._buffer)
        data = bytes(self._buffer) if good else b""
        timestamp, keyframe, packets, size = self._timestamp, self._keyframe, self._packets, self._size
        self._buffer.clear()
        self._timestamp = IDLE
        self._packets = self._size = 0
        self._keyframe = self._damaged = False
        if good:
            self.frames += 1
            self._on_frame(data, timestamp, keyframe, packets, size)
        else:
            self.frames_dropped += 1
            self._on_frame_dropped(packets)
