"""The RTMP server against real FFmpeg publishers and players, and the issue's process read from it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server, free_port, metric, running_server, server_env, wait_live, whep_url
from rtmp_helpers import Publisher, decoded_frames, play, publish_session, send_session, wait_until
from whep_peers import play as whep_play

ISSUE_PROCESS = {
    "id": "live",
    "input": [{"address": "{rtmp,name=live.stream}", "options": []}],
    "output": [],
    "webrtc": {"enabled": True},
}


@pytest.fixture(scope="module")
def rtmp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    with running_server(
        tmp_path_factory.mktemp("rtmp"), CORE_RTMP_ENABLE="true", CORE_RTMP_ADDRESS=f":{port}"
    ) as server:
        server.rtmp_port = port  # type: ignore[attr-defined]
        yield server


def rtmp_url(server: Server, name: str, query: str = "") -> str:
    return f"rtmp://127.0.0.1:{server.rtmp_port}/{name}{query}"  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def live_stream(rtmp_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Publisher]:
    """FFmpeg publishing rtmp://127.0.0.1:PORT/live.stream for the whole module."""
    log = tmp_path_factory.mktemp("publisher") / "ffmpeg.log"
    with Publisher(rtmp_url(rtmp_server, "live.stream"), log) as publisher:
        wait_until(
            lambda: rtmp_server.api("GET", "/api/v3/rtmp").json() == [{"name": "/live.stream"}],
            20,
            "the publisher to be listed",
        )
        yield publisher


def test_issue_process_goes_live_and_plays_over_whep(rtmp_server: Server, live_stream: Publisher) -> None:
    response = rtmp_server.api("POST", "/api/v3/process", json=ISSUE_PROCESS)
    assert response.is_success, response.text
    wait_live(rtmp_server, "live")
    report = whep_play(whep_url(rtmp_server, "live"), duration=3)
    assert report["error"] is None, report
    assert report["video_frames_decoded"] >= 40, report
    assert report["audio_frames"] >= 100, report
    assert metric(rtmp_server, "dragonfork_ingest_publishers_active", protocol="rtmp") == 1
    assert metric(rtmp_server, "dragonfork_ingest_bytes_received_total", protocol="rtmp") > 10_000
    assert metric(rtmp_server, "dragonfork_ingest_packets_total", protocol="rtmp", kind="video") > 25
    assert metric(rtmp_server, "dragonfork_ingest_packets_total", protocol="rtmp", kind="audio") > 25


def test_ffmpeg_plays_the_published_stream(rtmp_server: Server, live_stream: Publisher) -> None:
    result = play(rtmp_url(rtmp_server, "live.stream"), 3)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Video: h264" in result.stderr and "Audio: aac" in result.stderr, result.stderr[-2000:]
    # The publisher's @setDataFrame onMetaData reaches the player (FFmpeg's muxer names itself in it).
    assert "encoder" in result.stderr.partition("Stream mapping")[0], result.stderr[-2000:]
    assert decoded_frames(result.stderr) >= 50, result.stderr[-2000:]
    ingest = rtmp_server.api("GET", "/api/v3/ingest").json()["rtmp"]
    assert ingest["enabled"] and ingest["port"] == rtmp_server.rtmp_port  # type: ignore[attr-defined]
    (publisher,) = ingest["publishers"]
    assert publisher["name"] == "live.stream" and publisher["bytes_received"] > 10_000


def test_second_publisher_of_a_live_name_is_refused(
    rtmp_server: Server, live_stream: Publisher, tmp_path: Path
) -> None:
    before = metric(rtmp_server, "dragonfork_ingest_refused_total", protocol="rtmp", reason="name_taken")
    with Publisher(rtmp_url(rtmp_server, "live.stream"), tmp_path / "second.log") as second:
        assert second.proc.wait(30) != 0
    assert "already being published" in second.log(), second.log()
    assert metric(rtmp_server, "dragonfork_ingest_refused_total", protocol="rtmp", reason="name_taken") == (
        before + 1
    )
    assert live_stream.proc.poll() is None
    assert rtmp_server.api("GET", "/api/v3/rtmp").json() == [{"name": "/live.stream"}]
    assert decoded_frames(play(rtmp_url(rtmp_server, "live.stream"), 1).stderr) >= 20


def test_play_of_an_unpublished_name_fails_clearly(rtmp_server: Server) -> None:
    result = play(rtmp_url(rtmp_server, "nobody.home"), 1)
    assert result.returncode != 0
    assert "is not being published" in result.stderr, result.stderr[-2000:]


