"""The RTMP chunk stream: messages split into chunks and interleaved on one TCP connection.

``ChunkReader`` is sans-IO: ``feed`` it received bytes and it returns the complete messages. It implements
the four chunk header formats, 1-, 2- and 3-byte chunk stream ids, timestamp deltas, extended timestamps
(also on format-3 continuation chunks, as FFmpeg and the specification send them) and chunk-size changes.
Everything a peer can make it hold is bounded (message size, bytes buffered across unfinished messages), and
any violation raises ``ChunkError``: the session refuses that client and nothing else.

``ChunkWriter`` turns messages back into chunks with our own chunk size. It always starts a message with a
format-0 header (absolute timestamp): 11 bytes per message buys freedom from the delta-after-type-0
ambiguity that makes readers disagree.
"""

from __future__ import annotations

import dataclasses

DEFAULT_CHUNK_SIZE = 128
MAX_CHUNK_SIZE = 0x7FFFFFFF
EXTENDED_TIMESTAMP = 0xFFFFFF
TIMESTAMP_MASK = 0xFFFFFFFF

MAX_MESSAGE_SIZE = 4 * 1024 * 1024
"""The largest message accepted (a 4 Mbit/s stream's keyframes stay far below it)."""
MAX_BUFFERED = 16 * 1024 * 1024
"""Bytes held across every chunk stream's unfinished message at once."""


class ChunkError(ValueError):
    """The byte stream is not a valid (or acceptable) RTMP chunk stream."""


@dataclasses.dataclass(slots=True)
class Message:
    """One RTMP message: ``timestamp`` is the 32-bit RTMP timestamp in milliseconds (it wraps)."""

    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes
    chunk_stream: int = 0


@dataclasses.dataclass(slots=True)
class _ChunkStreamState:
    timestamp: int = 0
    delta: int = 0
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False
    partial: bytearray | None = None


