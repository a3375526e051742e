"""The jitter buffer: packets in from a lossy, reordering network, whole frames out in order.

This module parses untrusted input: packets come from the network. A packet that
is not valid is dropped and counted (``malformed`` in statistics) rather than
raised, so one bad datagram never costs the other packets of its batch.

State lives in preallocated numpy arrays; three kernels work on it: ingest (a
batch of packets), release (frames whose turn has come) and nack (sequence
numbers to request again). Their pure-Python twin is JitterTwin
(_jitter_twin.py). Time is always passed in, in microseconds.
"""

import dataclasses

import numpy as np
from numba import types
from shopcast.codecs._config import MediaConfig
from shopcast.codecs._jit import READONLY_BYTES, copy_bytes, helper, kernel, readonly_bytes, xor_bytes
from shopcast.codecs._jitter_twin import JitterTwin
from shopcast.codecs._packetizer import (
    FLAG_KEYFRAME,
    FLAG_PARITY,
    HEADER_BYTES,
    META_COLUMNS,
    META_FRAME_SEQ,
    META_GROUP,
    META_KEYFRAME,
    META_LENGTH,
    META_OFFSET,
    META_TIMESTAMP_US,
    META_TRACK,
    Frame,
    FrameBatch,
    _get_u16,
    _get_u32,
    _get_u64,
    check_header,
    fragment_length,
    fragment_seq_offset,
    parity_seq_offset,
)

# cfg: int64 configuration, fixed at construction.
C_RING_MASK = 0
C_FRAME_MASK = 1
C_MAX_STRIDE = 2
C_MAX_FRAME = 3
C_REORDER = 4
C_NACK_LIMIT = 5
C_NACK_INTERVAL_US = 6
C_DELAY_MIN_US = 7
C_DELAY_MAX_US = 8
C_VIDEO = 9
C_TRACK = 10
C_LATE_DECAY_US = 11
C_COLUMNS = 12

# fst: float64 configuration and state.
X_BACKOFF = 0
X_JITTER_FACTOR = 1
X_JITTER_US = 2
X_TARGET_US = 3
X_LATE_US = 4  # playout delay learnt from packets too late for their frame, wearing off
X_LATE_HEADROOM = 5
X_COLUMNS = 6

# st: int64 state and counters.
S_STARTED = 0
S_HIGH_SEQ = 1  # highest extended packet sequence number seen
S_HIGH_FRAME = 2  # highest extended frame sequence number seen
S_NEXT_FRAME = 3  # extended frame sequence number to release next
S_LOW_SEQ = 4  # packets below this belong to frames already released or skipped
S_HAVE_LAST = 5
S_LAST_ARRIVAL_US = 6
S_LAST_TS_US = 7
S_WAIT_KEY = 8  # video: a frame was lost, skip until the next keyframe
S_RECEIVED = 9
S_DUPLICATE = 10
S_LATE = 11
S_LOST = 12
S_FEC = 13
S_RESEND = 14
S_MALFORMED = 15
S_DELIVERED = 16
S_SKIPPED = 17
S_SKIPPED_KEY = 18
S_NACKS_SENT = 19
S_UNNEEDED = 20
S_COLUMNS = 21

# pk: one row per packet slot.
P_SEQ = 0  # extended sequence number of the packet this slot stands for
P_STATE = 1
P_LEN = 2
P_NACKS = 3
P_NACK_DUE_US = 4
P_COLUMNS = 5
# P_STATE values
MISSING = 0
RECEIVED = 1
RECOVERED = 2
NOT_NEEDED = 3  # missing, but its frame is complete without it

