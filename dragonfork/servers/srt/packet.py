"""SRT packets on the wire (draft-sharabayko-srt §3): the 16-byte header, data and control packets.

Every datagram is one packet. The first bit tells them apart: 0 is a data packet (sequence number,
message flags and number, timestamp, destination socket id, payload), 1 a control packet (type,
subtype, type-specific word, timestamp, destination socket id, control information field). Parsing
checks lengths only; what a control packet's fields mean is checked where it is used. Sequence
numbers are 31 bits and wrap: compare them with ``seq_diff``.
"""

from __future__ import annotations

import dataclasses
import struct

HEADER_SIZE = 16
SEQ_MASK = 0x7FFF_FFFF
MSGNO_MASK = 0x03FF_FFFF

# control types (§3.2)
HANDSHAKE = 0x0000
KEEPALIVE = 0x0001
ACK = 0x0002
NAK = 0x0003
SHUTDOWN = 0x0005
ACKACK = 0x0006
DROPREQ = 0x0007
USER_DEFINED = 0x7FFF
"""Extended messages; the subtype names them."""
EXT_KMREQ = 3
EXT_KMRSP = 4

# message-number word flags of a data packet
POSITION_SOLO = 0b11 << 30
ENCRYPTION_EVEN = 0b01 << 27
ENCRYPTION_ODD = 0b10 << 27
ENCRYPTION_MASK = 0b11 << 27
RETRANSMITTED = 1 << 26

_HEADER = struct.Struct("!IIII")


class PacketError(ValueError):
    """The datagram is not an SRT packet (too short, bad length for its type)."""


@dataclasses.dataclass(slots=True)
class DataPacket:
    seq: int
    msg_flags: int
    """The whole second word: position, order, key, retransmitted flags and the message number."""
    timestamp: int
    dest: int
    payload: bytes

    @property
    def key(self) -> int:
        """0 for a clear payload, 1 (even key) or 2 (odd key) for an encrypted one."""
        return (self.msg_flags & ENCRYPTION_MASK) >> 27

    @property
    def retransmitted(self) -> bool:
        return bool(self.msg_flags & RETRANSMITTED)

    def encode(self) -> bytes:
        return _HEADER.pack(self.seq & SEQ_MASK, self.msg_flags, self.timestamp, self.dest) + self.payload


@dataclasses.dataclass(slots=True)
class ControlPacket:
    type: int
    subtype: int
    info: int
    """The type-specific word (ACK number of an ACK/ACKACK, the message number of a DROPREQ)."""
    timestamp: int
    dest: int
    body: bytes = b""

    def encode(self) -> bytes:
        first = 0x8000_0000 | (self.type << 16) | self.subtype
        return _HEADER.pack(first, self.info, self.timestamp, self.dest) + self.body


def parse(datagram: bytes) -> DataPacket | ControlPacket:
    if len(datagram) < HEADER_SIZE:
        raise PacketError(f"{len(datagram)} bytes is shorter than the SRT header")
    first, second, timestamp, dest = _HEADER.unpack_from(datagram)
    if first & 0x8000_0000:
        return ControlPacket(
            (first >> 16) & 0x7FFF, first & 0xFFFF, second, timestamp, dest, datagram[HEADER_SIZE:]
        )
    if len(datagram) == HEADER_SIZE:
        raise PacketError("a data packet without payload")
    return DataPacket(first, second, timestamp, dest, datagram[HEADER_SIZE:])


def seq_diff(a: int, b: int) -> int:
    """``a - b`` on the 31-bit sequence circle (positive when ``a`` is after ``b``)."""
    diff = (a - b) & SEQ_MASK
    return diff - (SEQ_MASK + 1) if diff > SEQ_MASK // 2 else diff


def seq_add(seq: int, n: int) -> int:
    return (seq + n) & SEQ_MASK


# -- control information fields --------------------------------------------------------------------------

_ACK_FIELDS = struct.Struct("!7I")


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    """A full ACK's fields (§3.2.4); a light ACK carries ``last_acked`` only."""

    last_acked: int
    """The sequence number after the last packet received in order (the first one still missing)."""
    rtt_us: int = 0
    rtt_var_us: int = 0
    buffer_packets: int = 0
    receive_rate_packets: int = 0
    link_capacity_packets: int = 0
    receive_rate_bytes: int = 0

    def encode(self) -> bytes:
        return _ACK_FIELDS.pack(
            self.last_acked,
            self.rtt_us,
            self.rtt_var_us,
            self.buffer_packets,
            self.receive_rate_packets,
            self.link_capacity_packets,
            self.receive_rate_bytes,
        )

    @classmethod
    def decode(cls, body: bytes) -> Ack:
        if len(body) >= _ACK_FIELDS.size:
            return cls(*_ACK_FIELDS.unpack_from(body))
        if len(body) >= 4:
            return cls(int.from_bytes(body[:4], "big") & SEQ_MASK)
        raise PacketError(f"an ACK of {len(body)} bytes")


MAX_LOSS_ENTRIES = 256
"""A NAK lists at most this many ranges (it must fit one datagram)."""
MAX_LOSS_SPAN = 65_536
"""A loss range wider than this is not a live stream's loss but a malformed packet."""


def encode_losses(ranges: list[tuple[int, int]]) -> bytes:
    """A NAK body: a single lost sequence number, or a range as (first | 0x80000000, last)."""
    words: list[int] = []
    for first, last in ranges[:MAX_LOSS_ENTRIES]:
        if first == last:
            words.append(first)
        else:
            words.extend((first | 0x8000_0000, last))
    return struct.pack(f"!{len(words)}I", *words)


def decode_losses(body: bytes) -> list[tuple[int, int]]:
    """A NAK body → inclusive (first, last) ranges; a malformed one raises ``PacketError``."""
    if len(body) % 4 or not body:
        raise PacketError(f"a loss list of {len(body)} bytes")
    words = struct.unpack(f"!{len(body) // 4}I", body)
    ranges: list[tuple[int, int]] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word & 0x8000_0000:
            if index + 1 >= len(words) or words[index + 1] & 0x8000_0000:
                raise PacketError("a loss range without its end")
            first, last = word & SEQ_MASK, words[index + 1]
            if not 0 <= seq_diff(last, first) <= MAX_LOSS_SPAN:
                raise PacketError("a loss range that runs backwards or too far")
            ranges.append((first, last))
            index += 2
        else:
            ranges.append((word, word))
            index += 1
    return ranges
