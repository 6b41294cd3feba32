"""The WHEP service: offers in, viewers started as readers of the hub's streams, the session table.

``WhepServer.new_session(name, offer)`` is the whole POST: it finds the stream in the directory (waiting up
to ``publisher_wait`` for one that is starting), counts the viewer against the per-stream cap, and starts
the viewer in the stream's nursery (``Stream.start_reader``), so the viewer ends with the stream's publisher.
PATCH and DELETE go through ``trickle`` and ``end_session``. Every refusal is an exception whose ``status``
is the HTTP status of this project's WHEP error matrix; the route only turns them into responses.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import trio

from dragonfork.servers import SignallingRefused, answer_entity_tag, trickle
from dragonfork.servers.whep.sessions import ViewerCapReached, ViewerObserver, ViewerRefused, ViewerSessions
from dragonfork.stream.directory import StreamDirectory, StreamNotLive
from dragonfork.stream.stream import StreamEnded
from dragonfork.webrtc.sdp import SdpRejected
from dragonfork.webrtc.viewer import AnswerTimeout, CloseReason, Viewer, ViewerClosed, ViewerSettings

RETRY_AFTER_NOT_LIVE = 2
RETRY_AFTER_FULL = 5
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


@dataclasses.dataclass(frozen=True)
class PublisherStatus:
    """What the owner of a stream name says about it (for a process: the registry)."""

    serves_webrtc: bool
    started: bool
    """Ordered to run: its stream is live, or will be shortly (starting, restarting)."""
    state: str


class WhepRefused(SignallingRefused):
    """An offer, trickle or session request that cannot be served; ``status`` is the HTTP status."""


@dataclasses.dataclass(frozen=True)
class WhepSession:
    resource_id: str
    answer: str

    @property
    def etag(self) -> str:
        return answer_entity_tag(self.answer)


class WhepServer:
    def __init__(
        self,
        directory: StreamDirectory,
        settings: WhepSettings,
        publisher_status: Callable[[str], PublisherStatus | None],
        *,
        viewer_observer: ViewerObserver | None = None,
    ) -> None:
        self.directory = directory
        self.settings = settings
        self.sessions = ViewerSessions(viewer_observer)
        self._publisher_status = publisher_status
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

    def _session(self, name: str, resource_id: str) -> Viewer:
        viewer = self.sessions.get(resource_id)
        if viewer is None or viewer.process_id != name:
            raise WhepRefused(404, f"no WHEP session {resource_id!r} on process {name!r}", field="resource")
        return viewer

    def session_etag(self, name: str, resource_id: str) -> str:
        """The ETag of a session (GET/HEAD on it); ``WhepRefused`` 404 when there is none."""
        return self._session(name, resource_id).entity_tag

    async def new_session(self, name: str, offer_sdp: str, client: Any = None) -> WhepSession:
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
        self._admit()
        viewer = Viewer(name, self.settings.viewer)
        cap = self.settings.max_viewers_per_stream
        reader = functools.partial(self.sessions.run_viewer, viewer, max_viewers=cap, client=client)
        try:
            answer: str = await stream.start_reader(reader, offer_sdp)
        except ViewerCapReached:
            raise WhepRefused(
                503,
                f"stream {name!r} is full ({cap} viewer{'' if cap == 1 else 's'}); "
                f"retry in {RETRY_AFTER_FULL} s",
                field="webrtc.max_peers_per_stream",
                retry_after=RETRY_AFTER_FULL,
            ) from None
        except ViewerRefused as exc:
            raise WhepRefused(503, exc.message, field=exc.setting, retry_after=exc.retry_after) from None
        except SdpRejected as exc:
            raise WhepRefused(exc.status, exc.message, field="offer") from None
        except AnswerTimeout as exc:
            raise WhepRefused(504, str(exc)) from None
        except (StreamEnded, ViewerClosed):
            raise WhepRefused(
                409,
                f"the session on {name!r} ended while it was being set up; retry shortly",
                retry_after=RETRY_AFTER_NOT_LIVE,
            ) from None
        session = WhepSession(viewer.id, answer)
        viewer.entity_tag = session.etag
        return session

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Measure the server's own CPU (this process; FFmpeg children are not in it) for admission."""
        task_status.started()
        while True:
            at, cpu = time.monotonic(), time.process_time()
            await trio.sleep(CPU_WINDOW_SECONDS)
            self.cpu_percent = 100.0 * (time.process_time() - cpu) / (time.monotonic() - at)

    def _admit(self) -> None:
        """Refuse a new viewer (503 + Retry-After) before the server's core saturates: over the viewer
        budget, or while the server's own CPU over the last second is above ``admission_cpu_percent``."""
        budget = self.settings.max_viewers_per_core
        if len(self.sessions) >= budget:
            raise WhepRefused(
                503,
                f"the server is at capacity ({budget} viewers per core); retry in {RETRY_AFTER_FULL} s",
                field="webrtc.max_viewers_per_core",
                retry_after=RETRY_AFTER_FULL,
            )
        limit = self.settings.admission_cpu_percent
        if self.cpu_percent > limit:
            raise WhepRefused(
                503,
                f"the server is at capacity (CPU {self.cpu_percent:.0f} % of a core, above {limit:g} %); "
                f"retry in {RETRY_AFTER_FULL} s",
                field="webrtc.admission_cpu_percent",
                retry_after=RETRY_AFTER_FULL,
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
