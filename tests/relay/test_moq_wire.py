"""moq-lite wire format: byte vectors from the JS reference, round trips, chunked decoding,
malformed input and fuzzing (only ProtocolViolation may escape a decoder)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopcast.server.moq import (
    Announce,
    AnnounceInit,
    AnnouncePlease,
    AnnounceStatus,
    ClientSetup,
    ErrorCode,
    Frame,
    GroupHeader,
    Inbound,
    Limits,
    LocalProtocolError,
    ProtocolViolation,
    ServerSetup,
    SessionInfo,
    SetupParameter,
    StreamDecoder,
    Subscribe,
    SubscribeOk,
    SubscribeUpdate,
    Version,
    decode_announce_init_untrusted,
    decode_announce_please_untrusted,
    decode_announce_untrusted,
    decode_client_setup_untrusted,
    decode_group_header_untrusted,
    decode_server_setup_untrusted,
    decode_session_info_untrusted,
    decode_subscribe_ok_untrusted,
    decode_subscribe_untrusted,
    decode_subscribe_update_untrusted,
    encode_announce,
    encode_announce_init,
    encode_announce_please,
    encode_client_setup,
    encode_frame_size,
    encode_group_header,
    encode_server_setup,
    encode_session_info,
    encode_subscribe,
    encode_subscribe_ok,
    encode_subscribe_update,
    encode_varint,
    normalize_path,
)

LIMITS = Limits()

# The CLIENT_SETUP @moq/net 0.2.8 sends when the server picks no WebTransport protocol
# (connection/connect.js): stream type 0x20, u16 length, 3 versions, 3 parameters
# (MaxRequestId=42069, Implementation="moq-lite-js", Solicit=1), varints before bytes.
JS_CLIENT_SETUP = (
    b"\x20"
    + b"\x00\x31"
    + b"\x03"
    + bytes.fromhex("c0000000ff0dad02")
    + bytes.fromhex("c0000000ff0dad01")
    + bytes.fromhex("c0000000ff00000e")
    + b"\x03"
    + b"\x02"
    + bytes.fromhex("8000a455")
    + bytes.fromhex("80040b5a")
    + b"\x01"
    + b"\x07"
    + b"\x0b"
    + b"moq-lite-js"
)


def test_js_client_setup_vector_decodes() -> None:
    decoder = StreamDecoder(Inbound.PEER_BIDI, version=0, limits=LIMITS)
    [setup] = decoder.feed(JS_CLIENT_SETUP)
    assert decoder.stream_type == 0x20
    assert setup == ClientSetup(
        versions=(Version.LITE_DRAFT_02, Version.LITE_DRAFT_01, Version.MOQT_DRAFT_14),
        parameters=(
            (SetupParameter.MAX_REQUEST_ID, 42069),
            (SetupParameter.SOLICIT, 1),
            (SetupParameter.IMPLEMENTATION, b"moq-lite-js"),
        ),
    )


def test_server_setup_bytes_are_what_the_js_client_reads() -> None:
    # connection/connect.js: u53 0x21, then ServerSetup.decode at draft-14: u16 size,
    # varint version, varint parameter count.
    encoded = encode_server_setup(ServerSetup(Version.LITE_DRAFT_02))
    assert encoded == b"\x00\x09" + bytes.fromhex("c0000000ff0dad02") + b"\x00"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # lite/subscribe.js Subscribe: u62 id, string broadcast, string track, u8 priority.
        (encode_subscribe(Subscribe(0, "demo", "video", 60)), b"\x0d\x00\x04demo\x05video\x3c"),
        # draft-02 SUBSCRIBE_OK is empty: only its length.
        (encode_subscribe_ok(SubscribeOk(), Version.LITE_DRAFT_02), b"\x00"),
        (encode_subscribe_ok(SubscribeOk(7), Version.LITE_DRAFT_01), b"\x01\x07"),
        # lite/announce.js AnnounceInit and the legacy ANNOUNCE body (status u8, suffix).
        (encode_announce_init(AnnounceInit(("demo",))), b"\x06\x01\x04demo"),
        (encode_announce(Announce(AnnounceStatus.ENDED, "demo")), b"\x06\x00\x04demo"),
        (encode_announce_please(AnnouncePlease("")), b"\x01\x00"),
        # lite/group.js: stream type 0, then GROUP {u62 subscribe, u53 sequence} sized.
        (encode_group_header(GroupHeader(1, 300)), b"\x00\x03\x01\x41\x2c"),
        (encode_session_info(SessionInfo(1_000_000)), b"\x04\x80\x0f\x42\x40"),
    ],
)
def test_byte_vectors(message: bytes, expected: bytes) -> None:
    assert message == expected


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 1),
        (63, 1),
        (64, 2),
        (16383, 2),
        (16384, 4),
        ((1 << 30) - 1, 4),
        (1 << 30, 8),
        ((1 << 62) - 1, 8),
    ],
)
def test_varint_sizes(value: int, size: int) -> None:
    assert len(encode_varint(value)) == size


@pytest.mark.parametrize("value", [-1, 1 << 62])
def test_varint_out_of_range_is_local_error(value: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_varint(value)


def test_priority_out_of_range_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_subscribe(Subscribe(0, "demo", "video", 256))


def test_draft01_subscribe_ok_needs_priority() -> None:
    with pytest.raises(LocalProtocolError):
        encode_subscribe_ok(SubscribeOk(), Version.LITE_DRAFT_01)


def test_normalize_path_matches_path_js() -> None:
    assert normalize_path("//a///b/") == "a/b"
    assert normalize_path("") == ""


# -- round trips of every message -------------------------------------------------------------

names = st.text(max_size=20).filter(lambda text: "/" not in text)
paths = st.lists(st.text(alphabet="abcxyz09-_.", min_size=1, max_size=6), max_size=5).map("/".join)
varints = st.integers(0, (1 << 62) - 1)
u8s = st.integers(0, 255)


def _parameter(key: int) -> st.SearchStrategy:
    return st.tuples(st.just(key), varints if key % 2 == 0 else st.binary(max_size=16))


parameters = st.lists(varints, unique=True, max_size=8).flatmap(
    lambda keys: st.tuples(*[_parameter(key) for key in keys])
)


@given(st.lists(varints, max_size=8).map(tuple), parameters)
def test_client_setup_round_trip(versions: tuple[int, ...], params: tuple) -> None:
    message = ClientSetup(versions, params)
    encoded = encode_client_setup(message)
    assert decode_client_setup_untrusted(encoded[2:], LIMITS) == message


@given(varints, parameters)
def test_server_setup_round_trip(version: int, params: tuple) -> None:
    message = ServerSetup(version, params)
    assert decode_server_setup_untrusted(encode_server_setup(message)[2:], LIMITS) == message


def _body(encoded: bytes) -> bytes:
    """Strip a varint length prefix, checking it."""
    size = 1 << (encoded[0] >> 6)
    length = int.from_bytes(encoded[:size], "big") & ((1 << (8 * size - 2)) - 1)
    assert length == len(encoded) - size
    return encoded[size:]


@given(varints)
def test_session_info_round_trip(bitrate: int) -> None:
    message = SessionInfo(bitrate)
    assert decode_session_info_untrusted(_body(encode_session_info(message)), LIMITS) == message


@given(paths)
def test_announce_please_round_trip(prefix: str) -> None:
    message = AnnouncePlease(prefix)
    assert (
        decode_announce_please_untrusted(_body(encode_announce_please(message)), LIMITS) == message
    )


@given(st.lists(paths, max_size=10).map(tuple))
def test_announce_init_round_trip(suffixes: tuple[str, ...]) -> None:
    message = AnnounceInit(suffixes)
    assert decode_announce_init_untrusted(_body(encode_announce_init(message)), LIMITS) == message


@given(st.sampled_from(AnnounceStatus), paths)
def test_announce_round_trip(status: AnnounceStatus, suffix: str) -> None:
    message = Announce(status, suffix)
    assert decode_announce_untrusted(_body(encode_announce(message)), LIMITS) == message


@given(varints, paths, names, u8s)
def test_subscribe_round_trip(subscribe_id: int, broadcast: str, track: str, priority: int) -> None:
    message = Subscribe(subscribe_id, broadcast, track, priority)
    assert decode_subscribe_untrusted(_body(encode_subscribe(message)), LIMITS) == message


@given(u8s)
def test_subscribe_ok_and_update_round_trip(priority: int) -> None:
    assert decode_subscribe_ok_untrusted(
        _body(encode_subscribe_ok(SubscribeOk(priority), Version.LITE_DRAFT_01)),
        Version.LITE_DRAFT_01,
    ) == SubscribeOk(priority)
    assert (
        decode_subscribe_ok_untrusted(
            _body(encode_subscribe_ok(SubscribeOk(), Version.LITE_DRAFT_02)), Version.LITE_DRAFT_02
        )
        == SubscribeOk()
    )
    update = SubscribeUpdate(priority)
    assert (
        decode_subscribe_update_untrusted(_body(encode_subscribe_update(update)), LIMITS) == update
    )


@given(varints, varints)
def test_group_header_round_trip(subscribe_id: int, sequence: int) -> None:
    message = GroupHeader(subscribe_id, sequence)
    encoded = encode_group_header(message)
    assert encoded[0] == 0
    assert decode_group_header_untrusted(_body(encoded[1:]), LIMITS) == message


# -- the incremental decoder, every chunk size, every buffer type -----------------------------

SUBSCRIBE_STREAM = (
    b"\x02"
    + encode_subscribe(Subscribe(5, "room/demo", "catalog.json", 100))
    + encode_subscribe_update(SubscribeUpdate(3))
    + encode_subscribe_update(SubscribeUpdate(200))
)
SUBSCRIBE_MESSAGES = [
    Subscribe(5, "room/demo", "catalog.json", 100),
    SubscribeUpdate(3),
    SubscribeUpdate(200),
]
PAYLOADS = [b"", b"k" * 70, b"\x00\x01", b"x" * 20_000]
GROUP_STREAM = encode_group_header(GroupHeader(9, 70_000)) + b"".join(
    encode_frame_size(len(payload)) + payload for payload in PAYLOADS
)
GROUP_MESSAGES = [GroupHeader(9, 70_000)] + [Frame(payload) for payload in PAYLOADS]
SESSION_REPLY = (
    b"\x21"
    + encode_server_setup(
        ServerSetup(Version.LITE_DRAFT_02, ((SetupParameter.IMPLEMENTATION, b"x"),))
    )
    + encode_session_info(SessionInfo(12345))
)
ANNOUNCE_REPLY = (
    encode_announce_init(AnnounceInit(("a", "b/c")))
    + encode_announce(Announce(AnnounceStatus.ENDED, "a"))
    + encode_announce(Announce(AnnounceStatus.ACTIVE, "d"))
)

STREAMS = [
    (Inbound.PEER_BIDI, JS_CLIENT_SETUP + encode_session_info(SessionInfo(1)), 2),
    (Inbound.PEER_BIDI, SUBSCRIBE_STREAM, len(SUBSCRIBE_MESSAGES)),
    (Inbound.PEER_BIDI, b"\x01" + encode_announce_please(AnnouncePlease("room")), 1),
    (Inbound.PEER_UNI, GROUP_STREAM, len(GROUP_MESSAGES)),
    (Inbound.SESSION_REPLY, SESSION_REPLY, 2),
    (Inbound.ANNOUNCE_REPLY, ANNOUNCE_REPLY, 3),
    (Inbound.SUBSCRIBE_REPLY, encode_subscribe_ok(SubscribeOk(), Version.LITE_DRAFT_02), 1),
]


def _decode_in_chunks(inbound: Inbound, data: bytes, chunk_size: int, kind: type) -> list:
    decoder = StreamDecoder(inbound, version=Version.LITE_DRAFT_02, limits=LIMITS)
    messages = []
    for start in range(0, len(data), chunk_size):
        messages.extend(decoder.feed(kind(data[start : start + chunk_size])))
    decoder.end()
    return messages


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
@pytest.mark.parametrize(("inbound", "data", "count"), STREAMS)
def test_stream_decoder_every_chunk_size(
    inbound: Inbound, data: bytes, count: int, kind: type
) -> None:
    whole = _decode_in_chunks(inbound, data, len(data), bytes)
    assert len(whole) == count
    # Every size from 1 byte up for the short streams; the 20 kB group gets a spread.
    sizes = (
        range(1, len(data) + 1) if len(data) < 400 else [1, 2, 3, 7, 64, 1000, 4096, len(data) - 1]
    )
    for chunk_size in sizes:
        assert _decode_in_chunks(inbound, data, chunk_size, kind) == whole


def test_stream_decoder_yields_typed_messages() -> None:
    assert _decode_in_chunks(Inbound.PEER_BIDI, SUBSCRIBE_STREAM, 3, bytes) == SUBSCRIBE_MESSAGES
    assert _decode_in_chunks(Inbound.PEER_UNI, GROUP_STREAM, 5, bytes) == GROUP_MESSAGES


# -- malformed input: which code, and which scope ---------------------------------------------

MALFORMED = [
    # (inbound, bytes, code, stream_only)
    (Inbound.PEER_BIDI, b"\x03", ErrorCode.UNSUPPORTED, True),  # FETCH is lite-03+
    (Inbound.PEER_BIDI, b"\x3f", ErrorCode.UNSUPPORTED, True),  # unknown type
    (Inbound.PEER_UNI, b"\x01", ErrorCode.UNSUPPORTED, True),  # SETUP stream is lite-05+
    (Inbound.SESSION_REPLY, b"\x20", ErrorCode.UNEXPECTED_MESSAGE, False),
    # SUBSCRIBE with trailing bytes inside its length.
    (Inbound.PEER_BIDI, b"\x02\x0b\x00\x04demo\x01v\x01\xff\xff", ErrorCode.DECODE, False),
    # SUBSCRIBE whose track length runs past the body.
    (Inbound.PEER_BIDI, b"\x02\x08\x00\x04demo\x09v", ErrorCode.DECODE, False),
    # Broadcast name not UTF-8.
    (Inbound.PEER_BIDI, b"\x02\x06\x00\x02\xff\xfe\x00\x01", ErrorCode.DECODE, False),
    # ANNOUNCE with status 2 (restart is lite-05+).
    (Inbound.ANNOUNCE_REPLY, b"\x01\x00\x03\x02\x01a", ErrorCode.DECODE, False),
    # Anything after ANNOUNCE_PLEASE.
    (Inbound.PEER_BIDI, b"\x01\x01\x00\x01\x00", ErrorCode.UNEXPECTED_MESSAGE, False),
    # A second SUBSCRIBE_OK.
    (Inbound.SUBSCRIBE_REPLY, b"\x00\x00", ErrorCode.UNEXPECTED_MESSAGE, False),
    # Control message longer than the limit: rejected from its length alone.
    (Inbound.PEER_BIDI, b"\x02\x80\x10\x00\x01", ErrorCode.BOUNDS_EXCEEDED, False),
    # Frame longer than the limit.
    (
        Inbound.PEER_UNI,
        b"\x00\x02\x00\x00\xc0\x00\x00\x00\x7f\xff\xff\xff",
        ErrorCode.FRAME_TOO_LARGE,
        False,
    ),
    # CLIENT_SETUP offering more versions than allowed.
    (Inbound.PEER_BIDI, b"\x20\x00\x02\x40\xff", ErrorCode.BOUNDS_EXCEEDED, False),
    # CLIENT_SETUP with a duplicate parameter.
    (Inbound.PEER_BIDI, b"\x20\x00\x06\x00\x02\x02\x01\x02\x01", ErrorCode.DECODE, False),
    # Path with more than 32 parts.
    (
        Inbound.PEER_BIDI,
        b"\x01" + encode_announce_please(AnnouncePlease("/".join("a" * 33))),
        ErrorCode.BOUNDS_EXCEEDED,
        False,
    ),
]


@pytest.mark.parametrize(("inbound", "data", "code", "stream_only"), MALFORMED)
def test_malformed(inbound: Inbound, data: bytes, code: ErrorCode, stream_only: bool) -> None:
    decoder = StreamDecoder(inbound, version=Version.LITE_DRAFT_02, limits=LIMITS)
    with pytest.raises(ProtocolViolation) as raised:
        decoder.feed(data)
        decoder.end()
    assert raised.value.code == code
    assert raised.value.stream_only == stream_only


@pytest.mark.parametrize("data", [b"\x02", b"\x02\x05\x00", b"\x00\x02\x00\x00\x05ab"])
def test_fin_inside_a_message_is_decode_error(data: bytes) -> None:
    inbound = Inbound.PEER_UNI if data.startswith(b"\x00") else Inbound.PEER_BIDI
    decoder = StreamDecoder(inbound, version=Version.LITE_DRAFT_02, limits=LIMITS)
    decoder.feed(data)
    with pytest.raises(ProtocolViolation) as raised:
        decoder.end()
    assert raised.value.code == ErrorCode.DECODE


def test_empty_stream_ending_is_not_an_error() -> None:
    StreamDecoder(Inbound.PEER_BIDI, version=0, limits=LIMITS).end()


def test_huge_declared_length_buffers_nothing() -> None:
    decoder = StreamDecoder(Inbound.PEER_UNI, version=0, limits=Limits(max_frame_size_bytes=1000))
    decoder.feed(b"\x00\x02\x00\x00")
    decoder.feed(b"\x80\x00\x03\xe8")  # 1000 bytes: allowed, waits for them
    assert decoder.buffered_bytes == 4
    decoder = StreamDecoder(Inbound.PEER_UNI, version=0, limits=Limits(max_frame_size_bytes=1000))
    decoder.feed(b"\x00\x02\x00\x00")
    with pytest.raises(ProtocolViolation):
        decoder.feed(b"\x80\x00\x03\xe9")


# -- fuzzing: only ProtocolViolation escapes --------------------------------------------------

BODY_DECODERS = [
    lambda body: decode_client_setup_untrusted(body, LIMITS),
    lambda body: decode_server_setup_untrusted(body, LIMITS),
    lambda body: decode_session_info_untrusted(body, LIMITS),
    lambda body: decode_announce_please_untrusted(body, LIMITS),
    lambda body: decode_announce_init_untrusted(body, LIMITS),
    lambda body: decode_announce_untrusted(body, LIMITS),
    lambda body: decode_subscribe_untrusted(body, LIMITS),
    lambda body: decode_subscribe_ok_untrusted(body, Version.LITE_DRAFT_01),
    lambda body: decode_subscribe_ok_untrusted(body, Version.LITE_DRAFT_02),
    lambda body: decode_subscribe_update_untrusted(body, LIMITS),
    lambda body: decode_group_header_untrusted(body, LIMITS),
]


@settings(max_examples=300)
@given(st.sampled_from(range(len(BODY_DECODERS))), st.binary(max_size=64))
def test_fuzz_body_decoders(index: int, body: bytes) -> None:
    try:
        BODY_DECODERS[index](body)
    except ProtocolViolation:
        pass


@settings(max_examples=300)
@given(
    st.sampled_from(list(Inbound)),
    st.sampled_from([stream for _, stream, _ in STREAMS] + [b""]),
    st.binary(max_size=64),
    st.integers(0, 80),
    st.lists(st.integers(1, 16), min_size=1, max_size=8),
    st.booleans(),
)
def test_fuzz_stream_decoder(
    inbound: Inbound, base: bytes, noise: bytes, cut: int, chunks: list[int], end: bool
) -> None:
    # Valid streams with bytes spliced in, fed in arbitrary chunks, with or without FIN.
    data = base[:cut] + noise + base[cut:]
    decoder = StreamDecoder(
        inbound, version=Version.LITE_DRAFT_01, limits=Limits(max_message_size_bytes=256)
    )
    try:
        position = 0
        for size in chunks * (len(data) // sum(chunks) + 1):
            if position >= len(data):
                break
            decoder.feed(memoryview(data)[position : position + size])
            position += size
        if end:
            decoder.end()
    except ProtocolViolation:
        pass
