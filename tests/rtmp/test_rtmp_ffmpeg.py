"""Real ffmpeg publishing over RTMP into a room, watched by a Python MoQ subscriber.

The commands are the issue's (``ffmpeg -re -f lavfi -i testsrc2 -f lavfi -i sine
-c:v libx264 -c:a aac -f flv rtmp://127.0.0.1:PORT/live/KEY``) with a duration,
and the same encode is written to a file for ffprobe, to compare what the room's
catalog and frames say against what ffmpeg made.
"""

from __future__ import annotations

import json

import pytest
import trio

from shopcast.client import connect, decode_frame_untrusted
from shopcast.codecs import FlvReader, TagType, parse_avcc_record_untrusted, parse_video_tag_untrusted

pytestmark = pytest.mark.e2e

PROFILE_IDC = {"Baseline": 66, "Constrained Baseline": 66, "Main": 77, "High": 100}


async def watch(started, room: str, track: str, *, until_s: float, frames: list) -> None:
    """Subscribe to ``track`` of ``room`` and collect (ts_us, frame) until the
    subscription ends or ``until_s`` (trio time) passes."""
    sha = started.app.certificate.sha256_hex
    async with connect(f"https://127.0.0.1:{started.port}/moq", certificate_sha256=sha) as client:
        upstream = await client.subscribe(room, track)
        with trio.move_on_at(until_s):
            async for frame in upstream.frames:
                ts_us, payload = decode_frame_untrusted(frame.payload)
                frames.append((ts_us, frame, bytes(payload)))


async def catalog_of(started, room: str):
    sha = started.app.certificate.sha256_hex
    async with connect(f"https://127.0.0.1:{started.port}/moq", certificate_sha256=sha) as client:
        with trio.fail_after(20):
            while True:
                catalog = await client.catalog(room)
                if catalog.video and catalog.audio:
                    return catalog
                await trio.sleep(0.05)


