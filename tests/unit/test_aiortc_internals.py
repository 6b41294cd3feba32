"""One test per private aiortc / aioice / pylibsrtp attribute ``webrtc/aiortc_internals.py`` relies on.

Each fails loudly (AttributeError, a wrong type, a hang caught by a deadline) when an upgrade moves what the
fast path reaches into; pyproject pins the versions. Real peers: two aiortc peer connections on loopback.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiortc.rtcpeerconnection
import pylibsrtp
import pytest
import trio
import trio_asyncio
from aioice import stun
from aioice.ice import CandidatePair, Connection
from aiortc import (
    RTCCertificate,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSourceInfo,
    RtcpSrPacket,
)
from OpenSSL import SSL
from trio_asyncio import aio_as_trio

from dragonfork.webrtc import aiortc_internals
from dragonfork.webrtc.aiortc_internals import RtcpTakeover, SharedCertificate, SrtpSocket
from dragonfork.webrtc.sdp import answered_media
from dragonfork.webrtc.track import FrameTrack

SO_NO_CHECK = 11  # asm-generic/socket.h: send UDP without checksums


class Pair:
    """A sending peer (ours, one video track) and a receiving peer, connected over loopback."""

    def __init__(self, certificate: RTCCertificate | None = None) -> None:
        configuration = RTCConfiguration(iceServers=[])
        self.sender_pc = (
            RTCPeerConnection(configuration)
            if certificate is None
            else aiortc_internals.peer_connection(configuration, certificate)
        )
        self.receiver_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.receiver_pc.addTransceiver("video", direction="recvonly")
        self.track = FrameTrack("video")
        self.sender: RTCRtpSender = self.sender_pc.addTransceiver(self.track, direction="sendonly").sender
        self.answer = ""

    async def connect(self) -> None:
        await aio_as_trio(self.receiver_pc.setLocalDescription)()
        await aio_as_trio(self.sender_pc.setRemoteDescription)(self.receiver_pc.localDescription)
        await aio_as_trio(self.sender_pc.setLocalDescription)()
        self.answer = self.sender_pc.localDescription.sdp
        await aio_as_trio(self.receiver_pc.setRemoteDescription)(
            RTCSessionDescription(sdp=self.answer, type="answer")
        )
        with trio.fail_after(10):
            while self.sender_pc.connectionState != "connected":
                await trio.sleep(0.01)

    async def close(self) -> None:
        with trio.fail_after(5):  # a takeover that lost aiortc's events would hang RTCRtpSender.stop
            await aio_as_trio(self.sender_pc.close)()
            await aio_as_trio(self.receiver_pc.close)()
        self.track.stop()


async def consent_fresh(pc: RTCPeerConnection) -> bool:
    """One consent check from ``pc`` made the way aioice makes its own (``StunProtocol.request``): True
    when the other peer (its aioice) answered."""
    connection = pc.getSenders()[0].transport.transport._connection
    pair = connection._nominated[1]
    try:
        await pair.protocol.request(
            connection.build_request(pair, nominate=False),
            pair.remote_addr,
            integrity_key=connection.remote_password.encode("utf8"),
            retransmissions=0,
        )
    except stun.TransactionError:
        return False
    return True


@asynccontextmanager
async def pair(
    *, connect: bool = True, before_connect: Any = None, certificate: RTCCertificate | None = None
) -> AsyncIterator[Pair]:
    async with trio_asyncio.open_loop():
        peers = Pair(certificate)
        if before_connect is not None:
            before_connect(peers)
        try:
            if connect:
                await peers.connect()
            yield peers
        finally:
            await peers.close()


async def test_sender_ssrc_is_what_the_answer_announces() -> None:
    """``RTCRtpSender._ssrc``: set before the answer, announced in it."""
    ssrc = secrets.randbits(31) + 1
    async with pair(
        before_connect=lambda peers: aiortc_internals.set_sender_ssrc(peers.sender, ssrc)
    ) as peers:
        assert answered_media(peers.answer)["video"].ssrc == ssrc


async def test_rtcp_takeover_keeps_aiortcs_sender_reports_away_and_stop_still_returns() -> None:
    """``RTCRtpSender._run_rtcp`` and its ``__rtcp_started``/``__rtcp_exited`` events."""
    reports: list[Any] = []
    takeovers: list[RtcpTakeover] = []

    def install(peers: Pair) -> None:
        takeover = RtcpTakeover(peers.sender)
        takeover.install()
        takeovers.append(takeover)
        receiver = peers.receiver_pc.getReceivers()[0]
        original = receiver._handle_rtcp_packet

        async def spy(packet: Any) -> None:
            reports.append(packet)
            await original(packet)

        receiver._handle_rtcp_packet = spy  # type: ignore[method-assign]

    async with pair(before_connect=install):
        takeovers[0].decide(fast_path=True)
        await trio.sleep(2.5)  # aiortc sends a report every 0.5-1.5 s
        assert not any(isinstance(packet, RtcpSrPacket) for packet in reports)
    # leaving the block closed both peers within the deadline: stop() found the events it waits for


def installing_takeover(takeovers: list[RtcpTakeover]) -> Callable[[Pair], None]:
    """A ``before_connect`` that installs an RTCP takeover on the sender (kept in ``takeovers``)."""

    def install(peers: Pair) -> None:
        takeover = RtcpTakeover(peers.sender)
        takeover.install()
        takeovers.append(takeover)

    return install


async def wait_for_a_receiver_report(peers: Pair, received: list[Any]) -> None:
    """Send the receiver a few RTP packets on the fast path's socket (it reports only on a source it has
    heard), then wait until a receiver report lands in ``received`` (a list of RTCP packets, or of the
    feedback lists ``PairReader`` hands over per datagram: an empty one is a report's)."""
    srtp = aiortc_internals.outgoing_srtp(peers.sender_pc)
    path = aiortc_internals.nominated_socket(peers.sender_pc)
    assert srtp is not None and path is not None
    out = SrtpSocket(srtp, *path)
    ssrc = answered_media(peers.answer)["video"].ssrc
    for sequence in range(5):
        header = bytes([0x80, 0x80 | 97]) + sequence.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big")
        out.send(header + b"\x00" * 20)
    try:
        with trio.fail_after(5):
            while not any(isinstance(packet, RtcpRrPacket | list) for packet in received):
                await trio.sleep(0.05)
    finally:
        out.close()


async def test_rtcp_takeover_gives_the_peers_rtcp_to_the_handler() -> None:
    """``RTCRtpSender._handle_rtcp_packet``: the DTLS transport's router calls the replacement."""
    received: list[Any] = []
    takeovers: list[RtcpTakeover] = []

    async def handler(packet: Any) -> None:
        received.append(packet)

    async with pair(before_connect=installing_takeover(takeovers)) as peers:
        takeovers[0].decide(fast_path=True, handler=handler)
        await wait_for_a_receiver_report(peers, received)


async def test_the_pair_reader_gives_rtcp_to_its_handler_stun_to_aioice_and_stops_when_cancelled() -> None:
    """``RTCDtlsTransport._rx_srtp``, aioice's ``StunProtocol.transport`` and ``datagram_received`` on the
    nominated pair: while ``PairReader.run`` reads the socket the receiver's reports reach its handler
    decrypted and aiortc's sender no longer sees them, STUN (aioice's requests, the peer's answers and its
    requests) still reaches aioice; cancelled, it hands the socket back to the asyncio transport, which
    reads (and answers STUN) again."""
    taken: list[Any] = []
    routed: list[Any] = []
    takeovers: list[RtcpTakeover] = []

    async def handler(packet: Any) -> None:
        routed.append(packet)

    async with pair(before_connect=installing_takeover(takeovers)) as peers:
        assert isinstance(peers.sender.transport._rx_srtp, pylibsrtp.Session)
        transport = peers.sender.transport.transport._connection._nominated[1].protocol.transport
        path = aiortc_internals.nominated_socket(peers.sender_pc)
        assert path is not None
        reader = aiortc_internals.PairReader(
            peers.sender_pc, path[0], on_rtcp=taken.append, on_consent=lambda: None
        )
        takeovers[0].decide(fast_path=True, handler=handler)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader.run)
                await trio.sleep(0.1)
                assert not transport.is_reading()  # the asyncio side no longer reads this socket
                await wait_for_a_receiver_report(peers, taken)
                assert not routed
                assert await aio_as_trio(consent_fresh)(peers.sender_pc) is True
                assert await aio_as_trio(consent_fresh)(peers.receiver_pc) is True
                nursery.cancel_scope.cancel()
            assert transport.is_reading()
            reports = len(taken)
            assert await aio_as_trio(consent_fresh)(peers.sender_pc) is True
            await wait_for_a_receiver_report(peers, routed)  # aiortc's way again
            assert len(taken) == reports
        finally:
            path[0].close()


