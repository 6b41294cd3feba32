"""A config reload on a running server restarts only the services whose settings changed.

One server with the RTMP server on, a process publishing into it through ``{rtmp,name=relay}`` and a process
played by a real aiortc WHEP viewer. Reloads that change the files, sessions and metrics settings leave the
RTMP server and both processes alone; a new ``rtmp.token`` and a new ``rtmp.address`` restart the RTMP
server and the one process whose command holds them; an address that cannot be used leaves the RTMP server
down with the cause in ``/api/v3/ingest`` until a reload fixes it; the viewer plays through all of it.
WHIP ingest is switched on by a reload (``{whip,…}`` expands from then on) and its other settings reach the
publishers that come after it while the live one keeps publishing.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import httpx
from harness import Server, free_port, lavfi_process, metric, running_server, wait_live, whep_url
from rtmp_helpers import Publisher
from whep_peers import start_client
from whip_helpers import unusable_offer, whip_publish_command

MIB = 1024 * 1024


def relay_process() -> dict[str, Any]:
    """FFmpeg publishing the test pattern into this server's own RTMP server."""
    output = {
        "id": "rtmp",
        "address": "{rtmp,name=relay}",
        "options": [
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "25",
            "-f",
            "flv",
        ],
    }
    return lavfi_process("relay", audio=False, output=[output])


def reload_with(server: Server, **sections: Any) -> None:
    assert server.api("PUT", "/api/v3/config", json={"version": 3, **sections}).json() == "OK"
    assert server.api("GET", "/api/v3/config/reload").json() == "OK"


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def channels(server: Server) -> list[dict[str, str]]:
    return list(server.api("GET", "/api/v3/rtmp").json())


def test_a_reload_restarts_the_rtmp_server_only_when_its_settings_change(tmp_path: Path) -> None:
    first_port, second_port = free_port(), free_port()
    config_file = tmp_path / "core.json"
    config_file.write_text(json.dumps({"rtmp": {"enable": True, "address": f"127.0.0.1:{first_port}"}}))
    with running_server(tmp_path, CORE_CONFIGFILE=str(config_file)) as server:
        for process in (lavfi_process("live", webrtc=True), relay_process()):
            assert server.api("POST", "/api/v3/process", json=process).is_success
        wait_live(server, "live")
        server.wait_for(lambda: channels(server) == [{"name": "/relay"}], 20, "the relay to publish")
        viewer = start_client(whep_url(server, "live"), duration=20)
        server.wait_for(lambda: server.state("live")["webrtc"]["viewers"] == 1, 15, "the viewer to connect")
        live, relay = server.state("live"), server.state("relay")
        publisher = server.api("GET", "/api/v3/ingest").json()["rtmp"]["publishers"][0]

        # files, sessions, metrics, log: the RTMP server, its publisher and both processes are untouched
        assert len(server.api("GET", "/api/v3/log").json()) > 5
        reload_with(
            server,
            storage={"memory": {"max_size_mbytes": 64, "purge": True}, "disk": {"max_size_mbytes": 128}},
            sessions={"max_sessions": 7},
            metrics={"range_sec": 300},
            log={"max_lines": 5},
        )
        assert len(server.api("GET", "/api/v3/log").json()) == 5
        assert metric(server, "dragonfork_filesystem_limit_bytes", filesystem="mem") == 64 * MIB
        assert metric(server, "dragonfork_filesystem_limit_bytes", filesystem="disk") == 128 * MIB
        summary = server.api("GET", "/api/v3/session", params={"collectors": "webrtc"}).json()
        assert summary["webrtc"]["active"]["max_sessions"] == 7
        assert server.api("GET", "/api/v3/config").json()["restart_required"] == []
        same = server.api("GET", "/api/v3/ingest").json()["rtmp"]["publishers"]
        assert [(p["remote"], p["uptime_seconds"] >= publisher["uptime_seconds"]) for p in same] == [
            (publisher["remote"], True)
        ]  # the same RTMP session
        assert server.state("relay")["state_since"] == relay["state_since"]

        # a new token: the RTMP server restarts, the relay's command changes, so it restarts too
        reload_with(server, rtmp={"token": "second-token"})
        server.wait_for(
            lambda: any("?token=second-token" in arg for arg in server.state("relay")["command"]),
            20,
            "the relay to run with the new token",
        )
        server.wait_for(lambda: channels(server) == [{"name": "/relay"}], 20, "the relay to publish again")
        assert server.api("GET", "/api/v3/ingest").json()["rtmp"]["token"] == "second-token"

        # a new address: the old port closes, the new one listens, the relay follows
        reload_with(server, rtmp={"address": f"127.0.0.1:{second_port}"})
        assert listening(second_port) and not listening(first_port)
        server.wait_for(
            lambda: any(f":{second_port}/relay" in arg for arg in server.state("relay")["command"]),
            20,
            "the relay to publish to the new address",
        )
        server.wait_for(lambda: channels(server) == [{"name": "/relay"}], 20, "the relay on the new port")

        # an address another program holds: the RTMP server stays down, says why, and only it
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            taken_port = taken.getsockname()[1]
            reload_with(server, rtmp={"address": f"127.0.0.1:{taken_port}"})
            ingest = server.api("GET", "/api/v3/ingest").json()["rtmp"]
            assert not ingest["enabled"] and f"rtmp.address '127.0.0.1:{taken_port}'" in ingest["error"]
            assert (
                metric(server, "dragonfork_failures_total", component="rtmp_server", cause="ListenFailed")
                == 1
            )
        reload_with(server, rtmp={"address": f"127.0.0.1:{second_port}"})  # back: it listens again
        assert "error" not in server.api("GET", "/api/v3/ingest").json()["rtmp"] and listening(second_port)

        after = server.state("live")  # the WHEP viewer's process never restarted
        assert (after["exec"], after["restarts"], after["state_since"]) == (
            "running",
            live["restarts"],
            live["state_since"],
        )
        assert after["webrtc"]["viewers"] == 1
        report = viewer.report()
        assert report["error"] is None and not report["server_closed"], report
        assert report["video_frames_decoded"] >= 250, report  # 10 of its 20 s at 25 fps, through 6 reloads


