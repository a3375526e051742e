"""H.264 bitstream: Annex B and AVCC framing, NAL unit types, SPS, avcC, keyframes.

This module parses untrusted input (NAL units from RTMP and WebTransport
publishers); every parser raises :class:`MalformedMedia` on invalid bytes.
"""

import dataclasses
import enum

from shopcast.codecs._bits import BitReader
from shopcast.codecs._errors import MalformedMedia


class NalType(enum.IntEnum):
    """nal_unit_type values of H.264 Table 7-1 that shopcast acts on."""

    SLICE = 1
    SLICE_IDR = 5
    SEI = 6
    SPS = 7
    PPS = 8
    AUD = 9
    END_OF_SEQUENCE = 10
    FILLER = 12


# Profiles whose SPS carries chroma format and bit depth (H.264 7.3.2.1.1), and
# whose avcC record carries them too (ISO/IEC 14496-15 5.3.3.1.2).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
_AVCC_EXTENSION_PROFILES = frozenset({100, 110, 122, 144})


def nal_type(nal: bytes) -> int:
    """The nal_unit_type of one NAL unit (its low five header bits)."""
    if not nal:
        raise MalformedMedia("H.264 NAL unit", "empty")
    if nal[0] & 0x80:
        raise MalformedMedia("H.264 NAL unit", "forbidden_zero_bit is set")
    return nal[0] & 0x1F


def split_annexb_untrusted(data) -> list[bytes]:
    """The NAL units of an Annex B byte stream (start codes 00 00 01 or 00 00 00 01)."""
    raw = bytes(data)
    starts = []
    pos = raw.find(b"\x00\x00\x01")
    if raw and (pos < 0 or raw[:pos].strip(b"\x00")):
        raise MalformedMedia("H.264 Annex B stream", "does not begin with a start code")
    while pos >= 0:
        starts.append(pos + 3)
        pos = raw.find(b"\x00\x00\x01", pos + 3)
    nals = []
    for index, start in enumerate(starts):
        end = starts[index + 1] - 3 if index + 1 < len(starts) else len(raw)
        # Trailing zeros belong to the next 4-byte start code (or are trailing_zero_8bits).
        nal = raw[start:end].rstrip(b"\x00")
        if nal:
            nals.append(nal)
    return nals


def split_avcc_untrusted(data, length_size: int = 4) -> list[bytes]:
    """The NAL units of a length-prefixed (AVCC) access unit."""
    if length_size not in (1, 2, 4):
        raise ValueError(f"length_size must be 1, 2 or 4, not {length_size}")
    raw = bytes(data)
    nals = []
    pos = 0
    while pos < len(raw):
        if pos + length_size > len(raw):
            raise MalformedMedia("H.264 AVCC access unit", "truncated NAL length")
        size = int.from_bytes(raw[pos : pos + length_size], "big")
        pos += length_size
        if size == 0 or pos + size > len(raw):
            raise MalformedMedia("H.264 AVCC access unit",
                                 f"NAL length {size} does not fit the {len(raw) - pos} bytes left")
        nals.append(raw[pos : pos + size])
        pos += size
    return nals


def join_annexb(nals) -> bytes:
    """NAL units as an Annex B byte stream with 4-byte start codes."""
    return b"".join(b"\x00\x00\x00\x01" + bytes(nal) for nal in nals)


def join_avcc(nals, length_size: int = 4) -> bytes:
    """NAL units as a length-prefixed (AVCC) access unit."""
    limit = 1 << (8 * length_size)
    parts = []
    for nal in nals:
        if len(nal) >= limit:
            raise ValueError(f"a NAL unit of {len(nal)} bytes does not fit a {length_size}-byte length")
        parts.append(len(nal).to_bytes(length_size, "big") + bytes(nal))
    return b"".join(parts)


def annexb_to_avcc_untrusted(data, length_size: int = 4) -> bytes:
    """Annex B to length-prefixed framing, as MP4, FLV and WebCodecs with avcC expect."""
    return join_avcc(split_annexb_untrusted(data), length_size)


def avcc_to_annexb_untrusted(data, length_size: int = 4) -> bytes:
    """Length-prefixed to Annex B framing."""
    return join_annexb(split_avcc_untrusted(data, length_size))


def is_keyframe(nals) -> bool:
    """True if the access unit holds an IDR slice, so decoding can start there."""
    return any(nal and nal[0] & 0x1F == NalType.SLICE_IDR for nal in nals)