async def test_the_ice_connection_and_its_nominated_pair_are_reachable() -> None:
    """``RTCIceTransport._connection`` and aioice's ``Connection._nominated``."""
    async with pair() as peers:
        connection = peers.sender.transport.transport._connection
        assert isinstance(connection, Connection)
        nominated = connection._nominated
        assert isinstance(nominated, dict) and isinstance(nominated.get(1), CandidatePair)
        path = aiortc_internals.nominated_socket(peers.sender_pc)
        assert path is not None
        sock, address = path
        assert sock.type == socket.SOCK_DGRAM and not sock.getblocking()
        assert address == nominated[1].remote_addr
        sock.close()


async def test_the_readers_consent_checks_are_answered_by_a_live_peer_and_aioices_loop_stops() -> None:
    """aioice's ``Connection.build_request``, ``remote_password`` and ``_query_consent_task``: a check that
    ``PairReader.ask_consent`` sends is answered (``on_consent``) while the peer lives, not once it closed;
    ``stop_aioice_consent`` ends aioice's consent loop."""
    answers: list[float] = []
    async with pair() as peers:
        aioice_loop = peers.sender.transport.transport._connection._query_consent_task
        assert isinstance(aioice_loop, asyncio.Task) and not aioice_loop.done()
        path = aiortc_internals.nominated_socket(peers.sender_pc)
        assert path is not None
        reader = aiortc_internals.PairReader(
            peers.sender_pc,
            path[0],
            on_rtcp=lambda packets: None,
            on_consent=lambda: answers.append(trio.current_time()),
        )
        reader.stop_aioice_consent()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader.run)
                reader.ask_consent()
                with trio.fail_after(2):
                    while not answers:
                        await trio.sleep(0.01)
                assert aioice_loop.done()
                await aio_as_trio(peers.receiver_pc.close)()
                reader.ask_consent()
                await trio.sleep(0.5)
                assert len(answers) == 1
                nursery.cancel_scope.cancel()
        finally:
            path[0].close()


