"""A load-test worker process: many viewers on one asyncio loop, driven by the orchestrator over pipes.

    python -m dragonfork.loadtest.worker --url URL [--janus-mountpoint ID] [--token T] --lifetime S ...

stdin, one JSON object per line: ``{"join": [viewer ids]}``, ``{"leave": [viewer ids]}``, ``{"stop": true}``.
stdout, one JSON object per line: ``{"ev": "ready"}``; ``{"ev": "session", "phase": "setup" | "first_frame" |
"end", "report": SessionReport}``; every ``--stats-interval`` seconds ``{"ev": "stats", "t": monotonic,
"viewers": {id: [video received, video expected, audio received, audio expected, reconnects, connected]}}``;
``{"ev": "done"}`` last. The worker stops by itself after ``--lifetime`` seconds or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import httpx

from dragonfork.loadtest.viewer import SessionOptions, SessionReport, Target, Viewer
from dragonfork.webrtc.client import _set_decode_mode

LEAVE_TIMEOUT = 15.0  # bound on all viewers leaving (DELETE / detach, peer connection close)


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Worker:
    def __init__(self, target: Target, options: SessionOptions, max_reconnects: int) -> None:
        self.target = target
        self.options = options
        self.max_reconnects = max_reconnects
        self.viewers: dict[int, Viewer] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def join(self, http: httpx.AsyncClient, viewer_id: int) -> None:
        if viewer_id in self.viewers:
            return
        viewer = Viewer(
            viewer_id, self.target, self.options, self._on_session, max_reconnects=self.max_reconnects
        )
        self.viewers[viewer_id] = viewer
        self.tasks[viewer_id] = asyncio.create_task(viewer.run(http))

    def leave(self, viewer_id: int) -> None:
        viewer = self.viewers.get(viewer_id)
        if viewer is not None:
            viewer.leave.set()

    @staticmethod
    def _on_session(report: SessionReport, phase: str) -> None:
        _emit({"ev": "session", "phase": phase, "report": report.to_json()})

    def stats(self) -> dict[str, list[int]]:
        rows = {}
        for viewer_id, viewer in self.viewers.items():
            counts = viewer.counts()
            video = counts.get("video", (0, 0))
            audio = counts.get("audio", (0, 0))
            rows[str(viewer_id)] = [*video, *audio, viewer.reconnects, int(viewer.connected)]
        return rows

    async def report_stats(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            _emit({"ev": "stats", "t": time.monotonic(), "viewers": self.stats()})

    async def stop(self) -> None:
        for viewer in self.viewers.values():
            viewer.leave.set()
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=LEAVE_TIMEOUT)
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


async def _commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def run(args: argparse.Namespace) -> None:
    _set_decode_mode(False)  # aiortc's receivers must not decode: counting is the point
    target = Target(args.url, args.token, args.janus_mountpoint)
    options = SessionOptions(
        timeout=args.timeout,
        first_frame_only=args.first_frame_only,
        verify_keyframe=args.verify_keyframe,
    )
    worker = Worker(target, options, args.max_reconnects)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as http:
        reporter = asyncio.create_task(worker.report_stats(args.stats_interval))
        commands = await _commands()
        _emit({"ev": "ready"})
        deadline = time.monotonic() + args.lifetime
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    line = await asyncio.wait_for(commands.readline(), remaining)
                except TimeoutError:
                    break
                if not line:
                    break  # the orchestrator is gone
                command = json.loads(line)
                for viewer_id in command.get("join", []):
                    worker.join(http, viewer_id)
                for viewer_id in command.get("leave", []):
                    worker.leave(viewer_id)
                if command.get("stop"):
                    break
        finally:
            await worker.stop()
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            _emit({"ev": "stats", "t": time.monotonic(), "viewers": worker.stats()})
            _emit({"ev": "done"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dragonfork.loadtest.worker")
    parser.add_argument("--url", required=True)
    parser.add_argument("--token")
    parser.add_argument("--janus-mountpoint", type=int)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--first-frame-only", action="store_true")
    parser.add_argument("--verify-keyframe", action="store_true")
    parser.add_argument("--max-reconnects", type=int, default=3)
    parser.add_argument(
        "--lifetime", type=float, required=True, help="seconds before the worker stops itself"
    )
    parser.add_argument("--stats-interval", type=float, default=0.5)
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
