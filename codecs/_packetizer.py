"""The packetizer: frames cut into datagram-sized fragments with XOR FEC, and put back together.

This module parses untrusted input: packets come from the network, and every
decoder here raises :class:`MalformedMedia` on bytes that are not a valid packet.

Wire format of one packet (big-endian, ``HEADER_BYTES`` = 30), then the fragment::

    0  u8   version << 4 | PARITY (0x2) | KEYFRAME (0x1)
    1  u8   fec_k: data fragments per parity fragment, 0 = no FEC
    2  u16  track
    4  u16  packet sequence number (per track, wraps)
    6  u16  frame sequence number (per track, wraps)
    8  u16  fragment index (a parity packet: its FEC block index)
    10 u16  fragment count: data fragments in the frame
    12 u16  fragment stride: payload bytes of every data fragment but the last
    14 u32  group
    18 u32  frame size (bytes)
    22 u64  timestamp (microseconds)

The packets of one frame have consecutive sequence numbers: each FEC block's
data fragments, then that block's parity fragment (the XOR of the block's
fragments, each zero-padded to the first one's length). Every packet carries
the whole frame description, so any one of them tells the receiver where the
frame starts, how long it is and which fragment length to expect.
"""

import dataclasses
import struct
from collections.abc import Iterator, Sequence

import numpy as np
from numba import types
from shopcast.codecs._config import MediaConfig
from shopcast.codecs._errors import MalformedMedia
from shopcast.codecs._jit import READONLY_BYTES, copy_bytes, helper, kernel, readonly_bytes, xor_bytes

HEADER_BYTES = 30
VERSION = 1
FLAG_KEYFRAME = 0x01
FLAG_PARITY = 0x02
_HEADER = struct.Struct(">BBHHHHHHIIQ")
assert _HEADER.size == HEADER_BYTES

# Codes returned by the header check, turned into messages in Python.
_HEADER_ERRORS = {
    11: "header disagrees with the other packets of its frame",
    12: "timestamp beyond 2**63 microseconds",
    1: "shorter than the 30-byte header",
    2: "unknown version",
    3: "unknown flag bits",
    4: "fragment stride or count is zero",
    5: "frame size exceeds the largest frame allowed",
    6: "fragment count does not match frame size and stride",
    7: "fragment index beyond the fragment count",
    8: "payload length does not match the header",
    9: "parity fragment without FEC",
    10: "fragment stride larger than a datagram allows",
}

_I64 = types.int64[::1]
_I64_2D = types.int64[:, ::1]
_U8_2D = types.uint8[:, ::1]
_U8 = types.uint8[::1]


# Columns of the frame metadata array written by the reassembler and the jitter buffer.
META_OFFSET = 0
META_LENGTH = 1
META_TIMESTAMP_US = 2
META_GROUP = 3
META_FRAME_SEQ = 4
META_KEYFRAME = 5
META_TRACK = 6
META_COLUMNS = 7


@helper
def _get_u16(data, pos):
    return (np.int64(data[pos]) << 8) | np.int64(data[pos + 1])


@helper
def _get_u32(data, pos):
    return (_get_u16(data, pos) << 16) | _get_u16(data, pos + 2)


@helper
def _get_u64(data, pos):
    return (_get_u32(data, pos) << 32) | _get_u32(data, pos + 4)


@helper
def _put_u16(out, row, pos, value):
    out[row, pos] = (value >> 8) & 0xFF
    out[row, pos + 1] = value & 0xFF


@helper
def _put_u32(out, row, pos, value):
    _put_u16(out, row, pos, (value >> 16) & 0xFFFF)
    _put_u16(out, row, pos + 2, value & 0xFFFF)


@helper
def _put_header(out, row, flags, fec_k, track, packet_seq, frame_seq, index, count, stride, group, size, ts):
    out[row, 0] = flags
    out[row, 1] = fec_k
    _put_u16(out, row, 2, track)
    _put_u16(out, row, 4, packet_seq & 0xFFFF)
    _put_u16(out, row, 6, frame_seq & 0xFFFF)
    _put_u16(out, row, 8, index)
    _put_u16(out, row, 10, count)
    _put_u16(out, row, 12, stride)
    _put_u32(out, row, 14, group)
    _put_u32(out, row, 18, size)
    _put_u32(out, row, 22, (ts >> 32) & 0xFFFFFFFF)
    _put_u32(out, row, 26, ts & 0xFFFFFFFF)


