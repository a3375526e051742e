"""MediaConfig: the [media] section of conf/default.toml, with ranges a loader can check.

Each field's metadata carries "min"/"max" (or "choices"), "unit" and "help", so the
server's config loader validates every key generically without importing codecs code.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class MediaConfig:
    """Tunables of the packetizer, the XOR FEC and the jitter buffer (conf [media])."""

    datagram_payload_bytes: int = dataclasses.field(
        default=1152,
        metadata={
            "min": 64,
            "max": 65000,
            "unit": "bytes",
            "help": "bytes of one packet (header + fragment) in one WebTransport datagram",
        },
    )
    fec_k: int = dataclasses.field(
        default=8,
        metadata={
            "min": 0,
            "max": 255,
            "unit": "count",
            "help": "data fragments per XOR parity fragment; 0 disables FEC",
        },
    )
    max_frame_bytes: int = dataclasses.field(
        default=4194304,
        metadata={
            "min": 1024,
            "max": 1 << 30,
            "unit": "bytes",
            "help": "largest frame the packetizer cuts and the jitter buffer accepts",
        },
    )
    ring_packets: int = dataclasses.field(
        default=4096,
        metadata={
            "min": 64,
            "max": 1 << 20,
            "unit": "packets",
            "help": "packets the jitter buffer ring holds (a power of two)",
        },
    )
    ring_frames: int = dataclasses.field(
        default=512,
        metadata={
            "min": 16,
            "max": 1 << 16,
            "unit": "frames",
            "help": "frames the jitter buffer tracks at once (a power of two)",
        },
    )
    reorder_window_packets: int = dataclasses.field(
        default=4,
        metadata={
            "min": 0,
            "max": 1024,
            "unit": "packets",
            "help": "newer packets that must arrive before a gap counts as lost",
        },
    )
    nack_retry_limit: int = dataclasses.field(
        default=3,
        metadata={
            "min": 0,
            "max": 32,
            "unit": "count",
            "help": "times a lost packet is NACKed before the buffer gives up",
        },
    )
    nack_retry_interval_ms: float = dataclasses.field(
        default=20.0,
        metadata={"min": 1.0, "max": 10000.0, "unit": "ms", "help": "wait before the first NACK retry"},
    )
    nack_backoff_factor: float = dataclasses.field(
        default=2.0,
        metadata={"min": 1.0, "max": 16.0, "unit": "ratio", "help": "growth of the wait between NACK retries"},
    )
    target_delay_initial_ms: float = dataclasses.field(
        default=100.0,
        metadata={"min": 0.0, "max": 60000.0, "unit": "ms", "help": "playout delay before jitter is measured"},
    )
    target_delay_min_ms: float = dataclasses.field(
        default=40.0,
        metadata={"min": 0.0, "max": 60000.0, "unit": "ms", "help": "smallest adaptive playout delay"},
    )
    target_delay_max_ms: float = dataclasses.field(
        default=1000.0,
        metadata={"min": 0.0, "max": 60000.0, "unit": "ms", "help": "largest adaptive playout delay"},
    )
    jitter_delay_factor: float = dataclasses.field(
        default=4.0,
        metadata={"min": 0.0, "max": 100.0, "unit": "ratio", "help": "playout delay per unit of measured jitter"},
    )
    late_delay_headroom: float = dataclasses.field(
        default=1.25,
        metadata={"min": 1.0, "max": 10.0, "unit": "ratio",
                  "help": "playout delay learnt from a packet too late for its frame, per unit of how long "
                          "that frame took"},
    )
    late_delay_decay_s: float = dataclasses.field(
        default=10.0,
        metadata={"min": 0.001, "max": 3600.0, "unit": "s",
                  "help": "time the playout delay learnt from late packets takes to wear off"},
    )

    def __post_init__(self) -> None:
        # Ranges of single keys are the loader's job (it reads the metadata);
        # these are the relations between keys that metadata cannot express.
        for name in ("ring_packets", "ring_frames"):
            value = getattr(self, name)
            if value <= 0 or value & (value - 1):
                raise ValueError(f"media.{name} must be a power of two, not {value}")
        if not self.target_delay_min_ms <= self.target_delay_initial_ms <= self.target_delay_max_ms:
            raise ValueError(
                "media.target_delay_initial_ms must lie between target_delay_min_ms and target_delay_max_ms"
            )