async def test_the_dtls_transport_has_its_outgoing_srtp_session_once_connected() -> None:
    """``RTCDtlsTransport._tx_srtp``."""
    async with pair() as peers:
        assert isinstance(peers.sender.transport._tx_srtp, pylibsrtp.Session)
        assert aiortc_internals.outgoing_srtp(peers.sender_pc) is peers.sender.transport._tx_srtp


SRTP_PROFILES = {  # profile: master key + salt bytes (RFC 3711, RFC 7714), and the trailer it adds
    pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80: (30, 10),
    pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32: (30, 4),
    pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM: (28, 16),
}


@contextmanager
def srtp_socket(
    *, udp_checksums: bool = True, profile: int = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
) -> Iterator[tuple[SrtpSocket, pylibsrtp.Session, socket.socket]]:
    """Our SRTP socket towards a receiving socket, and a pylibsrtp session with the same key."""
    key = secrets.token_bytes(SRTP_PROFILES[profile][0])

    def session() -> pylibsrtp.Session:
        policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
        policy.allow_repeat_tx = True
        return pylibsrtp.Session(policy)

    receiver, sender = (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
    )
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    sender.setblocking(False)
    if not udp_checksums:
        sender.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    ours = SrtpSocket(session(), sender, receiver.getsockname())
    try:
        yield ours, session(), receiver
    finally:
        ours.close()
        receiver.close()


