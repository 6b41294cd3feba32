"""WHEP POST → 201 on the wire: how long the server took to answer each offer, measured by the kernel on lo.

The viewers time POST → 201 in their own event loops, and in the bench those loops run beside dozens of other
viewers decrypting media on the same CPUs: a response can sit in a client's socket for tens of milliseconds
before its loop reads it, and that is the client's delay, not the server's. Here a packet socket on ``lo``
(``lo_capture``) sees each TCP segment to and from the server's HTTP port, stamped by the kernel: a POST to
``--path`` (or below it) is complete when the segment carrying its last byte (headers + ``Content-Length``)
arrives, and answered when the first segment of the response on that connection leaves the server. The
difference is what a browser on another machine would see, less the network's round trip.

Runs until ``--seconds`` have passed or it gets SIGTERM/SIGINT, then prints one JSON object: the exchanges
seen by response status, the answer times of the 201s (ms: p50, p95, p99, max, and each one), POSTs whose
headers did not fit the snap length or whose response came before the request was complete
(``unpaired``), and the kernel's drops. It prints ``ready`` once capturing, for a caller to start the
joins after it.

Needs root (a raw packet socket) and runs as its own process, on the clients' CPUs:

    python -m dragonfork.bench.signalling_latency --port HTTP_PORT --path /api/v3/whep/bench --seconds 600
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import struct
import sys
import time
from collections import Counter
from typing import Any

from dragonfork.bench import lo_capture
from dragonfork.loadtest.report import percentiles

SNAP_LENGTH = 2048  # IP + TCP headers and the start of the payload: an HTTP request's headers fit
_HEADERS_END = b"\r\n\r\n"
_SEQUENCE_SPACE = 1 << 32
_ACCEPT, _DROP = 12, 13


def _filter(port: int) -> list[lo_capture.Instruction]:
    """Classic BPF after lo's link header: TCP over IPv4 to or from ``port`` (the bench's servers listen on
    127.0.0.1), not the outgoing copy."""
    return [
        (0x20, 0, 0, lo_capture.SKF_AD_PKTTYPE),  # 0: A = the packet's type
        (0x15, _DROP - 2, 0, lo_capture.PACKET_OUTGOING),  # 1: outgoing copy → drop
        (0x30, 0, 0, lo_capture.LINK_HEADER),  # 2: A = IP byte 0
        (0x54, 0, 0, 0xF0),  # 3: A &= 0xf0 (IP version)
        (0x15, 0, _DROP - 5, 0x40),  # 4: IPv4 → 5, else drop
        (0x30, 0, 0, lo_capture.LINK_HEADER + 9),  # 5: A = IPv4 protocol
        (0x15, 0, _DROP - 7, 6),  # 6: TCP → 7, else drop
        (0xB1, 0, 0, lo_capture.LINK_HEADER),  # 7: X = IPv4 header length
        (0x48, 0, 0, lo_capture.LINK_HEADER),  # 8: A = TCP source port
        (0x15, _ACCEPT - 10, 0, port),  # 9: from the server → accept
        (0x48, 0, 0, lo_capture.LINK_HEADER + 2),  # 10: A = TCP destination port
        (0x15, _ACCEPT - 12, _DROP - 12, port),  # 11: to the server → accept, else drop
        (0x06, 0, 0, lo_capture.LINK_HEADER + SNAP_LENGTH),  # 12: accept the first SNAP_LENGTH bytes of IP
        (0x06, 0, 0, 0),  # 13: drop
    ]


@dataclasses.dataclass(slots=True)
class _Request:
    start: int  # TCP sequence number of its first byte
    length: int  # bytes: headers and body
    complete_at: int | None = None  # ns: the segment with its last byte arrived


class Exchanges:
    """POSTs to ``path`` and the responses to them, from the TCP segments of the server's connections
    (``segment``, in the order the kernel saw them): one request at a time per connection, as HTTP/1.1
    without pipelining has it."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self._request_line = b"POST " + path.encode()
        self._pending: dict[int, _Request] = {}  # client port → its POST awaiting an answer
        self.answer_ms: list[float] = []  # of the 201s
        self.statuses: Counter[int] = Counter()
        self.unpaired = 0

    def segment(self, at: int, source: int, destination: int, sequence: int, size: int, head: bytes) -> None:
        """One captured segment: kernel time ``at`` (ns), ports, sequence number, payload ``size`` and the
        start of the payload (``head``, what the snap length kept)."""
        if size == 0:
            return  # ACKs, SYN, FIN
        if destination == self.port:
            self._from_client(at, source, sequence, size, head)
        elif source == self.port:
            self._from_server(at, destination, head)

    def _from_client(self, at: int, client: int, sequence: int, size: int, head: bytes) -> None:
        if head.startswith(self._request_line):
            length = _request_length(head)
            if length is None:
                self.unpaired += 1
                self._pending.pop(client, None)
                return
            self._pending[client] = _Request(sequence, length)
        request = self._pending.get(client)
        if request is not None and request.complete_at is None:
            received = (sequence + size - request.start) % _SEQUENCE_SPACE
            if received >= request.length:
                request.complete_at = at

    def _from_server(self, at: int, client: int, head: bytes) -> None:
        if not head.startswith(b"HTTP/1."):
            return  # the rest of a response
        request = self._pending.pop(client, None)
        if request is None:
            return  # the answer to another request (a DELETE, a PATCH)
        if request.complete_at is None:
            self.unpaired += 1  # answered before it was all sent (an early refusal)
            return
        status = int(head[9:12]) if head[9:12].isdigit() else 0
        self.statuses[status] += 1
        if status == 201:
            self.answer_ms.append((at - request.complete_at) / 1e6)

    def figures(self) -> dict[str, Any]:
        return {
            "exchanges": sum(self.statuses.values()),
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "answer_ms": percentiles(self.answer_ms),
            "answers_ms": [round(value, 3) for value in self.answer_ms],
            "unpaired": self.unpaired,
        }


