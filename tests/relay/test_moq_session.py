"""Two moq-lite sessions, a client and a server, pumped against each other in memory."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopcast.server.moq import (
    AnnounceInterest,
    BroadcastAnnounced,
    CloseSession,
    ErrorCode,
    Event,
    FrameReceived,
    GroupEnded,
    GroupStarted,
    Limits,
    LocalProtocolError,
    ResetStream,
    Role,
    SendStreamData,
    Session,
    SessionClosed,
    SessionInfoReceived,
    SessionStarted,
    SetStreamPriority,
    StopSending,
    SubscribeAccepted,
    SubscribeRequested,
    SubscriptionCancelled,
    SubscriptionEnded,
    SubscriptionUpdated,
    Version,
    encode_varint,
    group_send_order,
)


def is_unidirectional(stream_id: int) -> bool:
    return bool(stream_id & 0x2)


@dataclass
class Peer:
    """A session plus QUIC-style stream numbering and what it has received."""

    session: Session
    client: bool
    events: list[Event] = field(default_factory=list)
    priorities: dict[int, int] = field(default_factory=dict)
    closed_with: CloseSession | None = None

    def __post_init__(self) -> None:
        low_bit = 0 if self.client else 1
        self._bidi = itertools.count(low_bit, 4)
        self._uni = itertools.count(low_bit | 2, 4)

    def bidi(self) -> int:
        return next(self._bidi)

    def uni(self) -> int:
        return next(self._uni)

    def take(self, kind: type) -> list:
        found = [event for event in self.events if isinstance(event, kind)]
        self.events = [event for event in self.events if not isinstance(event, kind)]
        return found


@dataclass
class Pair:
    client: Peer
    server: Peer
    chunk_size: int = 0

    def pump(self) -> None:
        """Deliver commands both ways until neither side has any."""
        while True:
            moved = self._deliver(self.client, self.server) | self._deliver(
                self.server, self.client
            )
            if not moved:
                return

    def _deliver(self, source: Peer, target: Peer) -> bool:
        return self.deliver(source, target, source.session.pop_commands())

    def deliver(self, source: Peer, target: Peer, commands: list) -> bool:
        for command in commands:
            if isinstance(command, SendStreamData):
                data = b"".join(bytes(chunk) for chunk in command.chunks)
                step = self.chunk_size or max(len(data), 1)
                pieces = [data[start : start + step] for start in range(0, len(data), step)] or [
                    b""
                ]
                for index, piece in enumerate(pieces):
                    end = command.end_stream and index == len(pieces) - 1
                    target.events += target.session.receive_stream_data(
                        command.stream_id,
                        piece,
                        end_stream=end,
                        unidirectional=is_unidirectional(command.stream_id),
                    )
            elif isinstance(command, ResetStream):
                target.events += target.session.receive_stream_reset(
                    command.stream_id, command.error_code
                )
            elif isinstance(command, StopSending):
                target.events += target.session.receive_stop_sending(
                    command.stream_id, command.error_code
                )
            elif isinstance(command, SetStreamPriority):
                source.priorities[command.stream_id] = command.send_order
            else:
                source.closed_with = command
                target.events += target.session.receive_session_close(
                    command.error_code, command.reason
                )
        return bool(commands)


def connected(chunk_size: int = 0) -> Pair:
    pair = Pair(
        Peer(Session(Role.CLIENT), client=True),
        Peer(Session(Role.SERVER), client=False),
        chunk_size,
    )
    pair.client.session.connect(pair.client.bidi())
    pair.pump()
    assert pair.server.take(SessionStarted) == [SessionStarted(Version.LITE_DRAFT_02)]
    assert pair.client.take(SessionStarted) == [SessionStarted(Version.LITE_DRAFT_02)]
    return pair


@pytest.mark.parametrize("chunk_size", [0, 1, 3])
def test_viewer_watches_a_broadcast(chunk_size: int) -> None:
    """The @moq/watch flow: announce interest, catalog and video subscriptions, groups."""
    pair = connected(chunk_size)
    server, client = pair.server, pair.client
    server.session.announce("demo")
    announce_stream = client.bidi()
    client.session.request_announces(announce_stream, "")
    pair.pump()
    assert server.take(AnnounceInterest) == [AnnounceInterest(announce_stream, "")]
    assert client.take(BroadcastAnnounced) == [BroadcastAnnounced(announce_stream, "demo", True)]

    video_stream = client.bidi()
    video_id = client.session.subscribe(video_stream, "demo", "video", 60)
    audio_id = client.session.subscribe(client.bidi(), "demo", "audio", 80)
    pair.pump()
    requests = server.take(SubscribeRequested)
    assert [(request.subscribe_id, request.track, request.priority) for request in requests] == [
        (video_id, "video", 60),
        (audio_id, "audio", 80),
    ]
    for request in requests:
        assert server.session.accept_subscribe(request.stream_id)
    pair.pump()
    assert client.take(SubscribeAccepted) == [
        SubscribeAccepted(video_id),
        SubscribeAccepted(audio_id),
    ]

    # One payload object fanned out: the session passes it through uncopied.
    payload = memoryview(b"\x00" * 5000)
    group_streams = []
    for request in requests:
        group_stream = server.uni()
        group_streams.append(group_stream)
        assert server.session.start_group(group_stream, request.stream_id, 7)
        assert server.session.send_frame(group_stream, payload)
        assert server.session.send_frame(group_stream, b"delta")
        assert server.session.end_group(group_stream)
    commands = server.session.pop_commands()
    assert (
        sum(
            1
            for command in commands
            if isinstance(command, SendStreamData) and payload in command.chunks
        )
        == 2
    )
    assert all(
        chunk is payload
        for command in commands
        if isinstance(command, SendStreamData)
        for chunk in command.chunks
        if len(chunk) == 5000
    )
    pair.deliver(server, client, commands)
    pair.pump()
    assert (
        server.priorities[group_streams[1]]
        == group_send_order(80, 7)
        > server.priorities[group_streams[0]]
    )
    assert client.take(GroupStarted) == [
        GroupStarted(group_streams[0], video_id, 7),
        GroupStarted(group_streams[1], audio_id, 7),
    ]
    frames = client.take(FrameReceived)
    assert [(frame.subscribe_id, frame.payload) for frame in frames] == [
        (video_id, bytes(payload)),
        (video_id, b"delta"),
        (audio_id, bytes(payload)),
        (audio_id, b"delta"),
    ]
    assert [event.error_code for event in client.take(GroupEnded)] == [None, None]

    # Unsubscribe: the server sees the cancellation, the client sees the end.
    assert client.session.unsubscribe(video_id)
    pair.pump()
    assert server.take(SubscriptionCancelled) == [
        SubscriptionCancelled(video_stream, video_id, None)
    ]
    assert client.take(SubscriptionEnded) == [SubscriptionEnded(video_id, None)]

    # The broadcast ends: announce ENDED, the remaining subscription finishes.
    server.session.end_broadcast("demo")
    pair.pump()
    assert client.take(BroadcastAnnounced) == [BroadcastAnnounced(announce_stream, "demo", False)]
    assert client.take(SubscriptionEnded) == [SubscriptionEnded(audio_id, None)]

    client.session.close(ErrorCode.CANCEL, "bye")
    pair.pump()
    assert server.take(SessionClosed) == [SessionClosed(ErrorCode.CANCEL, "bye", by_peer=True)]
    assert client.events == [] and server.events == []


def test_client_publishes_to_the_server() -> None:
    """A host publishing from the browser or our Python client: roles per stream reversed."""
    pair = connected()
    server, client = pair.server, pair.client
    client.session.announce("room1")
    interest = server.bidi()
    server.session.request_announces(interest, "")
    pair.pump()
    assert server.take(BroadcastAnnounced) == [BroadcastAnnounced(interest, "room1", True)]
    subscribe_id = server.session.subscribe(server.bidi(), "room1", "video", 60)
    pair.pump()
    [request] = client.take(SubscribeRequested)
    client.session.accept_subscribe(request.stream_id)
    group = client.uni()
    client.session.start_group(group, request.stream_id, 0)
    client.session.send_frame(group, b"key")
    pair.pump()
    assert server.take(SubscribeAccepted) == [SubscribeAccepted(subscribe_id)]
    assert server.take(FrameReceived) == [FrameReceived(group, subscribe_id, 0, b"key")]

    # The publisher drops a late group: the server sees it reset with OLD.
    client.session.drop_group(group)
    pair.pump()
    assert server.take(GroupEnded) == [GroupEnded(group, subscribe_id, 0, ErrorCode.OLD)]

    # Priority update re-ranks the open groups.
    second = client.uni()
    client.session.start_group(second, request.stream_id, 1)
    server.session.update_subscription(subscribe_id, 200)
    pair.pump()
    assert client.take(SubscriptionUpdated) == [
        SubscriptionUpdated(request.stream_id, subscribe_id, 200)
    ]
    assert client.priorities[second] == group_send_order(200, 1)

    client.session.unannounce("room1")
    pair.pump()
    assert server.take(BroadcastAnnounced) == [BroadcastAnnounced(interest, "room1", False)]


def test_announce_prefix_filtering_and_late_announcements() -> None:
    pair = connected()
    server, client = pair.server, pair.client
    server.session.announce("shop/a")
    server.session.announce("other")
    stream = client.bidi()
    client.session.request_announces(stream, "shop")
    pair.pump()
    server.session.announce("shop/b")
    server.session.announce("shopping")  # not under "shop": whole parts only
    pair.pump()
    assert client.take(BroadcastAnnounced) == [
        BroadcastAnnounced(stream, "shop/a", True),
        BroadcastAnnounced(stream, "shop/b", True),
    ]
    # Closing the interest stream retracts what it announced, on the client's side.
    client.session.stop_announces(stream)
    pair.pump()
    assert client.events == []


def test_rejected_subscription() -> None:
    pair = connected()
    server, client = pair.server, pair.client
    subscribe_id = client.session.subscribe(client.bidi(), "missing", "video", 60)
    pair.pump()
    [request] = server.take(SubscribeRequested)
    assert server.session.reject_subscribe(request.stream_id, ErrorCode.NOT_FOUND)
    pair.pump()
    assert client.take(SubscriptionEnded) == [SubscriptionEnded(subscribe_id, ErrorCode.NOT_FOUND)]
    # Calls on a subscription that is gone are no-ops, not errors.
    assert not server.session.accept_subscribe(request.stream_id)
    assert not server.session.start_group(server.uni(), request.stream_id, 0)


def test_subscriber_stops_a_group_and_unsubscribe_races_frames() -> None:
    pair = connected()
    server, client = pair.server, pair.client
    subscribe_id = client.session.subscribe(client.bidi(), "demo", "video", 60)
    pair.pump()
    [request] = server.take(SubscribeRequested)
    server.session.accept_subscribe(request.stream_id)
    group = server.uni()
    server.session.start_group(group, request.stream_id, 3)
    server.session.send_frame(group, b"a")
    pair.pump()
    client.take(GroupStarted)
    client.take(FrameReceived)
    # The peer stops reading the group: sending on it becomes a no-op.
    server.events += server.session.receive_stop_sending(group, ErrorCode.CANCEL)
    assert not server.session.send_frame(group, b"b")
    # Unsubscribe while a new group is in flight: its frames are discarded, not reported.
    late = server.uni()
    server.session.start_group(late, request.stream_id, 4)
    server.session.send_frame(late, b"c")
    client.session.unsubscribe(subscribe_id)
    pair.pump()
    assert client.take(FrameReceived) == []
    assert server.take(SubscriptionCancelled) == [
        SubscriptionCancelled(request.stream_id, subscribe_id, None)
    ]
    assert client.take(SubscriptionEnded) == [SubscriptionEnded(subscribe_id, None)]


def test_server_streams_overtaking_server_setup_are_held() -> None:
    client = Session(Role.CLIENT)
    client.connect(0)
    client.pop_commands()
    # QUIC does not order streams: the server's announce interest overtakes SERVER_SETUP.
    early = client.receive_stream_data(1, b"\x01\x01\x00", unidirectional=False)
    assert early == []
    reply = b"\x21" + b"\x00\x09" + encode_varint(Version.LITE_DRAFT_02) + b"\x00"
    events = client.receive_stream_data(0, reply, unidirectional=False)
    assert events == [SessionStarted(Version.LITE_DRAFT_02), AnnounceInterest(1, "")]


def test_draft01_only_client() -> None:
    pair = Pair(
        Peer(Session(Role.CLIENT, versions=[Version.LITE_DRAFT_01]), client=True),
        Peer(Session(Role.SERVER), client=False),
    )
    pair.client.session.connect(pair.client.bidi())
    pair.pump()
    assert pair.server.take(SessionStarted) == [SessionStarted(Version.LITE_DRAFT_01)]
    subscribe_id = pair.client.session.subscribe(pair.client.bidi(), "demo", "audio", 80)
    pair.pump()
    [request] = pair.server.take(SubscribeRequested)
    pair.server.session.accept_subscribe(request.stream_id)
    pair.pump()
    assert pair.client.take(SubscribeAccepted) == [SubscribeAccepted(subscribe_id)]


def test_session_info_both_ways() -> None:
    pair = connected()
    pair.server.session.send_session_info(2_500_000)
    pair.pump()
    assert pair.client.take(SessionInfoReceived) == [SessionInfoReceived(2_500_000)]


# -- the peer misbehaves ----------------------------------------------------------------------


def server_after_setup() -> Session:
    server = Session(Role.SERVER)
    client = Session(Role.CLIENT)
    client.connect(0)
    [setup] = client.pop_commands()
    assert isinstance(setup, SendStreamData)
    server.receive_stream_data(0, b"".join(setup.chunks), unidirectional=False)
    server.pop_commands()
    return server


@pytest.mark.parametrize(
    ("stream_id", "data", "unidirectional", "code"),
    [
        (4, b"\x02\x02\x00\x00", False, ErrorCode.DECODE),  # SUBSCRIBE cut short inside its body
        (4, b"\x20\x00\x02\x00\x00", False, ErrorCode.UNEXPECTED_STREAM),  # second session stream
        (2, b"\x00\x02\x07\x00", True, ErrorCode.PROTOCOL_VIOLATION),  # group for id never used
        (
            4,
            b"\x01\x01\x00\x05",
            False,
            ErrorCode.UNEXPECTED_MESSAGE,
        ),  # bytes after ANNOUNCE_PLEASE
    ],
)
def test_malformed_closes_the_session_with_a_reason(
    stream_id: int, data: bytes, unidirectional: bool, code: ErrorCode
) -> None:
    server = server_after_setup()
    events = server.receive_stream_data(
        stream_id, data, end_stream=True, unidirectional=unidirectional
    )
    [closed] = [event for event in events if isinstance(event, SessionClosed)]
    assert closed.error_code == code and not closed.by_peer and closed.reason
    assert server.pop_commands() == [CloseSession(code, closed.reason)]
    assert server.closed
    assert server.receive_stream_data(8, b"\x02", unidirectional=False) == []


def test_duplicate_subscribe_id_closes_the_session() -> None:
    server = server_after_setup()
    subscribe = b"\x02\x09\x00\x04demo\x01v\x01"
    server.receive_stream_data(4, subscribe, unidirectional=False)
    [closed] = server.receive_stream_data(8, subscribe, unidirectional=False)
    assert isinstance(closed, SessionClosed) and closed.error_code == ErrorCode.DUPLICATE


def test_unknown_stream_type_rejects_only_that_stream() -> None:
    server = server_after_setup()
    assert server.receive_stream_data(4, b"\x03\x00", unidirectional=False) == []
    assert server.pop_commands() == [
        ResetStream(4, ErrorCode.UNSUPPORTED),
        StopSending(4, ErrorCode.UNSUPPORTED),
    ]
    # The rest of that stream is discarded; the session carries on.
    assert server.receive_stream_data(4, b"garbage", end_stream=True, unidirectional=False) == []
    assert server.established
    events = server.receive_stream_data(8, b"\x02\x09\x00\x04demo\x01v\x01", unidirectional=False)
    assert [type(event) for event in events] == [SubscribeRequested]


def test_requests_before_setup_close_the_session() -> None:
    server = Session(Role.SERVER)
    [closed] = server.receive_stream_data(4, b"\x02\x09\x00\x04demo\x01v\x01", unidirectional=False)
    assert isinstance(closed, SessionClosed) and closed.error_code == ErrorCode.UNEXPECTED_MESSAGE


def test_no_common_version() -> None:
    server = Session(Role.SERVER)
    setup = b"\x20\x00\x0a\x01" + encode_varint(Version.MOQT_DRAFT_14) + b"\x00"
    [closed] = server.receive_stream_data(0, setup, unidirectional=False)
    assert isinstance(closed, SessionClosed) and closed.error_code == ErrorCode.VERSION
    assert "0xff00000e" in closed.reason


def test_server_choosing_an_unoffered_version() -> None:
    client = Session(Role.CLIENT, versions=[Version.LITE_DRAFT_02])
    client.connect(0)
    reply = b"\x21\x00\x09" + encode_varint(Version.LITE_DRAFT_01) + b"\x00"
    [closed] = client.receive_stream_data(0, reply, unidirectional=False)
    assert isinstance(closed, SessionClosed) and closed.error_code == ErrorCode.VERSION


def test_subscription_limit_rejects_the_stream_only() -> None:
    server = Session(Role.SERVER, limits=Limits(max_peer_subscriptions=1))
    client = Session(Role.CLIENT)
    client.connect(0)
    [setup] = client.pop_commands()
    assert isinstance(setup, SendStreamData)
    server.receive_stream_data(0, b"".join(setup.chunks), unidirectional=False)
    server.pop_commands()
    server.receive_stream_data(4, b"\x02\x09\x00\x04demo\x01v\x01", unidirectional=False)
    assert (
        server.receive_stream_data(8, b"\x02\x09\x01\x04demo\x01a\x01", unidirectional=False) == []
    )
    assert server.pop_commands() == [
        ResetStream(8, ErrorCode.BOUNDS_EXCEEDED),
        StopSending(8, ErrorCode.BOUNDS_EXCEEDED),
    ]


def test_local_misuse_raises() -> None:
    server = server_after_setup()
    with pytest.raises(LocalProtocolError):
        server.connect(4)
    server.receive_stream_data(4, b"\x02\x09\x00\x04demo\x01v\x01", unidirectional=False)
    with pytest.raises(LocalProtocolError):
        server.start_group(3, 4, 0)  # not accepted yet
    server.accept_subscribe(4)
    with pytest.raises(LocalProtocolError):
        server.accept_subscribe(4)
    with pytest.raises(LocalProtocolError):
        server.subscribe(4, "x", "y", 0)  # stream id in use
    with pytest.raises(LocalProtocolError):
        Session(Role.CLIENT).subscribe(0, "x", "y", 0)  # not established


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 12), st.binary(max_size=24), st.booleans(), st.integers(0, 3)),
        max_size=12,
    )
)
def test_fuzz_session_input(inputs: list[tuple[int, bytes, bool, int]]) -> None:
    """Arbitrary stream bytes, resets and stop-sendings: the session never raises."""
    server = server_after_setup()
    client = Session(Role.CLIENT)
    client.connect(0)
    for stream_id, data, end, action in inputs:
        for session in (server, client):
            if action == 0:
                session.receive_stream_data(
                    stream_id, data, end_stream=end, unidirectional=is_unidirectional(stream_id)
                )
            elif action == 1:
                session.receive_stream_reset(stream_id, len(data))
            elif action == 2:
                session.receive_stop_sending(stream_id, len(data))
            else:
                session.receive_stream_data(
                    stream_id, b"\x02\x09\x00\x04demo\x01v\x01" + data, unidirectional=False
                )
            session.pop_commands()
