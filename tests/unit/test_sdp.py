"""Offer validation, trickle fragments and advertised addresses (dragonfork.webrtc.sdp)."""

from __future__ import annotations

import pytest
from aiortc.sdp import SessionDescription, candidate_from_sdp
from hypothesis import given
from hypothesis import strategies as st

from dragonfork.webrtc.sdp import (
    FragmentRejected,
    OfferLimits,
    OfferRejected,
    advertise_addresses,
    answer_publisher,
    parse_trickle_fragment,
    preferred_codecs,
    validate_offer,
    validate_publisher_offer,
)

# What Chromium sends for a WHEP player (recvonly audio + video, BUNDLE, host candidate hidden behind mDNS),
# trimmed of header extensions; the video m-line offers VP8, H.264 in several profiles/modes, and AV1.
FINGERPRINT = (
    "6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08"
)
CHROME_OFFER = f"""v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:1467250027 1 udp 2122260223 6b1c7ac9-6d5c-4c5e-9f4a-0a4b5a0e3c11.local 54400 typ host generation 0
a=ice-ufrag:Hn4q
a=ice-pwd:7NhbOf3NnWpQ0EnvY3k2pZsT
a=ice-options:trickle
a=fingerprint:sha-256 {FINGERPRINT}
a=setup:actpass
a=mid:0
a=recvonly
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 112 113 45
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Hn4q
a=ice-pwd:7NhbOf3NnWpQ0EnvY3k2pZsT
a=ice-options:trickle
a=fingerprint:sha-256 {FINGERPRINT}
a=setup:actpass
a=mid:1
a=recvonly
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rtpmap:102 H264/90000
a=rtcp-fb:102 nack
a=rtcp-fb:102 nack pli
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f
a=rtpmap:103 rtx/90000
a=fmtp:103 apt=102
a=rtpmap:104 H264/90000
a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f
a=rtpmap:105 rtx/90000
a=fmtp:105 apt=104
a=rtpmap:106 H264/90000
a=rtcp-fb:106 nack
a=rtcp-fb:106 nack pli
a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=rtpmap:107 rtx/90000
a=fmtp:107 apt=106
a=rtpmap:112 H264/90000
a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640c1f
a=rtpmap:113 rtx/90000
a=fmtp:113 apt=112
a=rtpmap:45 AV1/90000
"""

H264_FMTP_LINES = (
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
    "a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f",
    "a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
)


def offer(*, replace: dict[str, str] | None = None) -> str:
    text = CHROME_OFFER
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    return text.replace("\n", "\r\n")


def video_section(text: str) -> str:
    return text[text.index("m=video") :]


def test_chrome_offer_is_accepted_and_mdns_candidates_are_removed() -> None:
    accepted = validate_offer(offer(), stream_has_audio=True)

    assert accepted.has_audio
    assert (accepted.ice_ufrag, accepted.ice_pwd) == ("Hn4q", "7NhbOf3NnWpQ0EnvY3k2pZsT")
    assert accepted.bundle_mid == "0"
    assert ".local" in CHROME_OFFER and ".local" not in accepted.sdp
    parsed = SessionDescription.parse(accepted.sdp)
    assert [m.kind for m in parsed.media] == ["audio", "video"]
    assert len(parsed.media[1].rtp.codecs) == 11  # nothing but the candidate was removed


def test_offer_without_audio_m_line_is_accepted_as_video_only() -> None:
    text = offer()
    video_only = text[: text.index("m=audio")] + video_section(text)
    video_only = video_only.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 1")

    accepted = validate_offer(video_only, stream_has_audio=True)

    assert not accepted.has_audio
    assert accepted.bundle_mid == "1"


