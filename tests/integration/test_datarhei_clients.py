"""datarhei's own clients against dragonfork, written from datarhei Core v16's documented API only.

``CoreClient`` does what a client written for datarhei Core does (its Python and JavaScript clients follow the
same documented calls): read ``/api`` to learn the auth methods, log in with ``localjwt``, send the access
token as a Bearer token and refresh it with the refresh token. The tests replay Restreamer UI's start-up
sequence, a client that switches auth, the RTMP server (and SRT's keys) on through config PUT + reload and
then uses files, sessions, RTMP channels and the widget, and a reload that turns auth on while a WHEP viewer
keeps playing.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
from harness import (
    TEST_VIDEO,
    free_port,
    lavfi_process,
    restreamer_hls_process,
    running_server,
    wait_live,
    whep_url,
)
from srt_helpers import free_udp_port
from whep_peers import aiortc_offer, start_client

USERNAME, PASSWORD = "admin", "datarhei-client-password"
SDP = {"Content-Type": "application/sdp"}
# datarhei v16 reports its own version; clients enable features by it (Restreamer UI requires ^16.11.0).
DATARHEI_VERSION = re.compile(r"^16\.(1[1-9]|[2-9][0-9])\.\d+")


class CoreClient:
    """A datarhei Core v16 API client: about → localjwt login → Bearer calls, refresh on expiry."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        self.access_token: str | None = None
        self.refresh_token: str | None = None

    def about(self) -> dict[str, Any]:
        response = self.http.get("/api", headers=self._auth())
        assert response.status_code == 200, response.text
        return dict(response.json())

    def login(self, username: str, password: str) -> None:
        """Log in when the server offers ``localjwt`` (datarhei clients send no token otherwise)."""
        assert "localjwt" in self.about()["auths"]
        response = self.http.post("/api/login", json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        tokens = response.json()
        self.access_token, self.refresh_token = tokens["access_token"], tokens["refresh_token"]

    def refresh(self) -> None:
        response = self.http.get(
            "/api/login/refresh", headers={"Authorization": f"Bearer {self.refresh_token}"}
        )
        assert response.status_code == 200, response.text
        self.access_token = response.json()["access_token"]

    def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        response = self.http.request(method, path, headers=self._auth(), **kwargs)
        assert response.status_code == expect, (
            f"{method} {path}: {response.status_code} {response.text[:500]}"
        )
        return response.json() if response.content else None

    def text(self, path: str) -> str:
        """A file's content (``/api/v3/fs/...``), not JSON."""
        response = self.http.get(path, headers=self._auth())
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:500]}"
        return response.text

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"} if self.access_token else {}


def ui_probe_config(process_id: str) -> dict[str, Any]:
    """A temporary process the UI creates to probe a source: not started, probed, deleted."""
    return {
        "id": process_id,
        "type": "ffmpeg",
        "reference": "restreamer-ui",
        "input": [{"id": "input_0", "address": TEST_VIDEO, "options": ["-f", "lavfi"]}],
        "output": [{"id": "output_0", "address": "-", "options": ["-f", "null"]}],
        "options": ["-err_detect", "ignore_err"],
        "autostart": False,
        "reconnect": False,
    }


# -- Restreamer UI's start-up sequence -----------------------------------------------------------------------


