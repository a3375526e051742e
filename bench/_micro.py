"""The micro suite: packetizer, reassembler and jitter buffer, numba against the twin and a memory copy."""

import dataclasses
import sys
import time
from collections.abc import Callable

import numpy as np
from shopcast.bench._cases import CASES, StreamCase
from shopcast.bench._record import Record
from shopcast.codecs import HEADER_BYTES, JitterBuffer, Packetizer, reassemble_untrusted, warmup

SUITE = "micro"
# Seeded network for the jitter buffer figures: 5 % of packets lost, 10 % swapped with a neighbour.
LOSS = 0.05
REORDER = 0.10
BATCH_PACKETS = 256


def _best_seconds(run: Callable[..., object], repeats: int, setup: Callable[[], tuple] = tuple) -> float:
    """The fastest of ``repeats`` runs: the least disturbed by other work on the machine.

    ``setup`` makes fresh arguments for each run, outside the timing.
    """
    best = float("inf")
    for _ in range(repeats):
        arguments = setup()
        started = time.perf_counter()
        run(*arguments)
        best = min(best, time.perf_counter() - started)
    return best


def _lossy_order(packet_count: int, rng: np.random.Generator) -> np.ndarray:
    """Indexes of the packets that arrive, in arrival order: some dropped, some swapped."""
    order = np.nonzero(rng.random(packet_count) >= LOSS)[0]
    swaps = np.nonzero(rng.random(order.shape[0] - 1) < REORDER)[0]
    for index in swaps:
        order[index], order[index + 1] = order[index + 1], order[index]
    return order


def _jitter_run(buffer: JitterBuffer, data, offsets, lengths, arrivals_us) -> JitterBuffer:
    for start in range(0, offsets.shape[0], BATCH_PACKETS):
        end = min(start + BATCH_PACKETS, offsets.shape[0])
        buffer.push_batch(data, offsets[start:end], lengths[start:end], arrivals_us[start:end])
        buffer.pop_ready_batch(int(arrivals_us[end - 1]))
    return buffer


def run(quick: bool, progress=sys.stderr, config: str | None = None) -> list[Record]:
    """Measure every case of the table; return the records.

    With ``config``, its ``[media]`` section replaces the defaults; a case with FEC takes the
    configured ``fec_k`` (a case without FEC keeps none, as the table compares the two).
    """
    records = [Record(SUITE, "warmup", warmup(), "s")]
    cases = cases_for(quick, config)
    repeats = 3 if quick else 7
    for case in cases:
        print(f"bench micro: {case.name}", file=progress)
        records += _measure_case(case, quick, repeats)
    return records


def cases_for(quick: bool, config: str | None) -> list[StreamCase]:
    """The cases a run measures, under ``config``'s ``[media]`` section when given."""
    cases = list(CASES[:1] if quick else CASES)
    if config is None:
        return cases
    from shopcast.server._config import load_config

    media = load_config(config, environ={}).media
    return [dataclasses.replace(case, media=media, fec_k=media.fec_k if case.fec_k else 0)
            for case in cases]