def unescape_rbsp(nal: bytes) -> bytes:
    """The RBSP of a NAL unit payload: emulation prevention bytes (00 00 03) removed."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


@dataclasses.dataclass(frozen=True)
class Sps:
    """What a sequence parameter set says about the stream."""

    profile_idc: int  #: profile (66 baseline, 77 main, 100 high, ...)
    constraint_flags: int  #: the constraint_set flags byte
    level_idc: int  #: level times ten (31 is level 3.1)
    chroma_format_idc: int  #: 1 is 4:2:0
    bit_depth_luma: int  #: bits per luma sample
    bit_depth_chroma: int  #: bits per chroma sample
    width: int  #: displayed width after cropping (pixels)
    height: int  #: displayed height after cropping (pixels)
    frame_rate: float | None  #: frames per second from VUI timing, if present

    @property
    def codec_string(self) -> str:
        """The WebCodecs / RFC 6381 codec string, ``avc1.PPCCLL``."""
        return f"avc1.{self.profile_idc:02x}{self.constraint_flags:02x}{self.level_idc:02x}"


def _skip_scaling_list(reader: BitReader, size: int) -> None:
    last_scale = next_scale = 8
    for _ in range(size):
        if next_scale != 0:
            delta = reader.se()
            if not -128 <= delta <= 127:
                raise MalformedMedia("H.264 SPS", "delta_scale out of range")
            next_scale = (last_scale + delta + 256) % 256
        last_scale = next_scale or last_scale


def parse_sps_untrusted(nal) -> Sps:
    """Parse an SPS NAL unit (header byte included), as in H.264 section 7.3.2.1.1 and Annex E."""
    raw = bytes(nal)
    if nal_type(raw) != NalType.SPS:
        raise MalformedMedia("H.264 SPS", f"NAL unit type {raw[0] & 0x1F} is not an SPS")
    reader = BitReader(unescape_rbsp(raw[1:]), "H.264 SPS")
    profile_idc = reader.bits(8)
    constraint_flags = reader.bits(8)
    level_idc = reader.bits(8)
    if reader.ue() > 31:
        raise MalformedMedia("H.264 SPS", "seq_parameter_set_id above 31")
    chroma_format_idc, separate_colour_plane, bit_depth_luma, bit_depth_chroma = 1, False, 8, 8
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = reader.ue()
        if chroma_format_idc > 3:
            raise MalformedMedia("H.264 SPS", "chroma_format_idc above 3")
        if chroma_format_idc == 3:
            separate_colour_plane = reader.flag()
        bit_depth_luma = reader.ue() + 8
        bit_depth_chroma = reader.ue() + 8
        if bit_depth_luma > 14 or bit_depth_chroma > 14:
            raise MalformedMedia("H.264 SPS", "bit depth above 14")
        reader.flag()  # qpprime_y_zero_transform_bypass_flag
        if reader.flag():  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format_idc != 3 else 12):
                if reader.flag():
                    _skip_scaling_list(reader, 16 if index < 6 else 64)
    if reader.ue() > 12:
        raise MalformedMedia("H.264 SPS", "log2_max_frame_num_minus4 above 12")
    pic_order_cnt_type = reader.ue()
    if pic_order_cnt_type == 0:
        if reader.ue() > 12:
            raise MalformedMedia("H.264 SPS", "log2_max_pic_order_cnt_lsb_minus4 above 12")
    elif pic_order_cnt_type == 1:
        reader.flag()
        reader.se()
        reader.se()
        cycle = reader.ue()
        if cycle > 255:
            raise MalformedMedia("H.264 SPS", "num_ref_frames_in_pic_order_cnt_cycle above 255")
        for _ in range(cycle):
            reader.se()
    elif pic_order_cnt_type != 2:
        raise MalformedMedia("H.264 SPS", "pic_order_cnt_type above 2")
    reader.ue()  # max_num_ref_frames
    reader.flag()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = reader.ue() + 1
    height_map_units = reader.ue() + 1
    frame_mbs_only = reader.flag()
    if not frame_mbs_only:
        reader.flag()  # mb_adaptive_frame_field_flag
    reader.flag()  # direct_8x8_inference_flag
    crop_left = crop_right = crop_top = crop_bottom = 0
    if reader.flag():  # frame_cropping_flag
        crop_left, crop_right, crop_top, crop_bottom = reader.ue(), reader.ue(), reader.ue(), reader.ue()
    chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
    field_factor = 1 if frame_mbs_only else 2
    if chroma_array_type == 0:
        crop_unit_x, crop_unit_y = 1, field_factor
    else:
        sub_width_c = 1 if chroma_array_type == 3 else 2
        sub_height_c = 2 if chroma_array_type == 1 else 1
        crop_unit_x, crop_unit_y = sub_width_c, sub_height_c * field_factor
    width = width_mbs * 16 - crop_unit_x * (crop_left + crop_right)
    height = field_factor * height_map_units * 16 - crop_unit_y * (crop_top + crop_bottom)
    if width <= 0 or height <= 0:
        raise MalformedMedia("H.264 SPS", "cropping leaves no picture")
    frame_rate = _vui_frame_rate(reader) if reader.flag() else None
    return Sps(
        profile_idc=profile_idc, constraint_flags=constraint_flags, level_idc=level_idc,
        chroma_format_idc=chroma_format_idc, bit_depth_luma=bit_depth_luma, bit_depth_chroma=bit_depth_chroma,
        width=width, height=height, frame_rate=frame_rate,
    )


def _vui_frame_rate(reader: BitReader) -> float | None:
    """Frames per second from the VUI timing info (H.264 E.1.1), or None if absent."""
    if reader.flag():  # aspect_ratio_info_present_flag
        if reader.bits(8) == 255:  # Extended_SAR
            reader.bits(32)
    if reader.flag():  # overscan_info_present_flag
        reader.flag()
    if reader.flag():  # video_signal_type_present_flag
        reader.bits(4)
        if reader.flag():  # colour_description_present_flag
            reader.bits(24)
    if reader.flag():  # chroma_loc_info_present_flag
        reader.ue()
        reader.ue()
    if not reader.flag():  # timing_info_present_flag
        return None
    num_units_in_tick = reader.bits(32)
    time_scale = reader.bits(32)
    if num_units_in_tick == 0 or time_scale == 0:
        return None
    # One frame is two ticks (a field pair), H.264 equation E-1 for frame-coded video.
    return time_scale / (2 * num_units_in_tick)


@dataclasses.dataclass(frozen=True)
class AvcConfig:
    """An AVCDecoderConfigurationRecord (avcC): WebCodecs' ``description`` for H.264."""

    sps: tuple[bytes, ...]  #: sequence parameter sets
    pps: tuple[bytes, ...]  #: picture parameter sets
    length_size: int  #: bytes of each NAL length prefix in the access units
    profile_idc: int
    constraint_flags: int
    level_idc: int

    @property
    def codec_string(self) -> str:
        """``avc1.PPCCLL`` as the record states it."""
        return f"avc1.{self.profile_idc:02x}{self.constraint_flags:02x}{self.level_idc:02x}"


