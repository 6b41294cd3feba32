"""One settings model: built-in defaults < config file < ``CORE_*`` environment variables.

The field names and nesting follow datarhei Core v16's config JSON (config version 3): every datarhei key is
here, so a datarhei config file loads unchanged and ``GET /api/v3/config`` echoes it faithfully. Keys for
features dragonfork does not have are declared with :func:`kept` (kept and echoed, no effect; listed at start
when set). dragonfork's own keys (``webrtc``, ``demo``, ...) sit beside them. Every leaf has one
environment variable: ``CORE_`` + its path in upper case joined by ``_`` (``api.auth.jwt.secret`` →
``CORE_API_AUTH_JWT_SECRET``); datarhei's spelling without inner underscores (``CORE_FFMPEG_LOG_MAXLINES``) is
accepted too, as are the few datarhei names that follow neither rule (``CORE_METRICS_RANGE_SECONDS``).
``load_settings`` remembers where each value came from, for ``dragonfork config`` and the API's ``overrides``.

Precedence: defaults < config file (``--config``/``CORE_CONFIGFILE``) < ``config.json`` in the data directory
(written by ``PUT /api/v3/config``: the keys changed through the API) < environment.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

DEFAULT_ADDRESS = "127.0.0.1:8080"
ENV_PREFIX = "CORE_"
CONFIG_FILE_ENV = "CORE_CONFIGFILE"


STORED_CONFIG_NAME = "config.json"
CONFIG_VERSION = 3  # datarhei's config layout version
DOCUMENT_KEYS = ("version", "created_at")  # in a datarhei config file beside the settings


class _Section(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True)


def kept(default: Any, description: str, **extra: Any) -> Any:
    """A datarhei key for a feature dragonfork does not have: validated, stored and echoed, without effect."""
    return Field(default, description=f"datarhei: {description} (kept and echoed; no effect here)", **extra)


def env_alias(*names: str) -> dict[str, Any]:
    """datarhei's own variable names for a key where they follow neither naming rule."""
    return {"json_schema_extra": {"x-env": list(names)}}  # an OpenAPI extension keyword


def _is_kept(field: Any) -> bool:
    return bool(field.description and field.description.endswith("(kept and echoed; no effect here)"))


class LogSettings(_Section):
    level: Literal["debug", "info", "warn", "warning", "error", "silent"] = "info"
    topics: list[str] = kept([], "show only these log topics")
    max_lines: int = Field(1000, ge=0, description="Server log lines kept in memory for /api/v3/log")


class HostSettings(_Section):
    name: list[str] = Field([], description="Public host names or IPs of this server (read by datarhei's UI)")
    auto: bool = kept(True, "detect the public IP addresses")


class DbSettings(_Section):
    dir: str = Field("", description="Directory of db.json; empty means the user's data directory")


class CacheTypes(_Section):
    allow: list[str] = kept([], "file extensions to cache")
    block: list[str] = kept([".m3u8", ".mpd"], "file extensions not to cache")


class DiskCacheSettings(_Section):
    enable: bool = kept(True, "cache for files served from storage.disk.dir")
    max_size_mbytes: int = kept(0, "cache size, 0 for unlimited", ge=0)
    ttl_seconds: int = kept(300, "seconds to keep files in the cache")
    max_file_size_mbytes: int = kept(1, "largest file to cache", ge=0)
    types: CacheTypes = CacheTypes()


class DiskStorageSettings(_Section):
    dir: str = Field("", description="Directory {diskfs} expands to, served at /; empty means <db.dir>/data")
    max_size_mbytes: int = Field(0, ge=0, description="Largest total size uploads may fill; 0 is unlimited")
    cache: DiskCacheSettings = DiskCacheSettings()


class MemoryAuthSettings(_Section):
    enable: bool = Field(True, description="Require HTTP Basic auth for PUT/POST/DELETE on /memfs")
    username: str = "admin"
    password: str = Field("", description="Empty means a random password per start")


class MemoryStorageSettings(_Section):
    max_size_mbytes: int = Field(0, ge=0, description="Largest total size of /memfs; 0 is unlimited")
    purge: bool = Field(False, description="When /memfs is full, drop the oldest files instead of refusing")
    auth: MemoryAuthSettings = MemoryAuthSettings()


