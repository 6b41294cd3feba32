"""Ingest benchmark: publisher → viewer latency (RTMP/SRT/WHIP → FFmpeg copy → WHEP), CPU per publisher.

    python -m dragonfork.bench.ingest [--seconds 15] [--json]

It starts its own server (RTMP, SRT and WHIP on, loopback ports) and runs two phases per protocol:

1. **CPU per publisher.** One RTMP publisher at 4 Mbit/s (640x360, 30 fps, H.264 baseline, 1 s GOP) and
   nothing else: the server process's CPU (user + system, % of one core) is what one RTMP publisher costs
   (handshake done, chunk reassembly, FLV → hub frames, the keyframe cache).
2. **Latency.** The process ``{"input": [{rtmp,name=bench.stream}], "webrtc": {"enabled": true}}`` (FFmpeg
   copies the browser-safe H.264 into its RTP legs) and one aiortc WHEP viewer that decodes every frame.

How the latency is measured: the publisher draws its wall clock (milliseconds, 32 bits) into each frame
before encoding it, as 32 black/white blocks plus their complement (a check row); the viewer reads the
blocks of every decoded frame and subtracts them from its own wall clock (same machine, same clock). So a
figure is camera-to-screen minus the camera: encode, RTMP, our server, FFmpeg's copy, RTP, our WHEP
sender, the network stack, aiortc's jitter buffer and decode. Frames whose check row disagrees (a damaged
block) are not counted.

The RTMP publisher is this module's own RTMP client (our chunk writer, AMF0 and FLV code, PyAV's libx264):
no FFmpeg in front, so nothing between the timecode and the socket but the encoder. The SRT publisher is
FFmpeg (libsrt is the peer that matters): this module pipes the timecoded frames raw into its libx264 in
real time, so the figure also covers the pipe and FFmpeg's MPEG-TS muxer. The WHIP publisher is an aiortc
peer sending the same PyAV-encoded frames pre-encoded (aiortc packetizes them, no second encode); its
process reads ``{whip,name=…}``, the server's live Matroska.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import psutil
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from av.video.codeccontext import VideoCodecContext

from dragonfork.bench.servers import free_port
from dragonfork.servers.rtmp import amf0, flv
from dragonfork.servers.rtmp import messages as msg
from dragonfork.servers.rtmp.chunks import ChunkReader, ChunkWriter, Message
from dragonfork.servers.rtmp.handshake import HANDSHAKE_SIZE
from dragonfork.stream import avc
from dragonfork.webrtc.sdp import preferred_codecs

WIDTH, HEIGHT, FPS = 640, 360, 30
BITRATE = 4_000_000
BLOCK = WIDTH // 32  # 20 px: one timecode bit
STREAM = "bench.stream"
OUT_CHUNK_SIZE = 4096  # what OBS (librtmp) and FFmpeg publish with


# --- the timecode ------------------------------------------------------------------------------------------


WHITE, BLACK = bytes([235]) * BLOCK, bytes([16]) * BLOCK
GREY_CHROMA = bytes([128]) * (WIDTH // 2 * HEIGHT // 2)


def timecoded_luma(clock_ms: int) -> bytes:
    """A 4 Mbit/s-worthy picture (noise) with ``clock_ms`` in its top rows: bits, then the complement."""
    luma = bytearray(os.urandom(WIDTH * HEIGHT))
    for bit in range(32):
        one = (clock_ms >> (31 - bit)) & 1
        for row in range(2 * BLOCK):
            start = row * WIDTH + bit * BLOCK
            luma[start : start + BLOCK] = WHITE if one == (row < BLOCK) else BLACK
    return bytes(luma)


def draw_frame(clock_ms: int) -> av.VideoFrame:
    frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
    planes = (timecoded_luma(clock_ms), GREY_CHROMA, GREY_CHROMA)
    for plane, data in zip(frame.planes, planes, strict=True):
        plane.update(_with_stride(data, plane.line_size, plane.width))
    return frame


def _with_stride(data: bytes, line_size: int, width: int) -> bytes:
    if line_size == width:
        return data
    padding = bytes(line_size - width)
    return b"".join(data[row : row + width] + padding for row in range(0, len(data), width))


def read_timecode(frame: av.VideoFrame) -> int | None:
    """The clock a decoded frame carries, or None when a block and its check block disagree."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    luma, stride = bytes(plane), plane.line_size
    middle = BLOCK // 2
    value = 0
    for bit in range(32):
        column = bit * BLOCK + middle
        one = luma[middle * stride + column] > 128
        if one == (luma[(BLOCK + middle) * stride + column] > 128):
            return None
        value = (value << 1) | int(one)
    return value


