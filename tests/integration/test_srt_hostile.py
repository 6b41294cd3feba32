"""Hostile input on the SRT port while a libsrt publisher and reader stream: bad control packets on a
real connection, a handshake flood from many source ports, random datagrams. Each is refused for its
sender only; the live publisher and reader keep going; no state is kept for peers without a cookie."""

from __future__ import annotations

import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from harness import Server, metric, running_server
from rtmp_helpers import FFMPEG, decoded_frames, wait_until
from srt_helpers import RawCaller, free_udp_port, publish_live, srt_url, stop

from dragonfork.servers.srt import handshake as hs
from dragonfork.servers.srt import packet as pk

READ_SECONDS = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_udp_port()
    with running_server(
        tmp_path_factory.mktemp("srt-hostile"), CORE_SRT_ENABLE="true", CORE_SRT_ADDRESS=f"127.0.0.1:{port}"
    ) as running:
        running.srt_port = port  # type: ignore[attr-defined]
        yield running


def refused(server: Server, reason: str) -> float:
    return metric(server, "dragonfork_ingest_refused_total", protocol="srt", reason=reason)


def connections(server: Server) -> dict[str, object]:
    return dict(server.api("GET", "/api/v3/srt").json()["connections"])


def test_hostile_datagrams_are_refused_per_peer_and_live_streams_keep_running(
    server: Server, tmp_path: Path
) -> None:
    port = int(server.srt_port)  # type: ignore[attr-defined]
    publisher = publish_live(srt_url(port, "live,mode:publish"), tmp_path / "publisher.log")
    reader = None
    try:
        wait_until(
            lambda: "live" in server.api("GET", "/api/v3/srt").json()["publisher"], 20, "the publisher"
        )
        reader = subprocess.Popen(
            [FFMPEG, "-hide_banner", "-i", srt_url(port, "live,mode:request"), "-t", str(READ_SECONDS),
             "-f", "null", "-"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_until(lambda: len(connections(server)) == 2, 10, "the reader to connect")
        rss_before = psutil.Process(server.proc.pid).memory_info().rss  # type: ignore[union-attr]

        # A real connection (our own caller) sending control packets with bad lengths: each is refused,
        # the connection stays and keeps receiving.
        raw = RawCaller(port, "live,mode:request")
        answer = raw.connect()
        assert answer.type == hs.CONCLUSION and answer.socket_id != 0
        for kind, body in (
            (pk.NAK, b"\x00\x01\x02"),
            (pk.NAK, b""),
            (pk.ACK, b"\x01"),
            (pk.DROPREQ, b"\x00"),
        ):
            raw.send_control(kind, body)
        raw.send_control(pk.NAK, (0x8000_0010).to_bytes(4, "big"))  # a range without its end
        wait_until(lambda: refused(server, "bad_control") >= 5, 5, "the bad control packets to be counted")
        assert raw.data_packets(50) == 50
        raw.send_control(pk.SHUTDOWN, bytes(4))
        raw.close()
        wait_until(lambda: len(connections(server)) == 2, 10, "the raw caller to be gone")

        # A handshake flood: 1,000 inductions, each from its own source port, each answered with a cookie
        # and nothing kept; a conclusion with a forged cookie is refused.
        answered = 0
        for index in range(1000):
            flood = RawCaller(port, "x", socket_id=index + 1)
            flood.sock.settimeout(2)
            if index % 50 == 0:
                reply = flood.induction()
                answered += reply.version == hs.HS_VERSION_SRT1 and reply.cookie != 0
            else:
                flood.sock.send(flood.handshake(hs.INDUCTION))
            flood.close()
        assert answered == 20
        forged = RawCaller(port, "live,mode:request")
        forged.sock.send(forged.handshake(hs.CONCLUSION, cookie=0xDEAD_BEEF))
        forged.close()
        wait_until(lambda: refused(server, "cookie") >= 1, 5, "the forged cookie to be refused")

        # Malformed handshakes and 10,000 random datagrams.
        rng = random.Random(6000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as noise:
            short_cif = pk.ControlPacket(pk.HANDSHAKE, 0, 0, 0, 0, bytes(20)).encode()
            past_end = pk.ControlPacket(pk.HANDSHAKE, 0, 0, 0, 0, bytes(48) + b"\x00\x05\x00\x40").encode()
            for datagram in (short_cif, past_end, b"", b"\x80"):
                noise.sendto(datagram, ("127.0.0.1", port))
            for _ in range(10_000):
                size = rng.choice((rng.randrange(0, 16), rng.randrange(16, 80), rng.randrange(80, 1500)))
                datagram = bytearray(rng.randbytes(size))
                if size >= 16 and rng.random() < 0.3:
                    datagram[0:4] = b"\x80\x00\x00\x00"  # a handshake of random content
                noise.sendto(bytes(datagram), ("127.0.0.1", port))
        wait_until(lambda: refused(server, "malformed") >= 500, 10, "the random datagrams to be counted")
        assert refused(server, "bad_handshake") >= 2

        _, stderr = reader.communicate(timeout=60)
        assert reader.returncode == 0, stderr
        assert decoded_frames(stderr) >= READ_SECONDS * 25 * 0.8, stderr[-2000:]
        assert publisher.poll() is None, "the publisher was ended"
        assert list(server.api("GET", "/api/v3/srt").json()["publisher"]) == ["live"]
        assert len(connections(server)) == 1  # the publisher; nothing left of any hostile peer
        rss_after = psutil.Process(server.proc.pid).memory_info().rss  # type: ignore[union-attr]
        assert rss_after - rss_before < 30 * 1024 * 1024, (rss_before, rss_after)
        assert metric(server, "dragonfork_failures_total", component="srt_connection", cause="exception") == 0
    finally:
        if reader is not None and reader.poll() is None:
            reader.kill()
        stop(publisher)
