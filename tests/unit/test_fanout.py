"""The fan-out's packets as a viewer receives them: real SRTP (one key per viewer), real UDP on loopback.

A receiving pylibsrtp session with the viewer's key unprotects what the fan-out sent, so these tests see the
RTP a browser would: sequence numbers, payload types, the mid extension, retransmissions.
"""

from __future__ import annotations

import secrets
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pylibsrtp
import pytest
import trio
from aiortc.rtp import RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPsfbPacket, RtcpRrPacket, RtcpRtpfbPacket

from dragonfork.stream.frames import VIDEO_CLOCK_RATE, MediaFrame
from dragonfork.stream.stream import Stream, StreamSettings
from dragonfork.webrtc import fanout as fanout_module
from dragonfork.webrtc.aiortc_internals import SrtpSocket
from dragonfork.webrtc.fanout import (
    CONSENT_EXPIRY,
    CONSENT_INTERVAL,
    LIVENESS_INTERVAL,
    FastViewer,
    Liveness,
    PacketLayout,
    Retransmission,
    StreamFanout,
    TrackSink,
)

IDR_SIZE = 3000  # three FU-A fragments
GRACE = 5.0  # the viewers' disconnect grace
START = secrets.randbelow(2**31)


def frame(index: int, *, keyframe: bool = False) -> MediaFrame:
    nal = (b"\x65" + secrets.token_bytes(IDR_SIZE)) if keyframe else (b"\x41" + secrets.token_bytes(500))
    data = (b"\0\0\0\1\x67\x42\xc0\x1f\0\0\0\1\x68\xce\x3c\x80" if keyframe else b"") + b"\0\0\0\1" + nal
    timestamp = START + index * 3600
    return MediaFrame("video", data, timestamp, VIDEO_CLOCK_RATE, keyframe, 1, len(data), trio.current_time())


class Peer:
    """One viewer: its SRTP keys, the fan-out's socket towards it, and its receiving end.

    ``answers_consent`` is what its consent checks find (the fan-out asks a silent viewer); ``silenced`` the
    times at which the fan-out let it go for its silence.
    """

    def __init__(
        self, layout: PacketLayout, rtx: Retransmission | None = None, *, answers_consent: bool = False
    ) -> None:
        key = secrets.token_bytes(30)
        outbound = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        outbound.allow_repeat_tx = True
        self.inbound = pylibsrtp.Session(
            pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
        )
        self.receiving = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receiving.bind(("127.0.0.1", 0))
        self.receiving.settimeout(2)
        sending = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sending.setblocking(False)
        self.srtp = SrtpSocket(pylibsrtp.Session(outbound), sending, self.receiving.getsockname())
        self.failures: list[BaseException] = []
        self.first_video = 0
        self.answers_consent = answers_consent
        self.consent_checks = 0
        self.silenced: list[float] = []
        self.viewer = FastViewer(
            self.srtp,
            cname="test",
            liveness=Liveness(GRACE, self._consent, lambda: self.silenced.append(trio.current_time())),
            on_failure=self.failures.append,
            on_first_video=self._first_video,
        )
        self.sink = TrackSink(self.viewer, layout, rtx)
        self.viewer.sinks["video"] = self.sink

    def _first_video(self) -> None:
        self.first_video += 1

    def _consent(self) -> None:
        """The peer's side of an ICE consent check: its answer at once (or none)."""
        self.consent_checks += 1
        if self.answers_consent:
            self.viewer.consented()

    def receive(
        self, count: int, *, lose: int | None = None
    ) -> list[tuple[int, int, int, int, bytes, bytes]]:
        """(payload type, sequence, timestamp, ssrc, extension, payload) of the next ``count`` packets; the
        one at index ``lose`` is dropped unread, as the network would (its retransmission is then new)."""
        packets = []
        for index in range(count):
            datagram = self.receiving.recv(2048)
            if index == lose:
                continue
            plain = self.inbound.unprotect(datagram)
            first, second, sequence, timestamp, ssrc = struct.unpack_from("!BBHII", plain)
            extension, offset = b"", 12
            if first & 0x10:
                words = struct.unpack_from("!H", plain, 14)[0]
                extension, offset = plain[12 : 16 + 4 * words], 16 + 4 * words
            packets.append((second & 0x7F, sequence, timestamp, ssrc, extension, plain[offset:]))
        return packets

    def nothing_more(self) -> bool:
        self.receiving.settimeout(0.05)
        try:
            self.receiving.recv(2048)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.srtp.close()
        self.receiving.close()


