"""One settings model: built-in defaults < config file < ``CORE_*`` environment variables.

The field names follow datarhei Core's config JSON, so a datarhei config file loads here unchanged where the
feature exists (keys for features dragonfork does not have are reported and ignored). Every leaf has one
environment variable: ``CORE_`` + its path in upper case joined by ``_`` (``api.auth.jwt.secret`` →
``CORE_API_AUTH_JWT_SECRET``); datarhei's spelling without inner underscores (``CORE_FFMPEG_LOG_MAXLINES``) is
accepted too. ``load_settings`` remembers where each value came from, for ``dragonfork config``.
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

DEFAULT_ADDRESS = "127.0.0.1:8080"
ENV_PREFIX = "CORE_"
CONFIG_FILE_ENV = "CORE_CONFIGFILE"


class _Section(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True)


class LogSettings(_Section):
    level: Literal["debug", "info", "warn", "warning", "error", "silent"] = "info"
    max_lines: int = Field(1000, ge=0, description="Server log lines kept in memory for /api/v3/log")


class DbSettings(_Section):
    dir: str = Field("", description="Directory of db.json; empty means the user's data directory")


class DiskStorageSettings(_Section):
    dir: str = Field("", description="Directory {diskfs} expands to, served at /; empty means <db.dir>/data")
    max_size_mbytes: int = Field(0, ge=0, description="Largest total size uploads may fill; 0 is unlimited")


class MemoryAuthSettings(_Section):
    enable: bool = Field(True, description="Require HTTP Basic auth for PUT/POST/DELETE on /memfs")
    username: str = "admin"
    password: str = Field("", description="Empty means a random password per start")


class MemoryStorageSettings(_Section):
    max_size_mbytes: int = Field(0, ge=0, description="Largest total size of /memfs; 0 is unlimited")
    purge: bool = Field(False, description="When /memfs is full, drop the oldest files instead of refusing")
    auth: MemoryAuthSettings = MemoryAuthSettings()


class StorageSettings(_Section):
    disk: DiskStorageSettings = DiskStorageSettings()
    memory: MemoryStorageSettings = MemoryStorageSettings()


class JwtSettings(_Section):
    secret: str = Field("", description="HS256 secret; empty means a random secret per start")


class AuthSettings(_Section):
    enable: bool = False
    username: str = ""
    password: str = ""
    jwt: JwtSettings = JwtSettings()
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


class ApiSettings(_Section):
    read_only: bool = False
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


class MetricsSettings(_Section):
    enable: bool = True
    enable_prometheus: bool = True
    # datarhei's defaults are 300 s / 2 s; 600 s fills the admin UI's 10-minute charts.
    range_sec: int = Field(600, ge=1, le=86400, description="Seconds of metric history for /api/v3/metrics")
    interval_sec: int = Field(
        2, ge=1, le=3600, description="Seconds between two samples of the history and of the event-loop lag"
    )
    protect: bool = Field(
        False,
        description="With api.auth.enable, /metrics needs a Bearer access token or Basic username:password",
    )


class WebRTCSettings(_Section):
    enable: bool = True
    port_first: int = Field(20000, ge=1024, le=65534, description="First UDP port for FFmpeg→source RTP legs")
    port_last: int = Field(20999, ge=1025, le=65535)
    max_peers_per_stream: int = Field(100, ge=1)
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
    max_bitrate_mbit: float = Field(
        0, ge=0, description="New HLS/WebRTC viewers get 503 while the outgoing bitrate is above; 0: no limit"
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


class TlsSettings(_Section):
    """datarhei Core's ``tls`` certificate (used by RTMPS; the HTTP API itself is served without TLS)."""

    cert_file: str = Field("", description="PEM certificate (chain) file")
    key_file: str = Field("", description="PEM private key file")


class Settings(_Section):
    """The effective configuration of one server."""

    id: str = ""
    name: str = "dragonfork"
    address: str = DEFAULT_ADDRESS
    demo: bool = Field(True, description="Create the demo process when the database is new")
    log: LogSettings = LogSettings()
    db: DbSettings = DbSettings()
    storage: StorageSettings = StorageSettings()
    api: ApiSettings = ApiSettings()
    ffmpeg: FfmpegSettings = FfmpegSettings()
    metrics: MetricsSettings = MetricsSettings()
    webrtc: WebRTCSettings = WebRTCSettings()
    sessions: SessionsSettings = SessionsSettings()
    rtmp: RtmpSettings = RtmpSettings()
    tls: TlsSettings = TlsSettings()

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


