"""One load-test viewer: a real WebRTC peer (aiortc) that counts RTP packets instead of decoding them.

Signalling is WHEP (POST the offer, 201 with the answer, DELETE to leave) or Janus's HTTP API (streaming
plugin: ``watch`` brings the server's offer, ``start`` carries our answer), so the same viewer measures
dragonfork and Janus.

Why not aiortc's normal receive path all along: it costs ~110 µs of client CPU per packet on this machine
(a STUN parse attempt, an asyncio queue, SRTP unprotect, the jitter buffer, a decoder thread), so 100 viewers
of a 2 Mbit/s stream would need more than a core for the clients alone. A viewer therefore takes the full
path only until its first complete keyframe has arrived (its time to first frame, judged on decrypted
packets), then switches its ICE sockets to a fast path that reads the RTP header, which SRTP leaves in the
clear, and feeds the sequence number to aiortc's own receiver statistics. Packet and loss counts stay exact
and the receiver keeps sending RTCP receiver reports built from them; what stops is payload decryption and
NACKs (loss is reported as the server sent it, without retransmission). RTCP, STUN consent checks and DTLS
keep the normal path. The hooks use aiortc 1.16 internals (named in ``_ReceiverInternals``).

Run viewers in their own OS process (see ``worker``): the server side imports trio_asyncio, which changes
``asyncio.run`` process-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urljoin

import av
import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.codecs.h264 import h264_depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import StreamStatistics

from dragonfork.webrtc.client import _h264_first

NAL_IDR, NAL_SPS, NAL_PPS = 5, 7, 8
STAP_A, FU_A = 24, 28
KEYFRAME_NALS = frozenset({NAL_IDR, NAL_SPS, NAL_PPS})
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
SO_RCVBUFFORCE = 33  # Linux; not in the socket module
JANUS_KEEPALIVE_SECONDS = 15.0
JANUS_POLL_SECONDS = 5.0  # our bound on one long poll; Janus answers within 30 s by itself


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a viewer connects: a WHEP endpoint, or a Janus HTTP API root and a streaming mountpoint."""

    url: str
    token: str | None = None
    janus_mountpoint: int | None = None


@dataclasses.dataclass
class SessionReport:
    """One connection attempt of one viewer. Times: seconds since signalling began (None: did not happen)."""

    viewer: int
    attempt: int
    # HTTP status of the WHEP POST (Janus: 200 when the offer/answer exchange worked)
    status: int | None = None
    # WHEP: POST → 201; Janus: create session → ``start`` acknowledged
    signalling_seconds: float | None = None
    connected_seconds: float | None = None  # ICE + DTLS connected
    time_to_first_frame_seconds: float | None = None  # last packet of the first complete keyframe arrived
    keyframe_decoded: bool | None = None  # it decoded to a picture (only when verification was asked)
    ended: str = "left"  # "left" (we ended it), "server" (the server ended it), "error"
    error: str | None = None
    duration_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SignallingError(Exception):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- H.264 keyframe detection on decrypted packets -------------------------------------------------------


def nal_types(payload: bytes) -> tuple[list[int], bool]:
    """The types of the NAL units that start in one H.264 RTP payload (RFC 6184), and whether the payload
    starts a NAL unit (False for the middle or end fragment of an FU-A)."""
    if not payload:
        return [], False
    kind = payload[0] & 0x1F
    if kind == STAP_A:
        types, position = [], 1
        while position + 2 < len(payload):
            size = (payload[position] << 8) | payload[position + 1]
            types.append(payload[position + 2] & 0x1F)
            position += 2 + size
        return types, True
    if kind == FU_A:
        if len(payload) > 1 and payload[1] & 0x80:
            return [payload[1] & 0x1F], True
        return [], False
    return [kind], True


