"""The wire contract: every response of every route that datarhei Core v16's swagger and dragonfork share.

datarhei's own API description (``shared/reference/datarhei-core-v16-swagger.json``, beside the checkout:
CI clones main into a folder with a copy of ``shared/`` next to it) is loaded by bravado-core, a Swagger 2.0
library from PyPI, which checks the description itself and then validates each response body against the
schema the description gives for that operation and status: nothing of datarhei's schemas is copied here.

A status the swagger does not list for an operation must be an ``api.Error`` and one of the faults datarhei
answers the same way on every route (401 without a token, 404 for an unknown id, 405, 413, 415).

Two known divergences of datarhei from its own description are bridged, not hidden: a metrics query's
values go over the wire as ``[unix seconds, value]`` (datarhei's ``MetricsResponseValue.MarshalJSON``),
which the swagger describes as ``{"ts": string, "value": number}``: the test turns each pair into that
object before validating, and checks the pairs themselves; and ``/api/v3/log?format=raw`` answers
``api.LogEvent`` objects, while the swagger lists only the console format's strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bravado_core.response import get_response_spec
from bravado_core.spec import Spec
from bravado_core.validate import validate_schema_object
from harness import Server, lavfi_process, running_logged_in
from jsonschema.exceptions import ValidationError

SWAGGER = Path("shared", "reference", "datarhei-core-v16-swagger.json")
USERNAME, PASSWORD = "admin", "contract-secret"
# Faults datarhei answers alike on every route, whether or not the operation's description lists them.
ANY_ROUTE_FAULTS = {401, 404, 405, 413, 415}
FILE = "/api/v3/fs/{storage}/{filepath}"


def find_swagger() -> Path:
    """datarhei's swagger in ``shared/`` beside the checkout (or beside a folder above it, for worktrees)."""
    checkout = Path(__file__).resolve().parents[2]
    looked = [parent / SWAGGER for parent in checkout.parents]
    for candidate in looked:
        if candidate.is_file():
            return candidate
    pytest.fail(
        f"datarhei's swagger is missing: looked for {', '.join(map(str, looked))}; the contract test needs "
        "the shared/ folder beside the checkout (CI lays a copy of it there)",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def swagger() -> Spec:
    raw = json.loads(find_swagger().read_text())
    return Spec.from_dict(raw, config={"validate_swagger_spec": True, "use_models": False})


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp("contract")
    with running_logged_in(tmp_path, USERNAME, PASSWORD, CORE_METRICS_INTERVAL_SEC="1") as server:
        yield server


def template_of(swagger: Spec, method: str, path: str) -> str | None:
    """The swagger path template (``/api/v3/process/{id}``) a concrete path belongs to."""
    for template, operations in swagger.spec_dict["paths"].items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if method in operations and re.fullmatch(pattern, path):
            return template
    return None


class Contract:
    """Sends requests, validates each answer against the swagger, and records what was covered."""

    def __init__(self, swagger: Spec, server: Server) -> None:
        self.swagger = swagger
        self.server = server
        self.covered: dict[tuple[str, str], set[str]] = {}

    def call(self, method: str, path: str, expect: int, *, token: str | None = "valid", **kwargs: Any) -> Any:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {self.server.token if token == 'valid' else token}"
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            response = client.request(method, path, headers=headers, **kwargs)
        assert response.status_code == expect, (
            f"{method} {path}: {response.status_code} {response.text[:400]}"
        )
        template = template_of(self.swagger, method.lower(), path.split("?")[0])
        assert template is not None, f"{method} {path} is not in datarhei's swagger"
        body = self.validate(method.lower(), template, response, raw_log="format=raw" in path)
        kind = "success" if response.status_code < 400 else "error"
        self.covered.setdefault((method.lower(), template), set()).add(kind)
        return body

    def validate(self, method: str, template: str, response: httpx.Response, *, raw_log: bool) -> Any:
        operation = self.swagger.get_op_for_request(method.upper(), template)
        status = response.status_code
        documented = str(status) in operation.op_spec["responses"]
        if not documented:
            assert status in ANY_ROUTE_FAULTS, f"{method} {template}: {status} is not datarhei's answer"
        if template == FILE and status < 300:
            return response.text  # a file's bytes: datarhei's "produces" lists JSON for the errors
        produces = operation.op_spec.get("produces", ["application/json"])
        if not documented or status >= 400 or "application/json" in produces:  # errors: api.Error
            assert response.headers["content-type"].startswith("application/json"), response.headers
            body = response.json()
        else:
            body = response.text
        schema = (
            get_response_spec(status, operation).get("schema")
            if documented
            else self.swagger.spec_dict["definitions"]["api.Error"]
        )
        if raw_log and documented:
            # datarhei's handler answers format=raw with api.LogEvent objects; its generated swagger kept
            # only the other @Success line (strings), so the events are checked against api.LogEvent.
            schema = {"type": "array", "items": {"$ref": "#/definitions/api.LogEvent"}}
        if template == "/api/v3/srt" and status == 200:
            # datarhei's handler answers one api.SRTChannels object; its swagger says an array of them
            schema = {"$ref": "#/definitions/api.SRTChannels"}
        if schema is None:
            return body
        checked = (
            metrics_values_as_described(body) if template == "/api/v3/metrics" and method == "post" else body
        )
        try:
            validate_schema_object(self.swagger, schema, checked)
        except ValidationError as exc:
            pytest.fail(f"{method.upper()} {template} → {status}: {exc.message} at {list(exc.absolute_path)}")
        return body


def metrics_values_as_described(body: Any) -> Any:
    """A metrics response with each ``[ts, value]`` pair as the swagger's ``{"ts", "value"}`` object."""
    if not isinstance(body, dict) or not isinstance(body.get("metrics"), list):
        return body
    metrics = []
    for series in body["metrics"]:
        values = series.get("values", [])
        assert all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int | float) for x in pair)
            for pair in values
        ), values
        metrics.append({**series, "values": [{"ts": str(ts), "value": value} for ts, value in values]})
    return {**body, "metrics": metrics}