def test_restreamer_ui_start_up_sequence(tmp_path: Path) -> None:
    auth = {
        "CORE_API_AUTH_ENABLE": "true",
        "CORE_API_AUTH_USERNAME": USERNAME,
        "CORE_API_AUTH_PASSWORD": PASSWORD,
    }
    with running_server(tmp_path, **auth) as server:
        client = CoreClient(server.url)

        public = client.about()  # without a token: the identity check and the auth methods
        assert public["app"] == "datarhei-core" and public["version"]["number"].startswith("16."), public
        client.login(USERNAME, PASSWORD)
        about = client.about()  # with a token: the full identity
        assert {"id", "name", "created_at", "uptime_seconds"} <= set(about)
        assert DATARHEI_VERSION.match(about["version"]["number"]), about

        config = client.call("GET", "/api/v3/config")
        assert isinstance(config["config"]["host"]["name"], list)
        assert isinstance(config["config"]["storage"]["memory"]["auth"]["enable"], bool)
        assert config["config"]["api"]["auth"]["enable"] is True

        skills = client.call("GET", "/api/v3/skills")
        assert re.match(r"^\d+\.\d+", skills["ffmpeg"]["version"])
        assert {"filter", "hwaccels", "devices"} <= set(skills)

        listed = client.call("GET", "/api/v3/process", params={"filter": "metadata"})
        assert listed == []

        client.call("GET", "/api/v3/metadata/restreamer-ui", expect=404)
        ui_metadata = {"version": "2.12.0", "bundle": {"appname": "Restreamer"}}
        assert client.call("PUT", "/api/v3/metadata/restreamer-ui", json=ui_metadata) == ui_metadata
        assert client.call("GET", "/api/v3/metadata/restreamer-ui") == ui_metadata

        query = {
            "timerange_sec": 600,
            "interval_sec": 10,
            "metrics": [{"name": "cpu_idle"}, {"name": "mem_free"}],
        }
        series = client.call("POST", "/api/v3/metrics", json=query)
        assert {"timerange_sec", "interval_sec", "metrics"} <= set(series)

        probe_id = f"restreamer-ui:ingest:{uuid.uuid4()}_probe"
        created = client.call("POST", "/api/v3/process", json=ui_probe_config(probe_id))
        assert created["id"] == probe_id
        probe = client.call("GET", f"/api/v3/process/{probe_id}/probe")
        video = [stream for stream in probe["streams"] if stream["type"] == "video"]
        assert video and video[0]["width"] == 320 and video[0]["height"] == 240, probe
        client.call("DELETE", f"/api/v3/process/{probe_id}")
        client.call("GET", f"/api/v3/process/{probe_id}", expect=404)

        client.refresh()  # the UI refreshes before its access token expires
        assert client.call("GET", "/api/v3/process", params={"filter": "metadata"}) == []


# -- a datarhei v16 client: auth and RTMP/SRT switched on through the config API -----------------------------


def client_process() -> dict[str, Any]:
    """Restreamer's HLS output to ``{memfs}`` and a second output to this server's ``{rtmp,name=...}``."""
    process = restreamer_hls_process("client")
    process["reference"] = "datarhei-client"
    rtmp_options = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-f", "flv"]
    process["output"].append({"id": "rtmp", "address": "{rtmp,name=client}", "options": rtmp_options})
    return process


def play_hls(http: httpx.Client, playlist: str) -> int:
    """What an HLS player does: the playlist (datarhei hands out one with a session), its media playlist,
    then one segment; returns the segment's size."""
    master = http.get(playlist)
    assert master.status_code == 200, master.text
    media_url = urljoin(playlist, next(line for line in master.text.splitlines() if not line.startswith("#")))
    media = http.get(media_url)
    assert media.status_code == 200, media.text
    segment_url = urljoin(media_url, next(line for line in media.text.splitlines() if ".ts" in line))
    segment = http.get(segment_url)
    assert segment.status_code == 200
    return len(segment.content)


