"""The process API against a real server running real FFmpeg children."""

from __future__ import annotations

import json
import subprocess
import time

import imageio_ffmpeg
import psutil
from harness import Server, ffmpeg_children, free_port, lavfi_process


def test_create_run_stop_finished(server: Server) -> None:
    started = time.monotonic()
    response = server.api("POST", "/api/v3/process", json=lavfi_process("lifecycle"))
    assert response.status_code == 200, response.text
    state = server.wait_state("lifecycle", "running")
    seconds_to_running = time.monotonic() - started
    print(f"POST → running: {seconds_to_running:.3f} s")

    server.wait_for(lambda: server.state("lifecycle")["progress"]["fps"] > 0, 10, "fps > 0")
    state = server.state("lifecycle")
    assert state["order"] == "start"
    assert state["progress"]["frame"] > 0
    video, audio = state["progress"]["inputs"]  # datarhei's api.ProgressIO, one per stream
    assert (video["id"], video["index"], video["stream"], video["type"]) == ("video", 0, 0, "video")
    assert video["width"] == 320 and video["height"] == 240 and video["format"] == "lavfi"
    assert (audio["id"], audio["index"], audio["type"]) == ("audio", 1, "audio") and audio["sampling_hz"] > 0
    assert state["reconnect_seconds"] == -1
    assert {entry["type"] for entry in state["progress"]["outputs"]} == {"video"}
    assert state["command"][0] == imageio_ffmpeg.get_ffmpeg_exe()
    pid_children = [child.pid for child in ffmpeg_children(server)]  # not the WebRTC workers, if any
    assert pid_children, "FFmpeg child not found under the server"

    assert server.api("PUT", "/api/v3/process/lifecycle/command", json={"command": "stop"}).status_code == 200
    state = server.state("lifecycle")
    assert state["exec"] == "finished", state
    assert state["order"] == "stop"
    report = server.api("GET", "/api/v3/process/lifecycle/report").json()
    assert report["history"] and report["history"][-1]["exit_state"] == "finished"
    assert any("Input #0" in line for line in report["history"][-1]["prelude"])
    for pid in pid_children:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    stored = {entry["config"]["id"]: entry for entry in server.db()["processes"]}
    assert stored["lifecycle"]["order"] == "stop"
    assert server.api("DELETE", "/api/v3/process/lifecycle").status_code == 200
    assert server.api("GET", "/api/v3/process/lifecycle").status_code == 404


def test_bad_arguments_fail_and_reconnect_restarts(server: Server) -> None:
    config = lavfi_process("broken", options=["-no_such_option", "1"])
    assert server.api("POST", "/api/v3/process", json=config).status_code == 200
    state = server.wait_state("broken", "failed")
    assert state["last_error"] == "Error splitting the argument list: Option not found"  # FFmpeg's words
    assert "no_such_option" in json.dumps(server.api("GET", "/api/v3/process/broken/report").json())

    config = lavfi_process(
        "broken-reconnect", options=["-no_such_option", "1"], reconnect=True, reconnect_delay_seconds=1
    )
    assert server.api("POST", "/api/v3/process", json=config).status_code == 200
    server.wait_for(lambda: server.state("broken-reconnect")["restarts"] >= 2, 15, "two restarts")
    state = server.state("broken-reconnect")
    assert state["order"] == "start" and state["exec"] in ("failed", "starting")
    metrics = server.api("GET", "/metrics").text
    assert 'dragonfork_process_restarts_total{process="broken-reconnect",reason="reconnect"}' in metrics
    for process_id in ("broken", "broken-reconnect"):
        assert server.api("DELETE", f"/api/v3/process/{process_id}").status_code == 200


def test_stale_timeout_fires_when_input_stops(server: Server) -> None:
    """The input is a UDP MPEG-TS feed from a second FFmpeg that stops after 3 s; progress freezes."""
    port = free_port()
    config = {
        "id": "stale",
        "input": [
            {
                "id": "feed",
                "address": f"udp://127.0.0.1:{port}",
                "options": ["-f", "mpegts", "-analyzeduration", "500000", "-probesize", "65536"],
            }
        ],
        "output": [{"id": "null", "address": "-", "options": ["-f", "null"]}],
        "stale_timeout_seconds": 3,
    }
    assert server.api("POST", "/api/v3/process", json=config).status_code == 200
    sender = subprocess.Popen(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
         "-i", "testsrc2=size=160x120:rate=25", "-t", "5", "-c:v", "mpeg2video", "-f", "mpegts",
         f"udp://127.0.0.1:{port}?pkt_size=1316"],
    )  # fmt: skip
    try:
        server.wait_state("stale", "running", timeout=10)
        server.wait_state("stale", "killed", timeout=15)
    finally:
        sender.kill()
        sender.wait()
    log = json.dumps(server.api("GET", "/api/v3/process/stale/report").json())
    assert "stale: no progress" in log
    assert server.api("DELETE", "/api/v3/process/stale").status_code == 200


def test_memory_limit_kills(server: Server) -> None:
    config = lavfi_process("hungry", limits={"memory_mbytes": 1, "waitfor_seconds": 1})
    assert server.api("POST", "/api/v3/process", json=config).status_code == 200
    server.wait_state("hungry", "killed", timeout=15)
    log = json.dumps(server.api("GET", "/api/v3/process/hungry/report").json())
    assert "limit exceeded" in log and "memory" in log
    assert server.api("DELETE", "/api/v3/process/hungry").status_code == 200


