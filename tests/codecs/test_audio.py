"""AAC (AudioSpecificConfig, ADTS) and the Opus TOC byte."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shopcast.codecs import (
    AdtsReader,
    AudioConfig,
    MalformedMedia,
    build_adts_header,
    build_audio_specific_config,
    parse_adts_header_untrusted,
    parse_audio_specific_config_untrusted,
    parse_opus_toc_untrusted,
)
from shopcast.codecs._aac import SAMPLE_RATES_HZ

configs = st.builds(AudioConfig, object_type=st.integers(1, 4), sample_rate_hz=st.sampled_from(SAMPLE_RATES_HZ),
                    channels=st.sampled_from([1, 2, 3, 4, 5, 6]))


def test_known_audio_specific_configs():
    assert parse_audio_specific_config_untrusted(bytes.fromhex("1190")) == AudioConfig(2, 48000, 2)
    assert parse_audio_specific_config_untrusted(bytes.fromhex("1208")).sample_rate_hz == 44100
    assert parse_audio_specific_config_untrusted(bytes.fromhex("1190")).codec_string == "mp4a.40.2"
    # HE-AAC with explicit SBR: 24 kHz core, 48 kHz output.
    he_aac = parse_audio_specific_config_untrusted(bytes.fromhex("2b118800"))
    assert (he_aac.object_type, he_aac.sample_rate_hz, he_aac.codec_string) == (5, 48000, "mp4a.40.5")


@settings(max_examples=100, deadline=None)
@given(config=configs)
def test_audio_specific_config_roundtrip(config):
    raw = build_audio_specific_config(config.object_type, config.sample_rate_hz, config.channels)
    assert parse_audio_specific_config_untrusted(raw) == config


@settings(max_examples=100, deadline=None)
@given(config=configs, payload=st.binary(max_size=300))
def test_adts_header_roundtrip(config, payload):
    header = parse_adts_header_untrusted(build_adts_header(config, len(payload)) + payload)
    assert header.audio_config() == config
    assert (header.frame_bytes, header.header_bytes, header.raw_data_blocks) == (len(payload) + 7, 7, 1)


def test_adts_reader_in_every_chunk_size_and_buffer_type():
    config = AudioConfig(2, 44100, 2)
    payloads = [bytes([index]) * (index * 13 % 200) for index in range(12)]
    stream = b"".join(build_adts_header(config, len(payload)) + payload for payload in payloads)
    for chunk_bytes in range(1, len(stream) + 1):
        for as_type in (bytes, bytearray, memoryview):
            reader = AdtsReader()
            frames = []
            for start in range(0, len(stream), chunk_bytes):
                frames += reader.feed(as_type(stream[start : start + chunk_bytes]))
            assert [frame.payload for frame in frames] == payloads
            assert reader.pending_bytes == 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40))
def test_aac_parsers_raise_only_malformed(data):
    for parse in (parse_audio_specific_config_untrusted, parse_adts_header_untrusted):
        try:
            parse(data)
        except MalformedMedia:
            pass
    try:
        AdtsReader().feed(b"\xff\xf1" + data)
    except MalformedMedia:
        pass


def test_adts_reader_refuses_garbage():
    with pytest.raises(MalformedMedia, match="syncword"):
        AdtsReader().feed(b"\x00" * 7)


def test_opus_toc_every_byte():
    durations = set()
    for toc in range(256):
        info = parse_opus_toc_untrusted(bytes([toc, 0x01]))
        durations.add(info.frame_duration_us)
        assert info.channels == (2 if toc & 4 else 1)
        assert info.frames == {0: 1, 1: 2, 2: 2, 3: 1}[toc & 3]
    assert durations == {2500, 5000, 10000, 20000, 40000, 60000}
    silk = parse_opus_toc_untrusted(b"\x08")  # config 1: SILK narrowband 20 ms, mono, one frame
    assert (silk.mode, silk.bandwidth_hz, silk.frame_duration_us, silk.channels) == ("silk", 4000, 20000, 1)
    celt = parse_opus_toc_untrusted(b"\xfd")  # config 31: CELT fullband 20 ms, stereo, code 1: two frames
    assert (celt.mode, celt.bandwidth_hz, celt.packet_duration_us, celt.channels) == ("celt", 20000, 40000, 2)
    assert parse_opus_toc_untrusted(b"\xfb\x06").frames == 6  # CELT 20 ms x 6 = 120 ms
    for bad in (b"", b"\x03", b"\xfb\x00", b"\xfb\x07", b"\x1b\x03"):
        with pytest.raises(MalformedMedia):
            parse_opus_toc_untrusted(bad)
