"""The WHEP service: offers in, viewers started as readers of the hub's streams, the session table.

``WhepServer.new_session(name, offer)`` is the whole POST: it finds the stream in the directory (waiting up
to ``publisher_wait`` for one that is starting), counts the viewer against the per-stream cap, and starts
the viewer in the stream's nursery (``Stream.start_reader``), so the viewer ends with the stream's publisher.
With WebRTC worker processes (``webrtc.workers`` > 1, ``workers.py``) the viewer runs in the least-loaded
worker instead and the table holds its ``RemoteViewer``; PATCH and DELETE reach it through the worker.
PATCH and DELETE go through ``trickle`` and ``end_session``. Every refusal is an exception whose ``status``
is the HTTP status of this project's WHEP error matrix; the route only turns them into responses.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import trio

from dragonfork import metrics
from dragonfork.servers import SignallingSession, trickle
from dragonfork.servers.whep.sessions import SessionEntry, ViewerObserver, ViewerSessions
from dragonfork.servers.whep.viewer_start import (
    RETRY_AFTER_NOT_LIVE,
    WhepRefused,
    check_capacity,
    refusals,
    start_viewer,
)
from dragonfork.servers.whep.workers import RemoteViewer, WorkerPool
from dragonfork.stream.directory import StreamDirectory, StreamNotLive
from dragonfork.stream.stream import Stream, StreamSettings
from dragonfork.webrtc.viewer import CloseReason, Viewer, ViewerSettings, record_viewer_end

CPU_WINDOW_SECONDS = 1.0  # the server's CPU use (for admission) is measured over this window


@dataclasses.dataclass(frozen=True)
class WhepSettings:
    max_viewers_per_stream: int = 100
    publisher_wait: float = 3.0
    """Seconds an offer for a started publisher waits for its stream to go live before 409."""
    max_viewers_per_core: int = 300
    """Viewers over all streams the server takes per core it sends on (one: its event loop) before 503."""
    admission_cpu_percent: float = 85.0
    """A new viewer is refused (503) while the server's own CPU is above this share of a core."""
    viewer: ViewerSettings = dataclasses.field(default_factory=ViewerSettings)
    stream: StreamSettings = dataclasses.field(default_factory=StreamSettings)
    """The hub's settings, for a worker's copy of each stream."""


@dataclasses.dataclass(frozen=True)
class PublisherStatus:
    """What the owner of a stream name says about it (for a process: the registry)."""

    serves_webrtc: bool
    started: bool
    """Ordered to run: its stream is live, or will be shortly (starting, restarting)."""
    state: str


