"""Opus: the TOC byte of a packet (RFC 6716 section 3.1): mode, bandwidth, frame duration, channels.

This module parses untrusted input and raises :class:`MalformedMedia` on invalid bytes.
"""

import dataclasses

from shopcast.codecs._errors import MalformedMedia

# RFC 6716 Table 2, by configuration number: (mode, audio bandwidth in Hz, frame duration in µs).
_SILK_US = (10000, 20000, 40000, 60000)
_HYBRID_US = (10000, 20000)
_CELT_US = (2500, 5000, 10000, 20000)
_CONFIGS = tuple(
    [("silk", bandwidth, duration) for bandwidth in (4000, 6000, 8000) for duration in _SILK_US]
    + [("hybrid", bandwidth, duration) for bandwidth in (12000, 20000) for duration in _HYBRID_US]
    + [("celt", bandwidth, duration) for bandwidth in (4000, 8000, 12000, 20000) for duration in _CELT_US]
)
_MAX_PACKET_US = 120000


@dataclasses.dataclass(frozen=True)
class OpusToc:
    """The table-of-contents byte of an Opus packet, with the frame count it implies."""

    config: int  #: configuration number, 0..31
    mode: str  #: "silk", "hybrid" or "celt"
    bandwidth_hz: int  #: audio bandwidth (4000 narrowband ... 20000 fullband)
    frame_duration_us: int  #: duration of each frame (µs)
    channels: int  #: 1 mono, 2 stereo
    frames: int  #: frames in the packet

    @property
    def packet_duration_us(self) -> int:
        """Audio the packet holds (µs)."""
        return self.frame_duration_us * self.frames


def parse_opus_toc_untrusted(packet) -> OpusToc:
    """Decode the TOC byte (and, for code 3, the frame count byte) of an Opus packet."""
    raw = bytes(packet[:2])
    if not raw:
        raise MalformedMedia("Opus packet", "empty")
    toc = raw[0]
    config = toc >> 3
    mode, bandwidth_hz, frame_duration_us = _CONFIGS[config]
    code = toc & 0x3
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        if len(raw) < 2:
            raise MalformedMedia("Opus packet", "code 3 packet without a frame count byte")
        frames = raw[1] & 0x3F
        if frames == 0:
            raise MalformedMedia("Opus packet", "code 3 packet with zero frames")
    if frames * frame_duration_us > _MAX_PACKET_US:
        raise MalformedMedia("Opus packet", "more than 120 ms of audio in one packet")
    return OpusToc(
        config=config, mode=mode, bandwidth_hz=bandwidth_hz, frame_duration_us=frame_duration_us,
        channels=2 if toc & 0x4 else 1, frames=frames,
    )
