"""``db.json``: the processes (config, order, metadata) and the global metadata.

Every write goes to a temporary file in the same directory, is fsynced, renamed over ``db.json`` and the
directory fsynced, so a crash at any instant leaves either the old or the new database, never a torn one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dragonfork.atomic_file import write_atomically

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
