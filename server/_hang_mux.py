"""FLV tags (AVC + AAC, as RTMP and FLV files carry them) into a hang
broadcast: a catalog.json from the sequence headers, frames as a
microsecond timestamp varint plus the codec payload, a group per keyframe.

Used by the demo room, by the Python client's file publisher and by RTMP
ingest, so that every source produces the same broadcast shape.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import trio

from shopcast.codecs import (
    AacPacketType,
    AvcPacketType,
    FlvReader,
    FlvTag,
    TagType,
    parse_audio_specific_config_untrusted,
    parse_audio_tag_untrusted,
    parse_avcc_record_untrusted,
    parse_sps_untrusted,
    parse_video_tag_untrusted,
)
from shopcast.server._relay import Broadcast
from shopcast.server.moq import (
    CATALOG_TRACK,
    AudioRendition,
    Catalog,
    VideoRendition,
    encode_catalog,
    encode_frame,
)

__all__ = ["HangMuxer", "MediaClip", "load_flv_clip", "play_clip"]

VIDEO_TRACK = "video"
AUDIO_TRACK = "audio"


class HangMuxer:
    """Writes FLV tags into ``broadcast`` as hang tracks.

    Video frames carry PTS (decode time plus composition offset) in
    microseconds, so B-frames keep their presentation time. Audio groups
    begin at the first audio frame after each video keyframe, so a late
    joiner's audio and video start together.
    """

    def __init__(self, broadcast: Broadcast) -> None:
        self.broadcast = broadcast
        # The catalog track exists from the start: a viewer who subscribes
        # before the encoder's sequence headers waits for the catalog
        # instead of being told there is no such track.
        broadcast.track(CATALOG_TRACK)
        self._video: VideoRendition | None = None
        self._audio: AudioRendition | None = None
        self._length_size = 4
        self._audio_new_group = True
        self._video_hints: dict[str, float | int] = {}
        self._audio_hints: dict[str, float | int] = {}
        self.frames_written = 0

    def set_stream_info(self, *, video_bitrate_bps: int | None = None, framerate_fps: float | None = None,
                        audio_bitrate_bps: int | None = None) -> None:
        """Hints from the publisher's metadata (RTMP ``onMetaData``) for what
        the sequence headers do not say; used by the next catalog."""
        if video_bitrate_bps:
            self._video_hints["bitrate_bps"] = video_bitrate_bps
        if framerate_fps:
            self._video_hints["framerate_fps"] = framerate_fps
        if audio_bitrate_bps:
            self._audio_hints["bitrate_bps"] = audio_bitrate_bps

    def push(self, tag: FlvTag, offset_ms: int = 0) -> None:
        """Take one tag; ``offset_ms`` is added to its time (looping clips)."""
        if tag.tag_type == TagType.VIDEO:
            self._push_video(tag, offset_ms)
        elif tag.tag_type == TagType.AUDIO:
            self._push_audio(tag, offset_ms)

    def _push_video(self, tag: FlvTag, offset_ms: int) -> None:
        video = parse_video_tag_untrusted(tag.body)
        if video.packet_type == AvcPacketType.SEQUENCE_HEADER:
            config = parse_avcc_record_untrusted(video.payload)
            sps = parse_sps_untrusted(config.sps[0]) if config.sps else None
            self._length_size = config.length_size
            self._video = VideoRendition(
                track=VIDEO_TRACK,
                codec=config.codec_string,
                description=video.payload,
                coded_width_px=sps.width if sps else None,
                coded_height_px=sps.height if sps else None,
                framerate_fps=sps.frame_rate if sps and sps.frame_rate else None,
            )
            self._publish_catalog()
            return
        if video.packet_type != AvcPacketType.NALU or self._video is None or not video.payload:
            return
        pts_ms = tag.timestamp_ms + video.composition_time_ms + offset_ms
        payload = encode_frame(max(0, pts_ms) * 1000, video.payload)
        self.broadcast.track(VIDEO_TRACK).write_frame(payload, keyframe=video.keyframe)
        if video.keyframe:
            self._audio_new_group = True
        self.frames_written += 1

    def _push_audio(self, tag: FlvTag, offset_ms: int) -> None:
        audio = parse_audio_tag_untrusted(tag.body)
        if audio.packet_type == AacPacketType.SEQUENCE_HEADER:
            config = parse_audio_specific_config_untrusted(audio.payload)
            self._audio = AudioRendition(
                track=AUDIO_TRACK,
                codec=config.codec_string,
                sample_rate_hz=config.sample_rate_hz,
                channel_count=config.channels,
                description=audio.payload,
            )
            self._publish_catalog()
            return
        if self._audio is None or not audio.payload:
            return
        payload = encode_frame((tag.timestamp_ms + offset_ms) * 1000, audio.payload)
        keyframe = self._audio_new_group or self._video is None
        self.broadcast.track(AUDIO_TRACK).write_frame(payload, keyframe=keyframe)
        self._audio_new_group = False
        self.frames_written += 1

    def _publish_catalog(self) -> None:
        video, audio = self._video, self._audio
        if video is not None:
            video = dataclasses.replace(video, **{k: v for k, v in self._video_hints.items()
                                                  if getattr(video, k) is None})
        if audio is not None:
            audio = dataclasses.replace(audio, **{k: v for k, v in self._audio_hints.items()
                                                  if getattr(audio, k) is None})
        catalog = Catalog(
            video=(video,) if video else (),
            audio=(audio,) if audio else (),
        )
        # Tracks exist before the catalog naming them is sent, so a viewer
        # that reads the catalog can subscribe to them at once.
        for rendition in (*catalog.video, *catalog.audio):
            self.broadcast.track(rendition.track)
        self.broadcast.track(CATALOG_TRACK).write_frame(encode_catalog(catalog), keyframe=True)


@dataclass(frozen=True)
class MediaClip:
    """An FLV file's tags, held in memory for looping."""

    tags: tuple[FlvTag, ...]
    duration_ms: int
    """Time from the first tag to one frame past the last (ms)."""


