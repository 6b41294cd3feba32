"""The frames from the latest IDR access unit up to now, so a new viewer can start decoding at once.

WebRTC viewers' keyframe requests (PLI/FIR) cannot reach an encoder on the pre-encoded path, so without this
cache a viewer joining just after a keyframe would wait a whole GOP for a picture. Replaying the frames since
the last IDR gives it a decodable start and brings it to the live frame right away.
"""

from __future__ import annotations

from dragonfork.stream.frames import MediaFrame

DEFAULT_MAX_PACKETS = 512
DEFAULT_MAX_BYTES = 2 * 1024 * 1024


class KeyframeCache:
    """Holds one GOP prefix: an IDR access unit and every frame after it, within packet and byte bounds.

    The bounds count what the frames arrived in (``MediaFrame.packet_count`` and ``.size``), so they also
    bound the burst a new viewer is sent. A frame that would exceed a bound invalidates the cache until the
    next keyframe: a burst missing its tail is fine, but one missing a middle frame is undecodable, and
    keeping an ever older prefix would only delay viewers.
    """

    __slots__ = ("max_packets", "max_bytes", "_frames", "_packets", "_bytes", "_valid")

    def __init__(self, max_packets: int = DEFAULT_MAX_PACKETS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self._frames: list[MediaFrame] = []
        self._packets = 0
        self._bytes = 0
        self._valid = False

    def add(self, frame: MediaFrame) -> None:
        """Record the next frame of the stream (every frame, in order)."""
        if frame.keyframe:
            self._frames.clear()
            self._packets = 0
            self._bytes = 0
            self._valid = True
        elif not self._valid:
            return
        if self._packets + frame.packet_count > self.max_packets or self._bytes + frame.size > self.max_bytes:
            self.invalidate()
            return
        self._frames.append(frame)
        self._packets += frame.packet_count
        self._bytes += frame.size

    def invalidate(self) -> None:
        """Forget everything until the next keyframe (used when the stream lost a frame)."""
        self._frames.clear()
        self._packets = 0
        self._bytes = 0
        self._valid = False

    def snapshot(self) -> tuple[MediaFrame, ...] | None:
        """The cached frames, keyframe first; None when the cache is invalid or holds nothing."""
        if not self._valid or not self._frames:
            return None
        return tuple(self._frames)

    @property
    def packet_count(self) -> int:
        return self._packets

    @property
    def size(self) -> int:
        return self._bytes
