"""Is a target local, which process serves it, and how much CPU and memory does that process use.

A load test may only target this machine unless told otherwise; when it does, the server's CPU and memory
are sampled from its process, found by the TCP port it listens on. The server's children (FFmpeg) are
sampled separately, so the server's own figure is the server's alone.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import time

import psutil


def local_addresses() -> set[str]:
    """This machine's addresses: loopback and every interface address."""
    addresses = {"127.0.0.1", "::1"}
    for interface_addresses in psutil.net_if_addrs().values():
        for address in interface_addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                addresses.add(address.address.split("%")[0])
    return addresses


def is_local_host(host: str) -> bool:
    """True when every address ``host`` resolves to is loopback or one of this machine's own."""
    try:
        resolved = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    mine = local_addresses()
    return bool(resolved) and all(
        ipaddress.ip_address(address.split("%")[0]).is_loopback or address in mine for address in resolved
    )


def find_listener(port: int) -> psutil.Process | None:
    """The process listening on TCP ``port`` on this machine, if it can be seen."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    for connection in connections:
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return psutil.Process(connection.pid)
    return None


@dataclasses.dataclass(frozen=True)
class Usage:
    """Cumulative CPU seconds and current memory of a process and, separately, of its children."""

    at: float  # time.monotonic()
    cpu_seconds: float
    rss_bytes: int
    children_cpu_seconds: float
    children_rss_bytes: int


class ProcessMeter:
    """Reads a process's CPU time and RSS, and its children's (children are counted while they live).

    ``feeds`` are processes counted with the children though they are not (an FFmpeg feeding the server).
    """

    def __init__(self, process: psutil.Process, feeds: tuple[psutil.Process, ...] = ()) -> None:
        self.process = process
        self.feeds = feeds
        self._children_cpu: dict[int, float] = {}  # pid → last seen CPU seconds (kept after it exits)

    def read(self) -> Usage:
        with self.process.oneshot():
            times = self.process.cpu_times()
            rss = self.process.memory_info().rss
            children = self.process.children(recursive=True) + list(self.feeds)
        children_rss = 0
        for child in children:
            try:
                child_times = child.cpu_times()
                self._children_cpu[child.pid] = child_times.user + child_times.system
                children_rss += child.memory_info().rss
            except psutil.Error:
                continue
        return Usage(
            at=time.monotonic(),
            cpu_seconds=times.user + times.system,
            rss_bytes=rss,
            children_cpu_seconds=sum(self._children_cpu.values()),
            children_rss_bytes=children_rss,
        )


def cpu_percent(before: Usage, after: Usage) -> tuple[float, float]:
    """Percent of one core used between two readings: (the process, its children)."""
    elapsed = max(after.at - before.at, 1e-9)
    return (
        100.0 * (after.cpu_seconds - before.cpu_seconds) / elapsed,
        100.0 * (after.children_cpu_seconds - before.children_cpu_seconds) / elapsed,
    )