def test_sendrecv_offer_is_accepted() -> None:
    assert validate_offer(offer(replace={"a=recvonly": "a=sendrecv"}), stream_has_audio=True).has_audio


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "must start with the line v=0"),
        ("hello world", "must start with the line v=0"),
        ('{"sdp": "v=0"}', "must start with the line v=0"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no m= line"),
        (
            offer(replace={"m=video 9 UDP/TLS/RTP/SAVPF 96": "m=video nine UDP/TLS/RTP/SAVPF 96"}),
            "cannot parse",
        ),
        (offer(replace={"a=rtpmap:96 VP8/90000": "a=rtpmap:96"}), "cannot parse"),
        (offer(replace={"a=fmtp:97 apt=96": "a=fmtp:250 apt=96"}), "cannot parse"),
    ],
)
def test_malformed_offers_are_400(body: str, message: str) -> None:
    with pytest.raises(OfferRejected) as rejected:
        validate_offer(body, stream_has_audio=True)

    assert rejected.value.status == 400
    assert message in rejected.value.message


@pytest.mark.parametrize("direction", ["sendonly", "inactive"])
def test_wrong_direction_is_400(direction: str) -> None:
    with pytest.raises(OfferRejected) as rejected:
        validate_offer(offer(replace={"a=recvonly": f"a={direction}"}), stream_has_audio=True)

    assert rejected.value.status == 400
    assert rejected.value.message == f"m-line 0 (audio) is {direction}; a WHEP offer is recvonly or sendrecv"


@pytest.mark.parametrize(
    ("removed", "message"),
    [
        ("a=recvonly\r\n", "m-line 0 (audio) has no direction attribute"),
        ("a=ice-pwd:7NhbOf3NnWpQ0EnvY3k2pZsT\r\n", "m-line 0 (audio) has no ICE credentials"),
        ("a=setup:actpass\r\n", "m-line 0 (audio) has no DTLS parameters"),
        ("a=rtcp-mux\r\n", "m-line 0 (audio) has no a=rtcp-mux"),
    ],
)
def test_offer_missing_what_aiortc_needs_is_400(removed: str, message: str) -> None:
    with pytest.raises(OfferRejected) as rejected:
        validate_offer(offer().replace(removed, ""), stream_has_audio=True)

    assert rejected.value.status == 400
    assert rejected.value.message.startswith(message)


def test_offer_with_only_high_profile_h264_is_406_and_names_what_was_offered() -> None:
    only_high = offer(replace={line: "" for line in H264_FMTP_LINES})

    with pytest.raises(OfferRejected) as rejected:
        validate_offer(only_high, stream_has_audio=True)

    assert rejected.value.status == 406
    assert "no H.264 with packetization-mode=1" in rejected.value.message
    assert "constrained baseline (42e01f) or baseline (42001f)" in rejected.value.message
    assert "H264/90000 (profile-level-id=640c1f, packetization-mode=1)" in rejected.value.message
    assert "VP8/90000" in rejected.value.message


def test_offer_with_h264_packetization_mode_0_only_is_406() -> None:
    mode_0 = offer().replace("packetization-mode=1", "packetization-mode=0")

    with pytest.raises(OfferRejected) as rejected:
        validate_offer(mode_0, stream_has_audio=True)

    assert rejected.value.status == 406
    assert "profile-level-id=42e01f, packetization-mode=0" in rejected.value.message


@pytest.mark.parametrize("kept", ["42001f", "42e01f"])
def test_either_baseline_profile_alone_is_enough(kept: str) -> None:
    dropped = {line: "" for line in H264_FMTP_LINES if kept not in line or "packetization-mode=0" in line}

    assert validate_offer(offer(replace=dropped), stream_has_audio=False)


def test_vp8_only_offer_is_406() -> None:
    text = offer()
    vp8_only = text[: text.index("a=rtpmap:97")].replace(
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 112 113 45",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
    )

    with pytest.raises(OfferRejected) as rejected:
        validate_offer(vp8_only, stream_has_audio=True)

    assert rejected.value.status == 406
    assert rejected.value.message.endswith("offered: VP8/90000")