@helper
def fragment_count(size, stride):
    """Data fragments of a frame of ``size`` bytes: an empty frame still sends one."""
    if size == 0:
        return np.int64(1)
    return (size + stride - 1) // stride


@helper
def fragment_seq_offset(index, fec_k):
    """Position of data fragment ``index`` among its frame's packets (parity interleaved)."""
    if fec_k == 0:
        return index
    return index + index // fec_k


@helper
def parity_seq_offset(block, count, fec_k):
    """Position of the parity packet of ``block`` among its frame's packets."""
    return min((block + 1) * fec_k, count) + block


@helper
def fragment_length(index, size, stride):
    """Payload bytes of data fragment ``index`` (the last one may be short)."""
    return min(stride, size - index * stride)


@helper
def check_header(data, pos, length, max_stride, max_frame_bytes):
    """0 if ``data[pos:pos+length]`` holds a valid packet, else an error code."""
    if length < HEADER_BYTES:
        return 1
    flags = np.int64(data[pos])
    if flags >> 4 != VERSION:
        return 2
    if flags & 0x0C:
        return 3
    if data[pos + 22] & 0x80:
        return 12
    fec_k = np.int64(data[pos + 1])
    index = _get_u16(data, pos + 8)
    count = _get_u16(data, pos + 10)
    stride = _get_u16(data, pos + 12)
    size = _get_u32(data, pos + 18)
    if stride == 0 or count == 0:
        return 4
    if stride > max_stride:
        return 10
    if size > max_frame_bytes:
        return 5
    if count != fragment_count(size, stride):
        return 6
    payload = length - HEADER_BYTES
    if flags & FLAG_PARITY:
        if fec_k == 0:
            return 9
        if index >= (count + fec_k - 1) // fec_k:
            return 7
        expected = fragment_length(index * fec_k, size, stride)
    else:
        if index >= count:
            return 7
        expected = fragment_length(index, size, stride)
    if payload != max(expected, 0):
        return 8
    return 0


@kernel(
    types.int64(
        READONLY_BYTES, _I64, _I64, _I64, _I64, _U8,
        types.int64, types.int64, types.int64, types.int64, types.int64, _U8_2D, _I64,
    )
)
def packetize_kernel(
    data, offsets, lengths, timestamps_us, groups, keyframes,
    track, first_packet_seq, first_frame_seq, stride, fec_k, out, out_lengths,
):
    """Write every packet of every frame into the rows of ``out``; return the packets written."""
    row = 0
    for f in range(offsets.shape[0]):
        start = offsets[f]
        size = lengths[f]
        count = fragment_count(size, stride)
        flags = (VERSION << 4) | (FLAG_KEYFRAME if keyframes[f] else 0)
        frame_seq = first_frame_seq + f
        block_size = count if fec_k == 0 else fec_k
        first = 0
        block = 0
        while first < count:
            end = min(first + block_size, count)
            parity_row = row + (end - first)
            parity_len = max(fragment_length(first, size, stride), 0)
            if fec_k:
                out[parity_row, HEADER_BYTES:HEADER_BYTES + parity_len] = 0
            for index in range(first, end):
                frag_start = start + index * stride
                frag_len = max(fragment_length(index, size, stride), 0)
                _put_header(out, row, flags, fec_k, track, first_packet_seq + row, frame_seq,
                            index, count, stride, groups[f], size, timestamps_us[f])
                copy_bytes(out[row], HEADER_BYTES, data, frag_start, frag_len)
                if fec_k:
                    xor_bytes(out[parity_row], HEADER_BYTES, data, frag_start, frag_len)
                out_lengths[row] = HEADER_BYTES + frag_len
                row += 1
            if fec_k:
                _put_header(out, row, flags | FLAG_PARITY, fec_k, track, first_packet_seq + row, frame_seq,
                            block, count, stride, groups[f], size, timestamps_us[f])
                out_lengths[row] = HEADER_BYTES + parity_len
                row += 1
            first = end
            block += 1
    return row


