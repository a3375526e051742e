"""The hang media format, as @moq/hang 0.3.5 reads it: the catalog.json track and frames.

Field names and rules come from the package's zod schemas (catalog/root.js, video.js,
audio.js, container.js, hex.js, integers.js) and its legacy container (container/legacy.js);
docs/moq-lite.md cites them. ``decode_*_untrusted`` parse bytes from the network and raise
``ProtocolViolation`` (code DECODE) and nothing else.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ._wire import ErrorCode, LocalProtocolError, ProtocolViolation, encode_varint

__all__ = [
    "CATALOG_TRACK",
    "TrackPriority",
    "VideoRendition",
    "AudioRendition",
    "Catalog",
    "catalog_to_json",
    "encode_catalog",
    "decode_catalog_untrusted",
    "encode_frame_header",
    "encode_frame",
    "decode_frame_untrusted",
]

CATALOG_TRACK = "catalog.json"
"""The catalog's track name (catalog/format.js, ``TRACK``)."""

_MAX_U53 = (1 << 53) - 1
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_LEGACY = {"kind": "legacy"}


class TrackPriority(enum.IntEnum):
    """The subscribe priorities @moq/watch uses (catalog/priority.js); higher is sent first."""

    CATALOG = 100
    AUDIO = 80
    VIDEO = 60


@dataclass(frozen=True)
class VideoRendition:
    """One video track, described as a WebCodecs VideoDecoderConfig."""

    track: str
    """Track name within the broadcast."""
    codec: str
    """WebCodecs codec string, e.g. ``avc1.64001f``."""
    description: bytes | None = None
    """Decoder configuration record (H.264: avcC, and then samples are length-prefixed NALs)."""
    coded_width_px: int | None = None
    """Coded width in pixels."""
    coded_height_px: int | None = None
    """Coded height in pixels."""
    framerate_fps: float | None = None
    """Frames per second."""
    bitrate_bps: int | None = None
    """Bits per second."""
    optimize_for_latency: bool | None = None
    """Omitted means true in @moq/watch."""
    jitter_ms: int | None = None
    """Largest delay before the next frame is emitted; the player buffers at least this."""


@dataclass(frozen=True)
class AudioRendition:
    """One audio track, described as a WebCodecs AudioDecoderConfig."""

    track: str
    """Track name within the broadcast."""
    codec: str
    """WebCodecs codec string, e.g. ``mp4a.40.2`` or ``opus``."""
    sample_rate_hz: int
    """Samples per second."""
    channel_count: int
    """Number of channels (``numberOfChannels``)."""
    description: bytes | None = None
    """Decoder configuration (AAC: AudioSpecificConfig; Opus: none needed)."""
    bitrate_bps: int | None = None
    """Bits per second."""
    jitter_ms: int | None = None
    """Largest delay before the next frame is emitted."""


@dataclass(frozen=True)
class Catalog:
    """What a hang broadcast carries: the content of its catalog.json."""

    video: tuple[VideoRendition, ...] = ()
    """Video renditions; each names its own track."""
    audio: tuple[AudioRendition, ...] = ()
    """Audio renditions; each names its own track."""
    display_width_px: int | None = None
    """Size to render the video at, when it differs from the coded size."""
    display_height_px: int | None = None
    """Size to render the video at, when it differs from the coded size."""