# fr: one row per frame slot.
F_SEQ = 0  # extended frame sequence number
F_KNOWN = 1  # a packet of the frame arrived (else only a later frame did)
F_BASE = 2  # extended sequence number of the frame's first packet
F_COUNT = 3
F_SIZE = 4
F_STRIDE = 5
F_K = 6
F_TS = 7
F_GROUP = 8
F_KEY = 9
F_SEEN_US = 10  # when the buffer first knew the frame exists
F_HAVE = 11  # data fragments received or recovered
F_LEFT = 12  # 0 while waiting; DELIVERED, SKIPPED or SKIPPED_FOR_KEY once it left
F_COLUMNS = 13
DELIVERED = 1
SKIPPED = 2  # given up at its deadline (or to make room)
SKIPPED_FOR_KEY = 3  # video: dropped while waiting for the next keyframe, whatever its timing

# Caps the backoff so that factor ** retries cannot overflow int64 microseconds.
_MAX_NACK_WAIT_US = 60_000_000.0
_SEQ_BITS = 16
_EXTENDED_START = 1 << _SEQ_BITS  # keeps extended numbers positive for early reordering

_I64 = types.int64[::1]
_I64_2D = types.int64[:, ::1]
_F64 = types.float64[::1]
_U8 = types.uint8[::1]
_U8_2D = types.uint8[:, ::1]


@helper
def extend_seq(value, highest):
    """The extended sequence number nearest ``highest`` whose low 16 bits are ``value``."""
    delta = (value - highest) & 0xFFFF
    if delta >= 0x8000:
        delta -= 0x10000
    return highest + delta


@helper
def _total_packets(count, fec_k):
    if fec_k == 0:
        return count
    return count + (count + fec_k - 1) // fec_k


@helper
def _advance_low(new_low, cfg, st, pk):
    """Move the low edge up to ``new_low``, counting packets never received as lost."""
    low = st[S_LOW_SEQ]
    if new_low <= low:
        return
    mask = cfg[C_RING_MASK]
    for seq in range(max(low, new_low - mask - 1), new_low):
        slot = seq & mask
        if seq > st[S_HIGH_SEQ]:
            st[S_LOST] += 1  # nothing at or after it arrived yet
        elif pk[slot, P_SEQ] == seq and pk[slot, P_STATE] == MISSING:
            st[S_LOST] += 1
            pk[slot, P_STATE] = NOT_NEEDED
    st[S_LOW_SEQ] = new_low


@helper
def _retire_head(outcome, cfg, st, pk, fr):
    """The head frame leaves (DELIVERED or SKIPPED): advance the frame and packet edges.

    Packets before a known frame that never came belong to frames lost whole and
    are counted lost; a delivered frame's own missing packets (parity it did not
    need) are not.
    """
    fs = st[S_NEXT_FRAME] & cfg[C_FRAME_MASK]
    if fr[fs, F_SEQ] != st[S_NEXT_FRAME]:
        # Never seen, not even through a later frame: skipped to make room.
        st[S_NEXT_FRAME] += 1
        return
    if fr[fs, F_KNOWN]:
        end = fr[fs, F_BASE] + _total_packets(fr[fs, F_COUNT], fr[fs, F_K])
        if outcome == DELIVERED:
            _advance_low(fr[fs, F_BASE], cfg, st, pk)
            st[S_LOW_SEQ] = max(st[S_LOW_SEQ], end)
        else:
            _advance_low(end, cfg, st, pk)
    fr[fs, F_LEFT] = outcome
    st[S_NEXT_FRAME] += 1


@helper
def _skip_head(cfg, st, pk, fr):
    """Give up on the head frame; for video, wait for the next keyframe."""
    fs = st[S_NEXT_FRAME] & cfg[C_FRAME_MASK]
    known = fr[fs, F_SEQ] == st[S_NEXT_FRAME] and fr[fs, F_KNOWN]
    if cfg[C_VIDEO] and st[S_WAIT_KEY] and known and not fr[fs, F_KEY]:
        st[S_SKIPPED_KEY] += 1
        _retire_head(SKIPPED_FOR_KEY, cfg, st, pk, fr)
        return
    st[S_SKIPPED] += 1
    if cfg[C_VIDEO]:
        st[S_WAIT_KEY] = 1
    _retire_head(SKIPPED, cfg, st, pk, fr)


