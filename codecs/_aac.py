"""AAC: AudioSpecificConfig (to the ``mp4a.40.N`` codec string) and ADTS headers.

This module parses untrusted input (RTMP sequence headers, ADTS streams);
every parser raises :class:`MalformedMedia` on invalid bytes.
"""

import dataclasses

from shopcast.codecs._bits import BitReader
from shopcast.codecs._errors import MalformedMedia

# ISO/IEC 14496-3 Table 1.18, samplingFrequencyIndex -> Hz.
SAMPLE_RATES_HZ = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
_CHANNELS = (0, 1, 2, 3, 4, 5, 6, 8)  # channelConfiguration -> channels (0: in the PCE)
_SBR = 5
_PS = 29
ADTS_HEADER_BYTES = 7
ADTS_HEADER_CRC_BYTES = 9


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """An AudioSpecificConfig, decoded."""

    object_type: int  #: audio object type (2 is AAC-LC, 5 HE-AAC, 29 HE-AAC v2)
    sample_rate_hz: int  #: output sample rate (with SBR, the doubled rate)
    channels: int  #: output channels (0: given by a program config element)

    @property
    def codec_string(self) -> str:
        """The WebCodecs / RFC 6381 codec string, ``mp4a.40.N``."""
        return f"mp4a.40.{self.object_type}"


def _object_type(reader: BitReader) -> int:
    object_type = reader.bits(5)
    return 32 + reader.bits(6) if object_type == 31 else object_type


def _sample_rate(reader: BitReader) -> int:
    index = reader.bits(4)
    if index == 15:
        rate = reader.bits(24)
    elif index < len(SAMPLE_RATES_HZ):
        rate = SAMPLE_RATES_HZ[index]
    else:
        raise MalformedMedia(reader.what, f"reserved samplingFrequencyIndex {index}")
    if rate == 0:
        raise MalformedMedia(reader.what, "sample rate of 0 Hz")
    return rate


def parse_audio_specific_config_untrusted(data) -> AudioConfig:
    """Parse an AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1), as in an FLV AAC sequence header."""
    reader = BitReader(bytes(data), "AAC AudioSpecificConfig")
    object_type = _object_type(reader)
    if object_type == 0:
        raise MalformedMedia(reader.what, "audio object type 0 (null)")
    sample_rate_hz = _sample_rate(reader)
    configuration = reader.bits(4)
    if configuration >= len(_CHANNELS):
        raise MalformedMedia(reader.what, f"reserved channelConfiguration {configuration}")
    channels = _CHANNELS[configuration]
    if object_type in (_SBR, _PS):
        # Explicit SBR signalling: the output rate follows, then the core's object type.
        sample_rate_hz = _sample_rate(reader)
        if _object_type(reader) == 0:
            raise MalformedMedia(reader.what, "SBR core object type 0 (null)")
        if object_type == _PS:
            channels = 2
    return AudioConfig(object_type=object_type, sample_rate_hz=sample_rate_hz, channels=channels)


def build_audio_specific_config(object_type: int, sample_rate_hz: int, channels: int) -> bytes:
    """A two-byte AudioSpecificConfig for a plain object type, rate and channel layout."""
    if not 1 <= object_type <= 30:
        raise ValueError(f"object_type must be 1..30, not {object_type}")
    if channels not in _CHANNELS:
        raise ValueError(f"no channelConfiguration gives {channels} channels")
    if sample_rate_hz not in SAMPLE_RATES_HZ:
        raise ValueError(f"{sample_rate_hz} Hz has no samplingFrequencyIndex")
    value = (object_type << 11) | (SAMPLE_RATES_HZ.index(sample_rate_hz) << 7) | (_CHANNELS.index(channels) << 3)
    return value.to_bytes(2, "big")


