"""The WebRTC fan-out of one stream: frames packetized once, then per viewer only SRTP protect and ``sendto``.

One ``StreamFanout`` per stream is a reader of that stream (``Stream.shared_reader``), started by its first
fast-path viewer. Each frame of a track is packetized once (H.264 FU-A/STAP-A by ``webrtc/h264.py``, in
fragments of one size so that a frame leaves in one segmented send; Opus as it is) into RTP packets with the
stream's SSRC and sequence numbers; a packet's wire form (header, the shared ``sdes:mid`` extension, payload)
is built once per *layout* (payload type, extension id and mid: identical for every viewer that offered
alike). Then one synchronous loop over the track's viewers sends the frame's packets to each back to back:
SRTP protect with that viewer's keys into a reused buffer and a non-blocking ``sendto`` on its nominated ICE
socket (``aiortc_internals.SrtpSocket``). No task, channel or ``await`` per packet per viewer; a send that
would block is a packet dropped for that viewer, counted. The loop lets the rest of the server run
(``trio.lowlevel.checkpoint``) between viewers whenever it has held the event loop for ``SLICE_SECONDS``: a
keyframe to a few hundred viewers takes tens of milliseconds, which signalling and the other streams must not
wait for. Each viewer still gets a frame's packets back to back, and the track's next frame only after every
viewer had this one (the track's subscription buffers meanwhile).

Per track the fan-out keeps the packets since the last keyframe (the burst a joining viewer starts with, so
its first packets are contiguous with the live ones; ``rebase_burst`` says why its frames' timestamps are
moved up to the latest one's) and the last ``HISTORY_SECONDS`` of packets, from which
a viewer's NACKs are answered (to that viewer only, as RTX when it negotiated RTX). A PLI or FIR is answered
with the keyframe burst for that viewer (at most once per ``BURST_INTERVAL``): the encoder is shared, so a
viewer cannot have a keyframe of its own. Once a second every viewer gets a sender report per track from the
stream's own timing (``StreamClock``: RTP timestamp ↔ the least arrival delay of the last seconds' frames),
which is what browsers use for lip sync. A viewer's exception while sending (other than a full socket
buffer) ends that viewer only.

Liveness is one sweep per stream, not a task per viewer: every ``LIVENESS_INTERVAL`` it asks each viewer for
ICE consent (RFC 7675) about every ``CONSENT_INTERVAL`` seconds (randomized), and every sweep once it has been
silent (no RTCP) for ``consent_after``; an answer counts as hearing from it. It ends each viewer silent for
longer than its ``disconnect_grace``, and one whose consent has not been answered for ``CONSENT_EXPIRY`` (it
still sends RTCP: RFC 7675's end of consent). These checks replace aioice's own loop per viewer.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import functools
import random
import secrets
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
import trio
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)

from dragonfork import metrics
from dragonfork.stream.frames import MediaFrame, MediaKind
from dragonfork.stream.stream import Stream
from dragonfork.stream.track import Track
from dragonfork.webrtc.aiortc_internals import LaidOutFrame, SrtpSocket
from dragonfork.webrtc.h264 import MAX_PAYLOAD, packetize  # an audio frame over MAX_PAYLOAD is dropped

log = structlog.get_logger(__name__)

HISTORY_SECONDS = 1.0  # packets kept for NACKs
HISTORY_MAX_PACKETS = 4096  # and never more than this many per track
SLICE_SECONDS = 0.002  # the longest a frame's fan-out holds the event loop before other tasks get a turn
LIVENESS_INTERVAL = 1.0  # how often the stream's sweep looks at every viewer's silence
CONSENT_AFTER = 2.0  # seconds of silence before a consent check: receiver reports come every 0.5-1.5 s
CONSENT_INTERVAL = 5.0  # RFC 7675: a consent check about this often (0.8-1.2 times, randomized) regardless
CONSENT_EXPIRY = 30.0  # RFC 7675: consent ends this long after the last answered check
BURST_INTERVAL = 1.0  # at most one keyframe burst per viewer and track per second (PLI/FIR storms)
REPORT_INTERVAL = 1.0  # sender reports to every viewer
CLOCK_WINDOW = 2.0  # seconds of frames whose earliest arrival maps RTP time to wall clock (a GOP)
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)

_RTP_HEADER = struct.Struct("!BBHII")
_SEQUENCE = struct.Struct("!H")


@dataclasses.dataclass(frozen=True, slots=True)
class PacketLayout:
    """What differs between viewers in a packet's header: the negotiated payload type and mid extension."""

    payload_type: int
    mid_extension_id: int | None = None
    mid: str | None = None

    def extension(self) -> bytes:
        return _mid_extension(self.mid_extension_id, self.mid)


