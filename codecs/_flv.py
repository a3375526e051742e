"""FLV: tag bodies as RTMP carries them (AVC video, AAC audio, Enhanced RTMP FourCCs) and FLV streams.

This module parses untrusted input (RTMP messages from publishers, FLV bytes);
every parser raises :class:`MalformedMedia` on invalid bytes, and
:class:`UnsupportedMedia` on media it recognises but does not handle.
"""

import dataclasses
import enum

from shopcast.codecs._errors import MalformedMedia, UnsupportedMedia

_VIDEO = "FLV video tag"
_AUDIO = "FLV audio tag"
_AVC_CODEC_ID = 7
_AAC_SOUND_FORMAT = 10
_EX_HEADER_BIT = 0x80
# Enhanced RTMP (veovera enhanced-rtmp v1/v2) video FourCCs, and the one legacy
# codec id some servers used for HEVC before it existed.
ENHANCED_VIDEO_FOURCCS = {b"hvc1": "HEVC", b"av01": "AV1", b"vp09": "VP9", b"avc1": "H.264"}
_LEGACY_VIDEO_CODECS = {2: "Sorenson H.263", 3: "Screen video", 4: "On2 VP6", 5: "On2 VP6 with alpha",
                        6: "Screen video v2", 12: "HEVC (non-standard codec id 12)"}
_LEGACY_AUDIO_FORMATS = {0: "linear PCM", 1: "ADPCM", 2: "MP3", 3: "linear PCM little-endian",
                         4: "Nellymoser 16 kHz", 5: "Nellymoser 8 kHz", 6: "Nellymoser", 7: "G.711 A-law",
                         8: "G.711 mu-law", 11: "Speex", 14: "MP3 8 kHz"}
_EX_AUDIO_SOUND_FORMAT = 9  # Enhanced RTMP v2: a FourCC follows (Opus, FLAC, AC-3, ...)


class AvcPacketType(enum.IntEnum):
    """AVCPacketType of an FLV AVC video tag."""

    SEQUENCE_HEADER = 0  #: the payload is an avcC record
    NALU = 1  #: the payload is one access unit, length-prefixed NAL units
    END_OF_SEQUENCE = 2  #: no payload


class AacPacketType(enum.IntEnum):
    """AACPacketType of an FLV AAC audio tag."""

    SEQUENCE_HEADER = 0  #: the payload is an AudioSpecificConfig
    RAW = 1  #: the payload is one raw AAC frame


@dataclasses.dataclass(frozen=True)
class FlvVideo:
    """An AVC video tag body, decoded."""

    keyframe: bool  #: frame type 1: a keyframe (IDR) access unit
    packet_type: AvcPacketType
    composition_time_ms: int  #: presentation minus decode time (ms), signed
    payload: bytes  #: avcC record, AVCC access unit, or empty


@dataclasses.dataclass(frozen=True)
class FlvAudio:
    """An AAC audio tag body, decoded."""

    packet_type: AacPacketType
    payload: bytes  #: AudioSpecificConfig or one raw AAC frame


def parse_video_tag_untrusted(body) -> FlvVideo:
    """Decode an FLV video tag body (an RTMP video message). Only H.264 is handled.

    H.264 comes as the legacy AVC codec id or as Enhanced RTMP FourCC avc1.
    Enhanced RTMP hvc1, av01 and vp09, and legacy codecs other than AVC, raise
    UnsupportedMedia naming the codec.
    """
    raw = bytes(body)
    if not raw:
        raise MalformedMedia(_VIDEO, "empty")
    if raw[0] & _EX_HEADER_BIT:
        return _parse_enhanced_video(raw)
    frame_type = raw[0] >> 4
    codec_id = raw[0] & 0x0F
    if codec_id != _AVC_CODEC_ID:
        name = _LEGACY_VIDEO_CODECS.get(codec_id)
        if name is None:
            raise MalformedMedia(_VIDEO, f"unknown codec id {codec_id}")
        raise UnsupportedMedia(_VIDEO, f"codec {name} is not supported; publish H.264")
    if frame_type == 5:
        raise UnsupportedMedia(_VIDEO, "video info/command frames carry no media")
    if not 1 <= frame_type <= 4:
        raise MalformedMedia(_VIDEO, f"reserved frame type {frame_type}")
    if len(raw) < 5:
        raise MalformedMedia(_VIDEO, "AVC tag shorter than 5 bytes")
    if raw[1] > 2:
        raise MalformedMedia(_VIDEO, f"reserved AVCPacketType {raw[1]}")
    packet_type = AvcPacketType(raw[1])
    composition_time_ms = int.from_bytes(raw[2:5], "big", signed=True)
    payload = raw[5:]
    if packet_type == AvcPacketType.SEQUENCE_HEADER and not payload:
        raise MalformedMedia(_VIDEO, "AVC sequence header without an avcC record")
    return FlvVideo(keyframe=frame_type == 1, packet_type=packet_type,
                    composition_time_ms=composition_time_ms, payload=payload)


