"""A real stream of the hub fed by a real FFmpeg, as a process run makes it (for stream and viewer tests).

The FFmpeg command carries the RTP legs the supervisor builds (``webrtc_legs``: H.264 constrained baseline on
V, Opus on V+1, ``-pkt_size 1200``, each leg from its own ``localport``) on a 320x240@25 test pattern.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import imageio_ffmpeg
import trio
from harness import TEST_AUDIO, TEST_VIDEO

from dragonfork.process.command import WebRTCPlan, webrtc_legs
from dragonfork.process.schema import WebRTCProcessConfig
from dragonfork.stream.directory import StreamDirectory
from dragonfork.stream.ingest.rtp_udp import RtpIngestSettings, RtpReceiver, RtpUdpPublisher
from dragonfork.stream.stream import Stream, StreamSettings

FPS = 25


def ffmpeg_command(publisher: RtpUdpPublisher, *, has_audio: bool, gop_seconds: float = 1.0) -> list[str]:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error"]
    command += ["-re", "-f", "lavfi", "-i", TEST_VIDEO]
    if has_audio:
        command += ["-re", "-f", "lavfi", "-i", TEST_AUDIO]
    webrtc = WebRTCProcessConfig(enabled=True, audio_map="1:a:0", keyframe_interval_seconds=gop_seconds)
    plan = WebRTCPlan(copy_video=False, copy_audio=False, with_audio=has_audio)
    return command + webrtc_legs(webrtc, plan, publisher.video_leg, publisher.audio_leg)


@dataclasses.dataclass
class LiveStream:
    stream: Stream
    publisher: RtpUdpPublisher
    ffmpeg: trio.Process

    @property
    def video(self) -> RtpReceiver:
        return self.publisher.receivers[0]

    @property
    def audio(self) -> RtpReceiver:
        return self.publisher.receivers[1]


@asynccontextmanager
async def live_stream(
    name: str = "itest",
    *,
    has_audio: bool = True,
    settings: StreamSettings | None = None,
    ports: RtpIngestSettings | None = None,
    directory: StreamDirectory | None = None,
    gop_seconds: float = 1.0,
    wait_for_media: bool = True,
) -> AsyncIterator[LiveStream]:
    """A published stream with FFmpeg sending to it (media flowing when entered); everything stops on exit."""
    publisher = await RtpUdpPublisher.bind(ports or RtpIngestSettings(41_000, 41_999))
    stream = Stream(name, settings or StreamSettings(), has_audio=has_audio)
    async with trio.open_nursery() as nursery:
        if directory is not None:
            await nursery.start(directory.run, stream)
        else:
            await nursery.start(stream.run)
        await nursery.start(publisher.run, stream)
        ffmpeg = await trio.lowlevel.open_process(
            ffmpeg_command(publisher, has_audio=has_audio, gop_seconds=gop_seconds),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # the RTP muxer prints the SDP there
        )
        try:
            if wait_for_media:
                with trio.fail_after(15):
                    await stream.live.wait()
            yield LiveStream(stream, publisher, ffmpeg)
        finally:
            ffmpeg.kill()
            with trio.CancelScope(shield=True):
                await ffmpeg.wait()
            nursery.cancel_scope.cancel()