def _measure_case(case: StreamCase, quick: bool, repeats: int) -> list[Record]:
    """Packetize, reassemble and jitter-buffer one case: numba, the twin and a memory copy."""
    records = []
    frame_count = 300 if quick else 1800
    twin_frames = 20 if quick else 60
    data, offsets, lengths, timestamps_us, groups, keyframes = case.frames(frame_count)
    payload_bits = int(lengths.sum()) * 8

    def packetize(use_jit: bool, frames: int):
        packetizer = Packetizer(1, case.config(), use_jit=use_jit)
        return packetizer.packetize(data, offsets[:frames], lengths[:frames], timestamps_us[:frames],
                                    groups[:frames], keyframes[:frames])

    batch = packetize(True, frame_count)
    packets = len(batch)
    reuse = Packetizer(1, case.config())
    copy_target = np.empty_like(data)
    copy_s = _best_seconds(lambda: np.copyto(copy_target, data), repeats)
    numba_s = _best_seconds(
        lambda: reuse.packetize(data, offsets, lengths, timestamps_us, groups, keyframes, out=batch), repeats
    )
    twin_batch = packetize(False, twin_frames)
    twin_share = len(twin_batch) / packets
    twin_s = _best_seconds(lambda: packetize(False, twin_frames), 1) / twin_share
    records += _side_by_side(f"packetize/{case.name}", payload_bits, packets, numba_s, twin_s, copy_s)

    flat = np.ascontiguousarray(batch.rows).reshape(-1)
    packet_offsets = np.arange(packets, dtype=np.int64) * batch.rows.shape[1]
    frames_out = np.empty(int(batch.lengths.sum()), dtype=np.uint8)
    numba_s = _best_seconds(lambda: reassemble_untrusted(flat, packet_offsets, batch.lengths, out=frames_out),
                            repeats)
    twin_packets = len(twin_batch)
    twin_s = _best_seconds(
        lambda: reassemble_untrusted(flat, packet_offsets[:twin_packets], batch.lengths[:twin_packets],
                                     use_jit=False), 1,
    ) * packets / twin_packets
    records += _side_by_side(f"reassemble/{case.name}", payload_bits, packets, numba_s, twin_s, copy_s)

    rng = np.random.default_rng(1)
    order = _lossy_order(packets, rng)
    arrived_offsets = np.ascontiguousarray(packet_offsets[order])
    arrived_lengths = np.ascontiguousarray(batch.lengths[order])
    # A frame's packets leave together at its timestamp, 10 µs apart, and
    # arrive with up to 5 ms of jitter each.
    stride = case.config().datagram_payload_bytes - HEADER_BYTES
    data_fragments = np.maximum(1, -(-lengths // stride))
    per_frame = data_fragments + (-(-data_fragments // case.fec_k) if case.fec_k else 0)
    first_packet = np.repeat(np.cumsum(per_frame) - per_frame, per_frame)
    sent_us = np.repeat(timestamps_us, per_frame) + (np.arange(packets) - first_packet) * 10
    arrivals_us = np.ascontiguousarray(sent_us[order] + rng.integers(0, 5000, order.shape[0]), dtype=np.int64)
    def fresh_buffer(use_jit: bool):
        return (JitterBuffer(1, video=case.video, config=case.config(), use_jit=use_jit),)

    numba_s = _best_seconds(
        lambda buffer: _jitter_run(buffer, flat, arrived_offsets, arrived_lengths, arrivals_us), repeats,
        lambda: fresh_buffer(True),
    )
    twin_count = min(order.shape[0], 2000 if quick else 6000)
    twin_s = _best_seconds(
        lambda buffer: _jitter_run(buffer, flat, arrived_offsets[:twin_count], arrived_lengths[:twin_count],
                                   arrivals_us[:twin_count]), 1, lambda: fresh_buffer(False),
    ) * order.shape[0] / twin_count
    arrived_bytes = int(arrived_lengths.sum())
    arrived_target = np.empty(arrived_bytes, dtype=np.uint8)
    copy_arrived_s = _best_seconds(lambda: np.copyto(arrived_target, flat[:arrived_bytes]), repeats)
    name = f"jitter/{case.name}"
    arrived = order.shape[0]
    records += [
        Record(SUITE, f"{name}/copy", arrived / copy_arrived_s, "packets/s"),
        Record(SUITE, f"{name}/numba", arrived / numba_s, "packets/s", f"{name}/copy", copy_arrived_s / numba_s),
        Record(SUITE, f"{name}/python", arrived / twin_s, "packets/s", f"{name}/copy", copy_arrived_s / twin_s),
    ]
    return records


def _side_by_side(name: str, payload_bits: int, packets: int, numba_s: float, twin_s: float,
                  copy_s: float) -> list[Record]:
    """Gbit/s and packets/s of numba, the twin and the memory copy; ratios are throughput / copy's."""
    records = []
    for variant, seconds in (("copy", copy_s), ("numba", numba_s), ("python", twin_s)):
        against = None if variant == "copy" else f"{name}/copy"
        ratio = None if variant == "copy" else copy_s / seconds
        records.append(Record(SUITE, f"{name}/{variant}", payload_bits / seconds / 1e9, "Gbit/s", against, ratio))
        records.append(Record(SUITE, f"{name}/{variant}", packets / seconds, "packets/s", against, ratio))
    return records
