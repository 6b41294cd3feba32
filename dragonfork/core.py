"""The core services of one server, composed once by ``server.py`` and handed to the HTTP layer.

The HTTP layer calls into these; nothing here imports ``dragonfork.http``. The core owns the stream directory
(the hub's name → live stream table): the registry's process runs publish in it, the WHEP service reads it.
It also owns the settings service and declares, per service, which settings it reads (for config reloads).
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import trio

from dragonfork import metrics
from dragonfork.config import LoadedSettings, Settings, host_port, is_loopback_host
from dragonfork.files.service import FileService
from dragonfork.logs import configure_logging
from dragonfork.metrics_history import MetricsHistory, SystemMetrics
from dragonfork.process.access import AccessPolicy
from dragonfork.process.child import ChildLedger, spawn
from dragonfork.process.placeholders import IngestAddresses
from dragonfork.process.registry import Registry
from dragonfork.process.runner import ProcessRuntime
from dragonfork.process.store import Store
from dragonfork.servers.rtmp import RtmpServer, RtmpSessionSettings, RtmpSettings
from dragonfork.servers.srt import SrtServer, SrtSettings
from dragonfork.servers.whep import PublisherStatus, WhepServer, WhepSettings
from dragonfork.servers.whep.workers import WorkerPool, worker_count
from dragonfork.servers.whip import PublisherSettings, WhipServer, WhipSettings
from dragonfork.sessions.ffmpeg import FfmpegSessions
from dragonfork.sessions.hls import HlsSessions
from dragonfork.sessions.ingest import IngestSessions
from dragonfork.sessions.registry import SessionRegistry
from dragonfork.sessions.webrtc import WebrtcSessions, WhipSessions
from dragonfork.settings_service import SettingsService
from dragonfork.stream.directory import StreamDirectory
from dragonfork.stream.ingest.rtp_udp import RtpIngestSettings
from dragonfork.stream.stream import StreamSettings
from dragonfork.webrtc.sdp import OfferLimits
from dragonfork.webrtc.viewer import ViewerSettings


@dataclass
class Core:
    config: SettingsService
    registry: Registry
    directory: StreamDirectory
    whep: WhepServer
    metrics_history: MetricsHistory
    files: FileService
    client_sessions: SessionRegistry  # who watches what: /api/v3/session, limits for new viewers
    rtmp: RtmpServer | None = None
    """The RTMP server while ``rtmp.enable`` is set and it listens (a reload may replace it)."""
    srt: SrtServer | None = None
    """The SRT server while ``srt.enable`` is set (a scoped service: a reload of ``srt.*`` replaces it)."""
    whip: WhipServer | None = None
    """WHIP ingest while ``whip.enable`` and ``webrtc.enable`` are set (a reload of either replaces it)."""
    started_at: float = field(default_factory=time.time)

    @property
    def loaded(self) -> LoadedSettings:
        return self.config.active

    @property
    def settings(self) -> Settings:
        return self.config.settings

    @property
    def server_id(self) -> str:
        """The ``id`` setting, or when it is empty one derived from the host name and the data directory:
        stable across restarts, different per installation. datarhei's clients need one (Restreamer refuses
        a login to a server whose ``/api`` has an empty ``id``); datarhei itself generates it into its
        config file."""
        if self.settings.id:
            return self.settings.id
        installation = f"{socket.gethostname()}:{self.settings.data_dir.resolve()}"
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"dragonfork:{installation}"))


def loopback_base_url(address: str) -> str:
    """How this server reaches itself over HTTP: ``http://127.0.0.1:PORT`` unless it listens on one
    specific non-loopback address only."""
    host, port = host_port(address)
    if host in ("0.0.0.0", "::") or is_loopback_host(host):
        host = "[::1]" if host == "::1" else "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _whip_reader_key(settings: Settings) -> str:
    """The key ``{whip,name=}`` addresses carry, so FFmpeg reads a WHIP stream without the API's token.

    Only with API auth (without it the whole API is open anyway). Kept in ``<data>/whip-reader.key`` since
    the expanded addresses are stored in the processes' configs and must keep working after a restart.
    """
    if not settings.api.auth.enable:
        return ""
    path = settings.data_dir / "whip-reader.key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(24)
        path.write_text(key + "\n")
        path.chmod(0o600)
        return key


def build_files(settings: Settings) -> FileService:
    return FileService(
        settings.storage, disk_dir=settings.disk_dir, http_base=loopback_base_url(settings.address)
    )


def whip_enabled(settings: Settings) -> bool:
    return settings.whip.enable and settings.webrtc.enable


def ingest_addresses(settings: Settings, http_base: str) -> IngestAddresses:
    """Where ``{rtmp,…}``, ``{srt,…}`` and ``{whip,…}`` point: this server's own ingest servers, when
    enabled (WHIP is served by the HTTP server at ``http_base``)."""
    rtmp, srt = settings.rtmp, settings.srt
    addresses = (
        IngestAddresses.for_rtmp(rtmp.address, rtmp.app, rtmp.token) if rtmp.enable else IngestAddresses()
    )
    addresses = (
        addresses.with_srt(srt.address, srt.token, srt.passphrase) if srt.enable else addresses.without_srt()
    )
    if not whip_enabled(settings):
        return addresses
    return dataclasses.replace(
        addresses, whip=f"{http_base}/api/v3/whip", whip_key=_whip_reader_key(settings)
    )


def srt_settings(settings: Settings) -> SrtSettings:
    srt = settings.srt
    return SrtSettings(address=srt.address, passphrase=srt.passphrase, token=srt.token)


def whip_settings(settings: Settings) -> WhipSettings:
    webrtc = settings.webrtc
    return WhipSettings(
        max_publishers=settings.whip.max_publishers,
        reader_wait=webrtc.publisher_wait_seconds,
        reader_key=_whip_reader_key(settings),
        publisher=PublisherSettings(
            stream=stream_of(settings),
            handshake_timeout=webrtc.handshake_timeout_seconds,
            idle_timeout=settings.whip.idle_timeout_seconds,
            ice_servers=ice_servers_of(settings),
            public_ips=list(webrtc.public_ips),
            offer_limits=OfferLimits.of(webrtc),
        ),
    )


def build_core(loaded: LoadedSettings) -> Core:
    settings = loaded.settings
    config = SettingsService(loaded)
    directory = StreamDirectory()
    files = build_files(settings)
    ledger = ChildLedger(settings.data_dir)
    runtime = process_runtime(settings, directory=directory, ledger=ledger, files=files)
    registry = Registry(
        Store(settings.data_dir),
        runtime,
        access_policy(settings),
        diskfs=files.diskfs_base,
        memfs=files.memfs_base,
        seed_demo=settings.demo,
        ingest=ingest_addresses(settings, loopback_base_url(settings.address)),
    )

    def publisher_status(name: str) -> PublisherStatus | None:
        process = registry.processes.get(name)
        if process is None:
            return None
        return PublisherStatus(
            serves_webrtc=process.config.webrtc.enabled and config.settings.webrtc.enable,
            started=process.order == "start",
            state=process.state,
        )

    client_sessions = SessionRegistry(settings.sessions, settings.data_dir / "sessions")
    client_sessions.add_sampler(FfmpegSessions(client_sessions, registry.processes.values).sample)
    hls_sessions = HlsSessions(client_sessions)  # HLS players of /memfs and diskfs
    files.filter_playlists(hls_sessions.playlist)
    files.subscribe(hls_sessions.served)
    whep = WhepServer(
        directory,
        whep_settings(settings),
        publisher_status,
        viewer_observer=WebrtcSessions(client_sessions),
        workers=webrtc_workers(settings, ledger),
    )
    started_at = time.time()
    history = MetricsHistory(
        metrics.REGISTRY,
        range_seconds=settings.metrics.range_sec,
        interval_seconds=settings.metrics.interval_sec,
        system=SystemMetrics(started_at=started_at, disk_path=settings.disk_dir),
    )
    core = Core(
        config=config,
        registry=registry,
        directory=directory,
        whep=whep,
        metrics_history=history,
        files=files,
        client_sessions=client_sessions,
        started_at=started_at,
    )
    _declare_settings(core)
    return core


def stream_of(settings: Settings) -> StreamSettings:
    webrtc = settings.webrtc
    return StreamSettings(
        subscriber_buffer_frames=webrtc.subscriber_buffer_frames,
        keyframe_cache_enabled=webrtc.keyframe_cache_enable,
        keyframe_cache_max_packets=webrtc.keyframe_cache_max_packets,
        keyframe_cache_max_bytes=webrtc.keyframe_cache_max_bytes,
    )


def process_runtime(
    settings: Settings,
    *,
    directory: StreamDirectory,
    ledger: ChildLedger | None,
    files: FileService,
) -> ProcessRuntime:
    webrtc = settings.webrtc
    return ProcessRuntime(
        ffmpeg_binary=settings.ffmpeg_binary,
        stop_timeout=settings.ffmpeg.stop_timeout_seconds,
        probe_timeout=settings.ffmpeg.probe_timeout_seconds,
        log_max_lines=settings.ffmpeg.log.max_lines,
        log_max_history=settings.ffmpeg.log.max_history,
        max_processes=settings.ffmpeg.max_processes,
        webrtc_enabled=webrtc.enable,
        cleaner=files.cleaner,
        stream=stream_of(settings),
        rtp=RtpIngestSettings(port_first=webrtc.port_first, port_last=webrtc.port_last),
        directory=directory,
        ledger=ledger,
    )


def rtmp_settings(settings: Settings) -> RtmpSettings:
    rtmp = settings.rtmp
    return RtmpSettings(
        address=rtmp.address,
        tls_address=rtmp.address_tls if rtmp.enable_tls else None,
        cert_file=settings.tls.cert_file,
        key_file=settings.tls.key_file,
        session=RtmpSessionSettings(app=rtmp.app, token=rtmp.token, stream=stream_of(settings)),
    )


def access_policy(settings: Settings) -> AccessPolicy:
    return AccessPolicy(
        input=settings.ffmpeg.access.input,
        output=settings.ffmpeg.access.output,
        data_dir=settings.data_dir,
        disk_dir=settings.disk_dir,
    )


def ice_servers_of(settings: Settings) -> list[dict[str, str]]:
    """The configured STUN/TURN servers as aiortc's ``RTCIceServer`` arguments (WHEP and WHIP)."""
    webrtc = settings.webrtc
    return [
        {"urls": url, "username": webrtc.ice_username, "credential": webrtc.ice_credential}
        for url in webrtc.ice_servers
    ]


