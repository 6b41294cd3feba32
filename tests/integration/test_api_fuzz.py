"""Fuzz every operation of the HTTP API from its own OpenAPI description (schemathesis + hypothesis).

The rule under test: bad input gets a clear error (a 4xx JSON ``{"code", "message", "details"}`` whose code
is the status, a 400 naming the field) and never a 5xx or a traceback; responses match the documented
schemas and are strict JSON; and nothing else breaks: afterwards the server answers, ``db.json`` holds
exactly what the API lists, and a normal process still runs.

One real server takes the fuzzing: schemathesis's coverage phase (boundary and wrong-typed values of every
parameter and body field, undeclared methods) and its fuzzing phase (random positive and negative cases: 15
per operation, 150 for process configs). In the fuzzing phase half of the cases aim their ``{id}`` at a
process that exists (``TARGET``, put back whenever the fuzzer deleted or renamed it; ``LIVE``, with media,
for WHEP), so the routes behind the lookup are reached, not only their 404; and half of the process
configs get the parts JSON Schema cannot express made valid (ids, addresses in the data directory, an
output), so creation and replacement are reached too. Fuzzed processes never start on their own or respawn
(``autostart`` and ``reconnect`` are forced off) and the server refuses every URL address: a random config
that FFmpeg accepts costs one short local run, and no traffic leaves the machine. Generation is seeded and
keeps no example database, so CI replays the same cases every time.
"""

from __future__ import annotations

import collections
import json
import random
import re
from collections.abc import Iterator
from typing import Any

import hypothesis
import hypothesis.strategies as st
import imageio_ffmpeg
import pytest
import schemathesis
from harness import Server, lavfi_process, running_server
from schemathesis import Case, CheckContext, HookContext, Response
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from whep_peers import aiortc_offer

DOC = "/api/swagger/doc.json"
TARGET = "fuzz-target"
LIVE = "fuzz-live"
USERNAME, PASSWORD = "admin", "fuzz-password"
# Any "scheme:" address (http:, tcp:, rtmp:, udp:, ...) is refused: fuzzed processes touch no network.
NO_URLS = json.dumps([r"^[A-Za-z][A-Za-z0-9+.-]*:"])
SERVER_ENV = {
    "CORE_FFMPEG_ACCESS_INPUT_BLOCK": NO_URLS,
    "CORE_FFMPEG_ACCESS_OUTPUT_BLOCK": NO_URLS,
    "CORE_WEBRTC_HANDSHAKE_TIMEOUT_SECONDS": "3",
    # a WHEP offer or a WHIP Matroska read of a name that is not live waits this long before its 409/404
    "CORE_WEBRTC_PUBLISHER_WAIT_SECONDS": "0.1",
}
# Fuzzed configs are stored and reloaded: the environment pins what would lock the fuzzer out (auth,
# read-only, body size, CPU admission: a stored webrtc.admission_cpu_percent near 0 answers every offer
# 503 once the server uses any CPU, and so would a viewer or session limit near 0), let files or traffic
# leave the sandbox (the disk dir, ICE servers, an RTMP or SRT server on a fixed port) or take the media
# away (the binary, WebRTC). Environment values win over stored ones, as in datarhei.
PINNED_ENV = {
    "CORE_API_AUTH_ENABLE": "false",
    "CORE_RTMP_ENABLE": "false",
    "CORE_SRT_ENABLE": "false",
    "CORE_API_READ_ONLY": "false",
    "CORE_API_MAX_BODY_BYTES": str(1024 * 1024),
    "CORE_FFMPEG_BINARY": imageio_ffmpeg.get_ffmpeg_exe(),
    "CORE_WEBRTC_ENABLE": "true",
    "CORE_WEBRTC_ADMISSION_CPU_PERCENT": "100",
    "CORE_WEBRTC_ICE_SERVERS": "[]",
    "CORE_WEBRTC_PUBLIC_IPS": "[]",
    "CORE_WEBRTC_MAX_VIEWERS_PER_CORE": "300",
    "CORE_WEBRTC_MAX_PEERS_PER_STREAM": "100",
    "CORE_SESSIONS_MAX_SESSIONS": "0",
    "CORE_SESSIONS_MAXBITRATE_MBIT": "0",
}
PROCESS_BODIES = ("/api/v3/process", "/api/v3/process/{id}")
FUZZ_SETTINGS: dict[str, Any] = {
    "seed": 20260611,
    # 15 random cases per operation on top of the coverage phase, which sends every boundary and wrong-typed
    # value of every field anyway; 30 cost CI half a minute more (the deep cases below keep their 150)
    "generation": {"max-examples": 15, "database": "none"},
    "suppress-health-check": ["all"],
}
# The process config is the richest input; 150 examples are what it took to find U+0000 in an address.
DEEP_SETTINGS = FUZZ_SETTINGS | {
    "operations": [
        {
            "include-path": list(PROCESS_BODIES),
            "include-method": ["POST", "PUT"],
            "generation": {"max-examples": 150},
        }
    ]
}
JSON_HEADERS = {"Content-Type": "application/json"}
SDP_HEADERS = {"Content-Type": "application/sdp"}
TRICKLE_HEADERS = {"Content-Type": "application/trickle-ice-sdpfrag"}

