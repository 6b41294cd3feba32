"""FFmpeg sessions: one per running process that pulls from or pushes to a network address, as datarhei does.

datarhei counts a process's network traffic as a session of the ``ffmpeg`` collector when an input or output
address names a host that is not in ``sessions.ip_ignorelist``. Host names are not resolved here (only IP
literals and ``localhost`` are recognised), and FFmpeg's ``-progress`` reports only the bytes it wrote, so a
session's ``bytes_tx`` is the process's output size and ``bytes_rx`` stays 0.

``FfmpegSessions.sample`` runs every tick of the session service: it opens a session for a run when the run
is ``running`` and closes it when the run ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from dragonfork.sessions.collector import Client
from dragonfork.sessions.registry import SessionRegistry

if TYPE_CHECKING:
    from dragonfork.process.runner import ManagedProcess


def network_host(address: str) -> str | None:
    """The host of a network address (``rtmp://1.2.3.4/live``), ``localhost`` as 127.0.0.1; else None."""
    try:
        parts = urlsplit(address)
        host = parts.hostname
    except ValueError:
        return None
    if not parts.scheme or not host or parts.scheme == "file":
        return None
    return "127.0.0.1" if host == "localhost" else host


class FfmpegSessions:
    def __init__(self, registry: SessionRegistry, processes: Callable[[], Iterable[ManagedProcess]]) -> None:
        self.registry = registry
        self.collector = registry["ffmpeg"]
        self.processes = processes
        self._runs: dict[str, float] = {}  # process id → start time of the run its open session is about

    def sample(self) -> None:
        seen: set[str] = set()
        for process in self.processes():
            view = process.view()
            if view.exec_state != "running" or view.run_started_at is None:
                continue
            run = view.run_started_at
            if self._runs.get(process.id) not in (None, run):
                self.collector.close(process.id)  # a new run: the old one's session ended
                del self._runs[process.id]
            seen.add(process.id)
            if process.id not in self._runs:
                self._open(process, run)
        for process_id in set(self._runs) - seen:
            self.collector.close(process_id)
            del self._runs[process_id]

    def _open(self, process: ManagedProcess, run: float) -> None:
        inputs = self._collectable_hosts(io.address for io in process.resolved.input)
        outputs = self._collectable_hosts(io.address for io in process.resolved.output)
        if not (inputs or outputs):
            return

        def counter() -> tuple[int, int]:
            progress = process.view().progress
            return 0, progress.size_bytes if progress is not None and outputs else 0

        self.collector.register(
            process.id,
            reference=process.config.reference,
            location=process.id,
            client=Client(",".join(dict.fromkeys(inputs + outputs))),
            counter=counter,
        )
        self._runs[process.id] = run

    def _collectable_hosts(self, addresses: Iterable[str]) -> list[str]:
        hosts = (network_host(address) for address in addresses)
        return [host for host in hosts if host is not None and self.registry.collectable(host)]
