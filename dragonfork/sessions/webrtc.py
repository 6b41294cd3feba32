"""WebRTC sessions: every WHEP viewer, from its offer until its peer connection ends.

The WHEP viewer table tells ``WebrtcSessions`` of each viewer it starts and ends; a viewer over a
``sessions.*`` limit is refused right there (``ViewerRefused`` out of ``opened``, a 503 for the POST). The
session's bytes are the viewer's RTP bytes sent, read from its counter every tick. Its id is its own: the
WHEP resource id lets its holder end the session, so it stays out of the listing.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from dragonfork.servers.whep.sessions import ViewerRefused
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
        self._session_ids: dict[str, str] = {}  # viewer id → session id

    def opened(self, viewer: ViewerLike, client: Client | None) -> None:
        session_id = secrets.token_hex(8)
        try:
            session = self.registry.open(
                "webrtc",
                session_id,
                reference=viewer.process_id,
                location=f"/api/v3/whep/{viewer.process_id}",
                client=client or Client(""),
                counter=viewer.traffic,
            )
        except SessionRefused as exc:
            raise ViewerRefused(exc.message, setting=exc.setting, retry_after=exc.retry_after) from None
        if session is not None:
            self._session_ids[viewer.id] = session_id

    def closed(self, viewer: ViewerLike) -> None:
        session_id = self._session_ids.pop(viewer.id, None)
        if session_id is not None:
            self.registry["webrtc"].close(session_id)
