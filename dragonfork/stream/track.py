"""One track of a stream (video or audio): what its publisher writes, fanned out to every subscriber.

The track knows nothing about where frames come from (FFmpeg's RTP legs, RTMP; SRT and WHIP later): a
publisher calls ``write`` with whole frames and ``lost`` when it had to drop one. Fan-out never waits: each
subscriber has a bounded memory channel and a frame that does not fit is dropped for that subscriber only. A
video subscriber that lost a frame (or joined mid-GOP) skips frames until the next keyframe so its decoder
restarts cleanly; audio needs no such care (every Opus or AAC frame decodes alone). The video track keeps a
``KeyframeCache`` so a new subscriber starts on the latest IDR at once.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable

import trio

from dragonfork import metrics
from dragonfork.stream.frames import AUDIO_CLOCK_RATE, VIDEO_CLOCK_RATE, MediaFrame, MediaKind
from dragonfork.stream.keyframe_cache import KeyframeCache


@dataclasses.dataclass(frozen=True)
class Codec:
    """What a track carries: the codec a reader must speak and its timestamp clock."""

    kind: MediaKind
    name: str
    clock_rate: int


H264 = Codec("video", "H264", VIDEO_CLOCK_RATE)
VP8 = Codec("video", "VP8", VIDEO_CLOCK_RATE)
VP9 = Codec("video", "VP9", VIDEO_CLOCK_RATE)
"""VP8 and VP9 as WHIP publishers may send them (every other reader but a Matroska one takes H.264 only)."""
OPUS = Codec("audio", "opus", AUDIO_CLOCK_RATE)
AAC = Codec("audio", "AAC", VIDEO_CLOCK_RATE)
"""AAC as RTMP and MPEG-TS publishers carry it; timestamps on the 90 kHz MPEG clock (milliseconds × 90)."""


class Subscription:
    """One reader's view of a track: a bounded channel of whole frames.

    Use it as a context manager (``with track.subscribe() as subscription:``): entering registers it (a new
    video subscriber is first sent the keyframe-cache burst, if there is one that fits), leaving unregisters
    it and closes both channel ends. ``frames`` ends (``trio.EndOfChannel``) when the track ends.
    """

    __slots__ = ("_track", "_send", "frames", "dropped_packets", "started_from_cache", "_awaiting_keyframe")

    def __init__(self, track: Track, buffer_frames: int) -> None:
        self._track = track
        self._send, self.frames = trio.open_memory_channel[MediaFrame](buffer_frames)
        self.dropped_packets = 0
        """RTP packets' worth of frames this subscriber missed (slow reader, or waiting for a keyframe)."""
        self.started_from_cache = False
        self._awaiting_keyframe = False

    def __enter__(self) -> Subscription:
        self._track._attach(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self._track._detach(self)
        self._send.close()
        self.frames.close()


class Track:
    """The frames of one kind of one stream and the subscribers they are fanned out to."""

    def __init__(
        self,
        codec: Codec,
        *,
        cache: KeyframeCache | None,
        subscriber_buffer: int,
        on_first_keyframe: Callable[[], None] | None = None,
    ) -> None:
        self.codec = codec
        self.kind: MediaKind = codec.kind
        self.subscriber_buffer = subscriber_buffer
        self._cache = cache
        self._subscribers: list[Subscription] = []
        self._ended = False
        self._on_first_keyframe = on_first_keyframe
        self._resync_after_loss = codec.kind == "video"
        self.config: bytes | None = None
        """The decoder configuration when the publisher sends it out of band (H.264: the
        AVCDecoderConfigurationRecord; AAC: the AudioSpecificConfig), for readers whose format carries it
        out of band too (RTMP, MP4). None when it only travels in band (SPS/PPS in the keyframes)."""
        self.request_keyframe: Callable[[], None] | None = None
        """Set by a publisher that can ask its encoder for a keyframe (WHIP: an RTCP PLI): called when a
        video subscriber must wait for one (no keyframe-cache burst), so it does not wait a whole GOP."""
        self.frames = 0
        self.keyframes = 0
        kind = codec.kind
        self._dropped_slow = metrics.PACKETS_DROPPED.labels(kind, "slow_viewer")
        self._dropped_awaiting_keyframe = metrics.PACKETS_DROPPED.labels(kind, "awaiting_keyframe")

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def keyframe_burst_limit(self) -> int:
        """The most packets a reader may replay from the latest keyframe on (0: no keyframe cache)."""
        return self._cache.max_packets if self._cache is not None else 0

    def subscribe(self) -> Subscription:
        """A new subscription; it receives frames once its ``with`` block is entered."""
        return Subscription(self, self.subscriber_buffer)

    # -- the publisher's side ---------------------------------------------------------------------------

    def write(self, frame: MediaFrame) -> None:
        """Publish one whole frame to every subscriber (and the keyframe cache); never waits."""
        self.frames += 1
        keyframe = frame.keyframe
        if keyframe:
            self.keyframes += 1
            if self.keyframes == 1 and self._on_first_keyframe is not None:
                self._on_first_keyframe()
        if self._cache is not None:
            self._cache.add(frame)
        packets = frame.packet_count
        slow = skipped = 0
        for subscription in self._subscribers:
            if subscription._awaiting_keyframe and not keyframe:
                subscription.dropped_packets += packets
                skipped += packets
                continue
            try:
                subscription._send.send_nowait(frame)
            except trio.WouldBlock:
                subscription.dropped_packets += packets
                subscription._awaiting_keyframe = self._resync_after_loss
                slow += packets
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the consumer closed its end; it unregisters when its ``with`` block ends
            else:
                subscription._awaiting_keyframe = False
        if slow:
            self._dropped_slow.inc(slow)
        if skipped:
            self._dropped_awaiting_keyframe.inc(skipped)

    def lost(self) -> None:
        """The publisher lost a frame: the cache and every subscriber restart at the next keyframe."""
        if self._cache is not None:
            self._cache.invalidate()
        if self._resync_after_loss:
            for subscription in self._subscribers:
                subscription._awaiting_keyframe = True

    def end(self) -> None:
        """The publisher is gone: every subscriber's ``frames`` ends, later subscribers end at once."""
        self._ended = True
        for subscription in self._subscribers:
            subscription._send.close()

    # -- subscribers --------------------------------------------------------------------------------------

    def _attach(self, subscription: Subscription) -> None:
        if self._ended:
            subscription._send.close()
            return
        if self._resync_after_loss:
            burst = self._cache.snapshot() if self._cache is not None else None
            if burst is not None and len(burst) <= self.subscriber_buffer:
                for frame in burst:
                    subscription._send.send_nowait(frame)
                subscription.started_from_cache = True
                metrics.KEYFRAME_BURSTS.inc()
            else:
                subscription._awaiting_keyframe = True
                if self.request_keyframe is not None:
                    self.request_keyframe()
        self._subscribers.append(subscription)

    def _detach(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
