"""The load-test orchestrator (Trio): worker processes, the join schedule, and the score.

Viewers live in worker processes (``dragonfork.loadtest.worker``), a few dozen per process, so the client side
can use several cores and stays out of the orchestrator's way. Viewer ``i`` lives in worker ``i % workers``.
Workers report session events as they happen and every viewer's packet counters twice a second; this side
keeps the latest of each, so a caller can take snapshots at the start and end of a measurement window.

Everything is bounded: workers start in their own session (a Ctrl-C here does not reach them) and stop by
themselves after ``lifetime`` seconds or when their stdin closes; leaving ``open_load_test`` asks them to
stop, waits a bounded time, then kills their process groups.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import trio

from dragonfork.loadtest.viewer import Target

WORKER_START_TIMEOUT = 60.0
STOP_TIMEOUT = 25.0  # workers' own bound on leaving is 15 s
MAX_VIEWERS_PER_WORKER = 60


@dataclasses.dataclass
class LoadTestOptions:
    target: Target
    workers: int = 1
    timeout: float = 10.0  # per viewer: signalling, and ICE + DTLS, each
    max_reconnects: int = 3
    first_frame_only: bool = False  # each viewer leaves once its first keyframe arrived (first-frame tests)
    verify_keyframe: bool = False  # and decodes it
    worker_cpus: set[int] | None = None  # CPU affinity of the worker processes
    lifetime: float = 900.0  # every worker stops itself after this many seconds, whatever happens here


@dataclasses.dataclass
class _Worker:
    index: int
    process: trio.Process
    lock: trio.Lock = dataclasses.field(default_factory=trio.Lock)
    ready: trio.Event = dataclasses.field(default_factory=trio.Event)
    done: trio.Event = dataclasses.field(default_factory=trio.Event)


def workers_for(peers: int) -> int:
    return max(1, -(-peers // MAX_VIEWERS_PER_WORKER))


class LoadTest:
    """The running load test; get one from ``open_load_test``."""

    def __init__(self, options: LoadTestOptions) -> None:
        self.options = options
        self.joined = 0
        self.setups: dict[tuple[int, int], dict[str, Any]] = {}  # (viewer, attempt) → setup report
        self.ends: list[dict[str, Any]] = []  # final report of every session
        self.first_frames = 0
        # viewer → [video received, expected, audio received, expected, reconnects, connected]
        self.counters: dict[int, list[int]] = {}
        self.worker_pids: list[int] = []
        self._workers: list[_Worker] = []
        self._changed = trio.Event()

    # --- what callers use ---------------------------------------------------------------------------------

    async def join(self, count: int, ramp_seconds: float = 0.0) -> None:
        """Add ``count`` viewers, evenly spread over ``ramp_seconds`` (all at once for 0)."""
        first = self.joined
        self.joined += count
        if ramp_seconds <= 0:
            for worker in self._workers:
                ids = [i for i in range(first, first + count) if i % len(self._workers) == worker.index]
                if ids:
                    await self._send(worker, {"join": ids})
            return
        start = trio.current_time()
        for k, viewer in enumerate(range(first, first + count)):
            await trio.sleep_until(start + k * ramp_seconds / count)
            await self._send(self._workers[viewer % len(self._workers)], {"join": [viewer]})

    async def wait_for_setups(self, timeout: float) -> None:
        """Until every viewer joined so far has a first setup result (connected or failed), or the timeout."""
        with trio.move_on_after(timeout):
            while sum(1 for viewer, attempt in self.setups if attempt == 0) < self.joined:
                await self._wait_change()

    async def wait_for_ends(self, count: int, timeout: float) -> None:
        """Until ``count`` sessions have ended, or the timeout."""
        with trio.move_on_after(timeout):
            while len(self.ends) < count:
                await self._wait_change()

    def snapshot(self) -> dict[int, list[int]]:
        return {viewer: list(row) for viewer, row in self.counters.items()}

    @property
    def connected(self) -> int:
        return sum(row[5] for row in self.counters.values())

    @property
    def reconnects(self) -> int:
        return sum(row[4] for row in self.counters.values())

    def progress(self) -> str:
        failed = sum(1 for report in self.setups.values() if report["connected_seconds"] is None)
        received = sum(row[0] + row[2] for row in self.counters.values())
        expected = sum(row[1] + row[3] for row in self.counters.values())
        loss = 100.0 * (expected - received) / expected if expected else 0.0
        return (
            f"{self.joined} joined, {self.connected} connected, {failed} failed, "
            f"{self.reconnects} reconnects, {received} packets, loss {loss:.3f} %"
        )

    # --- workers ------------------------------------------------------------------------------------------

    async def _start(self, nursery: trio.Nursery) -> None:
        options = self.options
        argv = [
            sys.executable, "-m", "dragonfork.loadtest.worker",
            "--url", options.target.url,
            "--timeout", str(options.timeout),
            "--max-reconnects", str(options.max_reconnects),
            "--lifetime", str(options.lifetime),
        ]  # fmt: skip
        if options.target.token:
            argv += ["--token", options.target.token]
        if options.target.janus_mountpoint is not None:
            argv += ["--janus-mountpoint", str(options.target.janus_mountpoint)]
        if options.first_frame_only:
            argv.append("--first-frame-only")
        if options.verify_keyframe:
            argv.append("--verify-keyframe")
        for index in range(options.workers):
            process = await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
            )
            if options.worker_cpus:
                os.sched_setaffinity(process.pid, options.worker_cpus)
            worker = _Worker(index, process)
            self._workers.append(worker)
            self.worker_pids.append(process.pid)
            nursery.start_soon(self._read, worker)
        with trio.fail_after(WORKER_START_TIMEOUT):
            for worker in self._workers:
                await worker.ready.wait()

    async def _stop(self) -> None:
        with trio.move_on_after(STOP_TIMEOUT):
            for worker in self._workers:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await self._send(worker, {"stop": True})
            for worker in self._workers:
                await worker.done.wait()
        for worker in self._workers:
            await _end_process_group(worker.process)

    async def _send(self, worker: _Worker, command: dict[str, Any]) -> None:
        assert worker.process.stdin is not None
        async with worker.lock:
            await worker.process.stdin.send_all(json.dumps(command).encode() + b"\n")

    async def _read(self, worker: _Worker) -> None:
        assert worker.process.stdout is not None
        pending = b""
        try:
            async for chunk in worker.process.stdout:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._handle(worker, json.loads(line))
        finally:
            worker.done.set()
            worker.ready.set()  # a worker that died before it was ready must not hang the start

    def _handle(self, worker: _Worker, event: dict[str, Any]) -> None:
        kind = event["ev"]
        if kind == "ready":
            worker.ready.set()
        elif kind == "done":
            worker.done.set()
        elif kind == "stats":
            for viewer, row in event["viewers"].items():
                self.counters[int(viewer)] = row
        elif kind == "session":
            report = event["report"]
            phase = event["phase"]
            if phase == "setup":
                self.setups[(report["viewer"], report["attempt"])] = report
            elif phase == "first_frame":
                self.first_frames += 1
            elif phase == "end":
                self.ends.append(report)
        self._changed.set()

    async def _wait_change(self) -> None:
        self._changed = trio.Event()
        await self._changed.wait()


async def _end_process_group(process: trio.Process) -> None:
    """Wait briefly for a worker to exit, then TERM and KILL its process group."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        with trio.move_on_after(3):
            await process.wait()
        if process.returncode is not None:
            return


@contextlib.asynccontextmanager
async def open_load_test(options: LoadTestOptions) -> AsyncIterator[LoadTest]:
    """Start the workers; on leaving, stop them (bounded) however the block ends."""
    test = LoadTest(options)
    async with trio.open_nursery() as nursery:
        try:
            await test._start(nursery)
            yield test
        finally:
            with trio.CancelScope(shield=True):
                await test._stop()
            nursery.cancel_scope.cancel()
