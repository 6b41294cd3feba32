"""The session service: one collector per kind of client, the ``sessions.*`` rules, the once-a-second tick.

Collectors are datarhei Core's: ``hls`` (players fetching playlists and segments), ``webrtc`` (WHEP viewers
and WHIP publishers), ``rtmp`` and ``srt`` (the publishers and players of those servers), ``ffmpeg`` (what
FFmpeg processes pull from and push to the network). ``open`` is the door for a new viewer: clients in
``sessions.ip_ignorelist`` (loopback by default, as in datarhei) are not collected at all, so neither
counted nor limited; for the others ``sessions.max_sessions`` (per collector) and
``sessions.max_bitrate_mbit`` (the outgoing bitrate of every collector together) refuse new viewers with
``SessionRefused``, which the HTTP layer answers with 503 + Retry-After.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog
import trio

from dragonfork import metrics
from dragonfork.atomic_file import write_atomically
from dragonfork.config import SessionsSettings
from dragonfork.sessions.collector import Client, Clock, Collector, Counter, Session

log = structlog.get_logger(__name__)

COLLECTORS = ("hls", "webrtc", "rtmp", "srt", "ffmpeg")
EGRESS_COLLECTORS = ("hls", "webrtc")  # the viewers that sessions.max_* refuse; they count in widgets
TICK_SECONDS = 1.0
RETRY_AFTER_SECONDS = 5


class SessionRefused(Exception):
    """A new viewer over a ``sessions.*`` limit; ``setting`` names it (the HTTP layer answers 503)."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.message = message
        self.setting = setting
        self.retry_after = RETRY_AFTER_SECONDS


