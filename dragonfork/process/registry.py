"""The registry owns every process, runs their supervisors in its nursery and persists ``db.json``.

Mutations (create, replace, delete, orders, metadata) take one lock and write the database before they
return, so concurrent API clients can never lose or duplicate an entry. Stopping FFmpeg happens outside that
lock, so a slow child never blocks the rest of the API; what serializes the operations on one process is its
own ``operation`` lock: a command, replace or delete takes it, then checks the process is still the one
registered under its id (a DELETE that got there first wins: the command answers 404, and no FFmpeg is
started for a process that is no longer in the registry). ``replace`` reserves the new id before it halts
the old process, so a create racing it cannot take the id in between.
"""

from __future__ import annotations

import fnmatch
import re
import time
from pathlib import Path
from typing import Any

import structlog
import trio
from pydantic import ValidationError

from dragonfork.process.access import AccessPolicy
from dragonfork.process.placeholders import (
    NO_INGEST,
    IngestAddresses,
    check_ingest_available,
    expand_config,
)
from dragonfork.process.runner import ManagedProcess, ProcessRuntime, ProcessSlots, StartRefused
from dragonfork.process.schema import Command, ProcessConfig
from dragonfork.process.store import Store

log = structlog.get_logger("dragonfork.registry")

DEMO_PROCESS = {
    "id": "demo",
    "reference": "dragonfork demo: test pattern and tone",
    "input": [
        {"id": "video", "address": "testsrc2=size=640x360:rate=25", "options": ["-re", "-f", "lavfi"]},
        {"id": "audio", "address": "sine=frequency=440:sample_rate=48000", "options": ["-re", "-f", "lavfi"]},
    ],
    "output": [],
    "reconnect": True,
    "reconnect_delay_seconds": 5,
    "autostart": True,
    "stale_timeout_seconds": 30,
    "webrtc": {"enabled": True, "video_map": "0:v:0", "audio_map": "1:a:0"},
}


class DiskDirUnavailable(Exception):
    """The directory ``{diskfs}`` expands to cannot be created; nothing is started."""


def _prepare_disk_dir(diskfs: str) -> None:
    try:
        Path(diskfs).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiskDirUnavailable(
            f"cannot create storage.disk.dir {diskfs} (CORE_STORAGE_DISK_DIR): {exc.strerror}"
        ) from None


class ProcessNotFound(LookupError):
    def __init__(self, process_id: str) -> None:
        super().__init__(f"process {process_id!r} not found")


class ProcessExists(Exception):
    def __init__(self, process_id: str) -> None:
        super().__init__(f"a process with id {process_id!r} already exists")