class KeyframeAssembler:
    """Finds the first complete H.264 keyframe in a stream of decrypted RTP packets.

    Complete means what a decoder needs to show a picture: contiguous sequence numbers from the frame's first
    packet to its marker packet, and SPS, PPS and an IDR slice among its NAL units. The frame's first packet
    is known when the previous frame's marker packet was seen; for the very first frame it must start a NAL.
    """

    def __init__(self, *, keep_payloads: bool) -> None:
        self.keep_payloads = keep_payloads
        self.keyframe: bytes | None = None  # Annex B of the keyframe, when payloads are kept
        self.complete = False
        self._timestamp: int | None = None
        self._packets: dict[int, bytes] = {}
        self._types: set[int] = set()
        self._next_frame_starts_at: int | None = None  # sequence number after the last marker packet

    def push(self, sequence: int, timestamp: int, marker: bool, payload: bytes) -> bool:
        """Add one packet; True when it completed the first complete keyframe."""
        if self.complete:
            return False
        if timestamp != self._timestamp:
            self._timestamp = timestamp
            self._packets.clear()
            self._types.clear()
        types, _ = nal_types(payload)
        self._types.update(types)
        # Without verification only the NAL headers matter (the frame's first packet is checked below), and
        # packets may arrive out of order: keep every payload's first two bytes.
        self._packets[sequence] = payload if self.keep_payloads else payload[:2]
        if not marker:
            return False
        expected_start = self._next_frame_starts_at
        self._next_frame_starts_at = (sequence + 1) & 0xFFFF
        span = 1 + max((sequence - seq) & 0xFFFF for seq in self._packets)
        first = (sequence - span + 1) & 0xFFFF
        if len(self._packets) != span or not self._types >= KEYFRAME_NALS:
            return False
        if expected_start is None and not nal_types(self._packets[first])[1]:
            return False
        if expected_start is not None and first != expected_start:
            return False
        self.complete = True
        if self.keep_payloads:
            ordered = [self._packets[(first + i) & 0xFFFF] for i in range(span)]
            self.keyframe = b"".join(h264_depayload(payload) for payload in ordered)
        return True


def decodes_to_picture(annex_b: bytes) -> bool:
    """Whether an H.264 access unit decodes to a picture on its own (FFmpeg's decoder, via PyAV)."""
    codec = av.CodecContext.create("h264", "r")
    try:
        frames = list(codec.decode(av.Packet(annex_b))) + list(codec.decode(None))
    except av.FFmpegError:
        return False
    return bool(frames)


# --- counting RTP -----------------------------------------------------------------------------------------


class _ReceiverInternals:
    """The aiortc 1.16 receiver internals the tap uses, in one place."""

    @staticmethod
    def codecs(receiver: RTCRtpReceiver) -> dict[int, RTCRtpCodecParameters]:
        codecs: dict[int, RTCRtpCodecParameters] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
        return codecs

    @staticmethod
    def streams(receiver: RTCRtpReceiver) -> dict[int, StreamStatistics]:
        streams: dict[int, StreamStatistics] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        return streams

    @staticmethod
    def retransmission_ssrcs(receiver: RTCRtpReceiver) -> set[int]:
        return set(receiver._RTCRtpReceiver__rtx_ssrc)  # type: ignore[attr-defined]

    @staticmethod
    def ice_protocols(receiver: RTCRtpReceiver) -> list[Any]:
        """aioice's datagram protocols of the receiver's ICE transport (one per local candidate)."""
        return list(receiver.transport.transport._connection._protocols)


class _Header:
    """What ``StreamStatistics.add`` reads of a packet, reused for every packet of the fast path."""

    __slots__ = ("sequence_number", "timestamp")

    def __init__(self) -> None:
        self.sequence_number = 0
        self.timestamp = 0