@contextmanager
def peers(*layouts: tuple[PacketLayout, Retransmission | None], **options: bool) -> Iterator[list[Peer]]:
    opened = [Peer(layout, rtx, **options) for layout, rtx in layouts]
    try:
        yield opened
    finally:
        for peer in opened:
            peer.close()


def video_fanout() -> StreamFanout:
    """The fan-out of a video-only stream (frames are written into its track fan-out directly)."""
    return StreamFanout(Stream("cam", StreamSettings(), has_audio=False))


async def test_a_joining_viewer_gets_the_keyframe_burst_contiguous_with_the_live_packets() -> None:
    fanout = video_fanout().tracks["video"]
    with peers((PacketLayout(96), None)) as (peer,):
        for index in range(3):
            await fanout.write(frame(index, keyframe=index == 0))
        fanout.add(peer.sink)  # mid-GOP: the keyframe and the two frames after it, at once
        burst = peer.receive(4 + 2)  # STAP-A (SPS+PPS) + three FU-A fragments of the IDR, two deltas
        await fanout.write(frame(3))
        live = peer.receive(1)
        sequences = [packet[1] for packet in burst + live]
        assert sequences == [(sequences[0] + step) & 0xFFFF for step in range(len(sequences))]
        assert burst[0][5][0] & 0x1F == 24  # STAP-A: the parameter sets lead
        # The burst's frames one tick apart up to the latest frame's timestamp (rebase_burst), then live
        assert [packet[2] for packet in burst + live] == [
            ts & 0xFFFFFFFF for ts in (START + 7198,) * 4 + (START + 7199, START + 7200, START + 10800)
        ]
        assert {packet[3] for packet in burst + live} == {fanout.ssrc}
        assert peer.first_video == 1 and peer.sink.packets == 7 and not peer.failures
        assert peer.nothing_more()


async def test_a_burst_packet_is_retransmitted_with_the_timestamp_that_viewer_got_it_with() -> None:
    stream = video_fanout()
    fanout = stream.tracks["video"]
    rtx = Retransmission(payload_type=103, ssrc=0x0BADCAFE)
    with peers((PacketLayout(102), None), (PacketLayout(102), rtx)) as (live, joiner):
        fanout.add(live.sink)
        await fanout.write(frame(0, keyframe=True))
        await fanout.write(frame(1))
        live_packets = live.receive(5, lose=1)  # the IDR's first fragment is lost on the way
        fanout.add(joiner.sink)
        burst = joiner.receive(5)
        idr, delta = START & 0xFFFFFFFF, (START + 3600) & 0xFFFFFFFF
        assert [packet[2] for packet in live_packets] == [idr] * 3 + [delta]
        assert [packet[2] for packet in burst] == [(START + 3599) & 0xFFFFFFFF] * 4 + [delta]
        lost = live_packets[0][1] + 1
        for peer, timestamp in ((joiner, burst[1][2]), (live, idr)):
            nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=fanout.ssrc, lost=[lost])
            stream.handle_rtcp(peer.viewer, [nack])
            (resent,) = peer.receive(1)
            assert resent[2] == timestamp  # as RTX to the joiner, as it was to the live viewer
        assert live.nothing_more() and joiner.nothing_more()


async def test_viewers_that_offered_differently_get_the_same_packets_in_their_own_layout() -> None:
    fanout = video_fanout().tracks["video"]
    chrome_like, aiortc_like = PacketLayout(102, 4, "0"), PacketLayout(97, None, None)
    with peers((chrome_like, None), (aiortc_like, None)) as (first, second):
        fanout.add(first.sink)
        fanout.add(second.sink)  # both wait for the next keyframe: nothing cached yet
        await fanout.write(frame(0))
        assert first.nothing_more() and second.nothing_more()
        await fanout.write(frame(1, keyframe=True))
        one, other = first.receive(4), second.receive(4)
        assert [packet[1] for packet in one] == [packet[1] for packet in other]
        assert [packet[5] for packet in one] == [packet[5] for packet in other]
        assert {packet[0] for packet in one} == {102} and {packet[0] for packet in other} == {97}
        assert one[0][4] == b"\xbe\xde\x00\x01\x40" + b"0" + b"\0\0"  # sdes:mid "0" as extension 4
        assert other[0][4] == b""


