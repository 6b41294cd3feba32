"""Stream ids: which stream a caller wants, whether it publishes or requests it, and its token.

Two forms are accepted, as datarhei Core accepts them:

- datarhei's: ``NAME[,mode:publish|request][,token:T]`` (``mode`` defaults to ``request``); the name runs
  up to the first ``,mode:`` or ``,token:``.
- SRT's access-control form: ``#!::r=NAME,m=publish|request,t=T`` (also ``token=T``, and a single ``:``
  after ``#!`` as datarhei writes it); other keys (``u``, ``s``, ``h``) are ignored. ``t`` carries the
  token here, as datarhei's own ``{srt,name=…}`` callers do not send it and encoders configured for
  datarhei use it so.
"""

from __future__ import annotations

import dataclasses
import re

PUBLISH = "publish"
REQUEST = "request"
_DATARHEI_KEY = re.compile(r",(token|mode):")


class StreamIdError(ValueError):
    """The stream id names no stream or an unknown mode; the message says which."""


class StreamModeError(StreamIdError):
    """The stream id asks for a mode other than publish or request (``bidirectional``, a typo)."""


@dataclasses.dataclass(frozen=True, slots=True)
class StreamRequest:
    name: str
    mode: str
    token: str


def parse_stream_id(stream_id: str) -> StreamRequest:
    if stream_id.startswith("#!:"):
        request = _access_control(stream_id.removeprefix("#!:").removeprefix(":"))
    else:
        request = _datarhei(stream_id)
    if not request.name:
        raise StreamIdError("the stream id names no stream")
    if request.mode not in (PUBLISH, REQUEST):
        raise StreamModeError(f"mode must be publish or request, got {request.mode!r}")
    return request


def _datarhei(stream_id: str) -> StreamRequest:
    values: dict[str, str] = {}
    matches = list(_DATARHEI_KEY.finditer(stream_id))
    name = stream_id[: matches[0].start()] if matches else stream_id
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(stream_id)
        values[match.group(1)] = stream_id[match.end() : end]
    return StreamRequest(name, values.get("mode", REQUEST), values.get("token", ""))


def _access_control(pairs: str) -> StreamRequest:
    values: dict[str, str] = {}
    for pair in pairs.split(","):
        key, sep, value = pair.partition("=")
        if sep:
            values[key.strip()] = value
    return StreamRequest(
        values.get("r", ""), values.get("m", REQUEST), values.get("token", values.get("t", ""))
    )
