"""H.264 bitstream forms: the hub's Annex B access units ⇄ length-prefixed (AVCC) NAL units, and the
AVCDecoderConfigurationRecord (``avcC``) that containers (FLV, Matroska, MP4) carry out of band."""

from __future__ import annotations

NAL_SPS = 7
NAL_PPS = 8


def split_annex_b(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B access unit (3- and 4-byte start codes)."""
    units: list[bytes] = []
    start = data.find(b"\x00\x00\x01")
    while start != -1:
        begin = start + 3
        following = data.find(b"\x00\x00\x01", begin)
        stop = len(data) if following == -1 else following
        unit = data[begin:stop].rstrip(b"\x00") if following != -1 else data[begin:stop]
        if unit:
            units.append(unit)
        start = following
    return units


def annex_b_to_avcc(data: bytes) -> bytes:
    return b"".join(len(unit).to_bytes(4, "big") + unit for unit in split_annex_b(data))


def avc_config_from_access_unit(data: bytes) -> bytes | None:
    """An AVCDecoderConfigurationRecord built from the SPS and PPS in a keyframe, or None without both."""
    units = split_annex_b(data)
    sps = next((unit for unit in units if unit[0] & 0x1F == NAL_SPS), None)
    pps = next((unit for unit in units if unit[0] & 0x1F == NAL_PPS), None)
    if sps is None or pps is None or len(sps) < 4:
        return None
    return (
        bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1])
        + len(sps).to_bytes(2, "big")
        + sps
        + b"\x01"
        + len(pps).to_bytes(2, "big")
        + pps
    )
