"""One session collector: the clients of one kind (HLS, WebRTC, RTMP, SRT, FFmpeg), datarhei Core's model.

A session is one client: it is *registered* (pending) when the client shows up and becomes *active* with its
first bytes; only active sessions are listed and counted as viewers. It ends when its owner closes it (a WHEP
viewer's task ends) or, for sessions with an ``idle_timeout`` (HLS), when no request touched it for that long.
An ended active session adds its bytes to the history, which is grouped by (location, remote, reference) as
datarhei keeps it, and from which ``summary`` builds the totals per remote, per location and per reference.

Bytes arrive two ways: pushed (``egress``/``ingress``, e.g. per HLS request) or pulled from a ``counter``
(cumulative rx/tx bytes, e.g. a WebRTC viewer's RTP stats) that ``sample`` reads once a second. Bandwidth is
the bytes of the last ``AVERAGE_WINDOW`` seconds, as datarhei computes it. Nothing here awaits: every
method is safe to call from a request handler, and the owner of the collector (``SessionRegistry.run``)
calls ``sample`` and ``expire`` every second.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from dragonfork import metrics

log = structlog.get_logger(__name__)

AVERAGE_WINDOW = 10.0  # seconds of traffic a bandwidth figure covers (datarhei: 10 s in 1 s buckets)
PENDING_TIMEOUT = 5.0  # a registered session that never became active is dropped after this (datarhei: 5 s)
UNKNOWN = "unknown"  # datarhei's location/remote when there is none

Clock = Callable[[], float]
Counter = Callable[[], tuple[int, int]]  # cumulative (rx, tx) bytes


class RateWindow:
    """Bytes per one-second bucket over the last ``AVERAGE_WINDOW`` seconds."""

    def __init__(self) -> None:
        self._buckets: collections.deque[list[int]] = collections.deque()  # [second, bytes]

    def add(self, size: int, now: float) -> None:
        second = math.floor(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += size
        else:
            self._buckets.append([second, size])
        self._prune(now)

    def bits_per_second(self, now: float) -> float:
        self._prune(now)
        return sum(size for _, size in self._buckets) * 8 / AVERAGE_WINDOW

    def _prune(self, now: float) -> None:
        oldest = math.floor(now) - AVERAGE_WINDOW
        while self._buckets and self._buckets[0][0] <= oldest:
            self._buckets.popleft()


@dataclass(frozen=True)
class Client:
    """Who a session is: its address (the remote) and what its HTTP request said about itself."""

    address: str
    user_agent: str = ""
    referrer: str = ""

    @property
    def extra(self) -> str:
        referrer = f"referrer={self.referrer}" if self.referrer else ""
        return " ".join(part for part in (referrer, self.user_agent) if part)


@dataclass(eq=False)
class Session:
    id: str
    reference: str
    location: str
    remote: str
    extra: str
    created_at: float  # wall clock, seconds
    last_seen: float  # the collector's clock
    idle_timeout: float | None
    counter: Counter | None = None
    active: bool = False
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_rate: RateWindow = field(default_factory=RateWindow)
    tx_rate: RateWindow = field(default_factory=RateWindow)
    counted: tuple[int, int] = (0, 0)  # the counter's value at the last sample

    def to_json(self, now: float) -> dict[str, Any]:
        """datarhei's ``api.Session``."""
        return {
            "id": self.id,
            "reference": self.reference,
            "created_at": int(self.created_at),
            "local": self.location,
            "remote": self.remote,
            "extra": self.extra,
            "bytes_rx": self.rx_bytes,
            "bytes_tx": self.tx_bytes,
            "bandwidth_rx_kbit": round(self.rx_rate.bits_per_second(now) / 1024, 3),
            "bandwidth_tx_kbit": round(self.tx_rate.bits_per_second(now) / 1024, 3),
        }


@dataclass
class Totals:
    sessions: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0

    def add(self, sessions: int, rx_bytes: int, tx_bytes: int) -> None:
        self.sessions += sessions
        self.rx_bytes += rx_bytes
        self.tx_bytes += tx_bytes

    def to_json(self) -> dict[str, int]:
        """datarhei's ``api.SessionStats``: traffic in whole MiB, as datarhei rounds it."""
        return {
            "sessions": self.sessions,
            "traffic_rx_mb": self.rx_bytes // (1024 * 1024),
            "traffic_tx_mb": self.tx_bytes // (1024 * 1024),
        }


