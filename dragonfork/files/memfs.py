"""The in-memory filesystem (``mem``, served at ``/memfs``) that FFmpeg writes HLS into with HTTP PUT.

Bounded by ``storage.memory.max_size_mbytes``: an upload reserves its bytes chunk by chunk as they arrive, so
uploads in flight count too and memory never exceeds the bound. When a write does not fit, ``purge`` drops
the oldest files (by last write) until it does; without it the write is refused with ``StorageFull``. A file
becomes visible, or replaces its old content, only once its upload is complete.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from dragonfork.files.filesystem import (
    FileInfo,
    FileNotFound,
    Filesystem,
    StorageFull,
    clean_path,
    compile_glob,
)


@dataclass(frozen=True)
class _MemFile:
    data: bytes
    last_modified: float


class MemFS(Filesystem):
    name = "mem"
    type = "mem"
    mount = "/memfs"

    def __init__(self, limit_bytes: int, purge: bool, on_purge: Callable[[int], None] | None = None) -> None:
        self._limit = limit_bytes
        self.purge = purge
        self._on_purge = on_purge
        self._files: dict[str, _MemFile] = {}  # in write order: the first entry is the oldest
        self._stored = 0
        self._in_flight = 0
        self.exhausted = False  # a write was refused for lack of space and nothing has been freed since

    @property
    def limit_bytes(self) -> int:
        return self._limit

    def configure(self, limit_bytes: int, purge: bool) -> None:
        """New ``storage.memory`` limits, for the next write (stored files stay, even over a lower limit)."""
        self._limit, self.purge = limit_bytes, purge
        self.exhausted = False  # the next write finds out again

    def used_bytes(self) -> int:
        return self._stored + self._in_flight

    def list(self, glob: str = "") -> list[FileInfo]:
        matcher = compile_glob(glob) if glob else None
        return [
            FileInfo(path, len(entry.data), entry.last_modified)
            for path, entry in self._files.items()
            if matcher is None or matcher.match(path)
        ]

    def stat(self, path: str) -> FileInfo | None:
        path = clean_path(path)
        entry = self._files.get(path)
        return FileInfo(path, len(entry.data), entry.last_modified) if entry else None

    def content(self, path: str) -> bytes:
        """The whole file (the HTTP layer slices ranges from it without a copy)."""
        entry = self._files.get(clean_path(path))
        if entry is None:
            raise FileNotFound(self.name, path)
        return entry.data

    async def read(self, path: str, start: int, length: int) -> AsyncGenerator[bytes, None]:
        data = self.content(path)
        yield data if start == 0 and length >= len(data) else data[start : start + length]

    async def write(self, path: str, chunks: AsyncIterator[bytes]) -> bool:
        path = clean_path(path)
        buffer = bytearray()
        try:
            async for chunk in chunks:
                self._reserve(path, len(chunk), upload_size=len(buffer) + len(chunk))
                self._in_flight += len(chunk)
                buffer += chunk
        finally:
            self._in_flight -= len(buffer)
        return self._commit(path, bytes(buffer))

    def _commit(self, path: str, data: bytes) -> bool:
        old = self._files.pop(path, None)
        if old is not None:
            self._stored -= len(old.data)
        self._files[path] = _MemFile(data, time.time())
        self._stored += len(data)
        return old is None

    def _reserve(self, path: str, arriving: int, *, upload_size: int) -> None:
        """Make room for ``arriving`` more bytes of an upload of ``path`` (``upload_size`` with them), or
        raise ``StorageFull``. The old content of ``path`` does not count: it goes when the upload ends."""
        if not self._limit:
            return
        if upload_size > self._limit:
            raise StorageFull(f"file is larger than storage.memory.max_size_mbytes ({self._limit} bytes)")
        try:
            self._make_room(path, arriving)
        except StorageFull:
            self.exhausted = True
            raise

    def _make_room(self, path: str, arriving: int) -> None:
        """Purge the oldest files (never ``path`` itself) until ``arriving`` bytes fit, when allowed."""
        replaced = len(self._files[path].data) if path in self._files else 0
        needed = self._stored - replaced + self._in_flight + arriving - self._limit
        if needed <= 0:
            return
        if not self.purge:
            raise StorageFull(
                f"memfs is full: {self.used_bytes()} of {self._limit} bytes used "
                "(storage.memory.max_size_mbytes; storage.memory.purge is off)"
            )
        freed = 0
        purged = 0
        for victim in list(self._files):
            if freed >= needed:
                break
            if victim == path:
                continue
            freed += len(self._files.pop(victim).data)
            purged += 1
        self._stored -= freed
        if purged and self._on_purge is not None:
            self._on_purge(purged)
        if freed < needed:
            raise StorageFull(f"memfs is full: uploads in flight hold {self._in_flight} bytes")

    def delete(self, path: str) -> bool:
        entry = self._files.pop(clean_path(path), None)
        if entry is None:
            return False
        self._stored -= len(entry.data)
        self.exhausted = False
        return True
