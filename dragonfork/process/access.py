"""Which input and output addresses a process may use.

Rules are regular expressions (``re.search``) from ``ffmpeg.access.{input,output}.{allow,block}``. A block
match always wins; a non-empty allow list admits only matching addresses. On top of the configured rules, a
local file (a plain path or ``file:``, read or written) must lie inside the data or disk directory, so the API
cannot be used to read ``/etc/shadow`` into a stream or overwrite files elsewhere. FFmpeg protocols that wrap
local files (``cache:``, ``concat:``, ``subfile:``, ...) and lavfi ``movie=`` sources are refused outright:
their paths hide inside their own syntax.

Options are checked too, or they would be a way around all of the above: the value of every option that names
a file (``-attach``, ``-filter_complex_script``, ``-hls_segment_filename``, FFmpeg's ``-/option FILE`` form,
...) obeys the same local-file rule, filter graphs may not open files, and ``-i`` inside options is refused:
inputs belong in ``input[]``, where they are checked and probed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from dragonfork.config import AccessRules
from dragonfork.process.schema import ProcessConfig

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_FILE_WRAPPING_PROTOCOL = re.compile(r"^(async|cache|concat|concatf|crypto|subfile|hls\+file|data)[,:]", re.I)
_MOVIE_SOURCE = re.compile(r"(^|[;,\[\]\s])a?movie=", re.I)
_FILTER_OPTIONS = frozenset({"-filter_complex", "-lavfi", "-vf", "-af", "-filter"})
_FILE_OPTIONS = frozenset(
    {
        "-attach", "-sdp_file", "-vstats_file", "-passlogfile", "-progress",
        "-filter_script", "-filter_complex_script", "-fpre", "-vpre", "-apre", "-spre",
        "-stats_enc_pre", "-stats_enc_post", "-stats_mux_pre",
        "-hls_segment_filename", "-hls_key_info_file", "-hls_fmp4_init_filename",
    }
)  # fmt: skip
_REFUSED_OPTIONS = {
    "-i": "declare inputs in input[], where they are checked and probed",
    "-dump_attachment": "it writes files named by the input's metadata",
}


class AddressDenied(Exception):
    def __init__(self, field: str, address: str, rule: str) -> None:
        super().__init__(f"{field}: address {address!r} is not allowed ({rule})")
        self.field = field
        self.address = address
        self.rule = rule


@dataclass(frozen=True)
class AccessPolicy:
    input: AccessRules
    output: AccessRules
    data_dir: Path
    disk_dir: Path | None = None

    def check(self, config: ProcessConfig) -> None:
        """Raise ``AddressDenied`` for the first address the rules refuse."""
        for index, io in enumerate(config.input):
            field = f"input.{index}.address"
            self._check_rules(field, io.address, self.input, "input")
            if _is_generator(io.options):
                self._check_graph(field, io.address)
            else:
                self._check_local_file(field, io.address)
            self._check_options(f"input.{index}.options", io.options)
        for index, io in enumerate(config.output):
            field = f"output.{index}.address"
            self._check_rules(field, io.address, self.output, "output")
            self._check_local_file(field, io.address)
            self._check_options(f"output.{index}.options", io.options)
        self._check_options("options", config.options)

    @staticmethod
    def _check_rules(field: str, address: str, rules: AccessRules, kind: str) -> None:
        for pattern in rules.block:
            if re.search(pattern, address):
                raise AddressDenied(field, address, f"matches ffmpeg.access.{kind}.block {pattern!r}")
        if rules.allow and not any(re.search(pattern, address) for pattern in rules.allow):
            raise AddressDenied(field, address, f"matches no pattern of ffmpeg.access.{kind}.allow")

    def _check_local_file(self, field: str, address: str) -> None:
        if address in ("-", "pipe:", "pipe:1", "pipe:0"):
            return
        if _FILE_WRAPPING_PROTOCOL.match(address):
            raise AddressDenied(field, address, "protocols that wrap local files are not allowed; use a path")
        if address.startswith("file:"):
            path = address[len("file:") :]
        elif _URL_SCHEME.match(address):
            return
        else:
            path = address
        resolved = Path(os.path.realpath(path))
        roots = [Path(os.path.realpath(root)) for root in (self.data_dir, self.disk_dir) if root is not None]
        if not any(resolved == root or root in resolved.parents for root in roots):
            where = " or ".join(str(root) for root in roots)
            raise AddressDenied(field, address, f"local files must be inside the data directory {where}")

    @staticmethod
    def _check_graph(field: str, graph: str) -> None:
        if _MOVIE_SOURCE.search(graph):
            raise AddressDenied(
                field, graph, "lavfi movie/amovie sources read files; use the path as an input"
            )

    def _check_options(self, field: str, options: list[str]) -> None:
        """Options that add inputs, name files or open files from a filter graph obey the address rules."""
        for index, option in enumerate(options):
            name = option.split(":", 1)[0]  # -filter:v, -attach:t …: the stream specifier does not matter
            value = options[index + 1] if index + 1 < len(options) else ""
            if name in _REFUSED_OPTIONS:
                reason = f"{name} is not allowed in options: {_REFUSED_OPTIONS[name]}"
                raise AddressDenied(f"{field}.{index}", option, reason)
            if name in _FILE_OPTIONS or name.startswith("-/"):  # -/vf FILE reads the option's value from FILE
                self._check_local_file(f"{field}.{index + 1}", value)
            elif name in _FILTER_OPTIONS:
                self._check_graph(f"{field}.{index + 1}", value)


def _is_generator(options: list[str]) -> bool:
    """``-f lavfi`` inputs are filter graphs, not paths."""
    return any(a == "-f" and b == "lavfi" for a, b in zip(options, options[1:], strict=False))
