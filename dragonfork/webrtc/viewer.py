"""One WHEP viewer: an aiortc peer connection for SDP, ICE and DTLS, living in a Trio task.

``Viewer.run`` is started as a reader of the stream (``Stream.start_reader``: in the stream's nursery, inside
its publisher's scope) and reports the SDP answer through
``task_status.started``; everything before that (offer checks, answer, candidate gathering) runs in the
caller's task, so a bad offer or a slow answer raises out of ``nursery.start``. After the answer the viewer
waits for ICE+DTLS, then receives the stream until it is cancelled (the process stopped: its scope ends every
viewer), closed (``close(reason)``: DELETE), or the peer went away. Media goes one of two ways:

- the fast path (``webrtc.fast_path``, the default): the viewer registers with the stream's fan-out
  (``webrtc/fanout.py``), which packetizes once per stream and sends to every viewer in one loop, with the
  viewer's own SRTP keys over its nominated ICE socket; RTCP (sender reports, NACK, PLI) is the fan-out's too.
- aiortc's own senders (the fallback, for a nominated pair the fast path cannot send on, e.g. a TURN relay,
  or with ``fast_path`` off): frames from the stream's subscriptions go into ``FrameTrack``s.

Both announce the stream's SSRCs in the answer, which is built before the path is known.
However it ends, the ``finally`` closes the peer connection, which sends DTLS close_notify so the browser sees
the end at once, and ends aiortc's background tasks.

A viewer is a failure boundary: after its answer, an exception in it is logged with its id, counted
(``dragonfork_failures_total{component="viewer"}``) and ends that viewer only (reason ``error``). aiortc's
sender task per track swallows its own exceptions and stops the track; a viewer whose sender ended while the
connection is still up closes itself (reason ``sender_failed``) instead of staying connected with a dead
track. The close reason is the first cause: a stream that ends (process stop) is ``process_stopped`` even
when the client's DELETE arrives while the connection is closing.

aiortc reports no "disconnected" connection state (only failed, after ~30 s of failed consent checks), so
a peer that vanishes without a close_notify is detected by its silence: the receiver reports (RTCP RR) that
every WebRTC receiver sends about once a second stop arriving. On the fast path the stream's fan-out watches
every viewer in one sweep (``fanout.Liveness``): a viewer that sent no RTCP for two seconds (less with a short
grace) is asked for consent (an RFC 7675 STUN check on its pair) every sweep, every viewer about every 5 s
(these checks replace aioice's own consent loop); an answer counts as hearing from it, so a player that sends
no receiver reports but answers consent checks stays. ``disconnect_grace`` seconds of silence close it, as
do 30 s without an answered check. Its socket is read by a Trio task of the viewer
(``aiortc_internals.PairReader``): RTCP and the answers to our checks go straight to the fan-out, the rest
(STUN requests, DTLS) to aioice and aiortc.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import ipaddress
import secrets
import time
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio
from aiortc import RTCPeerConnection
from trio_asyncio import aio_as_trio

from dragonfork import metrics
from dragonfork.webrtc.aiortc_internals import (
    PairReader,
    RtcpTakeover,
    SrtpSocket,
    nominated_socket,
    outgoing_srtp,
    set_sender_ssrc,
)
from dragonfork.webrtc.fanout import (
    LIVENESS_INTERVAL,
    FastViewer,
    Liveness,
    PacketLayout,
    Retransmission,
    StreamFanout,
    TrackSink,
)
from dragonfork.webrtc.peer import (
    ConnectionStates,
    add_trickled_candidates,
    close_peer_connection,
    leaf_type,
    negotiate,
    new_peer_connection,
)
from dragonfork.webrtc.rtp_tap import drop_receive_bitrate_estimator
from dragonfork.webrtc.sdp import (
    Offer,
    OfferLimits,
    advertise_addresses,
    answered_media,
    parse_trickle_fragment,
    preferred_codecs,
    validate_offer,
)
from dragonfork.webrtc.track import FrameTrack

if TYPE_CHECKING:
    from dragonfork.stream.stream import Stream
    from dragonfork.stream.track import Subscription, Track

log = structlog.get_logger(__name__)

FANOUT = "webrtc"  # the stream's shared reader for fast-path viewers


class ViewerState(enum.StrEnum):
    NEW = "new"
    ANSWERING = "answering"  # offer accepted, answer being built
    CONNECTING = "connecting"  # answer sent, waiting for ICE+DTLS
    CONNECTED = "connected"  # forwarding media
    CLOSED = "closed"


class CloseReason(enum.StrEnum):
    """Why a viewer ended (label of ``VIEWERS_CLOSED``)."""

    DELETE = "delete"  # the client's WHEP DELETE, or the server closed the session
    HANDSHAKE_TIMEOUT = "handshake_timeout"  # not connected within handshake_timeout of the offer
    ICE_FAILED = "ice_failed"  # aiortc reported connection state "failed"
    ICE_DISCONNECTED = "ice_disconnected"  # no receiver report for longer than disconnect_grace
    PEER_CLOSED = "peer_closed"  # the peer closed the connection (DTLS close_notify)
    STREAM_ENDED = "stream_ended"  # the stream's source closed the subscription
    PROCESS_STOPPED = "process_stopped"  # the stream's scope was cancelled (stop, restart, delete, crash)
    SENDER_FAILED = "sender_failed"  # aiortc's sender of a track ended while the connection was up
    ERROR = "error"  # an unexpected exception (logged)
    WORKER_FAILED = "worker_failed"  # the WebRTC worker process holding the viewer failed (servers/whep)


_PC_END_REASONS = {"failed": CloseReason.ICE_FAILED, "closed": CloseReason.PEER_CLOSED}


class AnswerTimeout(Exception):
    """The answer could not be built within ``handshake_timeout`` (the WHEP layer answers 504)."""


class ViewerClosed(Exception):
    """``close()`` was called while the answer was being built; there is no session to answer with."""


@dataclasses.dataclass
class ViewerSettings:
    """WebRTC settings for every viewer (the ``webrtc`` block of the server configuration)."""

    handshake_timeout: float = 10.0  # seconds from the offer to ICE+DTLS connected (the answer included)
    disconnect_grace: float = 5.0  # seconds without receiver reports before a connected viewer is dropped
    # STUN/TURN servers as {"urls", "username", "credential"}; none by default (no public STUN on closed nets)
    ice_servers: list[dict[str, str]] = dataclasses.field(default_factory=list)
    public_ips: list[str] = dataclasses.field(default_factory=list)  # added as host candidates to answers
    max_delay: float = 1.0  # seconds a frame may wait for the sender before the viewer skips ahead
    fast_path: bool = True  # send through the stream's fan-out (else always through aiortc's senders)
    offer_limits: OfferLimits = dataclasses.field(default_factory=OfferLimits.default)

    def __post_init__(self) -> None:
        for ip in self.public_ips:
            ipaddress.ip_address(ip)  # raises ValueError for anything but an IP address


class Viewer:
    """A WHEP session. Create it, start ``run`` with ``nursery.start``, then PATCH/DELETE through it."""

    def __init__(
        self, process_id: str, settings: ViewerSettings | None = None, *, records_end: bool = True
    ) -> None:
        self.id = secrets.token_urlsafe(24)
        self.process_id = process_id
        self.settings = settings or ViewerSettings()
        self.records_end = records_end
        """Count and log its end (``record_viewer_end``); False in a WebRTC worker, whose server records
        it with the reason its session table decides."""
        self._stats_bytes_sent = 0  # aiortc path: RTP sent, from its stats (read once a second)
        self.created_at = time.time()
        self.state = ViewerState.NEW
        self.close_reason: CloseReason | None = None
        self.setup_seconds: float | None = None  # offer → connected
        self.time_to_first_frame_seconds: float | None = None  # offer → first video frame handed to aiortc
        self._scope = trio.CancelScope()
        self._offered_at = 0.0
        self._offer: Offer | None = None
        self._pc: RTCPeerConnection | None = None
        self._pc_states: ConnectionStates | None = None
        self._closing = False  # in ``run``'s finally: our own pc.close() stops the senders
        self._stream: Stream | None = None
        self._remote_candidates = 0  # trickled so far, bounded by offer_limits.max_candidates
        self._rtcp: list[RtcpTakeover] = []  # one per sender
        self._fast: FastViewer | None = None
        self.entity_tag = '""'  # the session's WHEP ETag, set with the answer (PATCH If-Match compares it)

    def close(self, reason: CloseReason = CloseReason.DELETE) -> None:
        """End the session (idempotent; the first reason is kept, and an ending stream comes first)."""
        if self.close_reason is None:
            stream = self._stream
            self.close_reason = CloseReason.PROCESS_STOPPED if stream and stream.ending else reason
        self._scope.cancel()

    async def run(
        self, stream: Stream, offer_sdp: str, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Answer ``offer_sdp`` (``task_status.started(answer_sdp)``), then serve the viewer until it ends.

        Raises before ``started``: ``OfferRejected`` (400/406), ``AnswerTimeout`` (504), ``ViewerClosed``.
        """
        self._offered_at = trio.current_time()
        self._stream = stream
        offer = self._offer = validate_offer(
            offer_sdp, stream_has_audio=stream.has_audio, limits=self.settings.offer_limits
        )
        fanout: StreamFanout | None = None
        if self.settings.fast_path:
            fanout = await stream.shared_reader(FANOUT, StreamFanout)
        deadline = self._offered_at + self.settings.handshake_timeout
        max_delay = self.settings.max_delay
        video = FrameTrack(
            "video",
            max_delay=max_delay,
            on_first_frame=self._on_first_video_frame,
            on_stopped=self._on_track_stopped,
        )
        feeds = [(video, stream.video)]
        if stream.audio is not None and offer.has_audio:
            audio = FrameTrack("audio", max_delay=max_delay, on_stopped=self._on_track_stopped)
            feeds.append((audio, stream.audio))
        answered = False
        pc = self._pc = new_peer_connection(self.settings.ice_servers)
        self._pc_states = ConnectionStates(pc)
        try:
            with self._scope:
                self.state = ViewerState.ANSWERING
                try:
                    with trio.fail_at(deadline):
                        answer = await self._answer(pc, offer, [track for track, _ in feeds], fanout)
                except trio.TooSlowError:
                    raise AnswerTimeout(
                        f"no answer within handshake_timeout ({self.settings.handshake_timeout} s)"
                    ) from None
                self.state = ViewerState.CONNECTING
                answered = True
                metrics.VIEWERS_ACTIVE.labels(self.process_id).inc()
                task_status.started(answer)
                if await self._connect(pc, deadline):
                    if fanout is not None and (fast := self._fast_viewer(pc, answer, fanout)):
                        await self._serve_fast(pc, fanout, *fast)
                    else:
                        for takeover in self._rtcp:
                            takeover.decide(fast_path=False)
                        await self._forward(pc, feeds, video)
            if not answered:
                raise ViewerClosed(f"viewer closed ({self.close_reason}) before its answer was ready")
        except Exception as exc:
            if not answered:
                raise  # the caller answers the offer with it (4xx/504)
            if self.close_reason is None:
                self.close_reason = CloseReason.ERROR
            log.exception("viewer_failed", viewer=self.id, process=self.process_id)
            metrics.FAILURES.labels("viewer", leaf_type(exc)).inc()
        finally:
            self._closing = True
            if answered and self.close_reason is None:  # nobody called close(): the stream's scope ended
                self.close_reason = CloseReason.PROCESS_STOPPED
            if self._fast is not None and fanout is not None:
                fanout.remove(self._fast)
                self._fast.srtp.close()
            await close_peer_connection(pc, viewer=self.id, process=self.process_id)
            for track, _ in feeds:
                track.stop()
            self.state = ViewerState.CLOSED
            if answered:
                self._record_end()

    async def add_remote_candidates(self, sdpfrag: str, *, if_match_sent: bool = True) -> None:
        """Apply a trickle-ICE PATCH body (RFC 8840). ICE restarts: 428 without If-Match, else 422."""
        limits = self.settings.offer_limits
        offer, pc = self._offer, self._pc
        if offer is None or pc is None or self.state is ViewerState.CLOSED:
            parse_trickle_fragment(sdpfrag, limits)  # a malformed fragment is still a 400
            return
        self._remote_candidates = await add_trickled_candidates(
            pc, offer, sdpfrag, limits, trickled_so_far=self._remote_candidates, if_match_sent=if_match_sent
        )

    @property
    def bytes_sent(self) -> int:
        """RTP sent to the peer: the fan-out's count on the fast path, aiortc's stats on its own senders."""
        return self._fast.octets_sent if self._fast is not None else self._stats_bytes_sent

    def traffic(self) -> tuple[int, int]:
        """(received, sent) bytes so far, the session collector's counter (media flows one way: rx is 0)."""
        return 0, self.bytes_sent

    # --- the steps of run() ----------------------------------------------------------------------------

    async def _answer(
        self, pc: RTCPeerConnection, offer: Offer, tracks: list[FrameTrack], fanout: StreamFanout | None
    ) -> str:
        for track in tracks:
            transceiver = pc.addTransceiver(track, direction="sendonly")
            drop_receive_bitrate_estimator(transceiver.receiver)
            # Before setRemoteDescription, or aiortc negotiates VP8 and sends our H.264 labelled VP8.
            transceiver.setCodecPreferences(preferred_codecs(track.kind))
            if fanout is not None and (ssrc := fanout.ssrc(track.kind)) is not None:
                set_sender_ssrc(transceiver.sender, ssrc)
                takeover = RtcpTakeover(transceiver.sender)
                takeover.install()
                self._rtcp.append(takeover)
        answer = await negotiate(pc, offer, viewer=self.id, process=self.process_id)
        return advertise_addresses(answer, self.settings.public_ips)

    async def _connect(self, pc: RTCPeerConnection, deadline: float) -> bool:
        """Wait for ICE+DTLS until the deadline; True when connected, else the viewer is closed."""
        state = "timeout"
        with trio.move_on_at(deadline):
            state = await self._wait_for_pc_state({"connected", "failed", "closed"})
        if state != "connected":
            self.close(_PC_END_REASONS.get(state, CloseReason.HANDSHAKE_TIMEOUT))
            return False
        self.state = ViewerState.CONNECTED
        self.setup_seconds = trio.current_time() - self._offered_at
        metrics.VIEWER_SETUP_SECONDS.observe(self.setup_seconds)
        return True

    def _fast_viewer(
        self, pc: RTCPeerConnection, answer: str, fanout: StreamFanout
    ) -> tuple[FastViewer, PairReader] | None:
        """This viewer on the fast path and the reader of its socket, or None when its pair is not ours to
        send on (a TURN relay)."""
        media = answered_media(answer)
        path, srtp = nominated_socket(pc), outgoing_srtp(pc)
        reader = None
        if path is not None and srtp is not None:
            with contextlib.suppress(ValueError):  # the connection has no remote ICE password
                reader = PairReader(  # the fan-out hears of the peer through ``fast``, made right below
                    pc,
                    path[0],
                    on_rtcp=lambda packets: fanout.handle_rtcp(fast, packets),
                    on_consent=lambda: fast.consented(),
                )
        if path is None or srtp is None or reader is None:
            if path is not None:
                path[0].close()
            log.info("viewer_fast_path_unavailable", viewer=self.id, process=self.process_id)
            return None
        liveness = Liveness(
            disconnect_grace=self.settings.disconnect_grace,
            consent=reader.ask_consent,
            on_silent=functools.partial(self.close, CloseReason.ICE_DISCONNECTED),
        )
        fast = self._fast = FastViewer(  # set at once: ``run``'s finally closes its socket
            SrtpSocket(srtp, *path),
            cname=next((sent.cname for sent in media.values()), ""),
            liveness=liveness,
            on_failure=self._on_fast_path_failure,
            on_first_video=self._on_first_video_frame,
        )
        for kind, sent in media.items():
            rtx = None
            if sent.rtx_payload_type is not None and sent.rtx_ssrc is not None:
                rtx = Retransmission(sent.rtx_payload_type, sent.rtx_ssrc)
            layout = PacketLayout(sent.payload_type, sent.mid_extension_id, sent.mid)
            fast.sinks[kind] = TrackSink(fast, layout, rtx)  # type: ignore[index]
        return fast, reader

    async def _serve_fast(
        self, pc: RTCPeerConnection, fanout: StreamFanout, fast: FastViewer, reader: PairReader
    ) -> None:
        """Hand the viewer to the stream's fan-out (media, RTCP, liveness: its consent checks replace
        aioice's) and read its socket until its connection ends."""

        async def on_routed_rtcp(packet: Any) -> None:  # aiortc awaits it (asyncio side)
            fanout.handle_rtcp(fast, (packet,))

        reader.stop_aioice_consent()
        for takeover in self._rtcp:  # what still reaches aiortc (another pair's socket) comes here
            takeover.decide(fast_path=True, handler=on_routed_rtcp)
        fanout.add(fast)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            await self._watch_pc_state(pc)
            nursery.cancel_scope.cancel()

    def _on_fast_path_failure(self, exc: BaseException) -> None:
        """Sending to this viewer raised (in the fan-out's loop): it ends, alone, counted like any failure."""
        if self.close_reason is None:
            self.close_reason = CloseReason.ERROR
        log.error("viewer_failed", viewer=self.id, process=self.process_id, error=repr(exc))
        metrics.FAILURES.labels("viewer", type(exc).__name__).inc()
        self._scope.cancel()

    async def _forward(
        self, pc: RTCPeerConnection, feeds: list[tuple[FrameTrack, Track]], video: FrameTrack
    ) -> None:
        with contextlib.ExitStack() as subscriptions:
            async with trio.open_nursery() as nursery:
                for track, source in feeds:
                    subscription = subscriptions.enter_context(source.subscribe())
                    nursery.start_soon(self._pump, subscription, track)
                nursery.start_soon(self._watch_pc_state, pc)
                nursery.start_soon(self._watch_receiver_reports, pc, video)

    async def _pump(self, subscription: Subscription, track: FrameTrack) -> None:
        awaiting_keyframe = False  # the track dropped frames: a delta frame now would not decode
        async for frame in subscription.frames:
            if awaiting_keyframe and not frame.keyframe:
                track.skip(frame)
                continue
            awaiting_keyframe = not track.put(frame)
        self.close(CloseReason.STREAM_ENDED)

    async def _watch_pc_state(self, pc: RTCPeerConnection) -> None:
        state = await self._wait_for_pc_state(set(_PC_END_REASONS))
        self.close(_PC_END_REASONS[state])

    async def _watch_receiver_reports(self, pc: RTCPeerConnection, video: FrameTrack) -> None:
        """Close the viewer when the peer stops reporting; silence counts once we have sent it something."""
        last_report: tuple[object, ...] = ()
        last_heard = trio.current_time()
        while True:
            await trio.sleep(LIVENESS_INTERVAL)
            report, self._stats_bytes_sent = await aio_as_trio(_sender_stats)(pc)
            if report != last_report or video.first_frame_at is None:
                last_report, last_heard = report, trio.current_time()
            elif trio.current_time() - last_heard > self.settings.disconnect_grace:
                self.close(CloseReason.ICE_DISCONNECTED)
                return

    async def _wait_for_pc_state(self, states: set[str]) -> str:
        assert self._pc_states is not None  # set with the peer connection, before anything waits
        return await self._pc_states.wait_for(states)

    def _on_track_stopped(self, track: FrameTrack) -> None:
        """aiortc stopped one of our tracks: its sender task ended. Unless we are closing, a failure."""
        pc = self._pc
        if (
            self.state is not ViewerState.CONNECTED
            or self._closing
            or self._scope.cancel_called
            or pc is None
        ):
            return
        if any(sender.transport.state != "connected" for sender in pc.getSenders()):
            return  # the DTLS transport ended first (the sender could not send); its watcher names why
        log.warning("viewer_sender_ended", viewer=self.id, process=self.process_id, kind=track.kind)
        metrics.FAILURES.labels("viewer_sender", track.kind).inc()
        self.close(CloseReason.SENDER_FAILED)

    def _on_first_video_frame(self) -> None:
        """The first video frame went to the peer (aiortc took it, or the fan-out sent its packets)."""
        self.time_to_first_frame_seconds = trio.current_time() - self._offered_at
        metrics.TIME_TO_FIRST_FRAME_SECONDS.observe(self.time_to_first_frame_seconds)

    def _record_end(self) -> None:
        metrics.VIEWERS_ACTIVE.labels(self.process_id).dec()
        if self.records_end:
            record_viewer_end(self, self.close_reason or CloseReason.PROCESS_STOPPED)