def ffprobe_json(ffprobe: str, path, *args: str) -> dict:
    import subprocess
    out = subprocess.run([ffprobe, "-v", "error", "-of", "json", *args, str(path)],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def file_video_tags(path) -> list:
    """The video tags of an FLV file (the same encode, written by ffmpeg)."""
    return [t for t in FlvReader().feed(path.read_bytes()) if t.tag_type == TagType.VIDEO]


async def publish_and_watch(started, rtmp_helpers, ffmpeg, room, *, seconds, video_args=(),
                            audio_args=(), video="testsrc2", audio="sine"):
    """Run ffmpeg into ``room`` while a subscriber records the video and audio
    tracks; returns (catalog, video frames, audio frames, ffmpeg run)."""
    url = await rtmp_helpers.push_url(started, room)
    command = rtmp_helpers.ffmpeg_command(ffmpeg, url, seconds=seconds, video=video, audio=audio,
                                          video_args=video_args, audio_args=audio_args)
    run = rtmp_helpers.FfmpegRun()
    video_frames: list = []
    audio_frames: list = []
    async with trio.open_nursery() as nursery:
        await nursery.start(rtmp_helpers.run_ffmpeg, command, run)
        await rtmp_helpers.wait_for_tracks(started, room)
        until = trio.current_time() + seconds + 15
        nursery.start_soon(lambda: watch(started, room, "video", until_s=until, frames=video_frames))
        nursery.start_soon(lambda: watch(started, room, "audio", until_s=until, frames=audio_frames))
        catalog = await catalog_of(started, room)
    assert run.returncode == 0, f"ffmpeg failed: {run.stderr}"
    return catalog, video_frames, audio_frames, run


async def test_ffmpeg_reaches_subscriber_with_matching_codec_string(
        server_factory, rtmp_helpers, ffmpeg, ffprobe, tmp_path):
    started = await server_factory({"demo": {"enabled": False}})
    seconds = 4
    video_args = ("-g", "25")
    catalog, frames, audio, _ = await publish_and_watch(
        started, rtmp_helpers, ffmpeg, "shop1", seconds=seconds, video_args=video_args)

    # The same encoding into a file, for ffprobe and for its avcC.
    path = tmp_path / "same.flv"
    result = rtmp_helpers.run_ffmpeg_sync(rtmp_helpers.ffmpeg_command(
        ffmpeg, "", seconds=seconds, video_args=video_args, realtime=False,
        output=("-y", "-f", "flv", str(path))))
    assert result.returncode == 0, result.stderr
    probe = ffprobe_json(ffprobe, path, "-show_streams", "-select_streams", "v:0")["streams"][0]
    video = catalog.video[0]
    codec = video.codec
    assert codec.startswith("avc1.") and len(codec) == 11, codec
    assert int(codec[5:7], 16) == PROFILE_IDC[probe["profile"]], (codec, probe["profile"])
    assert int(codec[9:11], 16) == probe["level"], (codec, probe["level"])
    file_header = parse_video_tag_untrusted(file_video_tags(path)[0].body)
    assert parse_avcc_record_untrusted(file_header.payload).codec_string == codec
    assert video.description == file_header.payload
    assert (video.coded_width_px, video.coded_height_px) == (probe["width"], probe["height"])
    assert catalog.audio[0].codec == "mp4a.40.2"

    # Frames arrived, keyframes start groups, timestamps advance in real time.
    assert len(frames) >= seconds * 25 * 0.7, len(frames)
    groups: dict[int, list] = {}
    for ts_us, frame, payload in frames:
        groups.setdefault(frame.group_sequence, []).append((frame.index, ts_us, payload))
    assert len(groups) >= seconds - 1, sorted(groups)
    for sequence, members in groups.items():
        indices = [i for i, _, _ in members]
        assert indices == list(range(indices[0], indices[0] + len(indices)))
        if indices[0] == 0:
            assert _is_idr(members[0][2]), f"group {sequence} does not start with an IDR"
        assert not any(_is_idr(p) for i, _, p in members if i > 0), f"IDR inside group {sequence}"
    media_s = (max(ts for ts, _, _ in frames) - min(ts for ts, _, _ in frames)) / 1e6
    wall_s = frames[-1][1].arrival_s - frames[0][1].arrival_s
    assert media_s > seconds * 0.7
    assert 0.5 < media_s / wall_s < 2.0, (media_s, wall_s)
    assert len(audio) > seconds * 30, len(audio)


def _is_idr(avcc_payload: bytes) -> bool:
    from shopcast.codecs import split_avcc_untrusted
    return any(nal[0] & 0x1F == 5 for nal in split_avcc_untrusted(avcc_payload, 4))


async def test_b_frames_keep_presentation_time(server_factory, rtmp_helpers, ffmpeg, tmp_path):
    started = await server_factory({"demo": {"enabled": False}})
    seconds = 4
    video = "testsrc2=size=640x360:rate=30"
    video_args = ("-bf", "2", "-g", "30", "-preset", "veryfast")
    _, frames, _, _ = await publish_and_watch(started, rtmp_helpers, ffmpeg, "shop-bf",
                                              seconds=seconds, video=video, video_args=video_args)
    path = tmp_path / "same.flv"
    result = rtmp_helpers.run_ffmpeg_sync(rtmp_helpers.ffmpeg_command(
        ffmpeg, "", seconds=seconds, video=video, video_args=video_args, realtime=False,
        output=("-y", "-f", "flv", str(path))))
    assert result.returncode == 0, result.stderr
    # What ffmpeg wrote for the same encoding: PTS = DTS + composition time, in
    # decode order, cut into groups at keyframes.
    expected_groups: list[list[int]] = []
    for tag in file_video_tags(path):
        parsed = parse_video_tag_untrusted(tag.body)
        if parsed.packet_type == 1:
            if parsed.keyframe or not expected_groups:
                expected_groups.append([])
            expected_groups[-1].append((tag.timestamp_ms + parsed.composition_time_ms) * 1000)
    by_first = {group[0]: group for group in expected_groups}
    received: dict[int, list[int]] = {}
    for ts_us, frame, _ in frames:
        received.setdefault(frame.group_sequence, []).append(ts_us)
    assert sum(map(len, received.values())) >= seconds * 30 * 0.7
    complete = 0
    for sequence, stamps in received.items():
        # Each received group is the encoder's group, in decode order: whole,
        # or cut short where a stream was reset or the broadcast ended.
        expected = by_first.get(stamps[0])
        assert expected is not None, f"group {sequence} does not start at a keyframe"
        assert stamps == expected[:len(stamps)], sequence
        if len(stamps) < len(expected):
            continue
        complete += 1
        assert stamps != sorted(stamps), "no reordered (B) frames in a whole group"
        in_presentation_order = sorted(stamps)
        steps = [b - a for a, b in zip(in_presentation_order, in_presentation_order[1:])]
        assert all(33_000 <= step <= 34_000 for step in steps), (sequence, steps)
        assert stamps[0] == in_presentation_order[0], "a group starts at its earliest picture"
    assert complete >= 1, received


async def test_high_profile_720p30_with_aac_44k1_stereo(server_factory, rtmp_helpers, ffmpeg):
    started = await server_factory({"demo": {"enabled": False}})
    seconds = 3
    catalog, frames, audio, _ = await publish_and_watch(
        started, rtmp_helpers, ffmpeg, "shop-hd", seconds=seconds,
        video="testsrc2=size=1280x720:rate=30", audio="sine=frequency=440:sample_rate=44100",
        video_args=("-profile:v", "high", "-preset", "veryfast", "-g", "30", "-pix_fmt", "yuv420p"),
        audio_args=("-ar", "44100", "-ac", "2"))
    video = catalog.video[0]
    assert video.codec.startswith("avc1.64"), video.codec
    assert (video.coded_width_px, video.coded_height_px) == (1280, 720)
    assert video.framerate_fps == pytest.approx(30, rel=0.01)
    sound = catalog.audio[0]
    assert (sound.codec, sound.sample_rate_hz, sound.channel_count) == ("mp4a.40.2", 44100, 2)
    assert len(frames) >= seconds * 30 * 0.7
    assert frames[0][1].index == 0 or frames[0][1].group_sequence > 0
    # AAC frames are 1024 samples: 23.2 ms at 44.1 kHz.
    stamps = [ts for ts, _, _ in audio]
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert len(stamps) > seconds * 30 and all(22_000 <= s <= 25_000 for s in steps), steps[:20]
