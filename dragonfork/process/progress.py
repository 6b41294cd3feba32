"""Parse what a running FFmpeg prints: the prelude and log on stderr, the ``-progress`` blocks on stdout.

The supervisor runs ``ffmpeg -hide_banner -nostdin -nostats -progress pipe:1 -stats_period 0.5 ...``, so

- stderr carries the prelude (``Input #N``/``Output #N`` headers, their ``Stream #x:y`` lines, ``Stream
  mapping:``, encoder start-up lines) followed by log lines;
- stdout carries ``key=value`` blocks, each ended by ``progress=continue`` or ``progress=end``. When an output
  is RTP, FFmpeg also prints ``SDP:`` and the session description on stdout before the first block.

Every line of every process passes through :class:`ProgressParser`, so the common case (a log line, a
progress key) costs a prefix test or a dict store; the regular expressions only run on header and stream
lines. Nothing in here raises on any input: FFmpeg output is data, and a malformed line becomes a missing
value, never a crashed supervisor.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import trio

# --- what FFmpeg told us ------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class StreamInfo:
    """One ``Stream #file:index`` line of an input or output. Values FFmpeg did not print are None."""

    index: int
    file_index: int
    type: str  # "video" | "audio" | "data" | "subtitle" | "other"
    codec: str
    profile: str | None = None
    pix_fmt: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    sample_rate: int | None = None
    layout: str | None = None  # FFmpeg's channel layout name: "stereo", "5.1(side)"
    channels: int | None = None
    bitrate_kbit: float | None = None
    language: str | None = None


@dataclasses.dataclass(slots=True)
class IOInfo:
    """One ``Input #N, format, from 'address':`` (or ``Output #N, ..., to ...``) section."""

    index: int
    format: str
    address: str
    streams: list[StreamInfo] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    """One complete ``-progress`` block. Values FFmpeg reports as ``N/A`` are 0.

    ``q`` is the quantizer of the first encoded stream (``stream_N_M_q``), -1 when the block has none.
    ``updated_at`` is ``time.monotonic()`` when the block's ``progress=`` line arrived.
    """

    frame: int
    fps: float
    q: float
    size_bytes: int
    time_seconds: float
    bitrate_kbit: float
    speed: float
    drop: int
    dup: int
    updated_at: float


# --- parsing ------------------------------------------------------------------------------------------------

MAX_PRELUDE_LINES = 200
# Caps against pathological output; real FFmpeg commands have a handful of each.
_MAX_SECTIONS = 64
_MAX_STREAMS_PER_SECTION = 64

# Numbers are bounded in length so that int() can never meet a number it refuses.
_SECTION_RE = re.compile(r"(Input|Output) #([0-9]{1,6}), (\S+), (?:from|to) '(.*)':\s*$")
# "  Stream #0:1[0x2](eng): Audio: aac (LC) (mp4a / 0x6134706D), 48000 Hz, stereo, fltp, 96 kb/s (default)"
_STREAM_RE = re.compile(r"\s+Stream #([0-9]{1,6}):([0-9]{1,6})(?:\[[^\]]*\])?(?:\(([^)]*)\))?: (\w+): (.*)$")
# A field that starts with a number and a unit: "25 fps", "29.97 fps", "1k fps", "697 kb/s", "48000 Hz".
# "tbr" (FFmpeg's guessed rate, 90k for raw RTP) is deliberately not taken as the frame rate.
_QUANTITY_RE = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,12})?)(k?) (fps|kb/s|Hz)\b")
_SIZE_RE = re.compile(r"([0-9]{1,6})x([0-9]{1,6})\b")
_PIX_FMT_RE = re.compile(r"([0-9a-z_]+)(?:\(.*\))?$")
_LAYOUT_NUMBERS_RE = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})(?:\.([0-9]{1,3}))?$")

_STREAM_TYPES = {"Video": "video", "Audio": "audio", "Data": "data", "Subtitle": "subtitle"}
_NAMED_LAYOUT_CHANNELS = {
    "mono": 1,
    "stereo": 2,
    "downmix": 2,
    "binaural": 2,
    "quad": 4,
    "hexagonal": 6,
    "octagonal": 8,
    "cube": 8,
    "hexadecagonal": 16,
}
_SECTION_PREFIXES = ("Input #", "Output #")
_STREAM_PREFIX = "  Stream #"

