"""datarhei Core placeholders: ``{processid} {reference} {inputid} {outputid} {diskfs} {memfs} {fs:disk}
{fs:mem} {rtmp,name=NAME} {srt,name=NAME}``.

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

``{srt,name=NAME[,latency=US]}`` is this server's SRT server, as datarhei writes it:
``srt://HOST:PORT?mode=caller&transtype=live&latency=20000&streamid=NAME,mode:request`` in an input
(``mode:publish`` in an output), then ``,token:T`` and ``&passphrase=P`` when ``srt.token`` and
``srt.passphrase`` are set. The latency is FFmpeg's, in microseconds (datarhei's default 20 ms).

``{whip,name=NAME}`` (ours) is the stream a WHIP publisher pushes under NAME, as live Matroska over this
server's own HTTP address: ``http://127.0.0.1:PORT/api/v3/whip/NAME/stream.mkv[?key=K]`` (docs/whip.md). It
is an input only: in an output it stays as it is, and is refused.
"""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import quote

from dragonfork.process.access import AddressDenied
from dragonfork.process.schema import CleanupRule, IOConfig, ProcessConfig

_PLACEHOLDER = re.compile(
    r"\{(processid|reference|inputid|outputid|diskfs|memfs|fs:disk|fs:mem)(?:\^(.))?\}|\{rtmp,name=([^{}]*)\}"
    r"|\{srt,([^{}]*)\}|\{whip,name=([^{}]*)\}"
)
_ALIASES = {"fs:disk": "diskfs", "fs:mem": "memfs"}
_RTMP = re.compile(r"\{rtmp,name=[^{}]*\}")
_SRT = re.compile(r"\{srt,[^{}]*\}")
_WHIP = re.compile(r"\{whip,name=[^{}]*\}")
SRT_DEFAULT_LATENCY_US = "20000"


@dataclasses.dataclass(frozen=True)
class IngestAddresses:
    """Where FFmpeg reaches this server's own ingest servers; None for a server that is not enabled."""

    rtmp: str | None = None
    """``rtmp://HOST:PORT[app]``, the base of every ``{rtmp,name=NAME}``."""
    rtmp_token: str = ""
    srt: str | None = None
    """``srt://HOST:PORT``, the base of every ``{srt,name=NAME}``."""
    srt_token: str = ""
    srt_passphrase: str = ""
    whip: str | None = None
    """``http://127.0.0.1:PORT/api/v3/whip``, the base of every ``{whip,name=NAME}``."""
    whip_key: str = ""

    @classmethod
    def for_rtmp(cls, address: str, app: str, token: str) -> IngestAddresses:
        base = f"rtmp://{_url_host(address)}{'' if app == '/' else app}"
        return cls(rtmp=base, rtmp_token=token)

    def with_srt(self, address: str, token: str, passphrase: str) -> IngestAddresses:
        return dataclasses.replace(
            self, srt=f"srt://{_url_host(address)}", srt_token=token, srt_passphrase=passphrase
        )

    def without_srt(self) -> IngestAddresses:
        return dataclasses.replace(self, srt=None, srt_token="", srt_passphrase="")

    def rtmp_url(self, name: str) -> str | None:
        if self.rtmp is None:
            return None
        return f"{self.rtmp}/{name}" + (f"?token={self.rtmp_token}" if self.rtmp_token else "")

    def whip_url(self, name: str, section: str) -> str | None:
        if self.whip is None or section != "input":
            return None
        key = f"?key={self.whip_key}" if self.whip_key else ""
        return f"{self.whip}/{quote(name, safe='')}/stream.mkv{key}"

    def srt_url(self, params: str, section: str) -> str | None:
        """``params`` as datarhei reads them: comma-separated ``key=value`` (``name``, ``latency``)."""
        if self.srt is None:
            return None
        values = {"latency": SRT_DEFAULT_LATENCY_US}
        for pair in params.split(","):
            key, _, value = pair.partition("=")
            values[key] = value
        stream_id = values.get("name", "") + (",mode:publish" if section == "output" else ",mode:request")
        if self.srt_token:
            stream_id += f",token:{self.srt_token}"
        url = f"{self.srt}?mode=caller&transtype=live&latency={values['latency']}&streamid={stream_id}"
        return url + (f"&passphrase={self.srt_passphrase}" if self.srt_passphrase else "")


def _url_host(address: str) -> str:
    """``host:port`` as a URL's authority: ``localhost`` for an empty host, brackets for IPv6."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "localhost"
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    return f"{host}:{port}"


def _escaped(value: str, char: str) -> str:
    if char != "\\":
        value = value.replace("\\", "\\\\\\")
    return value.replace(char, "\\\\" + char)


def expand(
    text: str, values: dict[str, str], ingest: IngestAddresses | None = None, section: str = "input"
) -> str:
    """``section`` (input, output) picks the SRT mode (FFmpeg requests in an input, publishes in an output)
    and leaves ``{whip,...}`` in an output as it is (``check_ingest_available`` refuses it)."""

    def replace(match: re.Match[str]) -> str:
        name, escape, rtmp_name, srt_params, whip_name = match.groups()
        if name is not None:
            value = values.get(_ALIASES.get(name, name))
            if value is None:
                return match.group(0)
            return _escaped(value, escape) if escape else value
        if ingest is None:
            return match.group(0)
        if whip_name is not None:
            url = ingest.whip_url(whip_name, section)
        elif srt_params is not None:
            url = ingest.srt_url(srt_params, section)
        else:
            url = ingest.rtmp_url(rtmp_name)
        return match.group(0) if url is None else url

    return _PLACEHOLDER.sub(replace, text)


def _expand_io(io: IOConfig, values: dict[str, str], own_id_key: str, ingest: IngestAddresses) -> IOConfig:
    section = "output" if own_id_key == "outputid" else "input"
    io_id = expand(io.id, values)
    scoped = {**values, own_id_key: io_id}
    naming = {key: scoped[key] for key in ("processid", "reference", own_id_key)}
    return io.model_copy(
        update={
            "id": io_id,
            "address": expand(io.address, scoped, ingest, section),
            "options": [expand(option, scoped, ingest, section) for option in io.options],
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
    """Refuse an address still holding ``{rtmp,...}``, ``{srt,...}`` or ``{whip,...}`` after expansion: its
    server is not enabled (or, for ``{whip,...}``, it is an output: WHIP streams are read, not written)."""
    for kind, ios in (("input", resolved.input), ("output", resolved.output)):
        for index, io in enumerate(ios):
            if _WHIP.search(io.address):
                raise AddressDenied(
                    f"{kind}.{index}.address",
                    io.address,
                    "{whip,name=...} is an input (a WHIP publisher's stream); it cannot be an output"
                    if kind == "output"
                    else "{whip,name=...} needs WHIP ingest: set whip.enable and webrtc.enable "
                    "(CORE_WHIP_ENABLE)",
                )
            for pattern, server in ((_RTMP, "rtmp"), (_SRT, "srt")):
                if pattern.search(io.address):
                    raise AddressDenied(
                        f"{kind}.{index}.address",
                        io.address,
                        f"{{{server},name=...}} needs the {server.upper()} server: set {server}.enable "
                        f"(CORE_{server.upper()}_ENABLE=true)",
                    )
