"""datarhei Core placeholders: ``{processid} {reference} {inputid} {outputid} {diskfs} {memfs} {fs:disk}
{fs:mem} {rtmp,name=NAME}``.

They are expanded in input/output ids, addresses and options (and the global options) when a process config is
accepted, so the stored config, the FFmpeg command and the access checks all see the same final strings; in
cleanup patterns ``{processid} {outputid} {reference}`` are expanded. An unknown ``{name}`` is left as it is:
FFmpeg filter graphs legitimately contain braces.

As in datarhei v16, ``{name^c}`` escapes the character ``c`` in the value with two backslashes (and a
backslash with three), for addresses inside other syntax: ``{memfs^:}`` inside a tee muxer's
``[f=hls]{memfs^:}/x.m3u8``.

``{rtmp,name=NAME}`` is this server's own RTMP server, as datarhei writes it:
``rtmp://HOST:PORT[app]/NAME[?token=T]`` (HOST from ``rtmp.address``, ``localhost`` when empty; the app
only when it is not ``/``). FFmpeg plays it in an input and publishes to it in an output.
"""

from __future__ import annotations

import dataclasses
import re

from dragonfork.process.access import AddressDenied
from dragonfork.process.schema import CleanupRule, IOConfig, ProcessConfig

_PLACEHOLDER = re.compile(
    r"\{(processid|reference|inputid|outputid|diskfs|memfs|fs:disk|fs:mem)(?:\^(.))?\}|\{rtmp,name=([^{}]*)\}"
)
_ALIASES = {"fs:disk": "diskfs", "fs:mem": "memfs"}
_RTMP = re.compile(r"\{rtmp,name=[^{}]*\}")


@dataclasses.dataclass(frozen=True)
class IngestAddresses:
    """Where FFmpeg reaches this server's own ingest servers; None for a server that is not enabled."""

    rtmp: str | None = None
    """``rtmp://HOST:PORT[app]``, the base of every ``{rtmp,name=NAME}``."""
    rtmp_token: str = ""

    @classmethod
    def for_rtmp(cls, address: str, app: str, token: str) -> IngestAddresses:
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "localhost"
        if ":" in host:
            host = f"[{host}]"  # an IPv6 address
        base = f"rtmp://{host}:{port}{'' if app == '/' else app}"
        return cls(rtmp=base, rtmp_token=token)

    def rtmp_url(self, name: str) -> str | None:
        if self.rtmp is None:
            return None
        return f"{self.rtmp}/{name}" + (f"?token={self.rtmp_token}" if self.rtmp_token else "")


def _escaped(value: str, char: str) -> str:
    if char != "\\":
        value = value.replace("\\", "\\\\\\")
    return value.replace(char, "\\\\" + char)


def expand(text: str, values: dict[str, str], ingest: IngestAddresses | None = None) -> str:
    def replace(match: re.Match[str]) -> str:
        name, escape, rtmp_name = match.group(1), match.group(2), match.group(3)
        if name is not None:
            value = values.get(_ALIASES.get(name, name))
            if value is None:
                return match.group(0)
            return _escaped(value, escape) if escape else value
        url = ingest.rtmp_url(rtmp_name) if ingest is not None else None
        return match.group(0) if url is None else url

    return _PLACEHOLDER.sub(replace, text)


def _expand_io(io: IOConfig, values: dict[str, str], own_id_key: str, ingest: IngestAddresses) -> IOConfig:
    io_id = expand(io.id, values)
    scoped = {**values, own_id_key: io_id}
    naming = {key: scoped[key] for key in ("processid", "reference", own_id_key)}
    return io.model_copy(
        update={
            "id": io_id,
            "address": expand(io.address, scoped, ingest),
            "options": [expand(option, scoped, ingest) for option in io.options],
            "cleanup": [
                CleanupRule.model_validate({**rule.model_dump(), "pattern": expand(rule.pattern, naming)})
                for rule in io.cleanup
            ],
        }
    )


NO_INGEST = IngestAddresses()


def expand_config(
    config: ProcessConfig, *, diskfs: str, memfs: str, ingest: IngestAddresses = NO_INGEST
) -> ProcessConfig:
    """A copy of the config with every placeholder expanded (``diskfs``/``memfs``: what those expand to)."""
    values = {"processid": config.id, "reference": config.reference, "diskfs": diskfs, "memfs": memfs}
    return config.model_copy(
        update={
            "input": [_expand_io(io, values, "inputid", ingest) for io in config.input],
            "output": [_expand_io(io, values, "outputid", ingest) for io in config.output],
            "options": [expand(option, values, ingest) for option in config.options],
        }
    )


def check_ingest_available(resolved: ProcessConfig) -> None:
    """Refuse an address still holding ``{rtmp,...}`` after expansion: its server is not enabled."""
    for kind, ios in (("input", resolved.input), ("output", resolved.output)):
        for index, io in enumerate(ios):
            if _RTMP.search(io.address):
                raise AddressDenied(
                    f"{kind}.{index}.address",
                    io.address,
                    "{rtmp,name=...} needs the RTMP server: set rtmp.enable (CORE_RTMP_ENABLE=true)",
                )