def rtp(sequence: int, payload_size: int) -> bytes:
    return bytes([0x80, 96]) + sequence.to_bytes(2, "big") + bytes(8) + secrets.token_bytes(payload_size)


def test_protecting_in_place_gives_what_pylibsrtp_gives() -> None:
    """pylibsrtp's ``Session._srtp`` and ``_binding.lib.srtp_protect``: the same key protects the same packets
    to the same bytes through pylibsrtp's call and through ours."""
    with srtp_socket() as (ours, reference, receiver):
        for sequence in range(3):
            packet = rtp(sequence, 900)
            assert ours.send(packet)
            assert receiver.recv(2048) == reference.protect(packet)


@pytest.mark.parametrize("kernel_segments", [True, False])
def test_a_frame_leaves_as_the_datagrams_pylibsrtp_would_protect_with_or_without_segmentation(
    kernel_segments: bool,
) -> None:
    """A frame's packets (FU-A sizes: equal, then one byte shorter, then a short last one) are sent in runs
    with ``UDP_SEGMENT``; the receiver gets each packet as its own datagram, protected exactly as pylibsrtp's
    own call does. A socket whose kernel refuses segmentation (here: UDP checksums off, ``SO_NO_CHECK``,
    which UDP GSO cannot do) falls back to one ``sendto`` per packet, losing nothing."""
    sizes = [1201] * 3 + [1200] * 4 + [300] + [1201] * 60  # the last 60: more than one batch
    packets = [rtp(sequence, size) for sequence, size in enumerate(sizes)]
    with srtp_socket(udp_checksums=kernel_segments) as (ours, reference, receiver):
        assert ours.send_many(packets) == 0
        assert [receiver.recv(2048) for _ in packets] == [reference.protect(packet) for packet in packets]
        assert ours.gso is kernel_segments


@pytest.mark.parametrize("kernel_segments", [True, False])
@pytest.mark.parametrize("profile", list(SRTP_PROFILES))
def test_laid_out_frames_leave_as_the_datagrams_pylibsrtp_would_protect(
    profile: int, kernel_segments: bool
) -> None:
    """``LaidOutFrame`` and ``send_frame``: the first frame goes the way of ``send_many`` and teaches the
    socket its profile's trailer; later frames, laid out once with room for it after each packet, give
    exactly the datagrams pylibsrtp's own call gives, in batches and runs as ``send_many`` sends them."""
    sizes = [1201] * 3 + [1200] * 4 + [300] + [1201] * 60  # the last 60: more than one batch
    frames = [
        [rtp(sequence + 100 * frame, size) for sequence, size in enumerate(sizes)] for frame in range(3)
    ]
    with srtp_socket(udp_checksums=kernel_segments, profile=profile) as (ours, reference, receiver):
        assert ours.trailer is None
        for packets in frames:
            assert ours.send_frame(aiortc_internals.LaidOutFrame(packets)) == 0
            assert ours.trailer == SRTP_PROFILES[profile][1]
            assert [receiver.recv(2048) for _ in packets] == [reference.protect(packet) for packet in packets]
        laid_out = aiortc_internals.LaidOutFrame(frames[0])
        assert [len(batch.protects) for batch in laid_out.batches(ours.trailer)] == [
            48,
            20,
        ]  # PACKETS a batch


