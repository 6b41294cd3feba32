"""FFmpeg's RTP legs as a stream publisher: read the loopback UDP sockets, rebuild frames, write the tracks.

Only our own FFmpeg feeds a stream. Before FFmpeg starts, ``RtpUdpPublisher.bind`` binds the receiving pair
(video V even, audio V+1) and picks the source port of each leg (FFmpeg's ``?localport=S``, which it binds
with S+1 for RTCP), and ``connect()``s each receiving socket to its leg's source address: the kernel then
drops every datagram from anyone else (an orphaned FFmpeg of a killed server, a spoofer) before we see it.
What does come from our FFmpeg is still validated: a datagram larger than the packet size FFmpeg was told to
use (``-pkt_size``, what a viewer's SRTP can carry), not RTP, or of another payload type is counted and
dropped.

The receive loop waits until the socket is readable and then drains every queued datagram (up to a batch
limit) with plain non-blocking ``recv_into`` into one reused buffer: a keyframe arrives as a burst of dozens
of packets, and paying a Trio scheduler round per packet would cost several times the parsing itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import socket
from typing import Final

import structlog
import trio

from dragonfork import metrics
from dragonfork.stream.frames import MediaKind
from dragonfork.stream.ingest.ports import LOOPBACK, PortPair, bind_port_pair
from dragonfork.stream.ingest.rtp import MAX_DATAGRAM_SIZE, is_rtcp, parse_rtp
from dragonfork.stream.ingest.rtp_frames import RtpFrameWriter
from dragonfork.stream.stream import Stream
from dragonfork.stream.track import Track

log = structlog.get_logger(__name__)

DEFAULT_PAYLOAD_TYPES: Final[dict[MediaKind, int]] = {"video": 96, "audio": 111}
"""The payload types of the FFmpeg command (``-payload_type 96`` H.264, ``-payload_type 111`` Opus)."""

RTP_PACKET_SIZE: Final = 1200
"""FFmpeg's ``-pkt_size``: leaves room for SRTP and header extensions under a 1280-byte path MTU. A larger
datagram cannot be forwarded to a viewer whole (aiortc's SRTP step refuses it), so it is dropped here."""

RECEIVE_BATCH: Final = 64
"""Datagrams handled per wake-up before yielding to other tasks."""

IDLE_REPORT_INTERVAL: Final = 1.0
SOURCE_PORT_ATTEMPTS: Final = 64


@dataclasses.dataclass(frozen=True)
class RtpIngestSettings:
    """The UDP range the receiving pairs come from (``webrtc.port_first`` / ``webrtc.port_last``)."""

    port_first: int = 20_000
    port_last: int = 20_999


@dataclasses.dataclass(frozen=True)
class RtpLeg:
    """Where one FFmpeg RTP output sends (``port``) and the port it must send from (``source_port``)."""

    port: int
    source_port: int

    @property
    def url(self) -> str:
        return f"rtp://{LOOPBACK}:{self.port}?localport={self.source_port}"


class RtpReceiver:
    """Receives one RTP leg on a connected UDP socket and writes its frames into one track.

    Nothing in the packets can make ``run`` raise: a datagram that is too large, not RTP of the expected
    payload type, or whose payload is not valid, is counted and dropped.
    """

    def __init__(
        self,
        track: Track,
        sock: socket.socket,
        *,
        stream_name: str,
        payload_type: int | None = None,
        max_packet_size: int = RTP_PACKET_SIZE,
    ) -> None:
        kind = track.kind
        self.kind: MediaKind = kind
        self.track = track
        self.stream_name = stream_name
        self.clock_rate = track.codec.clock_rate
        self.payload_type = DEFAULT_PAYLOAD_TYPES[kind] if payload_type is None else payload_type
        self.max_packet_size = max_packet_size
        self._sock = sock
        self._frames = RtpFrameWriter(track)
        self.packets = 0
        """Datagrams received, including refused ones."""
        self.bytes = 0
        """RTP payload bytes of the packets with the expected payload type."""
        self.malformed = 0
        self.oversize = 0
        self.last_packet_at: float | None = None
        """``trio.current_time()`` of the last datagram, or None before the first."""
        self._dropped = {
            reason: metrics.PACKETS_DROPPED.labels(kind, reason)
            for reason in ("malformed", "oversize", "rtcp")
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive until cancelled."""
        active = metrics.SOURCES_ACTIVE.labels(self.kind)
        active.inc()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report_idle, trio.current_time())
                task_status.started()
                await self._receive()
        finally:
            active.dec()

    def handle_datagram(self, datagram: memoryview | bytes, received_at: float) -> None:
        """Process one received datagram (the receive loop's per-packet step; also the benchmark's entry)."""
        self.packets += 1
        self.last_packet_at = received_at
        if len(datagram) > self.max_packet_size:
            self.oversize += 1
            self._dropped["oversize"].inc()
            return
        try:
            packet = parse_rtp(datagram)
            if packet is None or packet.payload_type != self.payload_type:
                self._reject(datagram)
                return
            self.bytes += len(packet.payload)
            if not self._frames.push(packet, received_at):
                self._count_malformed()
        except Exception:
            # A bug on this path must cost one packet, not the whole process run with all its viewers.
            log.exception("rtp_packet_failed", stream=self.stream_name, kind=self.kind)
            metrics.FAILURES.labels("rtp_packet", "exception").inc()
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
                except ConnectionRefusedError:
                    continue  # an ICMP error queued on the connected socket; not a datagram
                count += 1
                handle_datagram(view[:size], now)
            if count:
                received.inc(count)

    async def _report_idle(self, started_at: float) -> None:
        gauge = metrics.SOURCE_IDLE_SECONDS.labels(self.stream_name, self.kind)
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


class RtpUdpPublisher:
    """The receiving port pair and the two legs of one FFmpeg run; ``run`` feeds a ``Stream`` from them.

    The audio port is bound even without audio so the pair stays reserved as a whole.
    """

    def __init__(self, ports: PortPair, video_source_port: int, audio_source_port: int) -> None:
        self._ports = ports
        self.video_leg = RtpLeg(ports.video_port, video_source_port)
        self.audio_leg = RtpLeg(ports.audio_port, audio_source_port)
        ports.video_socket.connect((LOOPBACK, video_source_port))
        ports.audio_socket.connect((LOOPBACK, audio_source_port))
        self.receivers: list[RtpReceiver] = []

    @classmethod
    async def bind(cls, settings: RtpIngestSettings) -> RtpUdpPublisher:
        """Reserve a receiving pair in the range (raises ``PortRangeExhausted``); pick the source ports."""
        ports = await bind_port_pair(settings.port_first, settings.port_last)
        try:
            video_source, audio_source = pick_source_ports()
        except OSError:
            ports.close()
            raise
        return cls(ports, video_source, audio_source)

    async def run(
        self, stream: Stream, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Write what arrives into ``stream``'s tracks until cancelled, then release the ports."""
        try:
            async with trio.open_nursery() as nursery:
                self.receivers = [
                    RtpReceiver(stream.video, self._ports.video_socket, stream_name=stream.name)
                ]
                if stream.audio is not None:
                    self.receivers.append(
                        RtpReceiver(stream.audio, self._ports.audio_socket, stream_name=stream.name)
                    )
                for receiver in self.receivers:
                    await nursery.start(receiver.run)
                task_status.started()
        finally:
            self.close()

    def close(self) -> None:
        """Release the ports (idempotent); also for a publisher that was bound but never ran."""
        self._ports.close()


def pick_source_ports() -> tuple[int, int]:
    """Two source ports for FFmpeg's legs, each with its RTCP neighbour (S, S+1) free now.

    FFmpeg binds them itself a moment later; the kernel's ephemeral range makes a collision in between
    unlikely, and one would only fail that FFmpeg run (its supervisor restarts it with new ports).
    """
    picked: list[int] = []
    with contextlib.ExitStack() as held:
        for _ in range(SOURCE_PORT_ATTEMPTS):
            first = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            first.bind(("0.0.0.0", 0))  # FFmpeg binds its RTP sockets on every address
            port = first.getsockname()[1]
            if port >= 65_535:
                continue
            second = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            try:
                second.bind(("0.0.0.0", port + 1))
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
                continue
            picked.append(port)
            if len(picked) == 2:
                return picked[0], picked[1]
    raise OSError(errno.EADDRINUSE, "no free source port pair for FFmpeg's RTP legs")
