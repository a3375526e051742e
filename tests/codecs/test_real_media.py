"""Real media: H.264 and AAC made by ffmpeg, parsed by shopcast, compared with what ffprobe says."""

import json
import subprocess

import pytest
from shopcast.codecs import (
    AacPacketType,
    AdtsReader,
    AvcPacketType,
    FlvReader,
    NalType,
    TagType,
    avcc_to_annexb_untrusted,
    build_avcc_record,
    is_keyframe,
    nal_type,
    parse_audio_specific_config_untrusted,
    parse_audio_tag_untrusted,
    parse_avcc_record_untrusted,
    parse_sps_untrusted,
    parse_video_tag_untrusted,
    split_annexb_untrusted,
    split_avcc_untrusted,
)

pytestmark = pytest.mark.e2e

# ffprobe's profile names -> profile_idc and whether constraint_set1 (constrained baseline) is set.
PROFILE_IDC = {"Constrained Baseline": 66, "Baseline": 66, "Main": 77, "High": 100}
VIDEO_CASES = [
    # size, x264 profile, frames: 240p and 720p as the brief asks, plus sizes that need cropping.
    ("320x240", "baseline", 30),
    ("1280x720", "high", 30),
    ("426x240", "main", 10),
    ("1920x1080", "high", 4),
]


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def probe(ffprobe: str, path) -> dict:
    output = subprocess.run([ffprobe, "-v", "error", "-show_streams", "-of", "json", str(path)],
                            check=True, capture_output=True, timeout=60).stdout
    return json.loads(output)["streams"][0]


def make_video(ffmpeg: str, path, size: str, profile: str, frames: int) -> None:
    run(ffmpeg, "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
        "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast", "-profile:v", profile,
        "-pix_fmt", "yuv420p", "-bf", "0" if profile == "baseline" else "2", str(path))


@pytest.mark.parametrize("size, profile, frames", VIDEO_CASES, ids=[case[0] for case in VIDEO_CASES])
def test_h264_annexb_matches_ffprobe(ffmpeg, ffprobe, tmp_path, size, profile, frames):
    path = tmp_path / "video.h264"
    make_video(ffmpeg, path, size, profile, frames)
    stream = probe(ffprobe, path)
    nals = split_annexb_untrusted(path.read_bytes())
    sps = parse_sps_untrusted(next(nal for nal in nals if nal_type(nal) == NalType.SPS))
    assert (sps.width, sps.height) == (stream["width"], stream["height"])
    assert sps.profile_idc == PROFILE_IDC[stream["profile"]]
    assert sps.level_idc == stream["level"]
    numerator, denominator = map(int, stream["r_frame_rate"].split("/"))
    assert sps.frame_rate == pytest.approx(numerator / denominator)
    assert sps.codec_string == f"avc1.{sps.profile_idc:02x}{sps.constraint_flags:02x}{stream['level']:02x}"
    assert is_keyframe(nals)


@pytest.mark.parametrize("size, profile, frames", VIDEO_CASES[:2], ids=[case[0] for case in VIDEO_CASES[:2]])
def test_flv_from_ffmpeg_matches_ffprobe(ffmpeg, ffprobe, tmp_path, size, profile, frames):
    path = tmp_path / "stream.flv"
    run(ffmpeg, "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "1", "-c:v", "libx264",
        "-preset", "ultrafast", "-profile:v", profile, "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2",
        str(path))
    video_stream = probe(ffprobe, path)
    audio_stream = json.loads(subprocess.run(
        [ffprobe, "-v", "error", "-select_streams", "a", "-show_streams", "-of", "json", str(path)],
        check=True, capture_output=True, timeout=60).stdout)["streams"][0]
    data = path.read_bytes()
    reader = FlvReader()
    tags = []
    for start in range(0, len(data), 1000):
        tags += reader.feed(memoryview(data)[start : start + 1000])
    videos = [parse_video_tag_untrusted(tag.body) for tag in tags if tag.tag_type == TagType.VIDEO]
    audios = [parse_audio_tag_untrusted(tag.body) for tag in tags if tag.tag_type == TagType.AUDIO]

    header = videos[0]
    assert header.packet_type == AvcPacketType.SEQUENCE_HEADER
    record = parse_avcc_record_untrusted(header.payload)
    sps = parse_sps_untrusted(record.sps[0])
    assert (sps.width, sps.height, sps.level_idc) == (video_stream["width"], video_stream["height"],
                                                      video_stream["level"])
    assert record.codec_string == sps.codec_string
    assert build_avcc_record(record.sps, record.pps, record.length_size) == header.payload
    frames = [video for video in videos if video.packet_type == AvcPacketType.NALU]
    assert frames[0].keyframe
    for frame in frames:
        assert frame.keyframe == is_keyframe(split_avcc_untrusted(frame.payload, record.length_size))
        assert split_annexb_untrusted(avcc_to_annexb_untrusted(frame.payload)) == split_avcc_untrusted(frame.payload)

    assert audios[0].packet_type == AacPacketType.SEQUENCE_HEADER
    config = parse_audio_specific_config_untrusted(audios[0].payload)
    assert config.sample_rate_hz == int(audio_stream["sample_rate"])
    assert config.channels == audio_stream["channels"]
    assert config.codec_string == "mp4a.40.2" and audio_stream["profile"] == "LC"
    assert all(audio.packet_type == AacPacketType.RAW for audio in audios[1:])


@pytest.mark.parametrize("sample_rate_hz, channels", [(48000, 2), (44100, 1), (22050, 2)])
def test_adts_from_ffmpeg_matches_ffprobe(ffmpeg, ffprobe, tmp_path, sample_rate_hz, channels):
    path = tmp_path / "audio.aac"
    run(ffmpeg, "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
        f"sine=frequency=440:sample_rate={sample_rate_hz}", "-t", "1", "-c:a", "aac", "-ac", str(channels),
        str(path))
    stream = probe(ffprobe, path)
    frames = AdtsReader().feed(path.read_bytes())
    assert frames
    for frame in frames:
        assert frame.header.sample_rate_hz == int(stream["sample_rate"]) == sample_rate_hz
        assert frame.header.channels == stream["channels"] == channels
        assert frame.header.audio_config().codec_string == "mp4a.40.2"
