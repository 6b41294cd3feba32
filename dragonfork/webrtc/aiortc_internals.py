"""Every private attribute of aiortc, aioice, pylibsrtp and trio-asyncio the server uses, and nothing else.

The fast path (``webrtc/fanout.py``) keeps aiortc for SDP, ICE and DTLS and then sends media itself: per
packet one SRTP protect with the viewer's own keys and one non-blocking ``sendto`` on the viewer's nominated
ICE socket. That needs a few things aiortc does not publish: the sender's SSRC (set before the answer so every
viewer of a stream carries the stream's SSRC), its RTCP task and RTCP handler (the fast path sends the sender
reports and answers NACK/PLI itself), the DTLS transport's outgoing and incoming SRTP sessions, the ICE
connection's nominated pair and its socket's datagram handler (the peer's RTCP is taken there), and libsrtp's
protect call on pylibsrtp's own buffer. Besides the fast path, trio-asyncio's loop is made to run its ready
callbacks in batches (``run_ready_callbacks_together``), and every peer connection is given the process's
DTLS certificate (``peer_connection``) instead of generating its own. They are all reached here, nowhere
else (the receive side's are in ``webrtc/rtp_tap.py``), and ``tests/unit/test_aiortc_internals.py`` tests
each so that an upgrade that moves one fails loudly (pyproject pins the versions they were written against).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
import struct
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiortc.rtcpeerconnection
import pylibsrtp
import trio
import trio_asyncio
from aioice import stun
from aioice.ice import CandidatePair, Connection
from aiortc import RTCCertificate, RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsFingerprint, SRTPProtectionProfile
from aiortc.rtp import RtcpPacket, is_rtcp
from OpenSSL import SSL
from pylibsrtp._binding import ffi, lib  # type: ignore[import-untyped]

RtcpHandler = Callable[[Any], Coroutine[Any, Any, None]]
ASYNCIO_BATCH = (
    32  # asyncio callbacks run in one turn of the Trio scheduler, at most (run_ready_callbacks_together)
)


def run_ready_callbacks_together(loop: trio_asyncio.TrioEventLoop) -> None:
    """Make ``loop`` run the asyncio callbacks that are ready in one turn of the Trio scheduler.

    trio-asyncio's loop is one Trio task that runs one asyncio callback per turn
    (``TrioEventLoop._main_loop_one``: receive one handle from its queue, a checkpoint, run it), so the
    asyncio side moves one step per Trio scheduling round. A WHEP answer is a chain of some 30 dependent
    asyncio steps (aiortc's tasks, aioice binding its sockets, futures and their callbacks): on a busy
    server each step waits for a whole round (the fan-out's slices, every other task), which was most of a
    POST's time during a sweep. Here a turn runs what is ready and what that makes ready, up to
    ``ASYNCIO_BATCH`` handles (or due timers) without a checkpoint between them: an answer takes about 3
    rounds instead of 30, and a callback that keeps rescheduling itself still yields every
    ``ASYNCIO_BATCH`` runs, so Trio's tasks keep their turns.
    """
    one = loop._main_loop_one

    async def run_ready(no_wait: bool = False) -> None:
        await one(no_wait)  # waits for a handle when none is ready
        for _ in range(ASYNCIO_BATCH - 1):
            try:
                await one(True)  # no_wait: a queued handle or a due timer, no checkpoint
            except trio.WouldBlock:
                return

    loop._main_loop_one = run_ready  # type: ignore[method-assign]


class SharedCertificate(RTCCertificate):
    """A DTLS certificate that many peer connections present (one fingerprint, as Janus and MediaMTX do).

    aiortc makes a new key and certificate for every ``RTCPeerConnection`` (about 0.4 ms), computes its
    three fingerprints each time a transport's parameters are asked for, and builds a new OpenSSL context
    (certificate, key, ciphers: about 1.2 ms) for every DTLS handshake. The certificate only identifies
    the server's end of the handshake (the peer checks it against the answer's fingerprint), so one per
    process serves every connection: its fingerprints and its context are made once. An OpenSSL context
    is meant to be shared by connections; each handshake still has its own ``SSL.Connection``.
    """

    def __init__(self, key: Any, cert: Any) -> None:
        super().__init__(key, cert)
        self._fingerprints = super().getFingerprints()
        self._contexts: dict[tuple[str, ...], SSL.Context] = {}

    def getFingerprints(self) -> list[RTCDtlsFingerprint]:  # noqa: N802 - aiortc's name
        return list(self._fingerprints)

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        key = tuple(profile.openssl_profile.decode() for profile in srtp_profiles)
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = super()._create_ssl_context(srtp_profiles)
            # A server-side context caches every session it negotiates (for resumption, which WebRTC
            # does not use); shared by every connection, that cache would only grow.
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        return context


class _GivenCertificate:
    """Stands in for ``RTCCertificate`` in aiortc's peer connection module while one is constructed."""

    def __init__(self, certificate: RTCCertificate) -> None:
        self._certificate = certificate

    def generateCertificate(self) -> RTCCertificate:  # noqa: N802 - aiortc's name
        return self._certificate


def peer_connection(configuration: RTCConfiguration, certificate: RTCCertificate) -> RTCPeerConnection:
    """A new ``RTCPeerConnection`` that presents ``certificate`` (aiortc takes none: its ``__init__``
    calls ``RTCCertificate.generateCertificate()`` from its module, which is swapped for the call)."""
    module: Any = aiortc.rtcpeerconnection
    generator = module.RTCCertificate
    module.RTCCertificate = _GivenCertificate(certificate)
    try:
        return RTCPeerConnection(configuration)
    finally:
        module.RTCCertificate = generator


def set_sender_ssrc(sender: RTCRtpSender, ssrc: int) -> None:
    """Make ``sender`` send (and announce in the answer) ``ssrc``; call before the answer is created."""
    sender._ssrc = ssrc


class RtcpTakeover:
    """Holds aiortc's RTCP task of one sender until the viewer knows which path sends its media.

    aiortc starts ``RTCRtpSender._run_rtcp`` when the connection comes up; on the fast path its sender reports
    would be wrong (they count the packets aiortc sent: none). ``install`` (before the answer) replaces the
    task with one that waits for ``decide``: the fast path's own RTCP (``True``: aiortc's loop never runs
    and ``handler`` receives the peer's RTCP for this sender), or aiortc's (``False``, the fallback path).
    ``RTCRtpSender.stop`` waits for the task's started and exited events, which the replacement sets.
    """

    def __init__(self, sender: RTCRtpSender) -> None:
        self._sender = sender
        self._decision: bool | None = None
        self._decided: asyncio.Future[bool] | None = None

    def install(self) -> None:
        sender = self._sender
        aiortc_rtcp = sender._run_rtcp
        started: asyncio.Event = sender._RTCRtpSender__rtcp_started  # type: ignore[attr-defined]
        exited: asyncio.Event = sender._RTCRtpSender__rtcp_exited  # type: ignore[attr-defined]

        async def run_rtcp() -> None:
            started.set()
            try:
                ours = self._decision
                if ours is None:
                    self._decided = asyncio.get_running_loop().create_future()
                    ours = await self._decided
                if not ours:
                    await aiortc_rtcp()  # sets ``exited`` itself
                    return
                await asyncio.get_running_loop().create_future()  # until stop() cancels it
            except asyncio.CancelledError:
                pass
            exited.set()

        sender._run_rtcp = run_rtcp  # type: ignore[method-assign]

    def decide(self, fast_path: bool, handler: RtcpHandler | None = None) -> None:
        """Choose who sends RTCP for this sender (once); on the fast path ``handler`` gets its RTCP."""
        if self._decision is not None:
            return
        self._decision = fast_path
        if fast_path and handler is not None:
            self._sender._handle_rtcp_packet = handler  # type: ignore[method-assign,assignment]
        if self._decided is not None and not self._decided.done():
            self._decided.set_result(fast_path)


def _ice_connection(pc: RTCPeerConnection) -> Connection | None:
    for sender in pc.getSenders():
        return sender.transport.transport._connection  # type: ignore[no-any-return]
    return None


def _nominated_pair(pc: RTCPeerConnection) -> tuple[Connection, CandidatePair] | None:
    connection = _ice_connection(pc)
    if connection is None:
        return None
    pair = connection._nominated.get(1)  # BUNDLE + rtcp-mux: one component
    return (connection, pair) if pair is not None else None


def nominated_socket(pc: RTCPeerConnection) -> tuple[socket.socket, tuple[str, int]] | None:
    """A duplicate of the nominated pair's UDP socket (non-blocking) and the peer's address.

    None when the pair is not a plain UDP socket of ours (a TURN relay: aiortc keeps sending then). The
    caller owns and closes the duplicate; aioice keeps reading from the original.
    """
    found = _nominated_pair(pc)
    if found is None:
        return None
    _, pair = found
    if pair.protocol.local_candidate.type == "relay":
        return None
    transport_socket = pair.protocol.transport.get_extra_info("socket")
    if transport_socket is None or transport_socket.type != socket.SOCK_DGRAM:
        return None
    own = transport_socket.dup()
    own.setblocking(False)
    return own, pair.remote_addr


async def consent_fresh(pc: RTCPeerConnection) -> bool:
    """One RFC 7675 consent check on the nominated pair (asyncio side): True when the peer answered.

    aioice runs its own checks every ~5 s and fails the connection after 30 s without answers; this one lets
    the viewer tell a live player that sends no receiver reports from a vanished one within seconds.
    """
    found = _nominated_pair(pc)
    if found is None:
        return False
    connection, pair = found
    if connection.remote_password is None:
        return False
    request = connection.build_request(pair, nominate=False)
    try:
        await pair.protocol.request(
            request,
            pair.remote_addr,
            integrity_key=connection.remote_password.encode("utf8"),
            retransmissions=0,
        )
    except stun.TransactionError:
        return False
    return True


def take_rtcp(pc: RTCPeerConnection, handler: Callable[[list[Any]], None]) -> bool:
    """Give every SRTCP datagram that reaches the nominated pair's socket to ``handler`` at once: decrypted
    and parsed (aiortc's ``RtcpPacket``s), in the socket's read callback. False when there is no pair.

    aiortc's own way for each receiver report is long: aioice tries it as STUN, queues it for the ICE
    transport, the DTLS transport's task wakes up to unprotect it, parse and route it, and the sender's
    handler is awaited: two asyncio loop iterations and a task switch under trio-asyncio, several coroutines,
    for each of the two or three reports a viewer sends a second. Here that is one call. RTP, DTLS (the
    peer's close_notify) and STUN still go aioice's and aiortc's way; a datagram that does not unprotect or
    parse is dropped, as aiortc drops it.
    """
    found = _nominated_pair(pc)
    session = next((sender.transport._rx_srtp for sender in pc.getSenders()), None)
    if found is None or session is None:
        return False
    protocol = found[1].protocol
    forward = protocol.datagram_received

    def datagram_received(data: bytes | str, addr: tuple[Any, ...]) -> None:
        if isinstance(data, str) or not (is_rtcp(data) and 127 < data[0] < 192):
            forward(data, addr)
            return
        try:
            packets = RtcpPacket.parse(session.unprotect_rtcp(data))
        except (pylibsrtp.Error, ValueError):
            return
        handler(packets)

    protocol.datagram_received = datagram_received  # type: ignore[method-assign]
    return True


def outgoing_srtp(pc: RTCPeerConnection) -> pylibsrtp.Session | None:
    """The DTLS transport's outgoing SRTP session (the viewer's keys), once DTLS is connected."""
    for sender in pc.getSenders():
        return sender.transport._tx_srtp  # type: ignore[no-any-return]
    return None


_SOL_UDP, _UDP_SEGMENT = 17, 103  # linux/udp.h: UDP generic segmentation offload (Linux ≥ 4.18)
_SEGMENT_SIZE = struct.Struct("=H")
_GSO_REFUSED = frozenset((errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP))


class _FrameBuffer:
    """Where packets are protected back to back, so that runs of them can leave in one ``sendmsg``.

    One per process: a frame is protected and sent to one viewer completely before the next viewer's turn
    (the fan-out's loop is synchronous), so every viewer's packets take turns in the same memory.
    """

    BYTES = 60_000  # per batch: under UDP's 65,507-byte limit for one (segmented) datagram
    PACKETS = 48  # and under the kernel's 64 segments per send
    TRAILER = 16  # the largest SRTP trailer (AES-GCM's tag): room left after each packet

    def __init__(self) -> None:
        self.cdata = ffi.new("char[]", self.BYTES)
        self.view = memoryview(ffi.buffer(self.cdata))


_frame_buffer = functools.cache(_FrameBuffer)


class SrtpSocket:
    """Protect RTP with libsrtp in a reused buffer and send it from there, without a copy out.

    pylibsrtp's ``Session.protect`` copies the packet in, calls libsrtp and copies the result out as new
    bytes. Here a frame's packets are protected in place, back to back, and each run of equal-sized ones
    (the last of a run may be shorter, as the last FU-A fragment is) leaves in one ``sendmsg`` with UDP
    generic segmentation offload (``UDP_SEGMENT``): the kernel cuts it into the very datagrams a ``sendto``
    each would have sent, at about a third of the cost per packet. When the kernel or the route refuses
    segmentation (an old kernel, a device without checksum offload) the socket turns it off (``gso``) and
    sends one ``sendto`` per packet. A send that would block drops its packets (the caller counts them).
    """

    __slots__ = ("_session", "_socket", "_context", "_length", "_sendto", "_sendmsg", "_address", "gso")

    def __init__(self, session: pylibsrtp.Session, sock: socket.socket, address: tuple[str, int]) -> None:
        self._session = session  # keeps the libsrtp context alive
        self._socket = sock
        self._context = session._srtp[0]
        self._length = ffi.new("int *")
        self._sendto = sock.sendto
        self._sendmsg = sock.sendmsg
        self._address = address
        self.gso = True

    def send(self, packet: bytes) -> bool:
        """Protect and send one RTP packet; False when the kernel would block (nothing was sent)."""
        return self.send_many((packet,)) == 0

    def send_many(self, packets: Sequence[bytes]) -> int:
        """Protect and send ``packets`` (a frame, back to back); returns how many would have blocked."""
        frame = _frame_buffer()
        cdata, view, length, context, protect = (
            frame.cdata,
            frame.view,
            self._length,
            self._context,
            lib.srtp_protect,
        )
        room, most, trailer = frame.BYTES, frame.PACKETS, frame.TRAILER
        blocked = offset = 0
        sizes: list[int] = []
        for packet in packets:
            size = len(packet)
            if offset + size + trailer > room or len(sizes) == most:
                blocked += self._send_runs(view, sizes)
                offset, sizes = 0, []
            view[offset : offset + size] = packet
            length[0] = size
            status = protect(context, cdata + offset, length)
            if status:
                raise pylibsrtp.Error(f"srtp_protect failed: {status}")
            offset += length[0]
            sizes.append(length[0])
        if sizes:
            blocked += self._send_runs(view, sizes)
        return blocked

    def _send_runs(self, view: memoryview, sizes: list[int]) -> int:
        """Send the protected packets lying back to back in ``view``, ``sizes`` bytes each, run by run."""
        blocked = start = offset = 0
        count = len(sizes)
        while start < count:
            segment = sizes[start]
            end = start + 1
            while end < count and sizes[end] == segment:
                end += 1
            if end < count and sizes[end] < segment:
                end += 1  # a shorter packet ends a run
            total = segment * (end - start - 1) + sizes[end - 1]
            blocked += self._send_run(view[offset : offset + total], segment, end - start)
            offset += total
            start = end
        return blocked

    def _send_run(self, data: memoryview, segment: int, count: int) -> int:
        """``count`` packets of ``segment`` bytes (the last may be shorter) in one send; how many blocked."""
        try:
            if count == 1:
                self._sendto(data, self._address)
            elif self.gso:
                self._sendmsg(
                    [data], [(_SOL_UDP, _UDP_SEGMENT, _SEGMENT_SIZE.pack(segment))], 0, self._address
                )
            else:
                return self._send_each(data, segment)
        except BlockingIOError:
            return count
        except OSError as exc:
            if count == 1 or exc.errno not in _GSO_REFUSED:
                raise
            self.gso = False  # nothing of the run was sent
            return self._send_each(data, segment)
        return 0

    def _send_each(self, data: memoryview, segment: int) -> int:
        blocked = 0
        for at in range(0, len(data), segment):
            try:
                self._sendto(data[at : at + segment], self._address)
            except BlockingIOError:
                blocked += 1
        return blocked

    def send_rtcp(self, packet: bytes) -> bool:
        """Protect (SRTCP, pylibsrtp's public call) and send one compound RTCP packet."""
        try:
            self._sendto(self._session.protect_rtcp(packet), self._address)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        """Close our duplicate of the ICE socket (aioice's own closes with the peer connection)."""
        self._socket.close()
