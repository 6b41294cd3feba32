"""The FFmpeg argv: order of its parts, the WebRTC copy/transcode plan, the RTP legs, one real FFmpeg run."""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest
import trio

from dragonfork.process.command import (
    WebRTCPlan,
    WebRTCPlanError,
    build_command,
    plan_webrtc,
    webrtc_legs,
)
from dragonfork.process.probe import probe_inputs
from dragonfork.process.progress import IOInfo, StreamInfo
from dragonfork.process.schema import ProcessConfig, WebRTCProcessConfig
from dragonfork.stream.ingest.rtp_udp import RtpLeg, pick_source_ports

TEST_VIDEO = "testsrc2=size=320x240:rate=25"
TEST_AUDIO = "sine=frequency=440:sample_rate=48000"


def config(**extra: Any) -> ProcessConfig:
    raw: dict[str, Any] = {
        "id": "cam1",
        "options": ["-loglevel", "level+info", "-err_detect", "ignore_err"],
        "input": [
            {"id": "video", "address": TEST_VIDEO, "options": ["-re", "-f", "lavfi"]},
            {"id": "audio", "address": TEST_AUDIO, "options": ["-f", "lavfi"]},
        ],
        "output": [
            {"id": "rtmp", "address": "rtmp://127.0.0.1/live/a", "options": ["-c:v", "libx264", "-f", "flv"]},
            {"id": "null", "address": "-", "options": ["-f", "null"]},
        ],
    }
    raw.update(extra)
    return ProcessConfig.model_validate(raw)


# --- argv order ---------------------------------------------------------------------------------------------

PROGRESS = ["-hide_banner", "-nostdin", "-nostats", "-progress", "pipe:1", "-stats_period", "0.5"]
GLOBAL = ["-loglevel", "level+info", "-err_detect", "ignore_err"]
INPUTS = ["-re", "-f", "lavfi", "-i", TEST_VIDEO, "-f", "lavfi", "-i", TEST_AUDIO]
OUTPUTS = ["-c:v", "libx264", "-f", "flv", "rtmp://127.0.0.1/live/a", "-f", "null", "-"]


def test_build_command_order() -> None:
    argv = build_command("/opt/ffmpeg", config())
    assert argv == ["/opt/ffmpeg", *PROGRESS, *GLOBAL, *INPUTS, *OUTPUTS]


def test_build_command_with_webrtc_legs_last() -> None:
    legs = ["-map", "0:v:0", "-f", "rtp", "rtp://127.0.0.1:20000"]
    argv = build_command("ffmpeg", config(), webrtc_args=legs)
    # The RTP muxer's SDP goes to /dev/null instead of stdout, where the progress blocks are.
    assert argv == ["ffmpeg", *PROGRESS, *GLOBAL, "-sdp_file", os.devnull, *INPUTS, *OUTPUTS, *legs]


def test_build_command_webrtc_only() -> None:
    legs = ["-map", "0:v:0", "-f", "rtp", "rtp://127.0.0.1:20000"]
    argv = build_command("ffmpeg", config(output=[], webrtc={"enabled": True}), webrtc_args=legs)
    assert argv == ["ffmpeg", *PROGRESS, *GLOBAL, "-sdp_file", os.devnull, *INPUTS, *legs]


def test_build_command_keeps_arguments_verbatim() -> None:
    """Each option stays one argv element: no shell, no splitting, no quoting."""
    tricky = "drawtext=text='a b; rm -rf /':x=1"
    argv = build_command("ffmpeg", config(options=["-filter_complex", tricky]))
    assert argv[len(PROGRESS) + 1 : len(PROGRESS) + 3] == ["-filter_complex", tricky]


# --- plan ---------------------------------------------------------------------------------------------------


def video(
    codec: str = "h264", profile: str | None = "Constrained Baseline", file_index: int = 0
) -> StreamInfo:
    return StreamInfo(
        index=0, file_index=file_index, type="video", codec=codec, profile=profile, pix_fmt="yuv420p",
        width=320, height=240, fps=25.0,
    )  # fmt: skip


def audio(codec: str = "opus", sample_rate: int = 48000, index: int = 1, file_index: int = 0) -> StreamInfo:
    return StreamInfo(
        index=index, file_index=file_index, type="audio", codec=codec, sample_rate=sample_rate, channels=2
    )


def probed(*files: list[StreamInfo]) -> list[IOInfo]:
    return [
        IOInfo(index=index, format="mpegts", address=f"srt://127.0.0.1:600{index}", streams=streams)
        for index, streams in enumerate(files)
    ]


def webrtc(**fields: Any) -> WebRTCProcessConfig:
    return WebRTCProcessConfig.model_validate({"enabled": True, **fields})