def whip_ingest(server: Server) -> dict[str, Any]:
    return dict(server.api("GET", "/api/v3/ingest").json()["whip"])


def test_a_reload_switches_whip_on_and_its_settings_reach_new_publishers(tmp_path: Path) -> None:
    config_file = tmp_path / "core.json"
    config_file.write_text(json.dumps({"whip": {"enable": False}}))
    with running_server(tmp_path, CORE_CONFIGFILE=str(config_file)) as server:
        url = f"{server.url}/api/v3/whip/cam"
        offer = {"content": unusable_offer(), "headers": {"Content-Type": "application/sdp"}}
        off = httpx.post(url, **offer)  # type: ignore[arg-type]
        assert off.status_code == 404 and "whip.enable" in off.text
        assert whip_ingest(server) == {"enabled": False}

        reload_with(server, whip={"enable": True})
        assert whip_ingest(server)["enabled"]
        with Publisher(url, tmp_path / "whip.log", command=whip_publish_command(url, audio=False)):
            server.wait_for(lambda: len(whip_ingest(server)["publishers"]) == 1, 20, "the WHIP publisher")
            reader = {"id": "reader", "input": [{"address": "{whip,name=cam}"}], "output": []}
            assert server.api(
                "POST", "/api/v3/process", json=reader | {"webrtc": {"enabled": True}}
            ).is_success
            running = server.wait_state("reader", "running", timeout=20)
            assert f"{url}/stream.mkv" in running["command"]

            # a lower cap: the live publisher keeps publishing, the next one is refused by the new value
            session = whip_ingest(server)["publishers"][0]
            reload_with(server, whip={"max_publishers": 1})
            second = httpx.post(f"{server.url}/api/v3/whip/second", **offer)  # type: ignore[arg-type]
            assert second.status_code == 503 and "whip.max_publishers (1)" in second.text
            after = whip_ingest(server)["publishers"]
            assert [(p["remote"], p["uptime_seconds"] >= session["uptime_seconds"]) for p in after] == [
                (session["remote"], True)
            ]
            assert server.state("reader")["exec"] == "running"
