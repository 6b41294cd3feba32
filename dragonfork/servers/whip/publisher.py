"""One WHIP publisher: an aiortc peer connection that receives one stream and publishes it into the hub.

``WhipPublisher.run`` is started in the WHIP server's nursery and reports the SDP answer through
``task_status.started``; everything before that (offer checks, the answer with every candidate) runs in
the caller's task, so a bad offer raises out of ``nursery.start`` as the client's 4xx. After the answer the
publisher lists its ``Stream`` in the directory under its name (``StreamDirectory.run``, in its own
nursery: the stream and every reader of it live inside the publisher's scope), waits for ICE+DTLS, and
writes what arrives into the stream's tracks: RTP packets are taken from aiortc before it decodes them
(``webrtc/rtp_tap.py``) and rebuilt into frames by the hub's own depacketizer (``RtpFrameWriter``).

A reader that starts without a keyframe (no keyframe-cache burst) makes the publisher send an RTCP PLI,
so FFmpeg reading the stream does not wait for the publisher's next GOP. Until the stream's first keyframe
has arrived the publisher asks for one every ``KEYFRAME_REQUEST_INTERVAL`` too: a browser sends a keyframe
as it starts and then only when asked, and readers wait for the stream to be live before they subscribe, so
a lost first keyframe would otherwise leave the stream never live. The publisher ends on DELETE, when
the peer closes or fails, or after ``idle_timeout`` seconds without media; its stream and readers end with
it (FFmpeg reading it sees the end of its input). An exception after the answer is logged with its id,
counted (``dragonfork_failures_total{component="whip_publisher"}``) and ends that publisher only.
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
import time
from typing import Any

import structlog
import trio
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.sdp import SessionDescription
from trio_asyncio import aio_as_trio

from dragonfork import metrics
from dragonfork.stream.directory import StreamDirectory, StreamNameTaken
from dragonfork.stream.ingest.rtp import RtpPacket
from dragonfork.stream.ingest.rtp_frames import RtpFrameWriter
from dragonfork.stream.stream import Stream, StreamSettings
from dragonfork.stream.track import H264, VP8, VP9
from dragonfork.webrtc import rtp_tap
from dragonfork.webrtc.peer import (
    ConnectionStates,
    add_trickled_candidates,
    close_peer_connection,
    leaf_type,
    negotiate,
    new_peer_connection,
)
from dragonfork.webrtc.sdp import (
    OfferLimits,
    PublisherOffer,
    advertise_addresses,
    answer_publisher,
    parse_trickle_fragment,
    validate_publisher_offer,
)

log = structlog.get_logger(__name__)

PROTOCOL = "whip"
KEYFRAME_REQUEST_INTERVAL = 0.5
"""Seconds between two PLIs at most: readers starting together share one keyframe."""
KINDS = ("video", "audio")
VIDEO_CODECS = {codec.name: codec for codec in (H264, VP8, VP9)}


class PublisherState(enum.StrEnum):
    ANSWERING = "answering"
    CONNECTING = "connecting"
    LIVE = "live"  # connected, media flowing into the stream
    CLOSED = "closed"


class EndReason(enum.StrEnum):
    """Why a publisher ended (label of ``dragonfork_whip_publishers_closed_total``)."""

    DELETE = "delete"
    PEER_CLOSED = "peer_closed"
    ICE_FAILED = "ice_failed"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    IDLE = "idle"
    ERROR = "error"
    SERVER_STOPPED = "server_stopped"


class AnswerTimeout(Exception):
    """The answer (with every candidate) was not ready within ``handshake_timeout`` (504)."""


@dataclasses.dataclass(frozen=True)
class PublisherSettings:
    stream: StreamSettings = dataclasses.field(default_factory=StreamSettings)
    handshake_timeout: float = 10.0
    idle_timeout: float = 10.0
    ice_servers: list[dict[str, str]] = dataclasses.field(default_factory=list)
    public_ips: list[str] = dataclasses.field(default_factory=list)
    offer_limits: OfferLimits = dataclasses.field(default_factory=OfferLimits.default)


class WhipPublisher:
    """A WHIP session. Create it, start ``run`` with ``nursery.start``, then PATCH/DELETE through it."""

    def __init__(self, name: str, settings: PublisherSettings, *, remote: str = "") -> None:
        self.id = secrets.token_urlsafe(24)
        self.name = name
        self.remote = remote
        """The publisher's address as its HTTP request came (the media may come from another of its own)."""
        self.settings = settings
        self.state = PublisherState.ANSWERING
        self.end_reason: EndReason | None = None
        self.created_at = time.time()
        self.since = trio.current_time()
        self.bytes_received = 0
        self.packets_received = 0
        self.entity_tag = '""'  # the session's ETag, set with the answer (PATCH If-Match compares it)
        self._scope = trio.CancelScope()
        self._offer: PublisherOffer | None = None
        self._pc: RTCPeerConnection | None = None
        self._pc_states: ConnectionStates | None = None
        self._last_packet_at = 0.0
        self._trickled = 0
        self._keyframe_wanted = trio.Event()
        self._video_ssrc: int | None = None
        self._video_receiver: RTCRtpReceiver | None = None
        self._bytes = metrics.INGEST_BYTES.labels(PROTOCOL)
        self._packets = {kind: metrics.INGEST_PACKETS.labels(PROTOCOL, kind) for kind in KINDS}

    def close(self, reason: EndReason = EndReason.DELETE) -> None:
        """End the session (idempotent; the first reason is kept)."""
        if self.end_reason is None:
            self.end_reason = reason
        self._scope.cancel()

    def traffic(self) -> tuple[int, int]:
        """(received, sent) bytes so far, the session collector's counter (media flows in only)."""
        return self.bytes_received, 0

    async def run(
        self, directory: StreamDirectory, offer_sdp: str, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Answer ``offer_sdp`` (``task_status.started(answer_sdp)``), then publish until the session ends.

        Raises before ``started``: ``OfferRejected`` (400/406), ``AnswerTimeout``, ``StreamNameTaken``.
        """
        settings = self.settings
        offer = self._offer = validate_publisher_offer(offer_sdp, settings.offer_limits)
        deadline = trio.current_time() + settings.handshake_timeout
        stream = Stream(
            self.name,
            settings.stream,
            has_audio=offer.offer.has_audio,
            video_codec=VIDEO_CODECS[offer.video_codec],
        )
        pc = self._pc = new_peer_connection(settings.ice_servers)
        self._pc_states = ConnectionStates(pc)
        answered = False
        try:
            with self._scope:
                try:
                    with trio.fail_at(deadline):
                        answer = await self._answer(pc, offer, stream)
                except trio.TooSlowError:
                    raise AnswerTimeout(
                        f"no answer within webrtc.handshake_timeout_seconds ({settings.handshake_timeout} s)"
                    ) from None
                name_taken = False
                async with trio.open_nursery() as nursery:
                    try:
                        await nursery.start(directory.run, stream)
                    except StreamNameTaken:
                        name_taken = True  # raised below, outside the nursery (no exception group)
                    else:
                        answered = True
                        self.state = PublisherState.CONNECTING
                        task_status.started(answer)
                        nursery.start_soon(self._request_keyframes)
                        if await self._connect(pc, deadline):
                            await self._publish(pc, stream)
                        nursery.cancel_scope.cancel()
                if name_taken:
                    raise StreamNameTaken(f"a stream named {self.name!r} is already published")
        except Exception as exc:
            if not answered:
                raise  # the caller answers the offer with it
            self.end_reason = self.end_reason or EndReason.ERROR
            log.exception("whip_publisher_failed", publisher=self.id, name=self.name)
            metrics.FAILURES.labels("whip_publisher", leaf_type(exc)).inc()
        finally:
            stream.end()
            self.state = PublisherState.CLOSED
            await close_peer_connection(pc, publisher=self.id, name=self.name)
            if answered:
                reason = self.end_reason or EndReason.SERVER_STOPPED
                self.end_reason = reason
                metrics.WHIP_PUBLISHERS_CLOSED.labels(reason.value).inc()
                log.info(
                    "whip_publisher_closed",
                    publisher=self.id,
                    name=self.name,
                    reason=reason.value,
                    bytes_received=self.bytes_received,
                )

    async def add_remote_candidates(self, sdpfrag: str, *, if_match_sent: bool) -> None:
        """Apply a trickle-ICE PATCH body (RFC 8840). ICE restarts: 428 without If-Match, else 422."""
        limits = self.settings.offer_limits
        offer, pc = self._offer, self._pc
        if offer is None or pc is None or self.state is PublisherState.CLOSED:
            parse_trickle_fragment(sdpfrag, limits)  # a malformed fragment is still a 400
            return
        self._trickled = await add_trickled_candidates(
            pc, offer.offer, sdpfrag, limits, trickled_so_far=self._trickled, if_match_sent=if_match_sent
        )

    # --- the steps of run() ----------------------------------------------------------------------------

    async def _answer(self, pc: RTCPeerConnection, offer: PublisherOffer, stream: Stream) -> str:
        receivers: dict[str, RTCRtpReceiver] = {}
        mime_types = {"video": offer.mime_type, "audio": "audio/opus"}
        for kind in KINDS if offer.offer.has_audio else ("video",):
            transceiver = pc.addTransceiver(kind, direction="recvonly")
            rtp_tap.drop_receive_bitrate_estimator(transceiver.receiver)  # the tap never feeds it
            capabilities = RTCRtpReceiver.getCapabilities(kind)
            assert capabilities is not None  # aiortc knows both kinds
            transceiver.setCodecPreferences(
                [c for c in capabilities.codecs if c.mimeType.lower() in (mime_types[kind], "video/rtx")]
            )
            receivers[kind] = transceiver.receiver
        negotiated = await negotiate(pc, offer.offer, publisher=self.id, name=self.name)
        for media in SessionDescription.parse(negotiated).media:
            track = stream.video if media.kind == "video" else stream.audio
            if track is None or media.kind not in receivers:
                continue
            payload_types = {
                codec.payloadType
                for codec in media.rtp.codecs
                if codec.mimeType.lower() == mime_types[media.kind] and codec.payloadType is not None
            }
            rtp_tap.tap(receivers[media.kind], self._packet_sink(RtpFrameWriter(track), payload_types))
        self._video_receiver = receivers["video"]
        stream.video.request_keyframe = self._want_keyframe
        return advertise_addresses(answer_publisher(negotiated, offer), self.settings.public_ips)

    def _packet_sink(self, frames: RtpFrameWriter, payload_types: set[int]) -> rtp_tap.PacketSink:
        kind = frames.track.kind
        packets = self._packets[kind]
        dropped = metrics.PACKETS_DROPPED.labels(kind, "malformed")

        def sink(packet: RtpPacket, size: int) -> None:
            if packet.payload_type not in payload_types:
                return  # retransmissions (we never ask for any) and padding-only probes
            now = trio.current_time()
            self._last_packet_at = now
            self.bytes_received += size
            self.packets_received += 1
            self._bytes.inc(size)
            packets.inc()
            if kind == "video":
                self._video_ssrc = packet.ssrc
            try:
                if not frames.push(packet, now):
                    dropped.inc()
            except Exception:
                # A bug on this path must cost one packet, not the publisher with all its readers.
                log.exception("whip_packet_failed", publisher=self.id, name=self.name, kind=kind)
                metrics.FAILURES.labels("rtp_packet", "exception").inc()

        return sink

    async def _connect(self, pc: RTCPeerConnection, deadline: float) -> bool:
        """Wait for ICE+DTLS until the deadline; True when connected, else the publisher is closed."""
        state = "timeout"
        with trio.move_on_at(deadline):
            state = await self._wait_for_pc_state({"connected", "failed", "closed"})
        if state != "connected":
            self.close(EndReason.ICE_FAILED if state == "failed" else EndReason.HANDSHAKE_TIMEOUT)
            return False
        self.state = PublisherState.LIVE
        self.since = self._last_packet_at = trio.current_time()
        metrics.INGEST_PUBLISHERS.labels(PROTOCOL).inc()
        return True

    async def _publish(self, pc: RTCPeerConnection, stream: Stream) -> None:
        """Media flows in through the taps; watch the connection and the silence until either ends it."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_pc_state, pc)
                nursery.start_soon(self._ask_for_the_first_keyframe, stream)
                idle_timeout = self.settings.idle_timeout
                while True:
                    await trio.sleep(min(1.0, idle_timeout))
                    if trio.current_time() - self._last_packet_at > idle_timeout:
                        self.close(EndReason.IDLE)
                        return
        finally:
            metrics.INGEST_PUBLISHERS.labels(PROTOCOL).dec()

    async def _watch_pc_state(self, pc: RTCPeerConnection) -> None:
        state = await self._wait_for_pc_state({"failed", "closed"})
        self.close(EndReason.ICE_FAILED if state == "failed" else EndReason.PEER_CLOSED)

    async def _request_keyframes(self) -> None:
        """Send a PLI whenever a reader is waiting for a keyframe, at most one per interval."""
        while True:
            await self._keyframe_wanted.wait()
            self._keyframe_wanted = trio.Event()
            receiver, ssrc = self._video_receiver, self._video_ssrc
            if receiver is not None and ssrc is not None:
                await aio_as_trio(rtp_tap.request_keyframe)(receiver, ssrc)
                metrics.WHIP_KEYFRAME_REQUESTS.inc()
            await trio.sleep(KEYFRAME_REQUEST_INTERVAL)

    async def _ask_for_the_first_keyframe(self, stream: Stream) -> None:
        """Want a keyframe every interval until the stream has its first one (the publisher's own may be
        lost, and nothing reads the stream before it is live)."""
        while True:
            with trio.move_on_after(KEYFRAME_REQUEST_INTERVAL):
                await stream.live.wait()
                return
            self._want_keyframe()

    def _want_keyframe(self) -> None:
        self._keyframe_wanted.set()

    async def _wait_for_pc_state(self, states: set[str]) -> str:
        assert self._pc_states is not None  # set with the peer connection, before anything waits
        return await self._pc_states.wait_for(states)