def webrtc_workers(settings: Settings, ledger: ChildLedger) -> WorkerPool | None:
    """The WebRTC worker processes (``webrtc.workers``); None when viewers run in the server (1 worker)."""
    count = worker_count(settings.webrtc.workers)
    if count <= 1 or not settings.webrtc.enable:
        return None
    return WorkerPool(count, functools.partial(spawn, ledger=ledger), log_level=settings.log.level)


def whep_settings(settings: Settings) -> WhepSettings:
    webrtc = settings.webrtc
    ice_servers = ice_servers_of(settings)
    return WhepSettings(
        max_viewers_per_stream=webrtc.max_peers_per_stream,
        publisher_wait=webrtc.publisher_wait_seconds,
        max_viewers_per_core=webrtc.max_viewers_per_core,
        admission_cpu_percent=webrtc.admission_cpu_percent,
        viewer=ViewerSettings(
            handshake_timeout=webrtc.handshake_timeout_seconds,
            disconnect_grace=webrtc.disconnect_grace_seconds,
            ice_servers=ice_servers,
            public_ips=list(webrtc.public_ips),
            max_delay=webrtc.max_viewer_delay_seconds,
            fast_path=webrtc.fast_path,
            offer_limits=OfferLimits.of(webrtc),
        ),
        stream=stream_of(settings),
    )


