"""The root of the nursery tree: settings, registry, HTTP server, signals, systemd notification.

```
trio.run(serve)
└── trio_asyncio loop (aiortc runs on it)
    └── root nursery
        ├── config.run        → the services a config reload restarts in their own scopes:
        │   ├── rtmp server   → (rtmp.enable) listeners and one task per RTMP session
        │   ├── srt server    → (srt.enable) one UDP socket: a receive task and a timer for every connection
        │   └── metrics history → samples the metrics for /api/v3/metrics (when metrics.enable)
        ├── whip.run          → (whip.enable) one task per WHIP publisher (its stream and readers inside)
        ├── registry.run      → one supervisor (and one nursery per FFmpeg run) per process
        ├── client_sessions.run → the session collectors' tick (expiry, counters, persisted totals)
        ├── hypercorn.trio    → the QuartTrio app
        ├── watch_event_loop  → event-loop lag metric; systemd WATCHDOG=1 pings while the loop is healthy
        └── signal watcher    → SIGINT/SIGTERM: stop HTTP, stop every FFmpeg child, persist, exit 0
```
"""

from __future__ import annotations

import gc
import signal
import socket
import time

import structlog
import trio
import trio_asyncio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from dragonfork.config import LoadedSettings, host_port, is_loopback_host, unsafe_bind
from dragonfork.core import Core, build_core, start_scoped_services
from dragonfork.http.app import create_app
from dragonfork.http.body_guard import UnreadBodyGuard
from dragonfork.http.expect_continue import challenge_memfs_writes_first
from dragonfork.logs import log_asyncio_error
from dragonfork.systemd import notify_systemd, watch_event_loop
from dragonfork.webrtc.aiortc_internals import run_ready_callbacks_together

log = structlog.get_logger("dragonfork.server")


class UnsafeBind(Exception):
    """Serving a non-loopback address with auth disabled."""


class StartupRefused(Exception):
    """Something the server needs before it starts anything is unavailable (its HTTP port)."""


def check_http_port(address: str) -> None:
    """Bind the HTTP address once (and release it) so a busy port stops start-up before anything runs."""
    host, port = host_port(address)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StartupRefused(f"cannot bind the HTTP address {address}: {exc.strerror}") from None


def check_bind_is_safe(loaded: LoadedSettings) -> None:
    settings = loaded.settings
    problem = unsafe_bind(settings)
    if problem is not None:
        raise UnsafeBind(problem)
    host, _ = host_port(settings.address)
    if not is_loopback_host(host) and not settings.api.auth.enable:
        log.warning(
            "SERVING WITHOUT AUTHENTICATION ON A NON-LOOPBACK ADDRESS: anyone who reaches it controls FFmpeg",
            address=settings.address,
        )


def freeze_startup_objects() -> None:
    """Exempt the ~100,000 objects alive after start-up (modules, classes, routes) from garbage collection.

    CPython's full (generation 2) collection walks every object the collector tracks while the event loop
    waits; aiortc's peer connections are reference cycles, so viewers setting up and ending trigger one
    every second or two. With the start-up objects in it, each walk took 45-160 ms on a loaded 2-core
    machine (measured with a Trio instrument under the hostile fuzzer; ``/ping`` waited for every one).
    Those objects live as long as the server, so the permanent generation (``gc.freeze``) frees nothing
    that could have been freed; a collection first keeps start-up garbage out of it.

    The collector's thresholds stay CPython's: collecting the oldest generation more often shortened the
    fuzzer's walks but lengthened the total under 200 HLS clients, whose live connections are what a walk
    spends its time on.
    """
    gc.collect()
    gc.freeze()


async def serve(loaded: LoadedSettings, started_at: float | None = None) -> None:
    """Run the server until SIGINT or SIGTERM, then shut down gracefully."""
    started_at = started_at or time.perf_counter()
    check_bind_is_safe(loaded)
    # Before any process starts or db.json is written: a failure here leaves nothing behind. (The registry
    # creates the disk directory once the database has loaded, before it starts any process.)
    check_http_port(loaded.settings.address)
    core = build_core(loaded)
    async with trio_asyncio.open_loop() as loop, trio.open_nursery() as root:
        loop.set_exception_handler(log_asyncio_error)
        run_ready_callbacks_together(loop)
        root.start_soon(watch_event_loop, lambda: core.settings.metrics.interval_sec)
        await root.start(core.config.run)
        await start_scoped_services(core)
        await root.start(core.registry.run)  # reaps a killed predecessor's children before any spawn
        if core.whep.workers is not None:
            await root.start(core.whep.workers.run)
            root.start_soon(core.whep.start_workers_with_the_first_stream, core.whep.workers)
        await root.start(core.client_sessions.run)
        await root.start(core.whep.run)
        http_stopped = trio.Event()
        await root.start(_serve_http, core, http_stopped)
        freeze_startup_objects()
        log.info(
            "ready",
            address=f"http://{loaded.settings.address}",
            data_dir=str(loaded.settings.data_dir),
            startup_seconds=round(time.perf_counter() - started_at, 3),
        )
        notify_systemd("READY=1")
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("shutting down", signal=signal.Signals(signum).name)
                break
        notify_systemd("STOPPING=1")
        await shutdown(core, http_stopped)
        root.cancel_scope.cancel()
    log.info("stopped")


async def shutdown(core: Core, http_stopped: trio.Event) -> None:
    http_stopped.set()
    with trio.CancelScope(shield=True):
        await core.registry.shutdown()


async def _serve_http(
    core: Core, stop: trio.Event, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the app until ``stop`` is set; reports the bound addresses through ``task_status``."""
    api = core.settings.api
    config = HypercornConfig()
    config.bind = [core.settings.address]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 2
    config.h11_max_incomplete_size = api.max_header_bytes
    config.keep_alive_timeout = api.keep_alive_timeout_seconds
    config.backlog = 1024  # hundreds of players connecting at once must not wait for SYN retransmits
    challenge_memfs_writes_first(lambda: core.files.memfs_auth.enable)
    app = UnreadBodyGuard(
        create_app(core), drain_max_bytes=api.drain_max_bytes, body_timeout=api.body_timeout_seconds
    )
    await hypercorn_serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)  # type: ignore[arg-type]