class ChunkReader:
    """Reassembles messages from a peer's chunks; see the module docstring."""

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.max_message_size = max_message_size
        self.bytes_received = 0
        self._buffer = bytearray()
        self._streams: dict[int, _ChunkStreamState] = {}
        self._buffered = 0

    def set_chunk_size(self, size: int) -> None:
        """The peer's Set Chunk Size message (applies to the chunks after it)."""
        if not 1 <= size <= MAX_CHUNK_SIZE:
            raise ChunkError(f"chunk size {size} is outside 1..{MAX_CHUNK_SIZE}")
        self.chunk_size = size

    def abort(self, chunk_stream: int) -> None:
        """The peer's Abort message: drop the unfinished message of that chunk stream."""
        state = self._streams.get(chunk_stream)
        if state is not None and state.partial is not None:
            self._buffered -= len(state.partial)
            state.partial = None

    def feed(self, data: bytes) -> list[Message]:
        """Add received bytes; return every message they complete, in order.

        A Set Chunk Size message changes how the chunks after it are read, so the caller must apply it
        (``set_chunk_size``) before feeding more bytes: ``feed`` therefore stops right after returning one.
        Call ``feed(b"")`` to continue with what is still buffered.
        """
        self.bytes_received += len(data)
        self._buffer += data
        messages: list[Message] = []
        offset = 0
        buffer = self._buffer
        try:
            while True:
                consumed, message = self._read_chunk(buffer, offset)
                if consumed == 0:
                    break
                offset += consumed
                if message is not None:
                    messages.append(message)
                    if message.type_id == 1:  # Set Chunk Size: the caller applies it first
                        break
        finally:
            del buffer[:offset]
        return messages

    @property
    def pending(self) -> bool:
        """Bytes are buffered that may already hold complete chunks (after a Set Chunk Size stop)."""
        return bool(self._buffer)

    def _read_chunk(self, buffer: bytearray, offset: int) -> tuple[int, Message | None]:
        """One chunk at ``offset``: (bytes used, the message it completes or None); (0, None) if short."""
        available = len(buffer) - offset
        if available < 1:
            return 0, None
        first = buffer[offset]
        fmt = first >> 6
        csid = first & 0x3F
        position = offset + 1
        if csid == 0:
            if available < 2:
                return 0, None
            csid = 64 + buffer[position]
            position += 1
        elif csid == 1:
            if available < 3:
                return 0, None
            csid = 64 + buffer[position] + (buffer[position + 1] << 8)
            position += 2
        header_size = (11, 7, 3, 0)[fmt]
        if len(buffer) < position + header_size:
            return 0, None
        state = self._streams.get(csid)
        if state is None:
            if fmt != 0:
                raise ChunkError(f"chunk stream {csid} starts with a format-{fmt} header (needs format 0)")
            if len(self._streams) >= 64:
                raise ChunkError("more than 64 chunk streams in use")
            state = _ChunkStreamState()
        starting = state.partial is None
        if fmt == 3 and not starting:
            timestamp_field = EXTENDED_TIMESTAMP if state.extended else 0
        elif fmt == 3:
            timestamp_field = EXTENDED_TIMESTAMP if state.extended else state.delta
        else:
            timestamp_field = int.from_bytes(buffer[position : position + 3], "big")
        length, type_id, stream_id = state.length, state.type_id, state.stream_id
        if fmt <= 1:
            length = int.from_bytes(buffer[position + 3 : position + 6], "big")
            type_id = buffer[position + 6]
        if fmt == 0:
            stream_id = int.from_bytes(buffer[position + 7 : position + 11], "little")
        if fmt != 3 and not starting:
            raise ChunkError(
                f"chunk stream {csid}: a new format-{fmt} header while a message is unfinished "
                f"({len(state.partial or b'')} of {state.length} bytes)"
            )
        position += header_size
        extended = timestamp_field == EXTENDED_TIMESTAMP
        if extended:
            if len(buffer) < position + 4:
                return 0, None
            timestamp_field = int.from_bytes(buffer[position : position + 4], "big")
            position += 4
        if starting and length > self.max_message_size:
            raise ChunkError(f"message of {length} bytes exceeds the limit of {self.max_message_size}")
        remaining = length - (0 if starting else len(state.partial or b""))
        take = min(self.chunk_size, remaining)
        if len(buffer) < position + take:
            return 0, None

        # The chunk is complete: commit the header state.
        if starting:
            if fmt == 0:
                state.timestamp = timestamp_field
                state.delta = timestamp_field
            elif fmt in (1, 2):
                state.delta = timestamp_field
                state.timestamp = (state.timestamp + timestamp_field) & TIMESTAMP_MASK
            else:  # format 3 starting a message: the previous delta again (after format 0, its timestamp)
                state.timestamp = (state.timestamp + timestamp_field) & TIMESTAMP_MASK
            if fmt != 3:
                state.extended = extended
            state.length, state.type_id, state.stream_id = length, type_id, stream_id
            state.partial = bytearray()
        self._streams[csid] = state
        partial = state.partial
        assert partial is not None
        if self._buffered + take > MAX_BUFFERED:
            raise ChunkError(f"more than {MAX_BUFFERED} bytes of unfinished messages")
        partial += buffer[position : position + take]
        self._buffered += take
        position += take
        if len(partial) < length:
            return position - offset, None
        state.partial = None
        self._buffered -= len(partial)
        message = Message(type_id, stream_id, state.timestamp, bytes(partial), csid)
        return position - offset, message


class ChunkWriter:
    """Splits messages into chunks of ``chunk_size`` bytes (see the module docstring)."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size

    def encode(self, message: Message) -> bytes:
        timestamp = message.timestamp & TIMESTAMP_MASK
        extended = timestamp >= EXTENDED_TIMESTAMP
        header_timestamp = EXTENDED_TIMESTAMP if extended else timestamp
        extension = timestamp.to_bytes(4, "big") if extended else b""
        csid = message.chunk_stream
        payload = message.payload
        parts = [
            _basic_header(0, csid),
            header_timestamp.to_bytes(3, "big"),
            len(payload).to_bytes(3, "big"),
            bytes([message.type_id]),
            message.stream_id.to_bytes(4, "little"),
            extension,
        ]
        size = self.chunk_size
        continuation = _basic_header(3, csid) + extension
        for start in range(0, max(len(payload), 1), size):
            if start:
                parts.append(continuation)
            parts.append(payload[start : start + size])
        return b"".join(parts)


def _basic_header(fmt: int, csid: int) -> bytes:
    if 2 <= csid <= 63:
        return bytes([(fmt << 6) | csid])
    if 64 <= csid <= 319:
        return bytes([fmt << 6, csid - 64])
    if 320 <= csid <= 65599:
        rest = csid - 64
        return bytes([(fmt << 6) | 1, rest & 0xFF, rest >> 8])
    raise ValueError(f"chunk stream id {csid} is outside 2..65599")