schemathesis.serializer.alias(["application/sdp", "application/trickle-ice-sdpfrag"], "text/plain")

# Requests sent per server and operation: the checks after fuzzing first prove that fuzzing happened.
sent: collections.defaultdict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)


def target_config() -> dict[str, Any]:
    """A stopped process whose start costs half a second of a tiny test pattern."""
    source = {"id": "video", "address": "testsrc2=size=64x48:rate=5:duration=0.5", "options": ["-f", "lavfi"]}
    return lavfi_process(TARGET, audio=False, autostart=False, input=[source])


def ensure_target(server: Server) -> None:
    if server.api("GET", f"/api/v3/process/{TARGET}").status_code == 404:
        response = server.api("POST", "/api/v3/process", json=target_config())
        assert response.status_code == 200, response.text


def strict_json(text: str) -> Any:
    """Parse as RFC 8259 JSON: no NaN or Infinity, which Python's parser would let through."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def fields_named(details: Any) -> list[str]:
    """The field each entry of datarhei's ``details`` (``["input.0.address: ...", ...]``) names first."""
    assert isinstance(details, list) and all(isinstance(entry, str) for entry in details), details
    return [named.group(1) for entry in details if (named := re.match(r"([\w.-]+): ", entry))]


def names_a_field(details: Any) -> bool:
    return bool(details) and len(fields_named(details)) == len(details)


def error_is_clear_json(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """No traceback in any body; JSON bodies are strict JSON; every error is ``{code, message, details}``
    with code == status, and a 400, 413 or 415 names the field it is about."""
    text = response.content.decode("utf-8", "replace")
    assert "Traceback" not in text, f"a traceback in a {response.status_code} body: {text[:500]}"
    if case.method.upper() == "HEAD":
        assert not text, f"a HEAD answer with a body: {text[:500]}"
        return None  # no body, error or not (RFC 9110 section 9.3.2), whatever its Content-Type says
    if response.headers.get("content-type", [""])[0].startswith("application/json"):
        strict_json(text)
    if response.status_code < 400:
        return None
    body = strict_json(text)
    if response.status_code == 409 and case.operation.path == "/api/v3/config":  # datarhei's api.ConfigError
        assert body and all(isinstance(messages, list) and messages for messages in body.values()), text
        return None
    assert isinstance(body, dict) and set(body) == {"code", "message", "details"}, text[:500]
    assert body["code"] == response.status_code, text[:500]
    assert isinstance(body["message"], str) and body["message"].strip(), text[:500]
    if response.status_code in (400, 413, 415):
        assert names_a_field(body["details"]), f"a {response.status_code} that names no field: {text[:500]}"
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_is_clear_json,
]


def aim_half_at_existing(context: HookContext, path_parameters: dict[str, Any] | None) -> Any:
    """flatmap_path_parameters: the generated ``id``, or the id of a process that exists."""
    assert context.operation is not None
    if not path_parameters or "id" not in path_parameters:
        return st.just(path_parameters)
    existing = LIVE if context.operation.path.startswith("/api/v3/whep/") else TARGET
    return st.sampled_from([path_parameters, {**path_parameters, "id": existing}])


