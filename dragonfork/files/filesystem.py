"""What memfs and diskfs share: file paths, file info, errors, content types and the glob syntax.

Paths are always absolute inside their filesystem (``/x.m3u8``). ``clean_path`` is the one gate every path
from outside passes: it refuses, rather than repairs, anything that could point elsewhere (``..`` segments,
backslashes, NUL and other control characters), so a request never reads a file it did not name.
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from functools import lru_cache


class InvalidPath(ValueError):
    """A path that could escape its filesystem or cannot be a file name."""


class FileNotFound(LookupError):
    def __init__(self, filesystem: str, path: str) -> None:
        super().__init__(f"file {path!r} not found in filesystem {filesystem!r}")
        self.filesystem = filesystem
        self.path = path


class StorageFull(Exception):
    """A write that does not fit (``max_size_mbytes`` reached and purging is off or cannot free enough)."""


@dataclass(frozen=True)
class FileInfo:
    name: str  # absolute path inside the filesystem, "/x.ts"
    size_bytes: int
    last_modified: float  # seconds since the epoch

    def as_json(self) -> dict[str, object]:
        """datarhei's ``api.FileInfo``."""
        return {"name": self.name, "size_bytes": self.size_bytes, "last_modified": int(self.last_modified)}


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PATH_LENGTH = 1024


def clean_path(raw: str) -> str:
    """``raw`` as an absolute path inside a filesystem (``a//b/`` → ``/a/b``), or ``InvalidPath``."""
    if len(raw) > MAX_PATH_LENGTH:
        raise InvalidPath(f"path is longer than {MAX_PATH_LENGTH} characters")
    if _CONTROL.search(raw):
        raise InvalidPath("path must not contain control characters (U+0000-U+001F)")
    if "\\" in raw:
        raise InvalidPath("path must not contain a backslash")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InvalidPath("path must not contain '..'")
    return "/" + "/".join(parts)


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """datarhei's glob with ``/`` as separator: ``*`` and ``?`` stay inside one segment, ``**`` crosses them,
    ``[abc]`` and ``{a,b}`` as usual. Patterns match whole absolute paths (``/x_*.ts``)."""
    out: list[str] = []
    index = 0
    depth = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "*":
            if pattern.startswith("**", index):
                out.append(".*")
                index += 2
                continue
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", index + 1)
            if end < 0:
                raise ValueError(f"glob {pattern!r}: '[' without ']'")
            body = pattern[index + 1 : end]
            negate = body.startswith("!")
            body = re.escape(body[1:] if negate else body).replace("\\-", "-")
            out.append(f"[{'^' if negate else ''}{body}]")
            index = end
        elif char == "{":
            depth += 1
            out.append("(?:")
        elif char == "}" and depth:
            depth -= 1
            out.append(")")
        elif char == "," and depth:
            out.append("|")
        else:
            out.append(re.escape(char))
        index += 1
    if depth:
        raise ValueError(f"glob {pattern!r}: '{{' without '}}'")
    return re.compile("".join(out) + r"\Z")


_CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".mp3": "audio/mpeg",
    ".webm": "video/webm",
    ".vtt": "text/vtt",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
}
PLAYLIST_SUFFIXES = frozenset({".m3u8", ".mpd"})
SEGMENT_SUFFIXES = frozenset({".ts", ".m4s", ".aac", ".vtt"})
SEGMENT_MAX_AGE_SECONDS = 30


def _suffix(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def content_type(path: str) -> str:
    return _CONTENT_TYPES.get(_suffix(path), "application/octet-stream")


def cache_control(path: str) -> str:
    """Live playlists (and files rewritten in place, like a snapshot JPEG) must always be revalidated; media
    segments never change under their name while they are listed, so caches may keep them for a while."""
    if _suffix(path) in SEGMENT_SUFFIXES:
        return f"public, max-age={SEGMENT_MAX_AGE_SECONDS}"
    return "no-cache"


class Filesystem(abc.ABC):
    """One named filesystem (``mem`` or ``disk``) as the API, the HTTP server and the cleanup rules see it."""

    name: str
    type: str
    mount: str  # where the HTTP server serves it ("/memfs", "/")

    @property
    @abc.abstractmethod
    def limit_bytes(self) -> int:
        """``max_size_mbytes`` in bytes; 0 is unlimited."""

    @abc.abstractmethod
    def used_bytes(self) -> int: ...

    @abc.abstractmethod
    def list(self, glob: str = "") -> list[FileInfo]:
        """Every file (no directories), matching ``glob`` when it is given."""

    @abc.abstractmethod
    def stat(self, path: str) -> FileInfo | None: ...

    @abc.abstractmethod
    def read(self, path: str, start: int, length: int) -> AsyncGenerator[bytes, None]:
        """``length`` bytes of the file from ``start``, in chunks; ``FileNotFound`` when it is gone."""

    @abc.abstractmethod
    async def write(self, path: str, chunks: AsyncIterator[bytes]) -> bool:
        """Store the file from ``chunks`` (readers see the old content until it is complete); True when it
        is new. ``StorageFull`` when it does not fit."""

    @abc.abstractmethod
    def delete(self, path: str) -> bool:
        """Remove a file; False when there was none."""