# Enhanced RTMP VideoPacketType values.
_EX_SEQUENCE_START = 0
_EX_CODED_FRAMES = 1
_EX_SEQUENCE_END = 2
_EX_CODED_FRAMES_X = 3  # coded frames with a composition time offset of zero, left out


def _parse_enhanced_video(raw: bytes) -> FlvVideo:
    """An Enhanced RTMP video tag: avc1 is handled; hvc1, av01 and vp09 are refused by name."""
    if len(raw) < 5:
        raise MalformedMedia(_VIDEO, "Enhanced RTMP header shorter than 5 bytes")
    frame_type = (raw[0] >> 4) & 0x07
    packet_type = raw[0] & 0x0F
    fourcc = raw[1:5]
    name = ENHANCED_VIDEO_FOURCCS.get(fourcc)
    if name is None:
        raise MalformedMedia(_VIDEO, f"unknown Enhanced RTMP FourCC {fourcc!r}")
    if fourcc != b"avc1":
        raise UnsupportedMedia(
            _VIDEO, f"Enhanced RTMP {fourcc.decode()} ({name}) is recognised but not supported; publish H.264 (avc1)"
        )
    if frame_type == 5:
        raise UnsupportedMedia(_VIDEO, "video info/command frames carry no media")
    if not 1 <= frame_type <= 4:
        raise MalformedMedia(_VIDEO, f"reserved frame type {frame_type}")
    body = raw[5:]
    if packet_type == _EX_SEQUENCE_START:
        if not body:
            raise MalformedMedia(_VIDEO, "avc1 sequence start without an avcC record")
        return FlvVideo(frame_type == 1, AvcPacketType.SEQUENCE_HEADER, 0, body)
    if packet_type == _EX_CODED_FRAMES:
        if len(body) < 3:
            raise MalformedMedia(_VIDEO, "avc1 coded frames without a composition time")
        return FlvVideo(frame_type == 1, AvcPacketType.NALU, int.from_bytes(body[:3], "big", signed=True), body[3:])
    if packet_type == _EX_CODED_FRAMES_X:
        return FlvVideo(frame_type == 1, AvcPacketType.NALU, 0, body)
    if packet_type == _EX_SEQUENCE_END:
        return FlvVideo(frame_type == 1, AvcPacketType.END_OF_SEQUENCE, 0, b"")
    raise UnsupportedMedia(_VIDEO, f"Enhanced RTMP video packet type {packet_type} is not supported")


def build_video_tag(video: FlvVideo) -> bytes:
    """Encode an AVC video tag body (for tests, recordings and RTMP relays)."""
    if not -(1 << 23) <= video.composition_time_ms < 1 << 23:
        raise ValueError("composition_time_ms must fit a signed 24-bit field")
    first = ((1 if video.keyframe else 2) << 4) | _AVC_CODEC_ID
    return (bytes([first, video.packet_type]) + video.composition_time_ms.to_bytes(3, "big", signed=True)
            + video.payload)


def parse_audio_tag_untrusted(body) -> FlvAudio:
    """Decode an FLV audio tag body (an RTMP audio message). Only AAC is handled."""
    raw = bytes(body)
    if not raw:
        raise MalformedMedia(_AUDIO, "empty")
    sound_format = raw[0] >> 4
    if sound_format == _EX_AUDIO_SOUND_FORMAT:
        fourcc = raw[1:5] if len(raw) >= 5 else b""
        raise UnsupportedMedia(_AUDIO, f"Enhanced RTMP audio {fourcc!r} is not supported; publish AAC")
    if sound_format != _AAC_SOUND_FORMAT:
        name = _LEGACY_AUDIO_FORMATS.get(sound_format)
        if name is None:
            raise MalformedMedia(_AUDIO, f"reserved sound format {sound_format}")
        raise UnsupportedMedia(_AUDIO, f"sound format {name} is not supported; publish AAC")
    if len(raw) < 2:
        raise MalformedMedia(_AUDIO, "AAC tag shorter than 2 bytes")
    if raw[1] > 1:
        raise MalformedMedia(_AUDIO, f"reserved AACPacketType {raw[1]}")
    packet_type = AacPacketType(raw[1])
    if packet_type == AacPacketType.SEQUENCE_HEADER and len(raw) < 4:
        raise MalformedMedia(_AUDIO, "AAC sequence header shorter than an AudioSpecificConfig")
    return FlvAudio(packet_type=packet_type, payload=raw[2:])


