"""SRT peers for tests: FFmpeg (libsrt) publishers and readers, a lossy UDP relay, frame fingerprints."""

from __future__ import annotations

import random
import select
import socket
import subprocess
import threading
from pathlib import Path

from harness import TEST_AUDIO, TEST_VIDEO, free_port
from rtmp_helpers import FFMPEG

from dragonfork.servers.srt import handshake as hs
from dragonfork.servers.srt import packet as pk


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


def srt_url(port: int, stream_id: str, **query: str) -> str:
    extra = "".join(f"&{key}={value}" for key, value in query.items())
    return f"srt://127.0.0.1:{port}?streamid={stream_id}{extra}"


def intra_only_ts(path: Path, seconds: int = 8) -> Path:
    """An MPEG-TS file of the test pattern where every frame is a keyframe: a reader that joins at any
    point decodes every frame after it, so decoded frames can be compared one by one with the file's."""
    subprocess.run(
        [
            FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", TEST_VIDEO, "-t", str(seconds),
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "1", "-crf", "32", "-pix_fmt", "yuv420p",
            "-f", "mpegts", str(path),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip
    return path


def frame_hashes(source: str, *, timeout: float = 60, options: tuple[str, ...] = ()) -> list[str]:
    """The MD5 of every decoded video frame of ``source`` (a file or an srt:// URL), in order."""
    result = subprocess.run(
        [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "error",
            *options,
            "-i",
            source,
            "-map",
            "0:v",
            "-f",
            "framemd5",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return [line.rsplit(",", 1)[1].strip() for line in result.stdout.splitlines() if line and line[0] != "#"]


def publish_file(path: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    """FFmpeg sending a TS file over SRT in real time, as an encoder would."""
    return subprocess.Popen(
        [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "warning",
            "-re",
            "-i",
            str(path),
            "-c",
            "copy",
            "-f",
            "mpegts",
            url,
        ],
        stdin=subprocess.DEVNULL,
        stderr=log.open("w"),
    )


def publish_live(url: str, log: Path, seconds: int = 600, *, audio: bool = False) -> subprocess.Popen[bytes]:
    """FFmpeg encoding the test pattern (H.264 baseline, 1 s GOP; with ``audio`` the tone in AAC) and
    publishing it over SRT."""
    tone = ["-re", "-f", "lavfi", "-i", TEST_AUDIO, "-c:a", "aac", "-b:a", "64k"] if audio else []
    return subprocess.Popen(
        [
            FFMPEG, "-hide_banner", "-loglevel", "warning", "-re", "-f", "lavfi", "-i", TEST_VIDEO, *tone,
            "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
            "-profile:v", "baseline", "-g", "25", "-f", "mpegts", url,
        ],
        stdin=subprocess.DEVNULL,
        stderr=log.open("w"),
    )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LossyRelay:
    """A UDP relay on loopback between one SRT caller and the server that drops a share of the caller's
    datagrams (the caller → server leg only), at random with a fixed seed."""

    def __init__(self, server_port: int, loss: float, seed: int = 13) -> None:
        self.loss = loss
        self._random = random.Random(seed)
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind(("127.0.0.1", 0))
        self.port = int(self._front.getsockname()[1])
        self._back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._back.connect(("127.0.0.1", server_port))
        self._caller: tuple[str, int] | None = None
        self._stopped = threading.Event()
        self.forwarded = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LossyRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._front.close()
        self._back.close()

    def _run(self) -> None:
        while not self._stopped.is_set():
            readable, _, _ = select.select([self._front, self._back], [], [], 0.2)
            for sock in readable:
                data, address = sock.recvfrom(2048)
                if sock is self._front:
                    self._caller = address
                    if self._random.random() < self.loss:
                        self.dropped += 1
                        continue
                    self.forwarded += 1
                    self._back.send(data)
                elif self._caller is not None:
                    self._front.sendto(data, self._caller)


class RawCaller:
    """An SRT caller built from our own codec, for sending what libsrt never would: it performs the
    induction and conclusion like libsrt, then sends whatever a test asks on its connection."""

    def __init__(self, server_port: int, stream_id: str, *, socket_id: int = 0x1234_5678) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", server_port))
        self.socket_id = socket_id
        self.stream_id = stream_id
        self.server_socket_id = 0

    def close(self) -> None:
        self.sock.close()

    def handshake(
        self, kind: int, cookie: int = 0, extensions: list[tuple[int, bytes]] | None = None
    ) -> bytes:
        body = hs.Handshake(
            version=hs.HS_VERSION_UDT4 if kind == hs.INDUCTION else hs.HS_VERSION_SRT1,
            encryption=0,
            extension=hs.UDT_DGRAM if kind == hs.INDUCTION else hs.EXT_HSREQ | hs.EXT_CONFIG,
            isn=1000,
            mtu=1500,
            flow_window=8192,
            type=kind,
            socket_id=self.socket_id,
            cookie=cookie,
            extensions=extensions or [],
        ).encode()
        return pk.ControlPacket(pk.HANDSHAKE, 0, 0, 0, 0, body).encode()

    def induction(self) -> hs.Handshake:
        self.sock.send(self.handshake(hs.INDUCTION))
        return self.receive_handshake()

    def receive_handshake(self) -> hs.Handshake:
        while True:
            packet = pk.parse(self.sock.recv(2048))
            if isinstance(packet, pk.ControlPacket) and packet.type == pk.HANDSHAKE:
                return hs.parse(packet.body)

    def connect(self) -> hs.Handshake:
        """Induction and conclusion; the server's answer (a conclusion, or a rejection)."""
        cookie = self.induction().cookie
        options = hs.SrtOptions(hs.SRT_VERSION, hs.OUR_FLAGS, 120, 120).encode()
        stream_id = hs.swap_words(self.stream_id.encode())
        self.sock.send(
            self.handshake(
                hs.CONCLUSION, cookie, [(hs.EXT_TYPE_HSREQ, options), (hs.EXT_TYPE_SID, stream_id)]
            )
        )
        answer = self.receive_handshake()
        self.server_socket_id = answer.socket_id
        return answer

    def send_control(self, kind: int, body: bytes = b"", info: int = 0) -> None:
        self.sock.send(pk.ControlPacket(kind, 0, info, 0, self.server_socket_id, body).encode())

    def data_packets(self, count: int) -> int:
        """Receive until ``count`` data packets arrived; how many did."""
        received = 0
        while received < count:
            try:
                packet = pk.parse(self.sock.recv(2048))
            except TimeoutError:
                break
            if isinstance(packet, pk.DataPacket):
                received += 1
        return received
