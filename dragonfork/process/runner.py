"""One supervised FFmpeg process: its order, its state machine, and the nursery of each run.

While a process's order is ``start`` it has one supervisor task (``ManagedProcess.supervise``). Each FFmpeg
run happens in a nursery of its own that holds everything belonging to that run: the FFmpeg child, its output
readers, the stale and resource watchdogs, and with WebRTC the run's ``Stream`` (listed in the stream
directory under the process id), its RTP publisher and, in the stream's nursery, its readers (WHEP viewers).
When the child exits, the run's nursery is cancelled, so the publisher and every reader end with it. A stop
(or restart, delete, shutdown) ends the stream's readers as it sends FFmpeg its SIGINT: they do not wait the
fraction of a second FFmpeg takes to flush its outputs and exit.

A run is a failure boundary: whatever goes wrong in it (no free UDP pair, a probe that fails or hangs, a
missing binary, a bug) ends that run as ``failed`` with a message naming the cause, is logged with the process
id and counted in ``dragonfork_failures_total{component="process"}``, and the supervisor carries on as for any
other failed run. Nothing in a run reaches the registry or the server.

States (datarhei Core's ``exec``): ``starting`` from spawn until FFmpeg's first progress report, ``running``
after it, ``finishing`` after our SIGINT, then ``finished`` (exit 0, or 255 / SIGINT after our stop),
``killed`` (we had to kill it: grace period over, stale, resource limit) or ``failed`` (any other exit).
"""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import structlog
import trio

from dragonfork import metrics
from dragonfork.files.cleanup import Cleaner, CleanupPattern
from dragonfork.process.child import ChildLedger, ChildProcess, spawn
from dragonfork.process.command import WebRTCPlanError, build_command, plan_webrtc, webrtc_legs
from dragonfork.process.probe import ProbeError, probe_inputs
from dragonfork.process.progress import (
    IOInfo,
    LogHistory,
    LogRing,
    Progress,
    ProgressParser,
    RunHistoryEntry,
    iter_lines,
)
from dragonfork.process.schema import ExecState, Order, ProcessConfig
from dragonfork.stream.directory import StreamDirectory
from dragonfork.stream.ingest.ports import PortRangeExhausted
from dragonfork.stream.ingest.rtp_udp import RtpIngestSettings, RtpUdpPublisher
from dragonfork.stream.stream import Stream, StreamSettings

log = structlog.get_logger("dragonfork.process")

EXEC_STATES: tuple[ExecState, ...] = ("finished", "starting", "running", "finishing", "failed", "killed")


@dataclass
class ProcessRuntime:
    """What every process of one server shares: binaries, limits, stream settings, the cleanup rules'
    runner, the stream directory its runs publish in and the ledger of FFmpeg children (``None``: not
    recorded, e.g. in unit tests)."""

    ffmpeg_binary: str
    stop_timeout: float
    probe_timeout: float
    log_max_lines: int
    log_max_history: int
    max_processes: int
    webrtc_enabled: bool
    stream: StreamSettings
    rtp: RtpIngestSettings
    cleaner: Cleaner
    directory: StreamDirectory = field(default_factory=StreamDirectory)
    ledger: ChildLedger | None = None


class ProcessSlots:
    """``ffmpeg.max_processes``: a start fails (rather than queues) when every slot is taken."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0

    @property
    def full(self) -> bool:
        return bool(self.limit) and self.running >= self.limit

    @property
    def refusal(self) -> str:
        return f"ffmpeg.max_processes ({self.limit}) running processes reached"

    def try_acquire(self) -> bool:
        if self.full:
            return False
        self.running += 1
        metrics.PROCESSES_RUNNING.set(self.running)
        return True

    def release(self) -> None:
        self.running -= 1
        metrics.PROCESSES_RUNNING.set(self.running)


@dataclass(frozen=True)
class ProcessView:
    """The read model of one process at one moment: what the API and the UI show, never a run's internals."""

    order: Order
    exec_state: ExecState
    state_since: float
    uptime_seconds: float
    restarts: int
    last_logline: str
    last_error: str
    progress: Progress | None
    inputs: list[IOInfo]
    outputs: list[IOInfo]
    cpu_percent: float
    memory_bytes: int
    command: list[str]
    run_started_at: float | None
    prelude: list[str]
    log: list[tuple[float, str]]
    history: list[RunHistoryEntry]
    stream_live: bool


