"""The process config model: datarhei Core v3 fields, dragonfork's webrtc block, and error locations."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from dragonfork.process.schema import ProcessConfig


def minimal(**extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "input": [{"id": "in", "address": "rtmp://127.0.0.1/live/in"}],
        "output": [{"id": "out", "address": "-", "options": ["-f", "null"]}],
    }
    config.update(extra)
    return config


def errors(raw: dict[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        ProcessConfig.model_validate(raw)
    return [(error["loc"], error["msg"]) for error in caught.value.errors()]


def test_defaults() -> None:
    config = ProcessConfig.model_validate(minimal(id="p1"))
    assert config.type == "ffmpeg"
    assert config.autostart is True
    assert config.reconnect is False
    assert config.reconnect_delay_seconds == 15
    assert config.stale_timeout_seconds == 0
    assert config.reference == ""
    assert config.options == []
    assert (config.limits.cpu_usage, config.limits.memory_mbytes, config.limits.waitfor_seconds) == (0, 0, 5)
    assert config.webrtc.enabled is False
    assert (config.webrtc.video_map, config.webrtc.audio_map) == ("0:v:0", "0:a:0")
    assert config.webrtc.force_transcode is False
    assert config.input[0].options == [] and config.input[0].cleanup == []


def test_generated_id_when_absent() -> None:
    first = ProcessConfig.model_validate(minimal())
    second = ProcessConfig.model_validate(minimal(id=""))
    assert re.fullmatch(r"[0-9a-f]{16}", first.id)
    assert re.fullmatch(r"[0-9a-f]{16}", second.id)
    assert first.id != second.id


def test_round_trip_keeps_the_generated_id() -> None:
    config = ProcessConfig.model_validate(minimal(webrtc={"enabled": True}))
    assert ProcessConfig.model_validate(config.model_dump()) == config


def test_datarhei_process_config_loads_and_keeps_datarhei_fields() -> None:
    raw = {
        "id": "camera-1",
        "type": "ffmpeg",
        "reference": "lobby",
        "owner": "admin",
        "domain": "",
        "input": [
            {
                "id": "input_0",
                "address": "rtsp://127.0.0.1:8554/cam",
                "options": ["-rtsp_transport", "tcp", "-thread_queue_size", "512"],
            }
        ],
        "output": [
            {
                "id": "output_0",
                "address": "{diskfs}/{processid}.m3u8",
                "options": ["-codec", "copy", "-f", "hls", "-hls_time", "2"],
                "cleanup": [
                    {"pattern": "diskfs:/{processid}_*.ts", "max_files": 12, "max_file_age_seconds": 0},
                    {"pattern": "diskfs:/{processid}.m3u8", "purge_on_delete": True},
                ],
            }
        ],
        "options": ["-loglevel", "level+info", "-err_detect", "ignore_err"],
        "reconnect": True,
        "reconnect_delay_seconds": 10,
        "autostart": False,
        "stale_timeout_seconds": 30,
        "timeout_seconds": 0,
        "scheduler": "",
        "runtime_duration_seconds": 0,
        "log_patterns": [],
        "limits": {"cpu_usage": 50, "memory_mbytes": 256, "waitfor_seconds": 0},
    }
    config = ProcessConfig.model_validate(raw)
    assert config.id == "camera-1"
    assert config.reference == "lobby"
    assert config.autostart is False and config.reconnect is True
    assert config.reconnect_delay_seconds == 10 and config.stale_timeout_seconds == 30
    assert config.limits.cpu_usage == 50 and config.limits.memory_mbytes == 256
    assert config.output[0].cleanup[0].max_files == 12
    assert config.output[0].cleanup[1].purge_on_delete is True
    dumped = config.model_dump()
    later_datarhei = (
        "owner",
        "domain",
        "timeout_seconds",
        "scheduler",
        "runtime_duration_seconds",
        "log_patterns",
    )
    assert {key: dumped[key] for key in later_datarhei} == {key: raw[key] for key in later_datarhei}


def test_fields_neither_datarhei_nor_ours_are_refused_by_name() -> None:
    for where, config in (
        ("colour", minimal(colour="red")),
        ("input.0.colour", minimal(input=[{"address": "testsrc2", "colour": "red"}])),
        ("limits.gpu", minimal(limits={"gpu": 1})),
    ):
        with pytest.raises(ValidationError) as raised:
            ProcessConfig.model_validate(config)
        assert [".".join(map(str, error["loc"])) for error in raised.value.errors()] == [where]


def test_input_and_output_ids_are_generated_when_absent() -> None:
    config = ProcessConfig.model_validate(
        minimal(
            input=[{"address": "a"}, {"id": "b", "address": "b"}], output=[{"address": "-"}, {"address": "+"}]
        )
    )
    assert config.input[1].id == "b" and config.input[0].id not in ("", "b")
    assert all(io.id for io in config.output) and config.output[0].id != config.output[1].id
    assert ProcessConfig.model_validate(config.model_dump()) == config  # stored ids stay


def test_restreamer_ui_process_ids_load() -> None:
    """The datarhei Restreamer UI names its processes ``restreamer-ui:ingest:<uuid>``."""
    process_id = "restreamer-ui:ingest:4186b095-7f0a-4e94-8c3d-f17459ab252f"
    config = ProcessConfig.model_validate(minimal(id=process_id, reference="4186b095"))
    assert config.id == process_id


def test_input_and_output_may_share_an_id() -> None:
    raw = minimal(input=[{"id": "a", "address": "x"}], output=[{"id": "a", "address": "-"}])
    config = ProcessConfig.model_validate(raw)
    assert (config.input[0].id, config.output[0].id) == ("a", "a")


def test_duplicate_input_id_names_its_path() -> None:
    raw = minimal(input=[{"id": "a", "address": "x"}, {"id": "a", "address": "y"}])
    [(_, message)] = errors(raw)
    assert "input.1.id" in message and "'a'" in message


def test_duplicate_output_id_names_its_path() -> None:
    outputs = [{"id": "o", "address": "-"}, {"id": "p", "address": "-"}, {"id": "o", "address": "-"}]
    [(_, message)] = errors(minimal(output=outputs))
    assert "output.2.id" in message and "'o'" in message


def test_output_required_unless_webrtc_enabled() -> None:
    [(_, message)] = errors(minimal(output=[]))
    assert "output" in message and "webrtc.enabled" in message

    config = ProcessConfig.model_validate(minimal(output=[], webrtc={"enabled": True}))
    assert config.output == [] and config.webrtc.enabled is True


def test_input_required() -> None:
    assert errors(minimal(input=[]))[0][0] == ("input",)


def test_only_ffmpeg_type() -> None:
    assert errors(minimal(type="gstreamer"))[0][0] == ("type",)


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"input": [{"id": "in", "address": ""}]}, ("input", 0, "address")),
        ({"input": [{"id": "in"}]}, ("input", 0, "address")),
        ({"input": [{"id": "in", "address": "x"}, {"id": "bad id", "address": "y"}]}, ("input", 1, "id")),
        ({"input": [{"id": "in", "address": "x", "options": "-re"}]}, ("input", 0, "options")),
        ({"output": [{"id": "out", "address": "-", "cleanup": [{"pattern": "memfs:/x", "max_files": -1}]}]},
         ("output", 0, "cleanup", 0, "max_files")),
        ({"id": "has/slash"}, ("id",)),
        ({"id": "x" * 129}, ("id",)),
        ({"reconnect_delay_seconds": -1}, ("reconnect_delay_seconds",)),
        ({"stale_timeout_seconds": -5}, ("stale_timeout_seconds",)),
        ({"limits": {"cpu_usage": -1}}, ("limits", "cpu_usage")),
        ({"limits": {"memory_mbytes": -1}}, ("limits", "memory_mbytes")),
        ({"limits": {"waitfor_seconds": -1}}, ("limits", "waitfor_seconds")),
        ({"limits": {"memory_mbytes": "lots"}}, ("limits", "memory_mbytes")),
        ({"webrtc": {"enabled": "perhaps"}}, ("webrtc", "enabled")),
        ({"webrtc": {"video_map": "0:v:0 -f rawvideo /tmp/x"}}, ("webrtc", "video_map")),
        ({"webrtc": {"audio_map": ""}}, ("webrtc", "audio_map")),
        ({"webrtc": {"keyframe_interval_seconds": 0}}, ("webrtc", "keyframe_interval_seconds")),
        ({"webrtc": {"keyframe_interval_seconds": 10.5}}, ("webrtc", "keyframe_interval_seconds")),
        ({"webrtc": {"video_bitrate_kbit": -1}}, ("webrtc", "video_bitrate_kbit")),
    ],
)  # fmt: skip
def test_error_locations(patch: dict[str, Any], loc: tuple[int | str, ...]) -> None:
    assert [found for found, _ in errors(minimal(**patch))] == [loc]


@pytest.mark.parametrize("specifier", ["0:v:0", "1:a:0", "0:a:0?", "[vout]", "0:v"])
def test_webrtc_stream_specifiers_accepted(specifier: str) -> None:
    config = ProcessConfig.model_validate(minimal(webrtc={"video_map": specifier, "audio_map": specifier}))
    assert config.webrtc.video_map == specifier == config.webrtc.audio_map


def test_webrtc_block_values() -> None:
    webrtc = {
        "enabled": True,
        "force_transcode": True,
        "keyframe_interval_seconds": 0.5,
        "video_bitrate_kbit": 800,
    }
    config = ProcessConfig.model_validate(minimal(webrtc=webrtc))
    assert config.webrtc.force_transcode is True
    assert config.webrtc.keyframe_interval_seconds == 0.5
    assert config.webrtc.video_bitrate_kbit == 800


def test_io_ids_may_hold_placeholders() -> None:
    raw = minimal(output=[{"id": "{processid}_hls", "address": "{diskfs}/{processid}.m3u8"}])
    assert ProcessConfig.model_validate(raw).output[0].id == "{processid}_hls"


def test_nul_characters_are_refused_in_what_ffmpeg_runs() -> None:
    """Configs from db.json or a file never pass the HTTP layer's JSON checks: the model refuses U+0000."""
    for field, config in (
        (("input", 0, "address"), {"input": [{"id": "a", "address": "in\x00put"}], "output": []}),
        (
            ("input", 0, "options"),
            {"input": [{"id": "a", "address": "x", "options": ["-f\x00"]}], "output": []},
        ),
        (("options",), {"input": [{"id": "a", "address": "x"}], "output": [], "options": ["-y\x00"]}),
    ):
        with pytest.raises(ValidationError) as caught:
            ProcessConfig.model_validate({**config, "webrtc": {"enabled": True}})
        assert caught.value.errors()[0]["loc"] == field
        assert "U+0000" in caught.value.errors()[0]["msg"]