def build_avcc_record(sps_list, pps_list, length_size: int = 4) -> bytes:
    """The avcC record (ISO/IEC 14496-15 5.3.3.1) for these parameter sets."""
    sps_list = [bytes(sps) for sps in sps_list]
    pps_list = [bytes(pps) for pps in pps_list]
    if not sps_list or len(sps_list) > 31 or len(pps_list) > 255:
        raise ValueError("avcC needs 1 to 31 SPS and at most 255 PPS")
    if length_size not in (1, 2, 4):
        raise ValueError(f"length_size must be 1, 2 or 4, not {length_size}")
    sps = parse_sps_untrusted(sps_list[0])
    out = bytearray([1, sps.profile_idc, sps.constraint_flags, sps.level_idc, 0xFC | (length_size - 1)])
    out.append(0xE0 | len(sps_list))
    for nal in sps_list:
        out += len(nal).to_bytes(2, "big") + nal
    out.append(len(pps_list))
    for nal in pps_list:
        out += len(nal).to_bytes(2, "big") + nal
    if sps.profile_idc in _AVCC_EXTENSION_PROFILES:
        out += bytes([0xFC | sps.chroma_format_idc, 0xF8 | (sps.bit_depth_luma - 8),
                      0xF8 | (sps.bit_depth_chroma - 8), 0])
    return bytes(out)


def parse_avcc_record_untrusted(record) -> AvcConfig:
    """Parse an avcC record (the payload of an FLV AVC sequence header)."""
    raw = bytes(record)
    what = "H.264 avcC record"
    if len(raw) < 7:
        raise MalformedMedia(what, "shorter than 7 bytes")
    if raw[0] != 1:
        raise MalformedMedia(what, f"configurationVersion {raw[0]} is not 1")
    length_size = (raw[4] & 0x03) + 1
    if length_size == 3:
        raise MalformedMedia(what, "NAL length size of 3 bytes")
    pos = 5
    sets: list[list[bytes]] = []
    for count_mask in (0x1F, 0xFF):
        if pos >= len(raw):
            raise MalformedMedia(what, "truncated parameter set count")
        count = raw[pos] & count_mask
        pos += 1
        found = []
        for _ in range(count):
            if pos + 2 > len(raw):
                raise MalformedMedia(what, "truncated parameter set length")
            size = int.from_bytes(raw[pos : pos + 2], "big")
            pos += 2
            if size == 0 or pos + size > len(raw):
                raise MalformedMedia(what, "parameter set longer than the record")
            found.append(raw[pos : pos + size])
            pos += size
        sets.append(found)
    if not sets[0]:
        raise MalformedMedia(what, "no SPS")
    for sps in sets[0]:
        if nal_type(sps) != NalType.SPS:
            raise MalformedMedia(what, "an SPS entry is not an SPS NAL unit")
    return AvcConfig(
        sps=tuple(sets[0]), pps=tuple(sets[1]), length_size=length_size,
        profile_idc=raw[1], constraint_flags=raw[2], level_idc=raw[3],
    )