RTMP_SERVICE = "rtmp_server"
SRT_SERVICE = "srt_server"
WHIP_SERVICE = "whip_server"
# What a running RTMP server reads: a change restarts it (its listeners and sessions) in its own scope.
RTMP_SERVER_KEYS = (
    "rtmp.enable",
    "rtmp.enable_tls",
    "rtmp.address",
    "rtmp.address_tls",
    "rtmp.app",
    "rtmp.token",
    "tls.cert_file",
    "tls.key_file",
)
# What the registry's processes read besides ffmpeg.* and webrtc.*: what their placeholders expand to
# (``{whip,…}`` carries the reader key while API auth is on).
PLACEHOLDER_KEYS = (
    "rtmp.enable",
    "rtmp.address",
    "rtmp.app",
    "rtmp.token",
    "srt.enable",
    "srt.address",
    "srt.token",
    "srt.passphrase",
    "whip.enable",
    "api.auth.enable",
    "storage.memory.auth",
    "storage.disk.dir",
)
# What a stream in the hub is made with: RTMP publishers read them too.
STREAM_KEYS = (
    "webrtc.subscriber_buffer_frames",
    "webrtc.keyframe_cache_enable",
    "webrtc.keyframe_cache_max_packets",
    "webrtc.keyframe_cache_max_bytes",
)


class IngestServer(Protocol):
    async def run(self, *, task_status: trio.TaskStatus[Any] = ...) -> None: ...


@dataclass(frozen=True)
class IngestService:
    """An ingest server (RTMP, SRT, WHIP) run as a scoped service: a reload that changes one of ``keys``
    replaces it. While it serves, the core's attribute ``slot`` holds it (the routes read it there);
    ``build`` makes it from the settings, or answers None where they disable it."""

    name: str
    slot: Literal["rtmp", "srt", "whip"]
    keys: tuple[str, ...]
    build: Callable[[Core, Settings], IngestServer | None]

    async def serve(self, core: Core, settings: Settings, *, task_status: trio.TaskStatus[Any]) -> None:
        server = self.build(core, settings)
        if server is None:
            task_status.started()
            return
        setattr(core, self.slot, server)
        try:
            await server.run(task_status=task_status)
        finally:
            if getattr(core, self.slot) is server:
                setattr(core, self.slot, None)