def test_only_the_feedback_the_fan_out_answers_is_parsed_from_a_compound_rtcp_packet() -> None:
    """``feedback``: NACK and PLI come out parsed; reports, SDES and REMB are skipped; bad lengths raise."""
    info = RtcpReceiverInfo(
        ssrc=7, fraction_lost=0, packets_lost=0, highest_sequence=1, jitter=0, lsr=0, dlsr=0
    )
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=7, lost=[10, 12])
    pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=7)
    remb = RtcpPsfbPacket(
        fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=b"REMB\x01\x00\x00\x01\x00\x00\x00\x07"
    )
    compound = b"".join(
        bytes(packet)
        for packet in (
            RtcpRrPacket(ssrc=1, reports=[info]),
            RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=1, items=[(1, b"cname")])]),
            remb,
            nack,
            pli,
        )
    )
    parsed = aiortc_internals.feedback(compound)
    assert [type(packet) for packet in parsed] == [RtcpRtpfbPacket, RtcpPsfbPacket]
    assert parsed[0].lost == [10, 12] and parsed[1].fmt == RTCP_PSFB_PLI
    assert aiortc_internals.feedback(bytes(RtcpRrPacket(ssrc=1, reports=[info]))) == []
    for broken in (compound[:-2], compound + b"\x80", b"\x00" + compound[1:]):
        with pytest.raises(ValueError):
            aiortc_internals.feedback(broken)


async def _turns_until(done: Callable[[], bool], *, at_most: int) -> int:
    """Trio checkpoints of this task until ``done()`` (each is one turn of every other runnable task)."""
    for turn in range(at_most):
        if done():
            return turn
        await trio.lowlevel.checkpoint()
    return at_most


@pytest.mark.parametrize("batched", [False, True])
async def test_trio_asyncio_runs_a_chain_of_ready_callbacks_in_one_turn_and_still_yields(
    batched: bool,
) -> None:
    """``TrioEventLoop._main_loop_one`` (with ``no_wait``): with ``run_ready_callbacks_together``
    twenty ready callbacks, and a chain of ten that each schedules the next, take a turn or two of the Trio
    scheduler, not one each; a callback that reschedules itself for ever still lets Trio's tasks run."""
    async with trio_asyncio.open_loop() as loop:
        if batched:
            aiortc_internals.run_ready_callbacks_together(loop)
        ran: list[int] = []
        for index in range(20):
            loop.call_soon(ran.append, index)
        turns = await _turns_until(lambda: len(ran) == 20, at_most=100)
        assert (turns <= 3) if batched else (turns >= 10), turns
        assert ran == list(range(20))

        def chain(left: int) -> None:
            ran.append(left)
            if left:
                loop.call_soon(chain, left - 1)

        loop.call_soon(chain, 9)
        turns = await _turns_until(lambda: len(ran) == 30, at_most=100)
        assert (turns <= 3) if batched else (turns >= 5), turns

        stopped = False

        def forever() -> None:
            ran.append(-1)
            if not stopped:
                loop.call_soon(forever)

        loop.call_soon(forever)
        turns = await _turns_until(lambda: False, at_most=10)  # returns: the loop task yields
        assert 30 < len(ran) <= 30 + (turns + 1) * aiortc_internals.ASYNCIO_BATCH
        stopped = True


async def test_peer_connections_given_one_certificate_present_it_and_share_its_dtls_context() -> None:
    """``aiortc.rtcpeerconnection.RTCCertificate`` (what ``RTCPeerConnection.__init__`` generates its
    certificate with) and ``RTCCertificate._create_ssl_context`` (what each DTLS handshake calls)."""
    certificate = SharedCertificate.generateCertificate()
    (fingerprint,) = [f.value for f in certificate.getFingerprints() if f.algorithm == "sha-256"]
    async with pair(certificate=certificate) as first, pair(certificate=certificate) as second:
        for peers in (first, second):  # connected: DTLS completed with the shared context
            assert f"a=fingerprint:sha-256 {fingerprint}" in peers.answer
            (transport,) = {sender.transport for sender in peers.sender_pc.getSenders()}
            assert transport._ssl.get_context() is next(iter(certificate._contexts.values()))
    assert len(certificate._contexts) == 1
    assert next(iter(certificate._contexts.values())).get_session_cache_mode() == SSL.SESS_CACHE_OFF
    assert aiortc.rtcpeerconnection.RTCCertificate is RTCCertificate  # put back after each construction