def clock_ms() -> int:
    return int(time.time() * 1000) & 0xFFFFFFFF


# --- the publisher: our own RTMP client ---------------------------------------------------------------------


def timecode_encoder() -> VideoCodecContext:
    """libx264 for the timecode frames: 4 Mbit/s, baseline, no B-frames, 1 s GOP, SPS/PPS on every IDR."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    encoder.time_base = Fraction(1, 1000)
    encoder.framerate = Fraction(FPS, 1)
    encoder.bit_rate = BITRATE
    encoder.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "profile": "baseline",
        "x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0:repeat-headers=1:"
        f"vbv-maxrate={BITRATE // 1000}:vbv-bufsize={BITRATE // 1000}",
    }
    return encoder


class RtmpPublisher:
    """Publishes PyAV-encoded H.264 to ``rtmp://127.0.0.1:port/name`` in real time."""

    def __init__(self, port: int, name: str) -> None:
        self.port = port
        self.name = name
        self.frames = 0
        self._writer = ChunkWriter()
        self._reader = ChunkReader()

    async def run(self, seconds: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            await self._handshake(reader, writer)
            await self._publish(reader, writer)
            await self._stream(writer, seconds)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x03" + os.urandom(HANDSHAKE_SIZE))
        reply = await reader.readexactly(1 + 2 * HANDSHAKE_SIZE)
        writer.write(reply[1 : 1 + HANDSHAKE_SIZE])  # C2 echoes S1

    async def _send(self, writer: asyncio.StreamWriter, *messages: Message) -> None:
        data = b"".join(self._writer.encode(message) for message in messages)
        writer.write(data)
        await writer.drain()

    async def _until(self, reader: asyncio.StreamReader, wanted: bytes) -> None:
        """Read the server's messages until one contains ``wanted`` (a command name or status code)."""
        while True:
            data = await reader.read(65_536)
            if not data:
                raise ConnectionError(f"the server closed the connection before {wanted!r}")
            batch = self._reader.feed(data)
            while batch:
                for message in batch:
                    if message.type_id == msg.SET_CHUNK_SIZE:
                        self._reader.set_chunk_size(int.from_bytes(message.payload[:4], "big"))
                    if wanted in message.payload:
                        return
                    if b"NetStream.Publish.BadName" in message.payload or b"_error" in message.payload:
                        raise ConnectionError(f"publish refused: {message.payload!r}")
                batch = self._reader.feed(b"")

    async def _publish(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tc_url = f"rtmp://127.0.0.1:{self.port}/"
        await self._send(
            writer, msg.command("connect", 1, {"app": "", "tcUrl": tc_url, "type": "nonprivate"})
        )
        await self._until(reader, b"NetConnection.Connect.Success")
        await self._send(writer, msg.set_chunk_size(OUT_CHUNK_SIZE))
        self._writer.chunk_size = OUT_CHUNK_SIZE
        await self._send(writer, msg.command("createStream", 2, None))
        await self._until(reader, b"_result")
        await self._send(writer, msg.command("publish", 3, None, self.name, "live", stream_id=1))
        await self._until(reader, b"NetStream.Publish.Start")
        metadata = {"width": WIDTH, "height": HEIGHT, "framerate": FPS, "videocodecid": flv.CODEC_AVC}
        payload = amf0.encode_all("@setDataFrame", "onMetaData") + amf0.encode_ecma_array(metadata)
        await self._send(writer, Message(msg.DATA_AMF0, 1, 0, payload, msg.DATA_CHUNK_STREAM))

    async def _stream(self, writer: asyncio.StreamWriter, seconds: float) -> None:
        encoder = timecode_encoder()
        sent_config: bytes | None = None
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            frame = draw_frame(clock_ms())
            timestamp = int(elapsed * 1000)
            frame.pts = timestamp
            for packet in encoder.encode(frame):
                data = bytes(packet)
                if packet.is_keyframe:
                    config = avc.avc_config_from_access_unit(data)
                    if config is not None and config != sent_config:
                        sent_config = config
                        tag = flv.video_sequence_header(config)
                        await self._send(
                            writer, Message(msg.VIDEO, 1, timestamp, tag, msg.VIDEO_CHUNK_STREAM)
                        )
                if sent_config is None:
                    continue
                tag = flv.video_tag(packet.is_keyframe, 0, avc.annex_b_to_avcc(data))
                await self._send(writer, Message(msg.VIDEO, 1, timestamp, tag, msg.VIDEO_CHUNK_STREAM))
                self.frames += 1
            await asyncio.sleep(max(0.0, started + (self.frames + 1) / FPS - time.monotonic()))


# --- the SRT publisher: FFmpeg (libsrt) fed with raw timecoded frames -----------------------------------


class SrtPublisher:
    """FFmpeg encoding this module's timecoded frames and publishing them to ``srt://…,mode:publish``."""

    def __init__(self, port: int, name: str) -> None:
        self.url = f"srt://127.0.0.1:{port}?streamid={name},mode:publish"
        self.frames = 0

    async def run(self, seconds: float) -> None:
        import imageio_ffmpeg

        kbit = BITRATE // 1000
        encoder = await asyncio.create_subprocess_exec(
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error",
            "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "-",
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-profile:v", "baseline",
            "-b:v", f"{kbit}k", "-maxrate", f"{kbit}k", "-bufsize", f"{kbit}k", "-g", str(FPS),
            "-x264-params", "scenecut=0:repeat-headers=1", "-flush_packets", "1", "-f", "mpegts", self.url,
            stdin=subprocess.PIPE,
        )  # fmt: skip
        assert encoder.stdin is not None
        started = time.monotonic()
        try:
            while time.monotonic() - started < seconds:
                encoder.stdin.write(timecoded_luma(clock_ms()) + GREY_CHROMA + GREY_CHROMA)
                await encoder.stdin.drain()
                self.frames += 1
                await asyncio.sleep(max(0.0, started + (self.frames + 1) / FPS - time.monotonic()))
        finally:
            encoder.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                encoder.terminate()
            await encoder.wait()


class TimecodeTrack(MediaStreamTrack):
    """A video track whose ``recv`` encodes the next timecode frame in real time and returns the packet."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0
        self._encoder = timecode_encoder()
        self._started = time.monotonic()

    async def recv(self) -> av.Packet:
        while True:
            await asyncio.sleep(max(0.0, self._started + self.frames / FPS - time.monotonic()))
            frame = draw_frame(clock_ms())
            frame.pts = int((time.monotonic() - self._started) * 1000)
            self.frames += 1
            packets = self._encoder.encode(frame)
            if packets:
                packet = packets[0]
                packet.pts = frame.pts * 90  # aiortc takes pts in time_base units: 90 kHz
                packet.time_base = Fraction(1, 90_000)
                return packet


class WhipPublisher:
    """Publishes the timecode frames to ``url`` over WHIP (an aiortc peer) for ``seconds``, then DELETEs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.track = TimecodeTrack()

    async def run(self, seconds: float) -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            transceiver = pc.addTransceiver(self.track, direction="sendonly")
            transceiver.setCodecPreferences(preferred_codecs("video"))
            await pc.setLocalDescription(await pc.createOffer())
            async with httpx.AsyncClient(timeout=10) as http:
                response = await http.post(
                    self.url, content=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
                )
                if response.status_code != 201:
                    raise ConnectionError(f"WHIP offer refused: {response.status_code} {response.text}")
                await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
                await asyncio.sleep(seconds)
                await http.delete(str(httpx.URL(self.url).join(response.headers["Location"])))
        finally:
            await pc.close()


# --- the server and the measurements ------------------------------------------------------------------------


@contextlib.contextmanager
def running_server(workdir: Path, cpus: str | None) -> Iterator[tuple[str, dict[str, int], psutil.Process]]:
    """``dragonfork serve`` with RTMP, SRT and WHIP on loopback: (API URL, port per protocol, the process)."""
    http_port, rtmp_port, srt_port = free_port(), free_port(), free_udp_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CORE_")}
    env.update(
        CORE_ADDRESS=f"127.0.0.1:{http_port}",
        CORE_DB_DIR=str(workdir),
        CORE_DEMO="false",
        CORE_LOG_LEVEL="warn",
        CORE_RTMP_ENABLE="true",
        CORE_RTMP_ADDRESS=f"127.0.0.1:{rtmp_port}",
        CORE_SRT_ENABLE="true",
        CORE_SRT_ADDRESS=f"127.0.0.1:{srt_port}",
    )
    argv = [sys.executable, "-m", "dragonfork", "serve"]
    if cpus:
        argv = ["taskset", "-c", cpus, *argv]
    with (workdir / "server.log").open("w") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {(workdir / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
        server = psutil.Process(process.pid)
        if cpus:
            server = psutil.Process(server.children()[0].pid) if server.name() == "taskset" else server
        yield url, {"rtmp": rtmp_port, "srt": srt_port, "whip": http_port}, server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@contextlib.asynccontextmanager
async def publishing(protocol: str, port: int, seconds: float) -> AsyncIterator[None]:
    publishers: dict[str, Callable[[], RtmpPublisher | SrtPublisher | WhipPublisher]] = {
        "rtmp": lambda: RtmpPublisher(port, STREAM),
        "srt": lambda: SrtPublisher(port, STREAM),
        "whip": lambda: WhipPublisher(f"http://127.0.0.1:{port}/api/v3/whip/{STREAM}"),
    }
    publisher = publishers[protocol]()
    task = asyncio.create_task(publisher.run(seconds))
    try:
        yield
        await task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def bytes_received(http: httpx.AsyncClient, url: str, protocol: str) -> int:
    """What the server counted from the publisher of ``STREAM`` so far (0 before it is live)."""
    publishers = (await http.get(f"{url}/api/v3/ingest")).json()[protocol].get("publishers", [])
    return sum(publisher["bytes_received"] for publisher in publishers if publisher["name"] == STREAM)


async def cpu_per_publisher(
    url: str, protocol: str, port: int, server: psutil.Process, seconds: float
) -> dict[str, Any]:
    """Phase 1: one publisher, nothing else; the server's CPU over ``seconds`` after a 3 s warm-up."""
    async with publishing(protocol, port, seconds + 4), httpx.AsyncClient(timeout=10) as http:
        await asyncio.sleep(3)
        cpu_before, bytes_before = cpu_seconds(server), await bytes_received(http, url, protocol)
        at = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - at
        cpu = cpu_seconds(server) - cpu_before
        received = await bytes_received(http, url, protocol) - bytes_before
    return {
        "server_cpu_percent_per_publisher": round(100 * cpu / elapsed, 2),
        "publisher_mbit_per_second": round(8 * received / elapsed / 1e6, 2),
        "seconds": round(elapsed, 1),
    }


async def latency(
    url: str, protocol: str, port: int, server: psutil.Process, seconds: float
) -> dict[str, Any]:
    """Phase 2: the process copying the stream to WHEP, one decoding viewer reading the timecodes."""
    from dragonfork.webrtc.client import run_whep_client

    samples: list[int] = []
    unreadable = 0

    def on_video_frame(frame: av.VideoFrame) -> None:
        nonlocal unreadable
        now = clock_ms()
        sent = read_timecode(frame)
        if sent is None:
            unreadable += 1
            return
        samples.append((now - sent) & 0xFFFFFFFF)

    process_id = f"live-{protocol}"
    process = {"id": process_id, "input": [{"id": "in", "address": f"{{{protocol},name={STREAM}}}"}]}
    process["webrtc"] = {"enabled": True}  # type: ignore[assignment]
    async with publishing(protocol, port, seconds + 25), httpx.AsyncClient(timeout=10) as http:
        await asyncio.sleep(2)
        response = await http.post(f"{url}/api/v3/process", json=process)
        response.raise_for_status()
        for _ in range(200):
            state = (await http.get(f"{url}/api/v3/process/{process_id}/state")).json()
            if state.get("webrtc", {}).get("ready"):
                break
            await asyncio.sleep(0.1)
        ffmpeg = [child for child in server.children() if "live-" + protocol in " ".join(child.cmdline())]
        ffmpeg = ffmpeg or server.children()
        cpu_before = cpu_seconds(server), sum(cpu_seconds(child) for child in ffmpeg)
        at = time.monotonic()
        report = await run_whep_client(
            f"{url}/api/v3/whep/{process_id}", duration=seconds, on_video_frame=on_video_frame
        )
        elapsed = time.monotonic() - at
        cpu_after = cpu_seconds(server), sum(cpu_seconds(child) for child in ffmpeg)
        await http.delete(f"{url}/api/v3/process/{process_id}")
    if report.error or len(samples) < 10:
        return {"error": report.error or f"only {len(samples)} frames with a readable timecode"}
    steady = samples[FPS:]  # the first second includes the viewer's start (keyframe burst, jitter buffer)
    ordered = sorted(steady)
    return {
        "path": f"{protocol.upper()}{' → Matroska' if protocol == 'whip' else ''} → FFmpeg -c:v copy → RTP → "
        "WHEP (aiortc viewer, decoding)",
        "frames_measured": len(steady),
        "frames_unreadable": unreadable,
        "median_ms": statistics.median(steady),
        "p95_ms": ordered[int(0.95 * (len(ordered) - 1))],
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "server_cpu_percent": round(100 * (cpu_after[0] - cpu_before[0]) / elapsed, 1),
        "ffmpeg_cpu_percent": round(100 * (cpu_after[1] - cpu_before[1]) / elapsed, 1),
    }


async def run(seconds: float, cpus: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="dragonfork-bench-ingest-") as workdir,
        running_server(Path(workdir), cpus) as (url, ports, server),
    ):
        for protocol, port in ports.items():
            figures: dict[str, Any] = {
                "stream": f"{WIDTH}x{HEIGHT} {FPS} fps H.264 baseline, 4 Mbit/s, 1 s GOP"
            }
            figures["cpu"] = await cpu_per_publisher(url, protocol, port, server, seconds)
            await asyncio.sleep(1)  # the publisher of phase 1 is gone before phase 2 publishes the name
            figures["latency"] = await latency(url, protocol, port, server, seconds)
            await asyncio.sleep(1)
            results[protocol] = figures
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dragonfork.bench.ingest", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measurement window")
    parser.add_argument("--server-cpus", help="run the server on these CPUs (taskset list, e.g. 0)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.seconds, args.server_cpus))
    if args.json:
        print(json.dumps(results))
        return 0
    failed = False
    for protocol, measured in results.items():
        print(f"{protocol.upper()} stream: {measured['stream']}")
        cpu = measured["cpu"]
        print(
            f"CPU per {protocol.upper()} publisher: {cpu['server_cpu_percent_per_publisher']} % of one core "
            f"(the server received {cpu['publisher_mbit_per_second']} Mbit/s over {cpu['seconds']} s)"
        )
        figures = measured["latency"]
        if "error" in figures:
            print(f"latency: failed: {figures['error']}")
            failed = True
            continue
        print(
            f"latency {figures['path']}: median {figures['median_ms']} ms, p95 {figures['p95_ms']} ms "
            f"(min {figures['min_ms']}, max {figures['max_ms']}, {figures['frames_measured']} frames); "
            f"server {figures['server_cpu_percent']} % CPU, FFmpeg {figures['ffmpeg_cpu_percent']} %"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