class CorsSettings(_Section):
    origins: list[str] = kept(["*"], "CORS origins allowed on /memfs and /data")


class StorageSettings(_Section):
    disk: DiskStorageSettings = DiskStorageSettings()
    memory: MemoryStorageSettings = MemoryStorageSettings()
    s3: list[dict[str, Any]] = kept([], "S3 storages")
    cors: CorsSettings = CorsSettings()
    mimetypes_file: str = kept("./mime.types", "file with MIME types", **env_alias("CORE_MIMETYPES_FILE"))


class JwtSettings(_Section):
    secret: str = Field("", description="HS256 secret; empty means a random secret per start")


class Auth0Settings(_Section):
    enable: bool = kept(False, "Auth0 login")
    tenants: list[dict[str, Any]] = kept([], "Auth0 tenants")


class AuthSettings(_Section):
    enable: bool = False
    disable_localhost: bool = kept(False, "no authentication for clients on localhost")
    username: str = Field("", **env_alias("RS_USERNAME"))
    password: str = Field("", **env_alias("RS_PASSWORD"))
    jwt: JwtSettings = JwtSettings()
    auth0: Auth0Settings = Auth0Settings()
    disable_localhost_check: bool = Field(
        False,
        description="Allow serving a non-loopback address without auth (logged loudly at every start)",
    )
    login_free_failures: int = Field(
        5, ge=1, description="Failed logins in a row from one client address before it must wait (429)"
    )
    login_backoff_seconds: float = Field(
        1.0, gt=0, description="The first wait; it doubles with every further failure"
    )
    login_backoff_max_seconds: float = Field(300.0, gt=0, description="The longest wait")


class AddressRules(_Section):
    allow: list[str] = kept([], "client IPs (CIDR) allowed")
    block: list[str] = kept([], "client IPs (CIDR) blocked")


class ApiAccessSettings(_Section):
    http: AddressRules = AddressRules()
    https: AddressRules = AddressRules()


class ApiSettings(_Section):
    read_only: bool = Field(False, description="Refuse every mutating API request with 403")
    access: ApiAccessSettings = ApiAccessSettings()
    auth: AuthSettings = AuthSettings()
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest request body accepted (413 above)")
    body_timeout_seconds: float = Field(
        10.0, gt=0, description="A request body must arrive within this (408 and the connection closed)"
    )
    drain_max_bytes: int = Field(
        4 * 1024 * 1024,
        ge=0,
        description="Unread body bytes discarded to keep a connection alive after an early answer",
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Request line + headers at most (431 and the connection closed)"
    )
    keep_alive_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="An idle connection, or one whose headers are not complete, is closed after this",
    )


class AccessRules(_Section):
    allow: list[str] = []
    block: list[str] = []

    @field_validator("allow", "block")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return patterns


class AccessSettings(_Section):
    input: AccessRules = AccessRules()
    output: AccessRules = AccessRules()


class FfmpegLogSettings(_Section):
    max_lines: int = Field(50, ge=1, description="Log lines kept per process run")
    max_history: int = Field(3, ge=0, description="Finished runs kept per process")


class FfmpegSettings(_Section):
    binary: str = Field("", description="FFmpeg executable; empty means the one shipped by imageio-ffmpeg")
    max_processes: int = Field(0, ge=0, description="Running processes at most; 0 is unlimited")
    access: AccessSettings = AccessSettings()
    log: FfmpegLogSettings = FfmpegLogSettings()
    stop_timeout_seconds: float = Field(5.0, gt=0, description="Grace after SIGINT before SIGKILL")
    probe_timeout_seconds: float = Field(10.0, gt=0)


class TlsSettings(_Section):
    """datarhei Core's ``tls`` block: the certificate is used by RTMPS; the HTTP API is served without TLS."""

    address: str = kept(":8181", "HTTPS listen address")
    enable: bool = kept(False, "HTTPS")
    auto: bool = kept(False, "Let's Encrypt certificates")
    email: str = kept("cert@datarhei.com", "Let's Encrypt account e-mail")
    cert_file: str = Field("", description="PEM certificate (chain) file")
    key_file: str = Field("", description="PEM private key file")