def test_errors_are_json_and_name_the_field(server: Server) -> None:
    bad = lavfi_process("errors")
    bad["input"][0]["address"] = ""
    response = server.api("POST", "/api/v3/process", json=bad)
    assert response.status_code == 400
    assert "input.0.address" in response.json()["message"]
    assert response.json()["code"] == 400

    dup = lavfi_process("errors")
    dup["input"].append(dict(dup["input"][0]))
    response = server.api("POST", "/api/v3/process", json=dup)
    assert response.status_code == 400 and "duplicate input id" in response.json()["message"]

    response = server.api(
        "POST", "/api/v3/process", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["message"]
    response = server.api("POST", "/api/v3/process", content=b"id=x", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415 and "application/json" in response.json()["message"]
    response = server.api(
        "POST", "/api/v3/process", content=b"[" + b"1," * 600_000 + b"1]",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 413
    response = server.api("PATCH", "/api/v3/process")
    assert response.status_code == 405 and {"GET", "POST"} <= set(response.headers["Allow"].split(", "))
    assert server.api("GET", "/api/v3/process/nope").status_code == 404
    assert server.api("GET", "/api/v3/process/nope").json()["message"] == "process 'nope' not found"
    response = server.api("PUT", "/api/v3/process/nope/command", json={"command": "start"})
    assert response.status_code == 404
    response = server.api("GET", "/api/v3/process?filter=bogus")
    assert response.status_code == 400 and "filter" in response.json()["message"]

    blocked = lavfi_process("reads-etc")
    blocked["input"] = [{"id": "file", "address": "/etc/passwd", "options": []}]
    response = server.api("POST", "/api/v3/process", json=blocked)
    assert response.status_code == 400
    assert "input.0.address" in response.json()["message"] and "data directory" in response.json()["message"]

    assert (
        server.api("POST", "/api/v3/process", json=lavfi_process("errors", autostart=False)).status_code
        == 200
    )
    response = server.api("POST", "/api/v3/process", json=lavfi_process("errors", autostart=False))
    assert response.status_code == 400 and "already exists" in response.json()["message"]
    response = server.api("PUT", "/api/v3/process/errors/command", json={"command": "jump"})
    assert response.status_code == 400 and "command" in response.json()["message"]
    assert server.api("DELETE", "/api/v3/process/errors").status_code == 200
    ids = [entry["config"]["id"] for entry in server.db()["processes"]]
    assert "errors" not in ids and "reads-etc" not in ids
    assert "Traceback" not in server.log()


def test_put_replaces_and_restarts_metadata_filters(server: Server) -> None:
    assert (
        server.api("POST", "/api/v3/process", json=lavfi_process("replace-me", reference="cam")).status_code
        == 200
    )
    server.wait_state("replace-me", "running")
    new = lavfi_process("replaced", reference="cam2")
    response = server.api("PUT", "/api/v3/process/replace-me", json=new)
    assert response.status_code == 200, response.text
    assert server.api("GET", "/api/v3/process/replace-me").status_code == 404
    server.wait_state("replaced", "running")

    assert server.api("PUT", "/api/v3/process/replaced/metadata/owner", json={"team": "a"}).status_code == 200
    assert server.api("GET", "/api/v3/process/replaced/metadata/owner").json() == {"team": "a"}
    assert server.api("PUT", "/api/v3/metadata/site", json="north").status_code == 200
    assert server.api("GET", "/api/v3/metadata/site").json() == "north"
    assert server.db()["metadata"]["site"] == "north"

    listing = server.api("GET", "/api/v3/process?refpattern=cam*&filter=config").json()
    assert [entry["id"] for entry in listing] == ["replaced"]
    assert set(listing[0]) >= {"id", "config"} and "state" not in listing[0]
    assert server.api("GET", "/api/v3/process?idpattern=nomatch*").json() == []
    assert server.api("DELETE", "/api/v3/process/replaced").status_code == 200


def test_about_metrics_skills_swagger(server: Server) -> None:
    assert server.api("GET", "/ping").text == "pong"
    about = server.api("GET", "/api").json()
    assert about["app"] == "datarhei-core" and about["auths"] == []
    assert about["version"]["number"].startswith("16.") and about["created_at"].endswith("Z")
    metrics = server.api("GET", "/metrics")
    assert metrics.status_code == 200
    assert "dragonfork_http_requests_total" in metrics.text
    assert "dragonfork_http_request_duration_seconds_bucket" in metrics.text
    skills = server.api("GET", "/api/v3/skills").json()
    encoders = {codec["name"] for codec in skills["codecs"]["video"] if codec.get("encoders")}
    assert skills["ffmpeg"]["version"]
    assert encoders, skills["codecs"]["video"][:3]
    doc = server.api("GET", "/api/swagger/doc.json").json()
    assert "/api/v3/process" in doc["paths"] and "/api/v3/whep/{id}" in doc["paths"]
    files = {"/api/v3/fs", "/api/v3/fs/{storage}", "/api/v3/fs/{storage}/{filepath}", "/memfs/{filepath}"}
    assert files <= set(doc["paths"]) and set(doc["paths"]["/memfs/{filepath}"]) == {
        "get",
        "head",
        "put",
        "post",
        "delete",
    }
    assert {"api.ProcessConfig", "api.ProgressIO", "api.Error"} <= set(doc["components"]["schemas"])
    page = server.api("GET", "/api/swagger")
    assert (
        page.status_code == 200
        and "swagger-ui-bundle.js" in page.text
        and "http" not in page.text.split("<script src=")[1][:10]
    )
    assert server.api("GET", "/api/swagger/static/swagger-ui-bundle.js").status_code == 200
    document = server.api("GET", "/api/v3/config").json()
    assert document["config"]["db"]["dir"] == str(server.data_dir)
    assert "db.dir" in document["overrides"] and "name" not in document["overrides"]
