"""The RTMP service: its listeners (RTMP and, with a certificate, RTMPS), its nursery and its session table.

Every connection is one ``RtmpSession`` task in the server's nursery: no thread per client, and a
session's failure (``RtmpRefused`` for what the client sent, or a bug) is logged with the session id and
cause, counted, and ends that session only. ``claim_name`` enforces one publisher per name: a second
``publish`` of a name that is live (from RTMP or any other publisher in the hub) is refused. The read model
(``publishers``) is what ``GET /api/v3/rtmp`` and the admin UI show. The ``observer`` (the ``rtmp`` session
collector) hears of every connection that becomes a publisher or a player, and of its end.
"""

from __future__ import annotations

import dataclasses
import posixpath
import ssl
from typing import Any

import structlog
import trio

from dragonfork import metrics
from dragonfork.servers import ConnectionObserver, ListenFailed, RecentRefusals
from dragonfork.servers.rtmp.session import (
    PROTOCOL,
    RtmpRefused,
    RtmpSession,
    RtmpSessionSettings,
    client_gone,
    single_cause,
)
from dragonfork.stream.directory import StreamDirectory, StreamNameTaken

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class RtmpSettings:
    address: str = ":1935"
    """``host:port``; an empty host listens on every address, IPv4 and IPv6 (localhost may be ::1)."""
    address_key: str = "rtmp.address"
    """The setting ``address`` came from, for start-up errors."""
    tls_address: str | None = None
    """RTMPS ``host:port`` (``rtmp.address_tls``) when RTMPS is enabled and a certificate is configured."""
    cert_file: str = ""
    key_file: str = ""
    session: RtmpSessionSettings = dataclasses.field(default_factory=RtmpSessionSettings)


@dataclasses.dataclass(frozen=True)
class PublisherInfo:
    """One live publisher, as the API and the UI show it."""

    name: str
    path: str
    session: str
    remote: str
    protocol: str
    since: float
    bytes_received: int
    media_messages: int


def split_address(address: str) -> tuple[str | None, int]:
    """``host:port`` → (host or None for every address, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address must be host:port, got {address!r}")
    host = host.strip("[]")
    return (host or None), int(port)


class RtmpServer:
    def __init__(
        self, settings: RtmpSettings, directory: StreamDirectory, observer: ConnectionObserver | None = None
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.observer = observer
        self.refusals = RecentRefusals()
        self.sessions: dict[str, RtmpSession] = {}
        self._publishers: dict[str, RtmpSession] = {}
        self.addresses: list[tuple[str, int]] = []

    # -- read model ------------------------------------------------------------------------------------

    def publishers(self) -> list[PublisherInfo]:
        return [
            PublisherInfo(
                name=name,
                path=session.path.path if session.path else "/" + name,
                session=session.id,
                remote=session.remote,
                protocol=PROTOCOL,
                since=session.started_at,
                bytes_received=session.bytes_received,
                media_messages=session.media_messages,
            )
            for name, session in sorted(self._publishers.items())
        ]

    def metadata_for(self, name: str) -> dict[str, Any] | None:
        """The ``onMetaData`` the publisher of ``name`` sent, for players of it."""
        session = self._publishers.get(name)
        return session.metadata if session is not None else None

    def claim_name(self, session: RtmpSession) -> None:
        """Make ``session`` the publisher of its name; ``StreamNameTaken`` if the name is live already."""
        assert session.path is not None
        name = session.path.name
        if name in self._publishers or self.directory.get(name) is not None:
            raise StreamNameTaken(f"{session.path.path!r} is already being published")
        self._publishers[name] = session

    # -- serving ---------------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled; reports the bound (host, port) pairs once listening."""
        settings = self.settings
        listeners: list[trio.abc.Listener[Any]] = await _listen(settings.address, settings.address_key)
        if settings.tls_address is not None:
            try:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(settings.cert_file, settings.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ListenFailed(f"RTMPS: tls.cert_file/tls.key_file cannot be loaded: {exc}") from None
            for listener in await _listen(settings.tls_address, "rtmp.address_tls"):
                listeners.append(trio.SSLListener(listener, context, https_compatible=False))
        self.addresses = [_bound(listener) for listener in listeners]
        log.info("rtmp_listening", addresses=[f"{h}:{p}" for h, p in self.addresses])
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve_connection, listeners)
            task_status.started(self.addresses)

    async def _serve_connection(self, connection: trio.abc.Stream) -> None:
        session = RtmpSession(
            connection,
            _remote(connection),
            self.settings.session,
            self.directory,
            self.claim_name,
            self.metadata_for,
            self._started,
        )
        self.sessions[session.id] = session
        try:
            await session.run()
        except Exception as raised:
            exc = single_cause(raised)
            if isinstance(exc, RtmpRefused):
                metrics.INGEST_REFUSALS.labels(PROTOCOL, exc.reason).inc()
                self.refusals.add(session.remote, exc.reason, exc.message)
                log.warning(
                    "rtmp_refused",
                    session=session.id,
                    remote=session.remote,
                    path=session.path.path if session.path else None,
                    reason=exc.reason,
                    error=exc.message,
                )
            elif not client_gone(exc):
                # A bug in a session must end that client only, never the server or other sessions.
                log.exception("rtmp_session_failed", session=session.id, remote=session.remote)
                metrics.FAILURES.labels("rtmp_session", type(exc).__name__).inc()
        finally:
            if self.observer is not None:  # first: the name may be claimed again once it is released below
                self.observer.closed(session.id)
            del self.sessions[session.id]
            if session.path is not None and self._publishers.get(session.path.name) is session:
                del self._publishers[session.path.name]
            await trio.aclose_forcefully(connection)

    def _started(self, session: RtmpSession) -> None:
        path = session.path
        if self.observer is not None and path is not None:
            self.observer.opened(
                session.id,
                stream=path.path,
                reference=posixpath.splitext(path.name)[0],  # Restreamer publishes {processid}.stream
                publishing=session.role == "publisher",
                remote=session.remote,
                traffic=session.traffic,
            )


async def _listen(address: str, key: str) -> list[trio.abc.Listener[Any]]:
    host, port = split_address(address)
    try:
        return list(await trio.open_tcp_listeners(port, host=host))
    except OSError as exc:
        raise ListenFailed(f"{key} {address!r} cannot be used: {exc.strerror or exc}") from None


def _raw_stream(connection: trio.abc.Stream) -> Any:
    return connection.transport_stream if isinstance(connection, trio.SSLStream) else connection


def _remote(connection: trio.abc.Stream) -> str:
    try:
        address = _raw_stream(connection).socket.getpeername()
    except (OSError, AttributeError):
        return "?"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # [v6]:port, as URLs write it


def _bound(listener: trio.abc.Listener[Any]) -> tuple[str, int]:
    raw = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
    address = raw.socket.getsockname()  # type: ignore[attr-defined]
    return address[0], address[1]
