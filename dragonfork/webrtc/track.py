"""The hand-off from a Trio subscription to aiortc's sender: a track that yields pre-encoded ``av.Packet``s.

aiortc's ``RTCRtpSender`` calls ``recv()`` in its own asyncio task and, when it gets an ``av.Packet`` instead
of a decoded frame, only packetizes it (H.264 Annex B is split into NAL units, Opus passes through): no
decode, no encode per viewer. The Trio side (one task per subscription, see ``Viewer``) calls ``put()``.

Both sides run on the same thread (trio-asyncio), so the buffer is a plain deque; the only waiting is the
reader waiting for a frame (an asyncio future) and, rarely, the writer waiting for room (a Trio event) when
aiortc falls ``capacity`` frames behind. Waiting instead of dropping keeps one slow-viewer policy in one
place: the stream's subscription, which knows how to resume on a keyframe.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from fractions import Fraction

import av
import trio
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from dragonfork import metrics
from dragonfork.stream.frames import MediaFrame, MediaKind

DEFAULT_CAPACITY = 32  # frames; a keyframe-cache burst longer than this is paced by the sender, not dropped


class FrameTrack(MediaStreamTrack):
    """One outgoing track of one viewer, fed with ``MediaFrame``s of one kind."""

    def __init__(
        self,
        kind: MediaKind,
        *,
        capacity: int = DEFAULT_CAPACITY,
        on_first_frame: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.first_frame_at: float | None = None  # trio.current_time() when aiortc took the first frame
        self._capacity = capacity
        self._on_first_frame = on_first_frame
        self._frames: collections.deque[MediaFrame] = collections.deque()
        self._reader: asyncio.Future[None] | None = None
        self._room: trio.Event | None = None
        self._packets_forwarded = metrics.RTP_PACKETS_FORWARDED.labels(kind)
        self._bytes_forwarded = metrics.RTP_BYTES_FORWARDED.labels(kind)

    async def put(self, frame: MediaFrame) -> None:
        """Queue a frame for the sender (Trio side). Returns at once unless the buffer is full.

        Frames put after the track stopped are discarded: the viewer is ending.
        """
        while len(self._frames) >= self._capacity and self.readyState == "live":
            self._room = trio.Event()
            await self._room.wait()
        if self.readyState != "live":
            return
        self._frames.append(frame)
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    async def recv(self) -> av.Packet:
        """The next frame as an ``av.Packet`` (asyncio side, called by aiortc's sender)."""
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._frames:
                break
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        frame = self._frames.popleft()
        if self._room is not None:
            self._room.set()
        packet = av.Packet(frame.data)
        packet.pts = frame.timestamp
        packet.time_base = Fraction(1, frame.clock_rate)
        self._packets_forwarded.inc(frame.packet_count)
        self._bytes_forwarded.inc(frame.size)
        if self.first_frame_at is None:
            self.first_frame_at = trio.current_time()
            if self._on_first_frame is not None:
                self._on_first_frame()
        return packet

    def stop(self) -> None:
        """End the track: ``recv`` raises ``MediaStreamError`` and a waiting ``put`` returns."""
        super().stop()
        self._frames.clear()
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)
        if self._room is not None:
            self._room.set()
