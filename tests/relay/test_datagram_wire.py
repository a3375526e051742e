"""The datagram mode's wire, sans-IO: control messages and NACK datagrams, good and bad."""

import msgpack
import pytest
from shopcast.server._datagram import (
    ControlDecoder,
    DatagramProtocolError,
    Ended,
    Subscribe,
    Subscribed,
    SubscribeError,
    Unsubscribe,
    decode_control_message_untrusted,
    decode_nack_untrusted,
    encode_control_message,
    encode_nack,
)
from shopcast.server.moq import ErrorCode

MESSAGES = [
    Subscribe(0, "demo", "video"),
    Subscribe(2**53 - 1, "room/ü", "catalog.json"),
    Unsubscribe(7),
    Subscribed(id=1, track_id=65535, video=True, payload_bytes=1152, fec_k=8, max_nack_seqs=256),
    SubscribeError(3, ErrorCode.NOT_FOUND, "no such track"),
    Ended(4),
]


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_messages_round_trip_in_every_chunk_size(kind):
    stream = b"".join(encode_control_message(m) for m in MESSAGES)
    for chunk in range(1, len(stream) + 1):
        decoder = ControlDecoder(4096)
        out = []
        for start in range(0, len(stream), chunk):
            out += decoder.feed_untrusted(kind(stream[start:start + chunk]))
        assert out == MESSAGES
        assert decoder.buffered_bytes == 0


def _body(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@pytest.mark.parametrize(("body", "code", "reason"), [
    (b"\xc1", ErrorCode.DECODE, "not msgpack"),
    (_body({"type": "subscribe", "id": 1, "broadcast": "a", "track": "b"}) + b"\x00", ErrorCode.DECODE,
     "not msgpack"),
    (b"\x91" * 5000 + b"\x00", ErrorCode.DECODE, "not msgpack"),
    (b"\xdd\xff\xff\xff\xff", ErrorCode.DECODE, "not msgpack"),          # array of 2**32-1 items
    (b"\xdb\x7f\xff\xff\xff", ErrorCode.DECODE, "not msgpack"),          # str of 2 GiB
    (_body([1, 2]), ErrorCode.PROTOCOL_VIOLATION, "must be a map"),
    (_body({"type": "warp"}), ErrorCode.PROTOCOL_VIOLATION, "unknown control message type"),
    (_body({"id": 1}), ErrorCode.PROTOCOL_VIOLATION, "unknown control message type"),
    (_body({"type": "unsubscribe"}), ErrorCode.PROTOCOL_VIOLATION, "id is missing"),
    (_body({"type": "unsubscribe", "id": True}), ErrorCode.PROTOCOL_VIOLATION, "id must be int"),
    (_body({"type": "unsubscribe", "id": -1}), ErrorCode.PROTOCOL_VIOLATION, "from 0 to 2**53-1"),
    (_body({"type": "unsubscribe", "id": 2**53}), ErrorCode.PROTOCOL_VIOLATION, "from 0 to 2**53-1"),
    (_body({"type": "unsubscribe", "id": 1, "x": 1}), ErrorCode.PROTOCOL_VIOLATION, "unknown keys"),
    (_body({"type": "subscribe", "id": 1, "broadcast": b"a", "track": "b"}), ErrorCode.DECODE, "not msgpack"),
    (_body({"type": "subscribe", "id": 1, "broadcast": ["a"], "track": "b"}), ErrorCode.PROTOCOL_VIOLATION,
     "broadcast must be str"),
    (_body({"type": "subscribe", "id": 1, "broadcast": "a" * 2000, "track": "b"}),
     ErrorCode.PROTOCOL_VIOLATION, "longer than"),
    (_body({1: 2}), ErrorCode.DECODE, "not msgpack"),
    (_body({"type": "subscribed", "id": 1, "track_id": 70000, "video": False, "payload_bytes": 1152,
            "fec_k": 8, "max_nack_seqs": 1}), ErrorCode.PROTOCOL_VIOLATION, "16 bits"),
])
def test_malformed_messages_are_refused_with_a_reason(body, code, reason):
    with pytest.raises(DatagramProtocolError) as error:
        decode_control_message_untrusted(body, max_message_bytes=4096 if len(body) <= 4096 else 8192)
    assert error.value.code == code
    assert reason in error.value.reason


def test_a_huge_declared_length_is_refused_before_buffering():
    decoder = ControlDecoder(4096)
    with pytest.raises(DatagramProtocolError) as error:
        decoder.feed_untrusted(b"\x00\x00\x10\x01")
    assert error.value.code == ErrorCode.BOUNDS_EXCEEDED
    assert "4097" in error.value.reason


def test_nacks_round_trip_and_malformed_ones_are_refused():
    assert decode_nack_untrusted(encode_nack(513, [0, 1, 65535]), max_seqs=3) == (513, [0, 1, 65535])
    assert decode_nack_untrusted(memoryview(encode_nack(0, [9])), max_seqs=1) == (0, [9])
    for bad, reason in ((b"", "only NACKs"), (b"\x11\x00\x00\x00\x00", "only NACKs"),
                        (b"\x01\x00\x00", "at least one"), (b"\x01\x00\x00\x00", "whole 16-bit"),
                        (encode_nack(1, [1, 2, 3, 4]), "the limit is 3")):
        with pytest.raises(DatagramProtocolError) as error:
            decode_nack_untrusted(bad, max_seqs=3)
        assert reason in error.value.reason
    with pytest.raises(ValueError):
        encode_nack(1, [])
