"""SDP rules for WHEP: the offers we accept, the codecs we negotiate, trickle fragments, advertised addresses.

Offers are checked here before aiortc sees them, so a bad offer becomes a clear 400/406 for the client instead
of an exception deep inside aiortc (or, worse, a session that negotiates and then plays nothing). The rules
mirror what aiortc 1.16 can send on the pre-encoded path:

- video must offer H.264 with ``packetization-mode=1`` in the constrained baseline (``42e01f``) or baseline
  (``42001f``) profile, the only two H.264 profiles aiortc negotiates (an offer with only High profile fails);
- audio, when the stream has audio and the offer has an audio m-line, must offer Opus/48000. An offer without
  an audio m-line is accepted and the viewer gets video only;
- every audio/video m-line must be ``recvonly`` or ``sendrecv`` (WHEP: the server sends) and carry what aiortc
  needs to connect (ICE credentials, DTLS setup + fingerprint, rtcp-mux).

Hostile offers are refused before any parsing costs much: a byte limit (413), then one pass over the lines
for the number of m-sections and of candidates per m-section (400), one m-section per kind, one ``a=mid``
per m-section, unique mids, and a BUNDLE group that names existing m-sections and holds every audio/video
one (``OfferLimits``, from the ``webrtc`` settings). Parsing is then bounded by those limits.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
from collections.abc import Callable, Sequence

from aiortc import RTCIceCandidate, RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.sdp import (
    H264Profile,
    MediaDescription,
    SessionDescription,
    candidate_from_sdp,
    candidate_to_sdp,
    parse_h264_profile_level_id,
)

from dragonfork.config import WebRTCSettings

# The H.264 profiles aiortc's negotiation matches (its own codec table lists 42001f and 42e01f only).
H264_PROFILES = {
    H264Profile.PROFILE_CONSTRAINED_BASELINE: "constrained baseline (42e01f)",
    H264Profile.PROFILE_BASELINE: "baseline (42001f)",
}
# aiortc parses this many kinds of exceptions out of a malformed SDP (asserts, int(), dict and list lookups).
_PARSE_ERRORS = (AssertionError, ValueError, KeyError, IndexError, StopIteration, AttributeError, TypeError)


class SdpRejected(Exception):
    """An SDP body the server refuses; ``status`` is the HTTP status the WHEP layer answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class OfferRejected(SdpRejected):
    """A WHEP offer that cannot be answered: 400 malformed or wrong direction, 406 codec mismatch."""


class FragmentRejected(SdpRejected):
    """A trickle-ICE PATCH body that cannot be applied: 400 malformed, 422 ICE restart (not supported)."""


