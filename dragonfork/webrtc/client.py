"""A WHEP client (plain asyncio + aiortc + httpx) for tests, load tests and benchmarks.

It does what a browser player does: POST a recvonly offer (H.264 preferred), apply the answer, receive for
``duration`` seconds, DELETE the session, and reports what it saw as a ``ClientReport``.

Run it in its own OS process: the server side imports trio_asyncio, which changes ``asyncio.run``
process-wide.

    python -m dragonfork.webrtc.client URL [--token T] [--duration S] [--no-decode] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

import aiortc.rtcrtpreceiver
import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.codecs.base import Decoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack


@dataclasses.dataclass
class ClientReport:
    """What one WHEP client saw. Times are seconds from sending the POST; ``None`` when it did not happen."""

    status: int | None = None  # HTTP status of the POST
    post_to_201_seconds: float | None = None
    connected_seconds: float | None = None  # connection state "connected"
    time_to_first_frame_seconds: float | None = None  # first decoded video frame (decode mode only)
    video_frames_decoded: int = 0
    audio_frames: int = 0  # decoded audio frames (decode mode only)
    video_packets: int = 0  # RTP packets received (receiver statistics)
    audio_packets: int = 0
    packets_lost: int = 0
    server_closed: bool = False  # the session ended from the server side before ``duration`` was over
    server_closed_after_seconds: float | None = None
    error: str | None = None  # "HTTP <status>: <body>" for a non-201 POST, or what went wrong

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


class _DiscardingDecoder(Decoder):
    def decode(self, encoded_frame: object) -> list:
        return []


_decode_mode: bool | None = None


def _set_decode_mode(decode: bool) -> None:
    """Choose, once per process, whether aiortc decodes what it receives.

    aiortc always decodes received media in a thread per receiver and has no switch for it, so no-decode mode
    (for load tests: many clients, little CPU) replaces the decoder factory its receiver module uses. That is
    process-wide, hence one mode per process; the packets are still received, reassembled and counted.
    """
    global _decode_mode
    if _decode_mode is not None and _decode_mode != decode:
        raise RuntimeError("decode and no-decode clients cannot run in the same process")
    if not decode and _decode_mode is None:
        aiortc.rtcrtpreceiver.get_decoder = lambda codec: _DiscardingDecoder()
    _decode_mode = decode


def _h264_first(kind: str) -> list:
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    return sorted(codecs, key=lambda codec: codec.mimeType.lower() != "video/h264")


async def run_whep_client(
    url: str,
    *,
    token: str | None = None,
    duration: float,
    decode: bool = True,
    timeout: float = 10.0,
    on_video_frame: Callable[[Any], None] | None = None,
) -> ClientReport:
    """Play a WHEP stream for ``duration`` seconds after connecting; never raises for server-side failures.

    ``on_video_frame`` sees every decoded video frame (an ``av.VideoFrame``) as it arrives (the ingest
    benchmark reads the timecode its publisher drew into it).
    """
    _set_decode_mode(decode)
    report = ClientReport()
    auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    ended = asyncio.Event()  # the server ended the session
    leaving = False  # we are ending it: DELETE and close are ours, not the server's
    started = 0.0

    def since_post() -> float:
        return time.monotonic() - started

    def on_server_end() -> None:
        if not leaving and not ended.is_set():
            report.server_closed = True
            report.server_closed_after_seconds = since_post()
            ended.set()

    async def consume(track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "audio":
                    report.audio_frames += 1
                    continue
                report.video_frames_decoded += 1
                if on_video_frame is not None:
                    on_video_frame(frame)
                if report.time_to_first_frame_seconds is None:
                    report.time_to_first_frame_seconds = since_post()
        except MediaStreamError:
            on_server_end()

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected" and report.connected_seconds is None:
            report.connected_seconds = since_post()
        if pc.connectionState in ("closed", "failed"):
            on_server_end()

    consumers: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: consumers.append(asyncio.create_task(consume(track))))
    pc.addTransceiver("video", direction="recvonly").setCodecPreferences(_h264_first("video"))
    pc.addTransceiver("audio", direction="recvonly")
    async with httpx.AsyncClient(timeout=timeout) as http:
        location = None
        try:
            await pc.setLocalDescription(await pc.createOffer())
            started = time.monotonic()
            response = await http.post(
                url, content=pc.localDescription.sdp, headers={"Content-Type": "application/sdp", **auth}
            )
            report.status = response.status_code
            if response.status_code != 201:
                report.error = f"HTTP {response.status_code}: {response.text}"
                return report
            report.post_to_201_seconds = since_post()
            location = urljoin(url, response.headers["Location"])
            await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
            await _wait_connected(pc, ended, timeout)
            if pc.connectionState != "connected":
                report.error = f"not connected within {timeout} s (state {pc.connectionState})"
                return report
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), duration)
            await _count_packets(pc, report)
        except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            report.error = f"{type(exc).__name__}: {exc}"
        finally:
            leaving = True
            if location is not None:
                with contextlib.suppress(httpx.HTTPError):
                    await http.delete(location, headers=auth)
            await pc.close()
            for consumer in consumers:
                consumer.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
    return report


async def _wait_connected(pc: RTCPeerConnection, ended: asyncio.Event, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pc.connectionState != "connected" and not ended.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def _count_packets(pc: RTCPeerConnection, report: ClientReport) -> None:
    for receiver in pc.getReceivers():
        for stats in (await receiver.getStats()).values():
            if stats.type != "inbound-rtp":
                continue
            if stats.kind == "video":
                report.video_packets += stats.packetsReceived
            else:
                report.audio_packets += stats.packetsReceived
            report.packets_lost += max(stats.packetsLost, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dragonfork.webrtc.client", description="Play a WHEP stream and report"
    )
    parser.add_argument("url", help="WHEP endpoint URL")
    parser.add_argument("--token", help="bearer token for the Authorization header")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds to receive after connecting")
    parser.add_argument("--no-decode", action="store_true", help="count RTP packets without decoding")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds for HTTP requests and connecting"
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = parser.parse_args(argv)
    report = asyncio.run(
        run_whep_client(
            args.url,
            token=args.token,
            duration=args.duration,
            decode=not args.no_decode,
            timeout=args.timeout,
        )
    )
    if args.json:
        print(report.to_json())
    else:
        for field in dataclasses.fields(report):
            print(f"{field.name:30} {getattr(report, field.name)}")
    return 0 if report.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
