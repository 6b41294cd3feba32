"""The FFmpeg argv of a process run.

``-progress pipe:1`` puts machine-readable progress blocks on stdout (parsed by ``progress.ProgressParser``);
stderr keeps the prelude and FFmpeg's log lines. ``-sdp_file`` keeps the RTP muxer from printing its SDP on
stdout, where it would interleave with the progress blocks.

When the process serves WebRTC, two RTP legs are appended: H.264 constrained baseline without B-frames to
``127.0.0.1:V`` and Opus 48 kHz to ``127.0.0.1:V+1``. Video is copied when the probed input stream already is
browser-safe H.264, transcoded with x264 otherwise; SPS/PPS are repeated before every IDR either way (x264's
``repeat-headers``, or ``h264_mp4toannexb`` + ``dump_extra`` on copy), so a viewer can start at any keyframe.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from dragonfork.process.probe import is_webrtc_compatible_h264
from dragonfork.process.progress import IOInfo, StreamInfo
from dragonfork.process.schema import ProcessConfig, WebRTCProcessConfig
from dragonfork.stream.ingest.rtp_udp import DEFAULT_PAYLOAD_TYPES, RTP_PACKET_SIZE, RtpLeg

PROGRESS_ARGS = ["-hide_banner", "-nostdin", "-nostats", "-progress", "pipe:1", "-stats_period", "0.5"]

_STREAM_SPECIFIER = re.compile(r"^(\d+):([va]):(\d+)\??$")


class WebRTCPlanError(Exception):
    """The webrtc block cannot be served from these inputs; the message names the field."""


@dataclass(frozen=True)
class WebRTCPlan:
    """What the RTP legs of one run carry, decided from the probed inputs."""

    copy_video: bool
    copy_audio: bool
    with_audio: bool


def _probed_stream(inputs: list[IOInfo], specifier: str, kind: str) -> StreamInfo | None:
    """The stream an ``N:v:K`` / ``N:a:K`` specifier selects, or None when it selects nothing."""
    match = _STREAM_SPECIFIER.match(specifier)
    if not match:
        return None
    file_index, kind_letter, nth = int(match.group(1)), match.group(2), int(match.group(3))
    wanted = {"v": "video", "a": "audio"}[kind_letter]
    if wanted != kind or file_index >= len(inputs):
        return None
    streams = [stream for stream in inputs[file_index].streams if stream.type == wanted]
    return streams[nth] if nth < len(streams) else None


def plan_webrtc(webrtc: WebRTCProcessConfig, inputs: list[IOInfo]) -> WebRTCPlan:
    video = _probed_stream(inputs, webrtc.video_map, "video")
    if video is None and _STREAM_SPECIFIER.match(webrtc.video_map):
        raise WebRTCPlanError(f"webrtc.video_map: {webrtc.video_map!r} selects no video stream of the inputs")
    audio = _probed_stream(inputs, webrtc.audio_map, "audio")
    copy_video = video is not None and not webrtc.force_transcode and is_webrtc_compatible_h264(video)
    copy_audio = (
        audio is not None
        and not webrtc.force_transcode
        and audio.codec == "opus"
        and audio.sample_rate == 48000
    )
    return WebRTCPlan(copy_video=copy_video, copy_audio=copy_audio, with_audio=audio is not None)


def _rtp_output(payload_type: int, leg: RtpLeg) -> list[str]:
    return [
        "-f", "rtp",
        "-payload_type", str(payload_type),
        "-pkt_size", str(RTP_PACKET_SIZE),
        "-rtpflags", "skip_rtcp",  # RTCP would go to port+1: the audio leg's (or a neighbour's) port
        leg.url,  # sent from the leg's source port, the only sender its receiving socket hears
    ]  # fmt: skip


def webrtc_legs(
    webrtc: WebRTCProcessConfig, plan: WebRTCPlan, video_leg: RtpLeg, audio_leg: RtpLeg
) -> list[str]:
    """The output arguments of the two RTP legs."""
    video = ["-map", webrtc.video_map]
    if plan.copy_video:
        # MP4/FLV/RTMP carry H.264 length-prefixed with SPS/PPS out of band: convert to Annex B and put the
        # parameter sets before every keyframe, so a viewer can start at any IDR.
        video += ["-c:v", "copy", "-bsf:v", "h264_mp4toannexb,dump_extra=freq=keyframe"]
    else:
        interval = webrtc.keyframe_interval_seconds
        video += [
            "-c:v", "libx264",
            "-profile:v", "baseline",
            "-pix_fmt", "yuv420p",
            "-preset", "veryfast",
            "-tune", "zerolatency",
            "-bf", "0",
            "-force_key_frames", f"expr:gte(t,n_forced*{interval:g})",
            "-x264-params", "scenecut=0:repeat-headers=1",  # SPS/PPS before every IDR
        ]  # fmt: skip
        if webrtc.video_bitrate_kbit:
            rate = webrtc.video_bitrate_kbit
            video += ["-b:v", f"{rate}k", "-maxrate", f"{rate}k", "-bufsize", f"{rate}k"]
    video += ["-an", "-sn", "-dn"]
    video += _rtp_output(DEFAULT_PAYLOAD_TYPES["video"], video_leg)
    if not plan.with_audio:
        return video
    audio = ["-map", webrtc.audio_map]
    if plan.copy_audio:
        audio += ["-c:a", "copy"]
    else:
        audio += ["-c:a", "libopus", "-ar", "48000", "-ac", "2", "-b:a", "96k", "-application", "lowdelay"]
    audio += ["-vn", "-sn", "-dn"]
    audio += _rtp_output(DEFAULT_PAYLOAD_TYPES["audio"], audio_leg)
    return video + audio


def build_command(
    binary: str,
    config: ProcessConfig,
    *,
    webrtc_args: list[str] | None = None,
) -> list[str]:
    """The complete argv: global options, inputs, outputs, then the WebRTC legs if any."""
    argv = [binary, *PROGRESS_ARGS, *config.options]
    if webrtc_args:
        argv += ["-sdp_file", os.devnull]
    for io in config.input:
        argv += [*io.options, "-i", io.address]
    for io in config.output:
        argv += [*io.options, io.address]
    return argv + (webrtc_args or [])