class RtpTap:
    """Watches a peer connection's incoming RTP: keyframe detection first, then header-only counting."""

    def __init__(self, pc: RTCPeerConnection, *, keep_keyframe: bool) -> None:
        self._pc = pc
        self.assembler = KeyframeAssembler(keep_payloads=keep_keyframe)
        self.keyframe_at: float | None = None  # time.monotonic() when the first complete keyframe arrived
        self.keyframe_arrived = asyncio.Event()

    def install(self) -> None:
        """Watch every receiver's decrypted packets (call once negotiated, before media flows).

        Also enlarges the ICE sockets' receive buffers: a viewer process that is descheduled for a moment on a
        busy machine must not turn that moment into packet loss charged to the server.
        """
        for receiver in self._pc.getReceivers():
            receiver._handle_rtp_packet = self._watching(receiver)  # type: ignore[method-assign]
            for protocol in _ReceiverInternals.ice_protocols(receiver):
                _enlarge_receive_buffer(protocol.transport.get_extra_info("socket"))

    def counts(self) -> dict[str, tuple[int, int]]:
        """(received, expected) RTP packets per kind, retransmissions excluded."""
        totals: dict[str, tuple[int, int]] = {}
        for transceiver in self._pc.getTransceivers():
            receiver = transceiver.receiver
            rtx = _ReceiverInternals.retransmission_ssrcs(receiver)
            received = expected = 0
            for ssrc, stream in _ReceiverInternals.streams(receiver).items():
                if ssrc not in rtx and stream.max_seq is not None:
                    received += stream.packets_received
                    expected += stream.packets_expected
            old = totals.get(transceiver.kind, (0, 0))
            totals[transceiver.kind] = (old[0] + received, old[1] + expected)
        return totals

    def _watching(self, receiver: RTCRtpReceiver) -> Callable[..., Any]:
        original = receiver._handle_rtp_packet

        async def handle(packet: Any, arrival_time_ms: int) -> None:
            if not self.assembler.complete:
                codec = _ReceiverInternals.codecs(receiver).get(packet.payload_type)
                if (
                    codec is not None
                    and codec.name == "H264"
                    and self.assembler.push(
                        packet.sequence_number, packet.timestamp, packet.marker, packet.payload
                    )
                ):
                    self.keyframe_at = time.monotonic()
                    self.keyframe_arrived.set()
                    self._switch_to_fast_path()
            await original(packet, arrival_time_ms=arrival_time_ms)

        return handle

    def _switch_to_fast_path(self) -> None:
        table: dict[int, tuple[dict[int, StreamStatistics], int]] = {}
        protocols: list[Any] = []
        for receiver in self._pc.getReceivers():
            streams = _ReceiverInternals.streams(receiver)
            for payload_type, codec in _ReceiverInternals.codecs(receiver).items():
                if codec.name != "rtx":
                    table[payload_type] = (streams, codec.clockRate)
            protocols += [p for p in _ReceiverInternals.ice_protocols(receiver) if p not in protocols]
        for protocol in protocols:
            protocol.datagram_received = _counting_datagram_handler(table, protocol.datagram_received)


def _enlarge_receive_buffer(sock: Any) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)  # root: past rmem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)  # capped by rmem_max


def _counting_datagram_handler(
    table: dict[int, tuple[dict[int, StreamStatistics], int]], original: Callable[[bytes, Any], None]
) -> Callable[[bytes, Any], None]:
    """A datagram handler that counts RTP of known payload types from its clear header; the rest goes on."""
    header = _Header()

    def datagram_received(data: bytes, addr: Any) -> None:
        # RTP: version 2 (first byte 128-191), second byte outside RTCP's 192-223 (RFC 5761).
        if len(data) >= 12 and 127 < data[0] < 192 and not 191 < data[1] < 224:
            entry = table.get(data[1] & 0x7F)
            if entry is not None:
                streams, clock_rate = entry
                ssrc = int.from_bytes(data[8:12], "big")
                stream = streams.get(ssrc)
                if stream is None:
                    stream = streams[ssrc] = StreamStatistics(clock_rate)
                header.sequence_number = (data[2] << 8) | data[3]
                header.timestamp = int.from_bytes(data[4:8], "big")
                stream.add(header)  # type: ignore[arg-type]
                return
        original(data, addr)

    return datagram_received


# --- signalling -------------------------------------------------------------------------------------------


class Signalling(Protocol):
    hung_up: asyncio.Event
    """Set when the server ends the session through signalling (never, for WHEP)."""

    async def negotiate(self, pc: RTCPeerConnection, report: SessionReport) -> float:
        """Bring ``pc`` to a negotiated state and return the ``time.monotonic()`` at which signalling began;
        raise ``SignallingError`` when the server refuses."""

    async def leave(self) -> None:
        """End the session on the server (best effort; never raises)."""


class WhepSignalling:
    def __init__(self, target: Target, http: httpx.AsyncClient) -> None:
        self._target = target
        self._http = http
        self._auth = {"Authorization": f"Bearer {target.token}"} if target.token else {}
        self._location: str | None = None
        self.hung_up = asyncio.Event()

    async def negotiate(self, pc: RTCPeerConnection, report: SessionReport) -> float:
        pc.addTransceiver("video", direction="recvonly").setCodecPreferences(_h264_first("video"))
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        started = time.monotonic()
        response = await self._http.post(
            self._target.url,
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", **self._auth},
        )
        report.status = response.status_code
        if response.status_code != 201:
            raise SignallingError(response.status_code, f"HTTP {response.status_code}: {response.text[:200]}")
        report.signalling_seconds = time.monotonic() - started
        self._location = urljoin(self._target.url, response.headers["Location"])
        await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
        return started

    async def leave(self) -> None:
        if self._location is not None:
            with contextlib.suppress(httpx.HTTPError):
                await self._http.delete(self._location, headers=self._auth)


