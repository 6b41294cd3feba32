"""Placeholder expansion and the address policy (access rules, local files inside the data directory)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dragonfork.config import AccessRules
from dragonfork.process.access import AccessPolicy, AddressDenied
from dragonfork.process.placeholders import IngestAddresses, check_ingest_available, expand, expand_config
from dragonfork.process.schema import ProcessConfig

DISKFS = "/srv/dragonfork/data"
MEMFS = "http://127.0.0.1:8080/memfs"


def process(
    inputs: list[dict[str, Any]], outputs: list[dict[str, Any]] | None = None, **extra: Any
) -> ProcessConfig:
    output = outputs if outputs is not None else [{"id": "out", "address": "-", "options": ["-f", "null"]}]
    return ProcessConfig.model_validate({"id": "cam1", "input": inputs, "output": output, **extra})


# --- placeholders -------------------------------------------------------------------------------------------


def test_placeholders_in_ids_addresses_and_options() -> None:
    config = process(
        inputs=[
            {
                "id": "in_{processid}",
                "address": "rtmp://127.0.0.1/live/{reference}",
                "options": ["-metadata", "title={processid}/{inputid}"],
            }
        ],
        outputs=[
            {
                "id": "{reference}_hls",
                "address": "{diskfs}/{processid}/{outputid}.m3u8",
                "options": ["-hls_segment_filename", "{diskfs}/{processid}_{outputid}_%04d.ts"],
            }
        ],
        reference="lobby",
        options=["-loglevel", "level+info", "-metadata", "comment={processid}:{reference}:{diskfs}"],
    )
    resolved = expand_config(config, diskfs=DISKFS, memfs=MEMFS)

    assert resolved.input[0].id == "in_cam1"
    assert resolved.input[0].address == "rtmp://127.0.0.1/live/lobby"
    assert resolved.input[0].options == ["-metadata", "title=cam1/in_cam1"]
    assert resolved.output[0].id == "lobby_hls"
    assert resolved.output[0].address == f"{DISKFS}/cam1/lobby_hls.m3u8"
    assert resolved.output[0].options == ["-hls_segment_filename", f"{DISKFS}/cam1_lobby_hls_%04d.ts"]
    assert resolved.options == ["-loglevel", "level+info", "-metadata", f"comment=cam1:lobby:{DISKFS}"]
    # The accepted config itself keeps its placeholders (that is what the API returns and stores).
    assert config.output[0].address == "{diskfs}/{processid}/{outputid}.m3u8"


def test_io_placeholders_are_scoped() -> None:
    """``{inputid}`` means something only in an input, ``{outputid}`` only in an output."""
    config = process(
        inputs=[{"id": "a", "address": "srt://127.0.0.1:6000?streamid={outputid}"}],
        outputs=[{"id": "b", "address": "rtmp://127.0.0.1/live/{inputid}"}],
        options=["-metadata", "x={inputid}{outputid}"],
    )
    resolved = expand_config(config, diskfs=DISKFS, memfs=MEMFS)
    assert resolved.input[0].address == "srt://127.0.0.1:6000?streamid={outputid}"
    assert resolved.output[0].address == "rtmp://127.0.0.1/live/{inputid}"
    assert resolved.options == ["-metadata", "x={inputid}{outputid}"]


def test_each_io_sees_its_own_id() -> None:
    outputs = [{"id": f"o{index}", "address": "{diskfs}/{outputid}.mp4"} for index in range(3)]
    config = process(inputs=[{"id": "in", "address": "x"}], outputs=outputs)
    resolved = expand_config(config, diskfs=DISKFS, memfs=MEMFS)
    assert [io.address for io in resolved.output] == [f"{DISKFS}/o{index}.mp4" for index in range(3)]


@pytest.mark.parametrize(
    "text",
    [
        "[0:v]drawtext=text='%{pts\\:hms}':x=10:y=10[v]",
        "{memfs}/{processid_x}.m3u8",
        "{rtmp,name=lobby.stream}",
        "{ processid }{PROCESSID}{}",
        "geq=lum='{X}'",
    ],
)
def test_unknown_braces_untouched(text: str) -> None:
    assert expand(text, {"processid": "cam1", "reference": "r", "diskfs": DISKFS}) == text


@given(st.text(alphabet=st.sampled_from("{}abcdefghijklmnopqrstuvwxyz_:=,[]'/ ")))
def test_text_without_placeholder_names_is_unchanged(text: str) -> None:
    values = {"processid": "P", "reference": "R", "inputid": "I", "outputid": "O", "diskfs": "D"}
    expected = text
    for name, value in (*values.items(), ("fs:disk", "D")):
        expected = expected.replace("{" + name + "}", value)
    assert expand(text, values) == expected


WHIP = IngestAddresses(whip="http://127.0.0.1:8080/api/v3/whip", whip_key="k3y")


def test_whip_input_expands_to_the_matroska_read_with_its_key() -> None:
    config = process([{"id": "in", "address": "{whip,name=cam 3}"}])

    resolved = expand_config(config, diskfs=DISKFS, memfs=MEMFS, ingest=WHIP)

    assert resolved.input[0].address == "http://127.0.0.1:8080/api/v3/whip/cam%203/stream.mkv?key=k3y"
    check_ingest_available(resolved)


def test_whip_as_an_output_or_without_whip_ingest_is_refused_naming_the_field() -> None:
    as_output = process([{"id": "in", "address": "-"}], [{"id": "out", "address": "{whip,name=cam3}"}])
    without = process([{"id": "in", "address": "{whip,name=cam3}"}])

    with pytest.raises(AddressDenied) as output_refused:
        check_ingest_available(expand_config(as_output, diskfs=DISKFS, memfs=MEMFS, ingest=WHIP))
    with pytest.raises(AddressDenied) as off_refused:
        check_ingest_available(expand_config(without, diskfs=DISKFS, memfs=MEMFS))

    assert output_refused.value.field == "output.0.address" and "is an input" in str(output_refused.value)
    assert off_refused.value.field == "input.0.address" and "whip.enable" in str(off_refused.value)


# --- access rules -------------------------------------------------------------------------------------------


def policy(
    data_dir: Path,
    *,
    input_allow: list[str] | None = None,
    input_block: list[str] | None = None,
    output_allow: list[str] | None = None,
    output_block: list[str] | None = None,
) -> AccessPolicy:
    return AccessPolicy(
        input=AccessRules(allow=input_allow or [], block=input_block or []),
        output=AccessRules(allow=output_allow or [], block=output_block or []),
        data_dir=data_dir,
    )


def denied(access: AccessPolicy, config: ProcessConfig) -> AddressDenied:
    with pytest.raises(AddressDenied) as caught:
        access.check(config)
    return caught.value


def single_input(address: str, options: list[str] | None = None) -> ProcessConfig:
    return process(inputs=[{"id": "in", "address": address, "options": options or []}])


def test_block_wins_over_allow(tmp_path: Path) -> None:
    access = policy(tmp_path, input_allow=["^rtmp://"], input_block=["/private/"])
    access.check(single_input("rtmp://127.0.0.1/live/public"))

    error = denied(access, single_input("rtmp://127.0.0.1/private/cam"))
    assert error.field == "input.0.address"
    assert error.address == "rtmp://127.0.0.1/private/cam"
    assert error.rule == "matches ffmpeg.access.input.block '/private/'"
    assert str(error) == (
        "input.0.address: address 'rtmp://127.0.0.1/private/cam' is not allowed "
        "(matches ffmpeg.access.input.block '/private/')"
    )


def test_allow_list_restricts(tmp_path: Path) -> None:
    access = policy(tmp_path, input_allow=["^rtmp://", "^srt://"])
    config = process(
        inputs=[
            {"id": "a", "address": "srt://127.0.0.1:6000"},
            {"id": "b", "address": "http://127.0.0.1:8080/stream.m3u8"},
        ]
    )
    error = denied(access, config)
    assert error.field == "input.1.address"
    assert error.address == "http://127.0.0.1:8080/stream.m3u8"
    assert "ffmpeg.access.input.allow" in error.rule


def test_output_rules(tmp_path: Path) -> None:
    access = policy(tmp_path, output_allow=["^rtmp://"], output_block=["youtube"])
    outputs = [
        {"id": "ok", "address": "rtmp://127.0.0.1/live/a"},
        {"id": "yt", "address": "rtmp://a.rtmp.youtube.com/live2/key"},
    ]
    error = denied(access, process(inputs=[{"id": "in", "address": "srt://127.0.0.1:6000"}], outputs=outputs))
    assert error.field == "output.1.address"
    assert error.rule == "matches ffmpeg.access.output.block 'youtube'"

    outputs = [{"id": "hls", "address": "http://127.0.0.1:8080/memfs/a.m3u8"}]
    error = denied(access, process(inputs=[{"id": "in", "address": "srt://127.0.0.1:6000"}], outputs=outputs))
    assert (error.field, error.address) == ("output.0.address", "http://127.0.0.1:8080/memfs/a.m3u8")
    assert "ffmpeg.access.output.allow" in error.rule


def test_input_rules_do_not_apply_to_outputs(tmp_path: Path) -> None:
    access = policy(tmp_path, input_block=["^rtmp://"])
    outputs = [{"id": "out", "address": "rtmp://127.0.0.1/live/a"}]
    access.check(process(inputs=[{"id": "in", "address": "srt://127.0.0.1:6000"}], outputs=outputs))


@pytest.mark.parametrize(
    "address",
    [
        "rtmp://127.0.0.1/live/a",
        "rtmps://127.0.0.1/live/a",
        "srt://127.0.0.1:6000?mode=caller",
        "rtsp://127.0.0.1:8554/cam",
        "http://127.0.0.1:8080/a.m3u8",
        "https://127.0.0.1/a.m3u8",
        "udp://127.0.0.1:5000",
        "-",
    ],
)
def test_network_urls_pass(tmp_path: Path, address: str) -> None:
    policy(tmp_path).check(single_input(address))


# --- local files --------------------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    (directory / "videos").mkdir(parents=True)
    (directory / "videos" / "clip.mp4").write_bytes(b"inside")
    (tmp_path / "secret.mp4").write_bytes(b"outside")
    return directory


def test_files_inside_the_data_directory_are_allowed(data_dir: Path) -> None:
    access = policy(data_dir)
    for address in (
        f"{data_dir}/videos/clip.mp4",
        f"file:{data_dir}/videos/clip.mp4",
        f"{data_dir}/videos/not-yet-there.mp4",
        f"{data_dir}/videos/../videos/clip.mp4",
    ):
        access.check(single_input(address))


@pytest.mark.parametrize(
    "template",
    [
        "/etc/passwd",
        "file:/etc/passwd",
        "file:///etc/passwd",
        "{data}/../secret.mp4",
        "file:{data}/videos/../../secret.mp4",
        "{data}-sibling/clip.mp4",
    ],
)
def test_files_outside_the_data_directory_are_refused(data_dir: Path, template: str) -> None:
    address = template.format(data=data_dir)
    error = denied(policy(data_dir), single_input(address))
    assert error.field == "input.0.address"
    assert error.address == address
    assert error.rule == f"local files must be inside the data directory {data_dir}"


def test_symlink_out_of_the_data_directory_is_refused(data_dir: Path) -> None:
    link = data_dir / "videos" / "link.mp4"
    link.symlink_to(data_dir.parent / "secret.mp4")
    denied(policy(data_dir), single_input(str(link)))

    linked_dir = data_dir / "etc"
    linked_dir.symlink_to("/etc")
    denied(policy(data_dir), single_input(f"file:{linked_dir}/passwd"))


def test_data_directory_reached_through_a_symlink(tmp_path: Path, data_dir: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(data_dir)
    policy(alias).check(single_input(f"{data_dir}/videos/clip.mp4"))
    policy(data_dir).check(single_input(f"{alias}/videos/clip.mp4"))


def test_relative_paths_resolve_against_the_working_directory(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FFmpeg inherits the server's working directory, so the check resolves relative paths the same way."""
    monkeypatch.chdir(data_dir)
    policy(data_dir).check(single_input("videos/clip.mp4"))
    denied(policy(data_dir), single_input("../secret.mp4"))


