"""The WHEP session table: resource id → running viewer, for PATCH/DELETE and the viewer cap.

A viewer in it is a ``Viewer`` running in this process, or (with WebRTC worker processes) the server's
``RemoteViewer`` for one running in a worker: both are a ``SessionEntry``.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Protocol

import trio

from dragonfork.webrtc.viewer import CloseReason, Viewer

if TYPE_CHECKING:
    from dragonfork.stream.stream import Stream


class SessionEntry(Protocol):
    """What the table, PATCH, DELETE and the session observers use of a viewer."""

    id: str
    process_id: str
    entity_tag: str
    setup_seconds: float | None
    time_to_first_frame_seconds: float | None
    close_reason: CloseReason | None

    @property
    def bytes_sent(self) -> int: ...

    def close(self, reason: CloseReason = CloseReason.DELETE) -> None: ...

    async def add_remote_candidates(self, sdpfrag: str, *, if_match_sent: bool = True) -> None: ...

    def traffic(self) -> tuple[int, int]: ...


class ViewerCapReached(Exception):
    """The process already has its maximum number of viewers (the WHEP layer answers 503 + Retry-After)."""


class ViewerRefused(Exception):
    """An observer turned a new viewer away (a ``sessions.*`` limit); the WHEP layer answers 503."""

    def __init__(self, message: str, *, setting: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.setting = setting
        self.retry_after = retry_after


class ViewerObserver(Protocol):
    """Told of every viewer that enters and leaves the table (the session collectors' ``webrtc`` side)."""

    def opened(self, viewer: SessionEntry, client: Any) -> None:
        """A viewer is starting; ``client`` is how the caller identified its client. Raises
        ``ViewerRefused`` to turn it away."""

    def closed(self, viewer: SessionEntry) -> None: ...


class ViewerSessions:
    """Every viewer that is answering or running, by its unguessable id.

    A viewer enters the table when its task starts (so viewers still building their answer count against the
    cap, and concurrent POSTs cannot overshoot it) and leaves it when its task ends, however it ends. The
    ``observer`` hears both; it may refuse a viewer (``ViewerRefused`` from ``opened``).
    """

    def __init__(self, observer: ViewerObserver | None = None) -> None:
        self._viewers: dict[str, SessionEntry] = {}
        self._per_process: collections.Counter[str] = collections.Counter()
        self._observer = observer

    def get(self, viewer_id: str) -> SessionEntry | None:
        return self._viewers.get(viewer_id)

    def count(self, process_id: str) -> int:
        return self._per_process[process_id]

    def viewers(self, process_id: str) -> list[SessionEntry]:
        return [viewer for viewer in self._viewers.values() if viewer.process_id == process_id]

    def all_viewers(self) -> list[SessionEntry]:
        return list(self._viewers.values())

    def __len__(self) -> int:
        return len(self._viewers)

    def add(self, viewer: SessionEntry, *, max_viewers: int | None = None, client: Any = None) -> None:
        """Register a viewer; raise ``ViewerCapReached`` if its process already has ``max_viewers``, or
        ``ViewerRefused`` from the observer."""
        if max_viewers is not None and self.count(viewer.process_id) >= max_viewers:
            raise ViewerCapReached(f"process {viewer.process_id!r} has {max_viewers} viewers already")
        if self._observer is not None:
            self._observer.opened(viewer, client)
        self._viewers[viewer.id] = viewer
        self._per_process[viewer.process_id] += 1

    def remove(self, viewer: SessionEntry) -> None:
        """Forget a viewer (idempotent)."""
        if self._viewers.pop(viewer.id, None) is not None:
            self._per_process[viewer.process_id] -= 1
            if not self._per_process[viewer.process_id]:
                del self._per_process[viewer.process_id]
            if self._observer is not None:
                self._observer.closed(viewer)

    async def run_viewer(
        self,
        viewer: Viewer,
        stream: Stream,
        offer_sdp: str,
        *,
        max_viewers: int | None = None,
        client: Any = None,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """``Viewer.run`` with the viewer in the table for its whole life (a ``Stream.start_reader`` reader).

        Raises out of ``start_reader`` what ``Viewer.run`` raises before its answer, ``ViewerCapReached``
        and what the observer raises to refuse the viewer (``ViewerRefused``).
        """
        self.add(viewer, max_viewers=max_viewers, client=client)
        try:
            await viewer.run(stream, offer_sdp, task_status=task_status)
        finally:
            self.remove(viewer)
