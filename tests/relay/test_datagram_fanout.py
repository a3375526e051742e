"""The datagram fan-out without sockets: one packetize per frame whatever the number of
subscribers, the same packet objects for all, late joiners served from the history,
resends bounded by the per-session rate."""

import dataclasses

import trio
from shopcast.codecs import JitterBuffer, MediaConfig
from shopcast.server._config import load_config
from shopcast.server._datagram import (
    DatagramServer,
    Subscribe,
    _DatagramConnection,
    encode_nack,
)
from shopcast.server._relay import Relay
from shopcast.server.moq import encode_frame

MEDIA = MediaConfig()


class FakeSubscriber:
    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.ended = False

    def send_packets(self, packets: list[bytes]) -> None:
        self.packets.extend(packets)

    def fanout_ended(self) -> None:
        self.ended = True


class FakeSession:
    """What a _DatagramConnection needs of a WebTransportSession."""

    claims = None
    remote_address = ("127.0.0.1", 1)
    datagram_backlog = 0  # it "sends" at once: nothing is ever queued

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = trio.Event()

    def send_datagram(self, data: bytes) -> bool:
        self.sent.append(data)
        return True

    def close(self, code: int = 0, reason: str = "") -> None:
        self.closed.set()


def frame(index: int) -> bytes:
    return encode_frame(index * 1000, bytes([index]) * (5000 if index % 10 == 0 else 1500))


def make_server(**datagram):
    config = load_config(environ={})
    relay = Relay()
    return relay, DatagramServer(relay, dataclasses.replace(config.datagram, **datagram), MEDIA)


def count_packetize(fanout) -> list[int]:
    calls = [0]
    packetize = fanout.packetizer.packetize

    def counting(*args, **kwargs):
        calls[0] += 1
        return packetize(*args, **kwargs)

    fanout.packetizer.packetize = counting
    return calls


async def test_one_packetize_per_frame_whatever_the_subscriber_count():
    for subscribers in (1, 7, 50):
        relay, server = make_server()
        track = relay.publish("room").track("video")
        fanout, first = server.fanout_for(track)
        assert first and server.fanout_for(track) == (fanout, False)
        calls = count_packetize(fanout)
        fakes = [FakeSubscriber() for _ in range(subscribers)]
        for index, fake in enumerate(fakes):
            fanout.add(fake, first=index == 0)
        assert track.subscriber_count == 1  # the fan-out is the relay's only sink
        for index in range(10):
            track.write_frame(frame(index), keyframe=index == 0)
        assert calls[0] == 10
        assert server.stats.frames_packetized == 10
        reference = fakes[0].packets
        assert len(reference) == server.stats.packets_packetized
        for fake in fakes[1:]:
            # The very same objects: no per-subscriber packetizing or copy.
            assert all(a is b for a, b in zip(fake.packets, reference, strict=True))
        relay.broadcasts["room"].end()
        assert all(fake.ended for fake in fakes) and not server.fanouts


def released(packets: list[bytes], *, video: bool = True):
    buffer = JitterBuffer(0, video=video, config=MEDIA)
    for packet in packets:
        buffer.push(packet, 0)
    return buffer.pop_ready(0)


async def test_late_joiner_starts_at_the_newest_keyframe_from_the_history():
    relay, server = make_server()
    track = relay.publish("room").track("video")
    fanout, _ = server.fanout_for(track)
    early = FakeSubscriber()
    fanout.add(early, first=True)
    for index in range(25):
        track.write_frame(frame(index), keyframe=index % 10 == 0)
    calls = count_packetize(fanout)
    late = FakeSubscriber()
    fanout.add(late, first=False)
    assert calls[0] == 0  # served from the history, not packetized again
    frames = released(late.packets)
    assert [f.payload for f in frames] == [frame(i) for i in range(20, 25)]
    assert frames[0].keyframe
    # Its packets are the tail of what everyone got, with the same sequence numbers.
    assert late.packets == early.packets[-len(late.packets):]
    track.write_frame(frame(25), keyframe=False)
    assert [f.payload for f in released(late.packets)][-1] == frame(25)


async def test_a_group_larger_than_the_history_asks_for_a_keyframe():
    relay, server = make_server(history_packets=64)
    requests = []
    broadcast = relay.publish("room", on_keyframe_request=requests.append)
    track = broadcast.track("video")
    fanout, _ = server.fanout_for(track)
    fanout.add(FakeSubscriber(), first=True)
    track.write_frame(encode_frame(0, b"k" * 100_000), keyframe=True)  # about 100 packets
    late = FakeSubscriber()
    fanout.add(late, first=False)
    assert late.packets == [] and requests == [track]


async def test_resends_come_from_the_history_within_the_session_rate():
    relay, server = make_server(resend_burst_packets=4, resend_rate_packets_per_s=0.0)
    track = relay.publish("room").track("video")
    for index in range(3):
        track.write_frame(frame(index), keyframe=index == 0)
    session = FakeSession()
    connection = _DatagramConnection(server, session)
    connection._on_message(Subscribe(0, "room", "video"))
    fanout = server.fanouts[track]
    original = list(session.sent)
    assert len(original) == server.stats.packets_packetized
    session.sent.clear()
    seqs = list(range(6))
    connection._on_nack(encode_nack(fanout.track_id, seqs))
    assert session.sent == original[:4]  # identical bytes, and only the burst allowed
    stats = server.stats
    assert (stats.resends_served, stats.dropped["resend_rate"], stats.nack_seqs_received) == (4, 2, 6)
    connection._on_nack(encode_nack(fanout.track_id + 1, [0]))
    assert stats.dropped["unknown_track"] == 1
