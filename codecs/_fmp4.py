"""A fragmented MP4 (ISO BMFF) writer for H.264 and AAC: ``ftyp``, a ``moov``
with ``avc1``/``avcC`` and ``mp4a``/``esds`` sample entries and ``mvex``,
then one ``moof``+``mdat`` per video group (GOP), the form that ffmpeg,
ffprobe and browsers (Media Source Extensions, ``<video src>``) read.

Input frames are (presentation time in µs, starts a group, payload): video
payloads are length-prefixed NAL units as the ``avcC`` record describes them
(what FLV, hang and WebCodecs carry), audio payloads raw AAC access units.
A payload is bytes, or any reference with a ``len()`` that the ``read``
function given to ``write`` turns into its bytes when its fragment is
written: a long recording is written fragment by fragment without its
media in memory.
Decode times are rebuilt from presentation times: within the stream, the
sorted presentation times are the decode times, shifted by the largest
reordering so that every composition offset is positive.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from shopcast.codecs._errors import MalformedMedia
from shopcast.codecs._h264 import parse_avcc_record_untrusted, parse_sps_untrusted

__all__ = ["FragmentedMp4Writer"]

VIDEO_TIMESCALE = 90_000
MOVIE_TIMESCALE = 1000
AAC_FRAME_SAMPLES = 1024
VIDEO_ID, AUDIO_ID = 1, 2
SAMPLE_SYNC = 0x02000000
SAMPLE_NON_SYNC = 0x01010000


def _box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


def _descriptor(tag: int, body: bytes) -> bytes:
    size = len(body)
    return bytes([tag, 0x80 | (size >> 21) & 0x7F, 0x80 | (size >> 14) & 0x7F,
                  0x80 | (size >> 7) & 0x7F, size & 0x7F]) + body


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


class FragmentedMp4Writer:
    """Writes one fragmented MP4 from whole streams of frames.

    ``video``: (avcC record, width px, height px) or None; ``audio``:
    (AudioSpecificConfig, sample rate Hz, channels) or None.
    """

    def __init__(self, *, video: tuple[bytes, int, int] | None,
                 audio: tuple[bytes, int, int] | None) -> None:
        if video is None and audio is None:
            raise ValueError("an MP4 needs a video or an audio track")
        self.video = video
        self.audio = audio

    def write(self, out: BinaryIO, video_frames: Sequence[tuple[int, bool, Any]],
              audio_frames: Sequence[tuple[int, bool, Any]], *,
              read: Callable[[Any], bytes] = bytes) -> dict[str, float | int]:
        """Write the file to ``out`` fragment by fragment, each as soon as it
        is made; ``read(payload)`` gives a frame's bytes (default: the
        payloads are bytes). Returns its duration (s), fragments and sample
        counts."""
        video = self._video_samples(video_frames) if self.video is not None else []
        audio_rate = self.audio[1] if self.audio is not None else 0
        # Time zero of the file: the first decode time of either track.
        firsts = ([video[0][0]] if video else []) + ([audio_frames[0][0]] if audio_frames else [])
        base_us = min(firsts) if firsts else 0
        audio = [(max(0, round((t - base_us) * audio_rate / 1e6)), payload)
                 for t, _, payload in audio_frames] if self.audio is not None else []
        # Video decode times in the video timescale, from the same origin.
        video_ticks = [(round((dts - base_us) * VIDEO_TIMESCALE / 1e6), cts, key, payload)
                       for dts, cts, key, payload, _ in video]
        # Each fragment: a video group, with the audio up to the next group.
        starts = [i for i, s in enumerate(video_ticks) if s[2]] or ([0] if video_ticks else [])
        if video_ticks and starts[0] != 0:
            starts.insert(0, 0)
        fragments: list[tuple[list, list]] = []
        audio_position = 0
        if video_ticks:
            for n, first in enumerate(starts):
                last = starts[n + 1] if n + 1 < len(starts) else len(video_ticks)
                group = video_ticks[first:last]
                until_s = (video_ticks[last][0] / VIDEO_TIMESCALE) if last < len(video_ticks) else float("inf")
                chunk = []
                while audio_position < len(audio) and audio[audio_position][0] / audio_rate < until_s:
                    chunk.append(audio[audio_position])
                    audio_position += 1
                fragments.append((group, chunk))
        else:
            step = max(1, round(audio_rate / AAC_FRAME_SAMPLES))  # about a second per fragment
            fragments = [([], audio[i:i + step]) for i in range(0, len(audio), step)]
        video_duration = self._video_durations(video_ticks)
        video_total = sum(video_duration)
        audio_total = (audio[-1][0] + AAC_FRAME_SAMPLES) if audio else 0
        duration_s = max(video_total / VIDEO_TIMESCALE, audio_total / audio_rate if audio_rate else 0.0)
        out.write(self._ftyp())
        out.write(self._moov(duration_s, video_total, audio_total))
        durations = iter(video_duration)
        for sequence, (group, chunk) in enumerate(fragments, start=1):
            self._write_fragment(out, read, sequence, group, [next(durations) for _ in group], chunk)
        return {"duration_s": duration_s, "fragments": len(fragments),
                "video_samples": len(video_ticks), "audio_samples": len(audio)}

    # --- timing -----------------------------------------------------------------------------

    @staticmethod
    def _video_samples(frames: Sequence[tuple[int, bool, bytes]]) -> list[tuple[int, int, bool, bytes, int]]:
        """(dts µs, composition offset in ticks, keyframe, payload, pts µs) in decode order."""
        if not frames:
            return []
        pts = [f[0] for f in frames]
        ordered = sorted(pts)
        shift = max(0, max(ordered[i] - pts[i] for i in range(len(pts))))
        samples = []
        for i, (t, key, payload) in enumerate(frames):
            dts = ordered[i] - shift
            offset = round((t - dts) * VIDEO_TIMESCALE / 1e6)
            samples.append((dts, offset, key, payload, t))
        return samples

    @staticmethod
    def _video_durations(ticks: list[tuple[int, int, bool, bytes]]) -> list[int]:
        durations = [max(1, ticks[i + 1][0] - ticks[i][0]) for i in range(len(ticks) - 1)]
        if ticks:
            durations.append(durations[-1] if durations else VIDEO_TIMESCALE // 30)
        return durations

    # --- boxes ------------------------------------------------------------------------------

    @staticmethod
    def _ftyp() -> bytes:
        return _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isom", b"iso6", b"avc1", b"mp41")

    def _moov(self, duration_s: float, video_ticks: int, audio_samples: int) -> bytes:
        movie_duration = round(duration_s * MOVIE_TIMESCALE)
        traks, trexs = [], []
        if self.video is not None:
            traks.append(self._video_trak(round(video_ticks / VIDEO_TIMESCALE * MOVIE_TIMESCALE), video_ticks))
            trexs.append(_full(b"trex", 0, 0, struct.pack(">5I", VIDEO_ID, 1, 0, 0, 0)))
        if self.audio is not None:
            rate = self.audio[1]
            traks.append(self._audio_trak(round(audio_samples / rate * MOVIE_TIMESCALE), audio_samples))
            trexs.append(_full(b"trex", 0, 0, struct.pack(">5I", AUDIO_ID, 1, 0, 0, 0)))
        mvhd = _full(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, MOVIE_TIMESCALE, movie_duration),
                     struct.pack(">IH10x", 0x10000, 0x100), _MATRIX, bytes(24),
                     struct.pack(">I", 3))
        mvex = _box(b"mvex", _full(b"mehd", 0, 0, struct.pack(">I", movie_duration)), *trexs)
        return _box(b"moov", mvhd, *traks, mvex)

    @staticmethod
    def _tkhd(track_id: int, duration: int, *, audio: bool, width: int = 0, height: int = 0) -> bytes:
        return _full(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, track_id, 0, duration), bytes(8),
                     struct.pack(">HHHH", 0, 0, 0x100 if audio else 0, 0), _MATRIX,
                     struct.pack(">II", width << 16, height << 16))

    @staticmethod
    def _mdia(timescale: int, duration: int, handler: bytes, name: bytes, media_header: bytes,
              sample_entry: bytes) -> bytes:
        mdhd = _full(b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, timescale, duration),
                     struct.pack(">HH", 0x55C4, 0))  # language "und"
        hdlr = _full(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, handler), name + b"\0")
        dinf = _box(b"dinf", _full(b"dref", 0, 0, struct.pack(">I", 1), _full(b"url ", 0, 1)))
        stbl = _box(b"stbl", _full(b"stsd", 0, 0, struct.pack(">I", 1), sample_entry),
                    _full(b"stts", 0, 0, struct.pack(">I", 0)), _full(b"stsc", 0, 0, struct.pack(">I", 0)),
                    _full(b"stsz", 0, 0, struct.pack(">II", 0, 0)), _full(b"stco", 0, 0, struct.pack(">I", 0)))
        return _box(b"mdia", mdhd, hdlr, _box(b"minf", media_header, dinf, stbl))

    def _video_trak(self, movie_duration: int, media_duration: int) -> bytes:
        assert self.video is not None
        avcc, width, height = self.video
        if not (width and height):
            width, height = _avcc_size(avcc)
        entry = _box(b"avc1", bytes(6), struct.pack(">H", 1), bytes(16),
                     struct.pack(">HHIIIH", width, height, 0x480000, 0x480000, 0, 1), bytes(32),
                     struct.pack(">Hh", 0x18, -1), _box(b"avcC", avcc))
        return _box(b"trak", self._tkhd(VIDEO_ID, movie_duration, audio=False, width=width, height=height),
                    self._mdia(VIDEO_TIMESCALE, media_duration, b"vide", b"VideoHandler",
                               _full(b"vmhd", 0, 1, bytes(8)), entry))

    def _audio_trak(self, movie_duration: int, media_duration: int) -> bytes:
        assert self.audio is not None
        config, rate, channels = self.audio
        decoder_config = _descriptor(4, struct.pack(">BB3sII", 0x40, 0x15, bytes(3), 0, 0)
                                     + _descriptor(5, config))
        es = _descriptor(3, struct.pack(">HB", AUDIO_ID, 0) + decoder_config + _descriptor(6, b"\x02"))
        entry = _box(b"mp4a", bytes(6), struct.pack(">H", 1), bytes(8),
                     struct.pack(">HHHHI", channels, 16, 0, 0, (rate & 0xFFFF) << 16),
                     _full(b"esds", 0, 0, es))
        return _box(b"trak", self._tkhd(AUDIO_ID, movie_duration, audio=True),
                    self._mdia(rate, media_duration, b"soun", b"SoundHandler",
                               _full(b"smhd", 0, 0, bytes(4)), entry))

    def _write_fragment(self, out: BinaryIO, read: Callable[[Any], bytes], sequence: int, video: list,
                        durations: list[int], audio: list) -> None:
        """One ``moof`` and its ``mdat``, the payloads read and written one at a time."""
        trafs: list[tuple[int, int, list[tuple[int, int, int, int]], list]] = []
        if video:
            samples = [(d, len(p), SAMPLE_SYNC if key else SAMPLE_NON_SYNC, cts)
                       for (_, cts, key, p), d in zip(video, durations)]
            trafs.append((VIDEO_ID, video[0][0], samples, [p for _, _, _, p in video]))
        if audio:
            samples = [(AAC_FRAME_SAMPLES, len(p), SAMPLE_SYNC, 0) for _, p in audio]
            trafs.append((AUDIO_ID, audio[0][0], samples, [p for _, p in audio]))
        sizes = [sum(s[1] for s in traf[2]) for traf in trafs]
        # The moof's size does not depend on the data offsets, so build it
        # once with zeros to learn it, then with the real offsets.
        moof = self._moof(sequence, trafs, [0] * len(trafs))
        offsets, position = [], len(moof) + 8
        for size in sizes:
            offsets.append(position)
            position += size
        out.write(self._moof(sequence, trafs, offsets))
        out.write(struct.pack(">I4s", 8 + sum(sizes), b"mdat"))
        for traf in trafs:
            for payload in traf[3]:
                data = read(payload)
                if len(data) != len(payload):
                    raise ValueError("a frame's payload changed size while it was written")
                out.write(data)

    @staticmethod
    def _moof(sequence: int, trafs: list, offsets: list[int]) -> bytes:
        boxes = [_full(b"mfhd", 0, 0, struct.pack(">I", sequence))]
        for (track_id, base, samples, _), offset in zip(trafs, offsets):
            tfhd = _full(b"tfhd", 0, 0x020000, struct.pack(">I", track_id))
            tfdt = _full(b"tfdt", 1, 0, struct.pack(">Q", base))
            rows = b"".join(struct.pack(">IIII", d, size, flags, cts) for d, size, flags, cts in samples)
            trun = _full(b"trun", 0, 0x000F01, struct.pack(">Ii", len(samples), offset), rows)
            boxes.append(_box(b"traf", tfhd, tfdt, trun))
        return _box(b"moof", *boxes)


def _avcc_size(avcc: bytes) -> tuple[int, int]:
    """Width and height from the first SPS of an avcC record (0, 0 if unreadable)."""
    try:
        record = parse_avcc_record_untrusted(avcc)
        if not record.sps:
            return 0, 0
        sps = parse_sps_untrusted(record.sps[0])
        return sps.width, sps.height
    except MalformedMedia:  # an unreadable SPS: the decoder finds the size itself
        return 0, 0