class SessionRegistry:
    def __init__(
        self, settings: SessionsSettings, persist_dir: Path | None = None, *, clock: Clock = time.monotonic
    ) -> None:
        self.collectors = {name: Collector(name, clock=clock) for name in COLLECTORS}
        self._persist_root = persist_dir
        self.configure(settings)
        self._samplers: list[Callable[[], None]] = []
        for name in COLLECTORS:
            metrics.SESSIONS_ACTIVE.labels(name).set(0)
            metrics.SESSIONS_TOTAL.labels(name)
        self._load()

    def configure(self, settings: SessionsSettings) -> None:
        """Take the ``sessions.*`` settings (at start and at a config reload).

        The limits and the ignore list apply to the next viewer, the idle timeout to the next HLS session;
        sessions that are open stay. ``persist`` switched on writes this run's totals from then on (they are
        read back at the next start)."""
        self.settings = settings
        self.max_tx_bitrate = settings.max_bitrate_mbit * 1024 * 1024  # bit/s, as datarhei converts it
        for collector in self.collectors.values():
            collector.max_sessions, collector.max_tx_bitrate = settings.max_sessions, self.max_tx_bitrate
        self._ignored = [ipaddress.ip_network(cidr, strict=False) for cidr in settings.ip_ignorelist]
        self._persist_dir = self._persist_root if settings.persist else None

    def __getitem__(self, name: str) -> Collector:
        return self.collectors[name]

    # -- admission --------------------------------------------------------------------------------

    def collectable(self, address: str) -> bool:
        """Whether a client at ``address`` (an IP, optionally ``[v6]`` or ``ip:port``) is collected."""
        if not self.settings.enable:
            return False
        ip = _parse_ip(address)
        return ip is not None and not any(ip in network for network in self._ignored)

    def check_admission(self, collector: str) -> None:
        """Raise ``SessionRefused`` when a new viewer of ``collector`` is over a limit."""
        limit = self.settings.max_sessions
        if limit and len(self.collectors[collector]) >= limit:
            self._refused(collector, "max_sessions")
            raise SessionRefused(
                f"too many {collector} sessions ({limit}, sessions.max_sessions); retry in "
                f"{RETRY_AFTER_SECONDS} s",
                "sessions.max_sessions",
            )
        if self.max_tx_bitrate and self.tx_bitrate() >= self.max_tx_bitrate:
            self._refused(collector, "max_bitrate_mbit")
            raise SessionRefused(
                f"the server's outgoing bandwidth ({self.tx_bitrate() / 1048576:.2f} Mbit/s) is at "
                f"sessions.max_bitrate_mbit ({self.settings.max_bitrate_mbit:g}); retry in "
                f"{RETRY_AFTER_SECONDS} s",
                "sessions.max_bitrate_mbit",
            )

    def open(
        self,
        collector: str,
        session_id: str,
        *,
        reference: str,
        location: str,
        client: Client,
        counter: Counter | None = None,
        idle_timeout: float | None = None,
        ingress: bool = False,
    ) -> Session | None:
        """Admit and register a viewer: None for an ignored client, ``SessionRefused`` over a limit.

        ``ingress`` sessions (WHIP publishers) are collected but never refused: the limits are on
        what the server sends out.
        """
        if not self.collectable(client.address):
            return None
        if not ingress:
            self.check_admission(collector)
        return self.collectors[collector].register(
            session_id,
            reference=reference,
            location=location,
            client=client,
            counter=counter,
            idle_timeout=idle_timeout,
        )

    def tx_bitrate(self) -> float:
        """The outgoing bitrate of every collector (bit/s over the last 10 s)."""
        return sum(collector.tx_bitrate() for collector in self.collectors.values())

    # -- read model ---------------------------------------------------------------------------------

    def viewers_of(self, process_id: str, process_reference: str) -> tuple[int, int]:
        """(current, total) HLS and WebRTC sessions of a process, for the public widget.

        A session belongs to a process when its reference is the process id (WebRTC viewers; HLS playlists
        named ``{processid}.m3u8``) or, as in datarhei, starts with the process's non-empty reference.
        """

        def matches(reference: str) -> bool:
            by_reference = bool(process_reference) and reference.startswith(process_reference)
            return reference == process_id or by_reference

        current = total = 0
        for name in EGRESS_COLLECTORS:
            now, ever = self.collectors[name].sessions_of(matches)
            current, total = current + now, total + ever
        return current, total

    # -- the tick -----------------------------------------------------------------------------------

    def add_sampler(self, sampler: Callable[[], None]) -> None:
        """Call ``sampler`` every tick before the counters are read (e.g. to open/close FFmpeg sessions)."""
        self._samplers.append(sampler)

    def tick(self) -> None:
        for sampler in self._samplers:
            sampler()
        for collector in self.collectors.values():
            collector.sample()
            collector.expire()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick every second; persist the totals every ``persist_interval_sec`` and when cancelled."""
        task_status.started()
        last_persist = trio.current_time()
        try:
            while True:
                await trio.sleep(TICK_SECONDS)
                self.tick()
                interval = self.settings.persist_interval_sec
                if interval and trio.current_time() - last_persist >= interval:
                    last_persist = trio.current_time()
                    self.persist()
        finally:
            for collector in self.collectors.values():
                collector.close_all()
            self.persist()

    def persist(self) -> None:
        if self._persist_dir is None:
            return
        for name, collector in self.collectors.items():
            try:
                payload = json.dumps(collector.history_json(), indent=2).encode()
                write_atomically(self._persist_dir / f"{name}.json", payload)
            except OSError as exc:
                log.warning("sessions_persist_failed", collector=name, error=str(exc))

    def _load(self) -> None:
        if self._persist_dir is None:
            return
        for name, collector in self.collectors.items():
            path = self._persist_dir / f"{name}.json"
            if not path.exists():
                continue
            try:
                collector.load_history(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning("sessions_history_unreadable", path=str(path), error=str(exc))

    def _refused(self, collector: str, limit: str) -> None:
        metrics.SESSIONS_REFUSED.labels(collector, limit).inc()

    # -- the API's views ------------------------------------------------------------------------------

    def summary_json(self, names: Iterable[str]) -> dict[str, Any]:
        """datarhei's ``api.SessionsSummary``; an unknown collector has an empty summary, as in datarhei."""
        return {name: self._collector_or_empty(name).summary_json() for name in names}

    def active_json(self, names: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        return {name: self._collector_or_empty(name).active_json() for name in names}

    def _collector_or_empty(self, name: str) -> Collector:
        collector = self.collectors.get(name)
        return collector if collector is not None else Collector(name)


def _parse_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = address.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket is 127.0.0.1
    return ip