def test_enhanced_rtmp_hevc_is_refused_clearly(rtmp_server: Server, tmp_path: Path) -> None:
    with Publisher(
        rtmp_url(rtmp_server, "hevc.stream"), tmp_path / "hevc.log", video_codec="libx265"
    ) as hevc:
        assert hevc.proc.wait(30) != 0
    assert metric(rtmp_server, "dragonfork_ingest_refused_total", protocol="rtmp", reason="codec") >= 1
    assert "FourCC 'hvc1'" in rtmp_server.log()
    assert rtmp_server.api("GET", "/api/v3/rtmp").json() == [{"name": "/live.stream"}]


def test_rtmp_placeholder_needs_the_rtmp_server(server: Server) -> None:
    config = {**ISSUE_PROCESS, "id": "no-rtmp", "input": [{"id": "in", "address": "{rtmp,name=live.stream}"}]}
    response = server.api("POST", "/api/v3/process", json=config)
    assert response.status_code == 400
    assert "rtmp.enable" in response.text


def test_token_is_required_and_never_logged(tmp_path: Path) -> None:
    port = free_port()
    token = "t0k3n-Sekr1t"
    with running_server(
        tmp_path, CORE_RTMP_ENABLE="true", CORE_RTMP_ADDRESS=f"127.0.0.1:{port}", CORE_RTMP_TOKEN=token
    ) as server:
        server.rtmp_port = port  # type: ignore[attr-defined]
        for index, query in enumerate(("", "?token=wrong")):
            with Publisher(
                rtmp_url(server, "cam.stream", query), tmp_path / f"refused{index}.log"
            ) as refused:
                assert refused.proc.wait(30) != 0
            assert "invalid token" in refused.log(), refused.log()
        # A token in the connect URL is checked at connect: refused with NetConnection.Connect.Rejected.
        handshake, chunks = publish_session("cam.stream", tc_url=f"rtmp://127.0.0.1:{port}/?token=nope")
        assert b"NetConnection.Connect.Rejected" in send_session(port, handshake + chunks)
        assert metric(server, "dragonfork_ingest_refused_total", protocol="rtmp", reason="token") == 3
        with Publisher(rtmp_url(server, "cam.stream", f"?token={token}"), tmp_path / "ok.log"):
            wait_until(
                lambda: server.api("GET", "/api/v3/rtmp").json() == [{"name": "/cam.stream"}], 20, "publisher"
            )
            assert play(rtmp_url(server, "cam.stream"), 1).returncode != 0
            result = play(rtmp_url(server, "cam.stream", f"?token={token}"), 1)
            assert decoded_frames(result.stderr) >= 20, result.stderr[-2000:]
        assert token not in server.log()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made here (``cryptography`` comes with aiortc)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def test_rtmps_publish_and_play(tmp_path: Path) -> None:
    cert_file, key_file = self_signed_certificate(tmp_path)
    port, tls_port = free_port(), free_port()
    with running_server(
        tmp_path,
        CORE_RTMP_ENABLE="true",
        CORE_RTMP_ENABLE_TLS="true",
        CORE_RTMP_ADDRESS=f"127.0.0.1:{port}",
        CORE_RTMP_ADDRESS_TLS=f"127.0.0.1:{tls_port}",
        CORE_TLS_CERT_FILE=str(cert_file),
        CORE_TLS_KEY_FILE=str(key_file),
    ) as server:
        assert server.api("GET", "/api/v3/ingest").json()["rtmp"]["tls_port"] == tls_port
        with Publisher(
            f"rtmps://127.0.0.1:{tls_port}/secure.stream", tmp_path / "rtmps.log", ca_file=str(cert_file)
        ) as publisher:
            wait_until(
                lambda: server.api("GET", "/api/v3/rtmp").json() == [{"name": "/secure.stream"}],
                20,
                "the RTMPS publisher",
            )
            for url in (
                f"rtmps://127.0.0.1:{tls_port}/secure.stream",
                f"rtmp://127.0.0.1:{port}/secure.stream",
            ):
                result = play(url, 1, ca_file=str(cert_file))
                assert decoded_frames(result.stderr) >= 20, result.stderr[-2000:]
            # An rtmps:// client on the plain port is refused at the handshake, clearly.
            assert play(f"rtmps://127.0.0.1:{port}/secure.stream", 1, ca_file=str(cert_file)).returncode != 0
            assert "not an RTMP client (an rtmps:// client on the plain port?)" in server.log()
            assert publisher.proc.poll() is None


def test_rtmp_port_in_use_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = server_env(tmp_path, CORE_RTMP_ENABLE="true", CORE_RTMP_ADDRESS=f"127.0.0.1:{port}")
        result = subprocess.run(
            [sys.executable, "-m", "dragonfork", "serve"], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    assert f"rtmp.address '127.0.0.1:{port}' cannot be used: Address already in use" in result.stderr