def shaped_config(body: dict[str, Any]) -> dict[str, Any]:
    """The config with what its JSON Schema cannot say made valid: ids, local addresses, an output."""
    shaped = {key: value for key, value in body.items() if key not in ("id", "webrtc")}
    for kind in ("input", "output"):
        if isinstance(shaped.get(kind), list):
            shaped[kind] = [
                {**io, "id": f"{kind}{index}", "address": "{diskfs}/" + str(io.get("address"))}
                if isinstance(io, dict)
                else io
                for index, io in enumerate(shaped[kind])
            ]
    if not shaped.get("output"):
        shaped["output"] = [{"id": "null", "address": "-", "options": ["-f", "null"]}]
    return shaped


def never_started(config: dict[str, Any]) -> dict[str, Any]:
    """``autostart`` and ``reconnect`` off; a non-boolean stays as generated (it is a 400)."""
    flags = ("autostart", "reconnect")
    return config | {flag: False for flag in flags if isinstance(config.get(flag, False), bool)}


def bounded_configs(context: HookContext, body: Any) -> Any:
    """flatmap_body: process configs as generated or shaped to pass validation, never started on their own."""
    assert context.operation is not None
    if context.operation.path not in PROCESS_BODIES or not isinstance(body, dict):
        return st.just(body)
    return st.sampled_from([never_started(body), never_started(shaped_config(body))])


def load_schema(server: Server, settings: dict[str, Any]) -> Any:
    config = schemathesis.Config.from_dict(settings)
    schema = schemathesis.openapi.from_url(server.url + DOC, config=config)
    schema.hook("flatmap_path_parameters")(aim_half_at_existing)
    schema.hook("flatmap_body")(bounded_configs)
    return schema


def fuzz_once(case: Case, server: Server, headers: dict[str, str] | None = None) -> None:
    if case.path_parameters and case.path_parameters.get("id") == TARGET:
        ensure_target(server)
    sent[server.url][case.operation.label] += 1
    case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)


def json_error(response: Any, status: int | None = None) -> dict[str, Any]:
    """The error body, after checking the status (any 4xx when None) and the shape every error has."""
    if status is None:
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
        status = response.status_code
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = strict_json(response.text)
    assert set(body) == {"code", "message", "details"} and body["code"] == status, body
    assert "Traceback" not in response.text
    return dict(body)


# -- auth off: every operation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("fuzz")
    pinned = PINNED_ENV | {"CORE_STORAGE_DISK_DIR": str(directory / "data" / "data")}
    with running_server(directory, **SERVER_ENV, **pinned) as server:
        ensure_target(server)
        live = server.api("POST", "/api/v3/process", json=lavfi_process(LIVE, webrtc=True, audio=False))
        assert live.status_code == 200, live.text
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Server) -> Any:
    return load_schema(fuzz_server, DEEP_SETTINGS)


def test_openapi_document_is_valid_openapi_3_0(api_schema: Any) -> None:
    """Regression: pydantic's JSON Schema 2020-12 (a numeric exclusiveMinimum) made the document invalid,
    and the process config could not be generated from it."""
    api_schema.validate()
    # 39 + RTMP, SRT, ingest, 6 of WHIP and 11 of the files (/api/v3/fs, /memfs)
    assert len(list(api_schema.get_all_operations())) == 59
    create = api_schema["/api/v3/process"]["POST"].as_strategy()
    just_generate = hypothesis.settings(database=None, phases=[hypothesis.Phase.generate])
    case = hypothesis.find(create, lambda case: True, settings=just_generate)
    assert isinstance(case.body, dict)


fuzz = schemathesis.pytest.from_fixture("api_schema")


@fuzz.parametrize()
def test_every_operation(case: Case, fuzz_server: Server) -> None:
    fuzz_once(case, fuzz_server)


