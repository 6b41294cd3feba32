"""The WHIP service: offers in, publishers into the hub, its nursery and session table, Matroska readers.

``WhipServer.new_session(name, offer)`` is the whole POST: one publisher per name (a name any publisher in
the hub has is refused, 409), at most ``max_publishers`` (503), then the publisher is started in the
server's nursery and its answer returned. PATCH and DELETE go through ``trickle`` and ``end_session``;
every refusal is a ``WhipRefused`` carrying its HTTP status, counted in
``dragonfork_ingest_refused_total{protocol="whip",reason}``. ``read_matroska(name)`` is how FFmpeg reads a
stream (``{whip,name=NAME}``): a reader in the stream's nursery writing Matroska into a channel the HTTP
route streams out; it ends when the publisher does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
from collections.abc import AsyncIterator
from typing import Any, Protocol

import structlog
import trio

from dragonfork import metrics
from dragonfork.servers import SignallingRefused, SignallingSession, trickle
from dragonfork.servers.whip.matroska import MatroskaWriter
from dragonfork.servers.whip.publisher import (
    PROTOCOL,
    AnswerTimeout,
    EndReason,
    PublisherSettings,
    PublisherState,
    WhipPublisher,
)
from dragonfork.stream.directory import StreamDirectory, StreamNameTaken, StreamNotLive
from dragonfork.stream.frames import MediaFrame
from dragonfork.stream.stream import Stream, StreamEnded
from dragonfork.stream.track import OPUS, Subscription
from dragonfork.webrtc.sdp import SdpRejected

log = structlog.get_logger(__name__)

RETRY_AFTER_FULL = 5
READER_BUFFER_CHUNKS = 64


@dataclasses.dataclass(frozen=True)
class WhipSettings:
    max_publishers: int = 20
    reader_wait: float = 3.0
    """Seconds a Matroska reader (FFmpeg starting) waits for the publisher to go live before 404."""
    reader_key: str = ""
    """What ``?key=`` of a Matroska read must be (``{whip,name=}`` puts it there); empty: none needed."""
    publisher: PublisherSettings = dataclasses.field(default_factory=PublisherSettings)


class WhipRefused(SignallingRefused):
    """A WHIP offer, trickle or session request that cannot be served; ``status`` is the HTTP status."""


class PublisherObserver(Protocol):
    """Told of every publisher that enters and leaves the table (the session collectors' side)."""

    def opened(self, publisher: WhipPublisher, client: Any, /) -> None: ...

    def closed(self, publisher: WhipPublisher, /) -> None: ...


@dataclasses.dataclass(frozen=True)
class WhipPublisherInfo:
    """One publisher, as the API and the UI show it."""

    name: str
    session: str
    remote: str
    state: str
    since: float
    bytes_received: int
    packets_received: int


class WhipServer:
    def __init__(
        self, directory: StreamDirectory, settings: WhipSettings, observer: PublisherObserver | None = None
    ) -> None:
        self.directory = directory
        self.settings = settings
        self.sessions: dict[str, WhipPublisher] = {}
        self._names: dict[str, WhipPublisher] = {}
        self._observer = observer
        self._nursery: trio.Nursery | None = None

    # -- read model ------------------------------------------------------------------------------------

    def publishers(self) -> list[WhipPublisherInfo]:
        return [
            WhipPublisherInfo(
                name=name,
                session=publisher.id,
                remote=publisher.remote,
                state=publisher.state.value,
                since=publisher.since,
                bytes_received=publisher.bytes_received,
                packets_received=publisher.packets_received,
            )
            for name, publisher in sorted(self._names.items())
        ]

    # -- serving ---------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the publishers' nursery until cancelled (the server stops: every publisher ends)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def new_session(self, name: str, offer_sdp: str, client: Any = None) -> SignallingSession:
        """Answer ``offer_sdp`` with a publisher of stream ``name``; raises ``WhipRefused``."""
        nursery = self._nursery
        if nursery is None:
            raise WhipRefused(503, "the WHIP server is not running", retry_after=RETRY_AFTER_FULL)
        if name in self._names or self.directory.get(name) is not None:
            raise self._refused("name_taken", 409, f"stream {name!r} is already being published", "name")
        cap = self.settings.max_publishers
        if len(self.sessions) >= cap:
            raise self._refused(
                "full",
                503,
                f"the server has whip.max_publishers ({cap}) publishers; retry in {RETRY_AFTER_FULL} s",
                "whip.max_publishers",
                retry_after=RETRY_AFTER_FULL,
            )
        publisher = WhipPublisher(name, self.settings.publisher, remote=getattr(client, "address", ""))
        try:
            answer: str = await nursery.start(self._run_publisher, publisher, offer_sdp, client)
        except SdpRejected as exc:
            reason = "codec" if exc.status == 406 else "offer"
            raise self._refused(reason, exc.status, exc.message, "offer") from None
        except AnswerTimeout as exc:
            raise self._refused("timeout", 504, str(exc), None) from None
        except StreamNameTaken as exc:
            raise self._refused("name_taken", 409, str(exc), "name") from None
        session = SignallingSession(publisher.id, answer)
        publisher.entity_tag = session.etag
        return session

    async def trickle(
        self, name: str, resource_id: str, sdpfrag: str, *, if_match: str | None = None
    ) -> None:
        """Apply a trickle-ICE fragment to a session; ``WhipRefused`` 404, 412, or 4xx for the fragment."""
        publisher = self._session(name, resource_id)
        await trickle(publisher, sdpfrag, if_match, WhipRefused)

    def session_etag(self, name: str, resource_id: str) -> str:
        return self._session(name, resource_id).entity_tag

    def end_session(self, name: str, resource_id: str) -> None:
        """DELETE: end the session if it exists (idempotent)."""
        publisher = self.sessions.get(resource_id)
        if publisher is not None and publisher.name == name:
            publisher.close(EndReason.DELETE)

    # -- readers ---------------------------------------------------------------------------------------

    def check_reader_key(self, key: str) -> None:
        """``WhipRefused`` 403 unless ``key`` is the one ``{whip,name=}`` addresses carry."""
        expected = self.settings.reader_key
        if expected and not hmac.compare_digest(key.encode(), expected.encode()):
            raise WhipRefused(
                403, "wrong or missing key: use the address {whip,name=NAME} expands to", field="key"
            )

    async def read_matroska(self, name: str) -> AsyncIterator[bytes]:
        """The live Matroska stream of ``name`` until its publisher ends; ``WhipRefused`` 404 when nothing is
        published under ``name`` within ``reader_wait`` seconds (any publisher in the hub will do).

        The first chunk is only produced once the stream is live, so the route can still answer 404.
        """
        try:
            stream = await self.directory.wait_live(name, self.settings.reader_wait)
        except StreamNotLive as exc:
            raise WhipRefused(404, str(exc), field="name") from None
        if stream.audio is not None and stream.audio.codec != OPUS:
            raise WhipRefused(
                404, f"stream {name!r} carries {stream.audio.codec.name} audio; this reader takes Opus only"
            )
        send, receive = trio.open_memory_channel[bytes](READER_BUFFER_CHUNKS)
        try:
            await stream.start_reader(_matroska_reader, send)
        except StreamEnded:
            raise WhipRefused(404, f"stream {name!r} ended", field="name") from None
        return _chunks(receive)

    # -- internals -------------------------------------------------------------------------------------

    async def _run_publisher(
        self, publisher: WhipPublisher, offer_sdp: str, client: Any, *, task_status: Any
    ) -> None:
        self.sessions[publisher.id] = publisher
        self._names[publisher.name] = publisher
        if self._observer is not None:
            self._observer.opened(publisher, client)
        try:
            await publisher.run(self.directory, offer_sdp, task_status=task_status)
        finally:
            del self.sessions[publisher.id]
            if self._names.get(publisher.name) is publisher:
                del self._names[publisher.name]
            if self._observer is not None:
                self._observer.closed(publisher)

    def _session(self, name: str, resource_id: str) -> WhipPublisher:
        publisher = self.sessions.get(resource_id)
        if publisher is None or publisher.name != name or publisher.state is PublisherState.CLOSED:
            raise WhipRefused(404, f"no WHIP session {resource_id!r} on {name!r}", field="resource")
        return publisher

    @staticmethod
    def _refused(
        reason: str, status: int, message: str, field: str | None, *, retry_after: int | None = None
    ) -> WhipRefused:
        metrics.INGEST_REFUSALS.labels(PROTOCOL, reason).inc()
        log.info("whip_refused", reason=reason, status=status, error=message)
        return WhipRefused(status, message, field=field, retry_after=retry_after)


async def _matroska_reader(
    stream: Stream, send: trio.MemorySendChannel[bytes], *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """A reader in the stream's nursery: its frames, as Matroska, into ``send`` until either side ends."""
    writer = MatroskaWriter(has_audio=stream.audio is not None, video_codec=stream.video.codec.name)
    with send, contextlib.ExitStack() as subscriptions:
        merged_send, merged = trio.open_memory_channel[MediaFrame](0)
        async with trio.open_nursery() as nursery:
            for track in (stream.video, stream.audio):
                if track is not None:
                    nursery.start_soon(
                        _forward, subscriptions.enter_context(track.subscribe()), merged_send.clone()
                    )
            merged_send.close()
            task_status.started()
            try:
                async for frame in merged:
                    chunk = writer.write(frame)
                    if chunk:
                        await send.send(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the HTTP client went away
            nursery.cancel_scope.cancel()


async def _forward(subscription: Subscription, merged: trio.MemorySendChannel[MediaFrame]) -> None:
    with merged:
        async for frame in subscription.frames:
            await merged.send(frame)


async def _chunks(receive: trio.MemoryReceiveChannel[bytes]) -> AsyncIterator[bytes]:
    with receive:
        async for chunk in receive:
            yield chunk
