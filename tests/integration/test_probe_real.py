"""probe_inputs and read_skills against the real FFmpeg binary (imageio-ffmpeg's static FFmpeg 9)."""

from __future__ import annotations

import socket
import stat
import subprocess
import time
from pathlib import Path

import imageio_ffmpeg
import psutil
import pytest
import trio

from dragonfork.process.probe import ProbeError, is_webrtc_compatible_h264, probe_inputs
from dragonfork.process.skills import SkillsError, has_encoder, read_skills

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
TEST_VIDEO = (["-f", "lavfi"], "testsrc2=size=320x240:rate=25")
TEST_AUDIO = (["-f", "lavfi"], "sine=frequency=440:sample_rate=48000")


def ffmpeg_children() -> list[psutil.Process]:
    return [child for child in psutil.Process().children(recursive=True) if "ffmpeg" in child.name()]


@pytest.fixture
def baseline_aac_mp4(tmp_path: Path) -> Path:
    """One second of the test pattern as H.264 constrained baseline + AAC stereo in MP4."""
    path = tmp_path / "baseline_aac.mp4"
    subprocess.run(
        [
            *[FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error"],
            *["-f", "lavfi", "-i", TEST_VIDEO[1], "-f", "lavfi", "-i", TEST_AUDIO[1], "-t", "1"],
            *["-c:v", "libx264", "-preset", "ultrafast", "-profile:v", "baseline", "-pix_fmt", "yuv420p"],
            *["-c:a", "aac", "-ac", "2", str(path)],
        ],
        check=True,
        timeout=30,
    )
    return path


async def test_probe_lavfi_inputs() -> None:
    with trio.fail_after(10):
        video_input, audio_input = await probe_inputs(FFMPEG, [TEST_VIDEO, TEST_AUDIO], timeout=5)
    (video,) = video_input.streams
    (audio,) = audio_input.streams
    assert (video_input.index, video_input.format, video_input.address) == (0, "lavfi", TEST_VIDEO[1])
    assert (video.type, video.codec, video.width, video.height, video.fps, video.pix_fmt) == (
        "video",
        "wrapped_avframe",
        320,
        240,
        25.0,
        "yuv420p",
    )
    assert (audio_input.index, audio.file_index, audio.type, audio.codec) == (1, 1, "audio", "pcm_s16le")
    assert (audio.sample_rate, audio.channels) == (48000, 1)
    assert ffmpeg_children() == []


async def test_probe_generated_file(baseline_aac_mp4: Path) -> None:
    with trio.fail_after(10):
        (probed,) = await probe_inputs(FFMPEG, [([], str(baseline_aac_mp4))], timeout=5)
    video, audio = probed.streams
    assert probed.address == str(baseline_aac_mp4) and probed.format.startswith("mov,mp4")
    assert (video.codec, video.profile, video.width, video.height, video.fps) == (
        "h264",
        "Constrained Baseline",
        320,
        240,
        25.0,
    )
    assert is_webrtc_compatible_h264(video)
    assert (audio.codec, audio.profile, audio.sample_rate, audio.channels) == ("aac", "LC", 48000, 2)


async def test_probe_missing_file_reports_ffmpeg_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.mp4")
    with trio.fail_after(10), pytest.raises(ProbeError) as caught:
        await probe_inputs(FFMPEG, [TEST_VIDEO, ([], missing)], timeout=5)
    message = str(caught.value)
    assert repr(missing) in message  # the second input is named, not the first that opened fine
    assert "Error opening input files: No such file or directory" in message
    assert "exit code 254" in message


async def test_probe_bad_input_option_fails() -> None:
    with trio.fail_after(10), pytest.raises(ProbeError) as caught:
        await probe_inputs(FFMPEG, [(["-no_such_option", "1"], TEST_VIDEO[1])], timeout=5)
    assert "Option not found" in str(caught.value)


async def test_probe_of_an_input_that_never_answers_times_out_and_kills_ffmpeg() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    started = time.monotonic()
    with trio.fail_after(10), pytest.raises(ProbeError) as caught:
        await probe_inputs(FFMPEG, [TEST_VIDEO, (["-listen", "1"], address)], timeout=1)
    elapsed = time.monotonic() - started
    assert str(caught.value) == f"probing {address!r} timed out after 1 s"
    assert 1.0 <= elapsed < 6.0  # the 1 s timeout, plus killing FFmpeg on a loaded machine; not the 10 s
    assert ffmpeg_children() == []


async def test_probe_with_a_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match="cannot run FFmpeg"):
        await probe_inputs(str(tmp_path / "no-ffmpeg"), [TEST_VIDEO], timeout=5)


async def test_probe_needs_an_input() -> None:
    with pytest.raises(ValueError):
        await probe_inputs(FFMPEG, [], timeout=5)


async def test_read_skills_of_the_real_binary() -> None:
    with trio.fail_after(15):
        skills = await read_skills(FFMPEG)
    assert has_encoder(skills, "libx264") and has_encoder(skills, "libopus")
    assert skills.semantic_version.startswith("9.") and skills.version.startswith(skills.semantic_version)
    assert "--enable-libx264" in skills.configuration_flags
    assert "whip" in [f.id for f in skills.formats if f.muxer]
    assert "rtmp" in skills.input_protocols and "srt" in skills.output_protocols
    document = skills.to_json()
    assert document["ffmpeg"]["version"] == skills.semantic_version
    assert any(codec["id"] == "opus" for codec in document["codecs"]["audio"])


async def test_read_skills_with_a_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(SkillsError, match="cannot run FFmpeg"):
        await read_skills(str(tmp_path / "no-ffmpeg"))


async def test_read_skills_of_a_binary_that_hangs_times_out(tmp_path: Path) -> None:
    hanging = tmp_path / "hanging-ffmpeg"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n")
    hanging.chmod(hanging.stat().st_mode | stat.S_IXUSR)
    started = time.monotonic()
    with trio.fail_after(10), pytest.raises(SkillsError, match=r"timed out after 0\.5 s"):
        await read_skills(str(hanging), timeout=0.5)
    assert time.monotonic() - started < 6.0  # the 0.5 s timeout and the kill, never the 30 s sleep
    assert not any(child.name() == "sleep" for child in psutil.Process().children(recursive=True))
