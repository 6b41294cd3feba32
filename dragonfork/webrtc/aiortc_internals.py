"""Every private attribute of aiortc, aioice and pylibsrtp the fast path relies on, and nothing else.

The fast path (``webrtc/fanout.py``) keeps aiortc for SDP, ICE and DTLS and then sends media itself: per
packet one SRTP protect with the viewer's own keys and one non-blocking ``sendto`` on the viewer's nominated
ICE socket. That needs a few things aiortc does not publish: the sender's SSRC (set before the answer so every
viewer of a stream carries the stream's SSRC), its RTCP task and RTCP handler (the fast path sends the sender
reports and answers NACK/PLI itself), the DTLS transport's outgoing SRTP session, the ICE connection's
nominated pair, and libsrtp's protect call on pylibsrtp's own buffer. They are all reached here, nowhere
else (the receive side's are in ``webrtc/rtp_tap.py``), and ``tests/unit/test_aiortc_internals.py`` tests
each so that an upgrade that moves one fails loudly (pyproject pins the versions they were written against).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pylibsrtp
from aioice import stun
from aioice.ice import CandidatePair, Connection
from aiortc import RTCPeerConnection, RTCRtpSender
from pylibsrtp._binding import ffi, lib  # type: ignore[import-untyped]

RtcpHandler = Callable[[Any], Coroutine[Any, Any, None]]


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


def outgoing_srtp(pc: RTCPeerConnection) -> pylibsrtp.Session | None:
    """The DTLS transport's outgoing SRTP session (the viewer's keys), once DTLS is connected."""
    for sender in pc.getSenders():
        return sender.transport._tx_srtp  # type: ignore[no-any-return]
    return None


class SrtpSocket:
    """Protect RTP into the SRTP session's own buffer and ``sendto`` it from there, without a copy.

    pylibsrtp's ``Session.protect`` copies the packet in, calls libsrtp and copies the result out as new
    bytes; here the result is sent straight from the buffer (a memoryview slice), and the length cell is
    reused. ``send`` returns False when the socket would block (the caller counts a dropped packet).
    """

    __slots__ = (
        "_session",
        "_socket",
        "_context",
        "_cdata",
        "_buffer",
        "_view",
        "_length",
        "_sendto",
        "_address",
    )

    MAX_PACKET = 1500 - 16  # pylibsrtp's buffer less the largest SRTP trailer (AES-GCM tag)

    def __init__(self, session: pylibsrtp.Session, sock: socket.socket, address: tuple[str, int]) -> None:
        self._session = session  # keeps the libsrtp context and its buffer alive
        self._socket = sock
        self._context = session._srtp[0]
        self._cdata = session._cdata
        self._buffer = session._buffer
        self._view = memoryview(session._buffer)
        self._length = ffi.new("int *")
        self._sendto = sock.sendto
        self._address = address

    def send(self, packet: bytes) -> bool:
        """Protect and send one RTP packet; False when the kernel would block (nothing was sent)."""
        return self.send_many((packet,)) == 0

    def send_many(self, packets: Sequence[bytes]) -> int:
        """``send`` for each packet (a frame, back to back); returns how many would have blocked."""
        buffer, view, length = self._buffer, self._view, self._length
        protect, context, cdata = lib.srtp_protect, self._context, self._cdata
        sendto, address = self._sendto, self._address
        blocked = 0
        for packet in packets:
            size = len(packet)
            buffer[0:size] = packet
            length[0] = size
            status = protect(context, cdata, length)
            if status:
                raise pylibsrtp.Error(f"srtp_protect failed: {status}")
            try:
                sendto(view[: length[0]], address)
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
