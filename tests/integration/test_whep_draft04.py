"""WHEP draft-04 details against the real server: HEAD/GET without a body, If-Match on PATCH."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import Server, lavfi_process, running_server, wait_live
from whep_peers import aiortc_offer

SDP = {"Content-Type": "application/sdp"}
TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}
CANDIDATE = "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
RESTART = "a=ice-ufrag:newuf\r\na=ice-pwd:newpasswordnewpasswordxx\r\n"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str]]:
    with running_server(tmp_path_factory.mktemp("whep-draft04")) as server:
        assert (
            server.api("POST", "/api/v3/process", json=lavfi_process("cam", webrtc=True)).status_code == 200
        )
        wait_live(server, "cam")
        response = server.api("POST", "/api/v3/whep/cam", content=aiortc_offer(), headers=SDP)
        assert response.status_code == 201
        yield server, response.headers["Location"], response.headers["ETag"]
        server.api("DELETE", response.headers["Location"])


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_head_and_get_answer_2xx_without_a_body(live: tuple[Server, str, str], method: str) -> None:
    # Before: 405 on the endpoint (the draft wants 2xx without a body).
    server, location, etag = live
    endpoint = server.api(method, "/api/v3/whep/cam")
    assert endpoint.status_code == 204 and endpoint.content == b"", endpoint.text
    assert endpoint.headers["Accept-Post"] == "application/sdp"
    resource = server.api(method, location)
    assert resource.status_code == 204 and resource.content == b"" and resource.headers["ETag"] == etag
    assert server.api(method, "/api/v3/whep/nope").status_code == 404
    assert server.api(method, "/api/v3/whep/cam/unknown-session").status_code == 404
    allowed = server.api("OPTIONS", "/api/v3/whep/cam").headers["Access-Control-Allow-Methods"]
    assert "GET" in allowed and "HEAD" in allowed


def test_patch_with_a_stale_if_match_is_412(live: tuple[Server, str, str]) -> None:
    # Before: 204.
    server, location, etag = live
    stale = server.api("PATCH", location, content=CANDIDATE, headers={**TRICKLE, "If-Match": '"stale"'})
    assert stale.status_code == 412 and "If-Match" in stale.json()["message"], stale.text
    assert stale.headers["ETag"] == etag
    weak = server.api("PATCH", location, content=CANDIDATE, headers={**TRICKLE, "If-Match": f"W/{etag}"})
    assert weak.status_code == 412
    for if_match in (etag, "*", f'"other", {etag}'):
        fresh = server.api("PATCH", location, content=CANDIDATE, headers={**TRICKLE, "If-Match": if_match})
        assert fresh.status_code == 204, (if_match, fresh.text)
    assert server.api("PATCH", location, content=CANDIDATE, headers=TRICKLE).status_code == 204


def test_ice_restart_without_if_match_is_428(live: tuple[Server, str, str]) -> None:
    server, location, etag = live
    missing = server.api("PATCH", location, content=RESTART, headers=TRICKLE)
    assert missing.status_code == 428 and "If-Match" in missing.json()["message"], missing.text
    unsupported = server.api("PATCH", location, content=RESTART, headers={**TRICKLE, "If-Match": etag})
    assert unsupported.status_code == 422
