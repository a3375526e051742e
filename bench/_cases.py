"""The table of media streams that feeds both the codecs tests and the micro benchmarks."""

import dataclasses

import numpy as np
from shopcast.codecs import MediaConfig


@dataclasses.dataclass(frozen=True)
class StreamCase:
    """A synthetic track: frame sizes, group length and FEC, seeded so every run sees the same bytes."""

    name: str
    video: bool  #: groups start at keyframes; the jitter buffer skips to the next keyframe after a loss
    keyframe_bytes: int  #: size of the first frame of each group (bytes)
    frame_bytes: int  #: size of the other frames (bytes)
    group_frames: int  #: frames per group (a keyframe every this many frames)
    frame_interval_us: int  #: time between frames (µs)
    fec_k: int  #: data fragments per parity fragment, 0 = none
    media: MediaConfig = MediaConfig()  #: the other [media] settings (a --config run replaces them)

    def config(self, **overrides) -> MediaConfig:
        """The MediaConfig this case runs with (its media settings, its FEC and any overrides)."""
        return dataclasses.replace(self.media, **{"fec_k": self.fec_k, **overrides})

    def frames(self, count: int, seed: int = 0, scale: float = 1.0):
        """``count`` frames as (data, offsets, lengths, timestamps_us, groups, keyframes).

        ``scale`` shrinks the frame sizes for tests that run the pure-Python twins.
        """
        rng = np.random.default_rng(seed)
        index = np.arange(count, dtype=np.int64)
        keyframes = (index % self.group_frames) == 0
        base = np.where(keyframes, self.keyframe_bytes, self.frame_bytes) * scale
        # +-25 % around the nominal size, as an encoder's rate control varies it.
        lengths = np.maximum(0, (base * rng.uniform(0.75, 1.25, count)).astype(np.int64))
        offsets = np.zeros(count, dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        data = rng.integers(0, 256, int(lengths.sum()), dtype=np.uint8)
        return data, offsets, lengths, index * self.frame_interval_us, index // self.group_frames, keyframes


CASES = (
    StreamCase("video-1080p-fec", video=True, keyframe_bytes=120_000, frame_bytes=12_000, group_frames=60,
               frame_interval_us=33_333, fec_k=8),
    StreamCase("video-720p-nofec", video=True, keyframe_bytes=50_000, frame_bytes=5_000, group_frames=60,
               frame_interval_us=33_333, fec_k=0),
    StreamCase("audio-aac", video=False, keyframe_bytes=400, frame_bytes=400, group_frames=1,
               frame_interval_us=21_333, fec_k=4),
)
