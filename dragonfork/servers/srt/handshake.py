"""The SRT handshake (HSv5, caller → this listener) and its SYN cookies.

A caller sends an *induction* (version 4, no cookie); the listener answers version 5, the SRT magic and a
SYN cookie derived from the caller's address and the current minute, keeping nothing. The caller then
sends a *conclusion* echoing the cookie with the HSREQ extension (SRT version, flags, both latencies), the
stream id and, when it encrypts, the key material (KMREQ). Only a conclusion with a valid cookie creates a
connection, so a flood of inductions from spoofed or many source ports costs one HMAC each and no memory.

The listener answers a conclusion with HSRSP (and KMRSP), or refuses it: a refusal is a handshake whose
type is 1000 + the reject reason (libsrt's ``URQFailure``); reasons from 1000 up are the access-control
codes (``SRT_REJX_*``: 1400 bad request, 1403 forbidden, 1404 not found, 1409 conflict), which libsrt
reports to its application as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import secrets
import struct
import time

from dragonfork.servers.srt.packet import PacketError

INDUCTION = 1
CONCLUSION = 0xFFFF_FFFF
REJECTION_BASE = 1000

SRT_MAGIC = 0x4A17
UDT_DGRAM = 2
HS_VERSION_UDT4 = 4
HS_VERSION_SRT1 = 5

# extension flags of a conclusion
EXT_HSREQ = 1
EXT_KMREQ = 2
EXT_CONFIG = 4

# extension block types
EXT_TYPE_HSREQ = 1
EXT_TYPE_HSRSP = 2
EXT_TYPE_KMREQ = 3
EXT_TYPE_KMRSP = 4
EXT_TYPE_SID = 5
EXT_TYPE_CONGESTION = 6
EXT_TYPE_FILTER = 7
EXT_TYPE_GROUP = 8

# SRT flags of HSREQ/HSRSP
FLAG_TSBPD_SND = 0x01
FLAG_TSBPD_RCV = 0x02
FLAG_HAICRYPT = 0x04
FLAG_TLPKTDROP = 0x08
FLAG_NAKREPORT = 0x10
FLAG_REXMIT = 0x20
FLAG_STREAM = 0x40
OUR_FLAGS = FLAG_TSBPD_SND | FLAG_TSBPD_RCV | FLAG_HAICRYPT | FLAG_TLPKTDROP | FLAG_NAKREPORT | FLAG_REXMIT
SRT_VERSION = 0x01_05_03
"""The libsrt version we speak (1.5.3): callers enable their features by it."""

# reject reasons (libsrt's SRT_REJECT_REASON and the access-control SRT_REJX_* codes)
REJ_ROGUE = 4
REJ_VERSION = 8
REJ_BADSECRET = 10
REJ_UNSECURE = 11
REJ_MESSAGEAPI = 12
REJ_CONGESTION = 13
REJ_FILTER = 14
REJ_GROUP = 15
REJX_BAD_REQUEST = 1400
REJX_FORBIDDEN = 1403
REJX_NOT_FOUND = 1404
REJX_BAD_MODE = 1405
REJX_CONFLICT = 1409
REJX_OVERLOAD = 1402

MAX_STREAM_ID = 512
"""libsrt's limit on a stream id (``CSrtConfig::MAX_SID_LENGTH``)."""

_CIF = struct.Struct("!IHHIIIIII16s")
CIF_SIZE = _CIF.size


