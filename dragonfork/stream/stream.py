"""A live stream: the tracks one publisher writes into, and the nursery its readers run in.

A ``Stream`` is protocol-neutral: its publisher (FFmpeg's RTP legs, see ``stream.ingest.rtp_udp``, or an
RTMP publisher session in ``servers/rtmp``) writes whole frames into its tracks, and readers (WHEP viewers,
RTMP players, later HLS) subscribe to them. Its audio codec is the publisher's (Opus from the RTP legs, AAC
from RTMP), and so is its video codec (H.264; VP8 or VP9 from a WHIP publisher that sends nothing else).
``Stream.run`` is started in the publisher's nursery (a process run, a publisher session) and holds the
nursery every reader runs in (``start_reader``), so cancelling the publisher ends every reader with it, in
one place. A stream runs once: a restarted publisher makes a new one (see docs/hub.md for why).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from dragonfork.stream.keyframe_cache import DEFAULT_MAX_BYTES, DEFAULT_MAX_PACKETS, KeyframeCache
from dragonfork.stream.track import H264, OPUS, Codec, Track


@dataclasses.dataclass
class StreamSettings:
    """Hub settings shared by every stream (the WebRTC block of the configuration maps onto these)."""

    subscriber_buffer_frames: int = 128
    """Frames queued per subscriber before its frames are dropped; also the largest keyframe burst sent
    (128 covers a 2 s GOP at 60 fps, and ~2.5 s of 20 ms Opus frames)."""
    keyframe_cache_enabled: bool = True
    keyframe_cache_max_packets: int = DEFAULT_MAX_PACKETS
    keyframe_cache_max_bytes: int = DEFAULT_MAX_BYTES


class StreamEnded(Exception):
    """The stream has ended (or is ending): no reader can start on it any more."""


class Stream:
    """The video (and optional audio) track of one publisher, and the readers' nursery."""

    def __init__(
        self,
        name: str,
        settings: StreamSettings,
        *,
        has_audio: bool,
        audio_codec: Codec = OPUS,
        video_codec: Codec = H264,
    ) -> None:
        self.name = name
        self.has_audio = has_audio
        self.live = trio.Event()
        """Set at the first video keyframe: from then on a reader can start at once."""
        cache = (
            KeyframeCache(settings.keyframe_cache_max_packets, settings.keyframe_cache_max_bytes)
            if settings.keyframe_cache_enabled
            else None
        )
        buffer = settings.subscriber_buffer_frames
        self.video = Track(
            video_codec, cache=cache, subscriber_buffer=buffer, on_first_keyframe=self.live.set
        )
        self.audio = Track(audio_codec, cache=None, subscriber_buffer=buffer) if has_audio else None
        self.ending = False
        """Set by ``end``: the publisher is going; a reader that ends now ends because of that."""
        self._nursery: trio.Nursery | None = None
        self._ran = False
        self._shared_readers: dict[str, Any] = {}

    def has_media(self) -> bool:
        """True once a video keyframe has arrived, i.e. a reader could start now."""
        return self.live.is_set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the readers' nursery until cancelled; then every track ends. A stream runs once."""
        if self._ran:
            raise RuntimeError(f"stream {self.name!r} has already run; a new publisher makes a new stream")
        self._ran = True
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for track in (self.video, self.audio):
                if track is not None:
                    track.end()

    def end(self) -> None:
        """The publisher is ending (its process run stops, restarts or crashed): end every reader now.

        Setting ``ending`` before the readers see their cancellation keeps the first cause theirs: a reader
        asked to close for another reason meanwhile (a client's DELETE) still ends because the stream did.
        """
        self.ending = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def start_reader(self, reader: Callable[..., Awaitable[None]], *args: Any) -> Any:
        """Start ``reader(self, *args, task_status=...)`` in the stream's nursery; return what it reports.

        The reader then ends with the stream (its publisher stopped, restarted, crashed or was deleted). What
        the reader raises before ``task_status.started`` propagates to the caller; ``StreamEnded`` when the
        stream ends (or has ended) before the reader could start.
        """
        nursery = self._nursery
        if nursery is None or self.ending or nursery.cancel_scope.cancel_called:
            raise StreamEnded(f"stream {self.name!r} has ended")
        try:
            return await nursery.start(reader, self, *args)
        except RuntimeError:
            if nursery.cancel_scope.cancel_called:  # the stream ended while the reader was starting
                raise StreamEnded(f"stream {self.name!r} ended while a reader was starting") from None
            raise

    async def shared_reader(self, key: str, factory: Callable[[Stream], Any]) -> Any:
        """The reader registered under ``key``, made by ``factory(self)`` and started by its first user.

        For readers that serve many consumers at once (the WebRTC fan-out: one per stream, every viewer
        registers with it). The reader object has ``run(stream, task_status=...)``; it runs in the
        stream's nursery like any reader. Concurrent first users get the same object; raises
        ``StreamEnded`` like ``start_reader``.
        """
        reader = self._shared_readers.get(key)
        if reader is not None:
            return reader
        reader = self._shared_readers[key] = factory(self)
        try:
            await self.start_reader(reader.run)
        except BaseException:
            del self._shared_readers[key]
            raise
        return reader