@helper
def _has(pk, slot, seq):
    return pk[slot, P_SEQ] == seq and (pk[slot, P_STATE] == RECEIVED or pk[slot, P_STATE] == RECOVERED)


@helper
def _try_fec(block, fs, cfg, st, pk, pp, fr):
    """Rebuild the one missing data fragment of ``block`` from its parity, if possible."""
    mask = cfg[C_RING_MASK]
    base = fr[fs, F_BASE]
    count = fr[fs, F_COUNT]
    fec_k = fr[fs, F_K]
    parity_seq = base + parity_seq_offset(block, count, fec_k)
    parity_slot = parity_seq & mask
    if not _has(pk, parity_slot, parity_seq):
        return
    missing = -1
    for index in range(block * fec_k, min(block * fec_k + fec_k, count)):
        seq = base + fragment_seq_offset(index, fec_k)
        if not _has(pk, seq & mask, seq):
            if missing >= 0:
                return
            missing = index
    if missing < 0:
        return
    seq = base + fragment_seq_offset(missing, fec_k)
    slot = seq & mask
    if pk[slot, P_SEQ] != seq:
        return
    frag_len = fragment_length(missing, fr[fs, F_SIZE], fr[fs, F_STRIDE])
    copy_bytes(pp[slot], 0, pp[parity_slot], 0, frag_len)
    for index in range(block * fec_k, min(block * fec_k + fec_k, count)):
        if index == missing:
            continue
        other = (base + fragment_seq_offset(index, fec_k)) & mask
        width = min(frag_len, pk[other, P_LEN])
        xor_bytes(pp[slot], 0, pp[other], 0, width)
    pk[slot, P_STATE] = RECOVERED
    pk[slot, P_LEN] = frag_len
    fr[fs, F_HAVE] += 1
    st[S_FEC] += 1