@dataclasses.dataclass(slots=True)
class Handshake:
    version: int
    encryption: int
    """Upper half of the type word: the advertised key length (2, 3, 4 → 16, 24, 32 bytes); 0 clear."""
    extension: int
    """Lower half: the SRT magic in an induction answer, the extension flags in a conclusion."""
    isn: int
    mtu: int
    flow_window: int
    type: int
    socket_id: int
    cookie: int
    peer_ip: bytes = bytes(16)
    extensions: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)

    def encode(self) -> bytes:
        blocks = b"".join(
            struct.pack("!HH", kind, len(content) // 4) + content for kind, content in self.extensions
        )
        return (
            _CIF.pack(
                self.version,
                self.encryption,
                self.extension,
                self.isn,
                self.mtu,
                self.flow_window,
                self.type,
                self.socket_id,
                self.cookie,
                self.peer_ip,
            )
            + blocks
        )

    def extension_block(self, kind: int) -> bytes | None:
        for found, content in self.extensions:
            if found == kind:
                return content
        return None


def parse(body: bytes) -> Handshake:
    if len(body) < CIF_SIZE:
        raise PacketError(f"a handshake of {len(body)} bytes (at least {CIF_SIZE})")
    fields = _CIF.unpack_from(body)
    extensions: list[tuple[int, bytes]] = []
    offset = CIF_SIZE
    while offset + 4 <= len(body):
        kind, words = struct.unpack_from("!HH", body, offset)
        end = offset + 4 + words * 4
        if end > len(body):
            raise PacketError(f"handshake extension {kind} runs past the packet")
        extensions.append((kind, body[offset + 4 : end]))
        offset = end
        if len(extensions) > 16:
            raise PacketError("more than 16 handshake extensions")
    version, encryption, extension, isn, mtu, flow_window, kind, socket_id, cookie, peer_ip = fields
    return Handshake(
        version, encryption, extension, isn, mtu, flow_window, kind, socket_id, cookie, peer_ip, extensions
    )


@dataclasses.dataclass(frozen=True, slots=True)
class SrtOptions:
    """HSREQ/HSRSP: the SRT version, flags and the latency each way (ms)."""

    version: int
    flags: int
    receive_latency_ms: int
    """The sender of this block's receive latency (upper half)."""
    send_latency_ms: int
    """The sender of this block's peer latency (lower half)."""

    def encode(self) -> bytes:
        return struct.pack(
            "!III", self.version, self.flags, (self.receive_latency_ms << 16) | self.send_latency_ms
        )

    @classmethod
    def decode(cls, content: bytes) -> SrtOptions:
        if len(content) < 12:
            raise PacketError(f"an HSREQ of {len(content)} bytes")
        version, flags, latency = struct.unpack_from("!III", content)
        return cls(version, flags, latency >> 16, latency & 0xFFFF)


def swap_words(data: bytes) -> bytes:
    """Reverse the bytes of each 32-bit word: libsrt sends string extensions (stream id, congestion
    controller) as little-endian words inside a big-endian packet."""
    padded = data + bytes(-len(data) % 4)
    return b"".join(padded[i : i + 4][::-1] for i in range(0, len(padded), 4))


def decode_string(content: bytes) -> str:
    """A stream id / congestion controller block → its text (NUL padding removed)."""
    return swap_words(content).rstrip(b"\0").decode("utf-8", errors="replace")


def encode_peer_ip(host: str) -> bytes:
    """The caller's address as libsrt writes it (IPv4 in the first word, each word byte-swapped)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return bytes(16)
    if isinstance(address, ipaddress.IPv4Address):
        return swap_words(address.packed) + bytes(12)
    return swap_words(address.packed)


class SynCookies:
    """Stateless cookies: an HMAC of the peer's address and the minute, valid for this and the last minute."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def _cookie(self, host: str, port: int, minute: int) -> int:
        digest = hmac.new(self._secret, f"{host}|{port}|{minute}".encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:4], "big")

    def issue(self, host: str, port: int) -> int:
        return self._cookie(host, port, int(time.time() // 60))

    def valid(self, host: str, port: int, cookie: int) -> bool:
        minute = int(time.time() // 60)
        return any(
            hmac.compare_digest(self._cookie(host, port, m).to_bytes(4, "big"), cookie.to_bytes(4, "big"))
            for m in (minute, minute - 1)
        )
