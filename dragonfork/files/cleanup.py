"""Cleanup rules (datarhei's ``output[].cleanup[]``): keep at most ``max_files`` files matching a pattern,
none older than ``max_file_age_seconds``, and remove them all when the process goes (``purge_on_delete``).

A rule names its filesystem in the pattern (``memfs:/{processid}_*.ts``) and can only touch that
filesystem. ``enforce_forever`` is a task in the process run's nursery: it checks the rules once a second
while the process runs and ends with the run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import structlog
import trio

from dragonfork import metrics
from dragonfork.files.filesystem import Filesystem

log = structlog.get_logger("dragonfork.files")

CHECK_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class CleanupPattern:
    filesystem: str  # "mem" or "disk"
    glob: str  # an absolute path glob, "/cam1_*.ts"
    max_files: int = 0
    max_file_age_seconds: int = 0
    purge_on_delete: bool = False


class Cleaner:
    def __init__(self, filesystems: Mapping[str, Filesystem]) -> None:
        self.filesystems = filesystems

    def enforce(self, patterns: Iterable[CleanupPattern], now: float | None = None) -> int:
        """Apply ``max_files`` (oldest go first) and ``max_file_age_seconds``; returns the files removed."""
        now = time.time() if now is None else now
        removed = 0
        for pattern in patterns:
            filesystem = self.filesystems[pattern.filesystem]
            files = sorted(filesystem.list(pattern.glob), key=lambda info: info.last_modified)
            excess = len(files) - pattern.max_files if pattern.max_files else 0
            expired = now - pattern.max_file_age_seconds if pattern.max_file_age_seconds else None
            doomed = [
                info
                for index, info in enumerate(files)
                if index < excess or (expired is not None and info.last_modified < expired)
            ]
            count = sum(filesystem.delete(info.name) for info in doomed)
            metrics.FILES_CLEANED.labels(filesystem.name, "rule").inc(count)
            removed += count
        return removed

    def purge(self, patterns: Iterable[CleanupPattern], owner: str) -> int:
        """Remove every file matching the ``purge_on_delete`` patterns (the process ``owner`` is gone)."""
        removed = 0
        for pattern in patterns:
            if not pattern.purge_on_delete:
                continue
            filesystem = self.filesystems[pattern.filesystem]
            count = sum(filesystem.delete(info.name) for info in filesystem.list(pattern.glob))
            metrics.FILES_CLEANED.labels(filesystem.name, "purge").inc(count)
            removed += count
        if removed:
            log.info("purged files", process=owner, files=removed)
        return removed

    async def enforce_forever(self, patterns: list[CleanupPattern], owner: str) -> None:
        """Enforce once a second; a file the rules cannot remove (permissions) is logged, never fatal."""
        while True:
            try:
                self.enforce(patterns)
            except OSError as exc:
                metrics.FILES_CLEANUP_FAILURES.labels(owner).inc()
                log.warning("cleanup rule failed", process=owner, error=str(exc))
            await trio.sleep(CHECK_INTERVAL_SECONDS)