@kernel(types.int64(READONLY_BYTES, _I64, _I64, _I64, _I64, _I64, _F64, _I64_2D, _U8_2D, _I64_2D))
def ingest_kernel(data, offsets, lengths, arrivals_us, cfg, st, fst, pk, pp, fr):
    """Take a batch of packets into the buffer; return how many were accepted.

    Returns -1, changing nothing, if a packet's span reaches outside ``data``
    (the caller's mistake, raised as ValueError by the wrapper).
    """
    for p in range(offsets.shape[0]):
        if offsets[p] < 0 or lengths[p] < 0 or offsets[p] + lengths[p] > data.shape[0]:
            return -1
    ring = cfg[C_RING_MASK] + 1
    mask = cfg[C_RING_MASK]
    frames = cfg[C_FRAME_MASK] + 1
    fmask = cfg[C_FRAME_MASK]
    accepted = 0
    for p in range(offsets.shape[0]):
        pos = offsets[p]
        length = lengths[p]
        arrival_us = arrivals_us[p]
        if check_header(data, pos, length, cfg[C_MAX_STRIDE], cfg[C_MAX_FRAME]) != 0:
            st[S_MALFORMED] += 1
            continue
        flags = np.int64(data[pos])
        fec_k = np.int64(data[pos + 1])
        index = _get_u16(data, pos + 8)
        count = _get_u16(data, pos + 10)
        # A frame must fit half the ring, so that it never overwrites itself.
        if _get_u16(data, pos + 2) != cfg[C_TRACK] or _total_packets(count, fec_k) * 2 > ring:
            st[S_MALFORMED] += 1
            continue
        parity = (flags & FLAG_PARITY) != 0
        if st[S_STARTED] == 0:
            st[S_STARTED] = 1
            offset = parity_seq_offset(index, count, fec_k) if parity else fragment_seq_offset(index, fec_k)
            # The stream starts at the first packet's frame: its earlier packets
            # may still arrive, so the ring starts at the frame's first packet.
            first_frame = _get_u16(data, pos + 6) + _EXTENDED_START
            st[S_LOW_SEQ] = _get_u16(data, pos + 4) + _EXTENDED_START - offset
            st[S_HIGH_SEQ] = st[S_LOW_SEQ] - 1
            st[S_HIGH_FRAME] = first_frame - 1
            st[S_NEXT_FRAME] = first_frame
        ext_seq = extend_seq(_get_u16(data, pos + 4), st[S_HIGH_SEQ])
        ext_frame = extend_seq(_get_u16(data, pos + 6), st[S_HIGH_FRAME])
        offset = parity_seq_offset(index, count, fec_k) if parity else fragment_seq_offset(index, fec_k)
        base = ext_seq - offset
        if ext_frame < st[S_NEXT_FRAME] or ext_seq <= st[S_HIGH_SEQ] - ring or base < st[S_LOW_SEQ]:
            fs = ext_frame & fmask
            if fr[fs, F_SEQ] == ext_frame and fr[fs, F_LEFT] == DELIVERED:
                st[S_UNNEEDED] += 1
            else:
                st[S_LATE] += 1
                if fr[fs, F_SEQ] == ext_frame and fr[fs, F_LEFT] == SKIPPED:
                    # Its frame was given up at the deadline: the delay was too short.
                    needed = float(arrival_us - fr[fs, F_SEEN_US]) * fst[X_LATE_HEADROOM]
                    fst[X_LATE_US] = max(fst[X_LATE_US], min(needed, float(cfg[C_DELAY_MAX_US])))
            continue
        # Make room: frames too old for the rings are skipped, never overwritten.
        while ext_frame - st[S_NEXT_FRAME] >= frames:
            _skip_head(cfg, st, pk, fr)
        while st[S_NEXT_FRAME] < ext_frame and st[S_LOW_SEQ] <= ext_seq - ring:
            _skip_head(cfg, st, pk, fr)
        if st[S_LOW_SEQ] <= ext_seq - ring:
            _advance_low(ext_seq - ring + 1, cfg, st, pk)
        if ext_seq > st[S_HIGH_SEQ]:
            for seq in range(max(st[S_HIGH_SEQ] + 1, ext_seq - ring + 1), ext_seq + 1):
                slot = seq & mask
                pk[slot, P_SEQ] = seq
                pk[slot, P_STATE] = MISSING
                pk[slot, P_NACKS] = 0
                pk[slot, P_NACK_DUE_US] = arrival_us
            st[S_HIGH_SEQ] = ext_seq
        if ext_frame > st[S_HIGH_FRAME]:
            for frame in range(max(st[S_HIGH_FRAME] + 1, ext_frame - frames + 1), ext_frame + 1):
                fs = frame & fmask
                fr[fs, F_SEQ] = frame
                fr[fs, F_KNOWN] = 0
                fr[fs, F_SEEN_US] = arrival_us
                fr[fs, F_HAVE] = 0
                fr[fs, F_LEFT] = 0
            st[S_HIGH_FRAME] = ext_frame
        slot = ext_seq & mask
        if pk[slot, P_SEQ] != ext_seq:
            st[S_LATE] += 1
            continue
        if pk[slot, P_STATE] == RECEIVED:
            st[S_DUPLICATE] += 1
            continue
        if pk[slot, P_STATE] != MISSING:  # rebuilt by FEC, or its frame is complete without it
            st[S_UNNEEDED] += 1
            continue
        size = _get_u32(data, pos + 18)
        stride = _get_u16(data, pos + 12)
        group = _get_u32(data, pos + 14)
        ts = _get_u64(data, pos + 22)
        key = flags & FLAG_KEYFRAME
        fs = ext_frame & fmask
        if fr[fs, F_KNOWN]:
            if (fr[fs, F_BASE] != base or fr[fs, F_COUNT] != count or fr[fs, F_SIZE] != size
                    or fr[fs, F_STRIDE] != stride or fr[fs, F_K] != fec_k or fr[fs, F_TS] != ts
                    or fr[fs, F_GROUP] != group or fr[fs, F_KEY] != key):
                st[S_MALFORMED] += 1
                continue
        else:
            fr[fs, F_KNOWN] = 1
            fr[fs, F_BASE] = base
            fr[fs, F_COUNT] = count
            fr[fs, F_SIZE] = size
            fr[fs, F_STRIDE] = stride
            fr[fs, F_K] = fec_k
            fr[fs, F_TS] = ts
            fr[fs, F_GROUP] = group
            fr[fs, F_KEY] = key
        payload = length - HEADER_BYTES
        copy_bytes(pp[slot], 0, data, pos + HEADER_BYTES, payload)
        pk[slot, P_LEN] = payload
        pk[slot, P_STATE] = RECEIVED
        accepted += 1
        st[S_RECEIVED] += 1
        if pk[slot, P_NACKS] > 0:
            st[S_RESEND] += 1
        elif st[S_HAVE_LAST]:
            if fst[X_LATE_US] > 0.0:
                elapsed = float(max(arrival_us - st[S_LAST_ARRIVAL_US], 0))
                fst[X_LATE_US] = max(fst[X_LATE_US] - fst[X_LATE_US] * min(elapsed / cfg[C_LATE_DECAY_US], 1.0),
                                     0.0)
            # RFC 3550 section 6.4.1 interarrival jitter; resent packets would
            # measure the NACK round trip, not the network, so they are left out.
            transit_change = (arrival_us - st[S_LAST_ARRIVAL_US]) - (ts - st[S_LAST_TS_US])
            fst[X_JITTER_US] += (abs(transit_change) - fst[X_JITTER_US]) / 16.0
            desired = min(max(fst[X_JITTER_FACTOR] * fst[X_JITTER_US], cfg[C_DELAY_MIN_US]), cfg[C_DELAY_MAX_US])
            # Grow at once to stop skipping; shrink slowly so one calm moment
            # does not undo what a burst of jitter taught.
            if desired > fst[X_TARGET_US]:
                fst[X_TARGET_US] = desired
            else:
                fst[X_TARGET_US] += (desired - fst[X_TARGET_US]) / 64.0
        if pk[slot, P_NACKS] == 0:
            st[S_HAVE_LAST] = 1
            st[S_LAST_ARRIVAL_US] = arrival_us
            st[S_LAST_TS_US] = ts
        if not parity:
            fr[fs, F_HAVE] += 1
        if fec_k and fr[fs, F_HAVE] < count:
            block = index if parity else index // fec_k
            # Data usually arrives before its parity: scan the block only once
            # the parity is there, not on every fragment.
            parity_seq = base + parity_seq_offset(block, count, fec_k)
            if parity or _has(pk, parity_seq & mask, parity_seq):
                _try_fec(block, fs, cfg, st, pk, pp, fr)
        if fr[fs, F_HAVE] == count:
            for seq in range(base, base + _total_packets(count, fec_k)):
                other = seq & mask
                if pk[other, P_SEQ] == seq and pk[other, P_STATE] == MISSING:
                    pk[other, P_STATE] = NOT_NEEDED
    return accepted


