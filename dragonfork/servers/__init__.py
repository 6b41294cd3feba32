"""Protocol services, one folder each (``whep/``, ``whip/``, ``rtmp/``): signalling, sessions, read model.

A service asks a ``Stream`` of the hub to start its readers (in the stream's nursery); it owns sessions, not
reader tasks. HTTP routes call a service's small API and never wire objects together themselves.
"""

import hashlib


class ListenFailed(Exception):
    """A service cannot listen on its configured address (in use, not ours); the message names the key."""


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


def entity_tag_matches(if_match: str, entity_tag: str) -> bool:
    """RFC 9110 §13.1.1: ``*`` or a list of entity tags, compared strongly (a weak ``W/`` never matches)."""
    return if_match.strip() == "*" or entity_tag in (tag.strip() for tag in if_match.split(","))
