"""The jitter buffer's pure-Python twin: the kernels' behaviour rewritten with dicts and bytes.

Tests run it beside the numba kernels on the same packets and require the same
frames, NACKs and statistics; the benchmarks measure it as the interpreted
baseline. It parses untrusted input exactly as the kernels do: invalid packets
are counted, never raised.
"""

import dataclasses

from shopcast.codecs._packetizer import (
    _HEADER,
    FLAG_KEYFRAME,
    FLAG_PARITY,
    HEADER_BYTES,
    META_FRAME_SEQ,
    META_GROUP,
    META_KEYFRAME,
    META_LENGTH,
    META_OFFSET,
    META_TIMESTAMP_US,
    META_TRACK,
    check_header_twin,
)

_EXTENDED_START = 1 << 16
_MAX_NACK_WAIT_US = 60_000_000.0


@dataclasses.dataclass(slots=True)
class _Packet:
    """A sequence number the buffer has room for: arrived, rebuilt, or still missing."""

    nack_due_us: int
    state: str = "missing"  # "missing", "received", "recovered" or "not needed"
    payload: bytes = b""
    nacks: int = 0


@dataclasses.dataclass(slots=True)
class _Frame:
    seen_us: int
    described: tuple | None = None  # (base, count, size, stride, fec_k, ts, group, key) once a packet came
    have: int = 0
    left: str = ""  # "", "delivered", "skipped" (deadline, or to make room) or "skipped for key"