class WhepServer:
    def __init__(
        self,
        directory: StreamDirectory,
        settings: WhepSettings,
        publisher_status: Callable[[str], PublisherStatus | None],
        *,
        viewer_observer: ViewerObserver | None = None,
        workers: WorkerPool | None = None,
    ) -> None:
        self.directory = directory
        self.settings = settings
        self.sessions = ViewerSessions(viewer_observer)
        self._publisher_status = publisher_status
        self.workers = workers
        if workers is not None:
            workers.on_session_ended = self._remote_session_ended
        """The WebRTC worker processes viewers run in; None: they run in this process."""
        self.cpu_percent = 0.0
        """This process's CPU over the last ``CPU_WINDOW_SECONDS`` (100 = one core), while ``run`` runs."""

    def viewer_count(self, name: str) -> int:
        return self.sessions.count(name)

    def check_endpoint(self, name: str) -> PublisherStatus:
        """The publisher of WHEP endpoint ``name``; ``WhepRefused`` 404 when there is none (GET/HEAD too)."""
        status = self._publisher_status(name)
        if status is None:
            raise WhepRefused(404, f"process {name!r} not found", field="processID")
        if not status.serves_webrtc:
            raise WhepRefused(404, f"process {name!r} does not serve WebRTC (webrtc.enabled is false)")
        return status

    def _session(self, name: str, resource_id: str) -> SessionEntry:
        viewer = self.sessions.get(resource_id)
        if viewer is None or viewer.process_id != name:
            raise WhepRefused(404, f"no WHEP session {resource_id!r} on process {name!r}", field="resource")
        return viewer

    def session_etag(self, name: str, resource_id: str) -> str:
        """The ETag of a session (GET/HEAD on it); ``WhepRefused`` 404 when there is none."""
        return self._session(name, resource_id).entity_tag

    async def new_session(self, name: str, offer_sdp: str, client: Any = None) -> SignallingSession:
        """Answer ``offer_sdp`` with a viewer of stream ``name``; raises ``WhepRefused``. ``client`` (who
        asks, as the caller identified it) goes to the viewer observer."""
        status = self.check_endpoint(name)
        wait = self.settings.publisher_wait if status.started else 0.0
        try:
            stream = await self.directory.wait_live(name, wait)
        except StreamNotLive:
            raise WhepRefused(
                409,
                f"process {name!r} has no media yet (state {status.state}); retry shortly",
                details=[f"state: {status.state}"],  # the player tells an ended stream by it
                retry_after=RETRY_AFTER_NOT_LIVE,
            ) from None
        viewer: SessionEntry
        if self.workers is not None:
            answer, viewer = await self._start_in_worker(self.workers, stream, name, offer_sdp, client)
        else:
            self._admit()
            viewer = in_process = Viewer(name, self.settings.viewer)
            answer = await start_viewer(
                stream,
                in_process,
                self.sessions,
                offer_sdp,
                max_viewers=self.settings.max_viewers_per_stream,
                client=client,
            )
        session = SignallingSession(viewer.id, answer)
        viewer.entity_tag = session.etag
        return session

    async def _start_in_worker(
        self, workers: WorkerPool, stream: Stream, name: str, offer_sdp: str, client: Any
    ) -> tuple[str, RemoteViewer]:
        settings = self.settings
        budget, cpu_limit = settings.max_viewers_per_core, settings.admission_cpu_percent
        await workers.started()
        worker = workers.choose(budget=budget, cpu_limit=cpu_limit)
        viewer = RemoteViewer(name, worker)
        with refusals(name, settings.max_viewers_per_stream):
            self.sessions.add(viewer, max_viewers=settings.max_viewers_per_stream, client=client)
        try:
            answer = await workers.start_viewer(
                worker, stream, viewer, offer_sdp, settings.viewer, settings.stream
            )
        except BaseException:
            self.sessions.remove(viewer)
            raise
        metrics.VIEWERS_ACTIVE.labels(name).inc()
        return answer, viewer

    def _remote_session_ended(self, viewer: RemoteViewer, reason: CloseReason) -> None:
        """A worker's viewer ended, for ``reason`` as its worker saw it; counted and logged here.

        The session table decides the reason: a close the server sent (a DELETE that found the session)
        wins over what the worker saw meanwhile, except the stream's end (``process_stopped`` comes first,
        as in-process, though the clients DELETE as they see it). A client that stops sends its DELETE and
        closes its peer connection at once; the DTLS close reaches the worker directly, the DELETE only
        through the server, so the worker often sees the close first, while the DELETE is on its way
        (in-process the DELETE ends the viewer as soon as it arrives)."""
        if reason is not CloseReason.PROCESS_STOPPED:
            reason = viewer.close_reason or reason
        viewer.close_reason = reason
        self.sessions.remove(viewer)
        metrics.VIEWERS_ACTIVE.labels(viewer.process_id).dec()
        record_viewer_end(viewer, reason, worker=viewer.worker.index)

    async def start_workers_with_the_first_stream(self, workers: WorkerPool) -> None:
        """Start the WebRTC workers once anything is published, before its first viewer asks: that
        viewer's offer would otherwise wait for them to start (about a second)."""
        await self.directory.wait_for_any()
        workers.want()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Measure the server's own CPU (this process; FFmpeg children are not in it) for admission."""
        task_status.started()
        while True:
            at, cpu = time.monotonic(), time.process_time()
            await trio.sleep(CPU_WINDOW_SECONDS)
            self.cpu_percent = 100.0 * (time.process_time() - cpu) / (time.monotonic() - at)

    def _admit(self) -> None:
        """Refuse a new in-process viewer (503 + Retry-After) before the server's core saturates."""
        check_capacity(
            len(self.sessions),
            self.cpu_percent,
            budget=self.settings.max_viewers_per_core,
            cpu_limit=self.settings.admission_cpu_percent,
            where="the server",
        )

    async def trickle(
        self, name: str, resource_id: str, sdpfrag: str, *, if_match: str | None = None
    ) -> None:
        """Apply a trickle-ICE fragment to a session; raises ``WhepRefused`` (404, 412, 4xx for the fragment).

        ``if_match`` is the request's ``If-Match``: when present it must be ``*`` or the session's ETag.
        """
        viewer = self._session(name, resource_id)
        await trickle(viewer, sdpfrag, if_match, WhepRefused)

    def end_session(self, name: str, resource_id: str) -> None:
        """DELETE: end the session if it exists (idempotent)."""
        viewer = self.sessions.get(resource_id)
        if viewer is not None and viewer.process_id == name:
            viewer.close(CloseReason.DELETE)
