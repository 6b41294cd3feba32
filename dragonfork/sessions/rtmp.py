"""RTMP sessions: the RTMP server's publishers and players, as datarhei Core's ``rtmp`` collector has them.

As in datarhei, a publisher is registered under its stream path with the location ``publish:<path>`` and a
player under its address with ``play:<path>``; the reference of both is the stream's name without its
extension (``cam`` for ``/cam.stream``: Restreamer publishes ``{processid}.stream``). A session is active
from its ``publish``/``play`` until its connection ends; its bytes are the connection's received and sent
bytes, read every tick. Clients in ``sessions.ip_ignorelist`` (loopback by default) are not collected, as
for every collector. ``sessions.max_*`` do not refuse RTMP clients: datarhei's RTMP server does not apply
them either.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from dragonfork.sessions.collector import Client
from dragonfork.sessions.registry import SessionRegistry

if TYPE_CHECKING:
    from dragonfork.servers.rtmp.session import RtmpSession


class RtmpSessions:
    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry
        self.collector = registry["rtmp"]
        self._session_ids: dict[str, str] = {}  # RTMP connection id → session id

    def started(self, connection: RtmpSession) -> None:
        path = connection.path
        if path is None or not self.registry.collectable(connection.remote):
            return
        publishing = connection.role == "publisher"
        session_id = path.path if publishing else connection.remote
        self.collector.register(
            session_id,
            reference=posixpath.splitext(path.name)[0],
            location=f"{'publish' if publishing else 'play'}:{path.path}",
            client=Client(connection.remote),
            counter=connection.traffic,
        )
        self.collector.activate(session_id)
        self._session_ids[connection.id] = session_id

    def ended(self, connection: RtmpSession) -> None:
        session_id = self._session_ids.pop(connection.id, None)
        if session_id is not None:
            self.collector.close(session_id)
