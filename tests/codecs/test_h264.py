"""H.264: Annex B and AVCC framing, SPS parsing, avcC records, on known and fuzzed input."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shopcast.codecs import (
    MalformedMedia,
    NalType,
    annexb_to_avcc_untrusted,
    avcc_to_annexb_untrusted,
    build_avcc_record,
    is_keyframe,
    join_annexb,
    join_avcc,
    nal_type,
    parse_avcc_record_untrusted,
    parse_sps_untrusted,
    split_annexb_untrusted,
    split_avcc_untrusted,
)

# The SPS and PPS x264 wrote for testsrc2 1280x720 30 fps, high profile level 3.1
# (taken from an FLV written by ffmpeg 5), and that FLV's avcC record.
SPS_720P = bytes.fromhex("6764001facd9405005bb0110000003001000000303c0f18319 60")
PPS_720P = bytes.fromhex("68ebe3cb22c0")
AVCC_720P = bytes.fromhex(
    "0164001fffe1001a6764001facd9405005bb0110000003001000000303c0f183196001000668ebe3cb22c0fdf8f800")
# Escaped NAL payloads never contain 00 00 00/01/02 (the encoder inserts 03), as in real streams.
nal_strategy = st.binary(min_size=1, max_size=60).map(
    lambda body: bytes([0x65]) + body.replace(b"\x00\x00", b"\x00\x00\x03") + b"\x80")


def test_sps_of_x264_720p():
    sps = parse_sps_untrusted(SPS_720P)
    assert (sps.width, sps.height, sps.frame_rate) == (1280, 720, 30.0)
    assert (sps.profile_idc, sps.level_idc, sps.chroma_format_idc, sps.bit_depth_luma) == (100, 31, 1, 8)
    assert sps.codec_string == "avc1.64001f"


def test_avcc_record_parses_and_rebuilds_byte_for_byte():
    record = parse_avcc_record_untrusted(AVCC_720P)
    assert record.sps == (SPS_720P,) and record.pps == (PPS_720P,)
    assert record.length_size == 4 and record.codec_string == "avc1.64001f"
    assert build_avcc_record([SPS_720P], [PPS_720P]) == AVCC_720P


def test_nal_types_and_keyframes():
    assert nal_type(SPS_720P) == NalType.SPS and nal_type(PPS_720P) == NalType.PPS
    assert is_keyframe([SPS_720P, PPS_720P, b"\x65\x88"]) and not is_keyframe([b"\x41\x9a"])
    with pytest.raises(MalformedMedia):
        nal_type(b"\xe5")
    with pytest.raises(MalformedMedia):
        nal_type(b"")


@settings(max_examples=100, deadline=None)
@given(nals=st.lists(nal_strategy, min_size=1, max_size=6), length_size=st.sampled_from([1, 2, 4]),
       as_type=st.sampled_from([bytes, bytearray, memoryview]))
def test_annexb_and_avcc_convert_both_ways(nals, length_size, as_type):
    annexb = join_annexb(nals)
    assert split_annexb_untrusted(as_type(annexb)) == nals
    avcc = annexb_to_avcc_untrusted(as_type(annexb), length_size)
    assert avcc == join_avcc(nals, length_size)
    assert split_avcc_untrusted(as_type(avcc), length_size) == nals
    assert avcc_to_annexb_untrusted(as_type(avcc), length_size) == annexb


def test_annexb_accepts_three_byte_start_codes_and_leading_zeros():
    stream = b"\x00\x00\x00\x00\x01\x67\x01\x00\x00\x01\x68\x02\x00\x00\x00\x01\x65\x03\x00"
    assert split_annexb_untrusted(stream) == [b"\x67\x01", b"\x68\x02", b"\x65\x03"]
    with pytest.raises(MalformedMedia):
        split_annexb_untrusted(b"\x67\x00\x00\x01\x68")


def test_avcc_lengths_are_checked():
    with pytest.raises(MalformedMedia):
        split_avcc_untrusted(b"\x00\x00\x00\x09\x65\x01")
    with pytest.raises(MalformedMedia):
        split_avcc_untrusted(b"\x00\x00\x00")
    with pytest.raises(MalformedMedia):
        split_avcc_untrusted(b"\x00\x00\x00\x00")


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=64))
def test_sps_parser_raises_only_malformed(data):
    for candidate in (data, b"\x67" + data, SPS_720P[: len(data) % len(SPS_720P)] + data):
        try:
            sps = parse_sps_untrusted(candidate)
        except MalformedMedia:
            continue
        assert sps.width > 0 and sps.height > 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), cut=st.integers(0, len(AVCC_720P)))
def test_avcc_record_parser_raises_only_malformed(data, cut):
    for candidate in (data, AVCC_720P[:cut], AVCC_720P[:cut] + data):
        try:
            parse_avcc_record_untrusted(candidate)
        except MalformedMedia:
            pass


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), length_size=st.sampled_from([1, 2, 4]))
def test_framing_parsers_raise_only_malformed(data, length_size):
    for parse in (split_annexb_untrusted, lambda raw: split_avcc_untrusted(raw, length_size)):
        try:
            parse(data)
        except MalformedMedia:
            pass
