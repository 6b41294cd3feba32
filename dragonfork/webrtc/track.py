"""The hand-off from a Trio subscription to aiortc's sender: a track that yields pre-encoded ``av.Packet``s.

aiortc's ``RTCRtpSender`` calls ``recv()`` in its own asyncio task and, when it gets an ``av.Packet`` instead
of a decoded frame, only packetizes it (H.264 Annex B is split into NAL units, Opus passes through): no
decode, no encode per viewer. The Trio side (one task per subscription, see ``Viewer``) calls ``put()``.

Both sides run on the same thread (trio-asyncio), so the buffer is a plain deque and ``put`` never waits.
What bounds it is time, not a frame count: when the sender has let a frame wait longer than ``max_delay``
(the server's CPU cannot keep up with every viewer), the stale frames are dropped and counted, and video
resumes at the next keyframe. A viewer may lose frames under overload; it never drifts seconds behind live.
A keyframe-cache burst is queued at once, so a new viewer's first picture does not wait for pacing.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Callable
from fractions import Fraction

import av
import trio
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from dragonfork import metrics
from dragonfork.stream.frames import MediaFrame, MediaKind

DEFAULT_MAX_DELAY = 1.0  # seconds a frame may wait for the sender before the queue is dropped


class FrameTrack(MediaStreamTrack):
    """One outgoing track of one viewer, fed with ``MediaFrame``s of one kind."""

    def __init__(
        self,
        kind: MediaKind,
        *,
        max_delay: float = DEFAULT_MAX_DELAY,
        on_first_frame: Callable[[], None] | None = None,
        on_stopped: Callable[[FrameTrack], None] | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.first_frame_at: float | None = None  # trio.current_time() when aiortc took the first frame
        self._max_delay = max_delay
        self._on_first_frame = on_first_frame
        self._on_stopped = on_stopped
        self._frames: collections.deque[tuple[MediaFrame, float]] = collections.deque()  # (frame, queued at)
        self._reader: asyncio.Future[None] | None = None
        self._packets_forwarded = metrics.RTP_PACKETS_FORWARDED.labels(kind)
        self._bytes_forwarded = metrics.RTP_BYTES_FORWARDED.labels(kind)
        self._dropped_behind = metrics.PACKETS_DROPPED.labels(kind, "viewer_behind")

    def put(self, frame: MediaFrame) -> bool:
        """Queue a frame for the sender (Trio side); never waits.

        When the oldest queued frame has waited longer than ``max_delay``, the queue is dropped first. The
        frame is then taken if it can be decoded on its own (audio, a keyframe); a video delta frame is
        refused (False) and the caller skips to the next keyframe. Frames put after the track stopped are
        discarded: the viewer is ending.
        """
        if self.readyState != "live":
            return True
        now = trio.current_time()
        if self._frames and now - self._frames[0][1] > self._max_delay:
            self._dropped_behind.inc(sum(queued.packet_count for queued, _ in self._frames))
            self._frames.clear()
            if not frame.keyframe:
                self._dropped_behind.inc(frame.packet_count)
                return False
        self._frames.append((frame, now))
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)
        return True

    @property
    def queued(self) -> int:
        """Frames waiting for the sender."""
        return len(self._frames)

    def skip(self, frame: MediaFrame) -> None:
        """Count a frame the caller dropped while waiting for a keyframe after ``put`` refused one."""
        self._dropped_behind.inc(frame.packet_count)

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
        frame, _ = self._frames.popleft()
        packet = av.Packet(frame.data)
        packet.pts = frame.timestamp
        packet.time_base = _time_base(frame.clock_rate)
        self._packets_forwarded.inc(frame.packet_count)
        self._bytes_forwarded.inc(frame.size)
        if self.first_frame_at is None:
            self.first_frame_at = trio.current_time()
            if self._on_first_frame is not None:
                self._on_first_frame()
        return packet

    def stop(self) -> None:
        """End the track: ``recv`` raises ``MediaStreamError``. aiortc calls this when its sender task ends
        (however it ends), so ``on_stopped`` tells the viewer its sender is gone."""
        if self.readyState != "live":
            return
        super().stop()
        self._frames.clear()
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)
        if self._on_stopped is not None:
            self._on_stopped(self)


@functools.cache
def _time_base(clock_rate: int) -> Fraction:
    """One ``Fraction`` per clock rate, not one per frame per viewer (this is the per-viewer hot path)."""
    return Fraction(1, clock_rate)
