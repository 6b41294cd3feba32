"""The files service: memfs and diskfs by name, the cleanup rules' runner, metrics and the served-file hook.

Routes call this service only. ``served`` is where every file sent by ``/memfs`` or diskfs's ``/`` becomes
visible to whoever listens (the HLS session collector): a ``ServedFile`` per GET, with the client address and
the bytes sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import structlog

from dragonfork import metrics
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
    def __init__(
        self,
        *,
        disk_dir: Path,
        disk_max_mbytes: int,
        memory_max_mbytes: int,
        memory_purge: bool,
        memfs_auth: MemfsWriteAuth,
        http_base: str,
    ) -> None:
        self.mem = MemFS(
            memory_max_mbytes * MIB,
            memory_purge,
            on_purge=lambda count: metrics.FILES_CLEANED.labels("mem", "full").inc(count),
        )
        self.disk = DiskFS(disk_dir, disk_max_mbytes * MIB)
        self.filesystems: dict[str, Filesystem] = {"disk": self.disk, "mem": self.mem}
        self.cleaner = Cleaner(self.filesystems)
        self.memfs_auth = memfs_auth
        self._http_base = http_base
        self._listeners: list[Callable[[ServedFile], None]] = []
        self._playlist_filter: PlaylistFilter | None = None
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


def _file_counter(filesystem: Filesystem) -> Callable[[], float]:
    return lambda: len(filesystem.list())