@pytest.mark.parametrize("profile", ["Constrained Baseline", "Baseline"])
def test_plan_copies_browser_safe_h264_and_opus(profile: str) -> None:
    plan = plan_webrtc(webrtc(), probed([video(profile=profile), audio()]))
    assert plan == WebRTCPlan(copy_video=True, copy_audio=True, with_audio=True)


@pytest.mark.parametrize(
    "stream",
    [
        video(profile="High"),
        video(profile="Main"),
        video(profile=None),
        video(codec="rawvideo", profile=None),
        video(codec="hevc", profile="Main"),
        video(codec="vp8", profile=None),
    ],
    ids=["high", "main", "unknown-profile", "rawvideo", "hevc", "vp8"],
)
def test_plan_transcodes_other_video(stream: StreamInfo) -> None:
    assert plan_webrtc(webrtc(), probed([stream, audio()])).copy_video is False


def test_force_transcode_encodes_both_legs() -> None:
    plan = plan_webrtc(webrtc(force_transcode=True), probed([video(), audio()]))
    assert plan == WebRTCPlan(copy_video=False, copy_audio=False, with_audio=True)


@pytest.mark.parametrize(
    "stream",
    [audio(codec="aac"), audio(codec="opus", sample_rate=44100), audio(codec="pcm_s16le")],
    ids=["aac", "opus-44k", "pcm"],
)
def test_plan_transcodes_other_audio(stream: StreamInfo) -> None:
    plan = plan_webrtc(webrtc(), probed([video(), stream]))
    assert (plan.with_audio, plan.copy_audio) == (True, False)


def test_no_audio_leg_when_the_audio_map_selects_nothing() -> None:
    assert plan_webrtc(webrtc(), probed([video()])).with_audio is False
    assert plan_webrtc(webrtc(audio_map="0:a:1"), probed([video(), audio()])).with_audio is False
    assert plan_webrtc(webrtc(audio_map="1:a:0"), probed([video(), audio()])).with_audio is False
    assert plan_webrtc(webrtc(audio_map="0:v:0"), probed([video(), audio()])).with_audio is False


def test_maps_select_streams_of_other_inputs() -> None:
    inputs = probed(
        [audio(codec="aac", index=0)], [video(file_index=1, profile="High")], [audio(file_index=2)]
    )
    plan = plan_webrtc(webrtc(video_map="1:v:0", audio_map="2:a:0"), inputs)
    assert plan == WebRTCPlan(copy_video=False, copy_audio=True, with_audio=True)
    plan = plan_webrtc(webrtc(video_map="1:v:0", audio_map="0:a:0"), inputs)
    assert plan == WebRTCPlan(copy_video=False, copy_audio=False, with_audio=True)


def test_optional_audio_map() -> None:
    assert plan_webrtc(webrtc(audio_map="0:a:0?"), probed([video(), audio()])).copy_audio is True
    assert plan_webrtc(webrtc(audio_map="0:a:0?"), probed([video()])).with_audio is False


@pytest.mark.parametrize("video_map", ["0:v:1", "1:v:0", "0:a:0"])
def test_video_map_selecting_nothing_names_the_field(video_map: str) -> None:
    with pytest.raises(WebRTCPlanError) as caught:
        plan_webrtc(webrtc(video_map=video_map), probed([video(), audio()]))
    assert str(caught.value) == f"webrtc.video_map: {video_map!r} selects no video stream of the inputs"


def test_filter_graph_label_is_transcoded() -> None:
    """``[vout]`` names a filter output, not a probed stream: it cannot be copied."""
    plan = plan_webrtc(webrtc(video_map="[vout]"), probed([video(), audio()]))
    assert plan.copy_video is False


# --- legs ---------------------------------------------------------------------------------------------------


def split_legs(args: list[str]) -> list[list[str]]:
    """The output legs, each ending at its rtp:// address."""
    legs, current = [], []
    for arg in args:
        current.append(arg)
        if arg.startswith("rtp://"):
            legs.append(current)
            current = []
    assert current == [], f"arguments after the last leg: {current}"
    return legs


def option(leg: list[str], name: str) -> str:
    assert leg.count(name) == 1, f"{name} appears {leg.count(name)} times in {leg}"
    return leg[leg.index(name) + 1]


