"""The files service: memfs and diskfs by name, the cleanup rules' runner, metrics and the served-file hook.

Routes call this service only. ``served`` is where every file sent by ``/memfs`` or diskfs's ``/`` becomes
visible to whoever listens (the HLS session collector): a ``ServedFile`` per GET, with the client address and
the bytes sent.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import structlog

from dragonfork import metrics
from dragonfork.config import StorageSettings
from dragonfork.files.cleanup import Cleaner
from dragonfork.files.diskfs import DiskFS
from dragonfork.files.filesystem import Filesystem
from dragonfork.files.memfs import MemFS

log = structlog.get_logger("dragonfork.files")

MIB = 1024 * 1024


@dataclass(frozen=True)
class MemfsWriteAuth:
    """``storage.memory.auth``: HTTP Basic credentials required for PUT/POST/DELETE on ``/memfs``."""

    enable: bool
    username: str
    password: str


@dataclass(frozen=True)
class ServedFile:
    filesystem: str  # "mem" or "disk"
    path: str  # "/cam1.m3u8"
    client: str  # the client's address, as the HTTP server saw it
    bytes_sent: int
    url: str = ""  # the request's URL path ("/memfs/cam1.m3u8")
    query: str = ""  # its query string (an HLS session id travels there)
    user_agent: str = ""
    referrer: str = ""  # the host of its Referer


PlaylistFilter = Callable[[ServedFile, bytes], bytes | None]


class FileService:
    """memfs and diskfs with the ``storage.*`` limits; ``configure`` takes new ones at a config reload."""

    def __init__(self, storage: StorageSettings, *, disk_dir: Path, http_base: str) -> None:
        self.mem = MemFS(0, False, on_purge=_count_purged)
        self.disk = DiskFS(disk_dir, 0)
        self.filesystems: dict[str, Filesystem] = {"disk": self.disk, "mem": self.mem}
        self.cleaner = Cleaner(self.filesystems)  # reads the dict: a moved diskfs is the one it cleans
        self.memfs_auth = MemfsWriteAuth(enable=False, username="", password="")
        self._random_password = secrets.token_urlsafe(18)  # storage.memory.auth.password "": one per start
        self._http_base = http_base
        self._listeners: list[Callable[[ServedFile], None]] = []
        self._playlist_filter: PlaylistFilter | None = None
        self.configure(storage, disk_dir=disk_dir)

    def configure(self, storage: StorageSettings, *, disk_dir: Path) -> None:
        """Take the ``storage.*`` settings: limits, purge and write auth apply to the next write; a new
        ``storage.disk.dir`` is served from the next request on (the files in the old one stay there)."""
        memory = storage.memory
        if disk_dir.resolve() != self.disk.root:  # first: a directory that cannot be created changes nothing
            self.disk = self.filesystems["disk"] = DiskFS(disk_dir, 0)
        self.disk.configure(storage.disk.max_size_mbytes * MIB)
        self.mem.configure(memory.max_size_mbytes * MIB, memory.purge)
        self.memfs_auth = MemfsWriteAuth(
            enable=memory.auth.enable,
            username=memory.auth.username,
            password=memory.auth.password or self._random_password,
        )
        for filesystem in self.filesystems.values():
            metrics.FILESYSTEM_USED.labels(filesystem.name).set_function(filesystem.used_bytes)
            metrics.FILESYSTEM_LIMIT.labels(filesystem.name).set(filesystem.limit_bytes)
            metrics.FILESYSTEM_FILES.labels(filesystem.name).set_function(_file_counter(filesystem))

    @property
    def memfs_base(self) -> str:
        """What ``{memfs}`` expands to: this server's own loopback URL of ``/memfs``, with the write
        credentials when ``storage.memory.auth`` is on (FFmpeg sends them with its PUT/DELETE)."""
        scheme, _, host = self._http_base.partition("://")
        if self.memfs_auth.enable:
            auth = self.memfs_auth
            host = f"{quote(auth.username, safe='')}:{quote(auth.password, safe='')}@{host}"
        return f"{scheme}://{host}{self.mem.mount}"

    @property
    def diskfs_base(self) -> str:
        return str(self.disk.root)

    def get(self, name: str) -> Filesystem | None:
        return self.filesystems.get(name)

    def subscribe(self, listener: Callable[[ServedFile], None]) -> None:
        """Call ``listener`` for every file served over HTTP (it must not block)."""
        self._listeners.append(listener)

    def filter_playlists(self, playlist_filter: PlaylistFilter) -> None:
        """Let ``playlist_filter`` see every HLS playlist before it is sent to a player: it returns the body
        to send instead (None: unchanged), or raises to refuse the request (the HLS session collector)."""
        self._playlist_filter = playlist_filter

    def playlist(self, request: ServedFile, body: bytes) -> bytes | None:
        return None if self._playlist_filter is None else self._playlist_filter(request, body)

    def served(self, event: ServedFile) -> None:
        metrics.FILES_SERVED_BYTES.labels(event.filesystem).inc(event.bytes_sent)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not break serving files
                log.exception("served-file listener failed", path=event.path)


def _count_purged(count: int) -> None:
    metrics.FILES_CLEANED.labels("mem", "full").inc(count)


def _file_counter(filesystem: Filesystem) -> Callable[[], float]:
    return lambda: len(filesystem.list())
