"""WebRTC sessions: every WHEP viewer and every WHIP publisher, from its offer until its peer connection ends.

The WHEP viewer table tells ``WebrtcSessions`` of each viewer it starts and ends; a viewer over a
``sessions.*`` limit is refused right there (``ViewerRefused`` out of ``opened``, a 503 for the POST). The
session's bytes are the viewer's RTP bytes sent, read from its counter every tick. Its id is its own: the
WHEP resource id lets its holder end the session, so it stays out of the listing. WHIP publishers
(``WhipSessions``) are sessions of the same collector, located at ``/api/v3/whip/NAME``, with their
received bytes; they are ingress, so the ``sessions.*`` limits (on what the server sends) never refuse them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Protocol

from dragonfork.servers.whep.sessions import ViewerRefused
from dragonfork.servers.whip import WhipPublisher
from dragonfork.sessions.collector import Client
from dragonfork.sessions.registry import SessionRefused, SessionRegistry


class ViewerLike(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def process_id(self) -> str: ...

    def traffic(self) -> tuple[int, int]: ...


class PeerSessions:
    """The sessions of one collector, keyed by the id of what each one observes (viewer, publisher)."""

    def __init__(self, registry: SessionRegistry, collector: str) -> None:
        self.registry = registry
        self.collector = collector
        self._session_ids: dict[str, str] = {}  # observed id → session id

    def _open(
        self,
        key: str,
        reference: str,
        location: str,
        counter: Callable[[], tuple[int, int]],
        client: Client | None,
        *,
        ingress: bool = False,
    ) -> None:
        session_id = secrets.token_hex(8)
        session = self.registry.open(
            self.collector,
            session_id,
            reference=reference,
            location=location,
            client=client or Client(""),
            counter=counter,
            ingress=ingress,
        )
        if session is not None:
            self._session_ids[key] = session_id

    def _close(self, key: str) -> None:
        session_id = self._session_ids.pop(key, None)
        if session_id is not None:
            self.registry[self.collector].close(session_id)


class WebrtcSessions(PeerSessions):
    """The WHEP viewer table's observer."""

    def __init__(self, registry: SessionRegistry) -> None:
        super().__init__(registry, "webrtc")

    def opened(self, viewer: ViewerLike, client: Client | None) -> None:
        location = f"/api/v3/whep/{viewer.process_id}"
        try:
            self._open(viewer.id, viewer.process_id, location, viewer.traffic, client)
        except SessionRefused as exc:
            raise ViewerRefused(exc.message, setting=exc.setting, retry_after=exc.retry_after) from None

    def closed(self, viewer: ViewerLike) -> None:
        self._close(viewer.id)


class WhipSessions(PeerSessions):
    """The WHIP server's publisher observer."""

    def __init__(self, registry: SessionRegistry) -> None:
        super().__init__(registry, "webrtc")

    def opened(self, publisher: WhipPublisher, client: Client | None) -> None:
        location = f"/api/v3/whip/{publisher.name}"
        self._open(publisher.id, publisher.name, location, publisher.traffic, client, ingress=True)

    def closed(self, publisher: WhipPublisher) -> None:
        self._close(publisher.id)
