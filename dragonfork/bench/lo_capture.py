"""A packet socket on ``lo`` whose packets the kernel timestamps: what the bench's wire measurements read.

Everything the bench measures on the wire (the server hop, WHEP POST → 201) crosses this machine's loopback
device, so one ``AF_PACKET`` socket on ``lo`` sees both directions, each packet stamped by the kernel
(``SO_TIMESTAMPNS``) with one clock, however busy the server or the clients are in user space. A classic BPF
program keeps what the measurement needs. Loopback shows every packet twice, going out and coming in; the
socket asks for the incoming copy only (``PACKET_IGNORE_OUTGOING``), so that the kernel does not clone
every packet a sender sends for it (a cost on the measured server's sends), and the filters drop an
outgoing copy too, for kernels without that option. Needs root.
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import struct
from collections.abc import Iterator

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
SO_ATTACH_FILTER = 26
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23  # Linux ≥ 4.20
LINK_HEADER = 14  # lo's (Ethernet) header, which a SOCK_RAW packet socket sees
SKF_AD_PKTTYPE = 0xFFFFF004  # BPF: A = the packet's type (4: PACKET_OUTGOING)
PACKET_OUTGOING = 4

_TIMESPEC = struct.Struct("qq")
ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size)

Instruction = tuple[int, int, int, int]  # (code, jump if true, jump if false, k) of classic BPF


@contextlib.contextmanager
def open_capture(program: list[Instruction], *, vnet_header: bool = False) -> Iterator[socket.socket]:
    """A packet socket on ``lo`` filtered by ``program``, timestamping, with a large buffer; with
    ``vnet_header`` each packet starts with its virtio_net_hdr (a segmented send's segment size)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 * 1024 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        if vnet_header:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        code = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
        buffer = ctypes.create_string_buffer(code)
        sock.setsockopt(
            socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(program), ctypes.addressof(buffer))
        )
        sock.bind(("lo", ETH_P_ALL))
        sock.settimeout(0.2)
        yield sock
    finally:
        sock.close()


def kernel_ns(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The kernel's receive timestamp of a packet (``recvmsg``'s ancillary data), in nanoseconds."""
    if not ancdata:
        return None
    seconds, nanoseconds = _TIMESPEC.unpack(ancdata[0][2][: _TIMESPEC.size])
    return seconds * 1_000_000_000 + nanoseconds


def kernel_drops(sock: socket.socket) -> int:
    """Packets the kernel dropped because the socket's buffer was full (since it was opened)."""
    _, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    return int(drops)
