"""FLV tag bodies as RTMP carries them, Enhanced RTMP refusal, and FLV streams in every chunk size."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shopcast.codecs import (
    AacPacketType,
    AvcPacketType,
    FlvAudio,
    FlvReader,
    FlvTag,
    FlvVideo,
    MalformedMedia,
    TagType,
    UnsupportedMedia,
    build_audio_tag,
    build_flv_stream,
    build_video_tag,
    parse_audio_tag_untrusted,
    parse_video_tag_untrusted,
)


@settings(max_examples=100, deadline=None)
@given(keyframe=st.booleans(), packet_type=st.sampled_from(list(AvcPacketType)),
       composition_time_ms=st.integers(-(1 << 23), (1 << 23) - 1), payload=st.binary(min_size=1, max_size=50))
def test_video_tag_roundtrip_with_signed_composition_time(keyframe, packet_type, composition_time_ms, payload):
    video = FlvVideo(keyframe, packet_type, composition_time_ms, payload)
    assert parse_video_tag_untrusted(build_video_tag(video)) == video


def test_negative_composition_time_is_sign_extended():
    assert parse_video_tag_untrusted(b"\x27\x01\xff\xff\xfe\x00").composition_time_ms == -2


@pytest.mark.parametrize("fourcc, name", [(b"hvc1", "HEVC"), (b"av01", "AV1"), (b"vp09", "VP9")])
def test_enhanced_rtmp_video_is_recognised_and_refused(fourcc, name):
    body = bytes([0x80 | (1 << 4) | 0]) + fourcc + b"\x01\x02"
    with pytest.raises(UnsupportedMedia, match=f"{fourcc.decode()} \\({name}\\)"):
        parse_video_tag_untrusted(body)


def test_enhanced_rtmp_avc1_is_handled_like_legacy_avc():
    header = parse_video_tag_untrusted(b"\x90avc1\x01\x64")
    assert header == FlvVideo(True, AvcPacketType.SEQUENCE_HEADER, 0, b"\x01\x64")
    frames = parse_video_tag_untrusted(b"\xa1avc1\xff\xff\xfe\x00\x00\x00\x01\x41")
    assert frames == FlvVideo(False, AvcPacketType.NALU, -2, b"\x00\x00\x00\x01\x41")
    assert parse_video_tag_untrusted(b"\xa3avc1\x00").composition_time_ms == 0
    assert parse_video_tag_untrusted(b"\x92avc1").packet_type == AvcPacketType.END_OF_SEQUENCE
    with pytest.raises(UnsupportedMedia, match="packet type 4"):
        parse_video_tag_untrusted(b"\x94avc1\x00")


def test_other_codecs_are_refused_by_name():
    with pytest.raises(UnsupportedMedia, match="VP6"):
        parse_video_tag_untrusted(b"\x14\x00")
    with pytest.raises(UnsupportedMedia, match="MP3"):
        parse_audio_tag_untrusted(b"\x2f\x00")
    with pytest.raises(MalformedMedia, match="FourCC"):
        parse_video_tag_untrusted(b"\x90abcd")


def test_audio_tags():
    header = parse_audio_tag_untrusted(b"\xaf\x00\x11\x90")
    assert header == FlvAudio(AacPacketType.SEQUENCE_HEADER, b"\x11\x90")
    raw = FlvAudio(AacPacketType.RAW, b"\x21\x10")
    assert parse_audio_tag_untrusted(build_audio_tag(raw)) == raw


def stream_tags():
    return [
        FlvTag(TagType.SCRIPT, 0, b"\x02\x00\x0aonMetaData"),
        FlvTag(TagType.VIDEO, 0, build_video_tag(FlvVideo(True, AvcPacketType.SEQUENCE_HEADER, 0, b"\x01\x64"))),
        FlvTag(TagType.AUDIO, 0, b"\xaf\x00\x11\x90"),
        FlvTag(TagType.VIDEO, 33, build_video_tag(FlvVideo(True, AvcPacketType.NALU, 66, b"\x00\x00\x00\x01\x65"))),
        FlvTag(TagType.AUDIO, 0x01000005, b"\xaf\x01" + bytes(300)),
    ]


def test_flv_reader_in_every_chunk_size_and_buffer_type():
    tags = stream_tags()
    stream = build_flv_stream(tags, has_audio=True, has_video=True)
    for chunk_bytes in range(1, len(stream) + 1):
        for as_type in (bytes, bytearray, memoryview):
            reader = FlvReader()
            found = []
            for start in range(0, len(stream), chunk_bytes):
                found += reader.feed(as_type(stream[start : start + chunk_bytes]))
            assert found == tags
            assert reader.has_audio and reader.has_video


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40), cut=st.integers(0, 400), flip=st.integers(0, 400))
def test_flv_parsers_raise_only_malformed(data, cut, flip):
    for parse in (parse_video_tag_untrusted, parse_audio_tag_untrusted):
        try:
            parse(data)
        except MalformedMedia:
            pass
    stream = bytearray(build_flv_stream(stream_tags(), has_audio=True, has_video=True))
    stream[flip % len(stream)] ^= 0x5A
    try:
        FlvReader().feed(bytes(stream[:cut]) + data)
    except MalformedMedia:
        pass


def test_flv_reader_refuses_other_files():
    with pytest.raises(MalformedMedia):
        FlvReader().feed(b"GIF89a")
    with pytest.raises(MalformedMedia):
        FlvReader().feed(b"FLV\x01\x05\x00\x00\x10\x00\x00\x00\x00\x00")