def load_flv_clip(data: bytes) -> MediaClip:
    """Parse a whole FLV file. Raises MalformedMedia for a broken file."""
    reader = FlvReader()
    tags = tuple(t for t in reader.feed(data) if t.tag_type in (TagType.VIDEO, TagType.AUDIO))
    if not tags:
        return MediaClip((), 0)
    video_times = sorted({t.timestamp_ms for t in tags if t.tag_type == TagType.VIDEO})
    step = (video_times[-1] - video_times[0]) / max(1, len(video_times) - 1) if video_times else 0
    duration = tags[-1].timestamp_ms - tags[0].timestamp_ms + max(1, round(step))
    return MediaClip(tags, duration)


async def play_clip(muxer: HangMuxer, clip: MediaClip, *, loops: float = math.inf,
                    start_ms: int = 0) -> None:
    """Write the clip's tags in real time, looping with timestamps that keep
    advancing. Sequence headers are sent on the first pass only."""
    if not clip.tags:
        return
    base = clip.tags[0].timestamp_ms
    started = trio.current_time()
    loop = 0
    while loop < loops:
        offset_ms = start_ms + loop * clip.duration_ms - base
        for tag in clip.tags:
            if loop > 0 and _is_sequence_header(tag):
                continue
            due = started + (offset_ms + tag.timestamp_ms - start_ms) / 1000
            await trio.sleep_until(due)
            muxer.push(tag, offset_ms)
        loop += 1


def _is_sequence_header(tag: FlvTag) -> bool:
    if tag.tag_type == TagType.VIDEO:
        return parse_video_tag_untrusted(tag.body).packet_type == AvcPacketType.SEQUENCE_HEADER
    return parse_audio_tag_untrusted(tag.body).packet_type == AacPacketType.SEQUENCE_HEADER