# The -progress keys we keep; anything else on stdout (the SDP, future keys) is not stored.
_PROGRESS_KEYS = frozenset(
    {
        "frame",
        "fps",
        "bitrate",
        "total_size",
        "out_time_us",
        "out_time_ms",
        "out_time",
        "dup_frames",
        "drop_frames",
        "speed",
    }
)


def _to_int(text: str | None) -> int:
    try:
        return int(text) if text is not None else 0
    except ValueError:
        return 0


def _to_float(text: str | None, default: float = 0.0) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


def _clock_to_seconds(text: str) -> float:
    """``HH:MM:SS.ffffff`` (optionally negative) as seconds; 0 for anything else."""
    negative = text.startswith("-")
    parts = text.lstrip("-").split(":")
    if len(parts) != 3:
        return 0.0
    try:
        seconds = int(parts[0]) * 3600 + int(parts[1]) * 60 + float(parts[2])
    except (ValueError, OverflowError):
        return 0.0
    return -seconds if negative else seconds


def _split_fields(text: str) -> list[str]:
    """Split a stream description at the commas that are not inside parentheses or brackets
    (``yuv420p(tv, bt709, progressive)`` is one field)."""
    fields: list[str] = []
    depth = 0
    start = 0
    for position, char in enumerate(text):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            fields.append(text[start:position].strip())
            start = position + 1
    fields.append(text[start:].strip())
    return fields


def _profile_of(codec_field: str) -> str | None:
    """The profile is the first parenthesized group after the codec name that is not a codec tag:
    ``h264 (Constrained Baseline) (avc1 / 0x31637661)`` -> Constrained Baseline, ``rawvideo (I420 / ...)``
    -> None."""
    rest = codec_field
    while "(" in rest:
        start = rest.index("(")
        end = rest.find(")", start)
        if end < 0:
            return None
        group = rest[start + 1 : end].strip()
        if group and " / " not in group:
            return group
        rest = rest[end + 1 :]
    return None


def channels_of_layout(layout: str) -> int | None:
    """Channel count of an FFmpeg channel layout name: ``mono`` 1, ``stereo`` 2, ``5.1(side)`` 6,
    ``7.1.4`` 12, ``6 channels`` 6; None when the name is unknown."""
    head = layout.split("(", 1)[0].strip()
    if head.endswith(" channels"):
        return _to_int(head.split(" ", 1)[0]) or None
    if head in _NAMED_LAYOUT_CHANNELS:
        return _NAMED_LAYOUT_CHANNELS[head]
    numbers = _LAYOUT_NUMBERS_RE.match(head)
    if numbers:
        return sum(int(number) for number in numbers.groups() if number)
    return None


def _parse_stream(line: str) -> StreamInfo | None:
    match = _STREAM_RE.match(line)
    if match is None:
        return None
    file_index, index, language, kind, description = match.groups()
    fields = _split_fields(description)
    codec_field = fields[0]
    stream = StreamInfo(
        index=int(index),
        file_index=int(file_index),
        type=_STREAM_TYPES.get(kind, "other"),
        codec=codec_field.split(" ", 1)[0],
        profile=_profile_of(codec_field),
        language=language or None,
    )
    previous_was_sample_rate = False
    for field in fields[1:]:
        if previous_was_sample_rate:
            stream.layout = field
            stream.channels = channels_of_layout(field)
            previous_was_sample_rate = False
            continue
        quantity = _QUANTITY_RE.match(field)
        if quantity:
            number, kilo, unit = quantity.groups()
            value = float(number) * (1000 if kilo else 1)
            if unit == "fps":
                stream.fps = value
            elif unit == "kb/s":
                stream.bitrate_kbit = value
            else:
                stream.sample_rate = int(value)
                previous_was_sample_rate = True
            continue
        if stream.type != "video":
            continue
        size = _SIZE_RE.match(field)
        if size:
            stream.width, stream.height = int(size.group(1)), int(size.group(2))
        elif stream.pix_fmt is None and stream.width is None:
            pix_fmt = _PIX_FMT_RE.match(field)
            if pix_fmt and pix_fmt.group(1) != "none":
                stream.pix_fmt = pix_fmt.group(1)
    return stream