class JanusSignalling:
    """Janus's HTTP API with the streaming plugin: the server offers, the viewer answers."""

    def __init__(self, target: Target, http: httpx.AsyncClient) -> None:
        self._root = target.url.rstrip("/")
        self._mountpoint = target.janus_mountpoint
        self._http = http
        self._session: str | None = None
        self._handle: str | None = None
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.hung_up = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "transaction": secrets.token_hex(6)}
        response = await self._http.post(f"{self._root}{path}", json=body)
        reply: dict[str, Any] = response.json()
        if response.status_code != 200 or reply.get("janus") == "error":
            error = reply.get("error", {})
            raise SignallingError(response.status_code, f"Janus {body['janus']}: {error or reply}")
        return reply

    async def negotiate(self, pc: RTCPeerConnection, report: SessionReport) -> float:
        started = time.monotonic()
        session = (await self._request("", {"janus": "create"}))["data"]["id"]
        self._session = f"/{session}"
        self._tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._keepalive())]
        handle = await self._request(self._session, {"janus": "attach", "plugin": "janus.plugin.streaming"})
        self._handle = f"{self._session}/{handle['data']['id']}"
        await self._message({"request": "watch", "id": self._mountpoint})
        offer = await self._next_jsep()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = {"type": "answer", "sdp": pc.localDescription.sdp}
        await self._message({"request": "start"}, jsep=answer)
        report.status = 200
        report.signalling_seconds = time.monotonic() - started
        return started

    async def _message(self, body: dict[str, Any], jsep: dict[str, str] | None = None) -> None:
        assert self._handle is not None
        request: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            request["jsep"] = jsep
        await self._request(self._handle, request)

    async def _next_jsep(self) -> dict[str, Any]:
        while True:
            event = await self._events.get()
            result = event.get("plugindata", {}).get("data", {})
            if "error" in result:
                raise SignallingError(result.get("error_code"), f"Janus streaming: {result['error']}")
            if "jsep" in event:
                jsep: dict[str, Any] = event["jsep"]
                return jsep

    async def _poll(self) -> None:
        """Long-poll the session's events: the offer, and ``hangup`` when Janus ends the session."""
        with contextlib.suppress(httpx.HTTPError, ValueError):
            while True:
                response = await self._http.get(
                    f"{self._root}{self._session}", params={"maxev": 10}, timeout=JANUS_POLL_SECONDS + 35
                )
                events = response.json()
                for event in events if isinstance(events, list) else [events]:
                    if event.get("janus") in ("hangup", "detached"):
                        self.hung_up.set()
                    elif event.get("janus") == "event":
                        self._events.put_nowait(event)

    async def _keepalive(self) -> None:
        with contextlib.suppress(httpx.HTTPError, SignallingError):
            while True:
                await asyncio.sleep(JANUS_KEEPALIVE_SECONDS)
                await self._request(self._session or "", {"janus": "keepalive"})

    async def leave(self) -> None:
        with contextlib.suppress(httpx.HTTPError, SignallingError, ValueError):
            if self._handle is not None:
                await self._request(self._handle, {"janus": "detach"})
            if self._session is not None:
                await self._request(self._session, {"janus": "destroy"})
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def signalling_for(target: Target, http: httpx.AsyncClient) -> Signalling:
    if target.janus_mountpoint is None:
        return WhepSignalling(target, http)
    return JanusSignalling(target, http)


# --- sessions and viewers ---------------------------------------------------------------------------------


@dataclasses.dataclass
class SessionOptions:
    timeout: float = 10.0  # signalling, and ICE + DTLS connected, each
    first_frame_only: bool = False  # leave once the first complete keyframe arrived (time to first frame)
    verify_keyframe: bool = False  # decode that keyframe (PyAV) to prove it shows a picture
    first_frame_timeout: float = 10.0


