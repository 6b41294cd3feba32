"""``db.json``: the processes (config, order, metadata) and the global metadata.

Every write goes to a temporary file in the same directory, is fsynced, renamed over ``db.json`` and the
directory fsynced, so a crash at any instant leaves either the old or the new database, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

DB_VERSION = 1


class DatabaseError(Exception):
    """``db.json`` exists but cannot be read; the server refuses to start rather than overwrite it."""


class Store:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "db.json"

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[str, Any]:
        """The stored database, or an empty one when there is none yet."""
        for leftover in self.directory.glob(".db.*.json.tmp"):  # a write a crash interrupted
            leftover.unlink(missing_ok=True)
        if not self.path.exists():
            return {"version": DB_VERSION, "processes": [], "metadata": {}}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise DatabaseError(f"{self.path}: cannot read the database: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("processes"), list):
            raise DatabaseError(f"{self.path}: not a dragonfork database (no 'processes' list)")
        data.setdefault("metadata", {})
        return data

    def save(self, data: dict[str, Any]) -> None:
        payload = json.dumps({**data, "version": DB_VERSION}, indent=2, sort_keys=True).encode()
        write_atomically(self.path, payload)


def write_atomically(path: Path, payload: bytes) -> None:
    """Replace ``path`` with ``payload`` so that a crash leaves the old or the new file, never a torn one."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{path.suffix}.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(payload)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
