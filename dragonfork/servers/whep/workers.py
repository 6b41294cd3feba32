"""WebRTC worker processes, the server's side: spawn and supervise them, feed them media, route sessions.

With ``webrtc.workers`` above 1 the WHEP viewers do not run in the server: each runs in one of N worker
processes (``servers/whep/worker.py``), which owns its viewers' ICE, DTLS and SRTP and runs the fast path's
fan-out (``StreamFanout``) for them, on a core of its own. The server keeps the signalling on its HTTP port:

- **Sessions**: ``WhepServer`` picks the least-loaded worker for an offer, forwards offer, trickle and
  DELETE over the worker's control channel (``channel.py``), and keeps every session in its own table as a
  ``RemoteViewer`` (resource id → worker), so ``Location``, PATCH and DELETE work whichever worker holds it,
  and the per-stream cap, the ``sessions.*`` limits and the process state's viewer count stay the server's.
- **Media once per worker**: the first viewer of a stream on a worker starts a ``WorkerFeed``, a shared
  reader of the stream (in the stream's nursery, like every reader): it sends the stream's frames to that
  worker once, whatever its number of viewers there, and ends the worker's copy of the stream when the
  stream ends, which closes the viewers there (``process_stopped``) at once.
- **Figures**: a worker sends its counters' growth (``metrics.CounterDeltas``), its CPU over the last
  second and each viewer's bytes, setup time and time to first frame once a second and when a viewer ends;
  the server adds them to its own series, so ``/metrics`` and the sessions API read as with one process.
- **Supervision**: each worker is a task of the pool (``WorkerPool.run``, in the root nursery), all started
  when the first stream is published or the first offer comes (``WorkerPool.want``: a server that
  publishes nothing runs none). A worker
  that exits or breaks its channel is logged with its index, pid and cause, counted
  (``dragonfork_failures_total{component="webrtc_worker"}``), its sessions are closed (reason
  ``worker_failed``: GET/PATCH on them answer 404) and it is started again. Workers are spawned like FFmpeg
  children (``process/child.py``: parent-death signal, the child ledger), so none outlives the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
import trio

from dragonfork import metrics
from dragonfork.servers.whep.channel import (
    ChannelClosed,
    MessageChannel,
    frame_message,
    stream_ended,
    stream_opened,
)
from dragonfork.servers.whep.viewer_start import (
    RETRY_AFTER_FULL,
    RETRY_AFTER_NOT_LIVE,
    WhepRefused,
    check_capacity,
)
from dragonfork.stream.frames import MediaFrame
from dragonfork.stream.stream import Stream, StreamSettings
from dragonfork.stream.track import Track
from dragonfork.webrtc.viewer import CloseReason, ViewerSettings

log = structlog.get_logger(__name__)

WORKER_MODULE = "dragonfork.servers.whep.worker"
READY_TIMEOUT = 30.0  # seconds a new worker has to import aiortc and say it is ready
RESTART_DELAY_FIRST, RESTART_DELAY_MAX = 0.2, 5.0  # back-off between restarts of a failing worker
STOP_GRACE = 2.0  # seconds a worker has to exit on SIGTERM before SIGKILL
END_TIMEOUT = 1.0  # how long a stream's end waits for a worker to end its copy (and its viewers there)
REQUEST_MARGIN = 2.0  # seconds a worker's answer may take beyond its own handshake timeout


def worker_count(configured: int) -> int:
    """``webrtc.workers``: 0 is one per core this process may run on (``os.sched_getaffinity``)."""
    return configured if configured > 0 else len(os.sched_getaffinity(0))


class ChildProcess(Protocol):
    pid: int

    @property
    def returncode(self) -> int | None: ...

    def send_signal(self, signum: int) -> None: ...

    async def wait(self) -> int: ...


Spawn = Callable[..., Awaitable[ChildProcess]]
"""``process.child.spawn`` (with the server's child ledger bound): ``spawn(argv, stdout=, stderr=,
pass_fds=, inherit_stderr=)``."""


class RemoteViewer:
    """A WHEP session whose viewer runs in a worker: what the session table, PATCH and DELETE need."""

    def __init__(self, process_id: str, worker: WorkerConnection) -> None:
        self.id = secrets.token_urlsafe(24)
        self.process_id = process_id
        self.worker = worker
        self.entity_tag = '""'
        self.bytes_sent = 0
        self.setup_seconds: float | None = None
        self.time_to_first_frame_seconds: float | None = None
        self.close_reason: CloseReason | None = None
        self.answered = False  # the worker answered the offer (the session is live)
        self.ended = False  # the worker said it ended (possibly before its answer came back)

    def close(self, reason: CloseReason = CloseReason.DELETE) -> None:
        """End the session in its worker (idempotent); it leaves the table when the worker says it ended."""
        if self.close_reason is None:
            self.close_reason = reason
            self.worker.post({"op": "close", "session": self.id, "reason": reason.value})

    async def add_remote_candidates(self, sdpfrag: str, *, if_match_sent: bool = True) -> None:
        """A trickle PATCH, applied in the worker; its refusal comes back as a ``WhepRefused``."""
        await self.worker.request(
            {"op": "trickle", "session": self.id, "sdpfrag": sdpfrag, "if_match_sent": if_match_sent},
            timeout=REQUEST_MARGIN + 5.0,
        )

    def traffic(self) -> tuple[int, int]:
        return 0, self.bytes_sent

    def update(self, figures: list[Any]) -> None:
        """A worker's figures for this viewer: [bytes sent, setup seconds, time to first frame]."""
        self.bytes_sent = int(figures[0])
        if self.setup_seconds is None and figures[1] is not None:
            self.setup_seconds = float(figures[1])
            metrics.VIEWER_SETUP_SECONDS.observe(self.setup_seconds)
        if self.time_to_first_frame_seconds is None and figures[2] is not None:
            self.time_to_first_frame_seconds = float(figures[2])
            metrics.TIME_TO_FIRST_FRAME_SECONDS.observe(self.time_to_first_frame_seconds)


