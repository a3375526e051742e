"""The sans-IO RTMP layer and AMF0, with no sockets: a client and a server
RtmpConnection pumped into each other, every chunk header type, extended
timestamps, chunk sizes both ways, abort, acknowledgements, limits, and
AMF0 round trips and hostile inputs."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from shopcast.server._amf0 import (
    UNDEFINED,
    Amf0Error,
    Amf0Limits,
    EcmaArray,
    decode_amf0_untrusted,
    encode_amf0,
)
from shopcast.server._rtmp_protocol import (
    HANDSHAKE_SIZE,
    CommandReceived,
    HandshakeCompleted,
    MediaReceived,
    MessageType,
    Role,
    RtmpConnection,
    RtmpLimits,
    RtmpProtocolError,
)


def pump(a: RtmpConnection, b: RtmpConnection, step: int | None = None, kind=bytes) -> tuple[list, list]:
    """Move bytes both ways until quiet; ``step`` cuts them into pieces of that size."""
    events_a, events_b = [], []
    for _ in range(100):
        moved = False
        for src, dst, sink in ((a, b, events_b), (b, a, events_a)):
            data = src.data_to_send()
            if data:
                moved = True
                size = step or len(data)
                for i in range(0, len(data), size):
                    sink.extend(dst.receive_data(kind(data[i:i + size])))
        if not moved:
            return events_a, events_b
    raise AssertionError("no quiet after 100 rounds")


def pair(**limits) -> tuple[RtmpConnection, RtmpConnection]:
    client = RtmpConnection(Role.CLIENT)
    server = RtmpConnection(Role.SERVER, RtmpLimits(**limits))
    a, b = pump(client, server)
    assert HandshakeCompleted() in a and HandshakeCompleted() in b
    return client, server


def test_handshake_echoes_c1_and_accepts_digest_style_c1():
    server = RtmpConnection(Role.SERVER)
    c1 = bytes(4) + bytes((9, 0, 124, 2)) + bytes(range(256)) * 6  # a Flash/ffmpeg-style version field
    c1 = c1[:HANDSHAKE_SIZE]
    assert server.receive_data(bytes((3,)) + c1) == []
    out = server.data_to_send()
    assert out[0] == 3 and len(out) == 1 + 2 * HANDSHAKE_SIZE and out[1 + HANDSHAKE_SIZE:] == c1
    assert server.receive_data(out[1:1 + HANDSHAKE_SIZE]) == [HandshakeCompleted()]


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
@pytest.mark.parametrize("step", [1, 2, 3, 7, 128, 1000, None])
def test_every_split_and_every_header_type(step, kind):
    client, server = pair()
    client.send_set_chunk_size(200)
    messages = [
        (MessageType.VIDEO, 0, bytes(range(256)) * 3),      # type 0, then type 3 continuations
        (MessageType.VIDEO, 40, bytes(500)),                # type 2: same length/type, new delta
        (MessageType.VIDEO, 80, bytes(500)),                # type 3: same delta
        (MessageType.VIDEO, 90, bytes(17)),                 # type 1: new length
        (MessageType.AUDIO, 0, b"\xaf\x01" + bytes(300)),
        (MessageType.VIDEO, 0x1000000 + 5, bytes(450)),     # extended timestamp (a new delta: type 2)
        (MessageType.VIDEO, 0x2000000 + 10, bytes(450)),    # extended delta on type 2, continuations carry it
        (MessageType.VIDEO, 0x3000000 + 15, bytes(450)),    # type 3 with an extended delta
    ]
    for kind_, ts, payload in messages:
        client.send_media(kind_, ts, payload)
    client.send_command("publish", 5.0, None, "key", "live", message_stream_id=1)
    wire = client.data_to_send()
    # All four header types appear on the wire (the first byte's top two bits).
    got = []
    size = step or len(wire)
    for i in range(0, len(wire), size):
        got.extend(server.receive_data(kind(wire[i:i + size])))
    media = [(e.message_type, e.timestamp_ms, e.payload) for e in got if isinstance(e, MediaReceived)]
    assert media == [(k, ts, p) for k, ts, p in messages]
    command = [e for e in got if isinstance(e, CommandReceived)]
    assert command == [CommandReceived("publish", 5.0, None, ("key", "live"), 1)]
    assert server.in_chunk_size == 200


def test_header_types_are_all_used():
    client, _ = pair()
    for ts, size in ((0, 10), (40, 10), (80, 10), (90, 11)):
        client.send_media(MessageType.VIDEO, ts, bytes(size))
    wire = client.data_to_send()
    fmts = []
    pos = 0
    for header, size in ((12, 10), (4, 10), (1, 10), (8, 11)):
        fmts.append(wire[pos] >> 6)
        pos += header + size
    assert fmts == [0, 2, 3, 1]


def test_type3_continuations_carry_the_extended_timestamp():
    client, server = pair()
    client.send_media(MessageType.VIDEO, 0x1234567, bytes(300))  # 3 chunks of 128
    wire = client.data_to_send()
    ext = (0x1234567).to_bytes(4, "big")
    assert wire[1:4] == b"\xff\xff\xff" and wire[12:16] == ext
    assert wire[16 + 128] == 0xC6 and wire[17 + 128:21 + 128] == ext
    [event] = server.receive_data(wire)
    assert event.timestamp_ms == 0x1234567 and event.payload == bytes(300)


def test_server_chunk_size_applies_to_what_it_sends():
    client, server = pair()
    server.send_set_chunk_size(4096)
    server.send_command("onStatus", 0.0, None, {"code": "x" * 3000}, message_stream_id=1)
    a, _ = pump(client, server)
    assert [e.name for e in a if isinstance(e, CommandReceived)] == ["onStatus"]
    assert client.in_chunk_size == 4096


def test_abort_discards_a_partial_message():
    client, server = pair()
    client.send_media(MessageType.VIDEO, 0, bytes(300))
    wire = client.data_to_send()
    assert server.receive_data(wire[:12 + 128]) == []  # the first chunk only
    client.send_abort(6)
    assert server.receive_data(client.data_to_send()) == []
    client._out_streams.clear()
    client.send_media(MessageType.VIDEO, 7, bytes(20))
    [event] = server.receive_data(client.data_to_send())
    assert (event.timestamp_ms, len(event.payload)) == (7, 20)


def test_acknowledgements_follow_the_window():
    client, server = pair()
    client.send_window_ack_size(5000)
    client.send_media(MessageType.VIDEO, 0, bytes(12000))
    server.receive_data(client.data_to_send())
    acks = server.data_to_send()
    # Acknowledgement: type 3 on chunk stream 2, the bytes received so far.
    assert acks[0] == 0x02 and acks[7] == MessageType.ACKNOWLEDGEMENT
    assert struct.unpack(">I", acks[12:16])[0] == server.bytes_received


def test_ping_is_answered():
    client, server = pair()
    client._send_message(2, MessageType.USER_CONTROL, 0, 0, struct.pack(">HI", 6, 1234))
    server.receive_data(client.data_to_send())
    out = server.data_to_send()
    assert out[-6:] == struct.pack(">HI", 7, 1234)


@pytest.mark.parametrize("size", [0, 127, 65537, 0x80000000, 0xFFFFFFFF])
def test_chunk_size_out_of_limits(size):
    client, server = pair(min_chunk_size=128, max_chunk_size=65536)
    client._send_message(2, MessageType.SET_CHUNK_SIZE, 0, 0, struct.pack(">I", size))
    with pytest.raises(RtmpProtocolError) as info:
        server.receive_data(client.data_to_send())
    assert info.value.reason == "chunk_size"


def test_limits_messages_streams_and_buffer():
    client, server = pair(max_message_bytes=1000)
    client.send_media(MessageType.VIDEO, 0, bytes(1001))
    with pytest.raises(RtmpProtocolError, match="max_message_bytes"):
        server.receive_data(client.data_to_send())
    client, server = pair(max_chunk_streams=3)
    with pytest.raises(RtmpProtocolError) as info:
        for csid in range(3, 10):
            client._send_message(csid, MessageType.VIDEO, 1, 0, bytes(300))
            server.receive_data(client.data_to_send())
    assert info.value.reason == "chunk_streams"
    client, server = pair(max_buffered_bytes=2000, max_chunk_streams=100)
    with pytest.raises(RtmpProtocolError) as info:
        for csid in range(3, 60):
            client._send_message(csid, MessageType.VIDEO, 1, 0, bytes(1000))
            server.receive_data(client.data_to_send()[:12 + 128])  # first chunks only
    assert info.value.reason == "buffered"


def test_version_other_than_3_is_refused():
    with pytest.raises(RtmpProtocolError, match="version 6"):
        RtmpConnection(Role.SERVER).receive_data(b"\x06" + bytes(100))


# --- AMF0 ------------------------------------------------------------------------------------

amf_keys = st.text(max_size=8)
amf_values = st.recursive(
    st.none() | st.just(UNDEFINED) | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(amf_keys.filter(bool), children, max_size=4)
    | st.dictionaries(amf_keys.filter(bool), children, max_size=4).map(EcmaArray),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.lists(amf_values, max_size=4))
def test_amf0_round_trip(values):
    decoded = decode_amf0_untrusted(encode_amf0(*values))
    assert decoded == values
    assert [type(v) for v in decoded] == [type(v) for v in values]


def test_amf0_long_string_and_date():
    text = "x" * 70000
    assert decode_amf0_untrusted(encode_amf0(text)) == [text]
    assert encode_amf0(text)[0] == 0x0C
    assert decode_amf0_untrusted(b"\x0b" + struct.pack(">d", 1.5e12) + b"\x00\x00") == [1.5e12]


@pytest.mark.parametrize("data, fragment", [
    (b"\x02\xff\xffabc", "truncated"),
    (b"\x0c\xff\xff\xff\xffabc", "truncated"),
    (b"\x0a\xff\xff\xff\xff\x05", "declares 4294967295"),
    (b"\x03\x00\x01a\x05", "truncated"),
    (b"\x09", "object end"),
    (b"\x07\x00\x01", "references"),
    (b"\x11\x01", "AMF3"),
    (b"\x0d", "unknown AMF0 type"),
    (b"\x02\x00\x02\xff\xfe", "not UTF-8"),
    (b"\x03\x00\x01a" * 40, "nested deeper"),
    (b"\x0a\x00\x00\x00\x01" * 40, "nested deeper"),
])
def test_amf0_hostile_input(data, fragment):
    with pytest.raises(Amf0Error, match=fragment):
        decode_amf0_untrusted(data)


def test_amf0_item_limit():
    data = encode_amf0(list(range(100)))
    with pytest.raises(Amf0Error, match="more than 50"):
        decode_amf0_untrusted(data, Amf0Limits(max_items=50))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_amf0_random_bytes_raise_only_amf0error(data):
    try:
        decode_amf0_untrusted(data)
    except Amf0Error:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_chunk_parser_random_bytes_raise_only_protocol_error(data):
    client, server = pair()
    try:
        server.receive_data(data)
    except RtmpProtocolError:
        pass