async def test_a_nack_is_answered_to_that_viewer_only_as_rtx_when_negotiated() -> None:
    stream = video_fanout()
    fanout = stream.tracks["video"]
    rtx = Retransmission(payload_type=103, ssrc=0x12345678)
    with peers((PacketLayout(102), rtx), (PacketLayout(102), None)) as (with_rtx, plain):
        await fanout.write(frame(0, keyframe=True))
        fanout.add(with_rtx.sink)
        fanout.add(plain.sink)
        originals = with_rtx.receive(4)
        assert plain.receive(4, lose=2) == originals[:2] + originals[3:]
        lost = originals[2]
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=fanout.ssrc, lost=[lost[1]])
        stream.handle_rtcp(with_rtx.viewer, [nack])
        (resent,) = with_rtx.receive(1)
        assert (resent[0], resent[3], resent[2]) == (103, rtx.ssrc, lost[2])
        assert resent[5] == struct.pack("!H", lost[1]) + lost[5]  # RFC 4588: the original sequence first
        assert plain.nothing_more()
        stream.handle_rtcp(plain.viewer, [nack])
        (again,) = plain.receive(1)
        assert again == lost  # without RTX: the very packet again (the receiver's SRTP takes it: it was lost)
        too_old = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=fanout.ssrc, lost=[lost[1] - 99])
        stream.handle_rtcp(plain.viewer, [too_old])
        assert plain.nothing_more()  # never sent: nothing to answer with


async def test_a_picture_loss_is_answered_with_the_keyframe_burst_at_most_once_a_second() -> None:
    stream = video_fanout()
    fanout = stream.tracks["video"]
    rtx = Retransmission(payload_type=103, ssrc=0x0BADCAFE)
    with peers((PacketLayout(102), rtx)) as (peer,):
        await fanout.write(frame(0, keyframe=True))
        await fanout.write(frame(1))
        fanout.add(peer.sink)
        burst = peer.receive(5)
        pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=fanout.ssrc)
        stream.handle_rtcp(peer.viewer, [pli])
        again = peer.receive(5)
        assert [packet[5][2:] for packet in again] == [packet[5] for packet in burst]  # as RTX, in order
        assert {packet[3] for packet in again} == {rtx.ssrc}
        stream.handle_rtcp(peer.viewer, [pli])  # a storm of PLIs: one burst per second
        assert peer.nothing_more()


async def test_sender_reports_map_rtp_time_by_the_least_arrival_delay_not_the_latest_frames() -> None:
    """Frames 40 ms apart arriving 5 ms after their moment, but the latest (a keyframe: many packets) 35 ms
    after: the reports' RTP time at ``now`` comes from the 5 ms, so one late frame does not shift a track's
    mapping against the other's (browsers align picture and sound by it)."""
    fanout = video_fanout().tracks["video"]
    assert fanout.rtp_timestamp_at(trio.current_time()) is None
    origin = trio.current_time()
    for index in range(10):
        late = 0.030 if index == 9 else 0.0
        data = b"\0\0\0\1\x41" + secrets.token_bytes(200)
        arrived = origin + index * 0.040 + 0.005 + late
        await fanout.write(
            MediaFrame("video", data, START + index * 3600, VIDEO_CLOCK_RATE, False, 1, len(data), arrived)
        )
    now = origin + 0.400
    expected = START + round((now - origin - 0.005) * VIDEO_CLOCK_RATE)
    assert abs(fanout.rtp_timestamp_at(now) - (expected & 0xFFFFFFFF)) <= 1  # type: ignore[operator]