class RtmpSettings(_Section):
    """datarhei Core's ``rtmp`` block: the RTMP (and RTMPS) server publishers push to and players read."""

    enable: bool = Field(False, description="Run the RTMP server")
    enable_tls: bool = Field(False, description="Also serve RTMPS (needs tls.cert_file and tls.key_file)")
    address: str = Field(":1935", description="RTMP listen address (empty host: every interface)")
    address_tls: str = Field(":1936", description="RTMPS listen address")
    app: str = Field("/", description="Path prefix every published stream must start with")
    token: str = Field("", description="Publishers and players must add ?token=<token>; empty: no token")

    @field_validator("address", "address_tls")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host_port(value)
        return value

    @field_validator("app")
    @classmethod
    def _app_path(cls, value: str) -> str:
        if not value.startswith("/") or "?" in value or "//" in value:
            raise ValueError(f"app must be a path starting with / (e.g. / or /live), got {value!r}")
        return value.rstrip("/") or "/"


class SrtLogSettings(_Section):
    enable: bool = kept(False, "SRT server log")
    topics: list[str] = kept([], "SRT log topics")


class SrtSettings(_Section):
    """datarhei Core's ``srt`` block: the SRT server publishers send to and readers request from."""

    enable: bool = Field(False, description="Run the SRT server")
    address: str = Field(":6000", description="SRT listen address, UDP (empty host: every interface)")
    passphrase: str = Field("", description="Callers must encrypt with this passphrase (10-79 characters)")
    token: str = Field("", description="Callers must add ,token:<token> to the stream id; empty: no token")
    log: SrtLogSettings = SrtLogSettings()

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host_port(value)
        return value

    @field_validator("passphrase")
    @classmethod
    def _passphrase_length(cls, value: str) -> str:
        if value and not 10 <= len(value) <= 79:
            raise ValueError(f"an SRT passphrase has 10 to 79 characters, this one has {len(value)}")
        return value


class PlayoutSettings(_Section):
    enable: bool = kept(False, "playout proxy")
    min_port: int = kept(0, "first playout port", ge=0, le=65535)
    max_port: int = kept(0, "last playout port", ge=0, le=65535)


class DebugSettings(_Section):
    profiling: bool = kept(False, "profiling endpoint /profiling")
    force_gc: int = kept(0, "seconds between forced garbage collections")
    memory_limit_mbytes: int = kept(0, "soft memory limit")


class MetricsSettings(_Section):
    enable: bool = True
    enable_prometheus: bool = True
    # datarhei's defaults are 300 s / 2 s; 600 s fills the admin UI's 10-minute charts.
    range_sec: int = Field(
        600,
        ge=1,
        le=86400,
        description="Seconds of metric history for /api/v3/metrics",
        **env_alias("CORE_METRICS_RANGE_SECONDS"),
    )
    protect: bool = Field(
        False,
        description="With api.auth.enable, /metrics needs a Bearer access token or Basic username:password",
    )
    interval_sec: int = Field(
        2,
        ge=1,
        le=3600,
        description="Seconds between two samples of the history and of the event-loop lag",
        **env_alias("CORE_METRICS_INTERVAL_SECONDS"),
    )


class ServiceSettings(_Section):
    enable: bool = kept(False, "connection to the Restreamer Service")
    token: str = kept("", "Restreamer Service token")
    url: str = kept("https://service.datarhei.com", "Restreamer Service URL")


class RouterSettings(_Section):
    blocked_prefixes: list[str] = kept(["/api"], "path prefixes that cannot be routed")
    routes: dict[str, str] = kept({}, "route mappings")
    ui_path: str = kept("", "directory of UI files mounted as /ui")


