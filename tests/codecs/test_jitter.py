"""The jitter buffer: kernels against their twins, and a seeded lossy network with a fake clock."""

import dataclasses
import heapq
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shopcast.codecs import (
    HEADER_BYTES,
    JitterBuffer,
    MediaConfig,
    Packetizer,
    concatenate,
    decode_packet_header_untrusted,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FRAME_INTERVAL_US = 33_333


def frame_payload(index: int, rng: random.Random, size: int) -> bytes:
    """A frame whose first 4 bytes say which frame it is, so order and content can be checked."""
    return index.to_bytes(4, "big") + rng.randbytes(max(0, size - 4))


def run_buffer(buffer: JitterBuffer, steps):
    """Feed (packets, arrivals, now) steps; record what comes out after each."""
    trace = []
    for packets, arrivals, now_us in steps:
        if packets:
            data, offsets, lengths = concatenate(packets)
            accepted = buffer.push_batch(data, offsets, lengths, arrivals)
        else:
            accepted = 0
        frames = [(frame.frame_seq, frame.group, frame.keyframe, frame.payload) for frame in buffer.pop_ready(now_us)]
        trace.append((accepted, frames, buffer.nacks(now_us), dataclasses.astuple(buffer.statistics())))
    return trace


@SETTINGS
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=14),
    fec_k=st.sampled_from([0, 2, 3]),
    video=st.booleans(),
    first_seq=st.sampled_from([0, 0xFFF0]),
    fate=st.data(),
)
def test_kernels_match_their_twins(sizes, fec_k, video, first_seq, fate):
    config = MediaConfig(datagram_payload_bytes=100, fec_k=fec_k, ring_packets=64, ring_frames=16,
                         reorder_window_packets=1, target_delay_min_ms=1.0, target_delay_initial_ms=5.0,
                         target_delay_max_ms=50.0, nack_retry_interval_ms=1.0)
    rng = random.Random(0)
    packetizer = Packetizer(4, config, first_packet_seq=first_seq, first_frame_seq=first_seq)
    packets = []
    for index, size in enumerate(sizes):
        batch = packetizer.packetize_frame(frame_payload(index, rng, size), timestamp_us=index * 10_000,
                                           group=index // 4, keyframe=index % 4 == 0)
        packets += [bytes(packet) for packet in batch]
    order = fate.draw(st.permutations(range(len(packets))))
    arriving = []
    for index in order:
        copies = fate.draw(st.sampled_from([0, 1, 1, 1, 2]))
        arriving += [packets[index]] * copies
    arriving.insert(fate.draw(st.integers(0, len(arriving))), fate.draw(st.binary(max_size=60)))
    steps = []
    now_us = 0
    position = 0
    while position < len(arriving):
        take = fate.draw(st.integers(1, 8))
        chunk = arriving[position : position + take]
        arrivals = []
        for _ in chunk:
            now_us += fate.draw(st.integers(0, 3000))
            arrivals.append(now_us)
        steps.append((chunk, arrivals, now_us))
        position += take
    steps.append(([], [], now_us + 10_000_000))
    compiled = run_buffer(JitterBuffer(4, video=video, config=config), steps)
    twin = run_buffer(JitterBuffer(4, video=video, config=config, use_jit=False), steps)
    assert compiled == twin


class FakeNetwork:
    """A seeded network with a fake clock: drops, duplicates and delays (so reorders) packets."""

    def __init__(self, seed: int, *, drop: float, duplicate: float, delay_us: tuple[int, int]) -> None:
        self.rng = random.Random(seed)
        self.drop = drop
        self.duplicate = duplicate
        self.delay_us = delay_us
        self.in_flight: list[tuple[int, int, bytes]] = []
        self.sent = 0

    def send(self, packet: bytes, now_us: int, *, reliable: bool = False) -> None:
        if self.rng.random() < self.drop and not reliable:
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            self.sent += 1
            heapq.heappush(self.in_flight, (now_us + self.rng.randint(*self.delay_us), self.sent, packet))

    def arrivals_until(self, now_us: int) -> list[tuple[int, bytes]]:
        arrived = []
        while self.in_flight and self.in_flight[0][0] <= now_us:
            arrival_us, _, packet = heapq.heappop(self.in_flight)
            arrived.append((arrival_us, packet))
        return arrived


def simulate(network: FakeNetwork, config: MediaConfig, *, frames: int, video: bool, resend: bool,
             drop_packet=lambda header: False, seed: int = 7, use_jit: bool = True):
    """Stream ``frames`` frames through the network into a jitter buffer; return what it delivered."""
    rng = random.Random(seed)
    packetizer = Packetizer(3, config, first_packet_seq=0xFF00, first_frame_seq=0xFFF0)
    buffer = JitterBuffer(3, video=video, config=config, use_jit=use_jit)
    sent_packets: dict[int, bytes] = {}
    payloads = []
    delivered = []
    tick_us = 5_000
    uplink_us = 10_000
    pending_resends: list[tuple[int, int]] = []
    end_us = frames * FRAME_INTERVAL_US + 3_000_000
    next_frame = 0
    for now_us in range(0, end_us, tick_us):
        while next_frame < frames and next_frame * FRAME_INTERVAL_US <= now_us:
            key = next_frame % 30 == 0
            payload = frame_payload(next_frame, rng, 6000 if key else rng.randint(200, 2500))
            payloads.append(payload)
            for packet in packetizer.packetize_frame(payload, timestamp_us=next_frame * FRAME_INTERVAL_US,
                                                     group=next_frame // 30, keyframe=key):
                packet = bytes(packet)
                header = decode_packet_header_untrusted(packet)
                sent_packets[header.packet_seq] = packet
                if not drop_packet(header):
                    # The last frame always arrives: frames lost after the last one
                    # that arrives are invisible to any receiver.
                    network.send(packet, now_us, reliable=next_frame == frames - 1)
            next_frame += 1
        while pending_resends and pending_resends[0][0] <= now_us:
            _, seq = heapq.heappop(pending_resends)
            network.send(sent_packets[seq], now_us)
        arrived = network.arrivals_until(now_us)
        if arrived:
            data, offsets, lengths = concatenate([packet for _, packet in arrived])
            buffer.push_batch(data, offsets, lengths, [arrival for arrival, _ in arrived])
        delivered += buffer.pop_ready(now_us)
        for seq in buffer.nacks(now_us):
            if resend:
                heapq.heappush(pending_resends, (now_us + uplink_us, seq))
    delivered += buffer.pop_ready(end_us + 10_000_000)
    return payloads, delivered, buffer.statistics()


def check_exactly_once_in_order(payloads, delivered, stats):
    indexes = [int.from_bytes(frame.payload[:4], "big") for frame in delivered]
    assert indexes == sorted(set(indexes)), "a frame came twice or out of order"
    for index, frame in zip(indexes, delivered, strict=True):
        assert frame.payload == payloads[index]
        assert frame.frame_seq == (0xFFF0 + index) & 0xFFFF
    assert stats.frames_delivered == len(delivered)
    assert stats.frames_delivered + stats.frames_skipped + stats.frames_skipped_to_keyframe == len(payloads)
    return indexes


def test_lossy_network_with_resends_delivers_every_frame():
    config = MediaConfig(fec_k=4, target_delay_min_ms=400.0, target_delay_initial_ms=400.0,
                         target_delay_max_ms=1000.0, nack_retry_limit=4)
    network = FakeNetwork(2024, drop=0.05, duplicate=0.03, delay_us=(5_000, 40_000))
    payloads, delivered, stats = simulate(network, config, frames=300, video=True, resend=True)
    indexes = check_exactly_once_in_order(payloads, delivered, stats)
    assert indexes == list(range(300))
    assert stats.lost == 0 and stats.frames_skipped == 0
    assert stats.recovered_fec > 0 and stats.recovered_resend > 0 and stats.duplicate > 0
    assert 0 < stats.jitter_us < 40_000
    assert config.target_delay_min_ms * 1000 <= stats.target_delay_us <= config.target_delay_max_ms * 1000


def test_twin_matches_kernels_on_the_lossy_network():
    config = MediaConfig(fec_k=4, target_delay_min_ms=100.0, target_delay_initial_ms=100.0)
    results = [
        simulate(FakeNetwork(77, drop=0.08, duplicate=0.03, delay_us=(2_000, 60_000)), config, frames=150,
                 video=True, resend=True, use_jit=use_jit)
        for use_jit in (True, False)
    ]
    assert results[0] == results[1]
    assert results[0][2].frames_delivered > 100


def test_fec_recovers_every_single_loss_per_block_without_resends():
    config = MediaConfig(fec_k=3)
    choice = random.Random(5)
    victims: dict[tuple[int, int], int] = {}
    dropped = []

    def drop_one_per_block(header):
        # Each block is up to 3 data fragments then its parity; one of them, chosen at random, is lost.
        block = header.fragment_index if header.parity else header.fragment_index // 3
        members = min(3, header.fragment_count - block * 3)
        position = members if header.parity else header.fragment_index % 3
        victim = victims.setdefault((header.frame_seq, block), choice.randrange(members + 1))
        if position == victim:
            dropped.append(header)
            return True
        return False

    network = FakeNetwork(1, drop=0.0, duplicate=0.0, delay_us=(5_000, 30_000))
    payloads, delivered, stats = simulate(network, config, frames=120, video=True, resend=False,
                                          drop_packet=drop_one_per_block)
    check_exactly_once_in_order(payloads, delivered, stats)
    assert len(delivered) == 120
    assert stats.lost == 0
    assert stats.recovered_fec == sum(not header.parity for header in dropped) > 50


@pytest.mark.parametrize("video", [True, False], ids=["video", "audio"])
def test_heavy_loss_without_repair_skips_in_order_and_counts(video):
    config = MediaConfig(fec_k=0, target_delay_min_ms=60.0, target_delay_initial_ms=60.0)
    network = FakeNetwork(99, drop=0.15, duplicate=0.05, delay_us=(1_000, 50_000))
    payloads, delivered, stats = simulate(network, config, frames=240, video=video, resend=False)
    indexes = check_exactly_once_in_order(payloads, delivered, stats)
    assert stats.frames_skipped > 0 and stats.lost > 0
    if video:
        assert stats.frames_skipped_to_keyframe > 0
        delivered_set = set(indexes)
        for index in indexes:
            group_start = index - index % 30
            assert all(earlier in delivered_set for earlier in range(group_start, index)), (
                "a video frame was delivered after a loss earlier in its group")
    else:
        assert stats.frames_skipped_to_keyframe == 0


def test_duplicates_and_late_packets_are_counted_not_delivered():
    config = MediaConfig(datagram_payload_bytes=100, fec_k=0, target_delay_min_ms=10.0,
                         target_delay_initial_ms=10.0)
    packets = [bytes(packet) for packet in Packetizer(1, config).packetize_frame(
        bytes(150), timestamp_us=0, group=0, keyframe=True)]
    buffer = JitterBuffer(1, video=True, config=config)
    assert buffer.push(packets[0], 0) and not buffer.push(packets[0], 10)
    assert buffer.pop_ready(5_000) == []
    assert buffer.pop_ready(20_000) == []  # the deadline passed with a fragment missing
    assert not buffer.push(packets[1], 30_000)
    stats = buffer.statistics()
    assert (stats.duplicate, stats.late, stats.frames_skipped, stats.lost) == (1, 1, 1, 2)  # 3 fragments


def test_nacks_respect_reorder_window_retry_limit_and_backoff():
    config = MediaConfig(datagram_payload_bytes=100, fec_k=0, reorder_window_packets=2, nack_retry_limit=3,
                         nack_retry_interval_ms=10.0, nack_backoff_factor=2.0)
    packets = [bytes(packet) for packet in Packetizer(1, config, first_packet_seq=0xFFFE).packetize_frame(
        bytes(700), timestamp_us=0, group=0, keyframe=True)]
    buffer = JitterBuffer(1, video=True, config=config)
    buffer.push(packets[0], 0)
    buffer.push(packets[2], 0)
    buffer.push(packets[3], 0)
    assert buffer.nacks(0) == []  # only 2 newer packets: may still be reordering
    buffer.push(packets[4], 0)
    assert buffer.nacks(0) == [0xFFFF]
    assert buffer.nacks(9_999) == []
    assert buffer.nacks(10_000) == [0xFFFF]
    assert buffer.nacks(29_999) == []
    assert buffer.nacks(30_000) == [0xFFFF]
    assert buffer.nacks(10_000_000) == []  # retry limit reached
    assert buffer.push(packets[1], 40_000)
    assert buffer.statistics().recovered_resend == 1 and buffer.statistics().nacks_sent == 3


def test_target_delay_adapts_to_jitter_within_bounds():
    config = MediaConfig(datagram_payload_bytes=100, fec_k=0, target_delay_min_ms=20.0,
                         target_delay_initial_ms=50.0, target_delay_max_ms=120.0, jitter_delay_factor=4.0)
    packetizer = Packetizer(1, config)
    calm = JitterBuffer(1, video=False, config=config)
    rough = JitterBuffer(1, video=False, config=config)
    rng = random.Random(3)
    for index in range(400):
        packet = bytes(packetizer.packetize_frame(bytes(20), timestamp_us=index * 20_000, group=index,
                                                  keyframe=True)[0])
        calm.push(packet, index * 20_000 + 1_000)
        rough.push(packet, index * 20_000 + rng.randint(0, 200_000))
    assert calm.statistics().target_delay_us == pytest.approx(20_000, rel=0.05)
    assert rough.statistics().target_delay_us == 120_000
    assert rough.statistics().jitter_us > 30_000


@settings(max_examples=150, deadline=None)
@given(junk=st.lists(st.binary(max_size=120), max_size=10), flip=st.integers(0, 10_000))
def test_malformed_packets_are_counted_never_raised(junk, flip):
    config = MediaConfig(datagram_payload_bytes=100, fec_k=2)
    packets = [bytearray(packet) for packet in Packetizer(1, config).packetize_frame(
        bytes(range(250)), timestamp_us=0, group=0, keyframe=True)]
    # Corrupt a header byte: a flipped payload byte is undetectable here (QUIC
    # guards integrity), a flipped header byte must never crash the buffer.
    target = packets[flip % len(packets)]
    target[flip % HEADER_BYTES] ^= 0xFF
    buffer = JitterBuffer(1, video=True, config=config)
    data, offsets, lengths = concatenate([bytes(packet) for packet in packets] + junk)
    accepted = buffer.push_batch(data, offsets, lengths, np.zeros(len(offsets), dtype=np.int64))
    stats = buffer.statistics()
    assert accepted + stats.malformed + stats.duplicate + stats.late + stats.unneeded == len(offsets)
    assert len(buffer.pop_ready(10**9)) <= 1


def test_push_batch_refuses_spans_outside_the_data():
    buffer = JitterBuffer(1, video=False)
    with pytest.raises(ValueError, match="outside"):
        buffer.push_batch(bytes(10), [0, 5], [5, 6], [0, 0])
    assert buffer.statistics().received == 0


def _stalled_stream(config: MediaConfig, stalls_us: tuple[int, ...], stall_length_us: int, *,
                    frames: int, use_jit: bool):
    """Video at 30 fps, 2-5 packets a frame, through a link that now and then stalls: during a
    stall only the first packet gets through on time, the rest arrive together when it ends
    (a receiver descheduled, a sender waiting for its window). Returns the frames skipped
    during each stall and the buffer's statistics at the end."""
    rng = random.Random(5)
    packetizer = Packetizer(2, config)
    buffer = JitterBuffer(2, video=True, config=config, use_jit=use_jit)
    in_flight: list[tuple[int, int, bytes]] = []
    skipped_by_stall = []
    first_through: set[int] = set()  # stalls whose first packet got through
    counter = 0
    tick_us = 5_000
    for now_us in range(0, frames * FRAME_INTERVAL_US + 1_000_000, tick_us):
        index = -(-now_us // FRAME_INTERVAL_US)
        for frame in range(-(-(now_us - tick_us) // FRAME_INTERVAL_US) if now_us else 0, min(index, frames)):
            payload = frame_payload(frame, rng, rng.randint(150, 400))
            for packet in packetizer.packetize_frame(payload, timestamp_us=frame * FRAME_INTERVAL_US,
                                                     group=frame // 30, keyframe=frame % 30 == 0):
                sent_us = frame * FRAME_INTERVAL_US
                arrival_us = sent_us + 1_000
                for start in stalls_us:
                    if start <= sent_us < start + stall_length_us:
                        if start in first_through:
                            arrival_us = start + stall_length_us + 1_000
                        first_through.add(start)
                counter += 1
                heapq.heappush(in_flight, (arrival_us, counter, bytes(packet)))
        arrived = []
        while in_flight and in_flight[0][0] <= now_us:
            arrived.append(heapq.heappop(in_flight))
        if arrived:
            data, offsets, lengths = concatenate([packet for *_, packet in arrived])
            buffer.push_batch(data, offsets, lengths, [arrival for arrival, *_ in arrived])
        buffer.pop_ready(now_us)
        for stall, start in enumerate(stalls_us):
            if now_us == start:
                skipped_by_stall.append(-buffer.statistics().frames_skipped)
            if now_us == start + 500_000:
                skipped_by_stall[stall] += buffer.statistics().frames_skipped
    return skipped_by_stall, buffer.statistics()


@pytest.mark.parametrize("use_jit", [True, False])
def test_a_stall_teaches_the_buffer_to_wait_and_the_lesson_wears_off(use_jit):
    config = MediaConfig(datagram_payload_bytes=100, fec_k=0)
    stalls = (1_500_000, 2_500_000, 16_000_000)
    skipped, stats = _stalled_stream(config, stalls, 150_000, frames=600, use_jit=use_jit)
    # The first stall is met with the 40 ms delay the calm jitter asked for: a frame is given
    # up, and its packets arriving afterwards show how long it really took.
    assert skipped[0] >= 1
    # A second later the buffer still waits long enough: nothing skipped.
    assert skipped[1] == 0
    # 13 s on the lesson has worn off (late_delay_decay_s = 10 s) and a stall skips again.
    assert skipped[2] >= 1
    assert stats.late > 0 and stats.late_delay_us > 0  # learnt again from the last stall
    # Forgetting at once (the smallest decay time) skips in every stall.
    forgetful = dataclasses.replace(config, late_delay_decay_s=0.001)
    skipped, _ = _stalled_stream(forgetful, stalls, 150_000, frames=600, use_jit=use_jit)
    assert all(count >= 1 for count in skipped)