def test_audio_only_offer_is_406() -> None:
    text = offer()
    audio_only = text[: text.index("m=video")].replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0")

    with pytest.raises(OfferRejected) as rejected:
        validate_offer(audio_only, stream_has_audio=True)

    assert (rejected.value.status, rejected.value.message) == (
        406,
        "the offer has no video m-line; this stream sends H.264 video",
    )


def test_audio_without_opus_is_406_only_when_the_stream_has_audio() -> None:
    no_opus = offer(replace={"a=rtpmap:111 opus/48000/2": "a=rtpmap:111 ISAC/16000"})

    with pytest.raises(OfferRejected) as rejected:
        validate_offer(no_opus, stream_has_audio=True)

    assert rejected.value.status == 406
    assert rejected.value.message.startswith(
        "the audio m-line offers no opus/48000; offered: ISAC/16000, red/48000"
    )
    assert validate_offer(no_opus, stream_has_audio=False).has_audio


@given(st.text(max_size=300))
def test_arbitrary_text_is_accepted_or_rejected_with_400_or_406(body: str) -> None:
    try:
        validate_offer(body, stream_has_audio=True)
    except OfferRejected as rejected:
        assert rejected.status in (400, 406)


@given(st.integers(min_value=0, max_value=len(CHROME_OFFER)))
def test_truncated_offers_never_raise_anything_but_offer_rejected(cut: int) -> None:
    try:
        validate_offer(CHROME_OFFER[:cut], stream_has_audio=True)
    except OfferRejected as rejected:
        assert rejected.status in (400, 406)


def test_preferred_codecs_put_constrained_baseline_h264_first_and_keep_rtx() -> None:
    video = preferred_codecs("video")
    audio = preferred_codecs("audio")

    assert [(c.mimeType, c.parameters.get("profile-level-id")) for c in video] == [
        ("video/H264", "42e01f"),
        ("video/H264", "42001f"),
        ("video/rtx", None),
    ]
    assert all(c.parameters["packetization-mode"] == "1" for c in video[:2])
    assert [c.mimeType for c in audio] == ["audio/opus"]


# --- trickle ICE ------------------------------------------------------------------------------------------

TRICKLE = """a=ice-ufrag:Hn4q
a=ice-pwd:7NhbOf3NnWpQ0EnvY3k2pZsT
m=audio 9 UDP/TLS/RTP/SAVPF 0
a=mid:0
a=candidate:1 1 udp 2122260223 192.0.2.10 61764 typ host generation 0 ufrag Hn4q network-id 1
a=candidate:2 1 tcp 1518280447 192.0.2.10 9 typ host tcptype active generation 0
a=candidate:3 1 udp 2122260223 0f1e2d3c.local 51000 typ host
a=candidate:4 1 udp 1686052607 203.0.113.7 40000 typ srflx raddr 192.0.2.10 rport 61764
m=video 9 UDP/TLS/RTP/SAVPF 0
a=mid:1
a=candidate:5 1 udp 2122260223 192.0.2.10 61766 typ host
a=end-of-candidates
"""


def test_trickle_fragment_keeps_usable_candidates_with_their_mid() -> None:
    fragment = parse_trickle_fragment(TRICKLE.replace("\n", "\r\n"))

    assert (fragment.ice_ufrag, fragment.ice_pwd) == ("Hn4q", "7NhbOf3NnWpQ0EnvY3k2pZsT")
    assert [(c.ip, c.port, c.type, c.sdpMid, c.sdpMLineIndex) for c in fragment.candidates] == [
        ("192.0.2.10", 61764, "host", "0", 0),
        ("203.0.113.7", 40000, "srflx", "0", 0),
        ("192.0.2.10", 61766, "host", "1", 1),
    ]
    assert fragment.candidates[1].relatedAddress == "192.0.2.10"
    assert fragment.end_of_candidates
    assert not fragment.restarts_ice("Hn4q", "7NhbOf3NnWpQ0EnvY3k2pZsT")


