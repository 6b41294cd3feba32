"""RTP header parsing (RFC 3550) and wrap-around arithmetic for sequence numbers and timestamps.

This is the per-packet path of every stream, so parsing is one ``struct.unpack_from`` plus a few integer
checks and returns the payload as a view into the caller's buffer (no copy).
"""

from __future__ import annotations

import dataclasses
import struct

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
MAX_DATAGRAM_SIZE = 65_535

_FIXED_HEADER = struct.Struct("!BBHII")
_EXTENSION_LENGTH = struct.Struct("!H")


@dataclasses.dataclass(slots=True)
class RtpPacket:
    """The fields of one RTP packet that the media hub uses.

    ``payload`` is a memoryview into the buffer that was parsed: it is valid only until that buffer is reused,
    so consumers copy what they keep.
    """

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: memoryview


def parse_rtp(datagram: bytes | bytearray | memoryview) -> RtpPacket | None:
    """Validate an RTP header and return its fields, or None when the datagram is not well-formed RTP.

    Checks: version 2, at least the 12-byte fixed header, and that the CSRC list, the header extension (its
    length word) and the padding count (at least 1, not longer than what follows the header) fit the datagram.
    """
    size = len(datagram)
    if size < RTP_HEADER_SIZE:
        return None
    first, second, sequence, timestamp, ssrc = _FIXED_HEADER.unpack_from(datagram)
    if first >> 6 != RTP_VERSION:
        return None
    offset = RTP_HEADER_SIZE + (first & 0x0F) * 4
    if first & 0x10:
        if offset + 4 > size:
            return None
        (extension_words,) = _EXTENSION_LENGTH.unpack_from(datagram, offset + 2)
        offset += 4 + extension_words * 4
    end = size
    if first & 0x20:
        padding = datagram[size - 1]
        end -= padding
        if padding == 0:
            return None
    if offset > end:
        return None
    view = datagram if isinstance(datagram, memoryview) else memoryview(datagram)
    return RtpPacket(second & 0x7F, sequence, timestamp, ssrc, second > 0x7F, view[offset:end])


def is_rtcp(datagram: bytes | bytearray | memoryview) -> bool:
    """True for a datagram that looks like RTCP (RFC 5761 section 4: second byte 192-223, version 2).

    FFmpeg's RTP muxer sends RTCP sender reports to the RTP port + 1 unless ``-rtpflags skip_rtcp`` is given,
    so one stream's reports can land on its audio port or on a neighbouring pair's video port.
    """
    return len(datagram) >= 8 and datagram[0] >> 6 == RTP_VERSION and 192 <= datagram[1] <= 223


def sequence_delta(newer: int, older: int) -> int:
    """Signed distance ``newer - older`` between two 16-bit sequence numbers, in [-32768, 32767]."""
    return ((newer - older + 0x8000) & 0xFFFF) - 0x8000


class Unwrapper:
    """Extends a wrapping counter (16-bit sequence numbers, 32-bit timestamps) to an unbounded integer.

    Each value is placed at the signed shortest distance from the previous one, so forward wrap-around keeps
    counting up and a slightly older (reordered) value comes out slightly smaller. The first value is kept as
    it is, so unwrapped values stay comparable with the raw ones until the first wrap.
    """

    __slots__ = ("_half", "_mask", "_last_raw", "_last_extended")

    def __init__(self, bits: int) -> None:
        """``bits`` is the width of the raw counter: 16 for sequence numbers, 32 for timestamps."""
        self._mask = (1 << bits) - 1
        self._half = 1 << (bits - 1)
        self._last_raw: int | None = None
        self._last_extended = 0

    def unwrap(self, value: int) -> int:
        if self._last_raw is None:
            extended = value
        else:
            half = self._half
            extended = self._last_extended + ((value - self._last_raw + half) & self._mask) - half
        self._last_raw = value
        self._last_extended = extended
        return extended