async def test_a_frame_fans_out_in_slices_and_each_viewer_gets_its_packets_back_to_back_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a checkpoint before every viewer (a zero slice), other tasks run while a frame is half sent, yet
    every viewer gets each frame's packets whole, in order, before the next frame's; a viewer that leaves
    mid-frame (its socket closed at once, as a closing viewer's is) is skipped, not failed; one that joins
    mid-frame has the frame in its keyframe burst, once (also when its layout's viewers are
    yet to be sent)."""
    monkeypatch.setattr(fanout_module, "SLICE_SECONDS", 0.0)
    stream = video_fanout()
    fanout = stream.tracks["video"]
    other_layout = (PacketLayout(97), None)  # ``late`` joins a group whose turn in the loop is still to come
    with peers(*[(PacketLayout(96), None)] * 5, other_layout) as viewers, peers(other_layout) as (late,):
        first, *staying, leaving, last = (
            viewers  # ``leaving`` a few viewers (hence checkpoints) after ``first``
        )
        for peer in viewers:
            fanout.add(peer.sink)  # all wait for the first keyframe
        progress: list[int] = []

        async def meanwhile() -> None:
            while True:
                progress.append(sum(peer.sink.packets for peer in viewers))
                if first.sink.packets and leaving.sink.active:
                    stream.remove(leaving.viewer)
                    leaving.srtp.close()
                    fanout.add(late.sink)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(meanwhile)
            await trio.lowlevel.checkpoint()
            await fanout.write(frame(0, keyframe=True))  # STAP-A + three FU-A fragments
            await fanout.write(frame(1))
            nursery.cancel_scope.cancel()
        assert any(0 < done < 4 * len(viewers) for done in progress)  # the loop was not held for the frame
        for peer in [first, *staying, last, late]:
            packets = peer.receive(5)
            sequences = [packet[1] for packet in packets]
            assert sequences == [(sequences[0] + step) & 0xFFFF for step in range(5)]
            assert [packet[2] for packet in packets] == [START] * 4 + [START + 3600]
            assert peer.nothing_more() and not peer.failures
        assert leaving.sink.packets == 0 and not leaving.failures


async def test_the_liveness_sweep_asks_silent_viewers_for_consent_and_ends_those_silent_past_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One sweep for the stream's viewers: a viewer that reports is never asked; one that sends no RTCP but
    answers consent checks stays; one that does neither is let go once, after the grace."""
    stream = video_fanout()
    with (
        peers((PacketLayout(96), None)) as (reporting,),
        peers((PacketLayout(96), None), answers_consent=True) as (answering,),
        peers((PacketLayout(96), None)) as (vanished,),
    ):
        for peer in (reporting, answering, vanished):
            stream.add(peer.viewer)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.watch_liveness)
            for _ in range(int(3 * GRACE)):
                await trio.sleep(LIVENESS_INTERVAL * 0.75)  # receiver reports come every 0.5-1.5 s
                stream.handle_rtcp(reporting.viewer, [RtcpRrPacket(ssrc=1)])
            nursery.cancel_scope.cancel()
        # RFC 7675: a reporting viewer too is asked every 4-6 s (which it does not answer here: it has 30 s)
        assert 1 <= reporting.consent_checks <= 3 and not reporting.silenced
        assert answering.consent_checks >= 2 and not answering.silenced  # asked once it was silent for 2 s
        assert vanished.consent_checks >= 2 and len(vanished.silenced) == 1
        assert GRACE < vanished.silenced[0] - started <= GRACE + LIVENESS_INTERVAL


async def test_a_viewer_that_reports_but_answers_no_consent_check_is_let_go_when_its_consent_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """RFC 7675: consent is asked of every viewer about every 5 s (randomized); RTCP alone does not renew
    it: a viewer whose checks go unanswered for 30 s is let go, one that answers them stays."""
    stream = video_fanout()
    with (
        peers((PacketLayout(96), None)) as (deaf,),
        peers((PacketLayout(96), None), answers_consent=True) as (answering,),
    ):
        for peer in (deaf, answering):
            stream.add(peer.viewer)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.watch_liveness)
            while trio.current_time() - started < CONSENT_EXPIRY + 3:
                await trio.sleep(LIVENESS_INTERVAL * 0.75)
                for peer in (deaf, answering):
                    stream.handle_rtcp(peer.viewer, [])
            nursery.cancel_scope.cancel()
        assert len(deaf.silenced) == 1
        assert CONSENT_EXPIRY < deaf.silenced[0] - started <= CONSENT_EXPIRY + LIVENESS_INTERVAL
        assert not answering.silenced
        duration = CONSENT_EXPIRY + 3  # checks 4-6 s apart, on the sweep's 1 s ticks
        longest, shortest = 1.2 * CONSENT_INTERVAL + LIVENESS_INTERVAL, 0.8 * CONSENT_INTERVAL
        assert duration / longest - 1 <= answering.consent_checks <= duration / shortest + 1