class ProgressParser:
    """State of one FFmpeg run, built from its stderr lines and its stdout ``-progress`` lines.

    Feed lines without their line break (see :func:`iter_lines`). The prelude is every stderr line until the
    first complete progress block (at most ``max_prelude_lines``): the headers, the stream mapping, the
    ``Output #`` sections that follow it, and the encoders' start-up lines. Sections are parsed whenever
    they arrive, because stderr and stdout are read independently and their order is not guaranteed.
    """

    def __init__(self, max_prelude_lines: int = MAX_PRELUDE_LINES) -> None:
        self._max_prelude_lines = max_prelude_lines
        self._prelude: list[str] = []
        self._prelude_open = True
        self._inputs: list[IOInfo] = []
        self._outputs: list[IOInfo] = []
        self._section: IOInfo | None = None
        self._block: dict[str, str] = {}
        self._progress: Progress | None = None
        self._ended = False
        self._sdp_lines: list[str] = []
        self._reading_sdp = False

    @property
    def prelude(self) -> list[str]:
        return list(self._prelude)

    @property
    def inputs(self) -> list[IOInfo]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[IOInfo]:
        return list(self._outputs)

    @property
    def progress(self) -> Progress | None:
        """The last complete progress block, None before the first."""
        return self._progress

    @property
    def ended(self) -> bool:
        """True once FFmpeg wrote ``progress=end`` (all outputs finished)."""
        return self._ended

    @property
    def sdp(self) -> str | None:
        """The session description FFmpeg printed for its RTP outputs (CRLF line ends), None if none."""
        if not self._sdp_lines:
            return None
        return "".join(line + "\r\n" for line in self._sdp_lines)

    def feed_stderr(self, line: str) -> None:
        if self._prelude_open and len(self._prelude) < self._max_prelude_lines:
            self._prelude.append(line)
        if line.startswith(_STREAM_PREFIX):
            self._add_stream(line)
        elif line.startswith(_SECTION_PREFIXES):
            self._start_section(line)

    def feed_progress(self, line: str) -> bool:
        """Take one stdout line; True when it completed a progress block (``progress=...``)."""
        key, separator, value = line.partition("=")
        if self._reading_sdp:
            # SDP lines are "x=..." with a one-letter key; the first other line ends the description.
            if separator and len(key) == 1:
                if len(self._sdp_lines) < self._max_prelude_lines:
                    self._sdp_lines.append(line.rstrip("\r"))
                return False
            self._reading_sdp = False
        if not separator:
            if line.rstrip("\r") == "SDP:":
                self._reading_sdp = True
                self._sdp_lines = []
            return False
        if key == "progress":
            self._complete_block(value.strip())
            return True
        if key in _PROGRESS_KEYS:
            self._block[key] = value.strip()
        elif key.startswith("stream_") and key.endswith("_q") and "q" not in self._block:
            self._block["q"] = value.strip()  # the first stream's quantizer
        return False

    def _complete_block(self, state: str) -> None:
        block = self._block
        self._block = {}
        time_us = block.get("out_time_us") or block.get("out_time_ms")  # out_time_ms is in µs, too.
        if time_us is not None and time_us != "N/A":
            time_seconds = _to_float(time_us) / 1_000_000
        else:
            time_seconds = _clock_to_seconds(block.get("out_time", ""))
        self._progress = Progress(
            frame=_to_int(block.get("frame")),
            fps=_to_float(block.get("fps")),
            q=_to_float(block.get("q"), default=-1.0),
            size_bytes=_to_int(block.get("total_size")),
            time_seconds=time_seconds,
            bitrate_kbit=_to_float(block.get("bitrate", "").removesuffix("kbits/s")),
            speed=_to_float(block.get("speed", "").removesuffix("x")),
            drop=_to_int(block.get("drop_frames")),
            dup=_to_int(block.get("dup_frames")),
            updated_at=time.monotonic(),
        )
        if state == "end":
            self._ended = True
        self._prelude_open = False

    def _start_section(self, line: str) -> None:
        match = _SECTION_RE.match(line)
        if match is None:
            return
        direction, index, format_name, address = match.groups()
        sections = self._inputs if direction == "Input" else self._outputs
        if len(sections) >= _MAX_SECTIONS:
            self._section = None
            return
        section = IOInfo(index=int(index), format=format_name, address=address)
        # Outputs are announced in the order they start, not by index: keep both lists sorted by index.
        bisect.insort(sections, section, key=lambda io: io.index)
        self._section = section

    def _add_stream(self, line: str) -> None:
        section = self._section
        if section is None or len(section.streams) >= _MAX_STREAMS_PER_SECTION:
            return
        stream = _parse_stream(line)
        if stream is not None and stream.file_index == section.index:
            section.streams.append(stream)