def test_trickle_fragment_with_new_credentials_is_an_ice_restart() -> None:
    fragment = parse_trickle_fragment("a=ice-ufrag:Zz9y\r\na=ice-pwd:aNewPasswordOf22Chars00\r\n")

    assert fragment.restarts_ice("Hn4q", "7NhbOf3NnWpQ0EnvY3k2pZsT")
    assert fragment.candidates == ()


def test_candidates_without_m_line_or_credentials_belong_to_the_first_section() -> None:
    fragment = parse_trickle_fragment("a=candidate:1 1 UDP 2122260223 192.0.2.10 61764 typ host\r\n")

    assert [(c.ip, c.sdpMid, c.sdpMLineIndex) for c in fragment.candidates] == [("192.0.2.10", None, 0)]
    assert not fragment.restarts_ice("Hn4q", "7NhbOf3NnWpQ0EnvY3k2pZsT")


@pytest.mark.parametrize(
    "body",
    [
        "",
        "hello",
        "a=candidate:1 1 udp\r\n",
        "a=candidate:1 1 udp high 192.0.2.1 5 typ host\r\n",
        "a=mid:0\r\n",
    ],
)
def test_malformed_trickle_fragments_are_400(body: str) -> None:
    with pytest.raises(FragmentRejected) as rejected:
        parse_trickle_fragment(body)

    assert rejected.value.status == 400
    assert rejected.value.message.startswith("malformed sdpfrag")


# --- advertised addresses ---------------------------------------------------------------------------------

ANSWER = """v=0
o=- 1 1 IN IP4 0.0.0.0
s=-
t=0 0
m=video 50391 UDP/TLS/RTP/SAVPF 99
c=IN IP4 192.0.2.2
a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 192.0.2.2 50391 typ host
a=candidate:d0bcf3d9c29a2bc887618212a1623bfa 1 udp 2130706431 fd00::2 35942 typ host
a=candidate:0a1b 1 udp 1694498815 198.51.100.1 50391 typ srflx raddr 192.0.2.2 rport 50391
a=end-of-candidates
a=ice-ufrag:VlcJ
"""


def candidates_of(sdp: str) -> list[tuple[str, int, str, int]]:
    lines = [
        line.removeprefix("a=candidate:") for line in sdp.splitlines() if line.startswith("a=candidate:")
    ]
    return [(c.ip, c.port, c.type, c.priority) for c in map(candidate_from_sdp, lines)]


def test_advertised_addresses_duplicate_host_candidates_of_the_same_ip_version_with_lower_priority() -> None:
    answer = advertise_addresses(ANSWER.replace("\n", "\r\n"), ["203.0.113.5", "2001:db8::5", "198.51.100.9"])

    assert candidates_of(answer) == [
        ("192.0.2.2", 50391, "host", 2130706431),
        ("203.0.113.5", 50391, "host", 2130706431 - 256),
        ("198.51.100.9", 50391, "host", 2130706431 - 3 * 256),
        ("fd00::2", 35942, "host", 2130706431),
        ("2001:db8::5", 35942, "host", 2130706431 - 2 * 256),
        ("198.51.100.1", 50391, "srflx", 1694498815),
    ]
    foundations = [line.split()[0] for line in answer.splitlines() if line.startswith("a=candidate:")]
    assert len(set(foundations)) == len(foundations)
    assert all(len(f.removeprefix("a=candidate:")) <= 32 for f in foundations)
    assert answer.index("a=end-of-candidates") > answer.index("2001:db8::5")
    assert SessionDescription.parse(answer).media[0].ice_candidates[1].ip == "203.0.113.5"


def test_no_advertised_addresses_leaves_the_answer_unchanged() -> None:
    assert advertise_addresses(ANSWER, []) == ANSWER


def test_an_advertised_address_equal_to_the_host_address_is_not_repeated() -> None:
    assert len(candidates_of(advertise_addresses(ANSWER, ["192.0.2.2"]))) == 3


# --- hostile offers: limits and structure, checked before parsing (issue 9) -------------------------------


