"""SRT sessions: the SRT server's publishers and readers, as datarhei Core's ``srt`` collector has them.

As in datarhei, a publisher is registered under its stream's name with the location ``publish:<name>`` and
a reader under its address with ``play:<name>``; the reference of both is the name. A session is active from
the handshake until the connection ends; its bytes are the connection's received and sent bytes, read every
tick. Clients in ``sessions.ip_ignorelist`` (loopback by default) are not collected. ``sessions.max_*`` do
not refuse SRT callers: datarhei's SRT server does not apply them either.
"""

from __future__ import annotations

from collections.abc import Callable

from dragonfork.sessions.collector import Client
from dragonfork.sessions.registry import SessionRegistry


class SrtSessions:
    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry
        self.collector = registry["srt"]
        self._session_ids: dict[int, str] = {}  # SRT socket id → session id

    def opened(
        self,
        socket_id: int,
        stream: str,
        publishing: bool,
        remote: str,
        traffic: Callable[[], tuple[int, int]],
    ) -> None:
        host = remote.rpartition(":")[0].strip("[]")
        if not self.registry.collectable(host):
            return
        session_id = stream if publishing else remote
        self.collector.register(
            session_id,
            reference=stream,
            location=f"{'publish' if publishing else 'play'}:{stream}",
            client=Client(remote),
            counter=traffic,
        )
        self.collector.activate(session_id)
        self._session_ids[socket_id] = session_id

    def closed(self, socket_id: int) -> None:
        session_id = self._session_ids.pop(socket_id, None)
        if session_id is not None:
            self.collector.close(session_id)
