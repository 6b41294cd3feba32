"""The wire between the WHEP service and its worker processes: length-prefixed messages on socketpairs.

Each worker has two Unix stream sockets to the server. The *control* channel carries JSON objects both ways
(offers, trickle fragments, closes; answers, ended sessions, statistics). The *media* channel carries the
streams the worker's viewers watch, one way, in order: ``open`` (a stream's name and codecs), one message
per frame (a fixed header + the frame's bytes, so each frame crosses once per worker however many viewers
it has there), ``end``. Keeping media apart keeps an offer from waiting behind a burst of keyframes.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import trio

from dragonfork.stream.frames import MediaFrame

_LENGTH = struct.Struct("!I")
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # a keyframe of a 4K stream fits; anything larger is a broken peer

MEDIA_OPEN, MEDIA_FRAME, MEDIA_END = 1, 2, 3
_KINDS = ("video", "audio")
# type, stream id, kind, keyframe, timestamp, clock rate, packet count, size, composition offset
_FRAME = struct.Struct("!BIB?qIHIi")
_STREAM = struct.Struct("!BI")


class ChannelClosed(Exception):
    """The other end closed its socket or sent something that is not a message (the worker is gone)."""


class MessageChannel:
    """One socket of a socketpair as a sequence of messages (4-byte big-endian length + payload).

    ``send`` may be called from several tasks: whole messages never interleave.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._buffer = bytearray()
        self._send_lock = trio.Lock()

    async def send(self, payload: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send_all(_LENGTH.pack(len(payload)) + payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ChannelClosed(str(exc)) from None

    async def receive(self) -> bytes:
        buffer = self._buffer
        while True:
            if len(buffer) >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(buffer)
                if size > MAX_MESSAGE_BYTES:
                    raise ChannelClosed(f"a message of {size} bytes (more than {MAX_MESSAGE_BYTES})")
                end = _LENGTH.size + size
                if len(buffer) >= end:
                    payload = bytes(buffer[_LENGTH.size : end])
                    del buffer[:end]
                    return payload
            try:
                data = await self._stream.receive_some(256 * 1024)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ChannelClosed(str(exc)) from None
            if not data:
                raise ChannelClosed("the other end closed the channel")
            buffer += data

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send(json.dumps(message, separators=(",", ":")).encode())

    async def receive_json(self) -> dict[str, Any]:
        payload = await self.receive()
        try:
            message = json.loads(payload)
        except ValueError as exc:
            raise ChannelClosed(f"a control message that is not JSON: {exc}") from None
        if not isinstance(message, dict):
            raise ChannelClosed("a control message that is not a JSON object")
        return message

    async def aclose(self) -> None:
        await self._stream.aclose()


# --- media messages --------------------------------------------------------------------------------------


def stream_opened(stream_id: int, description: dict[str, Any]) -> bytes:
    return _STREAM.pack(MEDIA_OPEN, stream_id) + json.dumps(description).encode()


def stream_ended(stream_id: int) -> bytes:
    return _STREAM.pack(MEDIA_END, stream_id)


def frame_message(stream_id: int, frame: MediaFrame) -> bytes:
    header = _FRAME.pack(
        MEDIA_FRAME,
        stream_id,
        _KINDS.index(frame.kind),
        frame.keyframe,
        frame.timestamp,
        frame.clock_rate,
        min(frame.packet_count, 0xFFFF),
        frame.size,
        frame.composition_offset,
    )
    return header + frame.data


def media_type(message: bytes) -> tuple[int, int]:
    """(message type, stream id) of a media message."""
    if len(message) < _STREAM.size:
        raise ChannelClosed("a media message shorter than its header")
    kind, stream_id = _STREAM.unpack_from(message)
    return kind, stream_id


def opened_description(message: bytes) -> dict[str, Any]:
    description = json.loads(message[_STREAM.size :])
    if not isinstance(description, dict):
        raise ChannelClosed("a stream description that is not a JSON object")
    return description


def frame_of(message: bytes, received_at: float) -> MediaFrame:
    """The frame of a ``MEDIA_FRAME`` message, as arrived at ``received_at`` (the worker's clock)."""
    _, _, kind, keyframe, timestamp, clock_rate, packets, size, offset = _FRAME.unpack_from(message)
    return MediaFrame(
        kind=_KINDS[kind],  # type: ignore[arg-type]
        data=message[_FRAME.size :],
        timestamp=timestamp,
        clock_rate=clock_rate,
        keyframe=keyframe,
        packet_count=packets,
        size=size,
        received_at=received_at,
        composition_offset=offset,
    )
