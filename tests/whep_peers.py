"""Real WHEP peers for the HTTP tests: aiortc offers and the package's WHEP client, each in its own process.

They run as subprocesses because importing trio_asyncio (which other test modules do) changes
``asyncio.run`` process-wide, and because a viewer that dies must really die (SIGKILL, no DELETE).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

_OFFER_SCRIPT = """
import asyncio, sys
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender

async def main(video_mime, audio_mime):
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = pc.addTransceiver("video", direction="recvonly")
    video.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType in (video_mime, "video/rtx")]
    )
    if audio_mime != "none":
        audio = pc.addTransceiver("audio", direction="recvonly")
        audio.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == audio_mime]
        )
    await pc.setLocalDescription(await pc.createOffer())
    sys.stdout.write(pc.localDescription.sdp)
    await pc.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@functools.cache
def aiortc_offer(video: str = "video/H264", audio: str = "audio/opus") -> str:
    """A recvonly offer from a real aiortc peer (``audio="none"`` for video only). It never connects."""
    result = subprocess.run(
        [sys.executable, "-c", _OFFER_SCRIPT, video, audio],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


@dataclass
class ClientProcess:
    """``python -m dragonfork.webrtc.client`` running in the background."""

    proc: subprocess.Popen[str]

    def report(self, timeout: float = 60) -> dict[str, Any]:
        """The client's report; its exit code is 1 when ``error`` is set, which the caller asserts on."""
        stdout, stderr = self.proc.communicate(timeout=timeout)
        assert stdout, f"client exited {self.proc.returncode} without a report: {stderr}"
        return dict(json.loads(stdout))

    def exits_within(self, seconds: float) -> bool:
        """Whether the client exits within ``seconds``."""
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
        return True


def start_client(
    url: str, *, duration: float, token: str | None = None, decode: bool = True
) -> ClientProcess:
    command = [sys.executable, "-m", "dragonfork.webrtc.client", url, "--json", "--duration", str(duration)]
    if token:
        command += ["--token", token]
    if not decode:
        command.append("--no-decode")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return ClientProcess(proc)


def play(url: str, *, duration: float, token: str | None = None) -> dict[str, Any]:
    return start_client(url, duration=duration, token=token).report()
