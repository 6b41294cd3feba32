"""The skills parsers over captured ``ffmpeg -version/-codecs/-formats/-protocols`` output, and the WebRTC
H.264 rule. Runs against the real binary are in tests/integration/test_probe_real.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dragonfork.process.probe import is_webrtc_compatible_h264
from dragonfork.process.progress import StreamInfo
from dragonfork.process.skills import (
    Codec,
    Format,
    Library,
    Skills,
    has_encoder,
    parse_codecs,
    parse_filters,
    parse_formats,
    parse_hwaccels,
    parse_protocols,
    parse_version,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ffmpeg"


def listing(name: str) -> str:
    return (FIXTURES / f"skills_{name}.txt").read_text()


def captured_skills() -> Skills:
    version, compiler, configuration, libraries = parse_version(listing("version"))
    input_protocols, output_protocols = parse_protocols(listing("protocols"))
    return Skills(
        version=version,
        compiler=compiler,
        configuration=configuration,
        libraries=libraries,
        codecs=parse_codecs(listing("codecs")),
        formats=parse_formats(listing("formats")),
        input_protocols=input_protocols,
        output_protocols=output_protocols,
        filters=parse_filters(listing("filters")),
        hwaccels=parse_hwaccels(listing("hwaccels")),
    )


def test_version() -> None:
    version, compiler, configuration, libraries = parse_version(listing("version"))
    assert version == "9.0.2-17-g2a571b6068-20260930"
    assert compiler == "gcc 16.2.0 (crosstool-NG 1.29.0.7_b1a94f6)"
    assert configuration.startswith("--prefix=/ffbuild/prefix ") and "--enable-libx264" in configuration
    assert [library.name for library in libraries] == [
        "libavutil",
        "libavcodec",
        "libavformat",
        "libavdevice",
        "libavfilter",
        "libswscale",
        "libswresample",
    ]
    assert libraries[1] == Library("libavcodec", "63.1.102", "63.1.102")
    assert libraries[-1] == Library("libswresample", "7.1.102", "7.1.102")


def test_codecs() -> None:
    codecs = {codec.id: codec for codec in parse_codecs(listing("codecs"))}
    legend_end = listing("codecs").splitlines().index(" -------")
    assert len(codecs) == len(listing("codecs").splitlines()) - legend_end - 1 == 539
    assert codecs["h264"].name == "H.264 / AVC / MPEG-4 AVC / MPEG-4 part 10"
    assert codecs["h264"].type == "video"
    assert codecs["h264"].encoders[:2] == ("libx264", "libx264rgb")
    assert codecs["opus"] == Codec(
        "opus", "Opus (Opus Interactive Audio Codec)", "audio", ("opus", "libopus"), ("opus", "libopus")
    )
    # No explicit list: the codec's own name, for each direction its flags allow.
    assert codecs["aac"] == Codec(
        "aac", "AAC (Advanced Audio Coding)", "audio", ("aac",), ("aac", "aac_fixed")
    )
    assert codecs["012v"] == Codec("012v", "Uncompressed 4:2:2 10-bit", "video", (), ("012v",))
    assert codecs["mov_text"].type == "subtitle" and codecs["bin_data"].type == "data"
    assert codecs["bin_data"].encoders == codecs["bin_data"].decoders == ()


def test_formats() -> None:
    formats = parse_formats(listing("formats"))
    legend_end = listing("formats").splitlines().index(" ---")
    assert len(formats) == len(listing("formats").splitlines()) - legend_end - 1 == 426
    by_id: dict[str, list[Format]] = {}
    for found in formats:
        by_id.setdefault(found.id, []).append(found)
    assert by_id["rtp"] == [Format("rtp", "RTP output", demuxer=True, muxer=True)]
    assert by_id["whip"] == [Format("whip", "WHIP(WebRTC-HTTP ingestion protocol) muxer", False, True)]
    assert by_id["lavfi"] == [Format("lavfi", "Libavfilter virtual input device", True, False, device=True)]
    assert not by_id["rtp"][0].device
    # "mov,mp4,m4a,3gp,3g2,mj2" (demuxer) is listed by its first name, as datarhei Core does.
    assert Format("mov", "QuickTime / MOV", demuxer=True, muxer=False) in by_id["mov"]
    assert by_id["mp4"] == [Format("mp4", "MP4 (MPEG-4 Part 14)", demuxer=False, muxer=True)]


def test_filters_and_hwaccels() -> None:
    filters = parse_filters(listing("filters"))
    legend_end = listing("filters").splitlines().index("  ------")
    assert len(filters) == len(listing("filters").splitlines()) - legend_end - 1
    assert ("aap", "Apply Affine Projection algorithm to first audio stream.") in filters
    # FFmpeg before 8 prints three flags (timeline, slice threading, command support)
    assert parse_filters("  ------\n TSC acompressor       A->A       Audio compressor.\n") == (
        ("acompressor", "Audio compressor."),
    )
    assert parse_hwaccels(listing("hwaccels"))[:2] == ("cuda", "vaapi")
    assert parse_hwaccels("Hardware acceleration methods:\n\n") == ()


def test_protocols() -> None:
    inputs, outputs = parse_protocols(listing("protocols"))
    assert inputs[0] == "async" and outputs[:2] == ("crypto", "fd")
    assert len(inputs) + len(outputs) == len(listing("protocols").splitlines()) - 3
    for protocol in ("file", "rtmp", "srt", "tcp", "udp", "rtp", "http"):
        assert protocol in inputs and protocol in outputs


def test_skills_json_has_datarhei_shape() -> None:
    skills = captured_skills()
    document = skills.to_json()
    assert set(document) == {"ffmpeg", "filter", "hwaccels", "codecs", "devices", "formats", "protocols"}
    assert {"id": "scale", "name": "Scale the input video size and/or convert the image format."} in document[
        "filter"
    ]
    assert {"id": "vaapi", "name": "vaapi"} in document["hwaccels"]
    assert {"id": "lavfi", "name": "Libavfilter virtual input device", "devices": []} in document["devices"][
        "demuxers"
    ]
    assert all(device["id"] != "mp4" for device in document["devices"]["muxers"])
    assert document["ffmpeg"]["version"] == "9.0.2"
    assert document["ffmpeg"]["version_full"] == "9.0.2-17-g2a571b6068-20260930"
    assert document["ffmpeg"]["libraries"][1] == {
        "name": "libavcodec",
        "compiled": "63.1.102",
        "linked": "63.1.102",
    }
    assert set(document["codecs"]) == {"audio", "video", "subtitle"}
    (h264,) = [codec for codec in document["codecs"]["video"] if codec["id"] == "h264"]
    assert set(h264) == {"id", "name", "encoders", "decoders"} and "libx264" in h264["encoders"]
    whip = {"id": "whip", "name": "WHIP(WebRTC-HTTP ingestion protocol) muxer"}
    assert whip in document["formats"]["muxers"]
    assert {"id": "srt", "name": "srt"} in document["protocols"]["input"]
    json.dumps(document)


def test_configuration_flags_keep_quoted_values_together() -> None:
    flags = captured_skills().configuration_flags
    assert "--enable-libopus" in flags and "--extra-libs=-lgomp -ldl" in flags


def test_has_encoder() -> None:
    skills = captured_skills()
    assert has_encoder(skills, "libx264") and has_encoder(skills, "libopus") and has_encoder(skills, "aac")
    assert not has_encoder(skills, "h264")  # a codec, not an encoder, in this build
    assert not has_encoder(skills, "libfdk_aac")


@pytest.mark.parametrize(
    "stream, compatible",
    [
        (StreamInfo(0, 0, "video", "h264", profile="Constrained Baseline"), True),
        (StreamInfo(0, 0, "video", "h264", profile="Baseline"), True),
        (StreamInfo(0, 0, "video", "h264", profile="Main"), False),
        (StreamInfo(0, 0, "video", "h264", profile="High"), False),
        (StreamInfo(0, 0, "video", "h264"), False),  # profile unknown (not printed)
        (StreamInfo(0, 0, "video", "hevc", profile="Main"), False),
        (StreamInfo(0, 0, "audio", "aac", profile="LC"), False),
    ],
)
def test_is_webrtc_compatible_h264(stream: StreamInfo, compatible: bool) -> None:
    assert is_webrtc_compatible_h264(stream) is compatible