async def iter_lines(stream: trio.abc.ReceiveStream, max_line_bytes: int = 65536) -> AsyncIterator[str]:
    """The lines of a byte stream, decoded as UTF-8 (invalid bytes replaced), without line breaks.

    ``\\n``, ``\\r\\n`` and a lone ``\\r`` (FFmpeg's stats redraw) all end a line; empty lines are dropped.
    A line longer than ``max_line_bytes`` is cut, so a child that never writes a newline cannot grow memory.
    """
    pending = b""
    async for chunk in stream:
        pending += chunk
        *complete, pending = re.split(rb"[\r\n]+", pending)
        for raw in complete:
            if raw:
                yield raw.decode("utf-8", errors="replace")
        while len(pending) > max_line_bytes:
            yield pending[:max_line_bytes].decode("utf-8", errors="replace")
            pending = pending[max_line_bytes:]
    if pending:
        yield pending.decode("utf-8", errors="replace")


# --- logs ---------------------------------------------------------------------------------------------------

LogEntry = tuple[float, str]  # (wall-clock time.time() when the line arrived, the line)


def log_json(lines: list[LogEntry]) -> list[list[str]]:
    """Log lines as datarhei Core reports them: ``[["<unix seconds>", "<line>"], ...]``."""
    return [[str(int(at)), line] for at, line in lines]


class LogRing:
    """The last ``max_lines`` stderr lines of one FFmpeg run, with the time each arrived.

    The ring holds every stderr line, prelude included (plus any notes the supervisor adds); the prelude is
    also kept, separately and never evicted, by the run's :class:`ProgressParser`, so it survives a long
    run that cycles the ring.
    """

    def __init__(self, max_lines: int = 1000) -> None:
        self._lines: collections.deque[LogEntry] = collections.deque(maxlen=max(max_lines, 1))

    def append(self, line: str, at: float | None = None) -> None:
        self._lines.append((time.time() if at is None else at, line))

    def lines(self) -> list[LogEntry]:
        return list(self._lines)

    def last_line(self) -> str:
        """The newest line, "" when there is none."""
        return self._lines[-1][1] if self._lines else ""

    def __len__(self) -> int:
        return len(self._lines)


@dataclasses.dataclass(frozen=True, slots=True)
class RunHistoryEntry:
    """What is kept of one finished FFmpeg run for the process report."""

    created_at: float  # wall-clock time the run started
    exited_at: float
    state: str  # the state the run ended in: "finished", "failed" or "killed"
    exit_code: int | None  # None when FFmpeg never started
    prelude: list[str]
    log: list[LogEntry]
    progress: Progress | None

    def to_json(self) -> dict[str, Any]:
        """The entry as one element of datarhei Core's ``report.history``."""
        progress = None
        if self.progress is not None:
            progress = dataclasses.asdict(self.progress)
            del progress["updated_at"]  # a monotonic clock reading means nothing outside this process
        return {
            "created_at": int(self.created_at),
            "exited_at": int(self.exited_at),
            "exit_state": self.state,
            "exit_code": self.exit_code,
            "prelude": list(self.prelude),
            "log": log_json(self.log),
            "progress": progress,
        }


class LogHistory:
    """The last ``max_history`` finished runs of one process, oldest first."""

    def __init__(self, max_history: int = 5) -> None:
        self._entries: collections.deque[RunHistoryEntry] = collections.deque(maxlen=max(max_history, 0))

    def push(self, entry: RunHistoryEntry) -> None:
        self._entries.append(entry)

    def entries(self) -> list[RunHistoryEntry]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