@functools.cache
def _mid_extension(extension_id: int | None, mid: str | None) -> bytes:
    """The RFC 8285 one-byte header extension block carrying ``sdes:mid`` (empty when not negotiated)."""
    if extension_id is None or not mid or not 1 <= extension_id <= 14:
        return b""
    value = mid.encode()[:16]
    element = bytes([(extension_id << 4) | (len(value) - 1)]) + value
    element += b"\0" * (-len(element) % 4)
    return struct.pack("!HH", 0xBEDE, len(element) // 4) + element


@dataclasses.dataclass(frozen=True, slots=True)
class Retransmission:
    """RTX as one viewer negotiated it (RFC 4588): its payload type and SSRC."""

    payload_type: int
    ssrc: int


class OutgoingPacket:
    """One RTP packet of a stream, before a layout's header is put on it."""

    __slots__ = ("sequence", "timestamp", "marker", "payload", "made_at")

    def __init__(self, sequence: int, timestamp: int, marker: bool, payload: bytes, made_at: float) -> None:
        self.sequence = sequence
        self.timestamp = timestamp
        self.marker = marker
        self.payload = payload
        self.made_at = made_at

    def wire(self, layout: PacketLayout, ssrc: int) -> bytes:
        extension = layout.extension()
        return (
            _RTP_HEADER.pack(
                0x90 if extension else 0x80,
                (0x80 if self.marker else 0) | layout.payload_type,
                self.sequence,
                self.timestamp,
                ssrc,
            )
            + extension
            + self.payload
        )


def rebase_burst(burst: list[OutgoingPacket]) -> tuple[list[OutgoingPacket], dict[int, int]]:
    """A joining viewer's keyframe burst with its frames' RTP timestamps moved up against the latest frame's.

    The burst's frames span up to a GOP of media time but arrive at once. A browser's video timing (WebRTC's
    timestamp extrapolator: RTP time → expected arrival, a Kalman fit whose slope, once learned, hardly
    moves) takes them as arrival samples. Measured in Chromium: its frames then came on a clock 1.5-2 % off,
    were decoded as they arrived whatever delay lip sync asked for, and picture ran ~90 ms ahead of sound.
    With the frames one tick apart, ending at the latest frame's own timestamp (the next live frame follows
    it as usual), the burst is what it looks like on arrival: frames of the present moment. Returns the
    packets and the mapping original → rebased timestamp (a retransmission to that viewer must carry the
    timestamp it got the packet with).
    """
    frames = list(dict.fromkeys(packet.timestamp for packet in burst))
    latest = frames[-1]
    rebased = {
        timestamp: (latest - (len(frames) - 1 - index)) & 0xFFFFFFFF for index, timestamp in enumerate(frames)
    }
    packets = [
        OutgoingPacket(
            packet.sequence, rebased[packet.timestamp], packet.marker, packet.payload, packet.made_at
        )
        for packet in burst
    ]
    return packets, rebased


class TrackSink:
    """One viewer's end of one track: its layout, its socket and keys, and what it was sent."""

    __slots__ = (
        "viewer",
        "layout",
        "rtx",
        "_rtx_sequence",
        "packets",
        "octets",
        "dropped",
        "awaiting_keyframe",
        "last_burst_at",
        "active",
        "rebased_timestamps",
    )

    def __init__(self, viewer: FastViewer, layout: PacketLayout, rtx: Retransmission | None) -> None:
        self.viewer = viewer
        self.layout = layout
        self.rtx = rtx
        self._rtx_sequence = secrets.randbelow(32768)
        self.packets = 0
        self.octets = 0
        self.dropped = 0  # would have blocked: the kernel's socket buffer was full
        self.awaiting_keyframe = False
        self.last_burst_at = -BURST_INTERVAL
        self.active = True  # False once removed (a frame's fan-out may be half-way when it leaves)
        self.rebased_timestamps: dict[int, int] = {}  # of the frames in its join burst (``rebase_burst``)

    def send(self, frame: LaidOutFrame, octets: int) -> None:
        blocked = self.viewer.srtp.send_frame(frame)
        self.packets += len(frame.packets) - blocked
        self.octets += octets
        self.dropped += blocked

    def resend(self, packet: OutgoingPacket, ssrc: int) -> None:
        """Send ``packet`` again to this viewer: as RTX (new sequence number, original one first) if it
        negotiated RTX, else as it was (with the timestamp this viewer got it with)."""
        timestamp = self.rebased_timestamps.get(packet.timestamp)
        if timestamp is not None:
            packet = OutgoingPacket(packet.sequence, timestamp, packet.marker, packet.payload, packet.made_at)
        rtx = self.rtx
        if rtx is None:
            wire = packet.wire(self.layout, ssrc)
        else:
            layout = PacketLayout(rtx.payload_type, self.layout.mid_extension_id, self.layout.mid)
            original = OutgoingPacket(
                self._rtx_sequence,
                packet.timestamp,
                packet.marker,
                _SEQUENCE.pack(packet.sequence) + packet.payload,
                packet.made_at,
            )
            self._rtx_sequence = (self._rtx_sequence + 1) & 0xFFFF
            wire = original.wire(layout, rtx.ssrc)
        if not self.viewer.srtp.send(wire):
            self.dropped += 1


class TrackFanout:
    """The packets of one track and the viewers they go to."""

    def __init__(self, track: Track, *, max_burst_packets: int) -> None:
        self.kind: MediaKind = track.kind
        self.clock_rate = track.codec.clock_rate
        self.ssrc = secrets.randbits(32) or 1
        self._sequence = secrets.randbelow(32768)  # low half, as browsers do: no wrap in the first packets
        self._max_burst_packets = max_burst_packets
        self._keyframe_burst: list[OutgoingPacket] | None = None  # since the last keyframe (video)
        self._history: collections.deque[OutgoingPacket] = collections.deque()
        self._by_sequence: dict[int, OutgoingPacket] = {}
        self._groups: dict[PacketLayout, list[TrackSink]] = {}
        self._clock = StreamClock(self.clock_rate)
        self._forwarded_packets = metrics.RTP_PACKETS_FORWARDED.labels(self.kind)
        self._forwarded_bytes = metrics.RTP_BYTES_FORWARDED.labels(self.kind)
        self._dropped_blocked = metrics.PACKETS_DROPPED.labels(self.kind, "send_would_block")
        self._dropped_oversize = metrics.PACKETS_DROPPED.labels(self.kind, "oversize")
        self._retransmitted = metrics.RTP_RETRANSMITTED.labels(self.kind)
        self._nack_missed = metrics.PACKETS_DROPPED.labels(self.kind, "nack_too_old")

    # -- the stream's side ---------------------------------------------------------------------------------

    async def write(self, frame: MediaFrame) -> None:
        """Packetize ``frame`` once and send it to every viewer of the track, in slices of the loop's time.

        Viewers that join during a checkpoint got this frame in their keyframe burst (or wait for the
        next keyframe); viewers that leave during one are skipped.
        """
        packets = self._packetize(frame)
        if not packets:
            return
        octets = sum(len(packet.payload) for packet in packets)
        keyframe = frame.keyframe
        sent = 0
        slice_ends = time.perf_counter() + SLICE_SECONDS
        groups = [(layout, list(sinks)) for layout, sinks in self._groups.items()]
        for layout, sinks in groups:
            wire: LaidOutFrame | None = None
            for sink in sinks:
                if time.perf_counter() > slice_ends:
                    await trio.lowlevel.checkpoint()
                    slice_ends = time.perf_counter() + SLICE_SECONDS
                if not sink.active:
                    continue
                if sink.awaiting_keyframe:
                    if not keyframe:
                        continue
                    sink.awaiting_keyframe = False
                    sink.viewer.first_video_sent()
                if wire is None:
                    wire = LaidOutFrame([packet.wire(layout, self.ssrc) for packet in packets])
                blocked_before = sink.dropped
                try:
                    sink.send(wire, octets)
                except Exception as exc:  # noqa: BLE001 - one viewer's failure ends that viewer only
                    if not (isinstance(exc, OSError) and exc.errno == errno.ENOBUFS):
                        sink.viewer.fail(exc)
                        continue
                    sink.dropped += len(packets)  # the kernel is short of buffers: a drop, like EAGAIN
                sent += 1
                if sink.dropped != blocked_before:
                    self._dropped_blocked.inc(sink.dropped - blocked_before)
        if sent:
            self._forwarded_packets.inc(len(packets) * sent)
            self._forwarded_bytes.inc(octets * sent)

    def _packetize(self, frame: MediaFrame) -> list[OutgoingPacket]:
        if self.kind == "video":
            payloads = packetize(frame.data)
        elif len(frame.data) > MAX_PAYLOAD:
            self._dropped_oversize.inc()
            return []
        else:
            payloads = [frame.data]
        timestamp = frame.timestamp & 0xFFFFFFFF
        now = frame.received_at
        self._clock.observe(frame.timestamp, now)
        last = len(payloads) - 1
        packets = []
        sequence = self._sequence
        for index, payload in enumerate(payloads):
            packets.append(OutgoingPacket(sequence, timestamp, index == last, payload, now))
            sequence = (sequence + 1) & 0xFFFF
        self._sequence = sequence
        self._remember(packets, frame.keyframe, now)
        return packets

    def _remember(self, packets: list[OutgoingPacket], keyframe: bool, now: float) -> None:
        if self.kind == "video":
            if keyframe:
                self._keyframe_burst = []
            burst = self._keyframe_burst
            if burst is not None:
                if len(burst) + len(packets) > self._max_burst_packets:
                    self._keyframe_burst = None  # the GOP outgrew the bound: joiners wait for a keyframe
                else:
                    burst.extend(packets)
        history, by_sequence = self._history, self._by_sequence
        for packet in packets:
            history.append(packet)
            by_sequence[packet.sequence] = packet
        horizon = now - HISTORY_SECONDS
        while history and (history[0].made_at < horizon or len(history) > HISTORY_MAX_PACKETS):
            old = history.popleft()
            if by_sequence.get(old.sequence) is old:
                del by_sequence[old.sequence]

    # -- viewers ---------------------------------------------------------------------------------------------

    def add(self, sink: TrackSink) -> None:
        """Start sending to ``sink``: video with the keyframe burst (or from the next keyframe)."""
        if self.kind == "video":
            if self._keyframe_burst:
                burst, sink.rebased_timestamps = rebase_burst(self._keyframe_burst)
                sink.send(
                    LaidOutFrame([packet.wire(sink.layout, self.ssrc) for packet in burst]),
                    sum(len(packet.payload) for packet in burst),
                )
                metrics.KEYFRAME_BURSTS.inc()
                sink.viewer.first_video_sent()
            else:
                sink.awaiting_keyframe = True
        self._groups.setdefault(sink.layout, []).append(sink)

    def remove(self, sink: TrackSink) -> None:
        sink.active = False
        sinks = self._groups.get(sink.layout)
        if sinks is not None and sink in sinks:
            sinks.remove(sink)
            if not sinks:
                del self._groups[sink.layout]

    def retransmit(self, sink: TrackSink, sequences: list[int]) -> None:
        """Answer a NACK: the packets still in the history, to ``sink`` only."""
        for sequence in sequences:
            packet = self._by_sequence.get(sequence)
            if packet is None:
                self._nack_missed.inc()
                continue
            sink.resend(packet, self.ssrc)
            self._retransmitted.inc()

    def resend_keyframe_burst(self, sink: TrackSink, now: float) -> None:
        """Answer a PLI/FIR: the packets since the last keyframe again, to ``sink`` only (rate-limited)."""
        burst = self._keyframe_burst
        if not burst or now - sink.last_burst_at < BURST_INTERVAL:
            return
        sink.last_burst_at = now
        for packet in burst:
            sink.resend(packet, self.ssrc)
        self._retransmitted.inc(len(burst))
        metrics.KEYFRAME_BURSTS.inc()

    def rtp_timestamp_at(self, now: float) -> int | None:
        """The track's RTP timestamp at trio time ``now`` (sender reports), None before its first frame."""
        return self._clock.timestamp_at(now)


class StreamClock:
    """A track's RTP time ↔ trio time, from its frames' own timestamps and the earliest of their arrivals.

    A frame arrives some time after its timestamp's moment, and that delay varies: a keyframe's many packets
    take longer to arrive than one audio packet, and the loop may be busy. Mapping from the latest frame
    (as the reports did) passes that jitter into every sender report, and browsers align picture and sound
    by those reports. The least delay over the last ``CLOCK_WINDOW`` seconds is the track's transit time
    without the jitter, and about the same for both tracks of a stream (one FFmpeg, one clock, one loopback).
    """

    __slots__ = ("clock_rate", "_delays")

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        # (arrival, arrival − timestamp in seconds), ascending in delay: the front is the window's least
        self._delays: collections.deque[tuple[float, float]] = collections.deque()

    def observe(self, timestamp: int, arrived_at: float) -> None:
        delay = arrived_at - timestamp / self.clock_rate
        delays = self._delays
        while delays and delays[-1][1] >= delay:
            delays.pop()
        delays.append((arrived_at, delay))
        while delays[0][0] < arrived_at - CLOCK_WINDOW:
            delays.popleft()

    def timestamp_at(self, now: float) -> int | None:
        if not self._delays:
            return None
        return round((now - self._delays[0][1]) * self.clock_rate) & 0xFFFFFFFF


@dataclasses.dataclass(frozen=True, slots=True)
class Liveness:
    """How the stream's sweep keeps one viewer or lets it go.

    ``consent`` sends the peer an ICE consent check (RFC 7675); its answer, when it comes, is the viewer's
    ``consented``. ``on_silent`` ends the viewer, called once after ``disconnect_grace`` seconds without
    RTCP or an answered consent check, or ``CONSENT_EXPIRY`` seconds without an answered check.
    """

    disconnect_grace: float
    consent: Callable[[], None]
    on_silent: Callable[[], None]

    @property
    def consent_after(self) -> float:
        """Seconds of silence before the peer is asked: early enough that the sweep after the one that first
        finds it silent that long, and the check's round trip, still come within the grace."""
        return max(0.0, min(CONSENT_AFTER, self.disconnect_grace - 1.5 * LIVENESS_INTERVAL))


class FastViewer:
    """One viewer on the fast path: its SRTP socket and its sink per track it receives.

    ``on_failure`` is called once when sending to it raised (the viewer closes itself with that cause);
    ``on_first_video`` when its first video packet went out.
    """

    def __init__(
        self,
        srtp: SrtpSocket,
        *,
        cname: str,
        liveness: Liveness,
        on_failure: Callable[[BaseException], None],
        on_first_video: Callable[[], None],
    ) -> None:
        self.srtp = srtp
        self.cname = cname
        self.liveness = liveness
        self.sinks: dict[MediaKind, TrackSink] = {}
        now = trio.current_time()
        self.last_heard = now  # RTCP from the peer (or a consent check it answered)
        self.last_consent = now  # a consent check it answered (or its connection's start)
        self.next_consent_at = now + _consent_interval()
        self.failed: BaseException | None = None
        self._on_failure = on_failure
        self._on_first_video = on_first_video
        self._first_video_sent = False
        self._silent = False

    @property
    def octets_sent(self) -> int:
        return sum(sink.octets for sink in self.sinks.values())

    def first_video_sent(self) -> None:
        if not self._first_video_sent:
            self._first_video_sent = True
            self._on_first_video()

    def fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = exc
            self._on_failure(exc)

    def consented(self) -> None:
        """The peer answered a consent check."""
        self.last_heard = self.last_consent = trio.current_time()

    def fell_silent(self) -> None:
        if not self._silent:
            self._silent = True
            self.liveness.on_silent()


def _consent_interval() -> float:
    return CONSENT_INTERVAL * random.uniform(0.8, 1.2)  # noqa: S311 - spreads checks, not a secret


class StreamFanout:
    """The fan-out of one stream's tracks to its fast-path viewers (a shared reader of the stream)."""

    def __init__(self, stream: Stream) -> None:
        burst = stream.video.keyframe_burst_limit
        self.tracks: dict[MediaKind, TrackFanout] = {
            track.kind: TrackFanout(track, max_burst_packets=burst)
            for track in (stream.video, stream.audio)
            if track is not None
        }
        self._viewers: list[FastViewer] = []
        self._kinds = {fanout.ssrc: kind for kind, fanout in self.tracks.items()}
        self._name = stream.name

    def ssrc(self, kind: str) -> int | None:
        track = self.tracks.get(kind)  # type: ignore[call-overload]
        return track.ssrc if track is not None else None

    async def run(self, stream: Stream, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Read every track of ``stream`` and fan it out, send the sender reports and watch the viewers'
        liveness, until it ends."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward, stream.video, self.tracks["video"])
            if stream.audio is not None:
                nursery.start_soon(self._forward, stream.audio, self.tracks["audio"])
            nursery.start_soon(self._report)
            nursery.start_soon(self.watch_liveness)
            task_status.started()

    async def _forward(self, track: Track, fanout: TrackFanout) -> None:
        with track.subscribe() as subscription:
            async for frame in subscription.frames:
                try:
                    await fanout.write(frame)
                except Exception as exc:  # noqa: BLE001 - a frame we cannot packetize is dropped alone
                    log.exception("fanout_frame_failed", stream=self._name, kind=fanout.kind)
                    metrics.FAILURES.labels("webrtc_fanout", type(exc).__name__).inc()

    def add(self, viewer: FastViewer) -> None:
        """Start sending to ``viewer`` on every track it has a sink for."""
        self._viewers.append(viewer)
        for kind, sink in viewer.sinks.items():
            self.tracks[kind].add(sink)

    def remove(self, viewer: FastViewer) -> None:
        if viewer in self._viewers:
            self._viewers.remove(viewer)
        for kind, sink in viewer.sinks.items():
            self.tracks[kind].remove(sink)

    def handle_rtcp(self, viewer: FastViewer, packets: Iterable[Any]) -> None:
        """One datagram of RTCP from the peer (``packets``: the feedback in it, or all of it): any keeps the
        viewer alive, NACK and PLI/FIR are answered for the track they name, the rest (reports, REMB,
        transport-wide feedback) is ignored (the encoder is shared; there is no rate to adapt)."""
        now = trio.current_time()
        viewer.last_heard = now
        for packet in packets:
            if not isinstance(packet, RtcpRtpfbPacket | RtcpPsfbPacket):
                continue
            kind = self._kinds.get(packet.media_ssrc)
            track, sink = self.tracks.get(kind) if kind else None, viewer.sinks.get(kind) if kind else None
            if track is None or sink is None:
                continue
            try:
                if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                    track.retransmit(sink, packet.lost)
                elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                    track.resend_keyframe_burst(sink, now)
            except Exception as exc:  # noqa: BLE001 - one viewer's failure ends that viewer only
                viewer.fail(exc)
                return

    async def watch_liveness(self) -> None:
        """Every ``LIVENESS_INTERVAL``: end the viewers silent past their grace or without consent, and ask
        for consent those due for a check or silent for a while (the answers come by their sockets)."""
        while True:
            await trio.sleep(LIVENESS_INTERVAL)
            now = trio.current_time()
            for viewer in list(self._viewers):
                liveness = viewer.liveness
                silent = now - viewer.last_heard
                if silent > liveness.disconnect_grace or now - viewer.last_consent > CONSENT_EXPIRY:
                    viewer.fell_silent()
                elif silent > liveness.consent_after or now >= viewer.next_consent_at:
                    viewer.next_consent_at = now + _consent_interval()
                    try:
                        liveness.consent()
                    except Exception:  # noqa: BLE001 - a check that could not be made is one unanswered
                        log.debug("consent_check_failed", stream=self._name, exc_info=True)

    async def _report(self) -> None:
        while True:
            await trio.sleep(REPORT_INTERVAL)
            now, wallclock = trio.current_time(), time.time()
            ntp = int((wallclock + NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF
            for viewer in list(self._viewers):
                report = self._sender_report(viewer, now, ntp)
                if report:
                    try:
                        viewer.srtp.send_rtcp(report)
                    except Exception as exc:  # noqa: BLE001 - one viewer's failure ends that viewer only
                        viewer.fail(exc)

    def _sender_report(self, viewer: FastViewer, now: float, ntp: int) -> bytes:
        """One compound RTCP packet: a sender report per track the viewer receives, then their SDES."""
        parts: list[bytes] = []
        chunks = []
        for kind, sink in viewer.sinks.items():
            track = self.tracks[kind]
            rtp_timestamp = track.rtp_timestamp_at(now)
            if rtp_timestamp is None:
                continue
            info = RtcpSenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=rtp_timestamp,
                packet_count=sink.packets & 0xFFFFFFFF,
                octet_count=sink.octets & 0xFFFFFFFF,
            )
            parts.append(bytes(RtcpSrPacket(ssrc=track.ssrc, sender_info=info)))
            chunks.append(RtcpSourceInfo(ssrc=track.ssrc, items=[(1, viewer.cname.encode())]))
        if not parts:
            return b""
        return b"".join(parts) + bytes(RtcpSdesPacket(chunks=chunks))
