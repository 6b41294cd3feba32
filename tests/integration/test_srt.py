"""The SRT server against real libsrt peers (FFmpeg): publish, request, a process serving it over WHEP,
loss recovery across a lossy relay, encryption and tokens."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Server, lavfi_process, metric, running_server, wait_live, whep_url
from rtmp_helpers import FFMPEG, decoded_frames, wait_until
from srt_helpers import (
    LossyRelay,
    frame_hashes,
    free_udp_port,
    intra_only_ts,
    publish_file,
    publish_live,
    srt_url,
    stop,
)
from whep_peers import play as whep_play

ISSUE_PROCESS = {
    "id": "cam2",
    "input": [{"address": "{srt,name=cam2}", "options": []}],
    "output": [],
    "webrtc": {"enabled": True},
}


@pytest.fixture(scope="module")
def srt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_udp_port()
    with running_server(
        tmp_path_factory.mktemp("srt"),
        CORE_SRT_ENABLE="true",
        CORE_SRT_ADDRESS=f"127.0.0.1:{port}",
        CORE_SESSIONS_IP_IGNORELIST="",  # loopback callers are sessions too
    ) as server:
        server.srt_port = port  # type: ignore[attr-defined]
        yield server


def port_of(server: Server) -> int:
    return int(server.srt_port)  # type: ignore[attr-defined]


def channels(server: Server) -> dict[str, Any]:
    response = server.api("GET", "/api/v3/srt")
    response.raise_for_status()
    return dict(response.json())


def publisher_stats(server: Server, name: str) -> dict[str, Any] | None:
    listed = channels(server)
    socket_id = listed["publisher"].get(name)
    return None if socket_id is None else dict(listed["connections"][str(socket_id)]["stats"])


def wait_published(server: Server, name: str) -> None:
    wait_until(lambda: name in channels(server)["publisher"], 20, f"{name} to be published over SRT")


@pytest.fixture(scope="module")
def cam2(srt_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    """FFmpeg publishing srt://…?streamid=cam2,mode:publish for the whole module."""
    log = tmp_path_factory.mktemp("cam2") / "publisher.log"
    publisher = publish_live(srt_url(port_of(srt_server), "cam2,mode:publish"), log)
    try:
        wait_published(srt_server, "cam2")
        yield publisher
    finally:
        stop(publisher)


def test_a_process_reading_srt_name_serves_the_publisher_over_whep(
    srt_server: Server, cam2: subprocess.Popen[bytes]
) -> None:
    response = srt_server.api("POST", "/api/v3/process", json=ISSUE_PROCESS)
    assert response.is_success, response.text
    port = port_of(srt_server)
    wait_live(srt_server, "cam2")
    command = srt_server.state("cam2")["command"]
    assert (
        f"srt://127.0.0.1:{port}?mode=caller&transtype=live&latency=20000&streamid=cam2,mode:request"
        in command
    )
    report = whep_play(whep_url(srt_server, "cam2"), duration=3)
    assert report["error"] is None, report
    assert report["video_frames_decoded"] >= 40, report

    listed = channels(srt_server)
    publisher_id = listed["publisher"]["cam2"]
    (reader_id,) = listed["subscriber"]["cam2"]
    publisher_stats = listed["connections"][str(publisher_id)]["stats"]
    reader_stats = listed["connections"][str(reader_id)]["stats"]
    assert publisher_stats["recv_pkt"] > 100 and publisher_stats["recv_bytes"] > 100_000
    assert reader_stats["sent_pkt"] > 100 and reader_stats["rtt_ms"] >= 0
    assert metric(srt_server, "dragonfork_srt_connections", role="publisher") == 1
    assert metric(srt_server, "dragonfork_srt_connections", role="reader") == 1
    assert metric(srt_server, "dragonfork_ingest_publishers_active", protocol="srt") == 1
    assert (
        metric(srt_server, "dragonfork_srt_packets_total", stream="cam2", direction="received", kind="data")
        > 0
    )
    assert metric(srt_server, "dragonfork_srt_bytes_total", stream="cam2", direction="sent") > 0

    def srt_sessions() -> list[dict[str, Any]]:
        listed = srt_server.api("GET", "/api/v3/session/active", params={"collectors": "srt"}).json()
        return list(listed["srt"])

    wait_until(lambda: len(srt_sessions()) == 2, 5, "the publisher and the reader as sessions")
    assert {session["reference"] for session in srt_sessions()} == {"cam2"}
    assert metric(srt_server, "dragonfork_srt_rtt_seconds", stream="cam2", role="publisher") > 0
    ingest = srt_server.api("GET", "/api/v3/ingest").json()["srt"]
    assert ingest["enabled"] and ingest["port"] == port
    assert [publisher["name"] for publisher in ingest["publishers"]] == ["cam2"]
    srt_server.api("DELETE", "/api/v3/process/cam2").raise_for_status()