def _candidates(count: int) -> str:
    return "".join(
        f"a=candidate:{n} 1 udp 2122260223 127.0.0.1 {10000 + n} typ host\r\n" for n in range(count)
    )


def test_structure_check_runs_before_aiortc_parses_the_offer() -> None:
    # Before: a duplicated video m-section passed validation and made aiortc fail with a 500.
    text = offer()
    duplicated = text + video_section(text)
    with pytest.raises(OfferRejected) as rejected:
        validate_offer(duplicated, stream_has_audio=True)
    assert rejected.value.status == 400 and "2 video m-sections" in rejected.value.message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"a=mid:1": "a=mid:0"}, "repeat a mid"),
        ({"a=mid:1\r\n": ""}, "has no a=mid"),
        ({"a=mid:1\r\n": "a=mid:1\r\na=mid:2\r\n"}, "more than one a=mid"),
        ({"a=group:BUNDLE 0 1": "a=group:BUNDLE 0 7"}, "names mid '7'"),
        ({"a=group:BUNDLE 0 1": "a=group:BUNDLE 0"}, "not in the a=group:BUNDLE"),
        ({"a=group:BUNDLE 0 1": "a=group:BUNDLE 0 0 1"}, "each m-section once"),
    ],
)
def test_inconsistent_mids_and_bundle_are_400(change: dict[str, str], message: str) -> None:
    text = offer()
    for old, new in change.items():
        assert old in text
        text = text.replace(old, new, 1)
    with pytest.raises(OfferRejected) as rejected:
        validate_offer(text, stream_has_audio=True)
    assert rejected.value.status == 400 and message in rejected.value.message, rejected.value.message


def test_size_and_count_limits_name_the_setting() -> None:
    limits = OfferLimits(max_bytes=8192, max_media_sections=3, max_candidates=5)
    text = offer()
    with pytest.raises(OfferRejected) as big:
        validate_offer(text + "a=x-huge:" + "A" * 9000 + "\r\n", stream_has_audio=True, limits=limits)
    assert big.value.status == 413 and "webrtc.max_offer_bytes" in big.value.message
    with pytest.raises(OfferRejected) as many:
        validate_offer(
            text.replace("a=mid:1\r\n", "a=mid:1\r\n" + _candidates(6)), stream_has_audio=True, limits=limits
        )
    assert many.value.status == 400 and "webrtc.max_candidates_per_media_section (5)" in many.value.message
    assert "m-line 1 (video)" in many.value.message
    sections = text + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n" * 2
    with pytest.raises(OfferRejected) as wide:
        validate_offer(sections, stream_has_audio=True, limits=limits)
    assert wide.value.status == 400 and "webrtc.max_offer_media_sections (3)" in wide.value.message
    assert validate_offer(
        text.replace("a=mid:1\r\n", "a=mid:1\r\n" + _candidates(5)), stream_has_audio=True, limits=limits
    )


def test_ten_thousand_candidates_are_refused_by_size_before_any_parsing() -> None:
    # Before: 10,000 candidates (576 KB) were parsed for 11 s on the event loop, then accepted.
    huge = offer().replace("a=mid:1\r\n", "a=mid:1\r\n" + _candidates(10_000))
    with pytest.raises(OfferRejected) as rejected:
        validate_offer(huge, stream_has_audio=True)
    assert rejected.value.status == 413


def test_trickle_fragment_limits() -> None:
    limits = OfferLimits(max_bytes=4096, max_media_sections=3, max_candidates=3)
    with pytest.raises(FragmentRejected) as many:
        parse_trickle_fragment("a=mid:0\r\n" + _candidates(4), limits)
    assert many.value.status == 400 and "max_candidates_per_media_section" in many.value.message
    with pytest.raises(FragmentRejected) as big:
        parse_trickle_fragment("a=mid:0\r\n" + "a=x:" + "y" * 5000 + "\r\n", limits)
    assert big.value.status == 413
    assert len(parse_trickle_fragment("a=mid:0\r\n" + _candidates(3), limits).candidates) == 3


