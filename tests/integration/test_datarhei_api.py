"""datarhei Core's behaviour where its clients depend on it: about and tokens, CORS, process shapes, log."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Server, lavfi_process, running_logged_in, running_server

USERNAME, PASSWORD = "admin", "datarhei-secret"
ORIGIN = "http://ui.example.test"


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_logged_in(tmp_path_factory.mktemp("datarhei"), USERNAME, PASSWORD) as server:
        yield server


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_tokens_carry_datarhei_claims(core: Server) -> None:
    tokens = core.api("POST", "/api/login", json={"username": USERNAME, "password": PASSWORD}).json()
    access, refresh = claims(tokens["access_token"]), claims(tokens["refresh_token"])
    assert access["exi"] == access["exp"] - access["iat"] == 600  # lifetime in seconds, as datarhei sends it
    assert refresh["exi"] == refresh["exp"] - refresh["iat"] == 24 * 3600
    assert (access["usefor"], refresh["usefor"]) == ("access", "refresh")
    assert access["iss"] == refresh["iss"] == "datarhei-core" and access["sub"] == USERNAME
    renewed = core.api(
        "GET", "/api/login/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}
    ).json()
    assert claims(renewed["access_token"])["exi"] == 600


def test_about_is_public_in_part_without_a_valid_token(core: Server) -> None:
    with httpx.Client(base_url=core.url) as anonymous:
        public = anonymous.get("/api").json()
        forged = anonymous.get("/api", headers={"Authorization": "Bearer x.y.z"}).json()
    assert (
        public == forged == {"app": "datarhei-core", "auths": ["localjwt"], "version": {"number": "16.0.0"}}
    )
    about = core.api("GET", "/api").json()
    assert about["app"] == "datarhei-core" and about["auths"] == ["localjwt"]
    assert about["version"]["number"] == "16.16.0" and "dragonfork" in about["version"]["compiler"]
    assert about["created_at"].endswith("Z") and about["uptime_seconds"] >= 0
    assert about["id"] and about["id"] == core.api("GET", "/api").json()["id"]  # Restreamer needs one


def test_cors_preflight_and_headers_on_the_api(core: Server) -> None:
    with httpx.Client(base_url=core.url) as browser:
        preflight = browser.options(
            "/api/v3/process",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204, preflight.text
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
        assert {"GET", "POST", "PUT", "DELETE"} <= set(
            preflight.headers["Access-Control-Allow-Methods"].split(", ")
        )
        # A preflight on a path that does not exist is answered too (browsers ask before they know).
        assert (
            browser.options(
                "/api/v3/nowhere", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
            ).status_code
            == 204
        )
        refused = browser.get("/api/v3/process", headers={"Origin": ORIGIN})
        assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == "*"
        about = browser.get("/api", headers={"Origin": ORIGIN})
        assert about.headers["Access-Control-Allow-Origin"] == "*" and "Origin" in about.headers["Vary"]
        # Pages and WHEP keep their own policies.
        assert "Access-Control-Allow-Origin" not in browser.get("/", headers={"Origin": ORIGIN}).headers
        whep = browser.options(
            "/api/v3/whep/any", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        )
        assert "If-Match" in whep.headers["Access-Control-Allow-Headers"]


def test_process_shapes_as_datarhei(core: Server) -> None:
    config = lavfi_process(
        "shapes", reference="hall", audio=False, reconnect=True, reconnect_delay_seconds=30
    )
    del config["input"][0]["id"], config["output"][0]["id"]
    created = core.api("POST", "/api/v3/process", json=config)
    assert created.status_code == 200, created.text
    stored = created.json()
    input_id, output_id = stored["input"][0]["id"], stored["output"][0]["id"]
    assert input_id and output_id
    core.wait_state("shapes", "running")
    state = core.state("shapes")
    assert state["reconnect_seconds"] == -1  # running: no reconnect pending
    assert [(io["id"], io["type"]) for io in state["progress"]["inputs"]] == [(input_id, "video")]
    assert {"packet", "inputs", "outputs"} <= set(state["progress"])

    # a partial PUT keeps what it leaves out, as datarhei's update does
    updated = core.api(
        "PUT", "/api/v3/process/shapes", json={"reference": "foyer", "limits": {"cpu_usage": 90}}
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["reference"] == "foyer" and updated.json()["input"][0]["id"] == input_id
    assert updated.json()["limits"] == {**stored["limits"], "cpu_usage": 90.0}

    refused = core.api("PUT", "/api/v3/process/shapes", json={"colour": "red"})
    assert refused.status_code == 400 and "colour" in refused.json()["message"]
    assert "unknown field 'colour'" in refused.json()["message"]

    core.wait_state("shapes", "running")
    assert core.api("PUT", "/api/v3/process/shapes/command", json={"command": "stop"}).status_code == 200
    report = core.api("GET", "/api/v3/process/shapes/report").json()
    assert (
        isinstance(report["created_at"], int) and report["created_at"] == report["history"][-1]["created_at"]
    )
    assert {"created_at", "prelude", "log"} <= set(report["history"][-1])
    assert core.state("shapes")["reconnect_seconds"] == -1  # stopped by order
    assert core.api("DELETE", "/api/v3/process/shapes").status_code == 200


def test_reconnect_seconds_count_down_to_the_next_start(core: Server) -> None:
    config = lavfi_process(
        "retrying", audio=False, options=["-no_such_option", "1"], reconnect=True, reconnect_delay_seconds=30
    )
    assert core.api("POST", "/api/v3/process", json=config).status_code == 200
    core.wait_state("retrying", "failed")
    assert 25 <= core.state("retrying")["reconnect_seconds"] <= 30
    assert core.api("DELETE", "/api/v3/process/retrying").status_code == 200


def test_errors_are_datarhei_errors(core: Server) -> None:
    missing = core.api("GET", "/api/v3/process/nope")
    assert missing.status_code == 404 and missing.json()["message"] == "process 'nope' not found"
    bad = lavfi_process("bad")
    bad["input"][0]["address"] = ""
    body = core.api("POST", "/api/v3/process", json=bad).json()
    assert body["code"] == 400 and "input.0.address" in body["message"]
    assert all(isinstance(entry, str) for entry in body["details"]) and body["details"]
    unknown = core.api("GET", "/api/v3/log?format=xml")
    assert unknown.status_code == 400 and "format" in unknown.json()["message"]


def test_restreamer_resources_query_gets_the_system_metrics(core: Server) -> None:
    """Restreamer UI's resource view asks for datarhei's system metrics and reads values[0][1] of each."""
    names = ["uptime_uptime", "cpu_ncpu", "cpu_idle", "mem_total", "mem_free", "session_active"]
    answer = core.api("POST", "/api/v3/metrics", json={"metrics": [{"name": name} for name in names]})
    assert answer.status_code == 200, answer.text
    value = {series["name"]: series["values"][0][1] for series in answer.json()["metrics"]}
    assert value["cpu_ncpu"] >= 1 and value["mem_total"] >= value["mem_free"] > 0
    assert value["uptime_uptime"] >= 0 and 0 <= value["cpu_idle"] <= 100
    assert "session_active" not in value  # not a metric here: no series, which Restreamer reads as 0


def test_log_is_bounded_by_max_lines_and_metrics_can_be_off(tmp_path: Path) -> None:
    env = {"CORE_LOG_MAX_LINES": "3", "CORE_METRICS_ENABLE": "false"}
    with running_server(tmp_path, **env) as server:
        for number in range(3):
            process = lavfi_process(f"noise-{number}", autostart=False)
            assert server.api("POST", "/api/v3/process", json=process).status_code == 200
        lines = server.api("GET", "/api/v3/log").json()
        raw = server.api("GET", "/api/v3/log?format=raw").json()
        assert len(lines) == len(raw) == 3
        assert all({"ts", "level", "message"} <= set(event) for event in raw)
        assert all(event["message"] in line for event, line in zip(raw, lines, strict=True))
        disabled = server.api("GET", "/api/v3/metrics")
        assert disabled.status_code == 404 and "metrics.enable" in disabled.json()["message"]
        query = server.api("POST", "/api/v3/metrics", json={"metrics": []})
        assert query.status_code == 404
