"""AMF0, the value encoding of RTMP commands and script data (``connect``, ``publish``, ``onMetaData``).

Only what RTMP clients send is decoded: numbers, booleans, strings (short and long), objects, ECMA and strict
arrays, null, undefined and dates. Decoding is bounded (nesting depth, element count) and raises
``Amf0Error`` for anything malformed, so a hostile payload costs at most one refused message.
"""

from __future__ import annotations

import struct
from typing import Any

NUMBER = 0x00
BOOLEAN = 0x01
STRING = 0x02
OBJECT = 0x03
NULL = 0x05
UNDEFINED = 0x06
ECMA_ARRAY = 0x08
OBJECT_END = 0x09
STRICT_ARRAY = 0x0A
DATE = 0x0B
LONG_STRING = 0x0C

MAX_DEPTH = 16
MAX_ELEMENTS = 4096

_DOUBLE = struct.Struct(">d")


class Amf0Error(ValueError):
    """The bytes are not valid AMF0 (or exceed the decoder's bounds)."""


class _Reader:
    __slots__ = ("data", "offset", "elements")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = bytes(data)
        self.offset = 0
        self.elements = 0

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise Amf0Error(f"truncated AMF0 value at byte {self.offset}")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def utf8(self, size: int) -> str:
        try:
            return self.take(size).decode("utf-8")
        except UnicodeDecodeError:
            raise Amf0Error(f"AMF0 string before byte {self.offset} is not UTF-8") from None

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise Amf0Error(f"AMF0 values nested deeper than {MAX_DEPTH}")
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise Amf0Error(f"more than {MAX_ELEMENTS} AMF0 values in one message")
        marker = self.u8()
        if marker == NUMBER:
            return _DOUBLE.unpack(self.take(8))[0]
        if marker == BOOLEAN:
            return self.u8() != 0
        if marker == STRING:
            return self.utf8(self.u16())
        if marker == LONG_STRING:
            return self.utf8(self.u32())
        if marker == OBJECT:
            return self.properties(depth)
        if marker == ECMA_ARRAY:
            self.take(4)  # the advisory count; the properties end with the end marker anyway
            return self.properties(depth)
        if marker == STRICT_ARRAY:
            count = self.u32()
            if count > MAX_ELEMENTS:
                raise Amf0Error(f"AMF0 strict array of {count} elements exceeds {MAX_ELEMENTS}")
            return [self.value(depth + 1) for _ in range(count)]
        if marker in (NULL, UNDEFINED):
            return None
        if marker == DATE:
            milliseconds = _DOUBLE.unpack(self.take(8))[0]
            self.take(2)  # time zone, unused by every encoder
            return milliseconds
        raise Amf0Error(f"unsupported AMF0 type marker 0x{marker:02x} at byte {self.offset - 1}")

    def properties(self, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while True:
            key = self.utf8(self.u16())
            if not key and self.data[self.offset : self.offset + 1] == bytes([OBJECT_END]):
                self.offset += 1
                return result
            result[key] = self.value(depth + 1)


def decode_all(data: bytes | memoryview) -> list[Any]:
    """Every AMF0 value in ``data``, in order (a command: name, transaction id, arguments...)."""
    reader = _Reader(data)
    values = []
    while reader.offset < len(reader.data):
        values.append(reader.value(0))
    return values


def encode(value: Any) -> bytes:
    """One value as AMF0: None → null, bool, int/float → number, str, dict → object, list → strict array."""
    if value is None:
        return bytes([NULL])
    if isinstance(value, bool):
        return bytes([BOOLEAN, int(value)])
    if isinstance(value, (int, float)):
        return bytes([NUMBER]) + _DOUBLE.pack(float(value))
    if isinstance(value, str):
        raw = value.encode()
        if len(raw) > 0xFFFF:
            return bytes([LONG_STRING]) + len(raw).to_bytes(4, "big") + raw
        return bytes([STRING]) + len(raw).to_bytes(2, "big") + raw
    if isinstance(value, dict):
        return bytes([OBJECT]) + _encode_properties(value)
    if isinstance(value, (list, tuple)):
        return bytes([STRICT_ARRAY]) + len(value).to_bytes(4, "big") + b"".join(encode(v) for v in value)
    raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


def encode_ecma_array(properties: dict[str, Any]) -> bytes:
    """An ECMA array (what ``onMetaData`` carries)."""
    return bytes([ECMA_ARRAY]) + len(properties).to_bytes(4, "big") + _encode_properties(properties)


def encode_all(*values: Any) -> bytes:
    return b"".join(encode(value) for value in values)


def _encode_properties(properties: dict[str, Any]) -> bytes:
    parts = []
    for key, value in properties.items():
        raw = key.encode()
        parts.append(len(raw).to_bytes(2, "big") + raw + encode(value))
    parts.append(b"\x00\x00" + bytes([OBJECT_END]))
    return b"".join(parts)