@kernel(types.int64(types.int64, _I64, _I64, _F64, _I64_2D, _U8_2D, _I64_2D, _U8, _I64_2D))
def release_kernel(now_us, cfg, st, fst, pk, pp, fr, out, meta):
    """Release frames in order: complete ones, and skip those past their deadline; return frames written."""
    mask = cfg[C_RING_MASK]
    fmask = cfg[C_FRAME_MASK]
    n_frames = 0
    out_pos = 0
    while st[S_STARTED] and st[S_NEXT_FRAME] <= st[S_HIGH_FRAME] and n_frames < meta.shape[0]:
        fs = st[S_NEXT_FRAME] & fmask
        known = fr[fs, F_KNOWN] != 0
        if cfg[C_VIDEO] and st[S_WAIT_KEY] and known and not fr[fs, F_KEY]:
            _skip_head(cfg, st, pk, fr)
            continue
        if known and fr[fs, F_HAVE] == fr[fs, F_COUNT]:
            size = fr[fs, F_SIZE]
            if out_pos + size > out.shape[0]:
                break
            base = fr[fs, F_BASE]
            stride = fr[fs, F_STRIDE]
            for index in range(fr[fs, F_COUNT]):
                slot = (base + fragment_seq_offset(index, fr[fs, F_K])) & mask
                start = out_pos + index * stride
                copy_bytes(out, start, pp[slot], 0, pk[slot, P_LEN])
            meta[n_frames, META_OFFSET] = out_pos
            meta[n_frames, META_LENGTH] = size
            meta[n_frames, META_TIMESTAMP_US] = fr[fs, F_TS]
            meta[n_frames, META_GROUP] = fr[fs, F_GROUP]
            meta[n_frames, META_FRAME_SEQ] = st[S_NEXT_FRAME] & 0xFFFF
            meta[n_frames, META_KEYFRAME] = fr[fs, F_KEY]
            meta[n_frames, META_TRACK] = cfg[C_TRACK]
            n_frames += 1
            out_pos += size
            st[S_WAIT_KEY] = 0
            st[S_DELIVERED] += 1
            _retire_head(DELIVERED, cfg, st, pk, fr)
            continue
        if now_us >= fr[fs, F_SEEN_US] + np.int64(max(fst[X_TARGET_US], fst[X_LATE_US])):
            _skip_head(cfg, st, pk, fr)
            continue
        break
    return n_frames


