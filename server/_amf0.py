"""AMF0, the value encoding of RTMP commands and metadata.

This module parses untrusted input: ``decode_amf0_untrusted`` takes bytes
from the network, bounds nesting depth and item counts, never allocates from
a declared length (strings are slices of the input, arrays grow one decoded
value at a time) and raises only `Amf0Error`.

Python values: number <-> float (ints encode as numbers), boolean <-> bool,
string and long string <-> str, object <-> dict, ECMA array <-> `EcmaArray`
(a dict), strict array <-> list (tuples encode as lists), null <-> None,
undefined <-> `UNDEFINED`; a date decodes to its milliseconds as a float.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

__all__ = [
    "UNDEFINED",
    "Amf0Error",
    "Amf0Limits",
    "EcmaArray",
    "decode_amf0_untrusted",
    "encode_amf0",
]

NUMBER = 0x00
BOOLEAN = 0x01
STRING = 0x02
OBJECT = 0x03
NULL = 0x05
UNDEFINED_MARKER = 0x06
REFERENCE = 0x07
ECMA_ARRAY = 0x08
OBJECT_END = 0x09
STRICT_ARRAY = 0x0A
DATE = 0x0B
LONG_STRING = 0x0C
XML_DOCUMENT = 0x0F
TYPED_OBJECT = 0x10
AVMPLUS = 0x11

_DOUBLE = struct.Struct(">d")


class Amf0Error(ValueError):
    """The peer sent AMF0 that is malformed, of a type RTMP publishers do not
    use, or beyond the limits."""


class _Undefined:
    """The AMF0 undefined value (distinct from null)."""

    _instance: "_Undefined | None" = None

    def __new__(cls) -> "_Undefined":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED = _Undefined()


class EcmaArray(dict):
    """An AMF0 ECMA array (associative array), as onMetaData carries."""


@dataclass(frozen=True)
class Amf0Limits:
    """Bounds on one decoded message."""

    max_depth: int = 16
    """Objects and arrays nested deeper than this are refused."""
    max_items: int = 1024
    """Values (including object properties) one message may hold."""


def encode_amf0(*values: Any) -> bytes:
    """The AMF0 encoding of ``values``, one after another."""
    out = bytearray()
    for value in values:
        _encode(out, value)
    return bytes(out)


def _encode_key(out: bytearray, key: str) -> None:
    raw = key.encode()
    if len(raw) > 0xFFFF:
        raise ValueError(f"AMF0 property name of {len(raw)} bytes is too long")
    out += struct.pack(">H", len(raw)) + raw


def _encode(out: bytearray, value: Any) -> None:
    if value is None:
        out.append(NULL)
    elif value is UNDEFINED:
        out.append(UNDEFINED_MARKER)
    elif isinstance(value, bool):
        out += bytes((BOOLEAN, 1 if value else 0))
    elif isinstance(value, (int, float)):
        out.append(NUMBER)
        out += _DOUBLE.pack(float(value))
    elif isinstance(value, str):
        raw = value.encode()
        if len(raw) <= 0xFFFF:
            out += struct.pack(">BH", STRING, len(raw)) + raw
        else:
            out += struct.pack(">BI", LONG_STRING, len(raw)) + raw
    elif isinstance(value, dict):
        if isinstance(value, EcmaArray):
            out += struct.pack(">BI", ECMA_ARRAY, len(value))
        else:
            out.append(OBJECT)
        for key, item in value.items():
            _encode_key(out, str(key))
            _encode(out, item)
        out += b"\x00\x00\x09"
    elif isinstance(value, (list, tuple)):
        out += struct.pack(">BI", STRICT_ARRAY, len(value))
        for item in value:
            _encode(out, item)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


class _Decoder:
    def __init__(self, data: bytes, limits: Amf0Limits) -> None:
        self.data = data
        self.pos = 0
        self.limits = limits
        self.items = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise Amf0Error(f"truncated: {n} bytes needed at offset {self.pos}, "
                            f"{len(self.data) - self.pos} left")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def text(self, length: int) -> str:
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError:
            raise Amf0Error(f"string at offset {self.pos - length} is not UTF-8") from None

    def count_item(self) -> None:
        self.items += 1
        if self.items > self.limits.max_items:
            raise Amf0Error(f"more than {self.limits.max_items} values in one message")

    def value(self, depth: int) -> Any:
        self.count_item()
        marker = self.take(1)[0]
        if marker == NUMBER:
            return _DOUBLE.unpack(self.take(8))[0]
        if marker == BOOLEAN:
            return self.take(1)[0] != 0
        if marker == STRING:
            return self.text(self.u16())
        if marker in (LONG_STRING, XML_DOCUMENT):
            return self.text(self.u32())
        if marker == NULL:
            return None
        if marker == UNDEFINED_MARKER:
            return UNDEFINED
        if marker == DATE:
            milliseconds = _DOUBLE.unpack(self.take(8))[0]
            self.take(2)  # time zone, always 0
            return milliseconds
        if marker in (OBJECT, ECMA_ARRAY, TYPED_OBJECT):
            if depth >= self.limits.max_depth:
                raise Amf0Error(f"nested deeper than {self.limits.max_depth} levels")
            if marker == ECMA_ARRAY:
                self.u32()  # the declared count is a hint; the end marker ends it
                result: dict = EcmaArray()
            else:
                if marker == TYPED_OBJECT:
                    self.text(self.u16())  # class name
                result = {}
            return self.properties(result, depth + 1)
        if marker == STRICT_ARRAY:
            if depth >= self.limits.max_depth:
                raise Amf0Error(f"nested deeper than {self.limits.max_depth} levels")
            count = self.u32()
            # Each value takes at least one byte: a count beyond what is left
            # is a lie, refused before any work.
            if count > len(self.data) - self.pos:
                raise Amf0Error(f"strict array declares {count} values but "
                                f"{len(self.data) - self.pos} bytes are left")
            return [self.value(depth + 1) for _ in range(count)]
        if marker == OBJECT_END:
            raise Amf0Error(f"object end marker outside an object at offset {self.pos - 1}")
        if marker == REFERENCE:
            raise Amf0Error("AMF0 references are not supported")
        if marker == AVMPLUS:
            raise Amf0Error("AMF3 values are not supported; send AMF0")
        raise Amf0Error(f"unknown AMF0 type marker 0x{marker:02x} at offset {self.pos - 1}")

    def properties(self, result: dict, depth: int) -> dict:
        # Each round consumes at least three bytes, so this ends.
        while True:
            key = self.text(self.u16())
            if key == "" and self.data[self.pos:self.pos + 1] == bytes((OBJECT_END,)):
                self.pos += 1
                return result
            result[key] = self.value(depth)


def decode_amf0_untrusted(data: bytes | bytearray | memoryview,
                          limits: Amf0Limits = Amf0Limits()) -> list[Any]:
    """Every AMF0 value in ``data``, in order. Raises Amf0Error for anything
    malformed or beyond ``limits``."""
    decoder = _Decoder(bytes(data), limits)
    values = []
    while decoder.pos < len(decoder.data):
        values.append(decoder.value(0))
    return values
