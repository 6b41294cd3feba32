"""One RTP leg from FFmpeg (video or audio): read the UDP socket, rebuild frames, fan them out to subscribers.

The receive loop waits until the socket is readable and then drains every queued datagram (up to a batch
limit) with plain non-blocking ``recv_into`` into one reused buffer: a keyframe arrives as a burst of dozens
of packets, and paying a Trio scheduler round per packet would cost several times the parsing itself.

Fan-out never waits: each subscriber has a bounded memory channel and a frame that does not fit is dropped
for that subscriber only. A video subscriber that lost a frame (or joined mid-GOP) skips frames until the
next keyframe so its decoder restarts cleanly; audio needs no such care (every Opus packet decodes alone).
"""

from __future__ import annotations

import socket
import types
from typing import Final

import structlog
import trio

from dragonfork import metrics
from dragonfork.stream.frames import MediaFrame, MediaKind
from dragonfork.stream.h264 import H264Depacketizer
from dragonfork.stream.keyframe_cache import KeyframeCache
from dragonfork.stream.rtp import MAX_DATAGRAM_SIZE, RtpPacket, Unwrapper, is_rtcp, parse_rtp

log = structlog.get_logger(__name__)

DEFAULT_PAYLOAD_TYPES: Final[dict[MediaKind, int]] = {"video": 96, "audio": 111}
"""The payload types of the FFmpeg command (``-payload_type 96`` H.264, ``-payload_type 111`` Opus)."""

RECEIVE_BATCH: Final = 64
"""Datagrams handled per wake-up before yielding to other tasks."""

IDLE_REPORT_INTERVAL: Final = 1.0


