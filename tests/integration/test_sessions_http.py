"""Sessions against the real server: real aiortc WHEP viewers, real FFmpeg, the API datarhei clients read."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import imageio_ffmpeg
import pytest
from harness import (
    Server,
    free_port,
    lavfi_process,
    metric,
    restreamer_hls_process,
    running_server,
    wait_live,
    whep_url,
)
from rtmp_helpers import Publisher
from whep_peers import aiortc_offer, start_client

SDP = {"Content-Type": "application/sdp"}
# Test clients are on loopback, which datarhei (and so dragonfork) ignores by default.
COLLECT_LOOPBACK = {
    "CORE_SESSIONS_IP_IGNORELIST": "",
    "CORE_WEBRTC_HANDSHAKE_TIMEOUT_SECONDS": "3",
    "CORE_WEBRTC_DISCONNECT_GRACE_SECONDS": "2",
}


def active(server: Server, collector: str) -> list[dict[str, Any]]:
    response = server.api("GET", "/api/v3/session/active", params={"collectors": collector})
    assert response.status_code == 200, response.text
    return list(response.json()[collector])


def summary(server: Server, collector: str) -> dict[str, Any]:
    response = server.api("GET", "/api/v3/session", params={"collectors": collector})
    assert response.status_code == 200, response.text
    return dict(response.json()[collector])


def widget(server: Server, process_id: str) -> dict[str, Any]:
    response = server.api("GET", f"/api/v3/widget/process/{process_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("sessions"), **COLLECT_LOOPBACK) as server:
        response = server.api("POST", "/api/v3/process", json=lavfi_process("cam", webrtc=True))
        assert response.is_success, response.text
        wait_live(server, "cam")
        yield server


def test_whep_viewer_is_a_session_while_connected(server: Server) -> None:
    before = summary(server, "webrtc")["summary"]["sessions"]
    client = start_client(whep_url(server, "cam"), duration=6)
    server.wait_for(
        lambda: any(s["bytes_tx"] > 0 for s in active(server, "webrtc")),
        15,
        "the viewer's session to be active",
    )
    [session] = active(server, "webrtc")
    assert session["reference"] == "cam"
    assert session["local"] == "/api/v3/whep/cam"
    assert session["remote"] == "127.0.0.1"
    assert session["bandwidth_tx_kbit"] > 0
    assert len(session["id"]) == 16  # not the WHEP resource id, which is a capability
    assert widget(server, "cam")["current_sessions"] == 1
    assert metric(server, "dragonfork_sessions_active", collector="webrtc") == 1

    report = client.report()
    assert report["error"] is None, report
    server.wait_for(lambda: not active(server, "webrtc"), 10, "the session to end with the viewer")
    totals = summary(server, "webrtc")
    assert totals["active"]["sessions"] == 0
    assert totals["summary"]["sessions"] == before + 1
    assert totals["summary"]["reference"]["cam"]["sessions"] >= 1
    assert metric(server, "dragonfork_sessions_active", collector="webrtc") == 0
    assert metric(server, "dragonfork_sessions_total", collector="webrtc") >= 1
    assert metric(server, "dragonfork_session_bytes_total", collector="webrtc", direction="tx") > 0
    counts = widget(server, "cam")
    assert counts["current_sessions"] == 0 and counts["total_sessions"] == before + 1
    assert counts["uptime"] > 0


def test_summary_and_active_cover_every_collector_in_datarhei_shape(server: Server) -> None:
    everything = server.api("GET", "/api/v3/session").json()
    assert set(everything) == {"hls", "webrtc", "rtmp", "srt", "ffmpeg"}
    for entry in everything.values():
        assert set(entry) == {"active", "summary"}
        assert set(entry["active"]) == {
            "list",
            "sessions",
            "bandwidth_rx_mbit",
            "bandwidth_tx_mbit",
            "max_sessions",
            "max_bandwidth_rx_mbit",
            "max_bandwidth_tx_mbit",
        }
        assert set(entry["summary"]) == {
            "remote",
            "local",
            "reference",
            "sessions",
            "traffic_rx_mb",
            "traffic_tx_mb",
        }
    assert set(server.api("GET", "/api/v3/session/active").json()) == set(everything)
    both = server.api("GET", "/api/v3/session/active", params={"collectors": "rtmp,srt"}).json()
    assert both == {"rtmp": [], "srt": []}
    bad = server.api("GET", "/api/v3/session", params={"collectors": "hls,../x"})
    assert bad.status_code == 400 and "collectors" in bad.json()["message"]


def test_widget_of_unknown_process_is_404(server: Server) -> None:
    response = server.api("GET", "/api/v3/widget/process/nope")
    assert response.status_code == 404 and "nope" in response.json()["message"]


def test_ffmpeg_pushing_to_the_network_is_a_session(server: Server) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        output = [{"id": "udp", "address": f"udp://127.0.0.1:{port}", "options": ["-f", "mpegts"]}]
        config = lavfi_process("pusher", audio=False, output=output)
        assert server.api("POST", "/api/v3/process", json=config).is_success
        try:
            server.wait_for(
                lambda: any(s["bytes_tx"] > 0 for s in active(server, "ffmpeg")), 15, "an ffmpeg session"
            )
            [session] = active(server, "ffmpeg")
            assert session["id"] == "pusher" and session["remote"] == "127.0.0.1"
            assert server.api("PUT", "/api/v3/process/pusher/command", json={"command": "stop"}).is_success
            server.wait_for(lambda: not active(server, "ffmpeg"), 10, "the ffmpeg session to end")
        finally:
            server.api("DELETE", "/api/v3/process/pusher")
    assert summary(server, "ffmpeg")["summary"]["reference"][""]["sessions"] == 1


def test_max_sessions_answers_503_for_a_new_viewer(tmp_path: Any) -> None:
    env = {**COLLECT_LOOPBACK, "CORE_SESSIONS_MAX_SESSIONS": "1"}
    with running_server(tmp_path, **env) as limited:
        assert limited.api("POST", "/api/v3/process", json=lavfi_process("cam", webrtc=True)).is_success
        wait_live(limited, "cam")
        first = limited.api("POST", "/api/v3/whep/cam", content=aiortc_offer(), headers=SDP)
        assert first.status_code == 201, first.text
        second = limited.api("POST", "/api/v3/whep/cam", content=aiortc_offer(), headers=SDP)
        assert second.status_code == 503, second.text
        assert second.headers["Retry-After"] == "5"
        assert "sessions.max_sessions" in second.json()["message"]
        limited.wait_state("cam", "running")  # the refusal broke nothing
        assert (
            metric(limited, "dragonfork_sessions_refused_total", collector="webrtc", limit="max_sessions")
            == 1
        )
        assert limited.api("DELETE", first.headers["Location"]).status_code == 204
        limited.wait_for(
            lambda: (
                limited.api("POST", "/api/v3/whep/cam", content=aiortc_offer(), headers=SDP).status_code
                == 201
            ),
            10,
            "a viewer to be admitted again",
        )


def test_max_bitrate_answers_503_while_the_server_sends_more(tmp_path: Any) -> None:
    env = {**COLLECT_LOOPBACK, "CORE_SESSIONS_MAXBITRATE_MBIT": "1"}  # datarhei's unit: whole Mbit/s
    busy = lavfi_process("cam", webrtc=True)  # a 4 Mbit/s picture: one viewer is over 1 Mbit/s
    busy["input"][0]["address"] = "testsrc2=size=1280x720:rate=25"
    busy["webrtc"]["video_bitrate_kbit"] = 4000
    with running_server(tmp_path, **env) as limited:
        assert limited.api("POST", "/api/v3/process", json=busy).is_success
        wait_live(limited, "cam")
        watching = start_client(whep_url(limited, "cam"), duration=10)
        limited.wait_for(
            lambda: summary(limited, "webrtc")["active"]["bandwidth_tx_mbit"] > 1,
            20,
            "traffic over 1 Mbit/s",
        )
        refused = limited.api("POST", "/api/v3/whep/cam", content=aiortc_offer(), headers=SDP)
        assert refused.status_code == 503, refused.text
        assert "sessions.max_bitrate_mbit" in refused.json()["message"]
        assert refused.headers["Retry-After"] == "5"
        assert watching.report()["error"] is None  # the viewer already watching is not cut off


def test_loopback_viewers_are_ignored_by_default(tmp_path: Any) -> None:
    with running_server(tmp_path, CORE_SESSIONS_MAX_SESSIONS="1") as default:
        assert default.api("POST", "/api/v3/process", json=lavfi_process("cam", webrtc=True)).is_success
        wait_live(default, "cam")
        for _ in range(2):  # neither collected nor limited
            response = default.api("POST", "/api/v3/whep/cam", content=aiortc_offer(), headers=SDP)
            assert response.status_code == 201, response.text
        assert default.api("GET", "/api/v3/session/active").json()["webrtc"] == []


def test_session_api_needs_auth_and_the_widget_does_not(tmp_path: Any) -> None:
    env = {
        "CORE_API_AUTH_ENABLE": "true",
        "CORE_API_AUTH_USERNAME": "admin",
        "CORE_API_AUTH_PASSWORD": "pw-sessions",
        "CORE_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    with running_server(tmp_path, **env) as secured:
        assert secured.api("GET", "/api/v3/session").status_code == 401
        assert secured.api("GET", "/api/v3/session/active").status_code == 401
        secured.login("admin", "pw-sessions")
        assert secured.api("POST", "/api/v3/process", json=lavfi_process("cam")).is_success
        secured.token = None
        counts = secured.api("GET", "/api/v3/widget/process/cam")
        assert counts.status_code == 200, counts.text
        assert counts.json() == {
            "current_sessions": 0,
            "total_sessions": 0,
            "uptime": counts.json()["uptime"],
        }
        assert secured.api("GET", "/api/v3/process/cam").status_code == 401


def test_persisted_totals_survive_a_restart(tmp_path: Any) -> None:
    env = {**COLLECT_LOOPBACK, "CORE_SESSIONS_PERSIST": "true"}
    with running_server(tmp_path, **env) as first:
        assert first.api("POST", "/api/v3/process", json=lavfi_process("cam", webrtc=True)).is_success
        wait_live(first, "cam")
        assert start_client(whep_url(first, "cam"), duration=2).report()["error"] is None
        first.wait_for(lambda: summary(first, "webrtc")["summary"]["sessions"] == 1, 10, "one ended session")
    stored = tmp_path / "data" / "sessions" / "webrtc.json"
    assert "cam" in stored.read_text()
    with running_server(tmp_path, **env) as second:
        assert summary(second, "webrtc")["summary"]["reference"]["cam"]["sessions"] == 1
        assert widget(second, "cam")["total_sessions"] == 1


# --- HLS: a real FFmpeg HLS client playing from /memfs ----------------------------------------------------


def start_ffmpeg_player(url: str, seconds: float) -> subprocess.Popen[str]:
    """FFmpeg playing ``url`` (HLS over HTTP, RTMP) for ``seconds`` into the null muxer, in the background."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostats", "-v", "warning", "-i", url]
    command += ["-t", str(seconds), "-f", "null", "-"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def hls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {**COLLECT_LOOPBACK, "CORE_SESSIONS_SESSION_TIMEOUT_SEC": "3", "CORE_SESSIONS_MAX_SESSIONS": "1"}
    with running_server(tmp_path_factory.mktemp("hls-sessions"), **env) as server:
        response = server.api("POST", "/api/v3/process", json=restreamer_hls_process("tv"))
        assert response.is_success, response.text
        playlist = "/api/v3/fs/mem/tv.m3u8"  # the file itself: /memfs hands out session playlists
        server.wait_for(lambda: server.api("GET", playlist).text.count(".ts") >= 2, 30, "two segments")
        yield server


def test_hls_player_is_a_session_while_it_plays(hls_server: Server) -> None:
    server = hls_server
    player = start_ffmpeg_player(f"{server.url}/memfs/tv.m3u8", seconds=8)
    server.wait_for(lambda: any(s["bytes_tx"] > 0 for s in active(server, "hls")), 15, "the player's session")
    [session] = active(server, "hls")
    assert session["reference"] == "tv"
    assert session["local"] == "/memfs/tv.m3u8"
    assert session["remote"] == "127.0.0.1"
    assert session["extra"].startswith("Lavf/")
    assert widget(server, "tv")["current_sessions"] == 1

    # max_sessions is 1: a second player is refused, the one watching is not.
    second = server.api("GET", "/memfs/tv.m3u8")
    assert second.status_code == 503, second.text
    assert second.headers["Retry-After"] == "5" and "sessions.max_sessions" in second.json()["message"]

    _, errors = player.communicate(timeout=40)
    assert player.returncode == 0, errors
    assert max(s["bytes_tx"] for s in active(server, "hls")) > 100_000
    server.wait_for(lambda: not active(server, "hls"), 10, "the session to expire 3 s after the player left")
    assert summary(server, "hls")["summary"]["reference"]["tv"]["sessions"] == 1
    counts = widget(server, "tv")
    assert (counts["current_sessions"], counts["total_sessions"]) == (0, 1)
    assert metric(server, "dragonfork_sessions_total", collector="hls") == 1


def test_hls_playlist_with_a_forged_session_is_403(hls_server: Server) -> None:
    response = hls_server.api("GET", "/memfs/tv.m3u8", params={"session": "../../etc/passwd"})
    assert response.status_code == 403 and "session" in response.json()["message"]
    assert hls_server.state("tv")["exec"] == "running"


@pytest.fixture(scope="module")
def rtmp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    env = {**COLLECT_LOOPBACK, "CORE_RTMP_ENABLE": "true", "CORE_RTMP_ADDRESS": f"127.0.0.1:{port}"}
    with running_server(tmp_path_factory.mktemp("rtmp-sessions"), **env) as server:
        server.rtmp_port = port  # type: ignore[attr-defined]
        yield server


def test_rtmp_publisher_and_player_are_sessions_while_connected(rtmp_server: Server, tmp_path: Any) -> None:
    server = rtmp_server
    url = f"rtmp://127.0.0.1:{server.rtmp_port}/studio.stream"  # type: ignore[attr-defined]

    def by_location() -> dict[str, dict[str, Any]]:
        return {session["local"]: session for session in active(server, "rtmp")}

    with Publisher(url, tmp_path / "publisher.log") as publisher:
        server.wait_for(
            lambda: by_location().get("publish:/studio.stream", {}).get("bytes_rx", 0) > 0,
            20,
            f"the publisher's session\n{publisher.log()}",
        )
        player = start_ffmpeg_player(url, seconds=4)
        server.wait_for(
            lambda: by_location().get("play:/studio.stream", {}).get("bytes_tx", 0) > 0, 20, "the player's"
        )
        sessions = by_location()
        assert set(sessions) == {"publish:/studio.stream", "play:/studio.stream"}
        published, played = sessions["publish:/studio.stream"], sessions["play:/studio.stream"]
        assert published["id"] == "/studio.stream" and published["reference"] == "studio"
        assert published["remote"].startswith("127.0.0.1:")
        assert played["id"] == played["remote"] != published["remote"]  # datarhei: a player is its address
        assert played["reference"] == "studio"
        assert published["bandwidth_rx_kbit"] > 0 and played["bandwidth_tx_kbit"] > 0
        assert metric(server, "dragonfork_sessions_active", collector="rtmp") == 2

        _, errors = player.communicate(timeout=40)
        assert player.returncode == 0, errors
        server.wait_for(lambda: set(by_location()) == {"publish:/studio.stream"}, 10, "the player to leave")
    server.wait_for(lambda: not active(server, "rtmp"), 10, "the publisher's session to end with it")
    totals = summary(server, "rtmp")["summary"]
    assert totals["sessions"] == 2
    assert set(totals["local"]) == {"publish:/studio.stream", "play:/studio.stream"}
    assert totals["reference"]["studio"]["sessions"] == 2
    assert metric(server, "dragonfork_sessions_active", collector="rtmp") == 0
    assert metric(server, "dragonfork_session_bytes_total", collector="rtmp", direction="rx") > 10_000
    assert metric(server, "dragonfork_session_bytes_total", collector="rtmp", direction="tx") > 10_000
