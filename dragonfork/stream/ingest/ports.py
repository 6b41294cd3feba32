"""Reservation of the adjacent UDP port pair (video V even, audio V+1) that one FFmpeg run sends RTP to.

Binding is the reservation: the sockets are bound on 127.0.0.1 before FFmpeg starts and stay bound until the
run ends, so no other process (ours or not) can take the ports in between. A port in use (EADDRINUSE) moves
on to the next pair; a start cursor that rotates per range keeps a pair that was just released from being
handed out again at once (a late packet from the previous FFmpeg would otherwise land in the new stream).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import socket

import trio

LOOPBACK = "127.0.0.1"
VIDEO_RECEIVE_BUFFER = 4 * 1024 * 1024
"""Requested SO_RCVBUF for the video socket (a keyframe arrives as a burst of packets). Linux caps it at
``net.core.rmem_max``; the request is best effort."""

_next_pair_index: dict[tuple[int, int], int] = {}


class PortRangeExhausted(RuntimeError):
    """Every adjacent pair in the configured range is in use."""

    def __init__(self, first: int, last: int) -> None:
        super().__init__(
            f"no free UDP port pair (even video port V, audio port V+1) on {LOOPBACK} "
            f"in the port range {first}-{last}"
        )
        self.first = first
        self.last = last


@dataclasses.dataclass(eq=False)
class PortPair:
    """Two bound, non-blocking UDP sockets on 127.0.0.1: video on an even port, audio on the next one.

    They are standard-library sockets so the RTP sources can wait for readability with
    ``trio.lowlevel.wait_readable`` and then drain every queued datagram without a scheduler round per packet.
    """

    video_port: int
    audio_port: int
    video_socket: socket.socket
    audio_socket: socket.socket

    def close(self) -> None:
        """Release both ports (idempotent)."""
        self.video_socket.close()
        self.audio_socket.close()


async def bind_port_pair(first: int, last: int) -> PortPair:
    """Bind the next free pair (V even, V+1) in ``[first, last]``; raises PortRangeExhausted if none is."""
    if not 1 <= first <= last <= 65_535:
        raise ValueError(f"invalid UDP port range {first}-{last}")
    base = first + (first & 1)
    pair_count = (last - 1 - base) // 2 + 1 if last - 1 >= base else 0
    if pair_count == 0:
        raise ValueError(f"the UDP port range {first}-{last} holds no even/odd port pair")
    await trio.lowlevel.checkpoint()
    start = _next_pair_index.get((first, last), 0)
    for attempt in range(pair_count):
        index = (start + attempt) % pair_count
        pair = _try_bind_pair(base + 2 * index)
        if pair is not None:
            _next_pair_index[(first, last)] = (index + 1) % pair_count
            return pair
    raise PortRangeExhausted(first, last)


def pair_is_free(video_port: int) -> bool:
    """Whether the pair (video_port, video_port + 1) could be bound now (``dragonfork check``, benchmarks)."""
    pair = _try_bind_pair(video_port)
    if pair is None:
        return False
    pair.close()
    return True


def _try_bind_pair(video_port: int) -> PortPair | None:
    video_socket = _try_bind(video_port)
    if video_socket is None:
        return None
    audio_socket = _try_bind(video_port + 1)
    if audio_socket is None:
        video_socket.close()
        return None
    with contextlib.suppress(OSError):  # best effort: the default buffer still works at low rates
        video_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, VIDEO_RECEIVE_BUFFER)
    return PortPair(video_port, video_port + 1, video_socket, audio_socket)


def _try_bind(port: int) -> socket.socket | None:
    """A non-blocking UDP socket bound to 127.0.0.1:port, or None when the port is taken.

    No SO_REUSEADDR: on Linux it would let two UDP sockets bind the same port and split its packets.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((LOOPBACK, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            return None
        raise
    sock.setblocking(False)
    return sock
