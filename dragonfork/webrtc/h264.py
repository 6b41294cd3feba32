"""H.264 RTP packetization (RFC 6184, packetization mode 1) shaped for the fan-out's segmented sends.

The fan-out sends a frame's packets to one viewer with UDP segmentation offload: one ``sendmsg`` carries a
run of equal-sized datagrams, of which only the last may be shorter (``aiortc_internals.SrtpSocket``).
aiortc's packetizer cuts a large NAL unit into FU-A fragments that differ by one byte (the first ones one
byte longer), so every frame took two sends per viewer. Here the fragments of a NAL unit are all the same
size but the last: a frame of one slice leaves in a single send. Small NAL units (SPS, PPS, SEI) that fit
together go in one STAP-A aggregate, alone as a single NAL unit packet, as aiortc does.
"""

from __future__ import annotations

from dragonfork.stream.avc import split_annex_b

MAX_PAYLOAD = 1300  # bytes of RTP payload per packet: aiortc's figure, room for headers and SRTP in 1500
STAP_A = 24
FU_A = 28
_FU_A_HEADER = 2  # FU indicator + FU header
_STAP_A_HEADER = 1
_LENGTH_FIELD = 2


def packetize(access_unit: bytes, max_payload: int = MAX_PAYLOAD) -> list[bytes]:
    """The RTP payloads of one Annex B access unit, in order."""
    payloads: list[bytes] = []
    aggregate: list[bytes] = []  # small NAL units waiting to share a STAP-A
    room = 0
    for unit in split_annex_b(access_unit):
        if len(unit) > max_payload:
            payloads += _aggregated(aggregate)
            aggregate = []
            payloads += _fragments(unit, max_payload)
            continue
        needed = _LENGTH_FIELD + len(unit)
        if aggregate and needed > room:
            payloads += _aggregated(aggregate)
            aggregate = []
        if not aggregate:
            room = max_payload - _STAP_A_HEADER
        aggregate.append(unit)
        room -= needed
    payloads += _aggregated(aggregate)
    return payloads


def _aggregated(units: list[bytes]) -> list[bytes]:
    """One STAP-A of ``units`` (F: any unit's; NRI: the highest), or the unit alone when it is one."""
    if len(units) <= 1:
        return units
    forbidden = max(unit[0] & 0x80 for unit in units)
    importance = max(unit[0] & 0x60 for unit in units)
    parts = [bytes([forbidden | importance | STAP_A])]
    for unit in units:
        parts += (len(unit).to_bytes(2, "big"), unit)
    return [b"".join(parts)]


def _fragments(unit: bytes, max_payload: int) -> list[bytes]:
    """FU-A fragments of ``unit``, all of one size but the last (which may be shorter)."""
    header, body = unit[0], memoryview(unit)[1:]
    available = max_payload - _FU_A_HEADER
    count = -(-len(body) // available)
    size = -(-len(body) // count)
    indicator = (header & 0xE0) | FU_A
    kind = header & 0x1F
    fragments = []
    for offset in range(0, len(body), size):
        start = 0x80 if offset == 0 else 0
        end = 0x40 if offset + size >= len(body) else 0
        fragments.append(bytes([indicator, start | end | kind]) + body[offset : offset + size])
    return fragments
