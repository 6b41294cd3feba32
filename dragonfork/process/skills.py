"""What the FFmpeg binary can do: version, build configuration, codecs, filters, formats, devices, protocols
and hardware accelerations.

Read from ``ffmpeg -version``, ``-codecs``, ``-filters``, ``-formats``, ``-protocols`` and ``-hwaccels`` (run
concurrently; devices are the formats FFmpeg flags as devices) and
served at ``/api/v3/skills`` in the shape datarhei Core uses there. ``dragonfork check`` uses
:func:`has_encoder` to make sure the binary can produce what WebRTC needs (libx264, libopus).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
from typing import Any

import trio

SKILLS_TIMEOUT = 10.0

# "ffmpeg version n9.0.2-17-g2a571b6068-20260930 Copyright (c) 2000-2026 the FFmpeg developers"
_VERSION_RE = re.compile(r"^ffmpeg version (?:ffmpeg-|n)?(\S+)", re.MULTILINE)
_SEMVER_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_COMPILER_RE = re.compile(r"^\s*built with (.*)$", re.MULTILINE)
_CONFIGURATION_RE = re.compile(r"^\s*configuration: (.*)$", re.MULTILINE)
# "libavcodec     63.  1.102 / 63.  1.102"
_LIBRARY_RE = re.compile(r"^\s*(lib[a-z]+)\s+(\d+\.\s*\d+\.\s*\d+) /\s+(\d+\.\s*\d+\.\s*\d+)", re.MULTILINE)
# " DEV.LS h264                 H.264 / AVC / ... (decoders: h264 ...) (encoders: libx264 ...)"
_CODEC_RE = re.compile(r"^ ([D.])([E.])([VASDT])[I.][L.][S.] (\S+)\s+(.*)$")
_CODEC_DECODERS_RE = re.compile(r"\s*\(decoders: ([^)]*)\)")
_CODEC_ENCODERS_RE = re.compile(r"\s*\(encoders: ([^)]*)\)")
# " TS aap               AA->A      Apply Affine ..." (FFmpeg 9: two flags; before: three, "TSC")
_FILTER_RE = re.compile(r"^ [T.][S.][C.]? (\S+)\s+\S*->\S*\s+(.*)$")
# " DE  mpegts          MPEG-TS (MPEG-2 Transport Stream)"
_FORMAT_RE = re.compile(r"^ ([D ])([E ])([d ]) (\S+)\s+(.*)$")

_CODEC_TYPES = {"V": "video", "A": "audio", "S": "subtitle", "D": "data", "T": "attachment"}


class SkillsError(Exception):
    """The FFmpeg binary could not be run or did not say what it is."""


@dataclasses.dataclass(frozen=True, slots=True)
class Codec:
    id: str  # the codec name, e.g. "h264"
    name: str  # the long name, e.g. "H.264 / AVC / MPEG-4 AVC / MPEG-4 part 10"
    type: str  # "video" | "audio" | "subtitle" | "data" | "attachment"
    encoders: tuple[str, ...]
    decoders: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Format:
    id: str  # the first name of the (de)muxer, e.g. "mov" for "mov,mp4,m4a,3gp,3g2,mj2"
    name: str
    demuxer: bool
    muxer: bool
    device: bool = False  # an input or output device (lavfi, v4l2, alsa, ...)


@dataclasses.dataclass(frozen=True, slots=True)
class Library:
    name: str  # e.g. "libavcodec"
    compiled: str  # e.g. "63.1.102"
    linked: str


@dataclasses.dataclass(frozen=True, slots=True)
class Skills:
    version: str  # as FFmpeg states it, without the leading "n": "9.0.2-17-g2a571b6068-20260930"
    compiler: str
    configuration: str  # the configure command line, as printed
    libraries: tuple[Library, ...]
    codecs: tuple[Codec, ...]
    formats: tuple[Format, ...]
    input_protocols: tuple[str, ...]
    output_protocols: tuple[str, ...]
    filters: tuple[tuple[str, str], ...] = ()  # (name, description)
    hwaccels: tuple[str, ...] = ()

    @property
    def semantic_version(self) -> str:
        """``major.minor.patch`` from the version ("9.0.2"), "" for builds without one (git snapshots)."""
        match = _SEMVER_RE.match(self.version)
        if match is None:
            return ""
        major, minor, patch = match.groups()
        return f"{major}.{minor}.{patch or 0}"

    @property
    def configuration_flags(self) -> list[str]:
        """The configure options one by one: ``["--enable-gpl", "--enable-libx264", ...]``."""
        try:
            return shlex.split(self.configuration)
        except ValueError:  # unbalanced quotes: fall back to plain words
            return self.configuration.split()

    def to_json(self) -> dict[str, Any]:
        """The skills in datarhei Core's ``/api/v3/skills`` shape.

        ``ffmpeg.version`` is the binary's own semantic version, as datarhei reports it (clients compare it
        as semver; never anything else); ``ffmpeg.version_full`` adds the build suffix. Devices are listed
        without the hardware behind them (datarhei asks some devices for their sources; dragonfork does not).
        """

        def codecs_of(kind: str) -> list[dict[str, Any]]:
            return [
                {"id": c.id, "name": c.name, "encoders": list(c.encoders), "decoders": list(c.decoders)}
                for c in self.codecs
                if c.type == kind
            ]

        def formats_where(predicate: str) -> list[dict[str, str]]:
            return [{"id": f.id, "name": f.name} for f in self.formats if getattr(f, predicate)]

        def devices_where(predicate: str) -> list[dict[str, Any]]:
            return [
                {"id": f.id, "name": f.name, "devices": []}
                for f in self.formats
                if f.device and getattr(f, predicate)
            ]

        return {
            "ffmpeg": {
                "version": self.semantic_version,
                "version_full": self.version,
                "compiler": self.compiler,
                "configuration": self.configuration,
                "libraries": [dataclasses.asdict(library) for library in self.libraries],
            },
            "filter": [{"id": name, "name": description} for name, description in self.filters],
            "hwaccels": [{"id": name, "name": name} for name in self.hwaccels],
            "codecs": {kind: codecs_of(kind) for kind in ("audio", "video", "subtitle")},
            "devices": {"demuxers": devices_where("demuxer"), "muxers": devices_where("muxer")},
            "formats": {"demuxers": formats_where("demuxer"), "muxers": formats_where("muxer")},
            "protocols": {
                "input": [{"id": p, "name": p} for p in self.input_protocols],
                "output": [{"id": p, "name": p} for p in self.output_protocols],
            },
        }


def has_encoder(skills: Skills, name: str) -> bool:
    """True if the binary has an encoder called ``name`` (e.g. "libx264", "libopus")."""
    return any(name in codec.encoders for codec in skills.codecs)


# --- parsing the four listings ------------------------------------------------------------------------------


def parse_version(text: str) -> tuple[str, str, str, tuple[Library, ...]]:
    """(version, compiler, configuration, libraries) from ``ffmpeg -version``."""
    version = _VERSION_RE.search(text)
    compiler = _COMPILER_RE.search(text)
    configuration = _CONFIGURATION_RE.search(text)
    libraries = tuple(
        Library(name, re.sub(r"\s+", "", compiled), re.sub(r"\s+", "", linked))
        for name, compiled, linked in _LIBRARY_RE.findall(text)
    )
    return (
        version.group(1) if version else "",
        compiler.group(1).strip() if compiler else "",
        configuration.group(1).strip() if configuration else "",
        libraries,
    )


def _after_separator(text: str) -> list[str]:
    """The lines after the legend of ``-codecs``/``-formats`` (which ends with a line of dashes)."""
    lines = text.splitlines()
    for position, line in enumerate(lines):
        if line.strip() and set(line.strip()) == {"-"}:
            return lines[position + 1 :]
    return []


def _coders(supported: bool, listed: re.Match[str] | None, codec_id: str) -> tuple[str, ...]:
    """A codec without an explicit ``(encoders: ...)`` list has one encoder of its own name when its E flag
    is set (likewise for decoders)."""
    if not supported:
        return ()
    return tuple(listed.group(1).split()) if listed else (codec_id,)


def parse_codecs(text: str) -> tuple[Codec, ...]:
    """The codecs of ``ffmpeg -codecs``."""
    codecs = []
    for line in _after_separator(text):
        match = _CODEC_RE.match(line)
        if match is None:
            continue
        decodes, encodes, kind, codec_id, description = match.groups()
        decoders = _CODEC_DECODERS_RE.search(description)
        encoders = _CODEC_ENCODERS_RE.search(description)
        name = _CODEC_ENCODERS_RE.sub("", _CODEC_DECODERS_RE.sub("", description)).strip()
        codecs.append(
            Codec(
                id=codec_id,
                name=name,
                type=_CODEC_TYPES[kind],
                encoders=_coders(encodes == "E", encoders, codec_id),
                decoders=_coders(decodes == "D", decoders, codec_id),
            )
        )
    return tuple(codecs)


def parse_formats(text: str) -> tuple[Format, ...]:
    """The (de)muxers of ``ffmpeg -formats``, devices included."""
    formats = []
    for line in _after_separator(text):
        match = _FORMAT_RE.match(line)
        if match is None:
            continue
        demux, mux, device, names, name = match.groups()
        formats.append(
            Format(
                id=names.split(",")[0],
                name=name.strip(),
                demuxer=demux == "D",
                muxer=mux == "E",
                device=device == "d",
            )
        )
    return tuple(formats)


def parse_filters(text: str) -> tuple[tuple[str, str], ...]:
    """(name, description) of each filter of ``ffmpeg -filters``."""
    return tuple(
        (match.group(1), match.group(2).strip())
        for line in _after_separator(text)
        if (match := _FILTER_RE.match(line))
    )


def parse_hwaccels(text: str) -> tuple[str, ...]:
    """The methods ``ffmpeg -hwaccels`` lists under its heading (built in, not necessarily usable here)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return tuple(lines[1:]) if lines and lines[0].endswith(":") else ()


