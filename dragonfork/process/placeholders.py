"""datarhei Core placeholders: ``{processid} {reference} {inputid} {outputid} {diskfs}``.

They are expanded in input/output ids, addresses and options (and the global options) when a process config is
accepted, so the stored config, the FFmpeg command and the access checks all see the same final strings.
An unknown ``{name}`` is left as it is: FFmpeg filter graphs legitimately contain braces.
"""

from __future__ import annotations

import re

from dragonfork.process.schema import IOConfig, ProcessConfig

_PLACEHOLDER = re.compile(r"\{(processid|reference|inputid|outputid|diskfs)\}")


def expand(text: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), text)


def _expand_io(io: IOConfig, values: dict[str, str], own_id_key: str) -> IOConfig:
    io_id = expand(io.id, values)
    scoped = {**values, own_id_key: io_id}
    return io.model_copy(
        update={
            "id": io_id,
            "address": expand(io.address, scoped),
            "options": [expand(option, scoped) for option in io.options],
        }
    )


def expand_config(config: ProcessConfig, diskfs: str) -> ProcessConfig:
    """A copy of the config with every placeholder expanded."""
    values = {"processid": config.id, "reference": config.reference, "diskfs": diskfs}
    return config.model_copy(
        update={
            "input": [_expand_io(io, values, "inputid") for io in config.input],
            "output": [_expand_io(io, values, "outputid") for io in config.output],
            "options": [expand(option, values) for option in config.options],
        }
    )