def test_json_the_server_cannot_keep_is_a_400_naming_the_field(fuzz_server: Server) -> None:
    """Regression: NaN and Infinity (or 1e999) were stored and sent back as ``NaN``/``Infinity``, which is
    not JSON (a browser's JSON.parse rejects the whole process list); U+0000 in an address (found by the
    fuzzer) and nesting past Python's recursion limit were 500s."""
    metadata = "/api/v3/metadata/fuzz-regression"
    for raw, field in (
        (b"NaN", "body"),
        (b'{"level": -Infinity}', "body"),
        (b'{"level": 1e999}', "body"),
        (b"[" * 100_000 + b"]" * 100_000, "body"),
        (b"[" * 65 + b"]" * 65, "0." * 63 + "0"),
        (b'{"note": "a\\u0000b"}', "note"),
        (b'{"note": ["\\ud800"]}', "note.0"),
        (b'{"\\udfff": 1}', "body"),
    ):
        error = json_error(fuzz_server.api("PUT", metadata, content=raw, headers=JSON_HEADERS), 400)
        assert fields_named(error["details"]) == [field] and error["message"].startswith(field), error
    assert fuzz_server.api("PUT", metadata, content=b"[" * 64 + b"]" * 64, headers=JSON_HEADERS).is_success
    assert fuzz_server.api(
        "PUT", metadata, content=b'"\\ud83d\\ude00 \\u00e9"', headers=JSON_HEADERS
    ).is_success
    assert strict_json(fuzz_server.api("GET", metadata).text) == "\U0001f600 é"

    config = lavfi_process("fuzz-regression", autostart=False)
    config["input"][0]["address"] = "testsrc2\x00"
    error = json_error(fuzz_server.api("POST", "/api/v3/process", json=config), 400)
    assert fields_named(error["details"]) == ["input.0.address"] and "U+0000" in error["message"]
    config = json.dumps(lavfi_process("fuzz-regression", autostart=False, limits={"cpu_usage": 1}))
    raw = config.replace('"cpu_usage": 1', '"cpu_usage": 1e400').encode()
    error = json_error(fuzz_server.api("POST", "/api/v3/process", content=raw, headers=JSON_HEADERS), 400)
    assert "out of range" in error["message"]
    assert fuzz_server.api("GET", "/api/v3/process/fuzz-regression").status_code == 404
    assert "unhandled error" not in fuzz_server.log()


def test_whep_garbage_bodies_are_4xx_json(fuzz_server: Server) -> None:
    """Hand-written bodies schemathesis does not make: bytes that are not UTF-8, a real session's trickle
    PATCH with nonsense, huge and mistyped bodies; afterwards a real offer is still answered."""
    fuzz_server.wait_for(lambda: fuzz_server.state(LIVE)["webrtc"]["ready"], 30, f"{LIVE} to have media")
    whep = f"/api/v3/whep/{LIVE}"
    noise = random.Random(7).randbytes
    for body in (
        b"",
        noise(4096),
        b"\xff\xfe\x00v=0\r\n",
        b"v=0\r\n" * 20_000,
        b"v=0\r\nm=video 9\r\n\x00",
    ):
        json_error(fuzz_server.api("POST", whep, content=body, headers=SDP_HEADERS))
    json_error(fuzz_server.api("POST", whep, content=b"x" * 2_000_000, headers=SDP_HEADERS), 413)
    for content_type in ("application/json", "text/plain", "application/sdp-but-not", ""):
        json_error(fuzz_server.api("POST", whep, content=b"v=0", headers={"Content-Type": content_type}), 415)

    answer = fuzz_server.api("POST", whep, content=aiortc_offer(audio="none"), headers=SDP_HEADERS)
    assert answer.status_code == 201, answer.text
    session = answer.headers["Location"]
    for body in (
        noise(512),
        b"a=candidate:garbage\r\n",
        b"a=candidate:1 1 udp notanumber 127.0.0.1 9 typ host\r\n",
        b"a=ice-ufrag:x\r\na=ice-pwd:y\r\n",
        b"a=mid:\xff\r\na=candidate:" + b"9" * 5000 + b"\r\n",
    ):
        response = fuzz_server.api("PATCH", session, content=body, headers=TRICKLE_HEADERS)
        if response.status_code != 204:
            json_error(response)
    json_error(fuzz_server.api("PATCH", session, content=b"a=end-of-candidates", headers=SDP_HEADERS), 415)
    assert fuzz_server.api("DELETE", session).status_code == 204
    again = fuzz_server.api("POST", whep, content=aiortc_offer(audio="none"), headers=SDP_HEADERS)
    assert again.status_code == 201 and again.text.startswith("v=0"), again.text
    assert fuzz_server.api("DELETE", again.headers["Location"]).status_code == 204
    assert "unhandled error" not in fuzz_server.log()