class Viewer:
    """One viewer slot: sessions one after another (reconnecting when the server ends one) until it leaves.

    ``counts`` adds up every session's packets, so loss and totals span reconnects.
    """

    def __init__(
        self,
        viewer_id: int,
        target: Target,
        options: SessionOptions,
        on_session: Callable[[SessionReport, str], None],
        *,
        max_reconnects: int = 3,
        reconnect_delay: float = 1.0,
    ) -> None:
        self.id = viewer_id
        self.target = target
        self.options = options
        self.on_session = on_session  # (report, "setup" | "first_frame" | "end")
        self.max_reconnects = max_reconnects
        self.reconnect_delay = reconnect_delay
        self.reconnects = 0
        self.connected = False  # a session is connected now
        self.sessions: list[SessionReport] = []
        self._finished_counts: dict[str, tuple[int, int]] = {}
        self._tap: RtpTap | None = None
        self.leave = asyncio.Event()

    def counts(self) -> dict[str, tuple[int, int]]:
        totals = dict(self._finished_counts)
        if self._tap is not None:
            for kind, (received, expected) in self._tap.counts().items():
                old = totals.get(kind, (0, 0))
                totals[kind] = (old[0] + received, old[1] + expected)
        return totals

    async def run(self, http: httpx.AsyncClient) -> None:
        attempt = 0
        while not self.leave.is_set():
            report = SessionReport(viewer=self.id, attempt=attempt)
            self.sessions.append(report)
            await self._session(http, report)
            if report.ended == "left" or self.options.first_frame_only or attempt >= self.max_reconnects:
                return
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.leave.wait(), self.reconnect_delay)
            if not self.leave.is_set():
                self.reconnects += 1

    async def _session(self, http: httpx.AsyncClient, report: SessionReport) -> None:
        options = self.options
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tap = self._tap = RtpTap(pc, keep_keyframe=options.verify_keyframe)
        signalling = signalling_for(self.target, http)
        server_closed = asyncio.Event()
        leaving = False

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("closed", "failed") and not leaving:
                server_closed.set()

        started = time.monotonic()
        try:
            started = await asyncio.wait_for(signalling.negotiate(pc, report), options.timeout)
            tap.install()
            await _first_of(_wait_connected(pc), server_closed.wait(), timeout=options.timeout)
            if pc.connectionState != "connected":
                raise SignallingError(
                    None, f"not connected within {options.timeout} s ({pc.connectionState})"
                )
            report.connected_seconds = time.monotonic() - started
            self.connected = True
            self.on_session(report, "setup")
            watch_first_frame = asyncio.create_task(self._first_frame(tap, report, started))
            ends = (server_closed.wait(), signalling.hung_up.wait())
            try:
                if options.first_frame_only:
                    await _first_of(tap.keyframe_arrived.wait(), *ends, timeout=options.first_frame_timeout)
                else:
                    await _first_of(self.leave.wait(), *ends, timeout=None)
            finally:
                watch_first_frame.cancel()
            if server_closed.is_set() or signalling.hung_up.is_set():
                report.ended = "server"
            elif options.first_frame_only and not tap.keyframe_arrived.is_set():
                raise SignallingError(None, f"no complete keyframe within {options.first_frame_timeout} s")
        except (SignallingError, TimeoutError, httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            report.ended = "error"
            report.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if report.connected_seconds is None:
                self.on_session(report, "setup")
        finally:
            leaving = True
            self.connected = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(signalling.leave(), options.timeout)
            counts = tap.counts()
            await pc.close()
            self._tap = None
            for kind, (received, expected) in counts.items():
                old = self._finished_counts.get(kind, (0, 0))
                self._finished_counts[kind] = (old[0] + received, old[1] + expected)
            report.duration_seconds = time.monotonic() - started
        if options.verify_keyframe and tap.assembler.keyframe is not None:
            report.keyframe_decoded = decodes_to_picture(tap.assembler.keyframe)
        self.on_session(report, "end")

    async def _first_frame(self, tap: RtpTap, report: SessionReport, started: float) -> None:
        await tap.keyframe_arrived.wait()
        assert tap.keyframe_at is not None
        report.time_to_first_frame_seconds = tap.keyframe_at - started
        self.on_session(report, "first_frame")


async def _wait_connected(pc: RTCPeerConnection) -> None:
    while pc.connectionState != "connected":
        if pc.connectionState in ("closed", "failed"):
            return
        await asyncio.sleep(0.005)


async def _first_of(*waits: Any, timeout: float | None) -> None:
    """Wait until the first of several awaitables finishes (or the timeout); cancel the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