@dataclasses.dataclass(frozen=True, slots=True)
class OfferLimits:
    """Bounds on an offer and on trickle fragments, checked before parsing (the ``webrtc`` settings)."""

    max_bytes: int
    max_media_sections: int
    max_candidates: int  # per m-section of an offer, and per session over all its PATCHes

    @classmethod
    def of(cls, webrtc: WebRTCSettings) -> OfferLimits:
        return cls(
            max_bytes=webrtc.max_offer_bytes,
            max_media_sections=webrtc.max_offer_media_sections,
            max_candidates=webrtc.max_candidates_per_media_section,
        )

    @classmethod
    def default(cls) -> OfferLimits:
        return cls.of(WebRTCSettings())

    def check_size(self, body: str, what: str, rejected: type[SdpRejected]) -> None:
        size = len(body.encode("utf-8", "surrogateescape"))
        if size > self.max_bytes:
            raise rejected(413, f"the {what} has {size} bytes; webrtc.max_offer_bytes is {self.max_bytes}")

    def too_many_candidates(self, where: str, rejected: type[SdpRejected]) -> SdpRejected:
        return rejected(
            400,
            f"{where} has over webrtc.max_candidates_per_media_section ({self.max_candidates}) candidates",
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Offer:
    """A validated offer and the facts about it the viewer needs."""

    sdp: str  # the offer as handed to aiortc: mDNS (.local) candidates removed, see ``validate_offer``
    has_audio: bool  # the offer has an audio m-line
    ice_ufrag: str
    ice_pwd: str
    bundle_mid: str | None  # the first mid of the BUNDLE group: the one transport every candidate belongs to


def validate_offer(offer_sdp: str, *, stream_has_audio: bool, limits: OfferLimits | None = None) -> Offer:
    """Check a WHEP offer against what this server can send; raise ``OfferRejected`` naming what is missing.

    Remote candidates with an mDNS host name (``.local``) are removed from the returned SDP: aioice resolves
    them by multicast with a 1 s timeout (which fails in containers) inside ``setRemoteDescription``, so they
    would delay every answer. The browser's address is learnt from its connectivity checks instead.
    """
    parsed = _parse_offer(offer_sdp, limits, WHEP)
    video, audio = parsed.video, parsed.audio
    if not any(_is_sendable_h264(codec) for codec in video.rtp.codecs):
        raise OfferRejected(
            406,
            "the video m-line offers no H.264 with packetization-mode=1 in profile "
            f"{' or '.join(H264_PROFILES.values())}; offered: {_describe_codecs(video)}",
        )
    if stream_has_audio and audio is not None and not any(_is_opus(codec) for codec in audio.rtp.codecs):
        raise OfferRejected(406, f"the audio m-line offers no opus/48000; offered: {_describe_codecs(audio)}")
    return parsed.offer


@dataclasses.dataclass(frozen=True, slots=True)
class _Signalling:
    """Which way the media of an offer flows: a WHEP client receives, a WHIP client sends (RFC 9725)."""

    protocol: str
    directions: tuple[str, str]
    video_needed: str  # what the 406 for an offer without video says


WHEP = _Signalling("WHEP", ("recvonly", "sendrecv"), "this stream sends H.264 video")
WHIP = _Signalling("WHIP", ("sendonly", "sendrecv"), "this server takes H.264 video")


@dataclasses.dataclass(frozen=True, slots=True)
class _ParsedOffer:
    offer: Offer
    video: MediaDescription
    audio: MediaDescription | None


def _parse_offer(offer_sdp: str, limits: OfferLimits | None, signalling: _Signalling) -> _ParsedOffer:
    """The checks every offer passes (limits, shape, transport, BUNDLE, a video m-line), both directions."""
    limits = limits or OfferLimits.default()
    limits.check_size(offer_sdp, "offer", OfferRejected)
    lines = offer_sdp.strip().splitlines()
    if not lines or lines[0].strip() != "v=0":
        raise OfferRejected(400, "malformed SDP: the offer must start with the line v=0")
    if not any(line.startswith("m=") for line in lines):
        raise OfferRejected(400, "malformed SDP: the offer has no m= line")
    _check_shape(lines, limits)
    lines = [line for line in lines if not _is_mdns_candidate_line(line)]
    sdp = "\r\n".join(lines) + "\r\n"
    try:
        description = SessionDescription.parse(sdp)
    except _PARSE_ERRORS as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise OfferRejected(400, f"malformed SDP: cannot parse the offer ({reason})") from exc

    credentials: dict[int, tuple[str, str]] = {}  # ICE ufrag and pwd of each audio/video m-line, by index
    for index, section in enumerate(description.media):
        if section.kind in ("audio", "video"):
            credentials[index] = _check_media_section(index, section, signalling)
    video_index = next((i for i in credentials if description.media[i].kind == "video"), None)
    audio = next((description.media[i] for i in credentials if description.media[i].kind == "audio"), None)
    if video_index is None:
        raise OfferRejected(406, f"the offer has no video m-line; {signalling.video_needed}")

    bundle = next((group for group in description.group if group.semantic == "BUNDLE"), None)
    _check_bundle(description, bundle.items if bundle else None)
    ice_ufrag, ice_pwd = credentials[video_index]
    offer = Offer(
        sdp=sdp,
        has_audio=audio is not None,
        ice_ufrag=ice_ufrag,
        ice_pwd=ice_pwd,
        bundle_mid=str(bundle.items[0]) if bundle and bundle.items else None,
    )
    return _ParsedOffer(offer, description.media[video_index], audio)


@dataclasses.dataclass(frozen=True, slots=True)
class PublisherOffer:
    """A validated WHIP offer: ``offer.sdp`` is what aiortc negotiates, ``shown_lines`` what it was told.

    aiortc negotiates H.264 in two profiles only, and VP8 but not VP9, while it never decodes a publisher's
    media here (``webrtc/rtp_tap.py``): for any other H.264 profile its ``a=fmtp`` line shows constrained
    baseline, and a VP9 ``a=rtpmap`` line shows VP8. ``answer_publisher`` puts the publisher's own lines
    back into the answer, so the publisher sends what it offered.
    """

    offer: Offer
    video_codec: str
    """The codec the publisher will send: "H264" whenever offered, else "VP8", else "VP9"."""
    shown_lines: dict[str, str]
    """``a=fmtp:PT`` / ``a=rtpmap:PT`` → the offer's own line, for each line aiortc was shown otherwise."""

    @property
    def mime_type(self) -> str:
        """What aiortc calls the negotiated video codec in its answer (VP9 is shown to it as VP8)."""
        return "video/h264" if self.video_codec == "H264" else "video/vp8"


PUBLISHER_VIDEO_CODECS = ("VP8", "VP9")
"""Taken when an offer has no H.264 (browsers told to send nothing else); readers get them as Matroska."""


def validate_publisher_offer(offer_sdp: str, limits: OfferLimits | None = None) -> PublisherOffer:
    """Check a WHIP offer: H.264 (packetization-mode 1, any profile), else VP8, else VP9 video, and, if
    offered, Opus audio.

    Raises ``OfferRejected``: 400 for a malformed offer or the wrong direction, 406 naming what was offered
    when there is no usable codec.
    """
    parsed = _parse_offer(offer_sdp, limits, WHIP)
    video, audio = parsed.video, parsed.audio
    if audio is not None and not any(_is_opus(codec) for codec in audio.rtp.codecs):
        raise OfferRejected(406, f"the audio m-line offers no opus/48000; offered: {_describe_codecs(audio)}")
    h264 = [codec for codec in video.rtp.codecs if _is_h264_mode1(codec)]
    offered = {codec.mimeType.split("/", 1)[-1].upper() for codec in video.rtp.codecs}
    codec_name = "H264" if h264 else next((name for name in PUBLISHER_VIDEO_CODECS if name in offered), None)
    if codec_name is None:
        raise OfferRejected(
            406,
            "the video m-line offers no H.264 with packetization-mode=1 (any profile), VP8 or VP9; "
            f"offered: {_describe_codecs(video)}",
        )
    rewrite: dict[str, Callable[[str], str]] = {}
    if codec_name == "H264":
        rewrite = {
            f"a=fmtp:{c.payloadType}": _with_constrained_baseline for c in h264 if not _is_sendable_h264(c)
        }
    elif codec_name == "VP9":
        vp9 = [codec for codec in video.rtp.codecs if codec.mimeType.upper() == "VIDEO/VP9"]
        rewrite = {f"a=rtpmap:{codec.payloadType}": _as_vp8 for codec in vp9}
    lines = parsed.offer.sdp.splitlines()
    shown: dict[str, str] = {}
    for index, key, line in _video_lines(lines):
        if key in rewrite:
            shown[key] = line
            lines[index] = rewrite[key](line)
    offer = dataclasses.replace(parsed.offer, sdp="\r\n".join(lines) + "\r\n")
    return PublisherOffer(offer, codec_name, shown)


def answer_publisher(answer_sdp: str, offer: PublisherOffer) -> str:
    """aiortc's answer with the publisher's own lines where ``validate_publisher_offer`` showed aiortc
    others (an H.264 profile, VP9)."""
    if not offer.shown_lines:
        return answer_sdp
    lines = answer_sdp.splitlines()
    for index, key, _line in _video_lines(lines):
        if key in offer.shown_lines:
            lines[index] = offer.shown_lines[key]
    return "\r\n".join(lines) + "\r\n"


def _video_lines(lines: list[str]) -> list[tuple[int, str, str]]:
    """(index, ``a=fmtp:PT``/``a=rtpmap:PT``, line) of each such well-formed line of the video m-section."""
    found = []
    in_video = False
    for index, line in enumerate(lines):
        if line.startswith("m="):
            in_video = line.startswith("m=video ")
        elif in_video and line.startswith(("a=fmtp:", "a=rtpmap:")):
            key = line.split(" ", 1)[0]
            if key.partition(":")[2].isdigit():
                found.append((index, key, line))
    return found


def _with_constrained_baseline(fmtp_line: str) -> str:
    head, _, parameters = fmtp_line.partition(" ")
    kept = [p for p in parameters.split(";") if p.strip() and not p.strip().startswith("profile-level-id=")]
    return f"{head} {';'.join([*kept, 'profile-level-id=42e01f'])}"


def _as_vp8(rtpmap_line: str) -> str:
    head, _, _encoding = rtpmap_line.partition(" ")
    return f"{head} VP8/90000"


def _check_shape(lines: list[str], limits: OfferLimits) -> None:
    """One pass over the raw lines, before parsing: counts against the limits, kinds, mids per m-section."""
    kinds: collections.Counter[str] = collections.Counter()
    sections = 0
    candidates = mids = 0
    where = "the session part"
    for line in lines:
        if line.startswith("m="):
            sections += 1
            if sections > limits.max_media_sections:
                raise OfferRejected(
                    400,
                    f"the offer has more than webrtc.max_offer_media_sections ({limits.max_media_sections}) "
                    "m-sections",
                )
            kind = line[2:].split(" ", 1)[0]
            kinds[kind] += 1
            if kind in ("audio", "video") and kinds[kind] > 1:
                raise OfferRejected(
                    400, f"the offer has {kinds[kind]} {kind} m-sections; WHEP allows one per kind"
                )
            candidates = mids = 0
            where = f"m-line {sections - 1} ({kind})"
        elif line.startswith("a=candidate:"):
            candidates += 1
            if candidates > limits.max_candidates:
                raise limits.too_many_candidates(where, OfferRejected)
        elif line.startswith("a=mid:"):
            mids += 1
            if mids > 1:
                raise OfferRejected(400, f"{where} has more than one a=mid line")


def _check_bundle(description: SessionDescription, bundle: Sequence[object] | None) -> None:
    """Every audio/video m-section has a unique mid; a BUNDLE names existing m-sections and holds them all."""
    mids = [media.rtp.muxId for media in description.media]
    for index, media in enumerate(description.media):
        if media.kind in ("audio", "video") and not media.rtp.muxId:
            raise OfferRejected(400, f"m-line {index} ({media.kind}) has no a=mid")
    named = [mid for mid in mids if mid]
    if len(set(named)) != len(named):
        raise OfferRejected(400, f"the offer's m-sections repeat a mid ({', '.join(named)})")
    if bundle is None:
        return
    items = [str(item) for item in bundle]
    if not items or len(set(items)) != len(items):
        raise OfferRejected(
            400, f"a=group:BUNDLE must name each m-section once; got {' '.join(items) or 'nothing'}"
        )
    unknown = [item for item in items if item not in named]
    if unknown:
        raise OfferRejected(400, f"a=group:BUNDLE names mid {unknown[0]!r}, which no m-section has")
    outside = [
        media.rtp.muxId
        for media in description.media
        if media.kind in ("audio", "video") and media.rtp.muxId not in items
    ]
    if outside:
        raise OfferRejected(400, f"the m-section with mid {outside[0]!r} is not in the a=group:BUNDLE")


def _check_media_section(index: int, media: MediaDescription, signalling: _Signalling) -> tuple[str, str]:
    """Raise ``OfferRejected`` unless aiortc can answer this audio/video m-line; return its ICE ufrag, pwd."""
    where = f"m-line {index} ({media.kind})"
    expected = f"a {signalling.protocol} offer is {' or '.join(signalling.directions)}"
    if media.direction is None:
        raise OfferRejected(400, f"{where} has no direction attribute; {expected}")
    if media.direction not in signalling.directions:
        raise OfferRejected(400, f"{where} is {media.direction}; {expected}")
    if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
        raise OfferRejected(400, f"{where} has no ICE credentials (a=ice-ufrag and a=ice-pwd)")
    if media.dtls is None or not media.dtls.fingerprints:
        raise OfferRejected(400, f"{where} has no DTLS parameters (a=setup and a=fingerprint)")
    if not media.rtcp_mux:
        raise OfferRejected(400, f"{where} has no a=rtcp-mux")
    return media.ice.usernameFragment, media.ice.password


def _is_h264_mode1(codec: RTCRtpCodecParameters) -> bool:
    return (
        codec.mimeType.lower() == "video/h264"
        and codec.clockRate == 90_000
        and str(codec.parameters.get("packetization-mode", "0")) == "1"
    )


def _is_sendable_h264(codec: RTCRtpCodecParameters) -> bool:
    if not _is_h264_mode1(codec):
        return False
    # Like aiortc, read a missing profile-level-id as constrained baseline level 3.1.
    try:
        profile, _level = parse_h264_profile_level_id(str(codec.parameters.get("profile-level-id", "42e01f")))
    except ValueError:
        return False
    return profile in H264_PROFILES


def _is_opus(codec: RTCRtpCodecParameters) -> bool:
    return codec.mimeType.lower() == "audio/opus" and codec.clockRate == 48_000


def _describe_codecs(media: MediaDescription) -> str:
    described = []
    for codec in media.rtp.codecs:
        if codec.mimeType.lower() in ("video/rtx", "video/red", "video/ulpfec", "audio/telephone-event"):
            continue
        text = f"{codec.mimeType.split('/', 1)[1]}/{codec.clockRate}"
        if codec.mimeType.lower() == "video/h264":
            text += (
                f" (profile-level-id={codec.parameters.get('profile-level-id', 'none')}, "
                f"packetization-mode={codec.parameters.get('packetization-mode', '0')})"
            )
        described.append(text)
    return ", ".join(described) or "nothing"


def _is_mdns_candidate_line(line: str) -> bool:
    fields = line.split()
    return line.startswith("a=candidate:") and len(fields) > 4 and fields[4].lower().endswith(".local")


def preferred_codecs(kind: str) -> list[RTCRtpCodecCapability]:
    """The codecs a viewer's sender may use, best first, for ``RTCRtpTransceiver.setCodecPreferences``.

    Video: H.264 (packetization-mode 1) constrained baseline, then baseline, plus RTX for retransmissions.
    Audio: Opus. Without these preferences aiortc would negotiate VP8 and label our H.264 bytes VP8.
    """
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    if kind == "audio":
        return [codec for codec in codecs if codec.mimeType.lower() == "audio/opus"]
    h264 = [codec for codec in codecs if codec.mimeType.lower() == "video/h264"]
    h264.sort(key=lambda codec: codec.parameters.get("profile-level-id") != "42e01f")
    return h264 + [codec for codec in codecs if codec.mimeType.lower() == "video/rtx"]


# --- trickle ICE (RFC 8840) ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TrickleFragment:
    """The content of an ``application/trickle-ice-sdpfrag`` PATCH body."""

    ice_ufrag: str | None
    ice_pwd: str | None
    candidates: tuple[RTCIceCandidate, ...]  # usable ones only: UDP with an IP address
    end_of_candidates: bool

    def restarts_ice(self, ice_ufrag: str, ice_pwd: str) -> bool:
        """True when the fragment carries ICE credentials other than the session's: an ICE restart."""
        return (self.ice_ufrag is not None and self.ice_ufrag != ice_ufrag) or (
            self.ice_pwd is not None and self.ice_pwd != ice_pwd
        )


def parse_trickle_fragment(body: str, limits: OfferLimits | None = None) -> TrickleFragment:
    """Parse an RFC 8840 sdpfrag into credentials and candidates.

    Candidates get the ``sdpMid`` of their media section (``a=mid``) and its index; candidate lines before any
    m= line count as the first section's. Candidates aiortc cannot use (TCP, mDNS host names) are dropped
    silently, as the WHEP draft asks. The size and the number of candidates are bounded by ``limits``.
    """
    limits = limits or OfferLimits.default()
    limits.check_size(body, "sdpfrag", FragmentRejected)
    if body.count("a=candidate:") > limits.max_candidates:
        raise limits.too_many_candidates("the sdpfrag", FragmentRejected)
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    end_of_candidates = False
    sections: list[tuple[str | None, list[RTCIceCandidate]]] = [(None, [])]
    seen_m_line = False
    for raw_line in body.strip().splitlines():
        line = raw_line.strip()
        if line.startswith("m="):
            if seen_m_line:
                sections.append((None, []))
            seen_m_line = True
        elif line.startswith("a=mid:"):
            sections[-1] = (line.removeprefix("a=mid:"), sections[-1][1])
        elif line.startswith("a=ice-ufrag:"):
            ice_ufrag = line.removeprefix("a=ice-ufrag:")
        elif line.startswith("a=ice-pwd:"):
            ice_pwd = line.removeprefix("a=ice-pwd:")
        elif line == "a=end-of-candidates":
            end_of_candidates = True
        elif line.startswith("a=candidate:"):
            try:
                candidate = candidate_from_sdp(line.removeprefix("a=candidate:"))
            except (AssertionError, ValueError, IndexError) as exc:
                raise FragmentRejected(400, f"malformed sdpfrag: cannot parse {line!r}") from exc
            sections[-1][1].append(candidate)
        elif line and not line.startswith(("a=", "v=", "o=", "s=", "t=", "c=")):
            raise FragmentRejected(400, f"malformed sdpfrag: unexpected line {line!r}")
    if ice_ufrag is None and ice_pwd is None and not end_of_candidates and not any(c for _, c in sections):
        raise FragmentRejected(400, "malformed sdpfrag: no candidates, ICE credentials or end-of-candidates")
    candidates = []
    for index, (mid, section_candidates) in enumerate(sections):
        for candidate in section_candidates:
            if candidate.protocol.lower() == "udp" and not candidate.ip.lower().endswith(".local"):
                candidates.append(dataclasses.replace(candidate, sdpMid=mid, sdpMLineIndex=index))
    return TrickleFragment(ice_ufrag, ice_pwd, tuple(candidates), end_of_candidates)


# --- advertised addresses --------------------------------------------------------------------------------


def advertise_addresses(answer_sdp: str, public_ips: Sequence[str]) -> str:
    """Add a copy of every host candidate for each advertised address (NAT, containers).

    This is MediaMTX's "additional hosts" approach: the server cannot learn its public address without STUN,
    so the operator names it and every UDP host candidate is repeated with that address and the same port,
    with a lower priority (local preference lowered by one per advertised address) so direct addresses win
    where they work. A copy is only made for addresses of the same IP version as the host candidate, since a
    socket bound to an IPv6 address cannot receive IPv4 traffic.
    """
    if not public_ips:
        return answer_sdp
    addresses = [ipaddress.ip_address(ip) for ip in public_ips]
    out: list[str] = []
    for line in answer_sdp.splitlines():
        out.append(line)
        if not line.startswith("a=candidate:"):
            continue
        candidate = candidate_from_sdp(line.removeprefix("a=candidate:"))
        if candidate.type != "host" or candidate.protocol.lower() != "udp":
            continue
        host = ipaddress.ip_address(candidate.ip)
        for rank, address in enumerate(addresses, start=1):
            if address.version != host.version or address == host:
                continue
            copy = dataclasses.replace(
                candidate,
                foundation=f"{candidate.foundation[:24]}adv{rank}",
                ip=str(address),
                priority=candidate.priority - 256 * rank,
            )
            out.append("a=candidate:" + candidate_to_sdp(copy))
    return "\r\n".join(out) + "\r\n"


MID_EXTENSION_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"


@dataclasses.dataclass(frozen=True)
class SentMedia:
    """How one sendonly m-section of our answer says its RTP looks (what the fast path must send)."""

    kind: str
    payload_type: int
    ssrc: int
    cname: str
    mid: str | None
    mid_extension_id: int | None
    rtx_payload_type: int | None
    rtx_ssrc: int | None


def answered_media(answer_sdp: str) -> dict[str, SentMedia]:
    """The media our answer sends, by kind: payload type, SSRC, CNAME, mid (and its extension id), RTX.

    m-sections that send nothing (inactive: a stream without audio) are left out.
    """
    sent = {}
    for media in SessionDescription.parse(answer_sdp).media:
        if media.direction not in ("sendonly", "sendrecv") or not media.rtp.codecs or not media.ssrc:
            continue
        main = next(codec for codec in media.rtp.codecs if not codec.mimeType.lower().endswith("/rtx"))
        rtx = next(
            (
                codec
                for codec in media.rtp.codecs
                if codec.mimeType.lower().endswith("/rtx") and codec.parameters.get("apt") == main.payloadType
            ),
            None,
        )
        fid = next((group.items for group in media.ssrc_group if group.semantic == "FID"), None)
        mid_extension = next(
            (ext.id for ext in media.rtp.headerExtensions if ext.uri == MID_EXTENSION_URI), None
        )
        sent[media.kind] = SentMedia(
            kind=media.kind,
            payload_type=int(main.payloadType or 0),
            ssrc=media.ssrc[0].ssrc,
            cname=media.ssrc[0].cname or "",
            mid=media.rtp.muxId or None,
            mid_extension_id=mid_extension,
            rtx_payload_type=rtx.payloadType if rtx is not None and fid else None,
            rtx_ssrc=int(fid[1]) if rtx is not None and fid else None,
        )
    return sent
