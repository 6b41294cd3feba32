"""How a stream's media should reach a WebRTC worker: one message per frame, or one datagram per RTP packet.

``python -m dragonfork.bench.worker_feed [--frames 30000] [--frame-bytes 8300]`` forks a receiver and sends it
frames of a 2 Mbit/s 30 fps stream (8,300 bytes, 7 RTP packets of at most 1,200 bytes) as fast as it
takes them, both ways: (a) per frame, as ``servers/whep/channel.py`` frames them, on a Unix stream socket
(what the workers use); (b) per packet, one UDP datagram each on loopback. It prints the CPU per RTP packet's
worth of media in the sending process (the server) and in the receiving one (a worker). Plain blocking
sockets: the figures are the socket and encoding cost, without Trio's scheduling on either side.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Callable

from dragonfork.servers.whep.channel import frame_message
from dragonfork.stream.frames import MediaFrame

PACKET_BYTES = 1200


def _frame(size: int) -> MediaFrame:
    return MediaFrame("video", b"\0" * size, 0, 90_000, False, -(-size // PACKET_BYTES), size, 0.0)


def _receive_stream(sock: socket.socket, frames: int) -> None:
    for _ in range(frames):
        header = _read_exactly(sock, 4)
        _read_exactly(sock, int.from_bytes(header, "big"))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    parts, got = [], 0
    while got < size:
        part = sock.recv(size - got)
        if not part:
            raise EOFError
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _run(label: str, send: Callable[[], None], receive: Callable[[], None]) -> tuple[str, float, float]:
    """Fork: the child receives (and reports its CPU through a pipe), the parent sends."""
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        started = time.process_time()
        receive()
        os.write(ready_write, f"{time.process_time() - started:.9f}".encode())
        os._exit(0)
    started = time.process_time()
    send()
    sender_cpu = time.process_time() - started
    receiver_cpu = float(os.read(ready_read, 64))
    os.waitpid(pid, 0)
    return label, sender_cpu, receiver_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30_000)
    parser.add_argument("--frame-bytes", type=int, default=8300)
    args = parser.parse_args()
    frame = _frame(args.frame_bytes)
    packets_per_frame = frame.packet_count
    frames = args.frames
    results = []

    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in (here, there):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)

    def send_frames() -> None:
        for _ in range(frames):
            message = frame_message(1, frame)
            here.sendall(len(message).to_bytes(4, "big") + message)

    results.append(_run("per frame, Unix stream", send_frames, lambda: _receive_stream(there, frames)))
    here.close()
    there.close()

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    receiver.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    packet = b"\0" * PACKET_BYTES
    total_packets = frames * packets_per_frame

    def send_packets() -> None:
        for index in range(total_packets):
            sender.send(packet)
            if index % 64 == 63:
                time.sleep(0)  # let the receiver drain: loopback drops what does not fit its buffer

    def receive_packets() -> None:
        receiver.settimeout(2.0)
        try:
            for _ in range(total_packets):
                receiver.recv(2048)
        except TimeoutError:
            pass  # some were dropped: the CPU per packet is still per packet sent

    results.append(_run("per packet, UDP loopback", send_packets, receive_packets))
    print(f"{frames} frames of {args.frame_bytes} bytes ({packets_per_frame} RTP packets each)")
    for label, sender_cpu, receiver_cpu in results:
        per_packet = 1e6 / (frames * packets_per_frame)
        print(
            f"{label:26s} server {sender_cpu * per_packet:5.2f} us/packet, "
            f"worker {receiver_cpu * per_packet:5.2f} us/packet"
        )


if __name__ == "__main__":
    main()