class Subscription:
    """One consumer's view of a source: a bounded channel of whole frames.

    Use it as a context manager (``with source.subscribe() as subscription:``): entering registers it (a new
    video subscriber is first sent the keyframe-cache burst, if there is one that fits), leaving unregisters
    it and closes both channel ends. ``frames`` ends (``trio.EndOfChannel``) when the source stops.
    """

    __slots__ = ("_source", "_send", "frames", "dropped_packets", "started_from_cache", "_awaiting_keyframe")

    def __init__(self, source: RtpSource, buffer_frames: int) -> None:
        self._source = source
        self._send, self.frames = trio.open_memory_channel[MediaFrame](buffer_frames)
        self.dropped_packets = 0
        """RTP packets' worth of frames this subscriber missed (slow reader, or waiting for a keyframe)."""
        self.started_from_cache = False
        self._awaiting_keyframe = False

    def __enter__(self) -> Subscription:
        self._source._attach(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self._source._detach(self)
        self._send.close()
        self.frames.close()


class RtpSource:
    """Receives one RTP stream on a bound UDP socket and publishes its frames to every subscriber.

    ``cache`` (video only) keeps the frames since the latest IDR for new subscribers. Nothing in the packets
    can make ``run`` raise: a datagram that is not RTP of the expected payload type, or whose payload is not
    valid, is counted as malformed and dropped.
    """

    def __init__(
        self,
        kind: MediaKind,
        sock: socket.socket,
        *,
        process_id: str,
        clock_rate: int,
        cache: KeyframeCache | None,
        subscriber_buffer: int,
        payload_type: int | None = None,
    ) -> None:
        self.kind: MediaKind = kind
        self.process_id = process_id
        self.clock_rate = clock_rate
        self.payload_type = DEFAULT_PAYLOAD_TYPES[kind] if payload_type is None else payload_type
        self.subscriber_buffer = subscriber_buffer
        self._sock = sock
        self._cache = cache
        self._subscribers: list[Subscription] = []
        self._stopped = False
        self._timestamps = Unwrapper(32)
        self._depacketizer = (
            H264Depacketizer(self._publish_video, self._drop_incomplete_frame) if kind == "video" else None
        )
        self._received_at = 0.0  # receive time of the datagram being handled
        self.packets = 0
        """Datagrams received, including malformed ones."""
        self.bytes = 0
        """RTP payload bytes of the packets with the expected payload type."""
        self.frames = 0
        self.keyframes = 0
        self.malformed = 0
        self.last_packet_at: float | None = None
        """``trio.current_time()`` of the last datagram, or None before the first."""
        self._dropped = {
            reason: metrics.PACKETS_DROPPED.labels(kind, reason)
            for reason in ("malformed", "rtcp", "incomplete_frame", "slow_viewer", "awaiting_keyframe")
        }

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscription:
        """A new subscription; it receives frames once its ``with`` block is entered."""
        return Subscription(self, self.subscriber_buffer)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive until cancelled; subscribers' channels end when this returns."""
        active = metrics.SOURCES_ACTIVE.labels(self.kind)
        active.inc()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report_idle, trio.current_time())
                task_status.started()
                await self._receive()
        finally:
            active.dec()
            self._stopped = True
            for subscription in self._subscribers:
                subscription._send.close()

    def handle_datagram(self, datagram: memoryview | bytes, received_at: float) -> None:
        """Process one received datagram (the receive loop's per-packet step; also the benchmark's entry)."""
        self.packets += 1
        self.last_packet_at = received_at
        self._received_at = received_at
        try:
            packet = parse_rtp(datagram)
            if packet is None or packet.payload_type != self.payload_type:
                self._reject(datagram)
                return
            self.bytes += len(packet.payload)
            depacketizer = self._depacketizer
            if depacketizer is None:
                self._publish_audio(packet)
            elif not depacketizer.push(packet.sequence, packet.timestamp, packet.marker, packet.payload):
                self._count_malformed()
        except Exception:
            # A bug on this path must cost one packet, not the whole process run with all its viewers.
            log.exception("rtp_packet_failed", process=self.process_id, kind=self.kind)
            self._count_malformed()

    async def _receive(self) -> None:
        sock = self._sock
        buffer = bytearray(MAX_DATAGRAM_SIZE)
        view = memoryview(buffer)
        recv_into = sock.recv_into
        handle_datagram = self.handle_datagram
        received = metrics.SOURCE_RECEIVED_PACKETS.labels(self.kind)
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = trio.current_time()
            count = 0
            while count < RECEIVE_BATCH:
                try:
                    size = recv_into(buffer)
                except BlockingIOError:
                    break
                count += 1
                handle_datagram(view[:size], now)
            if count:
                received.inc(count)

    async def _report_idle(self, started_at: float) -> None:
        gauge = metrics.SOURCE_IDLE_SECONDS.labels(self.process_id, self.kind)
        while True:
            last = started_at if self.last_packet_at is None else self.last_packet_at
            gauge.set(trio.current_time() - last)
            await trio.sleep(IDLE_REPORT_INTERVAL)

    def _reject(self, datagram: memoryview | bytes) -> None:
        if is_rtcp(datagram):
            self._dropped["rtcp"].inc()
        else:
            self._count_malformed()

    def _count_malformed(self) -> None:
        self.malformed += 1
        self._dropped["malformed"].inc()

    def _publish_audio(self, packet: RtpPacket) -> None:
        payload = packet.payload
        if not payload:
            self._count_malformed()
            return
        frame = MediaFrame(
            "audio",
            bytes(payload),
            self._timestamps.unwrap(packet.timestamp),
            self.clock_rate,
            True,  # every Opus packet decodes on its own
            1,
            len(payload),
            self._received_at,
        )
        self.frames += 1
        self._fan_out(frame)

    def _publish_video(
        self, data: bytes, rtp_timestamp: int, keyframe: bool, packets: int, size: int
    ) -> None:
        frame = MediaFrame(
            "video",
            data,
            self._timestamps.unwrap(rtp_timestamp),
            self.clock_rate,
            keyframe,
            packets,
            size,
            self._received_at,
        )
        self.frames += 1
        if keyframe:
            self.keyframes += 1
        if self._cache is not None:
            self._cache.add(frame)
        self._fan_out(frame)

    def _drop_incomplete_frame(self, packets: int) -> None:
        """The stream lost a video frame: the cache and every subscriber restart at the next keyframe."""
        self._dropped["incomplete_frame"].inc(packets)
        if self._cache is not None:
            self._cache.invalidate()
        for subscription in self._subscribers:
            subscription._awaiting_keyframe = True

    def _fan_out(self, frame: MediaFrame) -> None:
        packets = frame.packet_count
        keyframe = frame.keyframe
        slow = skipped = 0
        resync_after_loss = self._depacketizer is not None
        for subscription in self._subscribers:
            if subscription._awaiting_keyframe and not keyframe:
                subscription.dropped_packets += packets
                skipped += packets
                continue
            try:
                subscription._send.send_nowait(frame)
            except trio.WouldBlock:
                subscription.dropped_packets += packets
                subscription._awaiting_keyframe = resync_after_loss
                slow += packets
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the consumer closed its end; it unregisters when its ``with`` block ends
            else:
                subscription._awaiting_keyframe = False
        if slow:
            self._dropped["slow_viewer"].inc(slow)
        if skipped:
            self._dropped["awaiting_keyframe"].inc(skipped)

    def _attach(self, subscription: Subscription) -> None:
        if self._stopped:
            subscription._send.close()
            return
        if self._depacketizer is not None:
            burst = self._cache.snapshot() if self._cache is not None else None
            if burst is not None and len(burst) <= self.subscriber_buffer:
                for frame in burst:
                    subscription._send.send_nowait(frame)
                subscription.started_from_cache = True
                metrics.KEYFRAME_BURSTS.inc()
            else:
                subscription._awaiting_keyframe = True
        self._subscribers.append(subscription)

    def _detach(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