def test_datarhei_client_enables_auth_through_config_and_drives_a_process(tmp_path: Path) -> None:
    rtmp_address, srt_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_udp_port()}"
    with running_server(tmp_path) as server:
        client = CoreClient(server.url)
        assert client.about()["auths"] == []

        document = client.call("GET", "/api/v3/config")
        assert {"created_at", "loaded_at", "updated_at", "config", "overrides"} <= set(document)
        assert "address" in document["overrides"]  # fixed by CORE_ADDRESS
        update = document["config"]  # a client sends back what it read, with its changes
        update["api"]["auth"].update(enable=True, username=USERNAME, password=PASSWORD)
        update["rtmp"].update(enable=True, address=rtmp_address)
        update["srt"].update(enable=True, address=srt_address, passphrase="datarhei-passphrase")
        update["sessions"]["ip_ignorelist"] = []  # this client's HLS reads become sessions
        assert client.call("PUT", "/api/v3/config", json=update) == "OK"
        assert client.call("GET", "/api/v3/config")["config"]["rtmp"]["enable"] is True
        assert client.call("GET", "/api/v3/process") == []  # stored, not applied before the reload
        assert client.call("GET", "/api/v3/config/reload") == "OK"

        client.call("GET", "/api/v3/process", expect=401)
        client.login(USERNAME, PASSWORD)
        config = client.call("GET", "/api/v3/config")
        assert config["config"]["api"]["auth"]["enable"] is True
        assert (
            config["config"]["srt"]["enable"] is True and config["config"]["srt"]["passphrase"] == "********"
        )
        assert config["loaded_at"] >= config["updated_at"]
        assert client.call("GET", "/api/v3/rtmp") == []  # the RTMP server listens, nobody publishes yet
        srt_channels = client.call("GET", "/api/v3/srt")  # so does the SRT server
        assert srt_channels == {"publisher": {}, "subscriber": {}, "connections": {}, "log": {}}

        created = client.call("POST", "/api/v3/process", json=client_process())
        assert created["id"] == "client" and created["reference"] == "datarhei-client"
        server.wait_for(
            lambda: client.call("GET", "/api/v3/process/client/state")["exec"] == "running", 20, "running"
        )
        state = client.call("GET", "/api/v3/process/client/state")
        assert state["order"] == "start"
        assert {"inputs", "outputs"} <= set(state["progress"])
        assert any(arg.startswith(f"rtmp://{rtmp_address}/client") for arg in state["command"])
        report = client.call("GET", "/api/v3/process/client/report")
        assert isinstance(report["created_at"], int) and isinstance(report["log"], list)
        probe = client.call("GET", "/api/v3/process/client/probe")
        assert any(stream["type"] == "video" for stream in probe["streams"])

        # RTMP channels: the process's second output publishes into the RTMP server switched on above
        server.wait_for(
            lambda: client.call("GET", "/api/v3/rtmp") == [{"name": "/client"}], 20, "the RTMP channel"
        )
        # files: datarhei's filesystems and the HLS output in memfs
        filesystems = client.call("GET", "/api/v3/fs")
        assert {(fs["name"], fs["type"], fs["mount"]) for fs in filesystems} >= {("mem", "mem", "/memfs")}
        server.wait_for(
            lambda: {"/client.m3u8"} <= {f["name"] for f in client.call("GET", "/api/v3/fs/mem")},
            30,
            "the playlist in memfs",
        )
        server.wait_for(
            lambda: client.text("/api/v3/fs/mem/client.m3u8").count(".ts") >= 2, 30, "two segments"
        )
        files = client.call("GET", "/api/v3/fs/mem", params={"glob": "/client_*.ts"})
        assert files and all({"name", "size_bytes", "last_modified"} <= set(entry) for entry in files)

        # sessions: an HLS player of the process is one, and the public widget counts it
        assert play_hls(client.http, f"{server.url}/memfs/client.m3u8") > 0
        server.wait_for(
            lambda: any(
                session["reference"] == "client"
                for session in client.call("GET", "/api/v3/session/active", params={"collectors": "hls"})[
                    "hls"
                ]
            ),
            10,
            "the HLS session",
        )
        summary = client.call("GET", "/api/v3/session", params={"collectors": "hls,rtmp"})
        assert summary["hls"]["active"]["sessions"] >= 1 and set(summary["rtmp"]) == {"active", "summary"}
        widget = httpx.get(f"{server.url}/api/v3/widget/process/client")  # public: no token
        assert widget.status_code == 200 and widget.json()["current_sessions"] >= 1, widget.text

        assert client.call("PUT", "/api/v3/process/client/metadata/owner", json={"team": "a"}) == {
            "team": "a"
        }
        assert client.call("GET", "/api/v3/process/client/metadata/owner") == {"team": "a"}
        assert client.call("PUT", "/api/v3/metadata/site", json="studio-2") == "studio-2"
        assert client.call("GET", "/api/v3/metadata/site") == "studio-2"
        assert client.call("GET", "/api/v3/skills")["ffmpeg"]["version"]
        assert isinstance(client.call("GET", "/api/v3/log"), list)
        assert isinstance(client.call("GET", "/api/v3/metrics"), list)

        client.call("PUT", "/api/v3/process/client/command", json={"command": "stop"})
        server.wait_for(
            lambda: client.call("GET", "/api/v3/process/client/state")["exec"] == "finished", 20, "stop"
        )
        client.call("DELETE", "/api/v3/process/client")
        assert client.call("GET", "/api/v3/process") == []
        assert client.call("GET", "/api/v3/rtmp") == []
        assert not client.call("GET", "/api/v3/fs/mem", params={"glob": "/client*"})  # purged on delete


