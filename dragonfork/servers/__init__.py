"""Protocol services, one folder each (``whep/``, ``whip/``, ``rtmp/``, ``srt/``): signalling, sessions,
read model.

A service asks a ``Stream`` of the hub to start its readers (in the stream's nursery); it owns sessions, not
reader tasks. HTTP routes call a service's small API and never wire objects together themselves.
"""

import collections
import dataclasses
import hashlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from dragonfork.webrtc.sdp import SdpRejected


class ListenFailed(Exception):
    """A service cannot listen on its configured address (in use, not ours); the message names the key."""


@dataclasses.dataclass(frozen=True)
class RefusedClient:
    remote: str
    reason: str  # the metric label (dragonfork_ingest_refused_total)
    message: str  # why, without secrets
    at: float  # Unix time


class RecentRefusals:
    """The last clients an ingest server refused (wrong token, name taken, ...), newest first: the admin UI
    shows them beside the live publishers, so a publisher that cannot get in sees why."""

    def __init__(self, keep: int = 10) -> None:
        self._recent: collections.deque[RefusedClient] = collections.deque(maxlen=keep)

    def add(self, remote: str, reason: str, message: str) -> None:
        self._recent.appendleft(RefusedClient(remote, reason, message, time.time()))

    def view(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(refusal) for refusal in self._recent]


class ConnectionObserver(Protocol):
    """Told of every RTMP or SRT connection that starts publishing or reading a stream, and of its end
    (the ``rtmp`` and ``srt`` session collectors). ``closed`` comes for every connection that ends, whether
    it was ``opened`` or not."""

    def opened(
        self,
        connection_id: int | str,
        *,
        stream: str,
        reference: str,
        publishing: bool,
        remote: str,
        traffic: Callable[[], tuple[int, int]],
    ) -> None: ...

    def closed(self, connection_id: int | str) -> None: ...


class SignallingRefused(Exception):
    """A WHEP/WHIP offer, trickle or session request that cannot be served; ``status`` is the HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        details: list[str] | None = None,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.details = details  # "<field>: <text>" entries, when the message alone does not say enough
        self.retry_after = retry_after
        self.headers = headers or {}


def answer_entity_tag(answer_sdp: str) -> str:
    """A session's strong ETag: it changes with the answer (and so with the ICE credentials)."""
    return f'"{hashlib.sha256(answer_sdp.encode()).hexdigest()[:24]}"'


@dataclasses.dataclass(frozen=True)
class SignallingSession:
    """What a WHEP or WHIP POST answers with: the session's id (its ``Location``) and SDP answer."""

    resource_id: str
    answer: str

    @property
    def etag(self) -> str:
        return answer_entity_tag(self.answer)


def entity_tag_matches(if_match: str, entity_tag: str) -> bool:
    """RFC 9110 §13.1.1: ``*`` or a list of entity tags, compared strongly (a weak ``W/`` never matches)."""
    return if_match.strip() == "*" or entity_tag in (tag.strip() for tag in if_match.split(","))


class TrickleTarget(Protocol):
    """A WHEP viewer or WHIP publisher: its session ETag and how it takes trickled candidates."""

    entity_tag: str

    async def add_remote_candidates(self, sdpfrag: str, *, if_match_sent: bool) -> None: ...


async def trickle(
    session: TrickleTarget, sdpfrag: str, if_match: str | None, refused: type[SignallingRefused]
) -> None:
    """A PATCH on a session: ``If-Match``, when present, must be ``*`` or its ETag (else 412), then the
    fragment is applied; a refused fragment is ``refused`` with its status (400, 422, 428)."""
    if if_match is not None and not entity_tag_matches(if_match, session.entity_tag):
        raise refused(
            412,
            f"If-Match {if_match[:80]!r} is not this session's ETag {session.entity_tag}",
            field="If-Match",
            headers={"ETag": session.entity_tag},
        )
    try:
        await session.add_remote_candidates(sdpfrag, if_match_sent=if_match is not None)
    except SdpRejected as exc:
        raise refused(exc.status, exc.message, field="sdpfrag") from None
