"""WHIP publishers for tests: FFmpeg's own WHIP muxer (``-f whip``), and offers no server can take."""

from __future__ import annotations

from harness import TEST_AUDIO, TEST_VIDEO
from rtmp_helpers import FFMPEG


def whip_publish_command(
    url: str,
    *,
    profile: str = "high",
    audio: bool = True,
    token: str | None = None,
    bitrate: str | None = None,
) -> list[str]:
    """FFmpeg publishing the small test pattern (and tone) in real time over WHIP: H.264 + Opus.

    ``profile`` high (with ``-preset veryfast``, so the stream really is High) shows the server takes any
    H.264 profile, not only the two aiortc negotiates.
    """
    preset = "veryfast" if profile == "high" else "ultrafast"
    video = ["-c:v", "libx264", "-preset", preset, "-tune", "zerolatency", "-profile:v", profile, "-g", "25"]
    video += ["-bf", "0", "-pix_fmt", "yuv420p"]
    if bitrate:
        video += ["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate]
    sound = ["-re", "-f", "lavfi", "-i", TEST_AUDIO] if audio else []
    encode_sound = ["-c:a", "libopus", "-ar", "48000", "-ac", "2", "-b:a", "64k"] if audio else []
    return [
        FFMPEG, "-hide_banner", "-nostats", "-loglevel", "warning",
        "-re", "-f", "lavfi", "-i", TEST_VIDEO, *sound, *video, *encode_sound,
        *(["-authorization", token] if token else []), "-f", "whip", url,
    ]  # fmt: skip


FINGERPRINT = ":".join(["AB"] * 32)


def unusable_offer() -> str:
    """A browser-like WHIP offer (sendonly, BUNDLE, ICE, DTLS) whose video offers only AV1 and H.265."""
    return "\r\n".join(
        [
            "v=0",
            "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0 1",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "c=IN IP4 0.0.0.0",
            "a=rtcp-mux",
            "a=mid:0",
            "a=sendonly",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:abcdefghijklmnopqrstuvwx",
            f"a=fingerprint:sha-256 {FINGERPRINT}",
            "a=setup:actpass",
            "a=rtpmap:111 opus/48000/2",
            "m=video 9 UDP/TLS/RTP/SAVPF 96 98",
            "c=IN IP4 0.0.0.0",
            "a=rtcp-mux",
            "a=mid:1",
            "a=sendonly",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:abcdefghijklmnopqrstuvwx",
            f"a=fingerprint:sha-256 {FINGERPRINT}",
            "a=setup:actpass",
            "a=rtpmap:96 AV1/90000",
            "a=rtpmap:98 H265/90000",
            "",
        ]
    )
