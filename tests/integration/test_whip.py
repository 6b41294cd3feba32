"""WHIP ingest with FFmpeg's own WHIP muxer as the publisher (real FFmpeg, real aiortc, real HTTP).

A process reading ``{whip,name=cam3}`` goes live and plays over WHEP with video and audio; the publisher
leaving ends the process's input and the process reconnects when it is back; an offer with no usable codec
is refused for that client only while the publisher and a viewer keep streaming. An aiortc VP8 publisher
is read as VP8, also when its first keyframe is lost on the way (the server asks for another).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio
import trio_asyncio
from aiortc import (
    RTCConfiguration,
    RTCDtlsTransport,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.rtp import is_rtcp
from harness import Server, metric, running_logged_in, running_server, whep_url
from rtmp_helpers import Publisher, play
from trio_asyncio import aio_as_trio
from whep_peers import play as whep_play
from whep_peers import start_client
from whip_helpers import unusable_offer, whip_publish_command

NAME = "cam3"
PROCESS = "studio"


def whip_url(server: Server, name: str = NAME) -> str:
    return f"{server.url}/api/v3/whip/{name}"


def publisher(server: Server, directory: Path, name: str = NAME, **options: str) -> Publisher:
    url = whip_url(server, name)
    return Publisher(url, directory / f"whip-{name}.log", command=whip_publish_command(url, **options))


def live_publishers(server: Server) -> list[str]:
    return [entry["name"] for entry in server.api("GET", "/api/v3/ingest").json()["whip"]["publishers"]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("whip")
    with running_server(directory, CORE_SESSIONS_IP_IGNORELIST="") as running:
        running.directory = directory  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="module")
def studio(server: Server) -> Iterator[Publisher]:
    """FFmpeg publishing cam3 (High profile + Opus) and a process reading it, serving WebRTC."""
    with publisher(server, server.directory) as running:  # type: ignore[attr-defined]
        server.wait_for(lambda: live_publishers(server) == [NAME], 20, "the WHIP publisher")
        config = {
            "id": PROCESS,
            "input": [{"address": f"{{whip,name={NAME}}}", "options": []}],
            "output": [],
            "webrtc": {"enabled": True},
            "reconnect": True,
            "reconnect_delay_seconds": 1,
        }
        assert server.api("POST", "/api/v3/process", json=config).status_code == 200
        server.wait_state(PROCESS, "running", timeout=20)
        yield running


def test_a_process_reading_whip_goes_live_and_plays_over_whep(server: Server, studio: Publisher) -> None:
    command = server.api("GET", f"/api/v3/process/{PROCESS}/state").json()["command"]
    assert f"{server.url}/api/v3/whip/{NAME}/stream.mkv" in command  # {whip,name=} needs no option

    report = whep_play(whep_url(server, PROCESS), duration=4)

    assert report["status"] == 201 and report["error"] is None, report
    assert report["video_frames_decoded"] > 40 and report["audio_frames"] > 50, report
    assert metric(server, "dragonfork_ingest_publishers_active", protocol="whip") == 1
    assert metric(server, "dragonfork_ingest_packets_total", protocol="whip", kind="audio") > 0
    sessions = server.api("GET", "/api/v3/session/active", params={"collectors": "webrtc"}).json()["webrtc"]
    assert any(session["local"] == f"/api/v3/whip/{NAME}" and session["bytes_rx"] > 0 for session in sessions)


def test_ffmpeg_reads_the_matroska_stream_with_both_tracks(server: Server, studio: Publisher) -> None:
    result = play(f"{server.url}/api/v3/whip/{NAME}/stream.mkv", seconds=2)

    assert "Video: h264" in result.stderr and "Audio: opus" in result.stderr, result.stderr[-2000:]
    assert "frame=" in result.stderr and result.returncode == 0


def test_an_offer_with_no_usable_codec_is_refused_for_that_client_only(
    server: Server, studio: Publisher
) -> None:
    viewer = start_client(whep_url(server, PROCESS), duration=6)
    received_before = metric(server, "dragonfork_ingest_bytes_received_total", protocol="whip")

    refused = httpx.post(
        whip_url(server, "other"), content=unusable_offer(), headers={"Content-Type": "application/sdp"}
    )
    garbage = httpx.post(
        whip_url(server, "other"), content="v=0\r\nnot sdp", headers={"Content-Type": "application/sdp"}
    )

    assert refused.status_code == 406, refused.text
    message = refused.json()["message"]
    assert "no H.264" in message and "AV1/90000" in message and "H265/90000" in message, message
    assert garbage.status_code == 400, garbage.text
    assert metric(server, "dragonfork_ingest_refused_total", protocol="whip", reason="codec") >= 1
    report = viewer.report()
    assert report["error"] is None and not report["server_closed"], report
    assert report["video_frames_decoded"] > 60, report  # the viewer kept playing through the refusals
    assert metric(server, "dragonfork_ingest_bytes_received_total", protocol="whip") > received_before
    assert live_publishers(server) == [NAME] and server.state(PROCESS)["exec"] == "running"


def test_a_second_publisher_of_a_live_name_is_409(server: Server, studio: Publisher) -> None:
    offer = unusable_offer()  # the name is checked before the offer

    response = httpx.post(whip_url(server), content=offer, headers={"Content-Type": "application/sdp"})

    assert response.status_code == 409 and "already being published" in response.json()["message"]


def test_the_publisher_leaving_ends_the_input_and_the_process_reconnects(
    server: Server, studio: Publisher
) -> None:
    studio.stop()  # FFmpeg's muxer sends DELETE on its way out
    server.wait_for(lambda: server.state(PROCESS)["exec"] != "running", 10, "the process's input to end")
    assert live_publishers(server) == []

    with publisher(server, server.directory, profile="baseline"):  # type: ignore[attr-defined]
        server.wait_state(PROCESS, "running", timeout=30)
        report = whep_play(whep_url(server, PROCESS), duration=3)
        assert report["video_frames_decoded"] > 20 and report["audio_frames"] > 30, report
    assert metric(server, "dragonfork_whip_publishers_closed_total", reason="delete") >= 1


def test_with_auth_whip_needs_a_bearer_token_and_the_process_reads_with_its_key(tmp_path: Path) -> None:
    with running_logged_in(tmp_path, "admin", "whip-secret-pw") as server:
        offer = {"content": unusable_offer(), "headers": {"Content-Type": "application/sdp"}}
        anonymous = httpx.post(whip_url(server, "locked"), **offer)  # type: ignore[arg-type]
        assert anonymous.status_code == 401 and "Bearer" in anonymous.headers["WWW-Authenticate"]
        url = whip_url(server, "locked")
        command = whip_publish_command(url, profile="baseline", audio=False, token=server.token)
        with Publisher(url, tmp_path / "whip-locked.log", command=command):
            server.wait_for(lambda: live_publishers(server) == ["locked"], 20, "the publisher with a token")
            keyless = httpx.get(f"{url}/stream.mkv", timeout=10)
            assert keyless.status_code == 403 and "key" in keyless.json()["message"]
            config = {"id": "locked-view", "input": [{"address": "{whip,name=locked}"}], "output": []}
            config["webrtc"] = {"enabled": True}
            assert server.api("POST", "/api/v3/process", json=config).status_code == 200
            running = server.wait_state("locked-view", "running", timeout=20)
            assert any(part.startswith(f"{url}/stream.mkv?key=") for part in running["command"])
            report = whep_play(whep_url(server, "locked-view"), duration=2, token=server.token)
            assert report["video_frames_decoded"] > 10, report


async def _publish_vp8(url: str, stop: trio.Event, *, lose_first_packets: int = 0) -> None:
    """An aiortc peer publishing its own test pattern in VP8 (aiortc's libvpx encoder) until ``stop``.

    aiortc's VP8 encoder makes a keyframe as it starts and then only every 3,000 frames or when asked (PLI),
    as a browser's does; ``lose_first_packets`` drops that many of its first RTP packets on the way out, the
    first keyframe with them.
    """
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        transceiver = pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        capabilities = RTCRtpSender.getCapabilities("video")
        assert capabilities is not None
        transceiver.setCodecPreferences([c for c in capabilities.codecs if c.mimeType == "video/VP8"])
        await aio_as_trio(pc.setLocalDescription)(await aio_as_trio(pc.createOffer)())
        if lose_first_packets:
            _lose_first_rtp_packets(transceiver.sender.transport, lose_first_packets)
        response = await trio.to_thread.run_sync(
            lambda: httpx.post(
                url, content=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
            )
        )
        assert response.status_code == 201, response.text
        await aio_as_trio(pc.setRemoteDescription)(RTCSessionDescription(sdp=response.text, type="answer"))
        await stop.wait()
    finally:
        with trio.move_on_after(5):  # aiortc's close can wait forever on a transport: the test must not
            await aio_as_trio(pc.close)()


def _lose_first_rtp_packets(transport: RTCDtlsTransport, count: int) -> None:
    """Drop the first ``count`` RTP packets the publisher sends (RTCP still goes): a lossy start."""
    send = transport._send_rtp
    lost = 0

    async def lossy_send(data: bytes) -> None:
        nonlocal lost
        if lost < count and not is_rtcp(data):
            lost += 1
            return
        await send(data)

    transport._send_rtp = lossy_send  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def _vp8_read_as_matroska(
    server: Server, name: str, *, lose_first_packets: int = 0
) -> AsyncIterator[None]:
    """A VP8 publisher of ``name`` (``_publish_vp8``) whose stream FFmpeg has read as VP8 Matroska; it
    publishes until the block ends."""
    stop = trio.Event()
    publish = functools.partial(_publish_vp8, lose_first_packets=lose_first_packets)
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        nursery.start_soon(publish, whip_url(server, name), stop)
        try:
            await trio.to_thread.run_sync(
                lambda: server.wait_for(lambda: name in live_publishers(server), 20, "the VP8 publisher")
            )
            # The read waits up to whip.reader_wait (3 s) for the stream's first keyframe.
            read = await trio.to_thread.run_sync(
                lambda: play(f"{server.url}/api/v3/whip/{name}/stream.mkv", 2)
            )
            assert "Video: vp8" in read.stderr and read.returncode == 0, read.stderr[-1500:]
            yield
        finally:
            stop.set()


async def test_a_publisher_whose_first_keyframe_is_lost_is_asked_for_one_and_goes_live(
    server: Server,
) -> None:
    requests_before = metric(server, "dragonfork_whip_keyframe_requests_total")
    # Without the server's PLI, aiortc's next keyframe would come 100 s later, and the read a 404.
    async with _vp8_read_as_matroska(server, "lossy", lose_first_packets=30):
        pass
    assert metric(server, "dragonfork_whip_keyframe_requests_total") > requests_before


async def test_a_vp8_publisher_is_read_as_matroska_and_transcoded_for_webrtc(server: Server) -> None:
    async with _vp8_read_as_matroska(server, "vp8cam"):
        config = {"id": "vp8view", "input": [{"address": "{whip,name=vp8cam}"}], "output": []}
        config["webrtc"] = {"enabled": True}
        assert server.api("POST", "/api/v3/process", json=config).status_code == 200
        await trio.to_thread.run_sync(lambda: server.wait_state("vp8view", "running", timeout=20))
        report = await trio.to_thread.run_sync(lambda: whep_play(whep_url(server, "vp8view"), duration=3))
        assert report["video_frames_decoded"] > 20, report  # transcoded to H.264 by the process
    server.api("DELETE", "/api/v3/process/vp8view")