class WebRTCSettings(_Section):
    enable: bool = True
    port_first: int = Field(20000, ge=1024, le=65534, description="First UDP port for FFmpeg→source RTP legs")
    port_last: int = Field(20999, ge=1025, le=65535)
    max_peers_per_stream: int = Field(100, ge=1)
    max_viewers_per_core: int = Field(
        300,
        ge=1,
        description="Viewers per core (the server's, or each WebRTC worker's) before new ones get 503",
    )
    admission_cpu_percent: float = Field(
        85.0,
        gt=0,
        le=100,
        description="New viewers get 503 while the CPU of the core they would use (the server's, or every "
        "worker's) is above this % of a core",
    )
    workers: int = Field(
        0,
        ge=0,
        le=256,
        description="WebRTC worker processes that run the viewers, each on a core, started with the first "
        "viewer; 0: one per usable core; 1 (or 0 on a single core): viewers run in the server process",
    )
    handshake_timeout_seconds: float = Field(10.0, gt=0)
    disconnect_grace_seconds: float = Field(5.0, ge=0)
    ice_servers: list[str] = Field(
        [], description="ICE server URLs (stun:/turn:); none by default, advertised in Link headers"
    )
    ice_username: str = ""
    ice_credential: str = ""
    public_ips: list[str] = Field(
        [], description="Addresses added to answers as host candidates (NAT, containers)"
    )
    allowed_origins: list[str] = Field(["*"], description="CORS origins allowed on WHEP routes")
    keyframe_cache_enable: bool = True
    keyframe_cache_max_packets: int = Field(512, ge=1)
    keyframe_cache_max_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    subscriber_buffer_frames: int = Field(
        256, ge=8, description="Frames a viewer's channel holds (a keyframe-cache burst must fit)"
    )
    fast_path: bool = Field(
        True,
        description="Send media through the per-stream fan-out (packetized once, SRTP + sendto per viewer); "
        "false: through aiortc's senders, as TURN-relayed viewers always are",
    )
    max_viewer_delay_seconds: float = Field(
        1.0, gt=0, description="A viewer whose sender falls this far behind skips to the next keyframe"
    )
    publisher_wait_seconds: float = Field(
        3.0,
        ge=0,
        le=30,
        description="How long a WHEP offer for a started process waits for its stream to go live (then 409)",
    )
    max_offer_bytes: int = Field(
        32 * 1024,
        ge=1024,
        description="Largest WHEP offer or trickle fragment (413 above), checked before parsing",
    )
    max_offer_media_sections: int = Field(4, ge=2, description="m-sections an offer may have (400 above)")
    max_candidates_per_media_section: int = Field(
        50,
        ge=1,
        description="ICE candidates per m-section of an offer, and per session over all PATCHes (400)",
    )

    @model_validator(mode="after")
    def _port_range(self) -> WebRTCSettings:
        if self.port_last <= self.port_first:
            raise ValueError(f"port_last ({self.port_last}) must be above port_first ({self.port_first})")
        return self


class SessionsSettings(_Section):
    """Who watches what (datarhei Core's ``sessions`` block): HLS, WebRTC, RTMP, SRT and FFmpeg clients."""

    enable: bool = Field(True, description="Collect sessions (and enforce the limits below)")
    ip_ignorelist: list[str] = Field(
        ["127.0.0.1/32", "::1/128"],
        description="Client addresses (CIDR) whose sessions are neither collected nor limited",
    )
    session_timeout_sec: int = Field(30, ge=1, description="An HLS session without a request this long ends")
    persist: bool = Field(False, description="Keep the session totals across restarts (<db.dir>/sessions)")
    persist_interval_sec: int = Field(300, ge=0, description="How often the totals are written; 0: at stop")
    max_bitrate_mbit: int = Field(
        0,
        ge=0,
        description="New HLS/WebRTC viewers get 503 while the outgoing bitrate is above; 0: no limit",
        **env_alias("CORE_SESSIONS_MAXBITRATE_MBIT"),
    )
    max_sessions: int = Field(
        0, ge=0, description="Simultaneous HLS (and WebRTC) sessions at most, each; 0: no limit"
    )

    @field_validator("ip_ignorelist")
    @classmethod
    def _cidrs(cls, ranges: list[str]) -> list[str]:
        for cidr in ranges:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP range in CIDR notation: {cidr!r}") from exc
        return ranges


class WhipSettings(_Section):
    """WHIP ingest (ours; datarhei Core has none): publishers POST offers to /api/v3/whip/NAME."""

    enable: bool = Field(True, description="Take WHIP publishers (needs webrtc.enable)")
    max_publishers: int = Field(20, ge=1, description="Live WHIP publishers at most (503 above)")
    idle_timeout_seconds: float = Field(
        10.0, gt=0, description="A connected WHIP publisher that sends no media this long is ended"
    )