def _rtmp_server(core: Core, settings: Settings) -> RtmpServer | None:
    if not settings.rtmp.enable:
        return None
    return RtmpServer(
        rtmp_settings(settings), core.directory, observer=IngestSessions(core.client_sessions, "rtmp")
    )


def _srt_server(core: Core, settings: Settings) -> SrtServer | None:
    if not settings.srt.enable:
        return None
    return SrtServer(srt_settings(settings), IngestSessions(core.client_sessions, "srt"))


def _whip_server(core: Core, settings: Settings) -> WhipServer | None:
    if not whip_enabled(settings):
        return None
    return WhipServer(core.directory, whip_settings(settings), observer=WhipSessions(core.client_sessions))


INGEST_SERVICES = (
    IngestService(RTMP_SERVICE, "rtmp", RTMP_SERVER_KEYS, _rtmp_server),
    IngestService(SRT_SERVICE, "srt", ("srt",), _srt_server),
    # Only switching it on or off ends the live WHIP publishers; its other settings reach new ones
    # (``whip_publishers`` below), as the RTMP publishers' stream settings do.
    IngestService(WHIP_SERVICE, "whip", ("whip.enable", "webrtc.enable"), _whip_server),
)


def _declare_settings(core: Core) -> None:
    """What each core service reads, for reloads (the HTTP layer declares its own; the scoped services are
    declared in ``start_scoped_services``). Declaration order is the order a reload applies them in: the
    files service before the registry, which expands ``{memfs}`` and ``{diskfs}`` from it."""

    def files_take(settings: Settings) -> None:
        core.files.configure(settings.storage, disk_dir=settings.disk_dir)
        if core.metrics_history.system is not None:  # datarhei's disk metrics read the served directory
            core.metrics_history.system.disk_path = settings.disk_dir

    async def registry_takes(settings: Settings) -> None:
        current = core.registry.runtime  # the same stream directory, child ledger and cleaner
        runtime = process_runtime(
            settings, directory=current.directory, ledger=current.ledger, files=core.files
        )
        http_base = loopback_base_url(core.config.started.address)  # the HTTP server is bound at start
        await core.registry.apply_settings(
            runtime,
            access_policy(settings),
            diskfs=core.files.diskfs_base,
            memfs=core.files.memfs_base,
            ingest=ingest_addresses(settings, http_base),
        )

    def whep_takes(settings: Settings) -> None:  # new viewers; running ones keep theirs
        core.whep.settings = whep_settings(settings)

    def rtmp_sessions_take(settings: Settings) -> None:  # new RTMP publishers; live ones keep theirs
        if core.rtmp is not None:
            core.rtmp.settings = rtmp_settings(settings)

    def whip_publishers_take(settings: Settings) -> None:  # new WHIP publishers and readers
        if core.whip is not None:
            core.whip.settings = whip_settings(settings)

    config = core.config
    config.depend("files", ("storage.memory", "storage.disk"), files_take)
    config.depend("process_registry", ("ffmpeg", "webrtc", *PLACEHOLDER_KEYS), registry_takes)
    config.depend("whep", ("webrtc",), whep_takes)
    config.depend("rtmp_sessions", STREAM_KEYS, rtmp_sessions_take)
    config.depend("whip_publishers", ("whip", "webrtc", "api.auth.enable"), whip_publishers_take)
    config.depend(
        "sessions", ("sessions",), lambda settings: core.client_sessions.configure(settings.sessions)
    )
    config.depend(
        "log",
        ("log.level", "log.max_lines"),
        lambda settings: configure_logging(settings.log.level, max_lines=settings.log.max_lines),
    )


async def start_scoped_services(core: Core) -> None:
    """The services a reload restarts in a scope of their own (``SettingsService.run``'s nursery), started
    before the registry so that a process reading ``{rtmp,…}``, ``{srt,…}`` or ``{whip,…}`` finds its
    server serving."""

    async def sample_metrics(settings: Settings, *, task_status: trio.TaskStatus[None]) -> None:
        history = core.metrics_history  # the samples survive a restart; range and interval are new
        history.range_seconds = settings.metrics.range_sec
        history.interval_seconds = settings.metrics.interval_sec
        if not settings.metrics.enable:
            task_status.started()
            return
        await history.run(task_status=task_status)

    for service in INGEST_SERVICES:
        await core.config.run_scoped(service.name, service.keys, functools.partial(service.serve, core))
    await core.config.run_scoped(
        "metrics_history", ("metrics.enable", "metrics.range_sec", "metrics.interval_sec"), sample_metrics
    )