def test_lavfi_inputs_are_not_paths(data_dir: Path) -> None:
    config = process(
        inputs=[
            {"id": "v", "address": "testsrc2=size=320x240:rate=25", "options": ["-re", "-f", "lavfi"]},
            {"id": "a", "address": "sine=frequency=440:sample_rate=48000", "options": ["-f", "lavfi"]},
        ]
    )
    policy(data_dir).check(config)


def test_access_rules_still_apply_to_lavfi_inputs(data_dir: Path) -> None:
    access = policy(data_dir, input_block=["^testsrc"])
    error = denied(access, single_input("testsrc2=size=320x240", ["-f", "lavfi"]))
    assert error.rule == "matches ffmpeg.access.input.block '^testsrc'"


def test_local_file_check_applies_after_placeholders(data_dir: Path) -> None:
    """The registry checks the expanded config: ``{diskfs}`` inside the data directory passes."""
    config = process(inputs=[{"id": "in", "address": "{diskfs}/videos/clip.mp4"}])
    policy(data_dir).check(expand_config(config, diskfs=str(data_dir), memfs=MEMFS))
    denied(policy(data_dir), expand_config(config, diskfs=str(data_dir.parent), memfs=MEMFS))


@pytest.mark.parametrize(
    "template",
    [
        "cache:/etc/passwd",
        "concat:{data}/videos/clip.mp4|/etc/passwd",
        "async:file:/etc/passwd",
        "subfile,,start,0,end,0,,:/etc/passwd",
    ],
    ids=["cache", "concat", "async", "subfile"],
)
def test_file_reading_protocols_cannot_leave_the_data_directory(
    data_dir: Path, template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """These FFmpeg protocols read local files (checked with the bundled FFmpeg): they are not network URLs.

    Run from inside the data directory, where an address that looks relative resolves inside it.
    """
    monkeypatch.chdir(data_dir)
    denied(policy(data_dir), single_input(template.format(data=data_dir)))


@pytest.mark.parametrize(
    "source", ["movie=/etc/passwd", "amovie=filename=/etc/passwd", "movie=/etc/passwd,scale=64:48"]
)
def test_lavfi_movie_sources_cannot_leave_the_data_directory(data_dir: Path, source: str) -> None:
    """``-f lavfi -i movie=PATH`` opens PATH as a media file: a lavfi graph can read files too."""
    denied(policy(data_dir), single_input(source, ["-f", "lavfi"]))


def test_realpath_of_missing_data_directory(tmp_path: Path) -> None:
    """A data directory that does not exist yet still confines reads to where it will be."""
    missing = tmp_path / "not-created"
    policy(missing).check(single_input(os.fspath(missing / "clip.mp4")))
    denied(policy(missing), single_input(os.fspath(tmp_path / "clip.mp4")))


# --- options: the way around the address rules ------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "options", "field"),
    [
        ("input", ["-i", "tcp://127.0.0.1:9000"], "input.0.options.0"),
        ("global", ["-i", "/etc/passwd"], "options.0"),
        ("output", ["-attach", "/etc/passwd"], "output.0.options.1"),
        ("output", ["-/vf", "/etc/passwd"], "output.0.options.1"),
        ("global", ["-filter_complex_script", "/etc/filter.txt"], "options.1"),
        ("output", ["-f", "hls", "-hls_segment_filename", "/tmp/elsewhere/%03d.ts"], "output.0.options.3"),
        ("global", ["-filter_complex", "movie=/etc/passwd[v]"], "options.1"),
        ("output", ["-dump_attachment:t", ""], "output.0.options.0"),
    ],
)
def test_options_cannot_bypass_the_address_rules(
    data_dir: Path, where: str, options: list[str], field: str
) -> None:
    inputs = [{"id": "in", "address": "testsrc2", "options": ["-f", "lavfi"]}]
    outputs = [{"id": "out", "address": "-", "options": ["-f", "null"]}]
    extra: dict[str, Any] = {}
    if where == "input":
        inputs[0]["options"] = [*options, "-f", "lavfi"]
    elif where == "output":
        outputs[0]["options"] = options
    else:
        extra["options"] = options
    error = denied(policy(data_dir), process(inputs=inputs, outputs=outputs, **extra))
    assert error.field == field


def test_file_options_inside_the_data_directory_are_fine(data_dir: Path) -> None:
    outputs = [
        {
            "id": "hls",
            "address": str(data_dir / "live.m3u8"),
            "options": ["-f", "hls", "-hls_segment_filename", str(data_dir / "live_%03d.ts")],
        }
    ]
    policy(data_dir).check(
        process(inputs=[{"id": "in", "address": "testsrc2", "options": ["-f", "lavfi"]}], outputs=outputs)
    )