def _u53(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_U53:
        raise LocalProtocolError(f"{name} must be an integer 0..2^53-1, not {value!r}")
    return value


def _put(config: dict[str, Any], key: str, value: object) -> None:
    if value is not None:
        config[key] = value


def catalog_to_json(catalog: Catalog) -> dict[str, Any]:
    """The catalog as the JSON object @moq/hang's RootSchema accepts."""
    root: dict[str, Any] = {}
    if catalog.video:
        renditions: dict[str, Any] = {}
        for video in catalog.video:
            config: dict[str, Any] = {"codec": video.codec, "container": dict(_LEGACY)}
            _put(
                config,
                "description",
                None if video.description is None else video.description.hex(),
            )
            for key, value in (
                ("codedWidth", video.coded_width_px),
                ("codedHeight", video.coded_height_px),
                ("bitrate", video.bitrate_bps),
                ("jitter", video.jitter_ms),
            ):
                _put(config, key, None if value is None else _u53(value, f"{video.track} {key}"))
            if video.framerate_fps is not None:
                if not math.isfinite(video.framerate_fps) or video.framerate_fps <= 0:
                    raise LocalProtocolError(f"{video.track} framerate must be positive")
                config["framerate"] = video.framerate_fps
            _put(config, "optimizeForLatency", video.optimize_for_latency)
            renditions[video.track] = config
        section: dict[str, Any] = {"renditions": renditions}
        if catalog.display_width_px is not None or catalog.display_height_px is not None:
            if catalog.display_width_px is None or catalog.display_height_px is None:
                raise LocalProtocolError("display needs both a width and a height")
            section["display"] = {
                "width": _u53(catalog.display_width_px, "display width"),
                "height": _u53(catalog.display_height_px, "display height"),
            }
        root["video"] = section
    if catalog.audio:
        audio_renditions: dict[str, Any] = {}
        for audio in catalog.audio:
            config = {
                "codec": audio.codec,
                "container": dict(_LEGACY),
                "sampleRate": _u53(audio.sample_rate_hz, f"{audio.track} sampleRate"),
                "numberOfChannels": _u53(audio.channel_count, f"{audio.track} numberOfChannels"),
            }
            _put(
                config,
                "description",
                None if audio.description is None else audio.description.hex(),
            )
            for key, value in (("bitrate", audio.bitrate_bps), ("jitter", audio.jitter_ms)):
                _put(config, key, None if value is None else _u53(value, f"{audio.track} {key}"))
            audio_renditions[audio.track] = config
        root["audio"] = {"renditions": audio_renditions}
    return root


def encode_catalog(catalog: Catalog) -> bytes:
    """The catalog as one frame: compact UTF-8 JSON, sent as the first frame of a new group."""
    return json.dumps(catalog_to_json(catalog), separators=(",", ":")).encode("utf-8")


# -- decoding a catalog from the network ------------------------------------------------------


def _bad(reason: str) -> ProtocolViolation:
    return ProtocolViolation(ErrorCode.DECODE, f"catalog: {reason}")


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{where} is not an object")
    return value


def _opt_u53(config: dict[str, Any], key: str, where: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    return _req_u53(config, key, where)


def _req_u53(config: dict[str, Any], key: str, where: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_U53:
        raise _bad(f"{where}.{key} is not an integer 0..2^53-1")
    return value


def _codec_and_description(config: dict[str, Any], where: str) -> tuple[str, bytes | None]:
    codec = config.get("codec")
    if not isinstance(codec, str):
        raise _bad(f"{where}.codec is not a string")
    container = config.get("container", _LEGACY)
    if _object(container, f"{where}.container").get("kind") != "legacy":
        raise _bad(f"{where} uses a container other than legacy, which shopcast does not read")
    description = config.get("description")
    if description is None:
        return codec, None
    if not isinstance(description, str) or not _HEX.fullmatch(description):
        raise _bad(f"{where}.description is not hex")
    return codec, bytes.fromhex(description)


def _video_untrusted(track: str, config: dict[str, Any]) -> VideoRendition:
    where = f"video.renditions[{track!r}]"
    codec, description = _codec_and_description(config, where)
    framerate = config.get("framerate")
    if framerate is not None and (
        isinstance(framerate, bool)
        or not isinstance(framerate, (int, float))
        or not math.isfinite(framerate)
    ):
        raise _bad(f"{where}.framerate is not a number")
    optimize = config.get("optimizeForLatency")
    if optimize is not None and not isinstance(optimize, bool):
        raise _bad(f"{where}.optimizeForLatency is not a boolean")
    return VideoRendition(
        track=track,
        codec=codec,
        description=description,
        coded_width_px=_opt_u53(config, "codedWidth", where),
        coded_height_px=_opt_u53(config, "codedHeight", where),
        framerate_fps=None if framerate is None else float(framerate),
        bitrate_bps=_opt_u53(config, "bitrate", where),
        optimize_for_latency=optimize,
        jitter_ms=_opt_u53(config, "jitter", where),
    )


def _audio_untrusted(track: str, config: dict[str, Any]) -> AudioRendition:
    where = f"audio.renditions[{track!r}]"
    codec, description = _codec_and_description(config, where)
    return AudioRendition(
        track=track,
        codec=codec,
        sample_rate_hz=_req_u53(config, "sampleRate", where),
        channel_count=_req_u53(config, "numberOfChannels", where),
        description=description,
        bitrate_bps=_opt_u53(config, "bitrate", where),
        jitter_ms=_opt_u53(config, "jitter", where),
    )


def decode_catalog_untrusted(
    data: bytes | bytearray | memoryview, *, max_size_bytes: int
) -> Catalog:
    """Parse a catalog.json snapshot frame; rejects what @moq/hang's schema rejects.

    Only the current object form of the sections is read (not the pre-0.3 array form), and
    only the legacy container; unknown root sections and fields are ignored, as zod does.
    """
    if len(data) > max_size_bytes:
        raise _bad(f"{len(data)} bytes exceeds the limit of {max_size_bytes}")
    try:
        root = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise _bad(f"not JSON ({error.__class__.__name__})") from None
    root = _object(root, "the root")
    video: list[VideoRendition] = []
    display: tuple[int | None, int | None] = (None, None)
    if root.get("video") is not None:
        section = _object(root["video"], "video")
        for track, config in _object(section.get("renditions"), "video.renditions").items():
            video.append(_video_untrusted(track, _object(config, f"video.renditions[{track!r}]")))
        if section.get("display") is not None:
            size = _object(section["display"], "video.display")
            display = (
                _req_u53(size, "width", "video.display"),
                _req_u53(size, "height", "video.display"),
            )
    audio: list[AudioRendition] = []
    if root.get("audio") is not None:
        section = _object(root["audio"], "audio")
        for track, config in _object(section.get("renditions"), "audio.renditions").items():
            audio.append(_audio_untrusted(track, _object(config, f"audio.renditions[{track!r}]")))
    return Catalog(tuple(video), tuple(audio), display[0], display[1])


# -- the legacy frame container ---------------------------------------------------------------


def encode_frame_header(timestamp_us: int) -> bytes:
    """The bytes before a codec payload: its presentation time in microseconds, as a varint.

    Write them followed by the payload to avoid copying it; ``encode_frame`` joins both.
    """
    return encode_varint(timestamp_us)


def encode_frame(timestamp_us: int, payload: bytes | memoryview) -> bytes:
    """A complete hang frame: timestamp varint, then the codec payload."""
    return encode_varint(timestamp_us) + payload


def decode_frame_untrusted(frame: bytes | bytearray | memoryview) -> tuple[int, memoryview]:
    """Split a hang frame into its timestamp in microseconds and its codec payload (uncopied).

    An empty payload is a marker the player skips (container/legacy.js), not an error.
    """
    view = memoryview(frame)
    if not view:
        raise ProtocolViolation(ErrorCode.DECODE, "hang frame is empty, no timestamp")
    size = 1 << (view[0] >> 6)
    if len(view) < size:
        raise ProtocolViolation(ErrorCode.DECODE, "hang frame timestamp is truncated")
    timestamp_us = int.from_bytes(view[:size], "big") & ((1 << (8 * size - 2)) - 1)
    return timestamp_us, view[size:]
