"""WHEP viewers against real peers: FFmpeg → RTP → Stream → Viewer (aiortc) → a real aiortc receiver.

The receiving peer is either a plain aiortc ``RTCPeerConnection`` on the same trio-asyncio loop (fast, and its
connection state can be timed precisely) or ``dragonfork.webrtc.client`` in its own OS process talking HTTP to
a minimal WHEP endpoint, so a peer can also vanish for real (SIGKILL).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import av
import hypercorn.config
import hypercorn.trio
import pytest
import trio
import trio_asyncio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from harness import free_port
from hub_helpers import live_stream as hub_live_stream
from quart import request
from quart_trio import QuartTrio
from trio_asyncio import aio_as_trio

from dragonfork import metrics
from dragonfork.servers.whep import PublisherStatus, WhepRefused, WhepServer, WhepSettings
from dragonfork.servers.whep.sessions import ViewerCapReached, ViewerSessions
from dragonfork.stream.directory import StreamDirectory
from dragonfork.stream.frames import AUDIO_CLOCK_RATE, MediaFrame
from dragonfork.stream.stream import Stream
from dragonfork.webrtc.sdp import FragmentRejected, OfferRejected
from dragonfork.webrtc.viewer import (
    AnswerTimeout,
    CloseReason,
    Viewer,
    ViewerClosed,
    ViewerSettings,
    ViewerState,
)

PROCESS = "viewer-test"


# --- the stream: real FFmpeg into a real Stream (tests/hub_helpers.py) --------------------------------------


@asynccontextmanager
async def live_stream(*, has_audio: bool = True) -> AsyncIterator[Stream]:
    """A Stream fed by FFmpeg (320x240@25, 1 s GOP, Opus tone), with media flowing when entered."""
    async with hub_live_stream(PROCESS, has_audio=has_audio) as live:
        yield live.stream


# --- the remote peer: a plain aiortc receiver on the same loop ---------------------------------------------


class Receiver:
    """What a WHEP player does: recvonly transceivers, decode everything, note when the connection ends."""

    def __init__(self, *, audio: bool = True, reports: bool = True) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        if audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        if not reports:  # a player that sends no RTCP at all (some non-browser WHEP clients)
            for receiver in self.pc.getReceivers():
                receiver._run_rtcp = functools.partial(_no_rtcp, receiver)  # type: ignore[method-assign]
        self.video_sizes: list[tuple[int, int]] = []
        self.audio_frames = 0
        self.first_video_at: float | None = None
        self.ended_at: float | None = None
        self._consumers: list[asyncio.Task[None]] = []
        self.pc.on("track", lambda track: self._consumers.append(asyncio.ensure_future(self._consume(track))))
        self.pc.on("connectionstatechange", self._on_state)

    def _on_state(self) -> None:
        if self.pc.connectionState in ("closed", "failed") and self.ended_at is None:
            self.ended_at = trio.current_time()

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "audio":
                    self.audio_frames += 1
                elif isinstance(frame, av.VideoFrame):
                    self.video_sizes.append((frame.width, frame.height))
                    if self.first_video_at is None:
                        self.first_video_at = trio.current_time()
        except MediaStreamError:
            pass

    async def offer(self) -> str:
        await aio_as_trio(self.pc.setLocalDescription)()
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer: str) -> None:
        await aio_as_trio(self.pc.setRemoteDescription)(RTCSessionDescription(sdp=answer, type="answer"))

    async def wait_for_media(self, *, video_frames: int, audio_frames: int = 0, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while len(self.video_sizes) < video_frames or self.audio_frames < audio_frames:
                await trio.sleep(0.02)

    async def wait_ended(self, timeout: float) -> float:
        with trio.fail_after(timeout):
            while self.ended_at is None:
                await trio.sleep(0.002)
        return self.ended_at

    async def close(self) -> None:
        await aio_as_trio(self.pc.close)()
        for consumer in self._consumers:
            consumer.cancel()
        await aio_as_trio(asyncio.gather)(*self._consumers, return_exceptions=True)


async def _no_rtcp(receiver: Any) -> None:
    """aiortc's receiver RTCP task, minus the RTCP: it only marks itself started and, once stopped, exited."""
    receiver._RTCRtpReceiver__rtcp_started.set()
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        receiver._RTCRtpReceiver__rtcp_exited.set()


# --- leak accounting --------------------------------------------------------------------------------------


async def _other_asyncio_tasks() -> int:
    return len(asyncio.all_tasks() - {asyncio.current_task()})


async def resources() -> tuple[int, int]:
    """(asyncio tasks on the trio-asyncio loop, open file descriptors of this process)."""
    return await aio_as_trio(_other_asyncio_tasks)(), len(os.listdir("/proc/self/fd"))


