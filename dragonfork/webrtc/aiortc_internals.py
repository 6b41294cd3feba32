"""Every private attribute of aiortc, aioice, pylibsrtp and trio-asyncio the server uses, and nothing else.

The fast path (``webrtc/fanout.py``) keeps aiortc for SDP, ICE and DTLS and then sends media itself: per
packet one SRTP protect with the viewer's own keys and one non-blocking ``sendto`` on the viewer's nominated
ICE socket. That needs a few things aiortc does not publish: the sender's SSRC (set before the answer so every
viewer of a stream carries the stream's SSRC), its RTCP task and RTCP handler (the fast path sends the sender
reports and answers NACK/PLI itself), the DTLS transport's outgoing and incoming SRTP sessions, the ICE
connection's nominated pair, its protocol's transport and datagram handler (``PairReader`` reads the socket:
the peer's RTCP and the answers to our consent checks are taken there), aioice's consent loop (replaced by
the fan-out's checks), and libsrtp's protect call on pylibsrtp's own buffer. Besides the fast path,
trio-asyncio's loop is made to run its ready callbacks in batches (``run_ready_callbacks_together``), and
every peer connection is given the process's DTLS certificate (``peer_connection``) instead of generating
its own. They are all reached here, nowhere else (the receive side's are in ``webrtc/rtp_tap.py``), and
``tests/unit/test_aiortc_internals.py`` tests each so that an upgrade that moves one fails loudly (pyproject
pins the versions they were written against).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import socket
import struct
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, cast

import aiortc.rtcpeerconnection
import pylibsrtp
import trio
import trio_asyncio
from aioice import stun
from aioice.ice import CandidatePair, Connection
from aiortc import RTCCertificate, RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsFingerprint, SRTPProtectionProfile
from aiortc.rtp import (
    RTCP_PSFB,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB,
    RTCP_RTPFB_NACK,
    RtcpPacket,
    is_rtcp,
)
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


class PairReader:
    """Reads the nominated pair's UDP socket from a Trio task of ours instead of asyncio's transport.

    Under trio-asyncio every readable event on an asyncio datagram transport costs a task of trio-asyncio's
    own (``_io_task``) a wake-up, one ``recvfrom``, then a round trip through the asyncio main loop
    (``synchronize``: an Event set by a handle queued there) before it waits again: three task switches per
    datagram, for the two or three receiver reports and the STUN checks every viewer sends a second. ``run``
    pauses the transport's reading (public asyncio API) and reads the socket itself, draining it on each
    wake-up: SRTCP is decrypted here and handed to ``on_rtcp`` at once, with the feedback in it parsed
    (``feedback``; each datagram keeps the viewer alive), where aiortc's way for each report is long (aioice
    tries it as STUN, queues it for the ICE transport, the DTLS transport's task wakes up to unprotect it,
    parse and route it, and the sender's handler is awaited). Everything else (STUN, DTLS: the peer's
    close_notify, RTP) goes to aioice's ``StunProtocol.datagram_received`` as before, whose futures and
    ``call_soon`` work from a Trio task as from trio-asyncio's own. A datagram that does not unprotect or
    parse is dropped, as aiortc drops it. When ``run`` ends (cancelled: the viewer ends) the
    transport reads again, until aioice closes it with the peer connection.
    """

    BATCH = 64  # datagrams read per wake-up at most, before other tasks get a turn
    CONSENT_PENDING = 4  # consent checks awaiting an answer at most (the oldest is forgotten)

    def __init__(
        self,
        pc: RTCPeerConnection,
        sock: socket.socket,
        *,
        on_rtcp: Callable[[list[Any]], None],
        on_consent: Callable[[], None],
    ) -> None:
        found = _nominated_pair(pc)
        session = next((sender.transport._rx_srtp for sender in pc.getSenders()), None)
        if found is None or session is None or found[0].remote_password is None:
            raise ValueError("no nominated pair, remote ICE password or SRTP session yet")
        self._connection, self._pair = found
        self._protocol = self._pair.protocol
        self._remote_key = found[0].remote_password.encode("utf8")
        self._session: pylibsrtp.Session = session
        self._socket = sock
        self._on_rtcp = on_rtcp
        self._on_consent = on_consent
        self._consent_asked: dict[bytes, None] = {}  # transaction ids, oldest first

    def ask_consent(self) -> None:
        """Send one RFC 7675 consent check (a STUN binding request) on the pair; ``on_consent`` is called
        when its answer comes (read by ``run``). No answer (a lost datagram, a vanished peer) calls nothing:
        the caller keeps the time. A send that would block is a check not sent, as a lost one."""
        request = self._connection.build_request(self._pair, nominate=False)
        request.add_message_integrity(self._remote_key)
        asked = self._consent_asked
        asked[request.transaction_id] = None
        while len(asked) > self.CONSENT_PENDING:
            del asked[next(iter(asked))]
        with contextlib.suppress(BlockingIOError):
            self._socket.sendto(bytes(request), self._pair.remote_addr)

    def stop_aioice_consent(self) -> None:
        """End aioice's own consent loop for this connection (``Connection._query_consent_task``: an
        asyncio sleep, a transaction and its timers per viewer every ~5 s); ``ask_consent``, called by the
        fan-out's sweep for every viewer in one pass, takes its place."""
        task = self._connection._query_consent_task
        if task is not None:
            task.cancel()

    async def run(self) -> None:
        """Read the socket until cancelled."""
        # asyncio's selector datagram transport has ReadTransport's pause/resume (its type does not say so)
        transport = cast(asyncio.ReadTransport, self._protocol.transport)
        transport.pause_reading()  # ends trio-asyncio's reader task of this socket (its waiter goes at once)
        sock, receive, dispatch, batch = self._socket, self._socket.recvfrom, self.dispatch, self.BATCH
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                for _ in range(batch):
                    try:
                        data, address = receive(65536)
                    except BlockingIOError:
                        break
                    except OSError as exc:  # as asyncio's transport does: aioice logs it
                        self._protocol.error_received(exc)
                        break
                    dispatch(data, address)
        finally:
            if not transport.is_closing():
                transport.resume_reading()

    def dispatch(self, data: bytes, address: tuple[Any, ...]) -> None:
        """One datagram from the socket: SRTCP to ``on_rtcp`` (decrypted, its feedback parsed), the answer
        to one of our consent checks to ``on_consent``, the rest to aioice."""
        if not (is_rtcp(data) and 127 < data[0] < 192):
            if data[8:20] in self._consent_asked and self._consent_answered(data):
                return
            self._protocol.datagram_received(data, address)
            return
        try:
            packets = feedback(self._session.unprotect_rtcp(data))
        except (pylibsrtp.Error, ValueError):
            return
        self._on_rtcp(packets)

    def _consent_answered(self, data: bytes) -> bool:
        """Whether ``data`` is an authenticated success response to one of our consent checks."""
        try:
            message = stun.parse_message(data)
        except ValueError:
            return False
        if message.message_class != stun.Class.RESPONSE or not message.check_message_integrity(
            self._remote_key
        ):
            return False
        del self._consent_asked[message.transaction_id]
        self._on_consent()
        return True