class EndedViewer(Protocol):
    """What the record of a viewer's end names (a ``Viewer``, or the WHEP server's entry for one in a
    WebRTC worker)."""

    id: str
    process_id: str
    setup_seconds: float | None
    time_to_first_frame_seconds: float | None


def record_viewer_end(viewer: EndedViewer, reason: CloseReason, **context: Any) -> None:
    """Count a viewer's end by its reason (``VIEWERS_CLOSED``) and log it (``viewer_closed``), once."""
    metrics.VIEWERS_CLOSED.labels(reason.value).inc()
    log.info(
        "viewer_closed",
        viewer=viewer.id,
        process=viewer.process_id,
        reason=reason.value,
        setup_seconds=viewer.setup_seconds,
        time_to_first_frame_seconds=viewer.time_to_first_frame_seconds,
        **context,
    )


async def _sender_stats(pc: RTCPeerConnection) -> tuple[tuple[object, ...], int]:
    """The timestamps of the last receiver report per sender (they change whenever the peer reports) and
    the bytes sent by every sender."""
    stamps = []
    sent = 0
    for sender in pc.getSenders():
        if sender.track is not None:
            stats = await sender.getStats()
            stamps += [s.timestamp for s in stats.values() if s.type == "remote-inbound-rtp"]
            sent += sum(s.bytesSent for s in stats.values() if s.type == "outbound-rtp")
    return tuple(stamps), sent