def test_transcoding_legs() -> None:
    plan = WebRTCPlan(copy_video=False, copy_audio=False, with_audio=True)
    video_leg, audio_leg = split_legs(
        webrtc_legs(webrtc(audio_map="1:a:0"), plan, RtpLeg(20010, 20110), RtpLeg(20011, 20112))
    )

    assert video_leg[:2] == ["-map", "0:v:0"]
    assert option(video_leg, "-c:v") == "libx264"
    assert option(video_leg, "-profile:v") == "baseline"
    assert option(video_leg, "-pix_fmt") == "yuv420p"
    assert option(video_leg, "-bf") == "0"
    assert option(video_leg, "-force_key_frames") == "expr:gte(t,n_forced*2)"
    assert "repeat-headers=1" in option(video_leg, "-x264-params")
    assert {"-an", "-sn", "-dn"} <= set(video_leg)
    assert "-b:v" not in video_leg
    assert option(video_leg, "-f") == "rtp"
    assert option(video_leg, "-payload_type") == "96"
    assert option(video_leg, "-pkt_size") == "1200"
    assert video_leg[-1] == "rtp://127.0.0.1:20010?localport=20110"  # the only sender its socket hears

    assert audio_leg[:2] == ["-map", "1:a:0"]
    assert option(audio_leg, "-c:a") == "libopus"
    assert option(audio_leg, "-ar") == "48000"
    assert {"-vn", "-sn", "-dn"} <= set(audio_leg)
    assert option(audio_leg, "-f") == "rtp"
    assert option(audio_leg, "-payload_type") == "111"
    assert option(audio_leg, "-pkt_size") == "1200"
    assert audio_leg[-1] == "rtp://127.0.0.1:20011?localport=20112"


def test_copying_legs() -> None:
    plan = WebRTCPlan(copy_video=True, copy_audio=True, with_audio=True)
    video_leg, audio_leg = split_legs(webrtc_legs(webrtc(), plan, RtpLeg(20020, 20120), RtpLeg(20021, 20122)))
    assert option(video_leg, "-c:v") == "copy"
    assert "libx264" not in video_leg and "-bf" not in video_leg
    # Copied H.264 still gets SPS/PPS before every keyframe, so a viewer can join at any of them.
    # (MP4/FLV sources carry them out of band: h264_mp4toannexb converts, dump_extra repeats them.)
    assert option(video_leg, "-bsf:v") == "h264_mp4toannexb,dump_extra=freq=keyframe"
    assert option(audio_leg, "-c:a") == "copy"
    assert "libopus" not in audio_leg
    assert (video_leg[-1], audio_leg[-1]) == (
        "rtp://127.0.0.1:20020?localport=20120",
        "rtp://127.0.0.1:20021?localport=20122",
    )


def test_video_only_leg() -> None:
    plan = WebRTCPlan(copy_video=False, copy_audio=False, with_audio=False)
    [video_leg] = split_legs(webrtc_legs(webrtc(), plan, RtpLeg(20030, 20130), RtpLeg(20031, 20132)))
    assert option(video_leg, "-payload_type") == "96"
    assert "111" not in video_leg


def test_bitrate_and_keyframe_interval() -> None:
    plan = WebRTCPlan(copy_video=False, copy_audio=False, with_audio=False)
    legs = webrtc_legs(
        webrtc(video_bitrate_kbit=800, keyframe_interval_seconds=0.5),
        plan,
        RtpLeg(20040, 20140),
        RtpLeg(20041, 20142),
    )
    assert (option(legs, "-b:v"), option(legs, "-maxrate"), option(legs, "-bufsize")) == ("800k",) * 3
    assert option(legs, "-force_key_frames") == "expr:gte(t,n_forced*0.5)"


# --- real FFmpeg --------------------------------------------------------------------------------------------

VIDEO_PAYLOAD_TYPE = 96
AUDIO_PAYLOAD_TYPE = 111
# About a second of media: 20 ms Opus frames; a few packets per 25 fps video frame.
AUDIO_PACKETS = 50
VIDEO_PACKETS = 100


@dataclass
class RtpCapture:
    """What arrived on 127.0.0.1:V and V+1 while FFmpeg ran the legs of a lavfi test pattern and tone."""

    plan: WebRTCPlan
    video_port: list[bytes]
    audio_port: list[bytes]
    ffmpeg_log: str


def payload_type(packet: bytes) -> int:
    return packet[1] & 0x7F


async def bind_port_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """Two UDP sockets on 127.0.0.1:V and V+1, as the stream hub binds them."""
    for _ in range(50):
        first = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await first.bind(("127.0.0.1", 0))
        port = first.getsockname()[1]
        second = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            await second.bind(("127.0.0.1", port + 1))
        except OSError:
            first.close()
            second.close()
            continue
        return first, second
    raise RuntimeError("no free UDP port pair on 127.0.0.1")


async def receive(sock: trio.socket.SocketType, into: list[bytes], wanted_type: int, wanted: int) -> None:
    """Every datagram until ``wanted`` of them carry ``wanted_type``."""
    while sum(payload_type(packet) == wanted_type for packet in into) < wanted:
        into.append(await sock.recv(2048))


