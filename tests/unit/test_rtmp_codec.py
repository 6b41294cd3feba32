"""The RTMP wire format without I/O: chunk stream, AMF0, FLV ⇄ hub conversions, stream paths, placeholders."""

from __future__ import annotations

import pytest

from dragonfork.process.placeholders import IngestAddresses, expand
from dragonfork.servers.rtmp import amf0, flv
from dragonfork.servers.rtmp.chunks import ChunkError, ChunkReader, ChunkWriter, Message
from dragonfork.servers.rtmp.session import RtmpRefused, resolve_path
from dragonfork.stream import avc


def read_all(reader: ChunkReader, data: bytes) -> list[Message]:
    messages = reader.feed(data)
    while reader.pending:
        more = reader.feed(b"")
        if not more:
            break
        messages += more
    return messages


@pytest.mark.parametrize("chunk_size", [1, 128, 4096])
@pytest.mark.parametrize("timestamp", [0, 0xFFFFFE, 0xFFFFFF, 2**32 - 1])
def test_chunks_round_trip_with_extended_timestamps(chunk_size: int, timestamp: int) -> None:
    payload = bytes(range(256)) * 20
    message = Message(9, 1, timestamp, payload, 7)
    reader = ChunkReader()
    reader.set_chunk_size(chunk_size)
    (received,) = read_all(reader, ChunkWriter(chunk_size).encode(message))
    assert (received.type_id, received.stream_id, received.timestamp, received.payload) == (
        9, 1, timestamp, payload,
    )  # fmt: skip


def test_delta_headers_wrap_at_32_bits_and_interleave() -> None:
    """Format 0, then format 2 deltas across the 32-bit wrap, then a format-3 repeat of the delta."""
    start = 2**32 - 50
    stream = bytearray()
    stream += bytes([0x04]) + b"\xff\xff\xff" + (3).to_bytes(3, "big") + b"\x09" + (1).to_bytes(4, "little")
    stream += start.to_bytes(4, "big") + b"abc"  # format 0 with an extended timestamp
    stream += bytes([0x84]) + (40).to_bytes(3, "big") + b"def"  # format 2: +40 ms
    stream += bytes([0xC4]) + b"ghi"  # format 3 starting a message: +40 ms again, across the wrap
    # a two-byte chunk stream id (320 > 319 uses the three-byte form)
    stream += bytes([0x01, (320 - 64) & 0xFF, (320 - 64) >> 8]) + bytes(3) + (1).to_bytes(3, "big") + b"\x08"
    stream += bytes(4) + b"z"
    messages = read_all(ChunkReader(), bytes(stream))
    assert [m.timestamp for m in messages] == [start, start + 40, (start + 80) % 2**32, 0]
    assert [m.payload for m in messages] == [b"abc", b"def", b"ghi", b"z"]
    assert messages[3].chunk_stream == 320


def test_set_chunk_size_applies_to_the_following_chunks() -> None:
    writer = ChunkWriter(128)
    big = Message(9, 1, 5, b"x" * 1000, 7)
    data = writer.encode(Message(1, 0, 0, (500).to_bytes(4, "big"), 2))
    writer.chunk_size = 500
    data += writer.encode(big)
    reader = ChunkReader()
    first = reader.feed(data)
    assert [m.type_id for m in first] == [1]  # stops: the caller applies the size first
    reader.set_chunk_size(500)
    assert reader.feed(b"") == [big]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (bytes([0x45]) + bytes(7), "starts with a format-1 header"),
        (bytes([0x04]) + bytes(3) + (5 * 2**20).to_bytes(3, "big") + b"\x09" + bytes(4), "exceeds the limit"),
        (bytes([0x04]) + bytes(3) + (300).to_bytes(3, "big") + b"\x09" + bytes(4) + bytes(128)
         + bytes([0x04]) + bytes(11), "while a message is unfinished"),
    ],
)  # fmt: skip
def test_chunk_stream_violations_raise(data: bytes, error: str) -> None:
    with pytest.raises(ChunkError, match=error):
        ChunkReader().feed(data)