async def assert_back_to(baseline: tuple[int, int]) -> None:
    """aiortc finishes a few callbacks after close; give it a moment, then demand no more than the baseline.

    Fewer is not a leak: the live stream's own start-up (FFmpeg's pipes, the probe) may still hold a
    descriptor when the baseline is taken and let it go during the test (CI saw 23 → 22).
    """

    def left_behind(now: tuple[int, int]) -> bool:
        return any(count > before for count, before in zip(now, baseline, strict=True))

    with trio.move_on_after(2):
        while left_behind(await resources()):
            await trio.sleep(0.05)
    now = await resources()
    assert not left_behind(now), f"(asyncio tasks, fds) {now} after, {baseline} before"


def sample(metric: Any, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(metric, labels) or 0.0


# --- tests ------------------------------------------------------------------------------------------------


async def test_viewer_sends_decodable_video_and_audio_and_ends_the_peer_when_its_scope_is_cancelled() -> None:
    async with trio_asyncio.open_loop(), live_stream() as stream:
        baseline = await resources()
        closed_before = sample("dragonfork_webrtc_viewers_closed_total", reason="process_stopped")
        packets_before = sample("dragonfork_webrtc_rtp_packets_forwarded_total", kind="video")
        audio_bytes_before = sample("dragonfork_webrtc_rtp_bytes_forwarded_total", kind="audio")
        setups_before = sample("dragonfork_webrtc_viewer_setup_seconds_count")
        first_frames_before = sample("dragonfork_webrtc_time_to_first_frame_seconds_count")
        receiver = Receiver()
        viewer = Viewer(PROCESS, ViewerSettings())
        async with trio.open_nursery() as process_scope:
            answer = await process_scope.start(viewer.run, stream, await receiver.offer())
            assert "a=sendonly" in answer and "H264/90000" in answer and "opus/48000" in answer
            await receiver.accept(answer)
            await receiver.wait_for_media(video_frames=25, audio_frames=25)
            assert viewer.state is ViewerState.CONNECTED
            assert sample("dragonfork_webrtc_viewers_active", process=PROCESS) == 1
            cancelled_at = trio.current_time()
            process_scope.cancel_scope.cancel()

        ended_at = await receiver.wait_ended(timeout=1)
        assert ended_at - cancelled_at < 1.0
        assert set(receiver.video_sizes) == {(320, 240)}
        assert viewer.state is ViewerState.CLOSED and viewer.close_reason is CloseReason.PROCESS_STOPPED
        assert viewer.setup_seconds is not None and viewer.time_to_first_frame_seconds is not None
        assert sample("dragonfork_webrtc_viewers_active", process=PROCESS) == 0
        assert sample("dragonfork_webrtc_viewers_closed_total", reason="process_stopped") == closed_before + 1
        assert sample("dragonfork_webrtc_rtp_packets_forwarded_total", kind="video") > packets_before + 25
        assert sample("dragonfork_webrtc_rtp_bytes_forwarded_total", kind="audio") > audio_bytes_before + 2000
        assert sample("dragonfork_webrtc_viewer_setup_seconds_count") == setups_before + 1
        assert sample("dragonfork_webrtc_time_to_first_frame_seconds_count") == first_frames_before + 1
        print(
            f"\nthe peer saw the end {(ended_at - cancelled_at) * 1000:.1f} ms after the scope was cancelled"
        )
        await receiver.close()
        await assert_back_to(baseline)


async def test_answer_time_and_time_to_first_frame_over_ten_sessions_leave_nothing_behind() -> None:
    """The POST-equivalent figures (offer in → answer out; offer → first frame) and no leak per session."""
    answer_seconds, server_ttff, decoded_ttff = [], [], []
    async with trio_asyncio.open_loop(), live_stream() as stream:
        baseline = await resources()
        async with trio.open_nursery() as process_scope:
            for _ in range(10):
                receiver = Receiver()
                offer = await receiver.offer()
                viewer = Viewer(PROCESS, ViewerSettings())
                offered_at = trio.current_time()
                answer = await process_scope.start(viewer.run, stream, offer)
                answer_seconds.append(trio.current_time() - offered_at)
                await receiver.accept(answer)
                await receiver.wait_for_media(video_frames=1)
                assert receiver.first_video_at is not None and viewer.time_to_first_frame_seconds is not None
                decoded_ttff.append(receiver.first_video_at - offered_at)
                server_ttff.append(viewer.time_to_first_frame_seconds)
                viewer.close()
                await receiver.wait_ended(timeout=1)
                await receiver.close()
                assert viewer.close_reason is CloseReason.DELETE
        await assert_back_to(baseline)
    print(
        f"\nanswer (offer in → answer out): median {statistics.median(answer_seconds) * 1000:.1f} ms, "
        f"max {max(answer_seconds) * 1000:.1f} ms; time to first frame: handed to aiortc median "
        f"{statistics.median(server_ttff) * 1000:.0f} ms, decoded by the peer median "
        f"{statistics.median(decoded_ttff) * 1000:.0f} ms (max {max(decoded_ttff) * 1000:.0f} ms)"
    )
    assert max(answer_seconds) < ViewerSettings().handshake_timeout


@pytest.mark.parametrize(
    ("mangle", "status", "message"),
    [
        (lambda sdp: sdp.replace("v=0", "v=1", 1), 400, "must start with the line v=0"),
        (lambda sdp: sdp.replace("a=recvonly", "a=sendonly"), 400, "is sendonly; a WHEP offer is recvonly"),
        (lambda sdp: sdp.replace("a=recvonly", "a=inactive"), 400, "is inactive; a WHEP offer is recvonly"),
        (lambda sdp: sdp.replace("profile-level-id=42", "profile-level-id=64"), 406, "no H.264"),
        (lambda sdp: sdp.replace("opus/48000", "foo/48000"), 406, "the audio m-line offers no opus/48000"),
    ],
)
async def test_bad_offers_are_rejected_before_the_answer_and_other_viewers_keep_playing(
    mangle: Any, status: int, message: str
) -> None:
    async with trio_asyncio.open_loop(), live_stream() as stream:
        baseline = await resources()
        sessions = ViewerSessions()
        watching = Receiver()
        async with trio.open_nursery() as process_scope:
            answer = await process_scope.start(
                sessions.run_viewer, Viewer(PROCESS), stream, await watching.offer()
            )
            await watching.accept(answer)
            await watching.wait_for_media(video_frames=5)

            offering = Receiver()
            bad_offer = mangle(await offering.offer())
            with pytest.raises(OfferRejected) as rejected:
                await process_scope.start(sessions.run_viewer, Viewer(PROCESS), stream, bad_offer)
            await offering.close()

            assert rejected.value.status == status
            assert message in rejected.value.message
            assert len(sessions) == 1
            frames_before = len(watching.video_sizes)
            await watching.wait_for_media(video_frames=frames_before + 10)
            process_scope.cancel_scope.cancel()
        await watching.close()
        await assert_back_to(baseline)


async def test_an_offer_without_audio_gets_video_only() -> None:
    async with trio_asyncio.open_loop(), live_stream() as stream:
        receiver = Receiver(audio=False)
        viewer = Viewer(PROCESS)
        async with trio.open_nursery() as process_scope:
            answer = await process_scope.start(viewer.run, stream, await receiver.offer())
            assert "m=audio" not in answer
            await receiver.accept(answer)
            await receiver.wait_for_media(video_frames=10)
            process_scope.cancel_scope.cancel()
        await receiver.close()


async def test_a_stream_without_audio_serves_an_offer_with_audio_video_only() -> None:
    async with trio_asyncio.open_loop(), live_stream(has_audio=False) as stream:
        receiver = Receiver()
        viewer = Viewer(PROCESS)
        async with trio.open_nursery() as process_scope:
            answer = await process_scope.start(viewer.run, stream, await receiver.offer())
            assert "a=inactive" in answer  # the audio m-line is answered, but nothing is sent on it
            await receiver.accept(answer)
            await receiver.wait_for_media(video_frames=10)
            assert receiver.audio_frames == 0
            process_scope.cancel_scope.cancel()
        await receiver.close()


async def test_a_peer_that_never_connects_is_closed_after_the_handshake_timeout() -> None:
    async with trio_asyncio.open_loop(), live_stream() as stream:
        baseline = await resources()
        silent = Receiver()  # makes an offer but never applies the answer: no ICE checks from its side
        viewer = Viewer(PROCESS, ViewerSettings(handshake_timeout=1.5))
        async with trio.open_nursery() as process_scope:
            offered_at = trio.current_time()
            await process_scope.start(viewer.run, stream, await silent.offer())
            assert viewer.state is ViewerState.CONNECTING
        assert viewer.close_reason is CloseReason.HANDSHAKE_TIMEOUT
        assert 1.5 <= trio.current_time() - offered_at < 2.5
        await silent.close()
        await assert_back_to(baseline)


async def test_viewers_that_cannot_answer_raise_before_started_and_leave_nothing_behind() -> None:
    async with trio_asyncio.open_loop(), live_stream() as stream:
        baseline = await resources()
        receiver = Receiver()
        offer = await receiver.offer()
        too_slow = Viewer(PROCESS, ViewerSettings(handshake_timeout=0.0))
        closed_early = Viewer(PROCESS)
        closed_early.close()
        async with trio.open_nursery() as process_scope:
            with pytest.raises(AnswerTimeout):
                await process_scope.start(too_slow.run, stream, offer)
            with pytest.raises(ViewerClosed):
                await process_scope.start(closed_early.run, stream, offer)
        assert too_slow.state is ViewerState.CLOSED and closed_early.state is ViewerState.CLOSED
        await receiver.close()
        await assert_back_to(baseline)


async def test_advertised_addresses_are_offered_and_the_peer_still_connects() -> None:
    async with trio_asyncio.open_loop(), live_stream() as stream:
        receiver = Receiver()
        viewer = Viewer(PROCESS, ViewerSettings(public_ips=["203.0.113.5"]))
        async with trio.open_nursery() as process_scope:
            answer = await process_scope.start(viewer.run, stream, await receiver.offer())
            assert " 203.0.113.5 " in answer
            await receiver.accept(answer)
            await receiver.wait_for_media(video_frames=5)
            process_scope.cancel_scope.cancel()
        await receiver.close()


async def test_the_peer_closing_ends_the_viewer() -> None:
    async with trio_asyncio.open_loop(), live_stream() as stream:
        receiver = Receiver()
        viewer = Viewer(PROCESS)
        async with trio.open_nursery() as process_scope:
            await receiver.accept(await process_scope.start(viewer.run, stream, await receiver.offer()))
            await receiver.wait_for_media(video_frames=5)
            closed_at = trio.current_time()
            await receiver.close()
        assert viewer.close_reason is CloseReason.PEER_CLOSED
        assert trio.current_time() - closed_at < 1.0


def without_candidates(sdp: str) -> str:
    return "".join(f"{line}\r\n" for line in sdp.splitlines() if not line.startswith(_CANDIDATE_LINES))


_CANDIDATE_LINES = ("a=candidate:", "a=end-of-candidates")


async def test_trickled_candidates_are_what_connects_and_ice_restart_is_refused() -> None:
    """Neither SDP carries candidates: only the PATCH body lets the viewer reach the peer."""
    async with trio_asyncio.open_loop(), live_stream() as stream:
        receiver = Receiver()
        offer = await receiver.offer()
        viewer = Viewer(PROCESS)
        async with trio.open_nursery() as process_scope:
            answer = await process_scope.start(viewer.run, stream, without_candidates(offer))
            await receiver.accept(without_candidates(answer))
            with pytest.raises(FragmentRejected) as restart:
                await viewer.add_remote_candidates(
                    "a=ice-ufrag:new1\r\na=ice-pwd:aNewPasswordOf22Chars00\r\n"
                )
            assert restart.value.status == 422
            await trio.sleep(0.5)
            assert viewer.state is ViewerState.CONNECTING

            candidates = [line for line in offer.splitlines() if line.startswith("a=candidate:")]
            await viewer.add_remote_candidates(
                "\r\n".join(["m=video 9 UDP/TLS/RTP/SAVPF 0", "a=mid:0", *candidates, "a=end-of-candidates"])
            )
            await receiver.wait_for_media(video_frames=5, timeout=5)
            process_scope.cancel_scope.cancel()
        await receiver.close()


async def test_session_table_caps_viewers_per_process_and_forgets_them_when_they_end() -> None:
    async with trio_asyncio.open_loop(), live_stream() as stream:
        sessions = ViewerSessions()
        first, second = Receiver(), Receiver()
        async with trio.open_nursery() as process_scope:
            viewer = Viewer(PROCESS)
            answer = await process_scope.start(
                partial(sessions.run_viewer, max_viewers=1), viewer, stream, await first.offer()
            )
            await first.accept(answer)
            assert (sessions.get(viewer.id), sessions.count(PROCESS), sessions.count("other")) == (
                viewer,
                1,
                0,
            )

            with pytest.raises(ViewerCapReached):
                await process_scope.start(
                    partial(sessions.run_viewer, max_viewers=1), Viewer(PROCESS), stream, await second.offer()
                )
            assert sessions.count(PROCESS) == 1
            await first.wait_for_media(video_frames=5)

            viewer.close()
            viewer.close()  # idempotent
            with trio.fail_after(2):
                while sessions.get(viewer.id) is not None:
                    await trio.sleep(0.01)
            assert sessions.count(PROCESS) == 0 and viewer.close_reason is CloseReason.DELETE
            await second.close()
            second = Receiver()
            await second.accept(
                await process_scope.start(
                    partial(sessions.run_viewer, max_viewers=1), Viewer(PROCESS), stream, await second.offer()
                )
            )
            await second.wait_for_media(video_frames=5)
            process_scope.cancel_scope.cancel()
        assert len(sessions) == 0
        await first.close()
        await second.close()


# --- the WHEP client in its own process -------------------------------------------------------------------


@asynccontextmanager
async def whep_endpoint(
    stream: Stream, sessions: ViewerSessions, settings: ViewerSettings
) -> AsyncIterator[str]:
    """The smallest WHEP server for ``stream``: POST answers with a viewer, DELETE closes it."""
    app = QuartTrio(__name__)
    async with trio.open_nursery() as nursery:

        @app.post("/whep")
        async def post() -> Any:
            viewer = Viewer(PROCESS, settings)
            offer = await request.get_data(as_text=True)
            try:
                answer = await nursery.start(sessions.run_viewer, viewer, stream, offer)
            except OfferRejected as rejected:
                return rejected.message, rejected.status
            return answer, 201, {"Content-Type": "application/sdp", "Location": f"/whep/{viewer.id}"}

        @app.delete("/whep/<viewer_id>")
        async def delete(viewer_id: str) -> Any:
            if (viewer := sessions.get(viewer_id)) is not None:
                viewer.close(CloseReason.DELETE)
            return "", 204

        config = hypercorn.config.Config()
        config.bind = [f"127.0.0.1:{free_port()}"]
        config.accesslog = config.errorlog = None
        await nursery.start(lambda task_status: hypercorn.trio.serve(app, config, task_status=task_status))
        yield f"http://{config.bind[0]}/whep"
        nursery.cancel_scope.cancel()


def client_command(url: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "dragonfork.webrtc.client", url, "--json", *options]


async def test_whep_client_process_plays_and_deletes_its_session() -> None:
    async with trio_asyncio.open_loop(), live_stream() as stream:
        sessions = ViewerSessions()
        deleted_before = sample("dragonfork_webrtc_viewers_closed_total", reason="delete")
        async with whep_endpoint(stream, sessions, ViewerSettings()) as url:
            with trio.fail_after(30):
                done = await trio.run_process(client_command(url, "--duration", "2"), capture_stdout=True)
                no_decode = await trio.run_process(
                    client_command(url, "--duration", "2", "--no-decode"), capture_stdout=True
                )
            with trio.fail_after(2):
                while len(sessions):
                    await trio.sleep(0.02)
        report = json.loads(done.stdout)
        assert report["status"] == 201 and report["error"] is None and not report["server_closed"]
        assert report["video_frames_decoded"] >= 25 and report["audio_frames"] >= 50
        assert report["video_packets"] >= report["video_frames_decoded"] and report["audio_packets"] > 0
        assert (
            0
            < report["post_to_201_seconds"]
            < report["connected_seconds"]
            < report["time_to_first_frame_seconds"]
        )
        counted = json.loads(no_decode.stdout)
        assert (
            counted["video_frames_decoded"] == 0
            and counted["video_packets"] >= 50
            and counted["audio_packets"]
        )
        assert sample("dragonfork_webrtc_viewers_closed_total", reason="delete") == deleted_before + 2
        print(f"\nclient report: {report}")


async def test_whep_client_reports_when_the_server_ends_the_session() -> None:
    async with trio_asyncio.open_loop(), live_stream() as stream:
        sessions = ViewerSessions()
        async with whep_endpoint(stream, sessions, ViewerSettings()) as url, trio.open_nursery() as nursery:
            client = await nursery.start(
                lambda task_status: trio.run_process(
                    client_command(url, "--duration", "20"),
                    stdout=subprocess.PIPE,
                    task_status=task_status,
                )
            )
            with trio.fail_after(10):
                while not any(v.state is ViewerState.CONNECTED for v in sessions.viewers(PROCESS)):
                    await trio.sleep(0.02)
            await trio.sleep(1)
            closed_at = trio.current_time()
            for viewer in sessions.viewers(PROCESS):
                viewer.close(CloseReason.PROCESS_STOPPED)
            output = b""
            with trio.fail_after(5):
                while chunk := await client.stdout.receive_some():
                    output += chunk
            reported_after = trio.current_time() - closed_at
        report = json.loads(output)
        assert report["server_closed"] is True and report["error"] is None
        assert report["server_closed_after_seconds"] > report["connected_seconds"] + 1
        assert reported_after < 2  # the client saw the end, sent its DELETE, closed and printed its report


async def test_a_vanished_peer_is_dropped_after_the_disconnect_grace() -> None:
    async with trio_asyncio.open_loop(), live_stream() as stream:
        sessions = ViewerSessions()
        async with (
            whep_endpoint(stream, sessions, ViewerSettings(disconnect_grace=2.5)) as url,
            trio.open_nursery() as nursery,
        ):
            client = await nursery.start(
                lambda task_status: trio.run_process(
                    client_command(url, "--duration", "20"), check=False, task_status=task_status
                )
            )
            with trio.fail_after(10):
                while not any(v.time_to_first_frame_seconds for v in sessions.viewers(PROCESS)):
                    await trio.sleep(0.02)
            (viewer,) = sessions.viewers(PROCESS)
            await trio.sleep(1)
            client.send_signal(signal.SIGKILL)
            killed_at = trio.current_time()
            with trio.fail_after(8):
                while len(sessions):
                    await trio.sleep(0.05)
        assert viewer.close_reason is CloseReason.ICE_DISCONNECTED
        # Silence counts from the last receiver report, which came up to 1.5 s before the kill (aiortc reports
        # every 0.5-1.5 s); the check runs every second.
        assert 2.5 - 1.5 <= trio.current_time() - killed_at < 2.5 + 1 + 2


# --- failure boundaries ---------------------------------------------------------------------------------


def _break_fast_path_socket(viewer: Viewer, stream: Stream) -> None:
    """The fan-out's next send to this viewer raises (OSError: bad file descriptor)."""
    assert viewer._fast is not None
    viewer._fast.srtp.close()


def _break_subscription(viewer: Viewer, stream: Stream) -> None:
    """The viewer's own subscription (aiortc path: the first subscriber) ends: its next read raises."""
    stream.video._subscribers[0].frames.close()


@pytest.mark.parametrize(
    ("fast_path", "break_viewer", "cause"),
    [(True, _break_fast_path_socket, "OSError"), (False, _break_subscription, "ClosedResourceError")],
    ids=["fast_path", "aiortc_path"],
)
async def test_an_exception_in_a_viewer_after_its_answer_ends_that_viewer_only(
    fast_path: bool, break_viewer: Any, cause: str
) -> None:
    """Regression: viewer.py re-raised an exception after the answer; it went up the run's nursery and ended
    every viewer and the process. Now it ends that viewer (reason ``error``), counted and logged, whether
    the exception comes from the fan-out's send loop or from the viewer's own task."""
    settings = ViewerSettings(fast_path=fast_path)
    async with trio_asyncio.open_loop(), live_stream() as stream:
        failed_before = sample("dragonfork_failures_total", component="viewer", cause=cause)
        broken, watching = Receiver(), Receiver()
        broken_viewer, watching_viewer = Viewer(PROCESS, settings), Viewer(PROCESS, settings)
        await broken.accept(await stream.start_reader(broken_viewer.run, await broken.offer()))
        await broken.wait_for_media(video_frames=5)
        await watching.accept(await stream.start_reader(watching_viewer.run, await watching.offer()))
        await watching.wait_for_media(video_frames=5)

        break_viewer(broken_viewer, stream)
        await broken.wait_ended(timeout=5)
        with trio.fail_after(2):
            while broken_viewer.state is not ViewerState.CLOSED:
                await trio.sleep(0.01)
        assert broken_viewer.close_reason is CloseReason.ERROR and broken_viewer.state is ViewerState.CLOSED
        assert sample("dragonfork_failures_total", component="viewer", cause=cause) == failed_before + 1
        frames_then = len(watching.video_sizes)
        await watching.wait_for_media(video_frames=frames_then + 25, audio_frames=25)
        assert watching_viewer.state is ViewerState.CONNECTED and watching.ended_at is None
        another = Receiver()  # the stream still takes new readers
        await another.accept(await stream.start_reader(Viewer(PROCESS, settings).run, await another.offer()))
        await another.wait_for_media(video_frames=5)
        for receiver in (broken, watching, another):
            await receiver.close()


def oversize_audio_frame() -> MediaFrame:
    return MediaFrame("audio", bytes(1400), 10**9, AUDIO_CLOCK_RATE, True, 1, 1400, trio.current_time())


async def test_an_oversize_frame_on_the_fast_path_is_dropped_once_and_every_viewer_plays_on() -> None:
    """The fan-out packetizes once per stream: a frame too large for one RTP packet (a publisher bypassing
    the RTP receiver's size check) is dropped for every viewer, counted once, and nobody's session ends."""
    async with trio_asyncio.open_loop(), live_stream() as stream:
        assert stream.audio is not None
        oversize_before = sample("dragonfork_webrtc_packets_dropped_total", kind="audio", reason="oversize")
        receivers = [Receiver(), Receiver()]
        viewers = [Viewer(PROCESS), Viewer(PROCESS)]
        for receiver, viewer in zip(receivers, viewers, strict=True):
            await receiver.accept(await stream.start_reader(viewer.run, await receiver.offer()))
            await receiver.wait_for_media(video_frames=5, audio_frames=5)
        stream.audio.write(oversize_audio_frame())
        for receiver in receivers:
            await receiver.wait_for_media(
                video_frames=len(receiver.video_sizes) + 25, audio_frames=receiver.audio_frames + 25
            )
        assert all(viewer.state is ViewerState.CONNECTED for viewer in viewers)
        assert sample("dragonfork_webrtc_packets_dropped_total", kind="audio", reason="oversize") == (
            oversize_before + 1
        )
        for receiver in receivers:
            await receiver.close()


async def test_a_viewer_whose_sender_dies_is_closed_not_left_half_alive() -> None:
    """Regression (aiortc path): aiortc's SRTP step refused an oversize audio packet ("packet is too long"),
    that viewer's audio sender task ended for good and the viewer stayed "connected" with video only. A
    publisher that writes such a frame (bypassing the RTP receiver's size check) now costs the viewers
    carrying audio their session, closed with reason ``sender_failed``; a video-only viewer plays on."""
    aiortc_path = ViewerSettings(fast_path=False)
    async with trio_asyncio.open_loop(), live_stream() as stream:
        assert stream.audio is not None
        failed_before = sample("dragonfork_failures_total", component="viewer_sender", cause="audio")
        with_audio, video_only = Receiver(), Receiver(audio=False)
        audio_viewer, video_viewer = Viewer(PROCESS, aiortc_path), Viewer(PROCESS, aiortc_path)
        await with_audio.accept(await stream.start_reader(audio_viewer.run, await with_audio.offer()))
        await video_only.accept(await stream.start_reader(video_viewer.run, await video_only.offer()))
        await with_audio.wait_for_media(video_frames=5, audio_frames=5)
        await video_only.wait_for_media(video_frames=5)

        stream.audio.write(oversize_audio_frame())
        await with_audio.wait_ended(timeout=5)
        with trio.fail_after(2):
            while audio_viewer.state is not ViewerState.CLOSED:
                await trio.sleep(0.01)
        assert audio_viewer.close_reason is CloseReason.SENDER_FAILED
        assert (
            sample("dragonfork_failures_total", component="viewer_sender", cause="audio") == failed_before + 1
        )
        frames_then = len(video_only.video_sizes)
        await video_only.wait_for_media(video_frames=frames_then + 25)
        assert video_viewer.state is ViewerState.CONNECTED
        await with_audio.close()
        await video_only.close()


async def test_the_close_reason_is_the_first_cause_even_when_delete_comes_while_closing() -> None:
    """Regression: 125 of 195 viewers ended by a process stop were counted as ``delete``: the client's DELETE
    arrived during the shielded ``pc.close`` and won. The stream's end is the first cause and stays, also
    for a DELETE that comes before the viewer's task has even seen its cancellation."""
    async with trio_asyncio.open_loop(), live_stream() as stream:
        stopped_before = sample("dragonfork_webrtc_viewers_closed_total", reason="process_stopped")
        deleted_before = sample("dragonfork_webrtc_viewers_closed_total", reason="delete")
        receiver = Receiver()
        viewer = Viewer(PROCESS)
        deletes = 0

        async def client_deletes_while_closing() -> None:
            nonlocal deletes
            while viewer.state is not ViewerState.CLOSED:
                viewer.close(CloseReason.DELETE)
                deletes += 1
                await trio.sleep(0)

        with trio.fail_after(5):
            await receiver.accept(await stream.start_reader(viewer.run, await receiver.offer()))
            await receiver.wait_for_media(video_frames=5)
            async with trio.open_nursery() as client:
                stream.end()  # what a process run does when it ends (stop, restart, crash)
                client.start_soon(client_deletes_while_closing)
        assert deletes > 0
        assert viewer.close_reason is CloseReason.PROCESS_STOPPED
        assert (
            sample("dragonfork_webrtc_viewers_closed_total", reason="process_stopped") == stopped_before + 1
        )
        assert sample("dragonfork_webrtc_viewers_closed_total", reason="delete") == deleted_before
        await receiver.close()


# --- the WHEP service ------------------------------------------------------------------------------------


async def test_the_whep_service_waits_for_a_starting_publisher_then_answers() -> None:
    directory = StreamDirectory()
    statuses = {"starting": PublisherStatus(serves_webrtc=True, started=True, state="starting")}
    whep = WhepServer(directory, WhepSettings(publisher_wait=10), statuses.get)
    async with trio_asyncio.open_loop():
        with pytest.raises(WhepRefused) as unknown:
            await whep.new_session("nobody", "offer")
        assert unknown.value.status == 404
        async with hub_live_stream("starting", directory=directory, wait_for_media=False) as live:
            assert not live.stream.has_media()  # FFmpeg has only just been started
            receiver = Receiver()
            session = await whep.new_session("starting", await receiver.offer())
            assert live.stream.has_media() and whep.viewer_count("starting") == 1
            await receiver.accept(session.answer)
            await receiver.wait_for_media(video_frames=10, audio_frames=10)
            whep.end_session("starting", session.resource_id)
            await receiver.wait_ended(timeout=5)
            await receiver.close()
        statuses["starting"] = PublisherStatus(serves_webrtc=True, started=False, state="finished")
        with pytest.raises(WhepRefused) as stopped:
            await whep.new_session("starting", "offer")
        assert stopped.value.status == 409 and stopped.value.retry_after


async def test_the_whep_service_refuses_viewers_over_its_budget_or_while_its_cpu_is_saturated() -> None:
    """Admission by capacity: 503 + Retry-After naming the setting, before every viewer would degrade."""
    directory = StreamDirectory()
    statuses = {"cam": PublisherStatus(serves_webrtc=True, started=True, state="running")}
    whep = WhepServer(directory, WhepSettings(max_viewers_per_core=1, admission_cpu_percent=20), statuses.get)
    async with (
        trio_asyncio.open_loop(),
        hub_live_stream("cam", directory=directory),
        trio.open_nursery() as service,
    ):
        await service.start(whep.run)
        watching, refused = Receiver(), Receiver()
        session = await whep.new_session("cam", await watching.offer())
        await watching.accept(session.answer)
        with pytest.raises(WhepRefused) as full:
            await whep.new_session("cam", await refused.offer())
        assert (full.value.status, full.value.field) == (503, "webrtc.max_viewers_per_core")
        assert full.value.retry_after
        await watching.wait_for_media(video_frames=5)
        whep.end_session("cam", session.resource_id)
        with trio.fail_after(5):
            while whep.viewer_count("cam"):
                await trio.sleep(0.05)

        await trio.sleep(2.2)  # idle: the server's CPU is far below 20 % of a core
        busy_until = time.process_time() + 1.5
        while time.process_time() < busy_until:  # 1.5 CPU-seconds in the meter's window (of <= 1 s + this)
            pass
        await trio.sleep(0.1)  # the meter, due meanwhile, measures
        with pytest.raises(WhepRefused) as saturated:
            await whep.new_session("cam", await refused.offer())
        assert (saturated.value.status, saturated.value.field) == (503, "webrtc.admission_cpu_percent")
        assert "CPU" in saturated.value.message and saturated.value.retry_after

        await trio.sleep(2.2)  # idle again: admitted
        session = await whep.new_session("cam", await refused.offer())
        await refused.accept(session.answer)
        await refused.wait_for_media(video_frames=5)
        for receiver in (watching, refused):
            await receiver.close()
        service.cancel_scope.cancel()


async def test_a_player_that_sends_no_reports_but_answers_consent_checks_stays_on_the_fast_path() -> None:
    """Liveness by ICE consent freshness (RFC 7675) as well as receiver reports: a peer that sends no RTCP
    keeps playing past the disconnect grace on the fast path; aiortc's senders (the fallback) only know
    receiver reports and close it after the grace."""
    grace = 2.0
    async with trio_asyncio.open_loop(), live_stream() as stream:
        quiet_fast, quiet_aiortc = Receiver(reports=False), Receiver(reports=False)
        fast = Viewer(PROCESS, ViewerSettings(disconnect_grace=grace))
        fallback = Viewer(PROCESS, ViewerSettings(disconnect_grace=grace, fast_path=False))
        await quiet_fast.accept(await stream.start_reader(fast.run, await quiet_fast.offer()))
        await quiet_aiortc.accept(await stream.start_reader(fallback.run, await quiet_aiortc.offer()))
        await quiet_fast.wait_for_media(video_frames=5)
        await trio.sleep(grace + 3)
        assert fallback.close_reason is CloseReason.ICE_DISCONNECTED
        assert fast.state is ViewerState.CONNECTED and quiet_fast.ended_at is None
        await quiet_fast.wait_for_media(video_frames=len(quiet_fast.video_sizes) + 10)
        await quiet_aiortc.close()
        await quiet_fast.close()
        with trio.fail_after(2):
            while fast.state is not ViewerState.CLOSED:
                await trio.sleep(0.02)
        assert fast.close_reason is CloseReason.PEER_CLOSED
