"""Hostile WHEP offers and trickle fragments against the real server (issue 9's SDP findings)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
from harness import Server, lavfi_process, running_server, wait_live, whep_url
from sdp_mutations import duplicate_section, mutated_offer, with_candidates
from whep_peers import aiortc_offer, play

SDP = {"Content-Type": "application/sdp"}
TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}


@pytest.fixture(scope="module")
def sdp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("hostile-sdp"), CORE_WEBRTC_HANDSHAKE_TIMEOUT_SECONDS="3"
    ) as server:
        assert (
            server.api("POST", "/api/v3/process", json=lavfi_process("cam", webrtc=True)).status_code == 200
        )
        wait_live(server, "cam")
        yield server


def _post(server: Server, body: bytes | str) -> tuple[int, str]:
    response = server.api("POST", "/api/v3/whep/cam", content=body, headers=SDP)
    if response.status_code == 201:
        server.api("DELETE", response.headers["Location"])
    return response.status_code, response.text


def test_duplicated_video_m_section_is_400(sdp_server: Server) -> None:
    # Before: 500 every time (aiortc's _set_mid on None).
    status, text = _post(sdp_server, duplicate_section(aiortc_offer(), "video"))
    assert status == 400 and "one per kind" in text, text


def test_ten_thousand_candidates_are_413_at_once(sdp_server: Server) -> None:
    # Before: accepted after 11 s, longer than the handshake timeout, with /ping stalled up to 1.78 s.
    body = with_candidates(aiortc_offer(), 10_000, random.Random(1))
    began = time.monotonic()
    status, text = _post(sdp_server, body)
    assert status == 413 and "webrtc.max_offer_bytes" in text, text
    print(f"10,000-candidate offer refused in {(time.monotonic() - began) * 1000:.1f} ms")


def test_mutated_offers_are_never_5xx_and_viewers_still_play(sdp_server: Server) -> None:
    # Before: 38 of ~970 fuzzed offers got a 500 (duplicated or merged m-sections, missing or repeated mids),
    # some failing again in pc.close() in the viewer's finally.
    rng = random.Random(9)
    base = aiortc_offer()
    statuses = [_post(sdp_server, mutated_offer(base, rng))[0] for _ in range(120)]
    assert max(statuses) < 500, sorted(set(statuses))
    report = play(whep_url(sdp_server, "cam"), duration=2)
    assert report["error"] is None and report["video_frames_decoded"] > 20, report
    log = sdp_server.log()
    assert "unhandled error" not in log and "peer_close_failed" not in log


def test_trickle_candidates_are_bounded_per_session(sdp_server: Server) -> None:
    response = sdp_server.api("POST", "/api/v3/whep/cam", content=aiortc_offer(), headers=SDP)
    assert response.status_code == 201
    location = response.headers["Location"]
    line = "a=candidate:{n} 1 udp 2130706431 127.0.0.1 {port} typ host\r\n"
    fragment = "a=mid:0\r\n" + "".join(line.format(n=n, port=9000 + n) for n in range(30))
    assert sdp_server.api("PATCH", location, content=fragment, headers=TRICKLE).status_code == 204
    refused = sdp_server.api("PATCH", location, content=fragment, headers=TRICKLE)
    assert refused.status_code == 400 and "max_candidates_per_media_section" in refused.text
    too_many = "a=mid:0\r\n" + "".join(line.format(n=n, port=9000 + n) for n in range(60))
    assert sdp_server.api("PATCH", location, content=too_many, headers=TRICKLE).status_code == 400
    assert sdp_server.api("DELETE", location).status_code == 204