async def run_legs(log_path: Path) -> RtpCapture:
    """Probe, plan, build and run the command of a WebRTC-only process for about a second."""
    process_config = config(
        options=["-loglevel", "error"],
        input=[
            {"id": "video", "address": TEST_VIDEO, "options": ["-re", "-f", "lavfi"]},
            {"id": "audio", "address": TEST_AUDIO, "options": ["-re", "-f", "lavfi"]},
        ],
        output=[],
        webrtc={"enabled": True, "audio_map": "1:a:0", "keyframe_interval_seconds": 0.5},
    )
    binary = imageio_ffmpeg.get_ffmpeg_exe()
    inputs = await probe_inputs(binary, [(io.options, io.address) for io in process_config.input], timeout=10)
    plan = plan_webrtc(process_config.webrtc, inputs)
    video_sock, audio_sock = await bind_port_pair()
    video_source, audio_source = pick_source_ports()
    video_leg = RtpLeg(video_sock.getsockname()[1], video_source)
    audio_leg = RtpLeg(audio_sock.getsockname()[1], audio_source)
    legs = webrtc_legs(process_config.webrtc, plan, video_leg, audio_leg)
    argv = build_command(binary, process_config, webrtc_args=legs)

    capture = RtpCapture(plan, [], [], "")
    with video_sock, audio_sock, log_path.open("wb") as log:
        ffmpeg = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            with trio.move_on_after(20):  # ample: the packets wanted take about one second
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        receive, video_sock, capture.video_port, VIDEO_PAYLOAD_TYPE, VIDEO_PACKETS
                    )
                    nursery.start_soon(
                        receive, audio_sock, capture.audio_port, AUDIO_PAYLOAD_TYPE, AUDIO_PACKETS
                    )
        finally:
            ffmpeg.kill()
            with trio.CancelScope(shield=True):
                await ffmpeg.wait()
    capture.ffmpeg_log = log_path.read_text(errors="replace")
    return capture


@pytest.fixture(scope="module")
def rtp_capture(tmp_path_factory: pytest.TempPathFactory) -> RtpCapture:
    """One FFmpeg run shared by the tests below (the machine has two cores)."""
    return trio.run(run_legs, tmp_path_factory.mktemp("rtp") / "ffmpeg.log")


def rtp_packets(packets: list[bytes], wanted_type: int) -> list[bytes]:
    return [packet for packet in packets if packet[0] >> 6 == 2 and payload_type(packet) == wanted_type]


def sequence_parameter_sets(packets: list[bytes]) -> list[bytes]:
    """The SPS NAL units in H.264 RTP payloads: single NAL units and STAP-A aggregates (RFC 6184)."""
    found = []
    for packet in packets:
        payload = packet[12:]  # FFmpeg sends no CSRCs or header extensions
        if not payload:
            continue
        if payload[0] & 0x1F == 7:
            found.append(payload)
        elif payload[0] & 0x1F == 24:
            offset = 1
            while offset + 2 <= len(payload):
                size = int.from_bytes(payload[offset : offset + 2], "big")
                nal = payload[offset + 2 : offset + 2 + size]
                if nal and nal[0] & 0x1F == 7:
                    found.append(nal)
                offset += 2 + size
    return found


def test_real_ffmpeg_lavfi_input_is_transcoded(rtp_capture: RtpCapture) -> None:
    assert rtp_capture.plan == WebRTCPlan(copy_video=False, copy_audio=False, with_audio=True)
    assert rtp_capture.ffmpeg_log == ""


def test_real_ffmpeg_sends_baseline_h264_rtp_on_the_video_port(rtp_capture: RtpCapture) -> None:
    video = rtp_packets(rtp_capture.video_port, VIDEO_PAYLOAD_TYPE)
    assert len(video) >= VIDEO_PACKETS, rtp_capture.ffmpeg_log
    assert max(len(packet) for packet in video) <= 1200
    parameter_sets = sequence_parameter_sets(video)
    # One keyframe every 0.5 s, each preceded by its SPS, over about a second of media.
    assert len(parameter_sets) >= 2
    for sps in parameter_sets:
        profile_idc, constraint_flags = sps[1], sps[2]
        assert profile_idc == 66 and constraint_flags & 0x40, f"not constrained baseline: {sps[:4].hex()}"


def test_real_ffmpeg_sends_opus_rtp_on_the_audio_port(rtp_capture: RtpCapture) -> None:
    audio = rtp_packets(rtp_capture.audio_port, AUDIO_PAYLOAD_TYPE)
    assert len(audio) >= AUDIO_PACKETS, rtp_capture.ffmpeg_log
    assert max(len(packet) for packet in audio) <= 1200


def test_each_port_carries_only_its_own_leg(rtp_capture: RtpCapture) -> None:
    """FFmpeg sends RTCP to port+1 unless told not to: the video leg's reports land on the audio port."""
    assert {payload_type(packet) for packet in rtp_capture.video_port} == {VIDEO_PAYLOAD_TYPE}
    assert {payload_type(packet) for packet in rtp_capture.audio_port} == {AUDIO_PAYLOAD_TYPE}
