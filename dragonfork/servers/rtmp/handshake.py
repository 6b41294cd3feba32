"""The RTMP handshake, server side: C0 C1 in, S0 S1 S2 out, C2 in.

We answer with the plain handshake (S1's version field zero): FFmpeg's and librtmp's clients (OBS) accept it
and only verify the Flash-player digest scheme when the server claims a version in S1, so no digest keys are
needed. S2 echoes C1, as the specification asks; C2's contents are not checked (clients differ).
"""

from __future__ import annotations

import os
import struct

RTMP_VERSION = 3
HANDSHAKE_SIZE = 1536


class HandshakeError(ValueError):
    """The client's handshake bytes are not RTMP."""


def check_version(c0: int) -> None:
    """Refuse a first byte that is not RTMP's version 3 (checked before waiting for the 1536 bytes of C1)."""
    if c0 != RTMP_VERSION:
        raise HandshakeError(
            f"handshake version byte is {c0} (0x{c0:02x}), RTMP uses 3; "
            "not an RTMP client (an rtmps:// client on the plain port?)"
        )


def server_reply(c0: int, c1: bytes, uptime_ms: int) -> bytes:
    """S0 + S1 + S2 for a client that sent ``c0`` and ``c1``; raises ``HandshakeError`` for a non-RTMP C0."""
    check_version(c0)
    if len(c1) != HANDSHAKE_SIZE:
        raise HandshakeError(f"C1 has {len(c1)} bytes, expected {HANDSHAKE_SIZE}")
    s1 = struct.pack(">II", uptime_ms & 0xFFFFFFFF, 0) + os.urandom(HANDSHAKE_SIZE - 8)
    return bytes([RTMP_VERSION]) + s1 + c1
