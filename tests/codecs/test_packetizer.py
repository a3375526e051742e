"""Packetizer and reassembler: numba against the twin, FEC, and untrusted packets."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shopcast.bench._cases import CASES
from shopcast.codecs import (
    HEADER_BYTES,
    MalformedMedia,
    MediaConfig,
    Packetizer,
    concatenate,
    decode_packet_header_untrusted,
    reassemble_untrusted,
)
from shopcast.codecs._packetizer import reassemble_kernel, reassemble_twin

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
frames_strategy = st.lists(st.binary(max_size=700), min_size=1, max_size=8)


def packetize(frames, *, fec_k, payload_bytes=100, use_jit=True, first_packet_seq=0, first_frame_seq=0):
    config = MediaConfig(datagram_payload_bytes=payload_bytes, fec_k=fec_k)
    packetizer = Packetizer(5, config, use_jit=use_jit, first_packet_seq=first_packet_seq,
                            first_frame_seq=first_frame_seq)
    data, offsets, lengths = concatenate(frames)
    count = len(frames)
    timestamps = np.arange(count) * 20_000 + 1_000_000_000_000
    groups = np.arange(count) // 3
    keyframes = np.arange(count) % 3 == 0
    return packetizer.packetize(data, offsets, lengths, timestamps, groups, keyframes)


@SETTINGS
@given(frames=frames_strategy, fec_k=st.sampled_from([0, 1, 2, 5]), payload_bytes=st.integers(31, 200),
       first_packet_seq=st.integers(0, 0xFFFF))
def test_packetize_kernel_matches_twin(frames, fec_k, payload_bytes, first_packet_seq):
    compiled = packetize(frames, fec_k=fec_k, payload_bytes=payload_bytes, first_packet_seq=first_packet_seq)
    twin = packetize(frames, fec_k=fec_k, payload_bytes=payload_bytes, first_packet_seq=first_packet_seq,
                     use_jit=False)
    assert np.array_equal(compiled.lengths, twin.lengths)
    assert [bytes(packet) for packet in compiled] == [bytes(packet) for packet in twin]


@SETTINGS
@given(frames=frames_strategy, fec_k=st.sampled_from([0, 2, 3]), drops=st.sets(st.integers(0, 80), max_size=6),
       swaps=st.lists(st.integers(0, 80), max_size=6))
def test_reassemble_kernel_matches_twin_with_loss_and_reorder(frames, fec_k, drops, swaps):
    packets = [bytes(packet) for packet in packetize(frames, fec_k=fec_k)]
    for index in swaps:
        # Swap only within a frame: the reassembler takes packets grouped by frame.
        if index + 1 < len(packets) and packets[index][6:8] == packets[index + 1][6:8]:
            packets[index], packets[index + 1] = packets[index + 1], packets[index]
    packets = [packet for index, packet in enumerate(packets) if index not in drops]
    data, offsets, lengths = concatenate(packets)
    compiled, incomplete = reassemble_untrusted(data, offsets, lengths)
    twin, twin_incomplete = reassemble_untrusted(data, offsets, lengths, use_jit=False)
    assert incomplete == twin_incomplete
    assert list(compiled) == list(twin)
    assert len(compiled) + incomplete == len({packet[6:8] for packet in packets})


@SETTINGS
@given(frames=frames_strategy, fec_k=st.sampled_from([0, 1, 4]),
       as_type=st.sampled_from([bytes, bytearray, memoryview]))
def test_roundtrip_restores_every_frame(frames, fec_k, as_type):
    batch = packetize(frames, fec_k=fec_k, first_frame_seq=0xFFFE)
    data, offsets, lengths = concatenate([bytes(packet) for packet in batch])
    out, incomplete = reassemble_untrusted(as_type(data.tobytes()), offsets, lengths)
    assert incomplete == 0
    assert [frame.payload for frame in out] == frames
    assert [frame.frame_seq for frame in out] == [(0xFFFE + index) & 0xFFFF for index in range(len(frames))]
    assert [frame.keyframe for frame in out] == [index % 3 == 0 for index in range(len(frames))]
    assert all(len(packet) <= 100 for packet in batch)


@SETTINGS
@given(frames=frames_strategy, fec_k=st.sampled_from([1, 2, 3, 8]), choice=st.randoms(use_true_random=False))
def test_fec_recovers_any_single_loss_per_block(frames, fec_k, choice):
    packets = [bytes(packet) for packet in packetize(frames, fec_k=fec_k)]
    blocks: dict[tuple[bytes, int], list[int]] = {}
    for position, packet in enumerate(packets):
        header = decode_packet_header_untrusted(packet)
        block = header.fragment_index if header.parity else header.fragment_index // fec_k
        blocks.setdefault((packet[6:8], block), []).append(position)
    dropped = {choice.choice(members) for members in blocks.values()}
    kept = [packet for position, packet in enumerate(packets) if position not in dropped]
    out, incomplete = reassemble_untrusted(*concatenate(kept))
    assert incomplete == 0
    assert [frame.payload for frame in out] == frames


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_table_cases_roundtrip_through_both_implementations(case):
    data, offsets, lengths, timestamps, groups, keyframes = case.frames(8, scale=0.05)
    expected = [data[start : start + size].tobytes() for start, size in zip(offsets, lengths, strict=True)]
    for use_jit in (True, False):
        batch = Packetizer(2, case.config(), use_jit=use_jit).packetize(
            data, offsets, lengths, timestamps, groups, keyframes)
        packet_data, packet_offsets, packet_lengths = concatenate(list(batch))
        out, incomplete = reassemble_untrusted(packet_data, packet_offsets, packet_lengths, use_jit=use_jit)
        assert incomplete == 0 and [frame.payload for frame in out] == expected
        assert [frame.timestamp_us for frame in out] == timestamps.tolist()
        assert [frame.group for frame in out] == groups.tolist()


def test_packetize_refuses_bad_arguments():
    packetizer = Packetizer(1)
    with pytest.raises(ValueError):
        packetizer.packetize(b"abc", [0], [4], [0], [0], [True])
    with pytest.raises(ValueError):
        packetizer.packetize(b"abc", [0], [3], [-1], [0], [True])
    with pytest.raises(ValueError):
        Packetizer(1, MediaConfig(max_frame_bytes=1024)).packetize_frame(bytes(2000), timestamp_us=0, group=0,
                                                                          keyframe=True)
    with pytest.raises(ValueError):
        Packetizer(70000)


def test_header_fields_decode():
    batch = Packetizer(9, MediaConfig(datagram_payload_bytes=HEADER_BYTES + 10, fec_k=2),
                       first_packet_seq=0xFFFF).packetize_frame(bytes(25), timestamp_us=123, group=7, keyframe=True)
    headers = [decode_packet_header_untrusted(packet) for packet in batch]
    assert [header.packet_seq for header in headers] == [0xFFFF, 0, 1, 2, 3]
    assert [header.parity for header in headers] == [False, False, True, False, True]
    assert {(h.track, h.group, h.timestamp_us, h.keyframe, h.fragment_count, h.frame_size_bytes) for h in headers} == {
        (9, 7, 123, True, 3, 25)}


@settings(max_examples=300, deadline=None)
@given(packet=st.binary(max_size=80))
def test_decode_header_raises_only_malformed(packet):
    try:
        decode_packet_header_untrusted(packet)
    except MalformedMedia:
        pass


@SETTINGS
@given(frames=frames_strategy, flips=st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 255)), max_size=4),
       cut=st.integers(0, 5000))
def test_reassemble_raises_only_malformed_on_corrupt_packets(frames, flips, cut):
    packets = [bytearray(packet) for packet in packetize(frames, fec_k=2)]
    data = bytearray(b"".join(packets))
    for position, mask in flips:
        if position < len(data):
            data[position] ^= mask
    _, offsets, lengths = concatenate(packets)
    offsets, lengths = offsets[: cut % (len(packets) + 1)], lengths[: cut % (len(packets) + 1)]
    for use_jit in (True, False):
        status = None
        try:
            out, incomplete = reassemble_untrusted(bytes(data), offsets, lengths, use_jit=use_jit)
            status = (len(out), incomplete)
        except MalformedMedia:
            status = "malformed"
        if use_jit:
            expected = status
    assert status == expected


def test_reassemble_names_the_bad_packet():
    packets = [bytes(packet) for packet in packetize([b"x" * 150], fec_k=0)]
    packets[1] = packets[1][:-1]
    with pytest.raises(MalformedMedia, match="packet 1: payload length"):
        reassemble_untrusted(*concatenate(packets))


def test_kernel_and_twin_agree_on_error_codes():
    packet = bytearray(bytes(packetize([b"abc"], fec_k=0)[0]))
    packet[0] = 0x20  # version 2
    data, offsets, lengths = concatenate([bytes(packet)])
    results = []
    for reassemble in (reassemble_kernel, reassemble_twin):
        status = np.zeros(3, dtype=np.int64)
        count = reassemble(data, offsets, lengths, 0xFFFF, 1 << 20, np.empty(10, np.uint8),
                           np.zeros((1, 7), np.int64), np.zeros(0x10000, np.uint8), np.full(0x10000, -1), status)
        results.append((count, status.tolist()))
    assert results[0] == results[1] == (-1, [0, 0, 2])


def test_reassemble_into_a_reused_buffer():
    frames = [b"a" * 150, b"b" * 20]
    data, offsets, lengths = concatenate([bytes(packet) for packet in packetize(frames, fec_k=2)])
    out = np.zeros(1000, dtype=np.uint8)
    batch, incomplete = reassemble_untrusted(data, offsets, lengths, out=out)
    assert incomplete == 0 and [frame.payload for frame in batch] == frames
    assert out[:170].tobytes() == b"".join(frames)
    with pytest.raises(ValueError, match="at least"):
        reassemble_untrusted(data, offsets, lengths, out=np.zeros(10, dtype=np.uint8))