def shared_operations(swagger: Spec, server: Server) -> set[tuple[str, str]]:
    """The swagger's operations that dragonfork's own description (or the page showing it) has."""
    ours = server.api("GET", "/api/swagger/doc.json").json()["paths"] | {"/api/swagger": {"get": {}}}
    theirs = swagger.spec_dict["paths"]
    return {
        (method, path)
        for path, operations in theirs.items()
        for method in operations
        if method in ours.get(path, {})
    }


def test_every_shared_route_answers_as_datarhei_describes(swagger: Spec, core: Server) -> None:
    contract = Contract(swagger, core)
    call = contract.call
    process = lavfi_process("contract", audio=True)
    del process["input"][0]["id"]  # generated, as datarhei's API does

    # about, liveness, Prometheus, the API description (no token needed)
    public = call("GET", "/api", 200, token=None)
    assert set(public) == {"app", "auths", "version"} and set(public["version"]) == {"number"}
    assert public == {"app": "datarhei-core", "auths": ["localjwt"], "version": {"number": "16.0.0"}}
    call("GET", "/api", 200, token="not-a-token")
    about = call("GET", "/api", 200)
    assert about["version"]["number"] == "16.16.0" and about["name"] == "dragonfork"
    assert set(about) == {"app", "auths", "name", "id", "created_at", "uptime_seconds", "version"}
    assert call("GET", "/ping", 200, token=None) == "pong"
    assert "dragonfork_http_requests_total" in call("GET", "/metrics", 200, token=None)
    assert "swagger-ui" in call("GET", "/api/swagger", 200, token=None)

    # login and refresh
    tokens = call("POST", "/api/login", 200, token=None, json={"username": USERNAME, "password": PASSWORD})
    call("POST", "/api/login", 401, token=None, json={"username": USERNAME, "password": "wrong"})
    call("POST", "/api/login", 400, token=None, json={"username": USERNAME})
    call("GET", "/api/login/refresh", 200, token=tokens["refresh_token"])
    call("GET", "/api/login/refresh", 401, token=tokens["access_token"])

    # processes
    created = call("POST", "/api/v3/process", 200, json=process)
    assert created["input"][0]["id"] and created["id"] == "contract"
    call("POST", "/api/v3/process", 400, json=process)  # the id exists
    call("POST", "/api/v3/process", 400, json={**process, "id": "other", "colour": "red"})
    call("POST", "/api/v3/process", 401, token=None, json=process)
    call("POST", "/api/v3/process", 415, content=b"{}", headers={"Content-Type": "text/plain"})
    core.wait_for(lambda: core.state("contract")["progress"]["fps"] > 0, 20, "the process to run")
    listing = call("GET", "/api/v3/process", 200)
    assert [entry["id"] for entry in listing] == ["contract"]
    call("GET", "/api/v3/process?filter=metadata", 200)
    call("GET", "/api/v3/process", 401, token=None)
    full = call("GET", "/api/v3/process/contract", 200)
    assert {"config", "state", "report", "metadata"} <= set(full)
    call("GET", "/api/v3/process/missing", 404)
    call("PUT", "/api/v3/process/contract", 200, json={"reference": "lobby"})
    call("PUT", "/api/v3/process/contract", 400, json={"input": []})
    call("PUT", "/api/v3/process/missing", 404, json=process)
    call("GET", "/api/v3/process/contract/config", 200)
    call("GET", "/api/v3/process/missing/config", 404)
    core.wait_for(lambda: core.state("contract")["progress"]["fps"] > 0, 20, "the restarted process to run")
    state = call("GET", "/api/v3/process/contract/state", 200)
    assert {entry["type"] for entry in state["progress"]["inputs"]} == {"video", "audio"}
    call("GET", "/api/v3/process/missing/state", 404)
    call("GET", "/api/v3/process/contract/report", 200)
    call("GET", "/api/v3/process/missing/report", 404)
    probe = call("GET", "/api/v3/process/contract/probe", 200)
    assert {stream["type"] for stream in probe["streams"]} == {"video", "audio"}
    call("GET", "/api/v3/process/missing/probe", 404)
    call("PUT", "/api/v3/process/contract/command", 200, json={"command": "restart"})
    call("PUT", "/api/v3/process/contract/command", 400, json={"command": "jump"})
    call("PUT", "/api/v3/process/missing/command", 404, json={"command": "start"})

    # metadata, per process and global
    call("PUT", "/api/v3/process/contract/metadata/restreamer-ui", 200, json={"name": "Lobby"})
    assert call("GET", "/api/v3/process/contract/metadata/restreamer-ui", 200) == {"name": "Lobby"}
    call("GET", "/api/v3/process/contract/metadata/absent", 404)
    call("PUT", "/api/v3/process/missing/metadata/key", 404, json=1)
    call(
        "PUT",
        "/api/v3/process/contract/metadata/key",
        400,
        content=b"{",
        headers={"Content-Type": "application/json"},
    )
    call("PUT", "/api/v3/metadata/restreamer-ui", 200, json={"version": "2.12.0"})
    call(
        "PUT",
        "/api/v3/metadata/restreamer-ui",
        400,
        content=b"[",
        headers={"Content-Type": "application/json"},
    )
    assert call("GET", "/api/v3/metadata/restreamer-ui", 200) == {"version": "2.12.0"}
    call("GET", "/api/v3/metadata/absent", 404)

    # skills, log, metrics
    skills = call("GET", "/api/v3/skills", 200)
    assert skills["filter"] and skills["hwaccels"] is not None and skills["devices"]["demuxers"]
    assert call("GET", "/api/v3/skills/reload", 200)["ffmpeg"]["version"] == skills["ffmpeg"]["version"]
    call("GET", "/api/v3/skills", 401, token=None)
    call("GET", "/api/v3/skills/reload", 401, token="expired.or.forged")
    lines = call("GET", "/api/v3/log", 200)
    assert any("ready" in line for line in lines)
    call("GET", "/api/v3/log?format=raw", 200)
    call("GET", "/api/v3/log", 401, token=None)
    described = call("GET", "/api/v3/metrics", 200)
    assert "dragonfork_process_fps" in {entry["name"] for entry in described}
    call("GET", "/api/v3/metrics", 401, token=None)
    query = {"timerange_sec": 60, "interval_sec": 1, "metrics": [{"name": "dragonfork_process_fps"}]}

    def sampled_running() -> bool:
        # two samples, the newest after the restart above brought the fps back (a sample taken while the
        # process was restarting reads 0)
        values = core.api("POST", "/api/v3/metrics", json=query).json()["metrics"][0]["values"]
        return len(values) >= 2 and values[-1][1] > 0

    core.wait_for(sampled_running, 20, "two samples of the fps, the newest of a running process")
    series = call("POST", "/api/v3/metrics", 200, json=query)["metrics"]
    assert series[0]["labels"] == {"process": "contract"} and series[0]["values"][-1][1] > 0
    call("POST", "/api/v3/metrics", 200, json={"metrics": [{"name": "dragonfork_process_fps"}]})
    call("POST", "/api/v3/metrics", 400, json={"metrics": [{"name": "x", "labels": {"process": "("}}]})
    call("POST", "/api/v3/metrics", 400, json={"timerange_sec": "soon"})

    assert set(call("GET", "/api/v3/session?collectors=hls,webrtc", 200)) == {"hls", "webrtc"}
    assert "ffmpeg" in call("GET", "/api/v3/session/active", 200)
    call("GET", "/api/v3/session", 401, token=None)
    call("GET", "/api/v3/session/active", 401, token=None)
    widget = call("GET", "/api/v3/widget/process/contract", 200, token=None)
    assert set(widget) == {"current_sessions", "total_sessions", "uptime"}
    call("GET", "/api/v3/widget/process/nope", 404, token=None)

    # the RTMP and SRT channels (both servers off here: no channels)
    assert call("GET", "/api/v3/rtmp", 200) == []
    assert call("GET", "/api/v3/srt", 200)["publisher"] == {}
    call("GET", "/api/v3/rtmp", 401, token=None)
    call("GET", "/api/v3/srt", 401, token=None)

    # the configuration: datarhei's document, a partial PUT, its faults, the reload
    document = call("GET", "/api/v3/config", 200)
    assert (
        document["config"]["api"]["auth"]["enable"] is True and "api.auth.username" in document["overrides"]
    )
    call("GET", "/api/v3/config", 401, token=None)
    assert (
        call("PUT", "/api/v3/config", 200, json={"version": 3, "ffmpeg": {"log": {"max_lines": 60}}}) == "OK"
    )
    call("PUT", "/api/v3/config", 400, json={"version": 3, "ffmpeg": {"max_processes": "many"}})
    call("PUT", "/api/v3/config", 400, json={"ffmpeg": {"max_processes": 1}})  # no version
    call("PUT", "/api/v3/config", 409, json={"version": 3, "db": {"dir": "/elsewhere"}})
    assert call("GET", "/api/v3/config/reload", 200) == "OK"
    call("GET", "/api/v3/config/reload", 401, token=None)
    assert call("GET", "/api/v3/config", 200)["config"]["ffmpeg"]["log"]["max_lines"] == 60

    # the filesystems: list them, write, list, read and delete a file of memfs
    assert {(fs["name"], fs["mount"]) for fs in call("GET", "/api/v3/fs", 200)} >= {("mem", "/memfs")}
    call("GET", "/api/v3/fs", 401, token=None)
    call("PUT", "/api/v3/fs/mem/contract-notes.txt", 201, content=b"first")
    call("PUT", "/api/v3/fs/mem/contract-notes.txt", 204, content=b"second")
    call("PUT", "/api/v3/fs/nowhere/notes.txt", 404, content=b"lost")
    (listed,) = call("GET", "/api/v3/fs/mem?glob=/contract-*&sort=size&order=desc", 200)
    assert listed["name"] == "/contract-notes.txt" and listed["size_bytes"] == len(b"second")
    call("GET", "/api/v3/fs/nowhere", 404)
    assert call("GET", "/api/v3/fs/mem/contract-notes.txt", 200) == "second"
    call("GET", "/api/v3/fs/mem/contract-absent.txt", 404)
    call("DELETE", "/api/v3/fs/mem/contract-notes.txt", 200)
    call("DELETE", "/api/v3/fs/mem/contract-notes.txt", 404)

    call("DELETE", "/api/v3/process/contract", 200)
    call("DELETE", "/api/v3/process/contract", 404)

    shared = shared_operations(swagger, core)
    assert len(shared) >= 27, sorted(shared)
    assert {("get", "/api/v3/config"), ("put", "/api/v3/config"), ("get", "/api/v3/config/reload")} <= shared
    missing = {}
    for method, path in shared:
        wanted = {"success"} if path in PUBLIC_ONLY else {"success", "error"}
        if lacking := wanted - contract.covered.get((method, path), set()):
            missing[f"{method.upper()} {path}"] = sorted(lacking)
    assert not missing, missing
    assert "Traceback" not in core.log()


# Routes without a token and without a fault a client can cause: only their success is checked.
PUBLIC_ONLY = {"/ping", "/metrics", "/api/swagger", "/api"}
