"""The receive side's RTP tap: a publisher's encoded packets out of aiortc, before its decoder.

aiortc has no public API for the encoded media a peer sends: its ``RTCRtpReceiver`` reassembles every frame
in a jitter buffer and decodes it in a thread of its own. A WHIP publisher's media is forwarded as it
arrives (the hub carries encoded frames), so the tap replaces the packet handler of one receiver instance:
aiortc's DTLS transport hands each decrypted RTP packet of that receiver to
``receiver._handle_rtp_packet(packet, arrival_time_ms=...)``, and the tapped receiver passes it to the
callback instead. Nothing is decoded (aiortc's decoder thread waits on an empty queue until the receiver
stops). Keyframe requests go out through the receiver's own RTCP path (``_send_rtcp_pli``).

These private names, and the receiver's bitrate estimator that ``drop_receive_bitrate_estimator`` frees
(viewers and tapped receivers never feed it), are the only ones the server uses on the receive side, and
only here; ``tests/unit/test_rtp_tap.py`` and ``tests/unit/test_viewer_objects.py`` check each against the
installed aiortc (pinned in pyproject.toml), so an upgrade that moves one fails there, loudly.

What the bypass gives up is aiortc's receiver-side feedback: NACKs, its REMB bandwidth estimate and the
statistics of its receiver reports. A publisher therefore keeps its starting bitrate (an encoder with a
fixed bitrate, like FFmpeg's, is unaffected).
"""

from __future__ import annotations

from collections.abc import Callable

from aiortc import RTCRtpReceiver
from aiortc.rtp import RtpPacket as AiortcRtpPacket

from dragonfork.stream.ingest.rtp import RtpPacket

PacketSink = Callable[[RtpPacket, int], None]
"""Receives each RTP packet (our fields; the payload a view of aiortc's bytes) and its size in bytes."""

RTP_FIXED_HEADER_BYTES = 12


def tap(receiver: RTCRtpReceiver, sink: PacketSink) -> None:
    """Route every RTP packet of ``receiver`` to ``sink`` instead of aiortc's jitter buffer and decoder."""

    async def handle_rtp_packet(packet: AiortcRtpPacket, arrival_time_ms: int) -> None:
        payload = packet.payload
        size = RTP_FIXED_HEADER_BYTES + 4 * len(packet.csrc) + len(payload) + packet.padding_size
        sink(
            RtpPacket(
                packet.payload_type,
                packet.sequence_number,
                packet.timestamp,
                packet.ssrc,
                bool(packet.marker),
                memoryview(payload),
            ),
            size,
        )

    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]


async def request_keyframe(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Send an RTCP PLI (picture loss indication) for ``media_ssrc`` to the peer (asyncio side)."""
    await receiver._send_rtcp_pli(media_ssrc)


def drop_receive_bitrate_estimator(receiver: RTCRtpReceiver) -> None:
    """Free the receive-side bitrate estimator aiortc gives every video transceiver, sendonly or not.

    It estimates the bitrate of media we would receive (for REMB feedback) in 1,000 one-millisecond
    ``RateBucket`` objects: three quarters of the objects of a peer connection, and a viewer receives no
    media. The garbage collector walks every one of them in each full collection, for every live viewer
    and, since a peer connection is a reference cycle, for every ended one until that collection frees it;
    those walks stop the event loop. aiortc skips the estimator when it is ``None``, as it does for audio.
    A tapped receiver (a WHIP publisher's) never feeds it either. The attribute is aiortc's private one:
    ``tests/unit/test_viewer_objects.py`` fails if it goes away.
    """
    attribute = "_RTCRtpReceiver__remote_bitrate_estimator"
    if getattr(receiver, attribute, None) is not None:
        setattr(receiver, attribute, None)