class WorkerFeed:
    """A shared reader of one stream that sends its frames to one worker (see the module docstring)."""

    def __init__(self, worker: WorkerConnection, stream_id: int, settings: StreamSettings) -> None:
        self.worker = worker
        self.stream_id = stream_id
        self._settings = settings

    async def run(self, stream: Stream, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        description = {
            "name": stream.name,
            "has_audio": stream.audio is not None,
            "video_codec": [stream.video.codec.name, stream.video.codec.clock_rate],
            "audio_codec": [stream.audio.codec.name, stream.audio.codec.clock_rate] if stream.audio else None,
            "settings": dataclasses.asdict(self._settings),
        }
        worker, media = self.worker, self.worker.media
        closed = worker.streams_closing[self.stream_id] = trio.Event()
        try:
            await media.send(stream_opened(self.stream_id, description))
            task_status.started()
            async with trio.open_nursery() as nursery:
                for track in (stream.video, stream.audio):
                    if track is not None:
                        nursery.start_soon(self._forward, track)
        except ChannelClosed:
            return  # the worker is gone: its supervisor closes its sessions and restarts it
        except Exception as exc:  # noqa: BLE001 - the feed of one worker fails alone, never the stream
            log.exception("webrtc_worker_feed_failed", worker=worker.index, stream=stream.name)
            metrics.FAILURES.labels("webrtc_worker_feed", type(exc).__name__).inc()
        finally:
            # The stream ends: so does the worker's copy, and the feed waits until the worker says its
            # viewers there have ended, so they end within the stream's scope as in-process viewers do.
            shielded = trio.CancelScope(shield=True)
            with shielded, trio.move_on_after(END_TIMEOUT), contextlib.suppress(ChannelClosed):
                await media.send(stream_ended(self.stream_id))
                await closed.wait()
            worker.streams_closing.pop(self.stream_id, None)

    async def _forward(self, track: Track) -> None:
        # The subscription's bounded channel is the feed's buffer: a worker that cannot keep up loses
        # frames (slow_viewer) and resumes at a keyframe, and never holds the stream's publisher back.
        with track.subscribe() as subscription:
            frame: MediaFrame
            async for frame in subscription.frames:
                await self.worker.media.send(frame_message(self.stream_id, frame))


class WorkerConnection:
    """One running worker: its channels, its sessions, its latest figures."""

    def __init__(self, index: int, pid: int, control: MessageChannel, media: MessageChannel) -> None:
        self.index = index
        self.pid = pid
        self.control = control
        self.media = media
        self.sessions: dict[str, RemoteViewer] = {}
        self.cpu_percent = 0.0
        self.feed_key = f"webrtc-worker-{index}-{pid}"
        self.streams_closing: dict[int, trio.Event] = {}  # set when the worker ended its copy of a stream
        self._outgoing_send, self._outgoing = trio.open_memory_channel[dict[str, Any]](10_000)
        self._requests = itertools.count(1)
        self._pending: dict[int, tuple[trio.Event, list[dict[str, Any]]]] = {}

    def post(self, message: dict[str, Any]) -> None:
        """Queue a control message for the worker (never waits; dropped only when the worker is gone)."""
        try:
            self._outgoing_send.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            log.warning("webrtc_worker_message_dropped", worker=self.index, op=message.get("op"))

    async def request(self, message: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """Send ``message`` and wait for the worker's reply; a refusal in it is raised as ``WhepRefused``."""
        request_id = next(self._requests)
        done, reply = trio.Event(), list[dict[str, Any]]()
        self._pending[request_id] = (done, reply)
        self.post({**message, "request": request_id})
        try:
            with trio.move_on_after(timeout):
                await done.wait()
        finally:
            del self._pending[request_id]
        if not reply:
            raise WhepRefused(
                503,
                f"WebRTC worker {self.index} did not answer within {timeout:g} s; "
                f"retry in {RETRY_AFTER_FULL} s",
                field="webrtc.workers",
                retry_after=RETRY_AFTER_FULL,
            )
        answer = reply[0]
        refused = answer.get("refused")
        if refused is not None:
            raise WhepRefused(
                int(refused["status"]),
                str(refused["message"]),
                field=refused.get("field"),
                details=refused.get("details"),
                retry_after=refused.get("retry_after"),
            )
        return answer

    async def send_control(self) -> None:
        async for message in self._outgoing:
            await self.control.send_json(message)

    def replied(self, message: dict[str, Any]) -> None:
        pending = self._pending.get(message.get("reply", -1))
        if pending is not None:
            pending[1].append(message)
            pending[0].set()

    def fail_pending(self, cause: str) -> None:
        for done, reply in self._pending.values():
            refused = {"status": 503, "message": cause, "field": "webrtc.workers"}
            refused["retry_after"] = RETRY_AFTER_FULL
            reply.append({"refused": refused})
            done.set()
        self._outgoing_send.close()


class WorkerPool:
    """The WebRTC worker processes (``webrtc.workers``), supervised from ``run``."""

    def __init__(
        self,
        count: int,
        spawn: Spawn,
        *,
        log_level: str = "info",
    ) -> None:
        self.count = count
        self._spawn = spawn
        self._log_level = log_level
        self.on_session_ended: Callable[[RemoteViewer, CloseReason], None] = lambda *_: None
        """Told when a session ended (the WHEP server's table), with the reason its worker gave (or
        ``worker_failed``, ``process_stopped`` when the worker is gone)."""
        self.workers: list[WorkerConnection | None] = [None] * count
        self._stream_ids = itertools.count(1)
        self._wanted = trio.Event()  # a stream was published or an offer came: start the workers
        self._first_starts = trio.Event()  # every worker is ready or has failed its first start

    def running(self) -> list[WorkerConnection]:
        return [worker for worker in self.workers if worker is not None]

    def choose(self, *, budget: int, cpu_limit: float) -> WorkerConnection:
        """The least-loaded worker that is under its viewer budget and CPU limit; else ``WhepRefused`` 503
        naming the setting (the per-core budget and the CPU are each worker's own core's)."""
        candidates = sorted(self.running(), key=lambda worker: (len(worker.sessions), worker.cpu_percent))
        if not candidates:
            raise WhepRefused(
                503,
                f"no WebRTC worker is running (restarting); retry in {RETRY_AFTER_FULL} s",
                field="webrtc.workers",
                retry_after=RETRY_AFTER_FULL,
            )
        first_refusal: WhepRefused | None = None
        for worker in candidates:
            try:
                check_capacity(
                    len(worker.sessions),
                    worker.cpu_percent,
                    budget=budget,
                    cpu_limit=cpu_limit,
                    where=f"every WebRTC worker ({self.count})",
                )
            except WhepRefused as refused:
                first_refusal = first_refusal or refused
                continue
            return worker
        assert first_refusal is not None
        raise first_refusal

    async def start_viewer(
        self,
        worker: WorkerConnection,
        stream: Stream,
        viewer: RemoteViewer,
        offer_sdp: str,
        settings: ViewerSettings,
        stream_settings: StreamSettings,
    ) -> str:
        """Start ``viewer`` in ``worker`` (its stream fed to the worker first) and return its answer."""
        feed: WorkerFeed = await stream.shared_reader(
            worker.feed_key, lambda _: WorkerFeed(worker, next(self._stream_ids), stream_settings)
        )
        worker.sessions[viewer.id] = viewer
        try:
            reply = await worker.request(
                {
                    "op": "offer",
                    "session": viewer.id,
                    "stream": feed.stream_id,
                    "name": viewer.process_id,
                    "offer": offer_sdp,
                    "settings": dataclasses.asdict(settings),
                },
                timeout=settings.handshake_timeout + REQUEST_MARGIN,
            )
        except BaseException:
            worker.sessions.pop(viewer.id, None)
            raise
        if viewer.ended:
            raise WhepRefused(
                409,
                f"the session on {viewer.process_id!r} ended while it was being set up; retry shortly",
                retry_after=RETRY_AFTER_NOT_LIVE,
            )
        viewer.answered = True
        return str(reply["answer"])

    def want(self) -> None:
        """Start the workers now (once; later calls do nothing)."""
        self._wanted.set()

    async def started(self) -> None:
        """Have the workers started (if nothing started them yet) and wait until each is ready or has
        failed its first start (at most ``READY_TIMEOUT``; then ``choose`` refuses with 503)."""
        self.want()
        with trio.move_on_after(READY_TIMEOUT):
            await self._first_starts.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Once asked (``want``: the first stream is published, or the first offer came), start every
        worker (in parallel), then keep each running, restarted when it fails, until cancelled.

        Lazily: a server that publishes nothing never pays for its workers (a process each, importing
        aiortc: about a second of CPU apiece), and its start-up does not wait for them."""
        task_status.started()
        await self._wanted.wait()
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as starting:
                for index in range(self.count):
                    starting.start_soon(nursery.start, self._supervise, index)
            self._first_starts.set()

    async def _supervise(self, index: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        delay = RESTART_DELAY_FIRST
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            began = time.monotonic()
            cause = await self._run_once(index, ready)
            ready()  # a worker that cannot start must not hold the server's start-up: viewers get 503
            metrics.FAILURES.labels("webrtc_worker", cause).inc()
            if time.monotonic() - began > 10 * RESTART_DELAY_MAX:
                delay = RESTART_DELAY_FIRST  # it ran a good while: a new failure, not a crash loop
            log.warning("webrtc_worker_restarting", worker=index, cause=cause, delay_seconds=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX)

    async def _run_once(self, index: int, ready: Callable[[], None]) -> str:
        """Run worker ``index`` until it fails and return the cause; ``ready()`` once it is ready."""
        control_here, control_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        media_here, media_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        media_here.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        argv = [
            sys.executable,
            "-m",
            WORKER_MODULE,
            "--index",
            str(index),
            "--control-fd",
            str(control_there.fileno()),
            "--media-fd",
            str(media_there.fileno()),
            "--log-level",
            self._log_level,
        ]
        try:
            child = await self._spawn(
                argv,
                stdout=False,
                stderr=False,
                inherit_stderr=True,
                pass_fds=(control_there.fileno(), media_there.fileno()),
            )
        except OSError as exc:
            control_here.close()
            media_here.close()
            log.error("webrtc_worker_failed", worker=index, cause="spawn", error=str(exc))
            return "spawn"
        finally:
            control_there.close()
            media_there.close()
        worker = WorkerConnection(index, child.pid, MessageChannel(control_here), MessageChannel(media_here))
        cause = "exited"
        shutting_down = False
        try:
            async with trio.open_nursery() as nursery:

                async def wait_exit() -> None:
                    await child.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(wait_exit)
                nursery.start_soon(worker.send_control)
                with trio.move_on_after(READY_TIMEOUT) as ready_wait:
                    hello = await worker.control.receive_json()
                if ready_wait.cancelled_caught or hello.get("op") != "ready":
                    cause = "not_ready"
                else:
                    self.workers[index] = worker
                    log.info("webrtc_worker_ready", worker=index, pid=child.pid)
                    ready()
                    cause = await self._receive(worker)
                nursery.cancel_scope.cancel()
        except ChannelClosed as exc:
            cause = "channel_closed"
            log.debug("webrtc_worker_channel_closed", worker=index, error=str(exc))
        except trio.Cancelled:
            shutting_down = True  # the server stops: not a failure
            raise
        finally:
            self.workers[index] = None
            with trio.CancelScope(shield=True):
                await self._stop(child)
                if not shutting_down and child.returncode not in (None, 0):
                    cause = _exit_cause(child.returncode)
                self._close_sessions(worker, cause, failed=not shutting_down)
                await worker.control.aclose()
                await worker.media.aclose()
        log.error(
            "webrtc_worker_failed",
            worker=index,
            pid=child.pid,
            cause=cause,
            returncode=child.returncode,
            viewers_closed=len(worker.sessions),
        )
        return cause

    async def _receive(self, worker: WorkerConnection) -> str:
        """Handle the worker's messages until its channel closes (returns the cause)."""
        try:
            while True:
                message = await worker.control.receive_json()
                op = message.get("op")
                if op == "reply":
                    worker.replied(message)
                elif op == "stats":
                    worker.cpu_percent = float(message.get("cpu_percent", 0.0))
                    metrics.add_counter_deltas(message.get("counters", []))
                    for session_id, figures in message.get("viewers", {}).items():
                        viewer = worker.sessions.get(session_id)
                        if viewer is not None:
                            viewer.update(figures)
                elif op == "stream_closed":
                    closing = worker.streams_closing.get(int(message.get("stream", 0)))
                    if closing is not None:
                        closing.set()
                elif op == "ended":
                    metrics.add_counter_deltas(message.get("counters", []))
                    viewer = worker.sessions.pop(str(message.get("session")), None)
                    if viewer is not None:
                        viewer.ended = True
                        viewer.update(message.get("figures", [0, None, None]))
                        if viewer.answered:  # else its offer's refusal follows; start_viewer cleans up
                            self.on_session_ended(viewer, CloseReason(message["reason"]))
        except ChannelClosed:
            return "channel_closed"

    async def _stop(self, child: ChildProcess) -> None:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_GRACE):
                await child.wait()
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
            await child.wait()

    def _close_sessions(self, worker: WorkerConnection, cause: str, *, failed: bool) -> None:
        """The worker is gone: its sessions end (``worker_failed`` when it failed; counted here, since
        the worker could not count them)."""
        worker.fail_pending(f"WebRTC worker {worker.index} failed ({cause}); retry in {RETRY_AFTER_FULL} s")
        for closing in worker.streams_closing.values():
            closing.set()
        reason = CloseReason.WORKER_FAILED if failed else CloseReason.PROCESS_STOPPED
        for viewer in worker.sessions.values():
            self.on_session_ended(viewer, reason)


def _exit_cause(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal_{-returncode}"
    return f"exit_{returncode}"