def _request_length(head: bytes) -> int | None:
    """Headers + ``Content-Length`` of the request starting ``head``; None when its headers are not all in
    ``head``."""
    end = head.find(_HEADERS_END)
    if end < 0:
        return None
    body = 0
    for line in head[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            body = int(value)
    return end + len(_HEADERS_END) + body


def capture(port: int, path: str, seconds: float) -> dict[str, Any]:
    """Follow the server's connections for ``seconds`` or until SIGTERM/SIGINT; the exchanges' figures."""
    stopped = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    exchanges = Exchanges(port, path)
    with lo_capture.open_capture(_filter(port)) as sock:
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while not stopped and time.monotonic() < deadline:
            try:
                captured, ancdata, _, _ = sock.recvmsg(
                    lo_capture.LINK_HEADER + SNAP_LENGTH, lo_capture.ANCILLARY_BYTES
                )
            except TimeoutError:
                continue
            data = captured[lo_capture.LINK_HEADER :]
            at = lo_capture.kernel_ns(ancdata)
            if len(data) < 40 or at is None:
                continue
            ip_header = (data[0] & 0x0F) * 4
            (total,) = struct.unpack_from("!H", data, 2)
            source, destination, sequence = struct.unpack_from("!HHI", data, ip_header)
            tcp_header = (data[ip_header + 12] >> 4) * 4
            payload = ip_header + tcp_header
            exchanges.segment(at, source, destination, sequence, total - payload, data[payload:])
        figures = exchanges.figures()
        figures["kernel_drops"] = lo_capture.kernel_drops(sock)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dragonfork.bench.signalling_latency")
    parser.add_argument("--port", type=int, required=True, help="the server's HTTP port (on 127.0.0.1)")
    parser.add_argument("--path", required=True, help="the WHEP endpoint's path: POSTs to it or below it")
    parser.add_argument("--seconds", type=float, default=600.0, help="at most this long")
    args = parser.parse_args(argv)
    print(json.dumps(capture(args.port, args.path, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
