"""``python -m dragonfork.bench.loopback_wakeup``: what one ``sendto`` on ``lo`` costs, by its receiver.

On loopback the kernel delivers a datagram inside the sender's ``sendto``: it queues it on the receiving
socket and, when a process sleeps in ``epoll_wait`` on that socket, wakes it (on another CPU: an
inter-processor interrupt, which in a virtual machine is an exit to the hypervisor). The bench's viewers are
such sleepers: a few processes holding many viewers each, mostly idle between packets. So every send call of
the server to a viewer may carry a wake-up that a server sending through a network card would not pay.

This measures it: a receiver process on the second CPU either sleeps in ``epoll_wait`` between datagrams
(``asleep``, like the bench's viewers) or polls its socket without sleeping (``awake``), and the sender on the
first CPU times each of its calls (wall clock around the call, one call every 0.8 ms, spinning in between
so that its own CPU never sleeps): one datagram of 160 bytes (an Opus packet) and seven of 1300 bytes back to
back (a 2 Mbit/s frame). Prints the median µs per call of each; it runs about 50 seconds (each measurement
waits for its receiver's ``RECEIVER_SECONDS``) and needs two CPUs.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import sys
import time

RECEIVER_SECONDS = 4.0  # each receiver outlives its sender's calls (3000 × 0.8 ms + start) and then exits
PACE_SECONDS = 0.0008  # between calls: long enough that an ``asleep`` receiver is back in epoll_wait


def _receive(sock: socket.socket, asleep: bool) -> None:
    """The receiver: drain the socket until ``RECEIVER_SECONDS`` are over, sleeping in epoll if ``asleep``."""
    sock.setblocking(False)
    poller = select.epoll()
    poller.register(sock.fileno(), select.EPOLLIN)
    ends = time.monotonic() + RECEIVER_SECONDS
    while time.monotonic() < ends:
        if asleep:
            poller.poll(0.5)
        try:
            while True:
                sock.recv(2048)
        except BlockingIOError:
            pass


def median_call_us(asleep: bool, size: int, count: int, calls: int = 3000) -> float:
    """Median wall-clock µs of ``count`` back-to-back ``sendto`` calls of ``size`` bytes to a receiver on the
    second CPU that is ``asleep`` in epoll between datagrams or awake."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    address = receiver.getsockname()
    cpus = sorted(os.sched_getaffinity(0))
    pid = os.fork()
    if pid == 0:
        try:
            os.sched_setaffinity(0, {cpus[1]})
            _receive(receiver, asleep)
        finally:
            os._exit(0)
    try:
        os.sched_setaffinity(0, {cpus[0]})
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.setblocking(False)
        data, clock, durations = b"\0" * size, time.perf_counter, []
        time.sleep(0.3)  # the receiver is in its loop
        for _ in range(calls):
            started = clock()
            for _ in range(count):
                sender.sendto(data, address)
            durations.append(clock() - started)
            until = clock() + PACE_SECONDS
            while clock() < until:  # spin, so that the sender's CPU never sleeps between calls
                pass
        sender.close()
    finally:
        os.waitpid(pid, 0)
        receiver.close()
        os.sched_setaffinity(0, set(cpus))
    return statistics.median(durations) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dragonfork.bench.loopback_wakeup")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each case")
    args = parser.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        print("needs two CPUs (the receiver on the second)", file=sys.stderr)
        return 2
    for label, size, count in (("1 x 160 B", 160, 1), ("7 x 1300 B", 1300, 7)):
        for asleep in (True, False):
            figures = [round(median_call_us(asleep, size, count), 1) for _ in range(args.rounds)]
            state = "asleep in epoll" if asleep else "awake"
            print(f"{label} per call, receiver {state}: median µs {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