def parse_protocols(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input protocols, output protocols) from ``ffmpeg -protocols``."""
    found: dict[str, list[str]] = {"Input:": [], "Output:": []}
    current: list[str] | None = None
    for line in text.splitlines():
        if line in found:
            current = found[line]
        elif current is not None and line.startswith(" ") and line.strip():
            current.append(line.strip())
    return tuple(found["Input:"]), tuple(found["Output:"])


async def _listing(ffmpeg_binary: str, option: str) -> str:
    try:
        result = await trio.run_process(
            [ffmpeg_binary, "-hide_banner", option],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    except OSError as exc:
        raise SkillsError(f"cannot run FFmpeg {ffmpeg_binary!r}: {exc}") from exc
    if result.returncode != 0:
        last_line = result.stderr.decode(errors="replace").strip().rsplit("\n", 1)[-1]
        raise SkillsError(f"{ffmpeg_binary} {option} exited with code {result.returncode}: {last_line}")
    return result.stdout.decode(errors="replace")


async def read_skills(ffmpeg_binary: str, timeout: float = SKILLS_TIMEOUT) -> Skills:
    """Ask the binary what it can do. Raises :class:`SkillsError` if it cannot run, fails, does not state
    a version, or takes longer than ``timeout`` seconds for the listings together."""
    options = ("-version", "-codecs", "-filters", "-formats", "-protocols", "-hwaccels")
    listings: dict[str, str] = {}
    errors: list[SkillsError] = []

    async def read(option: str) -> None:
        try:
            listings[option] = await _listing(ffmpeg_binary, option)
        except SkillsError as exc:
            errors.append(exc)

    with trio.move_on_after(timeout) as deadline:
        async with trio.open_nursery() as nursery:
            for option in options:
                nursery.start_soon(read, option)
    if deadline.cancelled_caught:
        raise SkillsError(f"reading the skills of {ffmpeg_binary} timed out after {timeout:g} s")
    if errors:
        raise errors[0]

    version, compiler, configuration, libraries = parse_version(listings["-version"])
    if not version:
        raise SkillsError(f"{ffmpeg_binary} -version did not state a version")
    input_protocols, output_protocols = parse_protocols(listings["-protocols"])
    return Skills(
        version=version,
        compiler=compiler,
        configuration=configuration,
        libraries=libraries,
        codecs=parse_codecs(listings["-codecs"]),
        formats=parse_formats(listings["-formats"]),
        input_protocols=input_protocols,
        output_protocols=output_protocols,
        filters=parse_filters(listings["-filters"]),
        hwaccels=parse_hwaccels(listings["-hwaccels"]),
    )