@dataclasses.dataclass(frozen=True)
class AdtsHeader:
    """An ADTS frame header (ISO/IEC 13818-7 6.2)."""

    object_type: int  #: audio object type (profile + 1)
    sample_rate_hz: int
    channels: int
    frame_bytes: int  #: the whole ADTS frame, header included (bytes)
    header_bytes: int  #: 7, or 9 with a CRC
    raw_data_blocks: int  #: AAC frames in this ADTS frame

    def audio_config(self) -> AudioConfig:
        """The AudioSpecificConfig this header implies, as MP4 and WebCodecs want it."""
        return AudioConfig(self.object_type, self.sample_rate_hz, self.channels)


def parse_adts_header_untrusted(data) -> AdtsHeader:
    """Parse the ADTS header at the start of ``data`` (at least 7 bytes)."""
    raw = bytes(data[:ADTS_HEADER_BYTES])
    what = "AAC ADTS header"
    if len(raw) < ADTS_HEADER_BYTES:
        raise MalformedMedia(what, "shorter than 7 bytes")
    value = int.from_bytes(raw, "big")
    if value >> 44 != 0xFFF:
        raise MalformedMedia(what, "no syncword")
    if (value >> 41) & 0x3:
        raise MalformedMedia(what, "layer is not 0")
    protection_absent = (value >> 40) & 1
    profile = (value >> 38) & 0x3
    index = (value >> 34) & 0xF
    if index >= len(SAMPLE_RATES_HZ):
        raise MalformedMedia(what, f"reserved samplingFrequencyIndex {index}")
    channels = _CHANNELS[(value >> 30) & 0x7]
    frame_bytes = (value >> 13) & 0x1FFF
    header_bytes = ADTS_HEADER_BYTES if protection_absent else ADTS_HEADER_CRC_BYTES
    if frame_bytes < header_bytes:
        raise MalformedMedia(what, f"frame length {frame_bytes} is shorter than its header")
    return AdtsHeader(
        object_type=profile + 1, sample_rate_hz=SAMPLE_RATES_HZ[index], channels=channels,
        frame_bytes=frame_bytes, header_bytes=header_bytes, raw_data_blocks=(value & 0x3) + 1,
    )


def build_adts_header(config: AudioConfig, payload_bytes: int) -> bytes:
    """The 7-byte ADTS header (no CRC) for one raw AAC frame of ``payload_bytes``."""
    frame_bytes = payload_bytes + ADTS_HEADER_BYTES
    if not 1 <= config.object_type <= 4:
        raise ValueError("ADTS carries object types 1 to 4 only")
    if config.sample_rate_hz not in SAMPLE_RATES_HZ or config.channels not in _CHANNELS[:7] or frame_bytes >= 1 << 13:
        raise ValueError("sample rate, channels or frame length cannot be written in ADTS")
    value = 0xFFF << 44
    value |= 1 << 40  # protection_absent
    value |= (config.object_type - 1) << 38
    value |= SAMPLE_RATES_HZ.index(config.sample_rate_hz) << 34
    value |= _CHANNELS.index(config.channels) << 30
    value |= frame_bytes << 13
    value |= 0x7FF << 2  # buffer fullness: variable rate
    return value.to_bytes(ADTS_HEADER_BYTES, "big")


@dataclasses.dataclass(frozen=True)
class AdtsFrame:
    """One ADTS frame from a stream: its header and the raw AAC bytes after it."""

    header: AdtsHeader
    payload: bytes


class AdtsReader:
    """Splits an ADTS byte stream, fed in chunks of any size, into frames.

    Holds at most one frame (8191 bytes) of input between calls.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data) -> list[AdtsFrame]:
        """Add bytes; return the frames now complete. Raises MalformedMedia on a bad header."""
        self._buffer += data
        frames = []
        pos = 0
        while len(self._buffer) - pos >= ADTS_HEADER_BYTES:
            header = parse_adts_header_untrusted(memoryview(self._buffer)[pos : pos + ADTS_HEADER_BYTES])
            if len(self._buffer) - pos < header.frame_bytes:
                break
            payload = bytes(self._buffer[pos + header.header_bytes : pos + header.frame_bytes])
            frames.append(AdtsFrame(header, payload))
            pos += header.frame_bytes
        del self._buffer[:pos]
        return frames

    @property
    def pending_bytes(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        return len(self._buffer)