def test_nothing_else_broke(fuzz_server: Server, api_schema: Any) -> None:
    """After the fuzzing: every operation was fuzzed, no request failed inside the server, db.json holds
    exactly what the API lists, every process deletes cleanly, and a normal process still runs."""
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(sent[fuzz_server.url]), labels ^ set(sent[fuzz_server.url])
    print(f"fuzzed {len(labels)} operations with {sum(sent[fuzz_server.url].values())} requests")
    assert sum(sent[fuzz_server.url].values()) > 1000
    assert fuzz_server.api("GET", "/ping").text == "pong"

    def listed() -> dict[str, Any]:
        response = fuzz_server.api("GET", "/api/v3/process?filter=config,metadata")
        return {entry["id"]: (entry["config"], entry["metadata"]) for entry in strict_json(response.text)}

    def stored() -> dict[str, Any]:
        db = strict_json((fuzz_server.data_dir / "db.json").read_text())
        assert db["metadata"] == strict_json(fuzz_server.api("GET", "/api/v3/metadata").text)
        return {entry["config"]["id"]: (entry["config"], entry["metadata"]) for entry in db["processes"]}

    assert TARGET in listed() and listed() == stored()
    for process_id in listed():
        response = fuzz_server.api("DELETE", f"/api/v3/process/{process_id}")
        assert response.status_code == 200, response.text
    assert listed() == stored() == {}

    assert fuzz_server.api("POST", "/api/v3/process", json=lavfi_process("after-fuzz")).status_code == 200
    fuzz_server.wait_state("after-fuzz", "running", timeout=20)
    assert fuzz_server.api("DELETE", "/api/v3/process/after-fuzz").status_code == 200
    log = fuzz_server.log()
    assert "unhandled error" not in log and "Traceback" not in log


# -- auth on: the token checks and the routes a client reaches first, with and without a valid token ------


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Thousands of fuzzed logins fail on purpose: the per-address throttle (tested in test_hostile_auth.py)
    # would answer them all 429 and the routes behind it would go unfuzzed.
    env = {**SERVER_ENV, "CORE_API_AUTH_ENABLE": "true", "CORE_API_AUTH_LOGIN_FREE_FAILURES": "1000000"}
    env |= {"CORE_API_AUTH_USERNAME": USERNAME, "CORE_API_AUTH_PASSWORD": PASSWORD}
    with running_server(tmp_path_factory.mktemp("fuzz-auth"), **env) as server:
        server.login(USERNAME, PASSWORD)
        yield server


@pytest.fixture(scope="module")
def auth_schema(auth_server: Server) -> Any:
    return load_schema(auth_server, FUZZ_SETTINGS)


fuzz_auth = (
    schemathesis.pytest.from_fixture("auth_schema")
    .include(path_regex=r"^/api/(login|v3/metadata/|v3/process/\{id\}/state)")
    .include(path_regex="^/api/v3/process$", method="GET")
)


@fuzz_auth.parametrize()
def test_auth_operations(case: Case, auth_server: Server) -> None:
    """Each case twice: as generated (no valid token: 401, or the login's own errors), and with a valid
    access token."""
    fuzz_once(case, auth_server)
    fuzz_once(case, auth_server, headers={"Authorization": f"Bearer {auth_server.token}"})


def test_bad_tokens_and_logins_are_401_or_400_json(auth_server: Server) -> None:
    """Regression: a username or password with a lone surrogate was a 500."""
    for raw in (b'{"username": "\\ud800", "password": "x"}', b'{"username": "admin", "password": "\\udfff"}'):
        error = json_error(auth_server.api("POST", "/api/login", content=raw, headers=JSON_HEADERS), 400)
        assert fields_named(error["details"]) in (["username"], ["password"]), error
    assert json_error(auth_server.api("POST", "/api/login", json={"username": 1}), 400)["details"]
    json_error(auth_server.api("POST", "/api/login", json={"username": USERNAME, "password": "no"}), 401)
    with auth_server.client() as client:
        client.headers.pop("Authorization")
        for header in (
            None,
            b"Bearer",
            b"Basic YWRtaW46eA==",
            b"Bearer \xff\xfe",
            b"Bearer a.b.c",
            b"bearer x y",
        ):
            headers = {"Authorization": header} if header is not None else {}
            error = json_error(client.get("/api/v3/process", headers=headers), 401)
            assert fields_named(error["details"]) == ["Authorization"]
        refresh = client.get("/api/login/refresh", headers={"Authorization": f"Bearer {auth_server.token}"})
        assert "refresh token" in json_error(refresh, 401)["message"]
    assert auth_server.api("GET", "/api/v3/process").status_code == 200
    assert "unhandled error" not in auth_server.log()