@kernel(types.int64(types.int64, _I64, _I64, _F64, _I64_2D, _I64))
def nack_kernel(now_us, cfg, st, fst, pk, out):
    """Write the 16-bit sequence numbers due for a (re)request into ``out``; return how many."""
    mask = cfg[C_RING_MASK]
    n = 0
    if st[S_STARTED] == 0:
        return n
    for seq in range(max(st[S_LOW_SEQ], st[S_HIGH_SEQ] - mask), st[S_HIGH_SEQ] - cfg[C_REORDER]):
        if n == out.shape[0]:
            break
        slot = seq & mask
        if (pk[slot, P_SEQ] != seq or pk[slot, P_STATE] != MISSING or pk[slot, P_NACKS] >= cfg[C_NACK_LIMIT]
                or pk[slot, P_NACK_DUE_US] > now_us):
            continue
        out[n] = seq & 0xFFFF
        n += 1
        wait_us = min(cfg[C_NACK_INTERVAL_US] * fst[X_BACKOFF] ** pk[slot, P_NACKS], _MAX_NACK_WAIT_US)
        pk[slot, P_NACK_DUE_US] = now_us + np.int64(wait_us)
        pk[slot, P_NACKS] += 1
        st[S_NACKS_SENT] += 1
    return n


# Counter names shared with JitterTwin.counts, and their columns in ``st``.
_COUNTER_COLUMNS = {
    "received": S_RECEIVED, "duplicate": S_DUPLICATE, "late": S_LATE, "unneeded": S_UNNEEDED, "lost": S_LOST,
    "fec": S_FEC, "resend": S_RESEND, "malformed": S_MALFORMED, "delivered": S_DELIVERED, "skipped": S_SKIPPED,
    "skipped_key": S_SKIPPED_KEY, "nacks": S_NACKS_SENT,
}


@dataclasses.dataclass(frozen=True)
class JitterStatistics:
    """What a jitter buffer has seen, since it was made."""

    received: int  #: packets accepted (data and parity)
    lost: int  #: packets that never arrived and were not rebuilt, counted when their frame left
    recovered_fec: int  #: data fragments rebuilt from parity
    recovered_resend: int  #: packets that arrived after a NACK asked for them
    late: int  #: packets that arrived after their frame had been skipped (or was too old to place)
    unneeded: int  #: packets whose frame was already complete (by FEC) or delivered without them
    duplicate: int  #: packets already received
    malformed: int  #: packets dropped as invalid or for another track
    frames_delivered: int  #: frames released complete, in order
    frames_skipped: int  #: frames given up at their playout deadline
    frames_skipped_to_keyframe: int  #: video frames dropped after a loss in their group
    nacks_sent: int  #: sequence numbers requested, retries included
    jitter_us: float  #: RFC 3550 interarrival jitter estimate (µs)
    target_delay_us: float  #: playout delay adapted to the jitter (µs)
    late_delay_us: float  #: playout delay learnt from late packets, wearing off (µs); the larger of the two holds


