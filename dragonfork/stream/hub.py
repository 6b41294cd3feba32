"""The media of one FFmpeg run: its reserved port pair and the RTP sources reading it.

This module is the package's front door for the process and webrtc layers. A ``MediaStream`` is bound
before FFmpeg starts (so the ports are FFmpeg's to send to) and run in the process run's nursery; cancelling
that nursery stops both sources, ends every subscriber's channel and releases the ports. A restarted FFmpeg
gets a fresh ``MediaStream`` (and a different port pair).
"""

from __future__ import annotations

import dataclasses

import trio

from dragonfork.stream.frames import AUDIO_CLOCK_RATE, VIDEO_CLOCK_RATE
from dragonfork.stream.keyframe_cache import DEFAULT_MAX_BYTES, DEFAULT_MAX_PACKETS, KeyframeCache
from dragonfork.stream.ports import PortPair, PortRangeExhausted, bind_port_pair
from dragonfork.stream.source import RtpSource, Subscription

__all__ = ["MediaStream", "PortRangeExhausted", "RtpSource", "StreamSettings", "Subscription"]


@dataclasses.dataclass
class StreamSettings:
    """Media-hub settings (the WebRTC block of the configuration maps onto these)."""

    port_first: int = 20_000
    port_last: int = 20_999
    subscriber_buffer_frames: int = 128
    """Frames queued per subscriber before its frames are dropped; also the largest keyframe burst sent
    (128 covers a 2 s GOP at 60 fps, and ~2.5 s of 20 ms Opus frames)."""
    keyframe_cache_enabled: bool = True
    keyframe_cache_max_packets: int = DEFAULT_MAX_PACKETS
    keyframe_cache_max_bytes: int = DEFAULT_MAX_BYTES


class MediaStream:
    """The video (and optional audio) RTP sources of one FFmpeg run of one process.

    The audio port is bound even without audio so the pair stays reserved as a whole.
    """

    def __init__(
        self, process_id: str, settings: StreamSettings, ports: PortPair, *, has_audio: bool
    ) -> None:
        self.process_id = process_id
        self.settings = settings
        self.has_audio = has_audio
        self._ports = ports
        self._running = False
        cache = (
            KeyframeCache(settings.keyframe_cache_max_packets, settings.keyframe_cache_max_bytes)
            if settings.keyframe_cache_enabled
            else None
        )
        self.video = RtpSource(
            "video",
            ports.video_socket,
            process_id=process_id,
            clock_rate=VIDEO_CLOCK_RATE,
            cache=cache,
            subscriber_buffer=settings.subscriber_buffer_frames,
        )
        self.audio = (
            RtpSource(
                "audio",
                ports.audio_socket,
                process_id=process_id,
                clock_rate=AUDIO_CLOCK_RATE,
                cache=None,
                subscriber_buffer=settings.subscriber_buffer_frames,
            )
            if has_audio
            else None
        )

    @classmethod
    async def bind(cls, process_id: str, settings: StreamSettings, *, has_audio: bool) -> MediaStream:
        """Reserve a port pair from the configured range (raises ``PortRangeExhausted``)."""
        ports = await bind_port_pair(settings.port_first, settings.port_last)
        return cls(process_id, settings, ports, has_audio=has_audio)

    @property
    def video_port(self) -> int:
        return self._ports.video_port

    @property
    def audio_port(self) -> int:
        return self._ports.audio_port

    def has_media(self) -> bool:
        """True once a video keyframe has arrived, i.e. a viewer could start now."""
        return self.video.keyframes > 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the sources until cancelled, then release the ports. A stream runs once."""
        if self._running:
            raise RuntimeError(
                f"the media stream of process {self.process_id!r} has already run; bind a new one"
            )
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.video.run)
                if self.audio is not None:
                    await nursery.start(self.audio.run)
                task_status.started()
        finally:
            self.close()

    def close(self) -> None:
        """Release the ports (idempotent); for a stream that was bound but never run, e.g. FFmpeg failed."""
        self._ports.close()