def test_amf0_round_trip_and_bounds() -> None:
    values = ["connect", 1.0, {"app": "live", "n": 2.0, "ok": True, "list": [1.0, None]}, None]
    assert amf0.decode_all(amf0.encode_all(*values)) == values
    assert amf0.decode_all(amf0.encode_ecma_array({"width": 320.0})) == [{"width": 320.0}]
    nested: object = 1.0
    for _ in range(40):
        nested = [nested]
    with pytest.raises(amf0.Amf0Error, match="nested"):
        amf0.decode_all(amf0.encode(nested))
    with pytest.raises(amf0.Amf0Error, match="truncated"):
        amf0.decode_all(amf0.encode("hello")[:-1])
    with pytest.raises(amf0.Amf0Error, match="marker"):
        amf0.decode_all(b"\x11")


SPS = bytes.fromhex("6742c01ed9005a1e88")  # a NAL unit never ends in a zero byte
PPS = bytes.fromhex("68ce3c80")
RECORD = bytes([1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1, 0, len(SPS)]) + SPS + bytes([1, 0, len(PPS)]) + PPS


def test_avcc_and_annex_b_convert_both_ways_with_parameter_sets_on_keyframes() -> None:
    config = flv.parse_avc_config(RECORD)
    idr = bytes.fromhex("65888400")
    annex_b, keyframe = flv.avcc_to_annex_b(len(idr).to_bytes(4, "big") + idr, config)
    assert keyframe
    assert avc.split_annex_b(annex_b) == [SPS, PPS, idr]
    assert avc.avc_config_from_access_unit(annex_b) == RECORD
    assert avc.annex_b_to_avcc(annex_b) == b"".join(len(u).to_bytes(4, "big") + u for u in (SPS, PPS, idr))
    with pytest.raises(flv.MalformedMedia, match="overruns"):
        flv.avcc_to_annex_b((99).to_bytes(4, "big") + idr, config)


def test_unsupported_codecs_are_named() -> None:
    with pytest.raises(flv.UnsupportedMedia, match="FourCC 'hvc1'"):
        flv.parse_video(bytes([0x90]) + b"hvc1" + bytes(4))
    with pytest.raises(flv.UnsupportedMedia, match="On2 VP6"):
        flv.parse_video(bytes([0x14, 0]))
    with pytest.raises(flv.UnsupportedMedia, match="MP3"):
        flv.parse_audio(bytes([0x2F, 0]))
    tag = flv.parse_video(bytes([0x27, 1, 0, 0, 40]) + b"nal")
    assert tag is not None and (tag.keyframe, tag.composition_ms, tag.body) == (False, 40, b"nal")


@pytest.mark.parametrize(
    ("app", "connect_app", "stream", "expected"),
    [
        ("/", "", "live.stream", ("live.stream", "/live.stream", None)),
        ("/", "live.stream?token=abc", "", ("live.stream", "/live.stream", "abc")),
        ("/", "live", "cam1?token=x", ("live/cam1", "/live/cam1", "x")),
        ("/live", "live", "cam1", ("cam1", "/live/cam1", None)),
    ],
)
def test_stream_paths(app: str, connect_app: str, stream: str, expected: tuple[str, str, str | None]) -> None:
    path = resolve_path(app, connect_app, stream, None)
    assert (path.name, path.path, path.token) == expected


@pytest.mark.parametrize(("app", "stream"), [("/live", "other/cam"), ("/", "../etc"), ("/", "")])
def test_bad_stream_paths_are_refused(app: str, stream: str) -> None:
    with pytest.raises(RtmpRefused):
        resolve_path(app, "", stream, None)


def test_rtmp_placeholder_expands_as_datarhei() -> None:
    plain = IngestAddresses.for_rtmp(":1935", "/", "")
    assert expand("{rtmp,name=live.stream}", {}, plain) == "rtmp://localhost:1935/live.stream"
    app = IngestAddresses.for_rtmp("127.0.0.1:1936", "/live", "T")
    assert expand("x {rtmp,name=cam} y", {}, app) == "x rtmp://127.0.0.1:1936/live/cam?token=T y"
    assert expand("{rtmp,name=cam}", {}, IngestAddresses()) == "{rtmp,name=cam}"
    ipv6 = IngestAddresses.for_rtmp("[::1]:1935", "/", "")
    assert expand("{rtmp,name=cam}", {}, ipv6) == "rtmp://[::1]:1935/cam"