class ConfigError(Exception):
    """A configuration value is unusable; the message names the key or variable and the value."""


Source = Literal["default", "file", "env"]


class LoadedSettings(BaseModel):
    settings: Settings
    sources: dict[str, Source]
    config_file: str | None = None
    ignored_file_keys: list[str] = []


def leaf_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf field of the settings tree, keyed by its path, with its annotation."""
    leaves: dict[tuple[str, ...], Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        path = (*prefix, name)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves.update(leaf_paths(annotation, path))
        else:
            leaves[path] = annotation
    return leaves


# datarhei names that follow neither spelling rule of ``env_names``.
_ENV_ALIASES: dict[tuple[str, ...], str] = {
    ("sessions", "max_bitrate_mbit"): "CORE_SESSIONS_MAXBITRATE_MBIT",
}


def env_names(path: tuple[str, ...]) -> list[str]:
    """``CORE_FFMPEG_LOG_MAX_LINES`` and datarhei's ``CORE_FFMPEG_LOG_MAXLINES`` for ffmpeg.log.max_lines."""
    primary = ENV_PREFIX + "_".join(path).upper()
    compact = ENV_PREFIX + "_".join(part.replace("_", "") for part in path).upper()
    names = [primary] if compact == primary else [primary, compact]
    if path in _ENV_ALIASES:
        names.append(_ENV_ALIASES[path])
    return names


def _env_value(raw: str, annotation: Any) -> Any:
    """Environment strings → JSON-ish values; lists are a JSON array or whitespace/comma separated."""
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
    return data


def _known_subset(
    data: Mapping[str, Any], model: type[BaseModel], prefix: str = ""
) -> tuple[dict[str, Any], list[str]]:
    """Split a file's dict into what our model knows and the dotted keys it does not."""
    known: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            ignored.append(prefix + key)
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(value, Mapping):
            known[key], nested_ignored = _known_subset(value, annotation, f"{prefix}{key}.")
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


def load_settings(
    config_file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> LoadedSettings:
    """Merge defaults, the config file (argument or ``CORE_CONFIGFILE``) and ``CORE_*`` variables.

    Raises ``ConfigError`` naming the offending key or environment variable and its value.
    """
    environ = os.environ if environ is None else environ
    file_name = config_file or environ.get(CONFIG_FILE_ENV) or None
    merged: dict[str, Any] = {}
    ignored: list[str] = []
    if file_name:
        merged, ignored = _known_subset(_read_file(Path(file_name)), Settings)
    from_file = json.loads(json.dumps(merged))

    origin: dict[tuple[str, ...], str] = {}
    leaves = leaf_paths(Settings)
    for path, annotation in leaves.items():
        for name in env_names(path):
            if name in environ:
                try:
                    _set_path(merged, path, _env_value(environ[name], annotation))
                except ValueError as exc:
                    raise ConfigError(f"{name}={environ[name]!r}: {exc}") from exc
                origin[path] = name
                break

    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        path = tuple(str(part) for part in error["loc"])
        named = [
            name for leaf, name in origin.items() if leaf[: len(path)] == path or path[: len(leaf)] == leaf
        ]
        in_file = f" in {file_name}" if file_name else ""
        where = ", ".join(named) or f"{'.'.join(path) or 'config'}{in_file}"
        value = error.get("input")
        raise ConfigError(f"{where}={value!r}: {error['msg']}") from exc

    sources: dict[str, Source] = {}
    for path in leaves:
        key = ".".join(path)
        if path in origin:
            sources[key] = "env"
        elif _has_path(from_file, path):
            sources[key] = "file"
        else:
            sources[key] = "default"
    return LoadedSettings(
        settings=settings,
        sources=sources,
        config_file=str(file_name) if file_name else None,
        ignored_file_keys=ignored,
    )


def settings_value(settings: Settings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def redacted(key: str, value: Any) -> Any:
    """Secrets are shown as set/unset, never printed."""
    if value and re.search(r"(password|secret|credential|token)$", key):
        return "********"
    return value
