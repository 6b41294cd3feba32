"""datarhei Core placeholders: ``{processid} {reference} {inputid} {outputid} {diskfs} {memfs} {fs:disk}
{fs:mem}``.

They are expanded in input/output ids, addresses and options (and the global options) when a process config is
accepted, so the stored config, the FFmpeg command and the access checks all see the same final strings; in
cleanup patterns ``{processid} {outputid} {reference}`` are expanded. An unknown ``{name}`` is left as it is:
FFmpeg filter graphs legitimately contain braces.

As in datarhei v16, ``{name^c}`` escapes the character ``c`` in the value with two backslashes (and a
backslash with three), for addresses inside other syntax: ``{memfs^:}`` inside a tee muxer's
``[f=hls]{memfs^:}/x.m3u8``.
"""

from __future__ import annotations

import re

from dragonfork.process.schema import CleanupRule, IOConfig, ProcessConfig

_PLACEHOLDER = re.compile(r"\{(processid|reference|inputid|outputid|diskfs|memfs|fs:disk|fs:mem)(?:\^(.))?\}")
_ALIASES = {"fs:disk": "diskfs", "fs:mem": "memfs"}


def _escaped(value: str, char: str) -> str:
    if char != "\\":
        value = value.replace("\\", "\\\\\\")
    return value.replace(char, "\\\\" + char)


def expand(text: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, escape = match.group(1), match.group(2)
        value = values.get(_ALIASES.get(name, name))
        if value is None:
            return match.group(0)
        return _escaped(value, escape) if escape else value

    return _PLACEHOLDER.sub(replace, text)


def _expand_io(io: IOConfig, values: dict[str, str], own_id_key: str) -> IOConfig:
    io_id = expand(io.id, values)
    scoped = {**values, own_id_key: io_id}
    naming = {key: scoped[key] for key in ("processid", "reference", own_id_key)}
    return io.model_copy(
        update={
            "id": io_id,
            "address": expand(io.address, scoped),
            "options": [expand(option, scoped) for option in io.options],
            "cleanup": [
                CleanupRule.model_validate({**rule.model_dump(), "pattern": expand(rule.pattern, naming)})
                for rule in io.cleanup
            ],
        }
    )


def expand_config(config: ProcessConfig, *, diskfs: str, memfs: str) -> ProcessConfig:
    """A copy of the config with every placeholder expanded (``diskfs``/``memfs``: what those expand to)."""
    values = {"processid": config.id, "reference": config.reference, "diskfs": diskfs, "memfs": memfs}
    return config.model_copy(
        update={
            "input": [_expand_io(io, values, "inputid") for io in config.input],
            "output": [_expand_io(io, values, "outputid") for io in config.output],
            "options": [expand(option, values) for option in config.options],
        }
    )
