"""RTMP message types and the protocol-control, user-control and command messages the server sends.

Message stream 0 carries the connection's control and ``connect``/``createStream`` commands; the stream id
``createStream`` hands out (always 1: one stream per connection is all publishers and players use) carries
``publish``/``play``, their ``onStatus`` replies and the media.
"""

from __future__ import annotations

import struct
from typing import Any

from dragonfork.servers.rtmp import amf0
from dragonfork.servers.rtmp.chunks import Message

SET_CHUNK_SIZE = 1
ABORT = 2
ACKNOWLEDGEMENT = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
DATA_AMF3 = 15
COMMAND_AMF3 = 17
DATA_AMF0 = 18
COMMAND_AMF0 = 20

USER_STREAM_BEGIN = 0
USER_PING_REQUEST = 6
USER_PING_RESPONSE = 7

CONTROL_CHUNK_STREAM = 2
COMMAND_CHUNK_STREAM = 3
DATA_CHUNK_STREAM = 5
AUDIO_CHUNK_STREAM = 6
VIDEO_CHUNK_STREAM = 7

MEDIA_STREAM_ID = 1


def control(type_id: int, payload: bytes) -> Message:
    return Message(type_id, 0, 0, payload, CONTROL_CHUNK_STREAM)


def set_chunk_size(size: int) -> Message:
    return control(SET_CHUNK_SIZE, struct.pack(">I", size))


def window_ack_size(size: int) -> Message:
    return control(WINDOW_ACK_SIZE, struct.pack(">I", size))


def set_peer_bandwidth(size: int) -> Message:
    return control(SET_PEER_BANDWIDTH, struct.pack(">IB", size, 2))  # 2: dynamic


def acknowledgement(sequence: int) -> Message:
    return control(ACKNOWLEDGEMENT, struct.pack(">I", sequence & 0xFFFFFFFF))


def user_control(event: int, value: int) -> Message:
    return control(USER_CONTROL, struct.pack(">HI", event, value))


def command(name: str, transaction: float, *args: Any, stream_id: int = 0) -> Message:
    payload = amf0.encode_all(name, transaction, *args)
    return Message(COMMAND_AMF0, stream_id, 0, payload, COMMAND_CHUNK_STREAM)


def status(level: str, code: str, description: str) -> Message:
    """``onStatus`` on the media stream: ``level`` is "status" or "error"."""
    info = {"level": level, "code": code, "description": description}
    return command("onStatus", 0, None, info, stream_id=MEDIA_STREAM_ID)


def data(name: str, properties: dict[str, Any], timestamp: int = 0) -> Message:
    """A script-data message (``onMetaData``, ``|RtmpSampleAccess``) on the media stream."""
    payload = amf0.encode(name) + amf0.encode_ecma_array(properties)
    return Message(DATA_AMF0, MEDIA_STREAM_ID, timestamp, payload, DATA_CHUNK_STREAM)


def parse_uint32(payload: bytes, what: str) -> int:
    if len(payload) < 4:
        raise ValueError(f"{what} message has {len(payload)} bytes, needs 4")
    return int.from_bytes(payload[:4], "big")
