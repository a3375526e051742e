"""The hang catalog and frame container, checked against @moq/hang 0.3.5's own schema."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shopcast.server.moq import (
    CATALOG_TRACK,
    AudioRendition,
    Catalog,
    LocalProtocolError,
    ProtocolViolation,
    TrackPriority,
    VideoRendition,
    catalog_to_json,
    decode_catalog_untrusted,
    decode_frame_untrusted,
    encode_catalog,
    encode_frame,
    encode_frame_header,
)

# Field names of @moq/hang 0.3.5, with the file of the package each comes from.
VIDEO_CONFIG_FIELDS = {
    # catalog/video.js, VideoConfigSchema (z.object: unknown keys are stripped, not errors)
    "broadcast",
    "codec",
    "container",
    "description",
    "codedWidth",
    "codedHeight",
    "displayAspectWidth",
    "displayAspectHeight",
    "framerate",
    "bitrate",
    "optimizeForLatency",
    "jitter",
    "timeline",
}
VIDEO_SECTION_FIELDS = {
    "renditions",
    "display",
    "rotation",
    "flip",
}  # catalog/video.js, VideoSchema
AUDIO_CONFIG_FIELDS = {
    # catalog/audio.js, AudioConfigSchema; sampleRate and numberOfChannels are required
    "broadcast",
    "codec",
    "container",
    "description",
    "sampleRate",
    "numberOfChannels",
    "bitrate",
    "jitter",
    "timeline",
}
AUDIO_REQUIRED = {"codec", "sampleRate", "numberOfChannels"}
AUDIO_SECTION_FIELDS = {"renditions"}  # catalog/audio.js, AudioSchema
HEX = re.compile(r"^([0-9a-fA-F]{2})*$")  # catalog/hex.js, hexSchema
MAX_U53 = 2**53 - 1  # catalog/integers.js, u53Schema

AVCC = bytes.fromhex("0164001fffe100196764001faccb")
ASC = bytes.fromhex("1190")
CATALOG = Catalog(
    video=(
        VideoRendition(
            track="video",
            codec="avc1.64001f",
            description=AVCC,
            coded_width_px=1280,
            coded_height_px=720,
            framerate_fps=30.0,
            bitrate_bps=2_500_000,
        ),
    ),
    audio=(
        AudioRendition(
            track="audio",
            codec="mp4a.40.2",
            sample_rate_hz=48_000,
            channel_count=2,
            description=ASC,
            bitrate_bps=128_000,
        ),
    ),
)

EXPECTED = {
    "video": {
        "renditions": {
            "video": {
                "codec": "avc1.64001f",
                "container": {"kind": "legacy"},
                "description": "0164001fffe100196764001faccb",
                "codedWidth": 1280,
                "codedHeight": 720,
                "bitrate": 2500000,
                "framerate": 30.0,
            }
        }
    },
    "audio": {
        "renditions": {
            "audio": {
                "codec": "mp4a.40.2",
                "container": {"kind": "legacy"},
                "sampleRate": 48000,
                "numberOfChannels": 2,
                "description": "1190",
                "bitrate": 128000,
            }
        }
    },
}


def test_track_name_and_priorities_match_hang() -> None:
    assert CATALOG_TRACK == "catalog.json"  # catalog/format.js, TRACK
    assert (TrackPriority.CATALOG, TrackPriority.AUDIO, TrackPriority.VIDEO) == (
        100,
        80,
        60,
    )  # catalog/priority.js


def test_catalog_json_vector() -> None:
    assert catalog_to_json(CATALOG) == EXPECTED
    assert json.loads(encode_catalog(CATALOG)) == EXPECTED


def test_catalog_uses_only_hang_field_names() -> None:
    root = json.loads(encode_catalog(CATALOG))
    assert set(root) <= {"video", "audio"}
    assert set(root["video"]) <= VIDEO_SECTION_FIELDS
    assert set(root["audio"]) <= AUDIO_SECTION_FIELDS
    for config in root["video"]["renditions"].values():
        assert set(config) <= VIDEO_CONFIG_FIELDS
        assert HEX.match(config["description"])
        for key in ("codedWidth", "codedHeight", "bitrate"):
            assert isinstance(config[key], int) and 0 <= config[key] <= MAX_U53
    for config in root["audio"]["renditions"].values():
        assert AUDIO_REQUIRED <= set(config) <= AUDIO_CONFIG_FIELDS
        assert HEX.match(config["description"])


def test_catalog_round_trip_and_display() -> None:
    catalog = Catalog(
        video=CATALOG.video, audio=CATALOG.audio, display_width_px=640, display_height_px=360
    )
    assert catalog_to_json(catalog)["video"]["display"] == {"width": 640, "height": 360}
    assert decode_catalog_untrusted(encode_catalog(catalog), max_size_bytes=65536) == catalog


def test_catalog_decoder_accepts_what_hang_accepts() -> None:
    # container defaults to legacy (catalog/container.js) and unknown sections pass (root.js).
    document = {
        "audio": {
            "renditions": {"a": {"codec": "opus", "sampleRate": 48000, "numberOfChannels": 1}}
        },
        "chat": {},
    }
    catalog = decode_catalog_untrusted(json.dumps(document).encode(), max_size_bytes=1024)
    assert catalog.audio == (AudioRendition("a", "opus", 48000, 1),)


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b"[]",
        b'{"video": {"renditions": {"v": {"codec": "avc1", "description": "abc"}}}}',  # odd hex
        b'{"video": {"renditions": {"v": {"codec": "avc1", "description": "zz"}}}}',
        b'{"video": {"renditions": {"v": {"codec": "avc1", "codedWidth": -1}}}}',
        b'{"video": {"renditions": {"v": {"codec": "avc1", "codedWidth": 1.5}}}}',
        b'{"video": {"renditions": {"v": {"codec": 5}}}}',
        b'{"audio": {"renditions": {"a": {"codec": "opus", "sampleRate": 48000}}}}',  # no channels
        b'{"video": {"renditions": {"v": {"codec": "avc1", "container": {"kind": "cmaf"}}}}}',
        b'{"video": [{"track": {"name": "v"}, "config": {"codec": "avc1"}}]}',  # pre-0.3 array form
        b"[" * 100_000,
        b"\xff\xfe",
    ],
)
def test_malformed_catalog(document: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode_catalog_untrusted(document, max_size_bytes=1 << 20)


def test_catalog_size_limit() -> None:
    with pytest.raises(ProtocolViolation):
        decode_catalog_untrusted(encode_catalog(CATALOG), max_size_bytes=10)


@pytest.mark.parametrize(
    "rendition",
    [
        VideoRendition("v", "avc1", coded_width_px=-1),
        VideoRendition("v", "avc1", bitrate_bps=2**53),
        VideoRendition("v", "avc1", framerate_fps=float("nan")),
    ],
)
def test_catalog_refuses_values_hang_rejects(rendition: VideoRendition) -> None:
    with pytest.raises(LocalProtocolError):
        encode_catalog(Catalog(video=(rendition,)))


@given(st.binary(max_size=200))
def test_fuzz_catalog_decoder(data: bytes) -> None:
    try:
        decode_catalog_untrusted(data, max_size_bytes=1024)
    except ProtocolViolation:
        pass


# -- frames: container/legacy.js, a microsecond timestamp varint then the payload -------------


@pytest.mark.parametrize(
    ("timestamp_us", "payload", "expected"),
    [
        (0, b"\x65", b"\x00\x65"),
        (33_333, b"\x41", b"\x80\x00\x82\x35\x41"),
        (1 << 40, b"", b"\xc0\x00\x01\x00\x00\x00\x00\x00"),
    ],
)
def test_frame_vectors(timestamp_us: int, payload: bytes, expected: bytes) -> None:
    assert encode_frame(timestamp_us, payload) == expected
    assert encode_frame_header(timestamp_us) + payload == expected
    timestamp, body = decode_frame_untrusted(expected)
    assert (timestamp, bytes(body)) == (timestamp_us, payload)


@given(st.integers(0, 2**62 - 1), st.binary(max_size=64))
def test_frame_round_trip(timestamp_us: int, payload: bytes) -> None:
    for kind in (bytes, bytearray, memoryview):
        timestamp, body = decode_frame_untrusted(kind(encode_frame(timestamp_us, payload)))
        assert timestamp == timestamp_us and bytes(body) == payload


@given(st.binary(max_size=16))
def test_fuzz_frame_decoder(data: bytes) -> None:
    try:
        decode_frame_untrusted(data)
    except ProtocolViolation:
        pass
