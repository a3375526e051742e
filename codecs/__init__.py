"""shopcast's media core: packetizer, FEC and jitter buffer kernels, and codec bitstream code.

Everything public is re-exported here; the implementation lives in private modules.
Call :func:`warmup` at start-up so that no request waits for numba to compile.
"""

from shopcast.codecs._aac import (
    AdtsFrame,
    AdtsHeader,
    AdtsReader,
    AudioConfig,
    build_adts_header,
    build_audio_specific_config,
    parse_adts_header_untrusted,
    parse_audio_specific_config_untrusted,
)
from shopcast.codecs._config import MediaConfig
from shopcast.codecs._errors import MalformedMedia, UnsupportedMedia
from shopcast.codecs._fmp4 import FragmentedMp4Writer
from shopcast.codecs._flv import (
    AacPacketType,
    AvcPacketType,
    FlvAudio,
    FlvReader,
    FlvTag,
    FlvVideo,
    TagType,
    build_audio_tag,
    build_flv_stream,
    build_video_tag,
    parse_audio_tag_untrusted,
    parse_video_tag_untrusted,
)
from shopcast.codecs._h264 import (
    AvcConfig,
    NalType,
    Sps,
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
from shopcast.codecs._jit import warmup
from shopcast.codecs._jitter import JitterBuffer, JitterStatistics
from shopcast.codecs._opus import OpusToc, parse_opus_toc_untrusted
from shopcast.codecs._packetizer import (
    HEADER_BYTES,
    Frame,
    FrameBatch,
    PacketBatch,
    PacketHeader,
    Packetizer,
    concatenate,
    decode_packet_header_untrusted,
    reassemble_untrusted,
)

__all__ = [
    "FragmentedMp4Writer",
    "HEADER_BYTES",
    "AacPacketType",
    "AdtsFrame",
    "AdtsHeader",
    "AdtsReader",
    "AudioConfig",
    "AvcConfig",
    "AvcPacketType",
    "FlvAudio",
    "FlvReader",
    "FlvTag",
    "FlvVideo",
    "Frame",
    "FrameBatch",
    "JitterBuffer",
    "JitterStatistics",
    "MalformedMedia",
    "MediaConfig",
    "NalType",
    "OpusToc",
    "PacketBatch",
    "PacketHeader",
    "Packetizer",
    "Sps",
    "TagType",
    "UnsupportedMedia",
    "annexb_to_avcc_untrusted",
    "avcc_to_annexb_untrusted",
    "build_adts_header",
    "build_audio_specific_config",
    "build_audio_tag",
    "build_avcc_record",
    "build_flv_stream",
    "build_video_tag",
    "concatenate",
    "decode_packet_header_untrusted",
    "is_keyframe",
    "join_annexb",
    "join_avcc",
    "nal_type",
    "parse_adts_header_untrusted",
    "parse_audio_specific_config_untrusted",
    "parse_audio_tag_untrusted",
    "parse_avcc_record_untrusted",
    "parse_opus_toc_untrusted",
    "parse_sps_untrusted",
    "parse_video_tag_untrusted",
    "reassemble_untrusted",
    "split_annexb_untrusted",
    "split_avcc_untrusted",
    "warmup",
]