class Registry:
    def __init__(
        self,
        store: Store,
        runtime: ProcessRuntime,
        access: AccessPolicy,
        *,
        diskfs: str,
        memfs: str,
        seed_demo: bool,
        ingest: IngestAddresses = NO_INGEST,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.access = access
        self.diskfs = diskfs
        self.memfs = memfs
        self.ingest = ingest
        self.seed_demo = seed_demo
        self.slots = ProcessSlots(runtime.max_processes)
        self.processes: dict[str, ManagedProcess] = {}
        self.metadata: dict[str, Any] = {}
        self._lock = trio.Lock()
        self._reserved_ids: set[str] = set()  # new ids of replaces in progress
        self._nursery: trio.Nursery | None = None

    # -- lifetime ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Registry] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the supervisors' nursery; restore the database (or seed the demo) before reporting started."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.runtime.ledger is not None:
                killed = await trio.to_thread.run_sync(self.runtime.ledger.reap)
                if killed:
                    log.warning("reaped FFmpeg children of a previous server", pids=killed)
            await self._restore()
            task_status.started(self)
            await trio.sleep_forever()

    async def shutdown(self) -> None:
        """Stop every FFmpeg child in parallel (orders are kept, so a restart resumes them) and persist."""
        async with trio.open_nursery() as nursery:
            for process in list(self.processes.values()):
                nursery.start_soon(process.halt)
        async with self._lock:
            await self._persist()
        log.info("registry stopped", processes=len(self.processes))

    async def _restore(self) -> None:
        first_run = not self.store.exists()
        data = await trio.to_thread.run_sync(self.store.load)
        await trio.to_thread.run_sync(
            _prepare_disk_dir, self.diskfs
        )  # before any process can write to {diskfs}
        self.metadata = data.get("metadata", {})
        entries = data["processes"]
        if first_run and self.seed_demo:
            entries = [{"config": DEMO_PROCESS, "order": "start"}]
        for entry in entries:
            try:
                config = self.validate(entry["config"])
            except (ValidationError, ValueError, KeyError) as exc:
                log.error("stored process is invalid, kept out of the registry", entry=entry, error=str(exc))
                continue
            process = self._new_process(
                config, metadata=entry.get("metadata"), created_at=entry.get("created_at")
            )
            self.processes[config.id] = process
            if entry.get("order") == "start":
                await process.start(self._supervisor_nursery)
        await self._persist()
        log.info("registry restored", processes=len(self.processes), first_run=first_run)

    @property
    def _supervisor_nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "Registry.run has not started"
        return self._nursery

    # -- validation -------------------------------------------------------------------------------

    def validate(self, raw: dict[str, Any]) -> ProcessConfig:
        """Parse, expand placeholders and check addresses; raises ValidationError or AddressDenied."""
        config = ProcessConfig.model_validate(raw)
        resolved = self.resolve(config)
        check_ingest_available(resolved)
        self.access.check(resolved)
        return config

    def resolve(self, config: ProcessConfig) -> ProcessConfig:
        return expand_config(config, diskfs=self.diskfs, memfs=self.memfs, ingest=self.ingest)

    async def apply_settings(
        self,
        runtime: ProcessRuntime,
        access: AccessPolicy,
        *,
        diskfs: str,
        memfs: str,
        ingest: IngestAddresses,
    ) -> list[str]:
        """Take new settings; a running process restarts only when its FFmpeg command would change.

        That is a new FFmpeg binary, a placeholder that expands to something else in its config (``{diskfs}``,
        ``{memfs}`` with new write credentials, ``{rtmp,name=...}`` with a new RTMP address or token), or
        WebRTC switched on/off for a process that has it. Log sizes, timeouts, port ranges and cache bounds
        apply from each process's next run; the new access rules to the next create or replace; a lower
        ``ffmpeg.max_processes`` to the next start. Returns the ids of the processes restarted.
        """
        if diskfs != self.diskfs:
            await trio.to_thread.run_sync(_prepare_disk_dir, diskfs)  # before any process writes there
        previous, self.runtime, self.access = self.runtime, runtime, access
        self.diskfs, self.memfs, self.ingest = diskfs, memfs, ingest
        self.slots.limit = runtime.max_processes
        restarted = []
        for process in list(self.processes.values()):
            resolved = self.resolve(process.config)
            command_changes = (
                resolved != process.resolved
                or runtime.ffmpeg_binary != previous.ffmpeg_binary
                or (process.config.webrtc.enabled and runtime.webrtc_enabled != previous.webrtc_enabled)
            )
            process.runtime, process.resolved = runtime, resolved
            if command_changes and process.order == "start":
                restarted.append(process)
        async with trio.open_nursery() as nursery:  # in parallel: each stop may take its grace period
            for process in restarted:
                nursery.start_soon(self._restart, process)
        if restarted:
            log.info("processes restarted for new settings", processes=[process.id for process in restarted])
        return [process.id for process in restarted]

    async def _restart(self, process: ManagedProcess) -> None:
        async with process.operation:  # after a command, replace or delete that came first
            if self._is_registered(process) and process.order == "start":
                await process.halt()
                await process.start(self._supervisor_nursery)

    def _new_process(
        self,
        config: ProcessConfig,
        *,
        metadata: dict[str, Any] | None = None,
        created_at: float | None = None,
    ) -> ManagedProcess:
        return ManagedProcess(
            config, self.resolve(config), self.runtime, self.slots, metadata=metadata, created_at=created_at
        )

    # -- queries ----------------------------------------------------------------------------------

    def get(self, process_id: str) -> ManagedProcess:
        try:
            return self.processes[process_id]
        except KeyError:
            raise ProcessNotFound(process_id) from None

    def find(
        self,
        *,
        ids: list[str] | None = None,
        reference: str | None = None,
        idpattern: str | None = None,
        refpattern: str | None = None,
    ) -> list[ManagedProcess]:
        """datarhei's filters: exact ids/reference, and glob patterns on id and reference."""
        found = []
        for process in self.processes.values():
            if ids and process.id not in ids:
                continue
            if reference is not None and process.config.reference != reference:
                continue
            if idpattern and not fnmatch.fnmatchcase(process.id, idpattern):
                continue
            if refpattern and not fnmatch.fnmatchcase(process.config.reference, refpattern):
                continue
            found.append(process)
        return sorted(found, key=lambda process: process.created_at)

    # -- mutations --------------------------------------------------------------------------------

    async def create(self, config: ProcessConfig) -> ManagedProcess:
        async with self._lock:
            if config.id in self.processes or config.id in self._reserved_ids:
                raise ProcessExists(config.id)
            process = self._new_process(config)
            self.processes[config.id] = process
            if config.autostart:
                process.order = "start"
            await self._persist()
        if config.autostart:
            async with process.operation:
                if self._is_registered(process):
                    await process.start(self._supervisor_nursery)
        log.info("process created", process=config.id)
        return process

    async def replace(self, process_id: str, config: ProcessConfig) -> ManagedProcess:
        """PUT: swap the config (the id may change); a process that was ordered to start restarts with it."""
        process = self.get(process_id)
        async with process.operation:
            async with self._lock:
                if not self._is_registered(process):
                    raise ProcessNotFound(process_id)
                new_id = config.id
                if new_id != process_id and (new_id in self.processes or new_id in self._reserved_ids):
                    raise ProcessExists(new_id)
                self._reserved_ids.add(new_id)
            try:
                was_started = process.order == "start"
                await process.halt()
                async with self._lock:
                    process.forget_metrics()
                    del self.processes[process_id]
                    replacement = self._new_process(
                        config, metadata=process.metadata, created_at=process.created_at
                    )
                    replacement.history = process.history
                    self.processes[new_id] = replacement
                    if was_started:
                        replacement.order = "start"
                    await self._persist()
            finally:
                self._reserved_ids.discard(new_id)
        kept = {(pattern.filesystem, pattern.glob) for pattern in replacement.cleanup_patterns()}
        dropped = [p for p in process.cleanup_patterns() if (p.filesystem, p.glob) not in kept]
        self.runtime.cleaner.purge(dropped, process_id)
        if was_started:
            async with replacement.operation:
                if self._is_registered(replacement):
                    await replacement.start(self._supervisor_nursery)
        return replacement

    async def delete(self, process_id: str) -> None:
        process = self.get(process_id)
        async with process.operation:
            if not self._is_registered(process):
                raise ProcessNotFound(process_id)
            await process.stop()
            async with self._lock:
                del self.processes[process_id]
                process.forget_metrics()
                await self._persist()
        self.runtime.cleaner.purge(process.cleanup_patterns(), process_id)
        log.info("process deleted", process=process_id)

    async def command(self, process_id: str, command: Command) -> None:
        process = self.get(process_id)
        async with process.operation:
            if not self._is_registered(process):
                raise ProcessNotFound(process_id)
            if command == "stop":
                await self._set_order(process, "stop")
                await process.stop()
                return
            if command in ("restart", "reload"):  # a fresh run; reload re-resolves placeholders first
                if command == "reload":
                    process.resolved = self.resolve(process.config)
                await process.halt()
            if process.run is None and self.slots.full:
                raise StartRefused(self.slots.refusal)
            await self._set_order(process, "start")
            await process.start(self._supervisor_nursery)

    def _is_registered(self, process: ManagedProcess) -> bool:
        return self.processes.get(process.id) is process

    async def _set_order(self, process: ManagedProcess, order: str) -> None:
        async with self._lock:
            process.order = order  # type: ignore[assignment]
            process.updated_at = time.time()
            await self._persist()

    async def set_metadata(self, key: str, value: Any, process_id: str | None = None) -> None:
        """Store (or with ``None`` remove) a metadata value, globally or on one process."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", key):
            raise ValueError("key may only contain letters, digits and _ . - (at most 128)")
        async with self._lock:
            target = self.get(process_id).metadata if process_id else self.metadata
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
            await self._persist()

    async def _persist(self) -> None:
        snapshot = {
            "processes": [
                {
                    "config": process.config.model_dump(mode="json"),
                    "order": process.order,
                    "metadata": process.metadata,
                    "created_at": process.created_at,
                }
                for process in self.processes.values()
            ],
            "metadata": self.metadata,
        }
        await trio.to_thread.run_sync(self.store.save, snapshot)