def build_audio_tag(audio: FlvAudio) -> bytes:
    """Encode an AAC audio tag body: 44.1 kHz, 16-bit, stereo flags as FLV requires for AAC."""
    return bytes([(_AAC_SOUND_FORMAT << 4) | 0x0F, audio.packet_type]) + audio.payload


class TagType(enum.IntEnum):
    """TagType of an FLV tag."""

    AUDIO = 8
    VIDEO = 9
    SCRIPT = 18


@dataclasses.dataclass(frozen=True)
class FlvTag:
    """One tag of an FLV stream."""

    tag_type: TagType
    timestamp_ms: int  #: decode time (ms)
    body: bytes  #: the tag body, as an RTMP message of the same type carries it


_FILE_HEADER_BYTES = 9
_TAG_HEADER_BYTES = 11
_PREVIOUS_SIZE_BYTES = 4
# A larger FLV header is legal, but nothing writes one; refusing bounds what is buffered.
_MAX_FILE_HEADER_BYTES = 1024


class FlvReader:
    """Splits an FLV byte stream, fed in chunks of any size, into tags.

    Buffers at most one tag (the 24-bit size field bounds it to 16 MiB) plus
    one chunk of input.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._header_done = False
        self.has_audio = False
        self.has_video = False

    def feed(self, data) -> list[FlvTag]:
        """Add bytes; return the tags now complete. Raises MalformedMedia on invalid bytes."""
        self._buffer += data
        tags = []
        pos = 0
        if not self._header_done:
            if len(self._buffer) < _FILE_HEADER_BYTES + _PREVIOUS_SIZE_BYTES:
                if not bytes(self._buffer[:3]) == b"FLV"[: len(self._buffer)]:
                    raise MalformedMedia("FLV stream", "does not start with 'FLV'")
                return tags
            if self._buffer[:3] != b"FLV" or self._buffer[3] != 1:
                raise MalformedMedia("FLV stream", "not an FLV version 1 header")
            header_bytes = int.from_bytes(self._buffer[5:9], "big")
            if not _FILE_HEADER_BYTES <= header_bytes <= _MAX_FILE_HEADER_BYTES:
                raise MalformedMedia("FLV stream", f"header size {header_bytes}")
            if len(self._buffer) < header_bytes + _PREVIOUS_SIZE_BYTES:
                return tags
            self.has_audio = bool(self._buffer[4] & 0x04)
            self.has_video = bool(self._buffer[4] & 0x01)
            pos = header_bytes + _PREVIOUS_SIZE_BYTES
            self._header_done = True
        while len(self._buffer) - pos >= _TAG_HEADER_BYTES:
            head = self._buffer[pos : pos + _TAG_HEADER_BYTES]
            if head[0] & 0x20:
                raise UnsupportedMedia("FLV tag", "encrypted (filtered) tags are not supported")
            if head[0] & 0x1F not in (8, 9, 18):
                raise MalformedMedia("FLV tag", f"unknown tag type {head[0] & 0x1F}")
            body_bytes = int.from_bytes(head[1:4], "big")
            end = pos + _TAG_HEADER_BYTES + body_bytes + _PREVIOUS_SIZE_BYTES
            if len(self._buffer) < end:
                break
            if int.from_bytes(self._buffer[end - 4 : end], "big") != _TAG_HEADER_BYTES + body_bytes:
                raise MalformedMedia("FLV tag", "PreviousTagSize does not match the tag")
            timestamp_ms = (head[7] << 24) | int.from_bytes(head[4:7], "big")
            body = bytes(self._buffer[pos + _TAG_HEADER_BYTES : end - 4])
            tags.append(FlvTag(TagType(head[0] & 0x1F), timestamp_ms, body))
            pos = end
        del self._buffer[:pos]
        return tags


def build_flv_stream(tags, *, has_audio: bool, has_video: bool) -> bytes:
    """An FLV byte stream of these tags (for tests and recordings)."""
    out = bytearray(b"FLV\x01" + bytes([(0x04 if has_audio else 0) | (0x01 if has_video else 0)])
                    + (9).to_bytes(4, "big") + bytes(4))
    for tag in tags:
        if len(tag.body) >= 1 << 24:
            raise ValueError("an FLV tag body must be shorter than 16 MiB")
        timestamp = tag.timestamp_ms & 0xFFFFFFFF
        out += bytes([tag.tag_type]) + len(tag.body).to_bytes(3, "big") + (timestamp & 0xFFFFFF).to_bytes(3, "big")
        out += bytes([timestamp >> 24]) + bytes(3) + tag.body
        out += (_TAG_HEADER_BYTES + len(tag.body)).to_bytes(4, "big")
    return bytes(out)
