"""The benchmark stream: 720p30 H.264 (constrained baseline, 2 Mbit/s, GOP 2 s) + Opus 48 kHz, from FFmpeg.

The clip is encoded once (and cached) from a test pattern with a little noise, so its frames cost what
camera frames cost in bits; both servers are then fed by FFmpeg playing it in real time and in a loop with
``-c copy``: the same packets for dragonfork and Janus, and no encoder competing with the servers for CPU.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import imageio_ffmpeg

CLIP_SECONDS = 20
FPS = 30
GOP_FRAMES = 60
GOP_SECONDS = GOP_FRAMES / FPS
VIDEO_BITRATE = "2M"

ENCODE_ARGS = [
    "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate={FPS},noise=alls=12:allf=t+u",
    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
    "-t", str(CLIP_SECONDS),
    "-c:v", "libx264", "-profile:v", "baseline", "-pix_fmt", "yuv420p", "-preset", "veryfast",
    "-tune", "zerolatency", "-bf", "0", "-g", str(GOP_FRAMES), "-keyint_min", str(GOP_FRAMES),
    "-x264-params", "scenecut=0:repeat-headers=1",
    "-b:v", VIDEO_BITRATE, "-maxrate", VIDEO_BITRATE, "-bufsize", VIDEO_BITRATE,
    "-c:a", "libopus", "-ar", "48000", "-ac", "2", "-b:a", "96k",
]  # fmt: skip

DESCRIPTION = (
    f"1280x720 at {FPS} fps, H.264 constrained baseline at {VIDEO_BITRATE}bit/s "
    f"(GOP {GOP_FRAMES} frames = 2 s), Opus 48 kHz stereo 96 kbit/s; "
    f"a {CLIP_SECONDS} s clip looped in real time by FFmpeg with -c copy"
)


def ffmpeg_binary() -> str:
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def make_clip(cache_dir: Path) -> Path:
    """The benchmark clip, encoded on first use (a few seconds) and reused while its recipe is unchanged."""
    recipe = hashlib.sha256(" ".join(ENCODE_ARGS).encode()).hexdigest()[:12]
    clip = cache_dir / f"bench-720p30-{recipe}.mkv"
    if clip.exists():
        return clip
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = clip.with_suffix(".partial.mkv")
    subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y", *ENCODE_ARGS, str(partial)],
        check=True,
        timeout=300,
    )
    partial.rename(clip)
    return clip


def with_rtp_ports(argv: list[str], video_port: int, audio_port: int) -> list[str]:
    """A copy of dragonfork's FFmpeg command whose two RTP legs go to other ports (video first, as built)."""
    ports = iter((video_port, audio_port))
    return [f"rtp://127.0.0.1:{next(ports)}" if arg.startswith("rtp://") else arg for arg in argv]