_FEEDBACK = frozenset(((RTCP_RTPFB, RTCP_RTPFB_NACK), (RTCP_PSFB, RTCP_PSFB_PLI), (RTCP_PSFB, RTCP_PSFB_FIR)))


def feedback(compound: bytes) -> list[Any]:
    """The NACK, PLI and FIR packets of a compound RTCP packet, parsed by aiortc; the rest (receiver
    reports, SDES, REMB, transport-wide feedback: most of what a viewer sends, and nothing the fan-out
    answers) is skipped by its length field, unparsed. ValueError when the lengths do not add up."""
    packets: list[Any] = []
    at, end = 0, len(compound)
    while at < end:
        if end - at < 4 or compound[at] >> 6 != 2:
            raise ValueError("RTCP packet truncated or not version 2")
        length = 4 + 4 * ((compound[at + 2] << 8) | compound[at + 3])
        if (compound[at + 1], compound[at] & 0x1F) in _FEEDBACK:
            packets += RtcpPacket.parse(compound[at : at + length])
        at += length
    if at != end:
        raise ValueError("RTCP packet lengths overrun the datagram")
    return packets


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


def _runs(sizes: Sequence[int]) -> Iterator[tuple[int, int, int, int]]:
    """The runs of packets lying back to back, ``sizes`` bytes each, that can leave in one segmented send:
    equal sizes, the last of a run possibly shorter. Yields (offset, segment size, packets, bytes)."""
    start = offset = 0
    count = len(sizes)
    while start < count:
        segment = sizes[start]
        end = start + 1
        while end < count and sizes[end] == segment:
            end += 1
        if end < count and sizes[end] < segment:
            end += 1  # a shorter packet ends a run
        total = segment * (end - start - 1) + sizes[end - 1]
        yield offset, segment, end - start, total
        offset += total
        start = end