class JitterBuffer:
    """Reorders, repairs and paces the packets of one track.

    ``push_batch`` takes many packets in one kernel call; ``pop_ready`` releases
    frames in order once complete, or skips them at their playout deadline;
    ``nacks`` lists the sequence numbers to request again. Not thread-safe.

    ``video=True`` enables skipping to the next keyframe after a lost frame.
    ``use_jit=False`` runs the pure-Python twin (JitterTwin) instead of the kernels.
    """

    def __init__(self, track: int, *, video: bool, config: MediaConfig = MediaConfig(), use_jit: bool = True) -> None:
        ring = config.ring_packets
        stride_bytes = config.datagram_payload_bytes - HEADER_BYTES
        self._cfg = np.zeros(C_COLUMNS, dtype=np.int64)
        self._cfg[C_RING_MASK] = ring - 1
        self._cfg[C_FRAME_MASK] = config.ring_frames - 1
        self._cfg[C_MAX_STRIDE] = stride_bytes
        self._cfg[C_MAX_FRAME] = config.max_frame_bytes
        self._cfg[C_REORDER] = config.reorder_window_packets
        self._cfg[C_NACK_LIMIT] = config.nack_retry_limit
        self._cfg[C_NACK_INTERVAL_US] = round(config.nack_retry_interval_ms * 1000)
        self._cfg[C_DELAY_MIN_US] = round(config.target_delay_min_ms * 1000)
        self._cfg[C_DELAY_MAX_US] = round(config.target_delay_max_ms * 1000)
        self._cfg[C_VIDEO] = int(video)
        if not 0 <= track <= 0xFFFF:
            raise ValueError(f"track must fit 16 bits, not {track}")
        self._cfg[C_TRACK] = track
        self._cfg[C_LATE_DECAY_US] = max(1, round(config.late_delay_decay_s * 1_000_000))
        self._fst = np.zeros(X_COLUMNS, dtype=np.float64)
        self._fst[X_LATE_HEADROOM] = config.late_delay_headroom
        self._fst[X_BACKOFF] = config.nack_backoff_factor
        self._fst[X_JITTER_FACTOR] = config.jitter_delay_factor
        self._fst[X_TARGET_US] = config.target_delay_initial_ms * 1000
        self._st = np.zeros(S_COLUMNS, dtype=np.int64)
        # Everything the ring holds fits the output at once.
        self._out = np.empty(ring * stride_bytes, dtype=np.uint8)
        self._meta = np.empty((config.ring_frames, META_COLUMNS), dtype=np.int64)
        self._nack_out = np.empty(ring, dtype=np.int64)
        self._twin = None
        if use_jit:
            self._pk = np.zeros((ring, P_COLUMNS), dtype=np.int64)
            self._pk[:, P_SEQ] = -1
            self._pp = np.zeros((ring, stride_bytes), dtype=np.uint8)
            self._fr = np.zeros((config.ring_frames, F_COLUMNS), dtype=np.int64)
            self._fr[:, F_SEQ] = -1
        else:
            self._twin = JitterTwin(
                ring_packets=ring, ring_frames=config.ring_frames, max_stride_bytes=stride_bytes,
                max_frame_bytes=config.max_frame_bytes, reorder_window_packets=config.reorder_window_packets,
                nack_retry_limit=config.nack_retry_limit, nack_retry_interval_us=int(self._cfg[C_NACK_INTERVAL_US]),
                nack_backoff_factor=config.nack_backoff_factor, delay_min_us=int(self._cfg[C_DELAY_MIN_US]),
                delay_max_us=int(self._cfg[C_DELAY_MAX_US]), jitter_delay_factor=config.jitter_delay_factor,
                target_delay_us=float(self._fst[X_TARGET_US]), video=video, track=track,
                late_delay_headroom=config.late_delay_headroom,
                late_delay_decay_us=int(self._cfg[C_LATE_DECAY_US]),
            )

    def push_batch(self, data, offsets, lengths, arrivals_us) -> int:
        """Take many packets (one buffer plus offset and length arrays) in one kernel call.

        ``arrivals_us`` holds each packet's arrival time (µs). Returns the number
        of packets accepted; the others are counted as late, duplicate or malformed.
        """
        buffer = readonly_bytes(data)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
        lengths = np.ascontiguousarray(lengths, dtype=np.int64).reshape(-1)
        arrivals_us = np.ascontiguousarray(arrivals_us, dtype=np.int64).reshape(-1)
        if not offsets.shape == lengths.shape == arrivals_us.shape:
            raise ValueError("offsets, lengths and arrivals_us must have one entry per packet")
        if self._twin is not None:
            accepted = self._twin.ingest(buffer, offsets, lengths, arrivals_us)
        else:
            accepted = ingest_kernel(buffer, offsets, lengths, arrivals_us, self._cfg, self._st, self._fst,
                                     self._pk, self._pp, self._fr)
        if accepted < 0:
            raise ValueError("a packet's offset and length reach outside the data buffer")
        return int(accepted)

    def push(self, packet, arrival_us: int) -> bool:
        """Take one packet; True if it was accepted. Prefer push_batch on the hot path."""
        size = len(memoryview(packet).cast("B"))
        return self.push_batch(packet, [0], [size], [arrival_us]) == 1

    def pop_ready_batch(self, now_us: int) -> FrameBatch:
        """Release every frame whose turn has come by ``now_us``, in one kernel call.

        The batch's arrays are views into the buffer's own output, valid until
        the next pop; copy what must outlive it.
        """
        if self._twin is not None:
            n_frames = self._twin.release(int(now_us), self._out, self._meta)
        else:
            n_frames = release_kernel(int(now_us), self._cfg, self._st, self._fst, self._pk, self._pp, self._fr,
                                      self._out, self._meta)
        return FrameBatch(self._out, self._meta[:n_frames])

    def pop_ready(self, now_us: int) -> list[Frame]:
        """Release every frame whose turn has come by ``now_us``, as Frame objects (copies)."""
        frames: list[Frame] = []
        while True:
            batch = self.pop_ready_batch(now_us)
            if not len(batch):
                return frames
            frames.extend(batch)

    def nacks(self, now_us: int) -> list[int]:
        """16-bit sequence numbers to request again now; each call counts as one try for each."""
        if self._twin is not None:
            count = self._twin.nack(int(now_us), self._nack_out)
        else:
            count = nack_kernel(int(now_us), self._cfg, self._st, self._fst, self._pk, self._nack_out)
        return self._nack_out[:count].tolist()

    def statistics(self) -> JitterStatistics:
        """Counters and estimates since the buffer was made."""
        if self._twin is not None:
            counts = self._twin.counts
            jitter_us, target_delay_us = self._twin.jitter_us, self._twin.target_us
            late_delay_us = self._twin.late_us
        else:
            counts = {name: int(self._st[column]) for name, column in _COUNTER_COLUMNS.items()}
            jitter_us, target_delay_us = float(self._fst[X_JITTER_US]), float(self._fst[X_TARGET_US])
            late_delay_us = float(self._fst[X_LATE_US])
        return JitterStatistics(
            received=counts["received"], lost=counts["lost"], recovered_fec=counts["fec"],
            recovered_resend=counts["resend"], late=counts["late"], unneeded=counts["unneeded"],
            duplicate=counts["duplicate"], malformed=counts["malformed"], frames_delivered=counts["delivered"],
            frames_skipped=counts["skipped"], frames_skipped_to_keyframe=counts["skipped_key"],
            nacks_sent=counts["nacks"], jitter_us=jitter_us, target_delay_us=target_delay_us,
            late_delay_us=late_delay_us,
        )
