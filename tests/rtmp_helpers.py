"""RTMP clients for tests: real FFmpeg publishers and players, and a raw session builder for fuzzing."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import imageio_ffmpeg
from harness import TEST_AUDIO, TEST_VIDEO

from dragonfork.servers.rtmp import amf0
from dragonfork.servers.rtmp import messages as msg
from dragonfork.servers.rtmp.chunks import ChunkWriter, Message
from dragonfork.servers.rtmp.handshake import HANDSHAKE_SIZE

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def publish_command(
    url: str, *, video_codec: str = "libx264", bitrate: str | None = None, ca_file: str | None = None
) -> list[str]:
    """FFmpeg publishing the small test pattern and tone in real time, as OBS would (H.264 + AAC in FLV).

    ``ca_file`` is the certificate an ``rtmps://`` URL must verify against (FFmpeg verifies by default).
    """
    video = ["-c:v", video_codec, "-preset", "ultrafast", "-g", "25"]
    if video_codec == "libx264":
        video += ["-profile:v", "baseline", "-tune", "zerolatency"]
    if bitrate:
        video += ["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate]
    return [
        FFMPEG, "-hide_banner", "-nostats", "-loglevel", "warning",
        "-re", "-f", "lavfi", "-i", TEST_VIDEO, "-re", "-f", "lavfi", "-i", TEST_AUDIO,
        *video, "-c:a", "aac", "-b:a", "64k", *(["-ca_file", ca_file] if ca_file else []), "-f", "flv", url,
    ]  # fmt: skip


class Publisher:
    """A background FFmpeg publisher (RTMP unless another ``command`` is given); its stderr goes to a file."""

    def __init__(
        self, url: str, log: Path, *, command: list[str] | None = None, **options: str | None
    ) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            command or publish_command(url, **options), stderr=self._log, stdin=subprocess.DEVNULL
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def play(
    url: str, seconds: float, timeout: float = 60, ca_file: str | None = None
) -> subprocess.CompletedProcess[str]:
    """FFmpeg playing ``url`` for ``seconds`` into the null muxer (decoding everything)."""
    tls = ["-ca_file", ca_file] if ca_file and url.startswith("rtmps:") else []
    return subprocess.run(
        [FFMPEG, "-hide_banner", *tls, "-i", url, "-t", str(seconds), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def decoded_frames(ffmpeg_stderr: str) -> int:
    """The last ``frame=`` count FFmpeg reported."""
    counts = re.findall(r"frame=\s*(\d+)", ffmpeg_stderr)
    return int(counts[-1]) if counts else 0


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --- a raw publishing session (the fuzzer's seed) ----------------------------------------------------------

AVC_RECORD = bytes.fromhex("0142c01effe1000a6742c01ed9005a1e880001000468ce3c80")


def publish_session(
    name: str = "fuzz",
    *,
    chunk_size: int = 128,
    start_ms: int = 0,
    frame_size: int = 6,
    tc_url: str = "rtmp://127.0.0.1/",
) -> tuple[bytes, bytes]:
    """(handshake bytes C0 C1 C2, chunk stream bytes) of a valid publish with a few media messages.

    The chunk part changes the chunk size, sends timestamps that cross the 32-bit wrap when ``start_ms``
    is near 2**32 (extended timestamps), and a window acknowledgement size of 4096 bytes.
    """
    idr = bytes.fromhex("658884") + b"\x21" * (frame_size - 3)
    idr_avcc = len(idr).to_bytes(4, "big") + idr
    handshake = b"\x03" + bytes(HANDSHAKE_SIZE) + bytes(HANDSHAKE_SIZE)
    writer = ChunkWriter(128)
    parts = [
        writer.encode(msg.window_ack_size(4096)),
        writer.encode(msg.command("connect", 1, {"app": "", "tcUrl": tc_url})),
    ]
    writer.chunk_size = chunk_size
    parts.append(ChunkWriter(128).encode(msg.set_chunk_size(chunk_size)))
    parts += [
        writer.encode(msg.command("createStream", 2, None)),
        writer.encode(msg.command("publish", 3, None, name, "live", stream_id=1)),
        writer.encode(
            Message(
                msg.DATA_AMF0,
                1,
                0,
                amf0.encode_all("@setDataFrame", "onMetaData")
                + amf0.encode_ecma_array({"videocodecid": 7.0, "width": 64.0}),
                5,
            )
        ),
        writer.encode(Message(msg.VIDEO, 1, start_ms, bytes([0x17, 0, 0, 0, 0]) + AVC_RECORD, 7)),
    ]
    for index in range(8):
        timestamp = (start_ms + index * 40) & 0xFFFFFFFF
        parts.append(writer.encode(Message(msg.VIDEO, 1, timestamp, bytes([0x17, 1, 0, 0, 0]) + idr_avcc, 7)))
    return handshake, b"".join(parts)


def send_session(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data``, half-close, and read what the server answers until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return b""  # the server already refused and closed
        received = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return bytes(received)
