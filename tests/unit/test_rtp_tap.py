"""The two private aiortc names the RTP tap uses, each checked against the installed aiortc.

``webrtc/rtp_tap.py`` replaces ``RTCRtpReceiver._handle_rtp_packet`` on one receiver and calls
``RTCRtpReceiver._send_rtcp_pli``. An aiortc upgrade that renames, re-signs or stops calling either must fail
here, loudly, before a WHIP publisher silently publishes nothing: each name is checked for its signature and
for what it does, between two real aiortc peers on this machine.
"""

from __future__ import annotations

import gc
import inspect

import trio
import trio_asyncio
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, VideoStreamTrack
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket
from trio_asyncio import aio_as_trio

from dragonfork.stream.ingest.rtp import RtpPacket
from dragonfork.webrtc import rtp_tap


def test_the_receiver_packet_handler_has_the_signature_the_tap_replaces() -> None:
    handler = RTCRtpReceiver._handle_rtp_packet
    assert inspect.iscoroutinefunction(handler)
    assert list(inspect.signature(handler).parameters) == ["self", "packet", "arrival_time_ms"]


def test_the_pli_sender_has_the_signature_the_tap_calls() -> None:
    sender = RTCRtpReceiver._send_rtcp_pli
    assert inspect.iscoroutinefunction(sender)
    assert list(inspect.signature(sender).parameters) == ["self", "media_ssrc"]


async def _connect(sender: RTCPeerConnection, receiver: RTCPeerConnection) -> None:
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)


async def test_a_tapped_receiver_hands_its_packets_over_and_sends_plis() -> None:
    packets: list[RtpPacket] = []
    plis: list[int] = []
    async with trio_asyncio.open_loop():
        sending, receiving = RTCPeerConnection(), RTCPeerConnection()
        try:
            transceiver = sending.addTransceiver(VideoStreamTrack(), direction="sendonly")
            receiving_transceiver = receiving.addTransceiver("video", direction="recvonly")
            receiver = receiving_transceiver.receiver
            rtp_tap.tap(receiver, lambda packet, size: packets.append(packet))
            rtp_sender: RTCRtpSender = transceiver.sender
            original = rtp_sender._handle_rtcp_packet

            async def record_rtcp(packet: object) -> None:
                if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
                    plis.append(packet.media_ssrc)
                await original(packet)

            rtp_sender._handle_rtcp_packet = record_rtcp  # type: ignore[method-assign]
            with trio.fail_after(20):
                await aio_as_trio(_connect)(sending, receiving)
            with trio.fail_after(20):
                while len(packets) < 20:
                    await trio.sleep(0.05)
            ssrc = packets[-1].ssrc
            await aio_as_trio(rtp_tap.request_keyframe)(receiver, ssrc)
            with trio.fail_after(10):
                while not plis:
                    await trio.sleep(0.05)
            assert plis == [ssrc] and ssrc == rtp_sender._ssrc
            # Nothing reached aiortc's jitter buffer and decoder: its track never yields a frame.
            with trio.move_on_after(0.5) as nothing_decoded:
                await aio_as_trio(receiver.track.recv)()
            assert nothing_decoded.cancelled_caught
        finally:
            with trio.move_on_after(10):  # bounded: a hung close must not hang the test
                await aio_as_trio(sending.close)()
                await aio_as_trio(receiving.close)()
    assert all(packet.payload for packet in packets)
    del sending, receiving, receiver, rtp_sender, transceiver, receiving_transceiver
    gc.collect()  # peer connections are reference cycles: free them now, not in a later test's object count