class Settings(_Section):
    """The effective configuration of one server."""

    id: str = ""
    name: str = "dragonfork"
    address: str = DEFAULT_ADDRESS
    update_check: bool = kept(False, "check for updates and send anonymized data")
    demo: bool = Field(True, description="Create the demo process when the database is new")
    log: LogSettings = LogSettings()
    db: DbSettings = DbSettings()
    host: HostSettings = HostSettings()
    api: ApiSettings = ApiSettings()
    tls: TlsSettings = TlsSettings()
    storage: StorageSettings = StorageSettings()
    rtmp: RtmpSettings = RtmpSettings()
    srt: SrtSettings = SrtSettings()
    ffmpeg: FfmpegSettings = FfmpegSettings()
    playout: PlayoutSettings = PlayoutSettings()
    debug: DebugSettings = DebugSettings()
    metrics: MetricsSettings = MetricsSettings()
    sessions: SessionsSettings = SessionsSettings()
    service: ServiceSettings = ServiceSettings()
    router: RouterSettings = RouterSettings()
    webrtc: WebRTCSettings = WebRTCSettings()
    whip: WhipSettings = WhipSettings()

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host_port(value)
        return value

    @model_validator(mode="after")
    def _rtmps_certificate(self) -> Settings:
        if self.rtmp.enable and self.rtmp.enable_tls and not (self.tls.cert_file and self.tls.key_file):
            raise ValueError("rtmp.enable_tls needs a certificate: set tls.cert_file and tls.key_file")
        return self

    # -- derived values ------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return Path(self.db.dir) if self.db.dir else Path(platformdirs.user_data_dir("dragonfork"))

    @property
    def disk_dir(self) -> Path:
        return Path(self.storage.disk.dir) if self.storage.disk.dir else self.data_dir / "data"

    @property
    def ffmpeg_binary(self) -> str:
        if self.ffmpeg.binary:
            return self.ffmpeg.binary
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()


MIN_JWT_SECRET_BYTES = 32


def auth_problem(auth: AuthSettings) -> str | None:
    """Why these settings cannot protect the API, naming the key and its variable; None when they can."""
    if not auth.enable:
        return None
    for key, value in (("username", auth.username), ("password", auth.password)):
        if not value:
            return (
                f"api.auth.{key} (CORE_API_AUTH_{key.upper()}) is empty but api.auth.enable is true: "
                "set a username and a password, or disable auth"
            )
    secret_bytes = len(auth.jwt.secret.encode())
    if 0 < secret_bytes < MIN_JWT_SECRET_BYTES:
        return (
            f"api.auth.jwt.secret (CORE_API_AUTH_JWT_SECRET) has {secret_bytes} bytes; it needs at least "
            f"{MIN_JWT_SECRET_BYTES} (or leave it empty for a random secret per start)"
        )
    return None


def host_port(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``:8080`` means every interface, as in datarhei Core)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address must be host:port, got {address!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def unsafe_bind(settings: Settings) -> str | None:
    """Why serving ``address`` is unsafe (a non-loopback address without auth, not opted out), or None."""
    host, _ = host_port(settings.address)
    auth = settings.api.auth
    if is_loopback_host(host) or auth.enable or auth.disable_localhost_check:
        return None
    return (
        f"refusing to serve {settings.address} without authentication. Enable it with "
        "CORE_API_AUTH_ENABLE=true CORE_API_AUTH_USERNAME=... CORE_API_AUTH_PASSWORD=... "
        "(or api.auth.enable in the config file), bind 127.0.0.1, or opt out explicitly with "
        "CORE_API_AUTH_DISABLE_LOCALHOST_CHECK=true"
    )


class ConfigError(Exception):
    """A configuration value is unusable; the message names the key or variable and the value.

    ``details`` has one line per invalid value in datarhei's API form, ``"key: problem (value ...)"``.
    """

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or [message]


Source = Literal["default", "file", "stored", "env"]


class LoadedSettings(BaseModel):
    """The effective settings and the layers they came from (``stored``: config.json written by the API)."""

    settings: Settings
    sources: dict[str, Source]
    config_file: str | None = None
    ignored_file_keys: list[str] = []
    file_layer: dict[str, Any] = {}
    stored_layer: dict[str, Any] = {}
    env_layer: dict[str, Any] = {}
    env_origin: dict[str, str] = {}  # dotted key → the variable that set it

    @property
    def overrides(self) -> list[str]:
        """The dotted keys a ``CORE_*`` variable fixes (datarhei's ``overrides``)."""
        return [key for key, source in self.sources.items() if source == "env"]


def leaf_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], FieldInfo]:
    """Every leaf field of the settings tree, keyed by its path."""
    leaves: dict[tuple[str, ...], FieldInfo] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        path = (*prefix, name)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves.update(leaf_paths(annotation, path))
        else:
            leaves[path] = field
    return leaves