class _Batch:
    """Packets of a laid-out frame that are protected and sent in one go (within ``_FrameBuffer``'s limits):
    their bytes with room for the trailer after each, where each is protected, and the runs they leave in."""

    __slots__ = ("data", "protects", "runs")

    def __init__(self, packets: Sequence[bytes], trailer: int) -> None:
        frame = _frame_buffer()
        room = bytes(trailer)
        self.data = room.join(packets) + room
        self.protects: list[tuple[Any, int]] = []  # (where in the buffer, bytes before protection)
        sizes, offset = [], 0
        for packet in packets:
            self.protects.append((frame.cdata + offset, len(packet)))
            offset += len(packet) + trailer
            sizes.append(len(packet) + trailer)
        self.runs = [
            (frame.view[at : at + total], segment, count) for at, segment, count, total in _runs(sizes)
        ]


class LaidOutFrame:
    """A frame's RTP packets (one layout's wire form), laid out once for every viewer it goes to.

    Protecting in place grows each packet by its SRTP trailer, whose size the profile fixes (the tag: 10
    bytes for AES-CM with HMAC-SHA1-80, 16 for AES-GCM). Laid out once per frame with that much room after
    each packet, a viewer's turn is one copy of the frame into the buffer, one ``srtp_protect`` per packet
    at an offset known in advance, and one send per run, with no slicing or bookkeeping per packet per
    viewer (``SrtpSocket.send_frame``). Each trailer size a viewer needs is laid out the first time.
    """

    __slots__ = ("packets", "_batches")

    def __init__(self, packets: Sequence[bytes]) -> None:
        self.packets = packets
        self._batches: dict[int, list[_Batch]] = {}

    def batches(self, trailer: int) -> list[_Batch]:
        batches = self._batches.get(trailer)
        if batches is None:
            batches = self._batches[trailer] = []
            room, most = _FrameBuffer.BYTES, _FrameBuffer.PACKETS
            start = offset = 0
            for index, packet in enumerate(self.packets):
                if offset + len(packet) + trailer > room or index - start == most:
                    batches.append(_Batch(self.packets[start:index], trailer))
                    start, offset = index, 0
                offset += len(packet) + trailer
            if start < len(self.packets):
                batches.append(_Batch(self.packets[start:], trailer))
        return batches


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

    __slots__ = (
        "_session",
        "_socket",
        "_context",
        "_length",
        "_sendto",
        "_sendmsg",
        "_address",
        "gso",
        "trailer",
    )

    def __init__(self, session: pylibsrtp.Session, sock: socket.socket, address: tuple[str, int]) -> None:
        self._session = session  # keeps the libsrtp context alive
        self._socket = sock
        self._context = session._srtp[0]
        self._length = ffi.new("int *")
        self._sendto = sock.sendto
        self._sendmsg = sock.sendmsg
        self._address = address
        self.gso = True
        self.trailer: int | None = None  # bytes protection adds to a packet, once one was protected

    @property
    def socket(self) -> socket.socket:
        """The duplicate of the ICE socket it sends on (``PairReader`` reads the peer's datagrams there)."""
        return self._socket

    def send(self, packet: bytes) -> bool:
        """Protect and send one RTP packet; False when the kernel would block (nothing was sent)."""
        return self.send_many((packet,)) == 0

    def send_frame(self, frame: LaidOutFrame) -> int:
        """Protect and send a frame's packets, laid out for this socket's trailer once it is known; returns
        how many would have blocked."""
        trailer = self.trailer
        if trailer is None:
            return self.send_many(frame.packets)
        view, length, context, protect = _frame_buffer().view, self._length, self._context, lib.srtp_protect
        blocked = 0
        for batch in frame.batches(trailer):
            view[: len(batch.data)] = batch.data
            for where, size in batch.protects:
                length[0] = size
                status = protect(context, where, length)
                if status or length[0] != size + trailer:
                    raise pylibsrtp.Error(f"srtp_protect failed: {status} ({length[0]} bytes of {size})")
            for data, segment, count in batch.runs:
                blocked += self._send_run(data, segment, count)
        return blocked

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
            self.trailer = sizes[-1] - len(packets[-1])
            blocked += self._send_runs(view, sizes)
        return blocked

    def _send_runs(self, view: memoryview, sizes: list[int]) -> int:
        """Send the protected packets lying back to back in ``view``, ``sizes`` bytes each, run by run."""
        return sum(
            self._send_run(view[at : at + total], segment, count)
            for at, segment, count, total in _runs(sizes)
        )

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
