"""The disk filesystem (``disk``): ``storage.disk.dir``, created at start, served at ``/``.

Every path goes through ``clean_path`` and is then resolved with symlinks followed; a result outside the root
is refused, so neither ``..`` nor a symlink planted in the directory reads or writes elsewhere. Uploads
through the API are bounded by ``storage.disk.max_size_mbytes`` (FFmpeg writes its own files directly; cleanup
rules bound those). File I/O runs in worker threads, never in the event loop.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import trio

from dragonfork.files.filesystem import (
    FileInfo,
    FileNotFound,
    Filesystem,
    InvalidPath,
    StorageFull,
    clean_path,
    compile_glob,
)

READ_CHUNK_BYTES = 256 * 1024
TEMP_PREFIX = ".upload-"


class DiskFS(Filesystem):
    name = "disk"
    type = "disk"
    mount = "/"

    def __init__(self, root: Path, limit_bytes: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self._limit = limit_bytes

    @property
    def limit_bytes(self) -> int:
        return self._limit

    def configure(self, limit_bytes: int) -> None:
        """A new ``storage.disk.max_size_mbytes``, for the next upload."""
        self._limit = limit_bytes

    def local_path(self, path: str) -> Path:
        """The file ``path`` names, symlinks resolved, or ``InvalidPath`` when that is outside the root."""
        resolved = Path(os.path.realpath(self.root / clean_path(path).lstrip("/")))
        if resolved != self.root and self.root not in resolved.parents:
            raise InvalidPath("path leads outside the filesystem")
        return resolved

    def _walk(self) -> list[tuple[str, os.stat_result]]:
        """Every regular file below the root (symlinks only when they stay inside), as (path, stat)."""
        found = []
        for directory, _dirs, names in os.walk(self.root):
            for name in names:
                if name.startswith(TEMP_PREFIX):
                    continue
                full = os.path.join(directory, name)
                try:
                    if os.path.islink(full):
                        self.local_path(os.path.relpath(full, self.root))
                    info = os.stat(full)
                except (OSError, InvalidPath):
                    continue
                found.append(("/" + os.path.relpath(full, self.root), info))
        return found

    def used_bytes(self) -> int:
        return sum(info.st_size for _, info in self._walk())

    def list(self, glob: str = "") -> list[FileInfo]:
        matcher = compile_glob(glob) if glob else None
        return [
            FileInfo(path, info.st_size, info.st_mtime)
            for path, info in self._walk()
            if matcher is None or matcher.match(path)
        ]

    def stat(self, path: str) -> FileInfo | None:
        local = self.local_path(path)
        try:
            info = local.stat()
        except OSError:
            return None
        if not local.is_file():
            return None
        return FileInfo(clean_path(path), info.st_size, info.st_mtime)

    async def read(self, path: str, start: int, length: int) -> AsyncGenerator[bytes, None]:
        local = self.local_path(path)
        try:
            handle = await trio.to_thread.run_sync(local.open, "rb")
        except OSError:
            raise FileNotFound(self.name, path) from None
        try:
            await trio.to_thread.run_sync(handle.seek, start)
            remaining = length
            while remaining > 0:
                chunk = await trio.to_thread.run_sync(handle.read, min(READ_CHUNK_BYTES, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk
        finally:
            handle.close()

    async def write(self, path: str, chunks: AsyncIterator[bytes]) -> bool:
        local = self.local_path(path)
        if local == self.root or local.is_dir():
            raise InvalidPath("path names a directory")
        budget = None
        if self._limit:
            replaced = local.stat().st_size if local.is_file() else 0
            budget = self._limit - await trio.to_thread.run_sync(self.used_bytes) + replaced
        await trio.to_thread.run_sync(lambda: local.parent.mkdir(parents=True, exist_ok=True))
        temp = local.with_name(f"{TEMP_PREFIX}{secrets.token_hex(6)}-{local.name}")
        handle = await trio.to_thread.run_sync(temp.open, "wb")
        try:
            written = 0
            async for chunk in chunks:
                written += len(chunk)
                if budget is not None and written > budget:
                    raise StorageFull(
                        f"diskfs is full: storage.disk.max_size_mbytes ({self._limit} bytes) reached"
                    )
                await trio.to_thread.run_sync(handle.write, chunk)
            handle.close()
            created = not local.exists()
            await trio.to_thread.run_sync(os.replace, temp, local)
            return created
        finally:
            handle.close()
            temp.unlink(missing_ok=True)

    def delete(self, path: str) -> bool:
        local = self.local_path(path)
        if not local.is_file():
            return False
        try:
            local.unlink()
        except FileNotFoundError:  # FFmpeg (delete_segments) was quicker
            return False
        return True