def kept_keys() -> list[str]:
    """The dotted datarhei keys dragonfork keeps and echoes without acting on them."""
    return [".".join(path) for path, field in leaf_paths(Settings).items() if _is_kept(field)]


def env_names(path: tuple[str, ...], field: FieldInfo | None = None) -> list[str]:
    """``CORE_FFMPEG_LOG_MAX_LINES`` and datarhei's ``CORE_FFMPEG_LOG_MAXLINES`` for ffmpeg.log.max_lines.

    A field may name further datarhei variables (``RS_USERNAME``); they come last.
    """
    primary = ENV_PREFIX + "_".join(path).upper()
    compact = ENV_PREFIX + "_".join(part.replace("_", "") for part in path).upper()
    names = [primary] if compact == primary else [primary, compact]
    extra = field.json_schema_extra if field is not None else None
    aliases = extra.get("x-env") if isinstance(extra, dict) else None
    if isinstance(aliases, list):
        names.extend(str(name) for name in aliases)
    return names


def _env_value(raw: str, annotation: Any) -> Any:
    """Environment strings → JSON-ish values; lists are a JSON array or whitespace/comma separated."""
    if "list[dict" in str(annotation) or str(annotation).startswith("dict"):
        return json.loads(raw)  # datarhei's S3 storages, Auth0 tenants and routes: JSON only
    if "list" in str(annotation):
        stripped = raw.strip()
        if re.match(r'^\[\s*["\]]', stripped):  # a JSON array; "[0-9]+" alone is a regular expression
            return json.loads(stripped)
        return [item for item in re.split(r"[\s,]+", stripped) if item]
    return raw


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"config file {path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be an object")
    for metadata in DOCUMENT_KEYS:  # about the file, not settings
        data.pop(metadata, None)
    return data


