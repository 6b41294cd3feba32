"""WebRTC sessions: every WHEP viewer and every WHIP publisher, from its offer until its peer connection ends.

The WHEP viewer table tells ``WebrtcSessions`` of each viewer it starts and ends; a viewer over a
``sessions.*`` limit is refused right there (``ViewerRefused`` out of ``opened``, a 503 for the POST). The
session's bytes are the viewer's RTP bytes sent, read from its counter every tick. Its id is its own: the
WHEP resource id lets its holder end the session, so it stays out of the listing. WHIP publishers
(``WhipSessions``) are sessions of the same collector with their received bytes, located at
``/api/v3/whip/NAME``; a publisher over a limit is refused with a 503 the same way.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Protocol

from dragonfork.servers.whep.sessions import ViewerRefused
from dragonfork.servers.whip import WhipPublisher, WhipRefused
from dragonfork.sessions.collector import Client
from dragonfork.sessions.registry import SessionRefused, SessionRegistry


class ViewerLike(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def process_id(self) -> str: ...

    def traffic(self) -> tuple[int, int]: ...


class WebrtcSessions:
    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry
        self._session_ids: dict[str, str] = {}  # viewer or publisher id → session id

    def opened(self, viewer: ViewerLike, client: Client | None) -> None:
        try:
            self._open(
                viewer.id, viewer.process_id, f"/api/v3/whep/{viewer.process_id}", viewer.traffic, client
            )
        except SessionRefused as exc:
            raise ViewerRefused(exc.message, setting=exc.setting, retry_after=exc.retry_after) from None

    def closed(self, viewer: ViewerLike) -> None:
        self._close(viewer.id)

    def _close(self, key: str) -> None:
        session_id = self._session_ids.pop(key, None)
        if session_id is not None:
            self.registry["webrtc"].close(session_id)

    def _open(
        self,
        key: str,
        reference: str,
        location: str,
        counter: Callable[[], tuple[int, int]],
        client: Client | None,
    ) -> None:
        session_id = secrets.token_hex(8)
        session = self.registry.open(
            "webrtc",
            session_id,
            reference=reference,
            location=location,
            client=client or Client(""),
            counter=counter,
        )
        if session is not None:
            self._session_ids[key] = session_id


class WhipSessions(WebrtcSessions):
    """The WHIP server's publisher observer."""

    def opened(self, publisher: WhipPublisher, client: Client | None) -> None:  # type: ignore[override]
        try:
            self._open(
                publisher.id, publisher.name, f"/api/v3/whip/{publisher.name}", publisher.traffic, client
            )
        except SessionRefused as exc:
            raise WhipRefused(503, exc.message, field=exc.setting, retry_after=exc.retry_after) from None

    def closed(self, publisher: WhipPublisher) -> None:  # type: ignore[override]
        self._close(publisher.id)
