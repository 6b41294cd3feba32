"""ProgressParser, iter_lines and the log ring, on FFmpeg output captured by fixtures/ffmpeg/capture.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from dragonfork.process.probe import is_webrtc_compatible_h264
from dragonfork.process.progress import (
    LogHistory,
    LogRing,
    Progress,
    ProgressParser,
    RunHistoryEntry,
    StreamInfo,
    channels_of_layout,
    iter_lines,
    log_json,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ffmpeg"


def fixture_lines(name: str, stream: str) -> list[str]:
    return (FIXTURES / f"{name}.{stream}").read_bytes().decode("utf-8", errors="replace").splitlines()


def parse_fixture(name: str) -> tuple[ProgressParser, list[Progress]]:
    """Feed a captured run: stderr, then stdout; returns the parser and every completed progress block."""
    parser = ProgressParser()
    for line in fixture_lines(name, "stderr"):
        parser.feed_stderr(line)
    blocks = []
    for line in fixture_lines(name, "stdout"):
        if parser.feed_progress(line):
            assert parser.progress is not None
            blocks.append(parser.progress)
    return parser, blocks


def progress_values(progress: Progress) -> tuple[object, ...]:
    return (
        progress.frame,
        progress.fps,
        progress.q,
        progress.size_bytes,
        progress.time_seconds,
        progress.bitrate_kbit,
        progress.speed,
        progress.drop,
        progress.dup,
    )


# --- the lavfi test pattern encoded to two RTP outputs -----------------------------------------------------


def test_lavfi_inputs_are_parsed() -> None:
    parser, _ = parse_fixture("lavfi_rtp")
    video_input, audio_input = parser.inputs
    assert (video_input.index, video_input.format, video_input.address) == (
        0,
        "lavfi",
        "testsrc2=size=320x240:rate=25",
    )
    assert video_input.streams == [
        StreamInfo(
            index=0,
            file_index=0,
            type="video",
            codec="wrapped_avframe",
            pix_fmt="yuv420p",
            width=320,
            height=240,
            fps=25.0,
        )
    ]
    assert (audio_input.index, audio_input.format, audio_input.address) == (
        1,
        "lavfi",
        "sine=frequency=440:sample_rate=48000",
    )
    assert audio_input.streams == [
        StreamInfo(
            index=0,
            file_index=1,
            type="audio",
            codec="pcm_s16le",
            sample_rate=48000,
            layout="mono",
            channels=1,
            bitrate_kbit=768.0,
        )
    ]


def test_rtp_outputs_are_ordered_by_index_although_ffmpeg_announces_audio_first() -> None:
    stderr = fixture_lines("lavfi_rtp", "stderr")
    assert stderr.index(next(line for line in stderr if line.startswith("Output #1"))) < stderr.index(
        next(line for line in stderr if line.startswith("Output #0"))
    )
    argv = json.loads((FIXTURES / "lavfi_rtp.json").read_text())["argv"]
    video_address, audio_address = (arg for arg in argv if arg.startswith("rtp://"))

    parser, _ = parse_fixture("lavfi_rtp")
    video_output, audio_output = parser.outputs
    assert (video_output.index, video_output.format, video_output.address) == (0, "rtp", video_address)
    assert video_output.streams == [
        StreamInfo(
            index=0,
            file_index=0,
            type="video",
            codec="h264",
            pix_fmt="yuv420p",
            width=320,
            height=240,
            fps=25.0,
        )
    ]
    assert (audio_output.index, audio_output.format, audio_output.address) == (1, "rtp", audio_address)
    assert audio_output.streams == [
        StreamInfo(
            index=0,
            file_index=1,
            type="audio",
            codec="opus",
            sample_rate=48000,
            layout="mono",
            channels=1,
            bitrate_kbit=64.0,
        )
    ]


def test_lavfi_progress_blocks_have_the_captured_values() -> None:
    parser, blocks = parse_fixture("lavfi_rtp")
    # frame, fps, q, size_bytes, time_seconds, bitrate_kbit, speed, drop, dup
    assert [progress_values(block) for block in blocks] == [
        (38, 37.99, 20.0, 139029, 1.52, 731.7, 1.52, 0, 0),
        (63, 31.5, 21.0, 233486, 2.52, 741.2, 1.26, 0, 0),
        (88, 29.33, 21.0, 333361, 3.52, 757.6, 1.17, 0, 0),
        (100, 28.24, 21.0, 385931, 4.0, 771.9, 1.13, 0, 0),
    ]
    assert parser.ended
    assert blocks[0].updated_at <= blocks[-1].updated_at


def test_ended_is_set_by_progress_end_only() -> None:
    parser = ProgressParser()
    stdout = fixture_lines("lavfi_rtp", "stdout")
    last_block_start = len(stdout) - stdout[::-1].index("progress=continue")
    for line in stdout[:last_block_start]:
        parser.feed_progress(line)
    assert parser.progress is not None and parser.progress.frame == 88
    assert not parser.ended
    for line in stdout[last_block_start:]:
        parser.feed_progress(line)
    assert parser.ended


def test_sdp_on_stdout_is_kept_apart_from_progress() -> None:
    argv = json.loads((FIXTURES / "lavfi_rtp.json").read_text())["argv"]
    video_port = argv[argv.index("rtp") + 3].rsplit(":", 1)[1]
    parser, _ = parse_fixture("lavfi_rtp")
    assert parser.sdp is not None
    sdp_lines = parser.sdp.split("\r\n")
    assert sdp_lines[0] == "v=0"
    assert f"m=video {video_port} RTP/AVP 96" in sdp_lines
    assert "a=rtpmap:96 H264/90000" in sdp_lines
    assert "a=rtpmap:97 opus/48000/2" in sdp_lines
    assert sdp_lines[-2:] == ["a=rtpmap:97 opus/48000/2", ""]  # CRLF after the last line, nothing else
    assert not any(line.startswith("frame=") for line in sdp_lines)


# --- file inputs, copied -----------------------------------------------------------------------------------


def test_mp4_with_constrained_baseline_and_aac() -> None:
    parser, blocks = parse_fixture("mp4_baseline_aac")
    (mp4,) = parser.inputs
    assert (mp4.format, mp4.address) == ("mov,mp4,m4a,3gp,3g2,mj2", "baseline_aac.mp4")
    video, audio = mp4.streams
    assert video == StreamInfo(
        index=0,
        file_index=0,
        type="video",
        codec="h264",
        profile="Constrained Baseline",
        pix_fmt="yuv420p",
        width=320,
        height=240,
        fps=25.0,
        bitrate_kbit=697.0,
        language="und",
    )
    assert audio == StreamInfo(
        index=1,
        file_index=0,
        type="audio",
        codec="aac",
        profile="LC",
        sample_rate=48000,
        layout="stereo",
        channels=2,
        bitrate_kbit=96.0,
        language="eng",
    )
    assert is_webrtc_compatible_h264(video)
    # The stream copy keeps the input's description on the output.
    assert [s.profile for s in parser.outputs[0].streams] == ["Constrained Baseline", "LC"]
    # A copy has no quantizer (-1), no size and bitrate on the null muxer (N/A -> 0), and speed "2.26e+03x".
    assert [progress_values(block) for block in blocks] == [(50, 0.0, -1.0, 0, 2.0, 0.0, 2260.0, 0, 0)]
    assert parser.ended


def test_mpegts_with_high_profile_and_aac_51() -> None:
    parser, blocks = parse_fixture("ts_high_aac51")
    (ts,) = parser.inputs
    video, audio = ts.streams
    assert (ts.format, video.codec, video.profile, video.width, video.height, video.fps) == (
        "mpegts",
        "h264",
        "High",
        320,
        240,
        25.0,
    )
    assert video.bitrate_kbit is None and video.language is None
    assert not is_webrtc_compatible_h264(video)
    assert (audio.codec, audio.sample_rate, audio.channels, audio.bitrate_kbit, audio.language) == (
        "aac",
        44100,
        6,
        172.0,
        "deu",
    )
    assert [progress_values(block) for block in blocks] == [(50, 0.0, -1.0, 0, 2.043344, 0.0, 1660.0, 0, 0)]


def test_probe_output_of_adts_aac_file() -> None:
    parser, blocks = parse_fixture("probe_adts_aac")
    (aac,) = parser.inputs
    assert (aac.format, aac.address) == ("aac", "tone.aac")
    assert aac.streams == [
        StreamInfo(
            index=0,
            file_index=0,
            type="audio",
            codec="aac",
            profile="LC",
            sample_rate=44100,
            layout="mono",
            channels=1,
            bitrate_kbit=72.0,
        )
    ]
    assert blocks == [] and parser.progress is None and parser.outputs == []


@pytest.mark.parametrize("name, exit_code", [("missing_input", 254), ("bad_option", 8)])
def test_failed_runs_leave_no_io_and_keep_the_error_in_the_prelude(name: str, exit_code: int) -> None:
    assert json.loads((FIXTURES / f"{name}.json").read_text())["exit_code"] == exit_code
    parser, blocks = parse_fixture(name)
    assert parser.inputs == [] and parser.outputs == [] and blocks == []
    assert parser.progress is None and not parser.ended
    assert parser.prelude == fixture_lines(name, "stderr")


def test_missing_input_error_text() -> None:
    assert (
        fixture_lines("missing_input", "stderr")[-1] == "Error opening input files: No such file or directory"
    )


# --- prelude -----------------------------------------------------------------------------------------------


def test_prelude_ends_with_the_first_progress_block() -> None:
    stderr = fixture_lines("lavfi_rtp", "stderr")
    muxing_summary = next(i for i, line in enumerate(stderr) if line.startswith("[out#0/rtp"))
    parser = ProgressParser()
    for line in stderr[:muxing_summary]:
        parser.feed_stderr(line)
    stdout = fixture_lines("lavfi_rtp", "stdout")
    for line in stdout[: stdout.index("progress=continue") + 1]:  # the SDP and the first block
        parser.feed_progress(line)
    assert parser.progress is not None and parser.progress.frame == 38
    for line in stderr[muxing_summary:]:
        parser.feed_stderr(line)
    assert parser.prelude == stderr[:muxing_summary]
    assert parser.prelude[-1].startswith("      CPB properties")


def test_prelude_is_bounded() -> None:
    parser = ProgressParser(max_prelude_lines=10)
    for number in range(50):
        parser.feed_stderr(f"line {number}")
    assert parser.prelude == [f"line {number}" for number in range(10)]


def test_sections_arriving_after_the_prelude_are_still_parsed() -> None:
    """stdout and stderr are read by separate tasks: a progress block can overtake the Output section."""
    parser = ProgressParser()
    parser.feed_progress("frame=1")
    parser.feed_progress("progress=continue")
    parser.feed_stderr("Output #0, rtp, to 'rtp://127.0.0.1:5004':")
    parser.feed_stderr(
        "  Stream #0:0: Video: h264, yuv420p(tv, progressive), 320x240, q=2-31, 25 fps, 90k tbn"
    )
    assert parser.prelude == []
    assert [(io.address, io.streams[0].width) for io in parser.outputs] == [("rtp://127.0.0.1:5004", 320)]


# --- single values -----------------------------------------------------------------------------------------


def feed_block(lines: list[str]) -> Progress:
    parser = ProgressParser()
    for line in lines:
        parser.feed_progress(line)
    assert parser.feed_progress("progress=continue")
    assert parser.progress is not None
    return parser.progress


def test_q_is_the_first_stream_quantizer() -> None:
    assert feed_block(["stream_0_0_q=23.0", "stream_1_0_q=30.0"]).q == 23.0
    assert feed_block(["frame=3"]).q == -1.0


def test_time_falls_back_to_out_time_when_microseconds_are_not_available() -> None:
    assert feed_block(["out_time_us=N/A", "out_time_ms=N/A", "out_time=00:01:02.500000"]).time_seconds == 62.5
    assert feed_block(["out_time=-00:00:00.040000"]).time_seconds == -0.04
    assert feed_block(["out_time_us=N/A", "out_time=N/A"]).time_seconds == 0.0


def test_not_available_values_are_zero() -> None:
    progress = feed_block(["bitrate=N/A", "speed=N/A", "total_size=N/A", "fps=N/A", "frame=N/A"])
    assert progress_values(progress) == (0, 0.0, -1.0, 0, 0.0, 0.0, 0.0, 0, 0)


# The lines below are real FFmpeg output not covered by the captured runs (verbose logging, RTP input).
@pytest.mark.parametrize(
    "line, expected",
    [
        (
            "  Stream #0:0[0x100]: Video: h264 (High), 1 reference frame ([27][0][0][0] / 0x001B), "
            "yuv420p(progressive, left), 320x240 [SAR 1:1 DAR 4:3], 25 fps, 25 tbr, 90k tbn, start 1.480000",
            StreamInfo(
                index=0,
                file_index=0,
                type="video",
                codec="h264",
                profile="High",
                pix_fmt="yuv420p",
                width=320,
                height=240,
                fps=25.0,
            ),
        ),
        (
            "  Stream #0:0: Video: h264, none, 90k tbr, 90k tbn",
            StreamInfo(index=0, file_index=0, type="video", codec="h264"),
        ),
        (
            "  Stream #0:1: Audio: opus, 48000 Hz, stereo, fltp",
            StreamInfo(
                index=1,
                file_index=0,
                type="audio",
                codec="opus",
                sample_rate=48000,
                layout="stereo",
                channels=2,
            ),
        ),
        (
            "  Stream #0:2: Data: none",
            StreamInfo(index=2, file_index=0, type="data", codec="none"),
        ),
        (
            "  Stream #0:3(eng): Subtitle: mov_text (tx3g / 0x67337874), 0 kb/s (default)",
            StreamInfo(
                index=3, file_index=0, type="subtitle", codec="mov_text", bitrate_kbit=0.0, language="eng"
            ),
        ),
        (
            "  Stream #0:4: Attachment: ttf",
            StreamInfo(index=4, file_index=0, type="other", codec="ttf"),
        ),
    ],
)
def test_stream_lines(line: str, expected: StreamInfo) -> None:
    parser = ProgressParser()
    parser.feed_stderr("Input #0, sdp, from 'stream.sdp':")
    parser.feed_stderr(line)
    assert parser.inputs[0].streams == [expected]


@pytest.mark.parametrize(
    "layout, channels",
    [
        ("mono", 1),
        ("stereo", 2),
        ("2.1", 3),
        ("quad(side)", 4),
        ("5.1", 6),
        ("5.1(side)", 6),
        ("7.1", 8),
        ("7.1.4", 12),
        ("22.2", 24),
        ("hexadecagonal", 16),
        ("6 channels", 6),
        ("3 channels (FL+FR+LFE)", 3),
        ("s16", None),
        ("", None),
    ],
)
def test_channels_of_layout(layout: str, channels: int | None) -> None:
    assert channels_of_layout(layout) == channels


# --- robustness --------------------------------------------------------------------------------------------

_KNOWN_PREFIXES = [
    "Input #0, lavfi, from '",
    "Output #1, rtp, to '",
    "  Stream #0:0: Video: ",
    "  Stream #0:1[0x2](eng): Audio: aac (LC), ",
    "  Stream #99999999999999999999:1: Audio: ",
    "frame=",
    "fps=",
    "stream_0_0_q=",
    "bitrate=",
    "total_size=",
    "out_time_us=",
    "out_time_ms=",
    "out_time=",
    "speed=",
    "progress=",
    "SDP:",
    "v=",
    "",
]
_lines = st.one_of(
    st.text(max_size=200),
    st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(_KNOWN_PREFIXES), st.text(max_size=120)),
    st.builds(
        lambda prefix, number: prefix + number,
        st.sampled_from(_KNOWN_PREFIXES),
        st.one_of(
            st.integers().map(str),
            st.floats(allow_nan=True, allow_infinity=True).map(repr),
            st.just("9" * 4000),
            st.just("9" * 5000),
            st.just("-99:99:1e400"),
            st.just("9" * 400 + ":00:00.0"),
        ),
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.booleans(), _lines), max_size=60))
def test_feeding_any_lines_never_raises(feed: list[tuple[bool, str]]) -> None:
    parser = ProgressParser(max_prelude_lines=20)
    for to_stdout, line in feed:
        if to_stdout:
            assert parser.feed_progress(line) == line.startswith("progress=")
        else:
            parser.feed_stderr(line)
    assert len(parser.prelude) <= 20
    assert parser.sdp is None or parser.sdp.endswith("\r\n")
    if parser.progress is not None:
        assert isinstance(parser.progress.frame, int) and isinstance(parser.progress.speed, float)
    for io in parser.inputs + parser.outputs:
        assert all(stream.file_index == io.index for stream in io.streams)


_BLOCK_KEYS = ["frame", "fps", "stream_0_0_q", "bitrate", "total_size", "out_time_us", "out_time_ms"]
_BLOCK_KEYS += ["out_time", "dup_frames", "drop_frames", "speed"]
_values = st.one_of(
    st.text(max_size=40),
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(["N/A", "9" * 4000, "9" * 400 + ":00:00.0", "-00:00:00.040000", " 1.2kbits/s", "1e400x"]),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(_BLOCK_KEYS), _values))
def test_any_progress_block_gives_a_progress(block: dict[str, str]) -> None:
    parser = ProgressParser()
    for key, value in block.items():
        assert not parser.feed_progress(f"{key}={value}")
    assert parser.feed_progress("progress=continue")
    progress = parser.progress
    assert progress is not None
    assert all(isinstance(value, int | float) for value in progress_values(progress))


# --- iter_lines --------------------------------------------------------------------------------------------


async def collect_lines(chunks: list[bytes], max_line_bytes: int = 65536) -> list[str]:
    send_stream, receive_stream = trio.testing.memory_stream_one_way_pair()
    for chunk in chunks:
        await send_stream.send_all(chunk)
    await send_stream.aclose()
    return [line async for line in iter_lines(receive_stream, max_line_bytes)]


async def test_iter_lines_splits_across_chunks_like_splitlines() -> None:
    data = (FIXTURES / "lavfi_rtp.stdout").read_bytes()
    chunks = [data[start : start + 7] for start in range(0, len(data), 7)]
    with trio.fail_after(5):
        lines = await collect_lines(chunks)
    assert lines == [line for line in data.decode().splitlines() if line]


async def test_iter_lines_handles_carriage_returns_bad_bytes_and_long_lines() -> None:
    with trio.fail_after(5):
        lines = await collect_lines(
            [b"frame=1\r", b"\nstats\rnext\n", b"\xff\xfebad\n", b"x" * 25], max_line_bytes=10
        )
    assert lines == ["frame=1", "stats", "next", "\ufffd\ufffdbad", "x" * 10, "x" * 10, "x" * 5]


# --- log ring and history ----------------------------------------------------------------------------------


def test_log_ring_keeps_the_newest_lines_with_their_time() -> None:
    ring = LogRing(max_lines=3)
    assert ring.last_line() == "" and ring.lines() == []
    for number in range(5):
        ring.append(f"line {number}", at=1000.0 + number)
    assert ring.lines() == [(1002.0, "line 2"), (1003.0, "line 3"), (1004.0, "line 4")]
    assert ring.last_line() == "line 4" and len(ring) == 3


def test_log_history_keeps_the_last_runs_in_datarhei_shape() -> None:
    parser, _ = parse_fixture("mp4_baseline_aac")
    history = LogHistory(max_history=2)
    for run in range(3):
        history.push(
            RunHistoryEntry(
                created_at=1700000000.5 + run,
                exited_at=1700000010.9 + run,
                state="finished",
                exit_code=0,
                prelude=parser.prelude,
                log=[(1700000001.7 + run, f"run {run}")],
                progress=parser.progress,
            )
        )
    entries = history.entries()
    assert len(history) == 2 and [entry.log[0][1] for entry in entries] == ["run 1", "run 2"]
    report = entries[-1].to_json()
    assert report["created_at"] == 1700000002 and report["exited_at"] == 1700000012
    assert report["exit_state"] == "finished" and report["exit_code"] == 0
    assert report["log"] == [["1700000003", "run 2"]]
    assert report["prelude"] == parser.prelude
    assert report["progress"] == {
        "frame": 50,
        "fps": 0.0,
        "q": -1.0,
        "size_bytes": 0,
        "time_seconds": 2.0,
        "bitrate_kbit": 0.0,
        "speed": 2260.0,
        "drop": 0,
        "dup": 0,
    }
    json.dumps(report)  # serializable as it is


def test_log_json() -> None:
    assert log_json([(1.9, "a"), (1700000000.0, "b")]) == [["1", "a"], ["1700000000", "b"]]