def known_subset(
    data: Mapping[str, Any], model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> tuple[dict[str, Any], list[tuple[str, ...]]]:
    """Split a file's dict into what our model knows and the paths of the keys it does not."""
    known: dict[str, Any] = {}
    ignored: list[tuple[str, ...]] = []
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            ignored.append((*prefix, key))
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(value, Mapping):
            known[key], nested_ignored = known_subset(value, annotation, (*prefix, key))
            ignored.extend(nested_ignored)
        else:
            known[key] = value
    return known, ignored


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _has_path(tree: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    for part in path:
        if not isinstance(tree, Mapping) or part not in tree:
            return False
        tree = tree[part]
    return True


def merged_layers(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win; objects merge key by key, anything else (lists included) is replaced."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = merged_layers(merged[key], value)
            else:
                merged[key] = json.loads(json.dumps(value)) if isinstance(value, dict | list) else value
    return merged


def layer_difference(tree: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``tree`` whose value differs from ``base`` (nested objects compared key by key)."""
    difference: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            nested = layer_difference(value, base[key])
            if nested:
                difference[key] = nested
        elif key not in base or base[key] != value:
            difference[key] = value
    return difference


def _env_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """The settings ``CORE_*`` variables set, and which variable set each leaf."""
    layer: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for path, field in leaf_paths(Settings).items():
        for name in env_names(path, field):
            if name in environ:
                try:
                    _set_path(layer, path, _env_value(environ[name], field.annotation))
                except ValueError as exc:
                    raise ConfigError(f"{name}={environ[name]!r}: {exc}") from exc
                origin[path] = name
                break
    return layer, origin


def read_stored_layer(data_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """``config.json`` in the data directory (the keys set through the API) and its unknown keys."""
    path = data_dir / STORED_CONFIG_NAME
    if not path.exists():
        return {}, []
    known, ignored = known_subset(_read_file(path), Settings)
    return known, [".".join(path) for path in ignored]


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    stored_layer: Mapping[str, Any] | None = None,
) -> LoadedSettings:
    """Merge defaults < config file (argument or ``CORE_CONFIGFILE``) < stored layer < ``CORE_*`` variables.

    The stored layer is ``config.json`` in the data directory that the file and environment name, unless one
    is passed (the API's ``PUT /api/v3/config`` validates a new one this way). Raises ``ConfigError`` naming
    the offending key or environment variable and its value.
    """
    environ = os.environ if environ is None else environ
    file_name = str(config_file or environ.get(CONFIG_FILE_ENV) or "") or None
    file_layer: dict[str, Any] = {}
    ignored: list[str] = []
    if file_name:
        file_layer, ignored_paths = known_subset(_read_file(Path(file_name)), Settings)
        ignored = [".".join(path) for path in ignored_paths]
    env_layer, origin = _env_layer(environ)
    layers = LoadedSettings(
        settings=validated(merged_layers(file_layer, env_layer), origin, file_name),
        sources={},
        config_file=file_name,
        ignored_file_keys=ignored,
        file_layer=file_layer,
        env_layer=env_layer,
        env_origin={".".join(path): name for path, name in origin.items()},
    )
    if stored_layer is None:
        stored_layer, stored_ignored = read_stored_layer(layers.settings.data_dir)
        layers.ignored_file_keys += [key for key in stored_ignored if key not in ignored]
    return with_stored_layer(layers, stored_layer)


def with_stored_layer(layers: LoadedSettings, stored_layer: Mapping[str, Any]) -> LoadedSettings:
    """The same file and environment over another stored layer; ``ConfigError`` when it does not validate."""
    origin = {tuple(key.split(".")): name for key, name in layers.env_origin.items()}
    stored_name = str(layers.settings.data_dir / STORED_CONFIG_NAME)
    settings = validated(
        merged_layers(layers.file_layer, stored_layer, layers.env_layer),
        origin,
        layers.config_file,
        stored_layer,
        stored_name,
    )
    sources: dict[str, Source] = {}
    for path in leaf_paths(Settings):
        key = ".".join(path)
        if path in origin:
            sources[key] = "env"
        elif _has_path(stored_layer, path):
            sources[key] = "stored"
        elif _has_path(layers.file_layer, path):
            sources[key] = "file"
        else:
            sources[key] = "default"
    return layers.model_copy(
        update={"settings": settings, "sources": sources, "stored_layer": dict(stored_layer)}
    )


def validated(
    tree: dict[str, Any],
    origin: Mapping[tuple[str, ...], str] | None = None,
    file_name: str | None = None,
    stored_layer: Mapping[str, Any] | None = None,
    stored_name: str | None = None,
) -> Settings:
    """The settings of a merged tree; ``ConfigError`` naming every invalid key (or variable) and value."""
    origin = origin or {}
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        messages, details = [], []
        for error in exc.errors(include_url=False):
            path = tuple(str(part) for part in error["loc"])
            named = [
                name
                for leaf, name in origin.items()
                if leaf[: len(path)] == path or path[: len(leaf)] == leaf
            ]
            source = stored_name if stored_layer and _has_path(stored_layer, path) else file_name
            in_file = f" in {source}" if source else ""
            key = ".".join(path) or "config"
            where = ", ".join(named) or f"{key}{in_file}"
            problem, value = error["msg"].removeprefix("Value error, "), error.get("input")
            messages.append(f"{where}={value!r}: {problem}")
            details.append(f"{key}: {problem} (value {value!r})")
        raise ConfigError(messages[0], details) from exc


def settings_value(settings: Settings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


REDACTED = "********"
_SECRET_KEY = re.compile(r"(password|secret|credential|token|passphrase|secret_access_key)$")


def is_secret(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def redacted(key: str, value: Any) -> Any:
    """Secrets are shown as set/unset, never printed (also inside lists of objects, e.g. S3 storages)."""
    if isinstance(value, list):
        return [redacted(key, item) for item in value]
    if isinstance(value, dict):
        return {name: redacted(f"{key}.{name}", item) for name, item in value.items()}
    if value and is_secret(key):
        return REDACTED
    return value