def _seq_offset(index: int, fec_k: int) -> int:
    return index + (index // fec_k if fec_k else 0)


def _parity_offset(block: int, count: int, fec_k: int) -> int:
    return min((block + 1) * fec_k, count) + block


def _total(count: int, fec_k: int) -> int:
    return count + (-(-count // fec_k) if fec_k else 0)


def _extend(value: int, highest: int) -> int:
    delta = (value - highest) % 0x10000
    return highest + (delta - 0x10000 if delta >= 0x8000 else delta)


class JitterTwin:
    """Same state machine as ingest/release/nack kernels; counters go to the same ``st``/``fst`` arrays."""

    def __init__(self, *, ring_packets: int, ring_frames: int, max_stride_bytes: int, max_frame_bytes: int,
                 reorder_window_packets: int, nack_retry_limit: int, nack_retry_interval_us: int,
                 nack_backoff_factor: float, delay_min_us: int, delay_max_us: int, jitter_delay_factor: float,
                 target_delay_us: float, video: bool, track: int, late_delay_headroom: float,
                 late_delay_decay_us: int) -> None:
        self.ring = ring_packets
        self.ring_frames = ring_frames
        self.max_stride = max_stride_bytes
        self.max_frame = max_frame_bytes
        self.reorder = reorder_window_packets
        self.nack_limit = nack_retry_limit
        self.nack_interval_us = nack_retry_interval_us
        self.backoff = nack_backoff_factor
        self.delay_min_us = delay_min_us
        self.delay_max_us = delay_max_us
        self.jitter_factor = jitter_delay_factor
        self.video = video
        self.track = track
        self.packets: dict[int, _Packet] = {}
        self.frames: dict[int, _Frame] = {}
        self.started = False
        self.high_seq = self.high_frame = self.next_frame = self.low_seq = 0
        self.last: tuple[int, int] | None = None  # (arrival_us, timestamp_us) of the last packet
        self.wait_key = False
        self.jitter_us = 0.0
        self.target_us = target_delay_us
        self.late_us = 0.0
        self.late_headroom = late_delay_headroom
        self.late_decay_us = late_delay_decay_us
        self.counts = dict.fromkeys(
            ("received", "duplicate", "late", "unneeded", "lost", "fec", "resend", "malformed", "delivered",
             "skipped", "skipped_key", "nacks"), 0)

    # -- leaving frames

    def _advance_low(self, new_low: int) -> None:
        for seq in range(max(self.low_seq, new_low - self.ring), new_low):
            packet = self.packets.get(seq)
            if seq > self.high_seq:
                self.counts["lost"] += 1
            elif packet is not None and packet.state == "missing":
                self.counts["lost"] += 1
                packet.state = "not needed"
        self.low_seq = max(self.low_seq, new_low)

    def _retire(self, outcome: str) -> None:
        frame = self.frames.get(self.next_frame)
        if frame is None:  # never seen, not even through a later frame: skipped to make room
            self.next_frame += 1
            return
        if frame.described is not None:
            base, count, _, _, fec_k, _, _, _ = frame.described
            if outcome == "delivered":
                self._advance_low(base)
                self.low_seq = max(self.low_seq, base + _total(count, fec_k))
            else:
                self._advance_low(base + _total(count, fec_k))
        frame.left = outcome
        self.next_frame += 1

    def _skip(self) -> None:
        frame = self.frames.get(self.next_frame)
        described = frame.described if frame is not None else None
        if self.video and self.wait_key and described is not None and not described[7]:
            self.counts["skipped_key"] += 1
            self._retire("skipped for key")
            return
        self.counts["skipped"] += 1
        if self.video:
            self.wait_key = True
        self._retire("skipped")

    # -- FEC

    def _present(self, seq: int) -> bool:
        packet = self.packets.get(seq)
        return packet is not None and packet.state in ("received", "recovered")

    def _recover(self, block: int, frame: _Frame) -> None:
        base, count, size, stride, fec_k, _, _, _ = frame.described
        parity_seq = base + _parity_offset(block, count, fec_k)
        if not self._present(parity_seq):
            return
        members = range(block * fec_k, min(block * fec_k + fec_k, count))
        missing = [index for index in members if not self._present(base + _seq_offset(index, fec_k))]
        if len(missing) != 1 or base + _seq_offset(missing[0], fec_k) not in self.packets:
            return
        length = min(stride, size - missing[0] * stride)
        value = int.from_bytes(self.packets[parity_seq].payload[:length], "big")
        for index in members:
            if index != missing[0]:
                other = self.packets[base + _seq_offset(index, fec_k)].payload[:length]
                value ^= int.from_bytes(other.ljust(length, b"\0"), "big")
        packet = self.packets[base + _seq_offset(missing[0], fec_k)]
        packet.payload = value.to_bytes(length, "big")
        packet.state = "recovered"
        frame.have += 1
        self.counts["fec"] += 1

    # -- the three entry points, as the kernels

    def ingest(self, data, offsets, lengths, arrivals_us) -> int:
        raw = bytes(data)
        spans = list(zip(offsets.tolist(), lengths.tolist(), arrivals_us.tolist(), strict=True))
        if any(start < 0 or size < 0 or start + size > len(raw) for start, size, _ in spans):
            return -1
        accepted = 0
        for start, size, arrival_us in spans:
            accepted += self._ingest_one(raw[start : start + size], arrival_us)
        return accepted

    def _ingest_one(self, packet: bytes, arrival_us: int) -> int:
        if check_header_twin(packet, self.max_stride, self.max_frame):
            self.counts["malformed"] += 1
            return 0
        flags, fec_k, track, seq16, frame16, index, count, stride, group, size, ts = _HEADER.unpack_from(packet)
        if track != self.track or _total(count, fec_k) * 2 > self.ring:
            self.counts["malformed"] += 1
            return 0
        parity = bool(flags & FLAG_PARITY)
        offset = _parity_offset(index, count, fec_k) if parity else _seq_offset(index, fec_k)
        if not self.started:
            self.started = True
            self.low_seq = seq16 + _EXTENDED_START - offset
            self.high_seq = self.low_seq - 1
            self.next_frame = frame16 + _EXTENDED_START
            self.high_frame = self.next_frame - 1
        seq = _extend(seq16, self.high_seq)
        frame_seq = _extend(frame16, self.high_frame)
        base = seq - offset
        if frame_seq < self.next_frame or seq <= self.high_seq - self.ring or base < self.low_seq:
            old = self.frames.get(frame_seq)
            self.counts["unneeded" if old is not None and old.left == "delivered" else "late"] += 1
            if old is not None and old.left == "skipped":
                needed = float(arrival_us - old.seen_us) * self.late_headroom
                self.late_us = max(self.late_us, min(needed, float(self.delay_max_us)))
            return 0
        while frame_seq - self.next_frame >= self.ring_frames:
            self._skip()
        while self.next_frame < frame_seq and self.low_seq <= seq - self.ring:
            self._skip()
        if self.low_seq <= seq - self.ring:
            self._advance_low(seq - self.ring + 1)
        if seq > self.high_seq:
            # Keys older than the previous window are gone already; drop the ones
            # the window slides past, so the dict holds what the ring would.
            for old in range(self.high_seq - self.ring + 1, seq - self.ring + 1):
                self.packets.pop(old, None)
            for new in range(max(self.high_seq + 1, seq - self.ring + 1), seq + 1):
                self.packets[new] = _Packet(nack_due_us=arrival_us)
            self.high_seq = seq
        if frame_seq > self.high_frame:
            for old in range(self.high_frame - self.ring_frames + 1, frame_seq - self.ring_frames + 1):
                self.frames.pop(old, None)
            for new in range(max(self.high_frame + 1, frame_seq - self.ring_frames + 1), frame_seq + 1):
                self.frames[new] = _Frame(seen_us=arrival_us)
            self.high_frame = frame_seq
        slot = self.packets.get(seq)
        if slot is None:
            self.counts["late"] += 1
            return 0
        if slot.state != "missing":
            self.counts["duplicate" if slot.state == "received" else "unneeded"] += 1
            return 0
        frame = self.frames[frame_seq]
        described = (base, count, size, stride, fec_k, ts, group, flags & FLAG_KEYFRAME)
        if frame.described is None:
            frame.described = described
        elif frame.described != described:
            self.counts["malformed"] += 1
            return 0
        slot.payload = packet[HEADER_BYTES:]
        slot.state = "received"
        self.counts["received"] += 1
        if slot.nacks:
            self.counts["resend"] += 1
        else:
            if self.last is not None:
                if self.late_us > 0.0:
                    elapsed = float(max(arrival_us - self.last[0], 0))
                    self.late_us = max(self.late_us - self.late_us * min(elapsed / self.late_decay_us, 1.0), 0.0)
                transit_change = (arrival_us - self.last[0]) - (ts - self.last[1])
                self.jitter_us += (abs(transit_change) - self.jitter_us) / 16.0
                desired = min(max(self.jitter_factor * self.jitter_us, self.delay_min_us), self.delay_max_us)
                if desired > self.target_us:
                    self.target_us = float(desired)
                else:
                    self.target_us += (desired - self.target_us) / 64.0
            self.last = (arrival_us, ts)
        if not parity:
            frame.have += 1
        if fec_k and frame.have < count:
            block = index if parity else index // fec_k
            if parity or self._present(base + _parity_offset(block, count, fec_k)):
                self._recover(block, frame)
        if frame.have == count:
            for other in range(base, base + _total(count, fec_k)):
                if other in self.packets and self.packets[other].state == "missing":
                    self.packets[other].state = "not needed"
        return 1

    def release(self, now_us: int, out, meta) -> int:
        written = 0
        out_pos = 0
        while self.started and self.next_frame <= self.high_frame and written < meta.shape[0]:
            frame = self.frames[self.next_frame]
            described = frame.described
            if self.video and self.wait_key and described is not None and not described[7]:
                self._skip()
                continue
            if described is not None and frame.have == described[1]:
                base, count, size, _, fec_k, ts, group, key = described
                if out_pos + size > out.shape[0]:
                    break
                payload = b"".join(self.packets[base + _seq_offset(index, fec_k)].payload
                                   for index in range(count))
                out[out_pos : out_pos + size] = memoryview(payload)
                meta[written, META_OFFSET] = out_pos
                meta[written, META_LENGTH] = size
                meta[written, META_TIMESTAMP_US] = ts
                meta[written, META_GROUP] = group
                meta[written, META_FRAME_SEQ] = self.next_frame & 0xFFFF
                meta[written, META_KEYFRAME] = key
                meta[written, META_TRACK] = self.track
                written += 1
                out_pos += size
                self.wait_key = False
                self.counts["delivered"] += 1
                self._retire("delivered")
                continue
            if now_us >= frame.seen_us + int(max(self.target_us, self.late_us)):
                self._skip()
                continue
            break
        return written

    def nack(self, now_us: int, out) -> int:
        written = 0
        if not self.started:
            return written
        for seq in range(max(self.low_seq, self.high_seq - self.ring + 1), self.high_seq - self.reorder):
            if written == out.shape[0]:
                break
            packet = self.packets.get(seq)
            if packet is None or packet.state != "missing" or packet.nacks >= self.nack_limit:
                continue
            if packet.nack_due_us > now_us:
                continue
            out[written] = seq & 0xFFFF
            written += 1
            wait_us = min(self.nack_interval_us * self.backoff ** packet.nacks, _MAX_NACK_WAIT_US)
            packet.nack_due_us = now_us + int(wait_us)
            packet.nacks += 1
            self.counts["nacks"] += 1
        return written