# --- WHIP offers (the publisher sends) -------------------------------------------------------------------


def whip_offer(**replace: str) -> str:
    return offer(replace={"a=recvonly": "a=sendonly", **replace})


def test_a_whip_offer_takes_any_h264_profile_and_the_answer_keeps_the_publishers() -> None:
    high = "a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640c1f"
    shown_to_aiortc = "a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"

    accepted = validate_publisher_offer(whip_offer())

    assert accepted.offer.has_audio
    assert accepted.shown_lines == {
        "a=fmtp:112": high
    }  # the two profiles aiortc knows (102, 106) are left alone
    video = video_section(accepted.offer.sdp)
    assert shown_to_aiortc in video and high not in video
    assert all(line in video for line in H264_FMTP_LINES)
    aiortc_answer = offer().replace(high, shown_to_aiortc)
    restored = video_section(answer_publisher(aiortc_answer, accepted))
    assert high in restored and shown_to_aiortc not in restored
    assert all(line in restored for line in H264_FMTP_LINES)


def test_a_whip_offer_of_a_high_profile_only_publisher_is_accepted() -> None:
    only_high = whip_offer(**{"96 97 102 103 104 105 106 107 112 113 45": "112 113"})

    accepted = validate_publisher_offer(only_high)

    assert set(accepted.shown_lines) == {"a=fmtp:112"} and accepted.video_codec == "H264"


@pytest.mark.parametrize("direction", ["recvonly", "inactive"])
def test_a_whip_offer_that_does_not_send_is_400(direction: str) -> None:
    with pytest.raises(OfferRejected) as rejected:
        validate_publisher_offer(offer(replace={"a=recvonly": f"a={direction}"}))

    assert rejected.value.status == 400
    assert f"is {direction}; a WHIP offer is sendonly or sendrecv" in rejected.value.message


def test_a_whip_offer_without_h264_vp8_or_vp9_is_406_naming_what_it_offers() -> None:
    without = whip_offer().replace("H264/90000", "H265/90000").replace("VP8/90000", "VP7/90000")

    with pytest.raises(OfferRejected) as rejected:
        validate_publisher_offer(without)

    message = rejected.value.message
    assert rejected.value.status == 406
    assert "no H.264 with packetization-mode=1 (any profile), VP8 or VP9" in message
    assert all(codec in message for codec in ("VP7/90000", "H265/90000", "AV1/90000")), message


def test_a_whip_offer_whose_audio_has_no_opus_is_406() -> None:
    with pytest.raises(OfferRejected) as rejected:
        validate_publisher_offer(whip_offer().replace("opus/48000/2", "L16/48000/2"))

    assert rejected.value.status == 406 and "no opus/48000" in rejected.value.message


def test_a_whip_offer_without_h264_takes_vp8_then_vp9_showing_aiortc_vp8() -> None:
    vp8_and_vp9 = whip_offer().replace("H264/90000", "H265/90000").replace("AV1/90000", "VP9/90000")
    vp9_only = vp8_and_vp9.replace("VP8/90000", "VP7/90000")

    vp8 = validate_publisher_offer(vp8_and_vp9)
    vp9 = validate_publisher_offer(vp9_only)

    assert (vp8.video_codec, vp8.shown_lines, vp8.mime_type) == ("VP8", {}, "video/vp8")
    assert (vp9.video_codec, vp9.mime_type) == ("VP9", "video/vp8")
    assert vp9.shown_lines == {"a=rtpmap:45": "a=rtpmap:45 VP9/90000"}
    assert "a=rtpmap:45 VP8/90000" in video_section(vp9.offer.sdp)
    aiortc_answer = "m=video 9 UDP/TLS/RTP/SAVPF 45\r\na=rtpmap:45 VP8/90000\r\n"
    assert "a=rtpmap:45 VP9/90000" in answer_publisher(aiortc_answer, vp9)