@helper
def _finish_frame(data, out, meta, n_frames, out_pos, have, parity_at, count, size, stride, fec_k,
                  timestamp_us, group, frame_seq, flags, track):
    """Recover single losses per FEC block; record the frame in ``meta`` if it is complete."""
    received = 0
    for index in range(count):
        received += have[index]
    fits = out_pos + size <= out.shape[0]
    if fits and received < count and fec_k:
        for first in range(0, count, fec_k):
            end = min(first + fec_k, count)
            block = first // fec_k
            missing = -1
            n_missing = 0
            for index in range(first, end):
                if not have[index]:
                    missing = index
                    n_missing += 1
            if n_missing != 1 or parity_at[block] < 0:
                continue
            frag_len = fragment_length(missing, size, stride)
            dst = out_pos + missing * stride
            src = parity_at[block]
            copy_bytes(out, dst, data, src, frag_len)
            for index in range(first, end):
                if index == missing:
                    continue
                other = out_pos + index * stride
                width = min(frag_len, fragment_length(index, size, stride))
                xor_bytes(out, dst, out, other, width)
            have[missing] = 1
            received += 1
    complete = fits and received == count
    if complete:
        meta[n_frames, META_OFFSET] = out_pos
        meta[n_frames, META_LENGTH] = size
        meta[n_frames, META_TIMESTAMP_US] = timestamp_us
        meta[n_frames, META_GROUP] = group
        meta[n_frames, META_FRAME_SEQ] = frame_seq
        meta[n_frames, META_KEYFRAME] = flags & FLAG_KEYFRAME
        meta[n_frames, META_TRACK] = track
    have[:count] = 0
    parity_at[: (count + max(fec_k, 1) - 1) // max(fec_k, 1)] = -1
    return complete


@kernel(
    types.int64(
        READONLY_BYTES, _I64, _I64, types.int64, types.int64,
        _U8, _I64_2D, _U8, _I64, _I64,
    )
)
def reassemble_kernel(data, offsets, lengths, max_stride, max_frame_bytes, out, meta, have, parity_at, status):
    """Put frames back together from packets grouped by frame (any order within a frame).

    Writes each complete frame to ``out`` and a row of ``meta``; returns the
    number of frames. ``status[0]`` counts frames that stayed incomplete;
    ``status[1]`` is the index of the first malformed packet (then returns -1)
    and ``status[2]`` its error code.
    """
    n_frames = 0
    out_pos = 0
    active = False
    cur_track = cur_seq = cur_count = cur_size = cur_stride = cur_k = 0
    cur_group = cur_ts = cur_flags = 0
    capacity = out.shape[0]
    for p in range(offsets.shape[0]):
        pos = offsets[p]
        length = lengths[p]
        code = check_header(data, pos, length, max_stride, max_frame_bytes)
        if code:
            status[1] = p
            status[2] = code
            return -1
        flags = np.int64(data[pos])
        track = _get_u16(data, pos + 2)
        frame_seq = _get_u16(data, pos + 6)
        if active and (track != cur_track or frame_seq != cur_seq):
            if _finish_frame(data, out, meta, n_frames, out_pos, have, parity_at,
                             cur_count, cur_size, cur_stride, cur_k,
                             cur_ts, cur_group, cur_seq, cur_flags, cur_track):
                n_frames += 1
                out_pos += cur_size
            else:
                status[0] += 1
            active = False
        fec_k = np.int64(data[pos + 1])
        count = _get_u16(data, pos + 10)
        stride = _get_u16(data, pos + 12)
        group = _get_u32(data, pos + 14)
        size = _get_u32(data, pos + 18)
        ts = _get_u64(data, pos + 22)
        if not active:
            active = True
            cur_track, cur_seq, cur_count, cur_size, cur_stride, cur_k = track, frame_seq, count, size, stride, fec_k
            cur_group, cur_ts, cur_flags = group, ts, flags & FLAG_KEYFRAME
        elif (count != cur_count or size != cur_size or stride != cur_stride or fec_k != cur_k
              or group != cur_group or ts != cur_ts or (flags & FLAG_KEYFRAME) != cur_flags):
            status[1] = p
            status[2] = 11
            return -1
        index = _get_u16(data, pos + 8)
        if flags & FLAG_PARITY:
            parity_at[index] = pos + HEADER_BYTES
            continue
        dst = out_pos + index * stride
        frag_len = length - HEADER_BYTES
        # A fragment that does not fit cannot belong to a frame that will be
        # complete (complete frames use at most the bytes they arrived in).
        if have[index] or dst + frag_len > capacity:
            continue
        copy_bytes(out, dst, data, pos + HEADER_BYTES, frag_len)
        have[index] = 1
    if active:
        if _finish_frame(data, out, meta, n_frames, out_pos, have, parity_at,
                         cur_count, cur_size, cur_stride, cur_k,
                         cur_ts, cur_group, cur_seq, cur_flags, cur_track):
            n_frames += 1
        else:
            status[0] += 1
    return n_frames


def packetize_twin(
    data, offsets, lengths, timestamps_us, groups, keyframes,
    track, first_packet_seq, first_frame_seq, stride, fec_k, out, out_lengths,
):
    """Plain-Python reference of :func:`packetize_kernel`, written with struct and bytes."""
    raw = bytes(data)
    row = 0

    def emit(flags, index, payload):
        nonlocal row
        header = _HEADER.pack(
            flags, fec_k, track, (first_packet_seq + row) & 0xFFFF, frame_seq & 0xFFFF,
            index, count, stride, groups[f], size, timestamps_us[f],
        )
        packet = header + payload
        out[row, : len(packet)] = np.frombuffer(packet, dtype=np.uint8)
        out_lengths[row] = len(packet)
        row += 1

    for f in range(len(offsets)):
        frame = raw[offsets[f] : offsets[f] + lengths[f]]
        size = len(frame)
        count = max(1, -(-size // stride))
        frame_seq = first_frame_seq + f
        flags = (VERSION << 4) | (FLAG_KEYFRAME if keyframes[f] else 0)
        fragments = [frame[i * stride : (i + 1) * stride] for i in range(count)]
        blocks = [fragments] if fec_k == 0 else [fragments[i : i + fec_k] for i in range(0, count, fec_k)]
        for block, members in enumerate(blocks):
            first_index = 0 if fec_k == 0 else block * fec_k
            for offset, fragment in enumerate(members):
                emit(flags, first_index + offset, fragment)
            if fec_k:
                parity = 0
                width = len(members[0])
                for fragment in members:
                    parity ^= int.from_bytes(fragment.ljust(width, b"\0"), "big")
                emit(flags | FLAG_PARITY, block, parity.to_bytes(width, "big"))
    return row


def reassemble_twin(data, offsets, lengths, max_stride, max_frame_bytes, out, meta, have, parity_at, status):
    """Plain-Python reference of :func:`reassemble_kernel`, written with struct and dicts."""
    raw = bytes(data)
    runs = []  # [(header fields, {index: payload}, {block: parity})] per run of one frame
    for p in range(len(offsets)):
        packet = raw[offsets[p] : offsets[p] + lengths[p]]
        code = check_header_twin(packet, max_stride, max_frame_bytes)
        if code:
            status[1], status[2] = p, code
            return -1
        flags, fec_k, track, _, frame_seq, index, count, stride, group, size, ts = _HEADER.unpack_from(packet)
        described = (track, frame_seq, fec_k, count, stride, group, size, ts, flags & FLAG_KEYFRAME)
        if not runs or runs[-1][0][:2] != described[:2]:
            runs.append((described, {}, {}))
        elif runs[-1][0] != described:
            status[1], status[2] = p, 11
            return -1
        fragments, parities = runs[-1][1], runs[-1][2]
        if flags & FLAG_PARITY:
            parities[index] = packet[HEADER_BYTES:]
        else:
            fragments.setdefault(index, packet[HEADER_BYTES:])
    n_frames = 0
    out_pos = 0
    for (track, frame_seq, fec_k, count, stride, group, size, ts, key), fragments, parities in runs:
        if out_pos + size > len(out):
            status[0] += 1
            continue
        if fec_k:
            for block in range(-(-count // fec_k)):
                members = range(block * fec_k, min((block + 1) * fec_k, count))
                lost = [index for index in members if index not in fragments]
                if len(lost) != 1 or block not in parities:
                    continue
                width = len(parities[block])
                value = int.from_bytes(parities[block], "big")
                for index in members:
                    if index != lost[0]:
                        value ^= int.from_bytes(fragments[index].ljust(width, b"\0"), "big")
                fragments[lost[0]] = value.to_bytes(width, "big")[: max(0, min(stride, size - lost[0] * stride))]
        if len(fragments) < count:
            status[0] += 1
            continue
        frame = b"".join(fragments[index] for index in range(count))
        out[out_pos : out_pos + size] = np.frombuffer(frame, dtype=np.uint8)
        meta[n_frames, :] = (out_pos, size, ts, group, frame_seq, key, track)
        n_frames += 1
        out_pos += size
    return n_frames


def check_header_twin(packet: bytes, max_stride: int, max_frame_bytes: int) -> int:
    """Plain-Python reference of the header check: 0 or an error code of ``_HEADER_ERRORS``."""
    if len(packet) < HEADER_BYTES:
        return 1
    flags, fec_k, _, _, _, index, count, stride, _, size, _ = _HEADER.unpack_from(packet)
    if flags >> 4 != VERSION:
        return 2
    if flags & 0x0C:
        return 3
    if packet[22] & 0x80:
        return 12
    if stride == 0 or count == 0:
        return 4
    if stride > max_stride:
        return 10
    if size > max_frame_bytes:
        return 5
    if count != max(1, -(-size // stride)):
        return 6
    if flags & FLAG_PARITY:
        if fec_k == 0:
            return 9
        if index >= -(-count // fec_k):
            return 7
        first = index * fec_k
    else:
        if index >= count:
            return 7
        first = index
    if len(packet) - HEADER_BYTES != max(0, min(stride, size - first * stride)):
        return 8
    return 0


@dataclasses.dataclass(frozen=True)
class PacketHeader:
    """The header of one packet, decoded."""

    track: int  #: track number, chosen by the publisher
    packet_seq: int  #: 16-bit packet sequence number (wraps)
    frame_seq: int  #: 16-bit frame sequence number (wraps)
    group: int  #: group (starts at a keyframe)
    timestamp_us: int  #: presentation time of the frame (µs)
    keyframe: bool  #: the frame starts a group
    parity: bool  #: an FEC parity fragment rather than data
    fragment_index: int  #: data fragment index, or FEC block index for parity
    fragment_count: int  #: data fragments in the frame
    fragment_stride_bytes: int  #: payload bytes of every data fragment but the last
    frame_size_bytes: int  #: bytes of the whole frame
    fec_k: int  #: data fragments per parity fragment, 0 = no FEC


def decode_packet_header_untrusted(
    packet, *, max_stride_bytes: int = 0xFFFF, max_frame_bytes: int = MediaConfig.max_frame_bytes
) -> PacketHeader:
    """Decode and check the header of one packet; raise MalformedMedia if it is not valid."""
    raw = bytes(packet)
    code = check_header_twin(raw, max_stride_bytes, max_frame_bytes)
    if code:
        raise MalformedMedia("media packet", _HEADER_ERRORS[code])
    flags, fec_k, track, packet_seq, frame_seq, index, count, stride, group, size, ts = _HEADER.unpack_from(raw)
    return PacketHeader(
        track=track, packet_seq=packet_seq, frame_seq=frame_seq, group=group, timestamp_us=ts,
        keyframe=bool(flags & FLAG_KEYFRAME), parity=bool(flags & FLAG_PARITY), fragment_index=index,
        fragment_count=count, fragment_stride_bytes=stride, frame_size_bytes=size, fec_k=fec_k,
    )


@dataclasses.dataclass(frozen=True)
class Frame:
    """One media frame, as given to the packetizer and as it leaves the reassembler."""

    track: int  #: track number
    group: int  #: group number (a group starts at a keyframe)
    frame_seq: int  #: 16-bit frame sequence number within the track
    timestamp_us: int  #: presentation time (µs)
    keyframe: bool  #: the frame starts a group
    payload: bytes  #: the codec bytes


@dataclasses.dataclass(frozen=True)
class PacketBatch:
    """Packets written by one packetize call: row ``i`` of ``rows`` holds ``lengths[i]`` bytes.

    Rows have the same size, so a batch can go to the socket as one GSO send.
    """

    rows: np.ndarray  #: uint8 [packets, datagram_payload_bytes]
    lengths: np.ndarray  #: int64 [packets], bytes used in each row

    def __len__(self) -> int:
        return self.lengths.shape[0]

    def __getitem__(self, index: int) -> memoryview:
        return memoryview(self.rows[index, : self.lengths[index]])

    def __iter__(self) -> Iterator[memoryview]:
        return (self[index] for index in range(len(self)))


@dataclasses.dataclass(frozen=True)
class FrameBatch:
    """Frames written by one kernel call: payload bytes in ``data``, one row of ``meta`` each."""

    data: np.ndarray  #: uint8, the frames' payloads back to back
    meta: np.ndarray  #: int64 [frames, META_COLUMNS]: offset, length, timestamp_us, group, frame_seq, keyframe, track

    def __len__(self) -> int:
        return self.meta.shape[0]

    def __getitem__(self, index: int) -> Frame:
        row = self.meta[index]
        start = int(row[META_OFFSET])
        return Frame(
            track=int(row[META_TRACK]), group=int(row[META_GROUP]), frame_seq=int(row[META_FRAME_SEQ]),
            timestamp_us=int(row[META_TIMESTAMP_US]), keyframe=bool(row[META_KEYFRAME]),
            payload=self.data[start : start + int(row[META_LENGTH])].tobytes(),
        )

    def __iter__(self) -> Iterator[Frame]:
        return (self[index] for index in range(len(self)))


def concatenate(chunks: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte buffers laid end to end: (data, offsets, lengths) as the batch kernels take them."""
    lengths = np.fromiter((len(chunk) for chunk in chunks), dtype=np.int64, count=len(chunks))
    offsets = np.zeros(len(chunks), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    data = np.frombuffer(b"".join(bytes(chunk) for chunk in chunks), dtype=np.uint8)
    return data, offsets, lengths


def _int64_array(values, count: int, name: str) -> np.ndarray:
    array = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
    if array.shape[0] != count:
        raise ValueError(f"{name} has {array.shape[0]} entries for {count} frames")
    return array


class Packetizer:
    """Cuts the frames of one track into packets, numbering packets and frames as it goes.

    Not thread-safe; one per track. ``use_jit=False`` runs the plain-Python twin.
    """

    def __init__(self, track: int, config: MediaConfig = MediaConfig(), *, first_packet_seq: int = 0,
                 first_frame_seq: int = 0, use_jit: bool = True) -> None:
        if not 0 <= track <= 0xFFFF:
            raise ValueError(f"track must fit 16 bits, not {track}")
        self.track = track
        self.stride_bytes = config.datagram_payload_bytes - HEADER_BYTES
        self.fec_k = config.fec_k
        self.max_frame_bytes = config.max_frame_bytes
        self.datagram_payload_bytes = config.datagram_payload_bytes
        self.next_packet_seq = first_packet_seq & 0xFFFF
        self.next_frame_seq = first_frame_seq & 0xFFFF
        self._packetize = packetize_kernel if use_jit else packetize_twin

    def packet_count(self, lengths: np.ndarray) -> int:
        """Packets (data and parity) that frames of these lengths (bytes) are cut into."""
        counts = np.maximum(1, -(-lengths // self.stride_bytes))
        parity = -(-counts // self.fec_k) if self.fec_k else 0
        return int(np.sum(counts + parity))

    def packetize(self, data, offsets, lengths, timestamps_us, groups, keyframes, *,
                  out: PacketBatch | None = None) -> PacketBatch:
        """Cut many frames, given as one buffer plus offset and length arrays, in one kernel call.

        ``out``, a batch from an earlier call with at least as many rows, is
        reused instead of allocating; the result then views its rows.
        """
        buffer = readonly_bytes(data)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
        count = offsets.shape[0]
        lengths = _int64_array(lengths, count, "lengths")
        timestamps_us = _int64_array(timestamps_us, count, "timestamps_us")
        groups = _int64_array(groups, count, "groups")
        keyframes = np.ascontiguousarray(keyframes, dtype=np.uint8).reshape(-1)
        if keyframes.shape[0] != count:
            raise ValueError(f"keyframes has {keyframes.shape[0]} entries for {count} frames")
        if count and (
            offsets.min() < 0 or lengths.min() < 0 or int((offsets + lengths).max()) > buffer.shape[0]
        ):
            raise ValueError("a frame's offset and length reach outside the data buffer")
        if count and int(lengths.max()) > self.max_frame_bytes:
            raise ValueError(f"a frame is larger than max_frame_bytes ({self.max_frame_bytes})")
        if count and (timestamps_us.min() < 0 or groups.min() < 0 or groups.max() > 0xFFFFFFFF):
            raise ValueError("timestamps_us must be >= 0 and groups must fit 32 bits")
        n_packets = self.packet_count(lengths)
        if out is None:
            rows = np.empty((n_packets, self.datagram_payload_bytes), dtype=np.uint8)
            row_lengths = np.empty(n_packets, dtype=np.int64)
        elif len(out) < n_packets or out.rows.shape[1] != self.datagram_payload_bytes:
            raise ValueError(f"out holds {len(out)} rows of {out.rows.shape[1]} bytes; {n_packets} rows of "
                             f"{self.datagram_payload_bytes} bytes are needed")
        else:
            rows, row_lengths = out.rows[:n_packets], out.lengths[:n_packets]
        written = self._packetize(
            buffer, offsets, lengths, timestamps_us, groups, keyframes, self.track,
            self.next_packet_seq, self.next_frame_seq, self.stride_bytes, self.fec_k, rows, row_lengths,
        )
        assert written == n_packets, "packet count disagrees with the kernel"
        self.next_packet_seq = (self.next_packet_seq + n_packets) & 0xFFFF
        self.next_frame_seq = (self.next_frame_seq + count) & 0xFFFF
        return PacketBatch(rows, row_lengths)

    def packetize_frame(self, payload, *, timestamp_us: int, group: int, keyframe: bool) -> PacketBatch:
        """Cut one frame; a convenience over :meth:`packetize`."""
        size = len(memoryview(payload).cast("B"))
        return self.packetize(payload, [0], [size], [timestamp_us], [group], [keyframe])


def reassemble_untrusted(
    data, offsets, lengths, *, max_stride_bytes: int = 0xFFFF,
    max_frame_bytes: int = MediaConfig.max_frame_bytes, out: np.ndarray | None = None, use_jit: bool = True,
) -> tuple[FrameBatch, int]:
    """Put frames back together from packets that arrive grouped by frame, in one kernel call.

    The packets of a frame may come in any order and one fragment per FEC block
    may be missing. Returns the complete frames and the number of frames that
    stayed incomplete. Raises MalformedMedia naming the first invalid packet.
    ``out``, a uint8 array at least as long as the packets' payloads together,
    is written instead of a new one. For a lossy, reordering network use the
    JitterBuffer instead.
    """
    buffer = readonly_bytes(data)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
    lengths = _int64_array(lengths, offsets.shape[0], "lengths")
    if offsets.shape[0] and (
        offsets.min() < 0 or lengths.min() < 0 or int((offsets + lengths).max()) > buffer.shape[0]
    ):
        raise ValueError("a packet's offset and length reach outside the data buffer")
    # Complete frames never need more bytes than their packets' payloads.
    capacity = int(np.maximum(lengths - HEADER_BYTES, 0).sum())
    if out is None:
        out = np.empty(capacity, dtype=np.uint8)
    elif out.dtype != np.uint8 or out.ndim != 1 or not out.flags.c_contiguous or out.shape[0] < capacity:
        raise ValueError(f"out must be a contiguous uint8 array of at least {capacity} bytes")
    else:
        out = out[:capacity]
    meta = np.zeros((offsets.shape[0], META_COLUMNS), dtype=np.int64)
    have = np.zeros(0x10000, dtype=np.uint8)
    parity_at = np.full(0x10000, -1, dtype=np.int64)
    status = np.zeros(3, dtype=np.int64)
    reassemble = reassemble_kernel if use_jit else reassemble_twin
    n_frames = reassemble(buffer, offsets, lengths, max_stride_bytes, max_frame_bytes, out, meta, have,
                          parity_at, status)
    if n_frames < 0:
        raise MalformedMedia("media packet", f"packet {status[1]}: {_HEADER_ERRORS[int(status[2])]}")
    return FrameBatch(out, meta[:n_frames]), int(status[0])