def test_config_errors_and_read_only(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        client = CoreClient(server.url)
        bad = client.call(
            "PUT", "/api/v3/config", expect=400, json={"version": 3, "ffmpeg": {"max_processes": "x"}}
        )
        assert (
            bad["code"] == 400 and "ffmpeg.max_processes: Input should be a valid integer" in bad["message"]
        )
        unversioned = client.call("PUT", "/api/v3/config", expect=400, json={"name": "x"})
        assert "version" in unversioned["message"]
        conflict = client.call(
            "PUT", "/api/v3/config", expect=409, json={"version": 3, "api": {"auth": {"enable": True}}}
        )
        assert conflict == {"api.auth.enable": ["api.auth.username and api.auth.password must be set"]}
        assert not (server.data_dir / "config.json").exists()

        assert client.call("POST", "/api/v3/process", json=lavfi_process("kept", autostart=False))
        assert client.call("PUT", "/api/v3/config", json={"version": 3, "api": {"read_only": True}}) == "OK"
        assert client.call("GET", "/api/v3/config/reload") == "OK"
        refused = client.call(
            "POST", "/api/v3/process", expect=403, json=lavfi_process("new", autostart=False)
        )
        assert "read-only" in refused["message"]
        client.call("DELETE", "/api/v3/process/kept", expect=403)
        client.call("PUT", "/api/v3/metadata/x", expect=403, json=1)
        client.call("PUT", "/api/v3/config", expect=403, json={"version": 3, "api": {"read_only": False}})
        assert [entry["id"] for entry in client.call("GET", "/api/v3/process")] == ["kept"]
        assert client.call("GET", "/api/v3/config")["config"]["api"]["read_only"] is True
        assert "Traceback" not in server.log()


def test_reload_restarts_only_the_processes_whose_command_changes(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        for process in (
            lavfi_process("with-webrtc", audio=False, webrtc=True),
            lavfi_process("plain", audio=False),
        ):
            assert server.api("POST", "/api/v3/process", json=process).is_success
            server.wait_state(process["id"], "running")
        before = {process_id: server.state(process_id) for process_id in ("with-webrtc", "plain")}
        assert any("rtp://" in arg for arg in before["with-webrtc"]["command"])

        update = {"version": 3, "webrtc": {"enable": False}, "ffmpeg": {"max_processes": 2}}
        assert server.api("PUT", "/api/v3/config", json=update).json() == "OK"
        assert server.api("GET", "/api/v3/config/reload").json() == "OK"

        server.wait_for(
            lambda: not any("rtp://" in arg for arg in server.state("with-webrtc")["command"]),
            20,
            "a new run",
        )
        server.wait_state("with-webrtc", "running")  # restarted without its RTP legs
        untouched = server.state("plain")
        assert (untouched["exec"], untouched["state_since"], untouched["command"]) == (
            "running",
            before["plain"]["state_since"],
            before["plain"]["command"],
        )
        # the new limit holds for the next start: both running processes stay, a third is refused
        assert server.api("POST", "/api/v3/process", json=lavfi_process("third", autostart=False)).is_success
        refused = server.api("PUT", "/api/v3/process/third/command", json={"command": "start"})
        assert refused.is_client_error and "ffmpeg.max_processes (2)" in refused.json()["message"]
        assert [server.state(process_id)["exec"] for process_id in ("with-webrtc", "plain")] == [
            "running"
        ] * 2


# -- a reload turns auth on while a WHEP viewer keeps playing ------------------------------------------------


def test_auth_switched_on_by_reload_while_a_whep_viewer_keeps_playing(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        assert server.api("POST", "/api/v3/process", json=lavfi_process("live", webrtc=True)).is_success
        wait_live(server, "live")
        viewer = start_client(whep_url(server, "live"), duration=8)
        server.wait_for(lambda: server.state("live")["webrtc"]["viewers"] == 1, 15, "the viewer to connect")
        before = server.state("live")

        update = {"version": 3, "api": {"auth": {"enable": True, "username": USERNAME, "password": PASSWORD}}}
        assert server.api("PUT", "/api/v3/config", json=update).json() == "OK"
        assert server.api("GET", "/api/v3/config/reload").json() == "OK"

        assert server.api("GET", "/api/v3/process").status_code == 401
        offer = server.api("POST", "/api/v3/whep/live", content=aiortc_offer(), headers=SDP)
        assert offer.status_code == 401  # a new viewer needs a token now
        server.login(USERNAME, PASSWORD)
        after = server.state("live")
        assert after["webrtc"]["viewers"] == 1
        assert (after["exec"], after["restarts"], after["state_since"]) == (
            "running",
            before["restarts"],
            before["state_since"],
        )  # the same FFmpeg run: nothing restarted

        new_password = {"version": 3, "api": {"auth": {"password": "a-new-datarhei-password"}}}
        assert server.api("PUT", "/api/v3/config", json=new_password).json() == "OK"
        assert server.api("GET", "/api/v3/config/reload").json() == "OK"
        assert server.api("GET", "/api/v3/process").status_code == 401  # a token from before is refused
        server.login(USERNAME, "a-new-datarhei-password")
        assert server.state("live")["webrtc"]["viewers"] == 1

        report = viewer.report()
        assert report["error"] is None and not report["server_closed"], report
        # 8 s at 25 fps from connecting, the reload ~1 s in: 125 frames are 5 s of video after it
        assert report["video_frames_decoded"] >= 125, report
        assert server.state("live")["exec"] == "running"
        assert "Traceback" not in server.log()