@dataclass
class ResourceUsage:
    cpu_percent: float = 0.0
    memory_bytes: int = 0


@dataclass
class ProcessRun:
    """Everything that exists for one FFmpeg run and dies with it."""

    nursery: trio.Nursery
    parser: ProgressParser
    log: LogRing
    started_at: float = field(default_factory=time.time)
    pid: int | None = None
    command: list[str] = field(default_factory=list)
    stream: Stream | None = None
    usage: ResourceUsage = field(default_factory=ResourceUsage)
    last_progress_change: float = field(default_factory=trio.current_time)
    kill_reason: str | None = None
    failure: str | None = None
    """Why the run ended before FFmpeg could start (our own message), or None."""
    stopping: bool = False
    exit_code: int | None = None
    exited: trio.Event = field(default_factory=trio.Event)
    process: ChildProcess | None = None

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)

    def kill(self, reason: str) -> None:
        """Kill the child now; the run ends as ``killed`` with this reason."""
        self.kill_reason = self.kill_reason or reason
        self.signal(signal.SIGKILL)


class StartRefused(Exception):
    """A start the server cannot honour right now (e.g. ``ffmpeg.max_processes`` reached)."""


class ManagedProcess:
    """A process the registry owns: config, order and (while ordered to start) its supervisor task."""

    def __init__(
        self,
        config: ProcessConfig,
        resolved: ProcessConfig,
        runtime: ProcessRuntime,
        slots: ProcessSlots,
        *,
        order: Order = "stop",
        metadata: dict[str, Any] | None = None,
        created_at: float | None = None,
    ) -> None:
        self.config = config
        self.resolved = resolved  # placeholders expanded: what FFmpeg and the access checks see
        self.order: Order = order
        self.metadata: dict[str, Any] = metadata or {}
        self.created_at = created_at or time.time()
        self.updated_at = self.created_at
        self.runtime = runtime
        self.slots = slots
        self.state: ExecState = "finished"
        self.state_since = time.time()
        self.run: ProcessRun | None = None
        self.history = LogHistory(runtime.log_max_history)
        self.last_log = LogRing(runtime.log_max_lines)
        self.last_parser: ProgressParser | None = None
        self.restarts = 0
        self.last_error = ""
        self.run_end_reason = "reconnect"  # why the last run ended, the label of the restart that follows
        self.operation = trio.Lock()
        """Held by the registry for a whole command, replace or delete of this process (see registry.py)."""
        self._supervisor: trio.CancelScope | None = None
        self._supervisor_done = trio.Event()
        self._supervisor_done.set()
        self.log = log.bind(process=config.id)
        self._publish_state()

    @property
    def id(self) -> str:
        return self.config.id

    def cleanup_patterns(self) -> list[CleanupPattern]:
        """The outputs' cleanup rules, placeholders expanded."""
        return [
            CleanupPattern(
                filesystem=rule.filesystem,
                glob=rule.glob,
                max_files=rule.max_files,
                max_file_age_seconds=rule.max_file_age_seconds,
                purge_on_delete=rule.purge_on_delete,
            )
            for output in self.resolved.output
            for rule in output.cleanup
        ]

    # -- orders ------------------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Order ``start``: spawn the supervisor in ``nursery`` unless it already runs."""
        self.order = "start"
        if self._supervisor is None:
            self._supervisor_done = trio.Event()
            await nursery.start(self.supervise)

    async def stop(self) -> None:
        """Order ``stop``: SIGINT the child, SIGKILL it after the grace period, wait until all is gone."""
        self.order = "stop"
        await self.halt()

    async def halt(self) -> None:
        """End the supervisor and its run without changing the order (server shutdown, restart)."""
        run = self.run
        if run is not None and run.process is not None and run.process.returncode is None:
            run.stopping = True
            self._set_state("finishing")
            if run.stream is not None:
                run.stream.end()  # its viewers end now, not after FFmpeg has flushed its outputs and exited
            run.signal(signal.SIGINT)
            with trio.move_on_after(self.runtime.stop_timeout):
                await run.exited.wait()
            if not run.exited.is_set():
                self.log.warning("ffmpeg ignored SIGINT, killing", grace_seconds=self.runtime.stop_timeout)
                run.kill("stop timeout")
        if self._supervisor is not None:
            self._supervisor.cancel()
        await self._supervisor_done.wait()

    # -- supervision ------------------------------------------------------------------------------

    async def supervise(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run FFmpeg, and again after ``reconnect_delay_seconds`` while ordered to start with reconnect."""
        with trio.CancelScope() as scope:
            self._supervisor = scope
            task_status.started()
            try:
                while self.order == "start":
                    try:
                        await self._run_once()
                    except* Exception as failure:  # the run's failure boundary: this process fails, alone
                        self.log.error("process_run_crashed", exc_info=failure)
                        self._fail(
                            f"internal error in this run: {failure.exceptions[0]!r}", cause="exception"
                        )
                    if self.order != "start" or not self.config.reconnect:
                        break
                    reason = self.run_end_reason
                    self.log.info(
                        "reconnecting", delay_seconds=self.config.reconnect_delay_seconds, after=reason
                    )
                    await trio.sleep(self.config.reconnect_delay_seconds)
                    self.restarts += 1
                    metrics.PROCESS_RESTARTS.labels(self.id, reason).inc()
            finally:
                self._supervisor = None
                self._supervisor_done.set()

    async def _run_once(self) -> None:
        if not self.slots.try_acquire():
            self._fail(self.slots.refusal, cause="max_processes")
            return
        parser = ProgressParser()
        ring = LogRing(self.runtime.log_max_lines)
        self.last_parser, self.last_log = parser, ring
        self._set_state("starting")
        try:
            async with trio.open_nursery() as nursery:
                run = ProcessRun(nursery=nursery, parser=parser, log=ring)
                self.run = run
                try:
                    await self._spawn_and_wait(run)
                finally:
                    if run.stream is not None:
                        run.stream.end()  # first, so its viewers' close reason is this run's end
                    nursery.cancel_scope.cancel()
        finally:
            self.slots.release()
            if self.run is not None:
                self._finish(self.run)
            self.run = None

    async def _spawn_and_wait(self, run: ProcessRun) -> None:
        webrtc_args: list[str] | None = None
        if self.config.webrtc.enabled and self.runtime.webrtc_enabled:
            try:
                webrtc_args = await self._prepare_stream(run)
            except (ProbeError, WebRTCPlanError) as exc:
                self._run_failed(run, f"cannot serve WebRTC: {exc}", cause="probe")
                return
            except PortRangeExhausted as exc:
                self._run_failed(
                    run,
                    f"cannot serve WebRTC: {exc}; widen CORE_WEBRTC_PORT_FIRST/CORE_WEBRTC_PORT_LAST "
                    "(webrtc.port_first/port_last): each WebRTC process needs one pair",
                    cause="port_range_exhausted",
                )
                return
        run.command = build_command(self.runtime.ffmpeg_binary, self.resolved, webrtc_args=webrtc_args)
        self.log.info("starting ffmpeg", argv=run.command)
        try:
            process = await spawn(run.command, stdout=True, stderr=True, ledger=self.runtime.ledger)
        except OSError as exc:
            self._run_failed(
                run, f"cannot start {self.runtime.ffmpeg_binary} (CORE_FFMPEG_BINARY): {exc}", cause="spawn"
            )
            return
        run.process, run.pid = process, process.pid
        run.last_progress_change = trio.current_time()
        try:
            stderr_done = trio.Event()
            assert process.stdout is not None and process.stderr is not None
            run.nursery.start_soon(self._read_stderr, run, process.stderr, stderr_done)
            run.nursery.start_soon(self._read_progress, run, process.stdout)
            run.nursery.start_soon(self._watch_resources, run, process.pid)
            if self.config.stale_timeout_seconds:
                run.nursery.start_soon(self._watch_stale, run)
            if patterns := self.cleanup_patterns():
                run.nursery.start_soon(self.runtime.cleaner.enforce_forever, patterns, self.id)
            await process.wait()
            with trio.move_on_after(1):  # collect FFmpeg's last words (they explain a failure)
                await stderr_done.wait()
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
            run.exit_code = process.returncode
            run.exited.set()

    async def _prepare_stream(self, run: ProcessRun) -> list[str]:
        """Probe the inputs, bind the RTP legs and publish the run's stream; return the RTP output legs."""
        probed = await probe_inputs(
            self.runtime.ffmpeg_binary,
            [(io.options, io.address) for io in self.resolved.input],
            timeout=self.runtime.probe_timeout,
        )
        plan = plan_webrtc(self.config.webrtc, probed)
        publisher = await RtpUdpPublisher.bind(self.runtime.rtp)
        stream = Stream(self.id, self.runtime.stream, has_audio=plan.with_audio)
        try:
            await run.nursery.start(self.runtime.directory.run, stream)
        except BaseException:
            publisher.close()
            raise
        await run.nursery.start(publisher.run, stream)
        run.stream = stream
        return webrtc_legs(self.config.webrtc, plan, publisher.video_leg, publisher.audio_leg)

    def _finish(self, run: ProcessRun) -> None:
        code = run.exit_code
        if run.kill_reason:
            state: ExecState = "killed"
            self.run_end_reason = run.kill_reason
        elif (
            code == 0
            or (run.stopping and code in (255, -signal.SIGINT))
            or (code is None and not run.failure)
        ):
            state = "finished"  # (no code and no failure: stopped before FFmpeg was started)
            self.run_end_reason = "reconnect"
        else:
            state = "failed"
            self.run_end_reason = "reconnect"
            self.last_error = run.failure or _explanation(run.log) or f"ffmpeg exited with code {code}"
        if code is not None:
            self._note(
                run, f"ffmpeg exited with code {code}" + (f" ({run.kill_reason})" if run.kill_reason else "")
            )
        self.history.push(
            RunHistoryEntry(
                created_at=run.started_at,
                exited_at=time.time(),
                state=state,
                exit_code=code,
                prelude=list(run.parser.prelude),
                log=run.log.lines(),
                progress=run.parser.progress,
            )
        )
        self._set_state(state)
        for gauge in (metrics.PROCESS_FPS, metrics.PROCESS_BITRATE, metrics.PROCESS_SPEED):
            gauge.labels(self.id).set(0)

    def _fail(self, message: str, *, cause: str) -> None:
        """Fail without a run (or after its end): the state says why, the failure is logged and counted."""
        self.last_error = message
        self.last_log.append(message)
        self.log.warning("process_failed", cause=cause, message=message)
        metrics.FAILURES.labels("process", cause).inc()
        self._set_state("failed")

    def _run_failed(self, run: ProcessRun, message: str, *, cause: str) -> None:
        """The run cannot start FFmpeg: it ends ``failed`` with ``message`` as its error (see ``_finish``)."""
        run.log.append(f"[dragonfork] {message}")
        self.log.warning("process_failed", cause=cause, message=message)
        metrics.FAILURES.labels("process", cause).inc()
        run.failure = message
        run.exited.set()

    def _note(self, run: ProcessRun, message: str) -> None:
        """A line of our own in the process's log (it shows up in its report beside FFmpeg's)."""
        run.log.append(f"[dragonfork] {message}")
        self.log.info(message)

    # -- readers and watchdogs ----------------------------------------------------------------------

    async def _read_stderr(self, run: ProcessRun, stream: trio.abc.ReceiveStream, done: trio.Event) -> None:
        try:
            async for line in iter_lines(stream):
                run.parser.feed_stderr(line)
                run.log.append(line)
        finally:
            done.set()

    async def _read_progress(self, run: ProcessRun, stream: trio.abc.ReceiveStream) -> None:
        last_mark: tuple[int, int] | None = None
        async for line in iter_lines(stream):
            if not run.parser.feed_progress(line) or run.parser.progress is None:
                continue
            progress = run.parser.progress
            mark = (progress.frame, progress.size_bytes)
            if mark != last_mark:
                last_mark = mark
                run.last_progress_change = trio.current_time()
            if self.state == "starting":
                self._set_state("running")
                self.log.info("running", seconds_to_running=round(time.time() - run.started_at, 3))
            metrics.PROCESS_FPS.labels(self.id).set(progress.fps)
            metrics.PROCESS_BITRATE.labels(self.id).set(progress.bitrate_kbit)
            metrics.PROCESS_SPEED.labels(self.id).set(progress.speed)

    async def _watch_stale(self, run: ProcessRun) -> None:
        timeout = self.config.stale_timeout_seconds
        while True:
            await trio.sleep(min(1.0, timeout / 2))
            idle = trio.current_time() - run.last_progress_change
            if idle > timeout:
                self._note(run, f"stale: no progress for {idle:.1f} s (stale_timeout_seconds={timeout})")
                run.kill("stale")
                return

    async def _watch_resources(self, run: ProcessRun, pid: int) -> None:
        """Sample CPU and RSS once a second; kill the child when it stays over a limit for waitfor seconds."""
        limits = self.config.limits
        try:
            child = psutil.Process(pid)
            last_cpu = sum(child.cpu_times()[:2])
        except psutil.Error:
            return
        last_time = time.monotonic()
        over_since: float | None = None
        while True:
            await trio.sleep(1)
            try:
                cpu_times = child.cpu_times()
                memory = child.memory_info().rss
            except psutil.Error:
                return
            now, cpu = time.monotonic(), sum(cpu_times[:2])
            run.usage = ResourceUsage(100 * (cpu - last_cpu) / max(now - last_time, 1e-6), memory)
            last_cpu, last_time = cpu, now
            metrics.PROCESS_CPU.labels(self.id).set(run.usage.cpu_percent)
            metrics.PROCESS_MEMORY.labels(self.id).set(memory)
            over = []
            if limits.cpu_usage and run.usage.cpu_percent > limits.cpu_usage:
                over.append(f"cpu {run.usage.cpu_percent:.0f}% > {limits.cpu_usage:g}%")
            if limits.memory_mbytes and memory > limits.memory_mbytes * 1024 * 1024:
                over.append(f"memory {memory / 1048576:.0f} MiB > {limits.memory_mbytes} MiB")
            if not over:
                over_since = None
                continue
            over_since = over_since if over_since is not None else now
            if now - over_since >= limits.waitfor_seconds:
                self._note(run, f"limit exceeded for {limits.waitfor_seconds} s: {', '.join(over)}")
                run.kill("limit")
                return

    # -- state --------------------------------------------------------------------------------------

    def _set_state(self, state: ExecState) -> None:
        if state != self.state:
            self.log.info("state", state=state, previous=self.state)
            self.state = state
            self.state_since = time.time()
        self._publish_state()

    def _publish_state(self) -> None:
        for candidate in EXEC_STATES:
            metrics.PROCESS_STATE.labels(self.id, candidate).set(1 if candidate == self.state else 0)

    def view(self) -> ProcessView:
        run = self.run
        parser = run.parser if run is not None else self.last_parser
        return ProcessView(
            order=self.order,
            exec_state=self.state,
            state_since=self.state_since,
            uptime_seconds=self.uptime_seconds(),
            restarts=self.restarts,
            last_logline=self.last_log.last_line(),
            last_error=self.last_error,
            progress=parser.progress if parser else None,
            inputs=list(parser.inputs) if parser else [],
            outputs=list(parser.outputs) if parser else [],
            cpu_percent=run.usage.cpu_percent if run else 0.0,
            memory_bytes=run.usage.memory_bytes if run else 0,
            command=list(run.command) if run else [],
            run_started_at=run.started_at if run else None,
            prelude=list(parser.prelude) if parser else [],
            log=self.last_log.lines(),
            history=self.history.entries(),
            stream_live=bool(run and run.stream and run.stream.has_media()),
        )

    def forget_metrics(self) -> None:
        metrics.forget_process(self.id)

    def uptime_seconds(self) -> float:
        return time.time() - self.state_since if self.state == "running" else 0.0


_STATS_LINE = re.compile(r"^\s*(frame|size)=")
_CONVERSION_FAILED = "Conversion failed!"
_ERROR_LINE = re.compile(r"\bError\b|\bfailed\b")
_FAILURE_CASCADE_LINES = 20  # how far before "Conversion failed!" the cause is looked for


def _explanation(log: LogRing) -> str:
    """The line that most likely says why FFmpeg failed.

    That is its last line that is not a statistics line, unless that is the generic "Conversion failed!":
    then the cause is the first ``Error …`` or ``… failed`` line of the cascade of lines before it (an
    encoder that cannot open, then its filter, its thread and its output each report their own end).
    """
    lines = [line for _, line in log.lines() if not _STATS_LINE.match(line)]
    if not lines:
        return ""
    if lines[-1].strip() != _CONVERSION_FAILED:
        return lines[-1]
    cascade = lines[-1 - _FAILURE_CASCADE_LINES : -1]
    return next((line for line in cascade if _ERROR_LINE.search(line)), lines[-1])
