"""The relay's object model without sockets: GOP cache, fan-out order,
limits, takeover and rate-limited keyframe requests (on trio's mock clock)."""

import pytest
import trio

from shopcast.server._relay import DUPLICATE, BOUNDS_EXCEEDED, FRAME_TOO_LARGE, Relay, RelayError, RelayLimits


class RecordingSink:
    """A subscriber that writes down what the track told it."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def group_started(self, track, group):
        self.events.append(("start", group.sequence))

    def frame(self, track, group, payload):
        self.events.append(("frame", group.sequence, payload))

    def group_ended(self, track, group):
        self.events.append(("end", group.sequence))

    def track_ended(self, track):
        self.events.append(("track_end",))


def frames(sink):
    return [e[2] for e in sink.events if e[0] == "frame"]


async def test_late_joiner_gets_the_current_group_from_its_keyframe():
    relay = Relay()
    track = relay.publish("room").track("video")
    for i in range(5):
        track.write_frame(b"f%d" % i, keyframe=(i % 3 == 0))
    late = RecordingSink()
    track.subscribe(late)
    # Group 1 began at frame 3: the late joiner starts there, not at the next keyframe.
    assert late.events == [("start", 1), ("frame", 1, b"f3"), ("frame", 1, b"f4")]
    track.write_frame(b"f5", keyframe=False)
    track.write_frame(b"f6", keyframe=True)
    assert late.events[3:] == [("frame", 1, b"f5"), ("end", 1), ("start", 2), ("frame", 2, b"f6")]


async def test_every_subscriber_sees_the_same_order_and_the_same_bytes():
    relay = Relay()
    track = relay.publish("room").track("video")
    sinks = [RecordingSink() for _ in range(100)]
    for sink in sinks:
        track.subscribe(sink)
    payloads = [bytes([i]) * (i + 1) for i in range(50)]
    for i, payload in enumerate(payloads):
        track.write_frame(payload, keyframe=(i % 10 == 0))
    for sink in sinks:
        assert frames(sink) == payloads
        # Fan-out passes the publisher's object on: no copy per subscriber.
        assert all(a is b for a, b in zip(frames(sink), payloads))


async def test_publisher_leaving_ends_tracks_and_withdraws_the_broadcast():
    relay = Relay()
    seen = []
    relay.listen(lambda broadcast, active: seen.append((broadcast.name, active)))
    broadcast = relay.publish("room")
    sink = RecordingSink()
    broadcast.track("video").subscribe(sink)
    broadcast.track("video").write_frame(b"x", keyframe=True)
    broadcast.end()
    assert sink.events[-2:] == [("end", 0), ("track_end",)]
    assert seen == [("room", True), ("room", False)]
    assert "room" not in relay.broadcasts and broadcast.ended.is_set()


async def test_limits_and_takeover():
    relay = Relay(RelayLimits(max_broadcasts=1, max_tracks_per_broadcast=2, max_frame_bytes=10,
                              max_subscribers_per_track=1))
    broadcast = relay.publish("a")
    with pytest.raises(RelayError) as info:
        relay.publish("a")
    assert info.value.code == DUPLICATE
    with pytest.raises(RelayError) as info:
        relay.publish("b")
    assert info.value.code == BOUNDS_EXCEEDED
    broadcast.track("one"), broadcast.track("two")
    with pytest.raises(RelayError):
        broadcast.track("three")
    with pytest.raises(RelayError) as info:
        broadcast.track("one").write_frame(b"x" * 11, keyframe=True)
    assert info.value.code == FRAME_TOO_LARGE
    broadcast.track("one").subscribe(RecordingSink())
    with pytest.raises(RelayError):
        broadcast.track("one").subscribe(RecordingSink())

    taking = Relay(RelayLimits(publisher_takeover=True))
    first = taking.publish("a")
    second = taking.publish("a")
    assert first.ended.is_set() and taking.broadcasts["a"] is second


async def test_oversized_group_is_relayed_but_not_cached():
    relay = Relay(RelayLimits(max_group_bytes=100))
    track = relay.publish("room").track("video")
    live = RecordingSink()
    track.subscribe(live)
    for i in range(5):
        track.write_frame(b"x" * 30, keyframe=(i == 0))
    assert len(frames(live)) == 5
    late = RecordingSink()
    track.subscribe(late)
    assert late.events == []  # waits for the next keyframe instead of a partial group


async def test_keyframe_requests_are_rate_limited(autojump_clock):
    relay = Relay(RelayLimits(keyframe_request_interval_s=1.0))
    requests = []
    broadcast = relay.publish("room", on_keyframe_request=lambda track: requests.append(
        (track.name, trio.current_time())))
    track = broadcast.track("video")
    for _ in range(5):
        track.subscribe(RecordingSink())  # nothing cached: each would like a keyframe
    assert len(requests) == 1
    await trio.sleep(1.0)
    track.subscribe(RecordingSink())
    assert len(requests) == 2 and requests[1][1] - requests[0][1] >= 1.0
    assert track.stats.keyframe_requests == 2