HistoryKey = tuple[str, str, str]  # (location, remote, reference)


class Collector:
    """The sessions of one kind and the totals of the ended ones."""

    def __init__(
        self, name: str, *, max_sessions: int = 0, max_tx_bitrate: float = 0.0, clock: Clock = time.monotonic
    ) -> None:
        self.name = name
        self.max_sessions = max_sessions
        self.max_tx_bitrate = max_tx_bitrate  # bit/s, shown in the summary; 0 is no limit
        self.clock = clock
        self.history: dict[HistoryKey, Totals] = {}
        self._sessions: dict[str, Session] = {}
        self._rx_rate = RateWindow()
        self._tx_rate = RateWindow()

    # -- the session life cycle ---------------------------------------------------------------------

    def register(
        self,
        session_id: str,
        *,
        reference: str,
        location: str,
        client: Client,
        idle_timeout: float | None = None,
        counter: Counter | None = None,
    ) -> Session:
        """A pending session (idempotent: a known id returns its session unchanged)."""
        if session_id in self._sessions:
            return self._sessions[session_id]
        now = self.clock()
        session = Session(
            id=session_id,
            reference=reference,
            location=location or UNKNOWN,
            remote=client.address or UNKNOWN,
            extra=client.extra,
            created_at=time.time(),
            last_seen=now,
            idle_timeout=idle_timeout,
            counter=counter,
        )
        self._sessions[session_id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def activate(self, session_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is None or session.active:
            return
        session.active = True
        metrics.SESSIONS_ACTIVE.labels(self.name).inc()
        metrics.SESSIONS_TOTAL.labels(self.name).inc()
        log.info(
            "session_active",
            collector=self.name,
            session=session.id,
            reference=session.reference,
            remote=session.remote,
        )

    def egress(self, session_id: str, size: int, *, activate: bool = True) -> None:
        """``size`` bytes sent to the session's client; they activate it unless ``activate`` is false (an
        HLS playlist alone does not make a viewer: its first segment does)."""
        self._traffic(session_id, 0, size, activate)

    def ingress(self, session_id: str, size: int) -> None:
        self._traffic(session_id, size, 0, True)

    def close(self, session_id: str) -> None:
        """End a session (idempotent); an active one goes into the history."""
        session = self._sessions.get(session_id)
        if session is None:
            return
        self._sample(session)  # the last bytes of a pulled session
        del self._sessions[session_id]
        if not session.active:
            return
        key = (session.location, session.remote, session.reference)
        self.history.setdefault(key, Totals()).add(1, session.rx_bytes, session.tx_bytes)
        metrics.SESSIONS_ACTIVE.labels(self.name).dec()
        log.info(
            "session_closed",
            collector=self.name,
            session=session.id,
            reference=session.reference,
            bytes_rx=session.rx_bytes,
            bytes_tx=session.tx_bytes,
            seconds=round(time.time() - session.created_at, 1),
        )

    def close_all(self) -> None:
        for session_id in list(self._sessions):
            self.close(session_id)

    # -- once a second ----------------------------------------------------------------------------

    def sample(self) -> None:
        """Read every pulled session's counter."""
        for session in list(self._sessions.values()):
            self._sample(session)

    def expire(self) -> None:
        """End the sessions nothing touched within their idle timeout, and pending ones after 5 s."""
        now = self.clock()
        for session in list(self._sessions.values()):
            if session.idle_timeout is None:
                continue
            timeout = session.idle_timeout if session.active else min(PENDING_TIMEOUT, session.idle_timeout)
            if now - session.last_seen > timeout:
                self.close(session.id)

    # -- the read model ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """Sessions that count against ``max_sessions``: active and pending (so joins cannot overshoot)."""
        return len(self._sessions)

    def active(self) -> list[Session]:
        return sorted((s for s in self._sessions.values() if s.active), key=lambda s: s.created_at)

    def tx_bitrate(self) -> float:
        return self._tx_rate.bits_per_second(self.clock())

    def rx_bitrate(self) -> float:
        return self._rx_rate.bits_per_second(self.clock())

    def active_json(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [session.to_json(now) for session in self.active()]

    def summary_json(self) -> dict[str, Any]:
        """datarhei's ``api.SessionSummary``: the active sessions and the totals of the ended ones."""
        mbit = 1024 * 1024
        active = self.active()
        remotes: dict[str, dict[str, Any]] = {}
        locations: dict[str, Totals] = {}
        references: dict[str, Totals] = {}
        overall = Totals()
        for (location, remote, reference), totals in self.history.items():
            parts = (totals.sessions, totals.rx_bytes, totals.tx_bytes)
            group = remotes.setdefault(remote, {"totals": Totals(), "locations": {}})
            group["totals"].add(*parts)
            group["locations"].setdefault(location, Totals()).add(*parts)
            locations.setdefault(location, Totals()).add(*parts)
            references.setdefault(reference, Totals()).add(*parts)
            overall.add(*parts)
        return {
            "active": {
                "list": self.active_json(),
                "sessions": len(active),
                "bandwidth_rx_mbit": round(self.rx_bitrate() / mbit, 3),
                "bandwidth_tx_mbit": round(self.tx_bitrate() / mbit, 3),
                "max_sessions": self.max_sessions,
                "max_bandwidth_rx_mbit": 0,
                "max_bandwidth_tx_mbit": round(self.max_tx_bitrate / mbit, 3),
            },
            "summary": {
                "remote": {
                    remote: {
                        **group["totals"].to_json(),
                        "local": {name: t.to_json() for name, t in group["locations"].items()},
                    }
                    for remote, group in remotes.items()
                },
                "local": {name: t.to_json() for name, t in locations.items()},
                "reference": {name: t.to_json() for name, t in references.items()},
                **overall.to_json(),
            },
        }

    def sessions_of(self, matches: Callable[[str], bool]) -> tuple[int, int]:
        """(active, ever activated) sessions whose reference ``matches``."""
        current = sum(1 for session in self.active() if matches(session.reference))
        ended = sum(t.sessions for (_, _, reference), t in self.history.items() if matches(reference))
        return current, current + ended

    # -- persistence (datarhei's history file: {"sessions": {"location:remote:reference": totals}}) -------

    def history_json(self) -> dict[str, Any]:
        return {
            "sessions": {
                f"{location}:{remote}:{reference}": {
                    "location": location,
                    "peer": remote,
                    "reference": reference,
                    "total_sessions": totals.sessions,
                    "total_rxbytes": totals.rx_bytes,
                    "total_txbytes": totals.tx_bytes,
                }
                for (location, remote, reference), totals in self.history.items()
            }
        }

    def load_history(self, data: dict[str, Any]) -> None:
        for entry in data.get("sessions", {}).values():
            key = (str(entry["location"]), str(entry["peer"]), str(entry["reference"]))
            self.history.setdefault(key, Totals()).add(
                int(entry["total_sessions"]), int(entry["total_rxbytes"]), int(entry["total_txbytes"])
            )

    # -- internals ----------------------------------------------------------------------------------

    def _traffic(self, session_id: str, rx: int, tx: int, activate: bool) -> None:
        session = self._sessions.get(session_id)
        if session is None or not (rx or tx):
            return
        now = self.clock()
        session.last_seen = now
        if rx:
            session.rx_bytes += rx
            session.rx_rate.add(rx, now)
            self._rx_rate.add(rx, now)
            metrics.SESSION_BYTES.labels(self.name, "rx").inc(rx)
        if tx:
            session.tx_bytes += tx
            session.tx_rate.add(tx, now)
            self._tx_rate.add(tx, now)
            metrics.SESSION_BYTES.labels(self.name, "tx").inc(tx)
        if activate:
            self.activate(session_id)

    def _sample(self, session: Session) -> None:
        if session.counter is None:
            return
        rx, tx = session.counter()
        last_rx, last_tx = session.counted
        session.counted = (rx, tx)
        self._traffic(session.id, max(rx - last_rx, 0), max(tx - last_tx, 0), True)
