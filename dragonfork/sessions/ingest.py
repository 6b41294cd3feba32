"""Ingest sessions: the RTMP and SRT servers' publishers and readers, as datarhei Core's ``rtmp`` and ``srt``
collectors have them.

As in datarhei, a publisher is registered under its stream (RTMP: the stream path, SRT: the name) with the
location ``publish:<stream>``, a reader (an RTMP player, an SRT caller in ``mode:request``) under its
address with ``play:<stream>``. The reference is the stream's name (RTMP: without its extension, ``cam`` for
``/cam.stream``). A session is active from the ``publish``/``play`` (SRT: the handshake) until its
connection ends; its bytes are the connection's received and sent bytes, read every tick. Clients in
``sessions.ip_ignorelist`` (loopback by default) are not collected, as for every collector.
``sessions.max_*`` do not refuse RTMP or SRT clients: datarhei's servers do not apply them either.
"""

from __future__ import annotations

from collections.abc import Callable

from dragonfork.sessions.collector import Client
from dragonfork.sessions.registry import SessionRegistry


class IngestSessions:
    """One ingest server's connection observer (``servers.ConnectionObserver``), feeding ``collector``."""

    def __init__(self, registry: SessionRegistry, collector: str) -> None:
        self.registry = registry
        self.collector = registry[collector]
        self._session_ids: dict[int | str, str] = {}  # connection id → session id

    def opened(
        self,
        connection_id: int | str,
        *,
        stream: str,
        reference: str,
        publishing: bool,
        remote: str,
        traffic: Callable[[], tuple[int, int]],
    ) -> None:
        if not self.registry.collectable(remote):
            return
        session_id = stream if publishing else remote
        self.collector.register(
            session_id,
            reference=reference,
            location=f"{'publish' if publishing else 'play'}:{stream}",
            client=Client(remote),
            counter=traffic,
        )
        self.collector.activate(session_id)
        self._session_ids[connection_id] = session_id

    def closed(self, connection_id: int | str) -> None:
        session_id = self._session_ids.pop(connection_id, None)
        if session_id is not None:
            self.collector.close(session_id)