def test_any_number_of_ffmpeg_readers_request_the_same_stream(
    srt_server: Server, cam2: subprocess.Popen[bytes]
) -> None:
    url = srt_url(port_of(srt_server), "cam2,mode:request")
    readers = [
        subprocess.Popen(
            [FFMPEG, "-hide_banner", "-i", url, "-t", "2",
             "-f", "null", "-"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]  # fmt: skip
    for reader in readers:
        _, stderr = reader.communicate(timeout=30)
        assert reader.returncode == 0, stderr
        assert "frame=" in stderr


def test_the_access_control_stream_id_form_publishes_and_requests(srt_server: Server, tmp_path: Path) -> None:
    port = port_of(srt_server)
    publisher = publish_live(srt_url(port, "#!::r=cam3,m=publish"), tmp_path / "publisher.log")
    try:
        wait_published(srt_server, "cam3")
        hashes = frame_hashes(srt_url(port, "#!::r=cam3,m=request"), options=("-t", "2"))
        assert len(hashes) >= 25
    finally:
        stop(publisher)
    wait_until(lambda: "cam3" not in channels(srt_server)["publisher"], 10, "cam3 to end")


def test_a_second_publisher_and_a_request_for_nothing_are_refused(
    srt_server: Server, cam2: subprocess.Popen[bytes]
) -> None:
    port = port_of(srt_server)
    taken = subprocess.run(
        [FFMPEG, "-hide_banner", "-f", "lavfi", "-i", "testsrc2=size=64x64",
         "-t", "1", "-f", "mpegts", srt_url(port, "cam2,mode:publish")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert taken.returncode != 0
    missing = subprocess.run(
        [FFMPEG, "-hide_banner", "-i", srt_url(port, "nobody,mode:request"),
         "-f", "null", "-"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert missing.returncode != 0
    bad_mode = subprocess.run(
        [FFMPEG, "-hide_banner", "-i", srt_url(port, "cam2,mode:bidirectional"), "-f", "null", "-"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad_mode.returncode != 0
    assert metric(srt_server, "dragonfork_ingest_refused_total", protocol="srt", reason="stream_id") >= 1
    assert "mode must be publish or request" in srt_server.log()
    assert metric(srt_server, "dragonfork_ingest_refused_total", protocol="srt", reason="name_taken") >= 1
    assert metric(srt_server, "dragonfork_ingest_refused_total", protocol="srt", reason="not_found") >= 1
    assert "cam2" in channels(srt_server)["publisher"]


READ_FRAMES = 120
"""The reader stops before the publisher does: a caller that closes drops what it had not resent yet."""


def test_over_five_percent_loss_the_reader_decodes_every_frame_the_publisher_sent(
    srt_server: Server, tmp_path: Path
) -> None:
    source = intra_only_ts(tmp_path / "source.ts")
    sent = frame_hashes(str(source))
    assert len(sent) == 200
    with LossyRelay(port_of(srt_server), loss=0.05) as relay:
        publisher = publish_file(
            source, srt_url(relay.port, "lossy,mode:publish", latency="400000"), tmp_path / "publisher.log"
        )
        try:
            wait_published(srt_server, "lossy")
            request = srt_url(port_of(srt_server), "lossy,mode:request")
            reader = subprocess.Popen(
                [FFMPEG, "-hide_banner", "-loglevel", "error", "-i", request,
                 "-map", "0:v", "-frames:v", str(READ_FRAMES), "-f", "framemd5", "-"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            wait_until(lambda: channels(srt_server)["subscriber"].get("lossy"), 10, "the reader to connect")
            stats = publisher_stats(srt_server, "lossy")
            while reader.poll() is None and (latest := publisher_stats(srt_server, "lossy")):
                stats = latest  # the publisher's figures just before it leaves
                time.sleep(0.2)
            stdout, _ = reader.communicate(timeout=60)
        finally:
            stop(publisher)
    received = [line.rsplit(",", 1)[1].strip() for line in stdout.splitlines() if line and line[0] != "#"]
    assert relay.dropped > 20, "the relay dropped nothing: the test would prove nothing"
    assert stats["recv_tsbpd_delay_ms"] == 400, "the publisher's latency (400 ms) was not negotiated"
    assert received, "the reader decoded nothing"
    start = sent.index(received[0])
    damaged = [i for i, (a, b) in enumerate(zip(received, sent[start:], strict=False)) if a != b]
    assert received == sent[start : start + READ_FRAMES], (
        f"frames {damaged} of {len(received)} damaged or lost"
    )
    assert stats["recv_retran_pkts"] >= relay.dropped // 2, stats
    assert stats["recv_drop_pkt"] == 0, stats


PASSPHRASE = "correct horse battery"
TOKEN = "t0ken"


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_udp_port()
    with running_server(
        tmp_path_factory.mktemp("srt-secure"),
        CORE_SRT_ENABLE="true",
        CORE_SRT_ADDRESS=f"127.0.0.1:{port}",
        CORE_SRT_PASSPHRASE=PASSPHRASE,
        CORE_SRT_TOKEN=TOKEN,
    ) as server:
        server.srt_port = port  # type: ignore[attr-defined]
        yield server


def refused(server: Server, reason: str) -> float:
    return metric(server, "dragonfork_ingest_refused_total", protocol="srt", reason=reason)


def short_publish(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FFMPEG, "-hide_banner", "-f", "lavfi", "-i", "testsrc2=size=64x64", "-t", "1", "-f", "mpegts", url],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_encrypted_callers_with_the_passphrase_and_token_publish_and_request(
    secure_server: Server, tmp_path: Path
) -> None:
    port = port_of(secure_server)
    quoted = PASSPHRASE.replace(" ", "%20")
    # the publisher refreshes its key every 60 packets (libsrt: every 2^24), announcing it 15 before
    url = srt_url(
        port, f"sealed,mode:publish,token:{TOKEN}", passphrase=quoted, kmrefreshrate="60", kmpreannounce="15"
    )
    publisher = publish_live(url, tmp_path / "publisher.log")
    try:
        wait_published(secure_server, "sealed")
        hashes = frame_hashes(
            srt_url(port, f"#!::r=sealed,m=request,t={TOKEN}", passphrase=quoted), options=("-t", "4")
        )
        assert len(hashes) >= 75
        stats = publisher_stats(secure_server, "sealed")
        assert stats is not None and stats["recv_pkt"] > 180, stats  # three key refreshes at least
        assert stats["recv_undecrypt_pkt"] == 0 and stats["recv_drop_pkt"] == 0, stats
        assert secure_server.log().count('"encrypted": true') == 2  # the publisher and the reader
    finally:
        stop(publisher)


def test_a_wrong_passphrase_no_encryption_or_a_wrong_token_is_refused(secure_server: Server) -> None:
    port = port_of(secure_server)
    quoted = PASSPHRASE.replace(" ", "%20")
    wrong_secret = short_publish(
        srt_url(port, f"x,mode:publish,token:{TOKEN}", passphrase="not-the-passphrase")
    )
    assert wrong_secret.returncode != 0
    assert refused(secure_server, "bad_secret") == 1
    clear = short_publish(srt_url(port, f"x,mode:publish,token:{TOKEN}"))
    assert clear.returncode != 0
    assert refused(secure_server, "unencrypted") == 1
    wrong_token = short_publish(srt_url(port, "x,mode:publish,token:nope", passphrase=quoted))
    assert wrong_token.returncode != 0
    assert refused(secure_server, "token") == 1
    assert channels(secure_server)["publisher"] == {}
    assert "nope" not in secure_server.log() and PASSPHRASE not in secure_server.log()


def test_a_process_output_publishes_into_the_server_and_readers_request_it(srt_server: Server) -> None:
    config = lavfi_process(
        "srt-out",
        audio=False,
        output=[
            {
                "id": "srt",
                "address": "{srt,name=from-process}",
                "options": ["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-f", "mpegts"],
            }
        ],
    )
    srt_server.api("POST", "/api/v3/process", json=config).raise_for_status()
    try:
        assert "streamid=from-process,mode:publish" in " ".join(srt_server.state("srt-out")["command"])
        wait_published(srt_server, "from-process")
        url = srt_url(port_of(srt_server), "from-process,mode:request")
        readers = [
            subprocess.Popen([FFMPEG, "-hide_banner", "-i", url, "-t", "2", "-f", "null", "-"],
                             stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]  # fmt: skip
        for reader in readers:
            _, stderr = reader.communicate(timeout=30)
            assert reader.returncode == 0 and decoded_frames(stderr) >= 25, stderr[-2000:]
    finally:
        srt_server.api("DELETE", "/api/v3/process/srt-out")


def test_a_config_reload_starts_reconfigures_and_stops_the_srt_server(tmp_path: Path) -> None:
    port = free_udp_port()
    process = {**ISSUE_PROCESS, "id": "reload", "autostart": False}
    with running_server(tmp_path) as server:
        refused_before = server.api("POST", "/api/v3/process", json=process)
        assert refused_before.status_code == 400 and "srt.enable" in refused_before.text
        update = {"version": 3, "srt": {"enable": True, "address": f"127.0.0.1:{port}", "token": TOKEN}}
        assert server.api("PUT", "/api/v3/config", json=update).json() == "OK"
        assert server.api("GET", "/api/v3/config/reload").json() == "OK"
        assert server.api("GET", "/api/v3/ingest").json()["srt"]["enabled"]
        accepted = server.api("POST", "/api/v3/process", json=process)
        assert accepted.is_success, accepted.text

        assert short_publish(srt_url(port, "x,mode:publish")).returncode != 0  # no token
        publisher = publish_live(srt_url(port, f"x,mode:publish,token:{TOKEN}"), tmp_path / "publisher.log")
        try:
            wait_published(server, "x")
            update = {"version": 3, "srt": {"enable": False}}
            assert server.api("PUT", "/api/v3/config", json=update).json() == "OK"
            assert server.api("GET", "/api/v3/config/reload").json() == "OK"
            assert channels(server)["publisher"] == {}
            publisher.wait(15)  # the server's shutdown ends the publisher (it would send for 10 minutes)
        finally:
            stop(publisher)
        assert not server.api("GET", "/api/v3/ingest").json()["srt"]["enabled"]


def test_a_publisher_killed_without_a_shutdown_is_ended_after_its_silence_and_so_are_its_readers(
    srt_server: Server, tmp_path: Path
) -> None:
    port = port_of(srt_server)
    publisher = publish_live(srt_url(port, "killed,mode:publish"), tmp_path / "publisher.log")
    try:
        wait_published(srt_server, "killed")
        reader = subprocess.Popen(
            [FFMPEG, "-hide_banner", "-i", srt_url(port, "killed,mode:request"), "-f", "null", "-"],
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: channels(srt_server)["subscriber"].get("killed"), 10, "the reader")
        publisher.kill()  # SIGKILL: no SRT shutdown reaches the server
        killed_at = time.monotonic()
        wait_until(
            lambda: "killed" not in channels(srt_server)["publisher"], 15, "the silent publisher to end"
        )
        assert time.monotonic() - killed_at >= 4  # ended by the 5 s peer timeout, not by anything else
        assert reader.wait(15) is not None  # the server's shutdown ended the reader's input
    finally:
        stop(publisher)
