"""The process configuration as datarhei Core v3 defines it, plus dragonfork's ``webrtc`` block.

A config stored or returned by the API is exactly this model serialised. It has every field of datarhei's
``api.ProcessConfig``, so a datarhei config loads and comes back unchanged; a field that is neither
datarhei's nor dragonfork's is refused (``extra="forbid"``) instead of vanishing silently. Input and output
ids are generated when absent, as datarhei's API does. Validation errors carry the field path
(``input.0.address``) the HTTP layer reports.
"""

from __future__ import annotations

import re
import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dragonfork.files.filesystem import compile_glob

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:{}=,-]+$")

Order = Literal["start", "stop"]
ExecState = Literal["finished", "starting", "running", "finishing", "failed", "killed"]
Command = Literal["start", "stop", "restart", "reload"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _no_nul(value: str | list[str]) -> str | list[str]:
    """U+0000 would end the string as FFmpeg (C) reads it: what it runs would not be what was checked."""
    if any("\x00" in text for text in ([value] if isinstance(value, str) else value)):
        raise ValueError("must not contain U+0000")
    return value


CLEANUP_FILESYSTEMS = {"mem": "mem", "memfs": "mem", "disk": "disk", "diskfs": "disk"}


class CleanupRule(_Model):
    """datarhei's cleanup rule: ``pattern`` is ``<filesystem>:<glob>`` (``memfs:/{processid}_*.ts``)."""

    pattern: str
    max_files: int = Field(0, ge=0)
    max_file_age_seconds: int = Field(0, ge=0)
    purge_on_delete: bool = False

    @field_validator("pattern")
    @classmethod
    def _names_a_filesystem(cls, value: str) -> str:
        name, sep, glob = value.partition(":")
        if not sep or name not in CLEANUP_FILESYSTEMS or not glob:
            raise ValueError("must be <filesystem>:<glob> with filesystem mem, memfs, disk or diskfs")
        _no_nul(value)
        compile_glob("/" + glob.lstrip("/"))  # a ValueError names what is wrong with the glob
        return value

    @property
    def filesystem(self) -> str:
        """``mem`` or ``disk`` (datarhei's legacy names ``memfs``/``diskfs`` included)."""
        return CLEANUP_FILESYSTEMS[self.pattern.partition(":")[0]]

    @property
    def glob(self) -> str:
        """The glob part as an absolute path pattern."""
        return "/" + self.pattern.partition(":")[2].lstrip("/")


class IOConfig(_Model):
    id: str = Field("", description="Generated when absent")
    address: str = Field(min_length=1)
    options: list[str] = []
    cleanup: list[CleanupRule] = []

    _no_nul = field_validator("address", "options")(_no_nul)

    @field_validator("id")
    @classmethod
    def _id_chars(cls, value: str) -> str:
        if value and not ID_PATTERN.match(value):
            raise ValueError("may only contain letters, digits and _ . : - (and {placeholders})")
        return value


class Limits(_Model):
    cpu_usage: float = Field(0, ge=0, description="Percent of one core (100 = one full core); 0 is no limit")
    memory_mbytes: int = Field(0, ge=0, description="Resident memory in MiB; 0 is no limit")
    waitfor_seconds: int = Field(5, ge=0, description="How long a limit may be exceeded before the kill")


class WebRTCProcessConfig(_Model):
    enabled: bool = False
    video_map: str = Field("0:v:0", description="FFmpeg -map of the video stream to serve")
    audio_map: str = Field("0:a:0", description="FFmpeg -map of the audio stream (skipped when absent)")
    force_transcode: bool = Field(False, description="Encode H.264 even when the input could be copied")
    keyframe_interval_seconds: float = Field(2.0, gt=0, le=10)
    video_bitrate_kbit: int = Field(0, ge=0, description="x264 target bitrate when transcoding; 0 is CRF")

    @field_validator("video_map", "audio_map")
    @classmethod
    def _map_syntax(cls, value: str) -> str:
        if not re.fullmatch(r"\[?[A-Za-z0-9_:.]+\]?\??", value):
            raise ValueError("must be an FFmpeg stream specifier such as 0:v:0")
        return value


class ProcessConfig(_Model):
    id: str = ""
    type: Literal["ffmpeg"] = "ffmpeg"
    reference: str = ""
    input: list[IOConfig] = Field(min_length=1)
    output: list[IOConfig] = []
    options: list[str] = []
    reconnect: bool = False
    reconnect_delay_seconds: int = Field(15, ge=0)
    autostart: bool = True
    stale_timeout_seconds: int = Field(0, ge=0)
    limits: Limits = Limits()
    # Fields of later datarhei Core releases that its clients send: stored and returned unchanged so a
    # datarhei client reads back what it wrote; dragonfork has no feature behind them (README).
    owner: str = ""
    domain: str = ""
    timeout_seconds: int = Field(0, ge=0)
    scheduler: str = ""
    runtime_duration_seconds: int = Field(0, ge=0)
    log_patterns: list[str] = []
    webrtc: WebRTCProcessConfig = WebRTCProcessConfig()

    _no_nul = field_validator("options", "reference")(_no_nul)

    @field_validator("id")
    @classmethod
    def _process_id(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", value):
            raise ValueError("may only contain letters, digits and _ . : - (at most 128)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ProcessConfig:
        if not self.id:
            self.id = secrets.token_hex(8)
        for kind, ios in (("input", self.input), ("output", self.output)):
            seen: set[str] = set()
            for index, io in enumerate(ios):
                if io.id and io.id in seen:
                    raise ValueError(f"{kind}.{index}.id: duplicate {kind} id {io.id!r}")
                seen.add(io.id)
            for io in ios:
                while not io.id:
                    candidate = secrets.token_hex(4)
                    if candidate not in seen:
                        io.id = candidate
                        seen.add(candidate)
        if not self.output and not self.webrtc.enabled:
            raise ValueError("output: at least one output is required unless webrtc.enabled is true")
        return self
