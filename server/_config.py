"""Configuration: conf/default.toml, a --config file, environment overrides and
CLI flags, merged and checked into frozen dataclasses.

Every key's type comes from its dataclass field; ranges and allowed values come
from the field's metadata (``min``, ``max``, ``choices``, ``unit``). The
defaults live in conf/default.toml only, so there is one place to read them.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from shopcast.codecs import MediaConfig

__all__ = [
    "Config",
    "ConfigError",
    "default_config_text",
    "load_config",
    "render_config",
]

ENV_PREFIX = "SHOPCAST_"


class ConfigError(Exception):
    """A configuration value is unknown, of the wrong type or out of range.

    ``key`` is the dotted path of the offending key (``quic.idle_timeout_s``);
    ``source`` says where the value came from (a file, an environment variable
    or a command-line flag). The CLI prints it and exits with status 2.
    """

    def __init__(self, key: str, message: str, source: str = "") -> None:
        self.key = key
        self.message = message
        self.source = source
        where = f" (from {source})" if source else ""
        super().__init__(f"{key}: {message}{where}")


def _spec(*, min: float | None = None, max: float | None = None,
          choices: tuple[str, ...] | None = None, unit: str = "") -> Any:
    """A required dataclass field with its allowed range; the value comes from the TOML."""
    meta: dict[str, Any] = {"unit": unit}
    if min is not None:
        meta["min"] = min
    if max is not None:
        meta["max"] = max
    if choices is not None:
        meta["choices"] = choices
    return field(metadata=meta)


@dataclass(frozen=True)
class ServerConfig:
    """[server]: where the server listens and keeps its files."""

    host: str = _spec()
    port: int = _spec(min=0, max=65535)
    data_dir: str = _spec()
    public_names: tuple[str, ...] = _spec()
    drain_timeout_s: float = _spec(min=0.0, max=600.0, unit="s")


@dataclass(frozen=True)
class LogConfig:
    """[log]: structured logging."""

    format: str = _spec(choices=("kv", "json"))
    level: str = _spec(choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class TlsConfig:
    """[tls]: certificate from files, or a self-signed one made and renewed."""

    cert_file: str = _spec()
    key_file: str = _spec()
    self_signed_validity_days: int = _spec(min=1, max=14, unit="days")
    renew_before_h: int = _spec(min=1, max=240, unit="h")
    renew_check_interval_s: float = _spec(min=1.0, max=86400.0, unit="s")


@dataclass(frozen=True)
class TokensConfig:
    """[tokens]: the key that signs access tokens and their lifetimes."""

    api_key: str = _spec()
    api_secret: str = _spec()
    default_ttl_s: int = _spec(min=1, max=31536000, unit="s")
    max_ttl_s: int = _spec(min=1, max=31536000, unit="s")
    leeway_s: int = _spec(min=0, max=3600, unit="s")
    max_token_bytes: int = _spec(min=256, max=65536, unit="bytes")


@dataclass(frozen=True)
class QuicConfig:
    """[quic]: the QUIC endpoint's limits."""

    max_connections: int = _spec(min=1, max=1_000_000, unit="count")
    max_streams_bidi: int = _spec(min=1, max=1_000_000, unit="count")
    max_streams_uni: int = _spec(min=3, max=1_000_000, unit="count")
    idle_timeout_s: float = _spec(min=1.0, max=600.0, unit="s")
    client_pings_per_idle_timeout: int = _spec(min=2, max=20, unit="count")
    inbound_queue_packets: int = _spec(min=1, max=1_000_000, unit="packets")
    max_datagram_frame_size: int = _spec(min=1200, max=65536, unit="bytes")
    receive_batch_packets: int = _spec(min=1, max=4096, unit="packets")
    socket_buffer_bytes: int = _spec(min=65536, max=1 << 30, unit="bytes")
    close_grace_s: float = _spec(min=0.0, max=60.0, unit="s")


@dataclass(frozen=True)
class WebTransportConfig:
    """[webtransport]: sessions over HTTP/3."""

    max_sessions_per_connection: int = _spec(min=1, max=1024, unit="count")
    stream_buffer_bytes: int = _spec(min=4096, max=1 << 30, unit="bytes")
    accept_queue_streams: int = _spec(min=1, max=100_000, unit="count")
    datagram_queue: int = _spec(min=1, max=1_000_000, unit="count")
    send_high_water_bytes: int = _spec(min=1024, max=1 << 30, unit="bytes")
    max_capsule_bytes: int = _spec(min=1024, max=1 << 24, unit="bytes")
    serve_certificate_hash_over_http: bool = _spec()


@dataclass(frozen=True)
class HttpConfig:
    """[http]: the HTTPS API's limits, timeouts and CORS."""

    max_connections: int = _spec(min=1, max=1_000_000, unit="count")
    max_body_bytes: int = _spec(min=0, max=1 << 31, unit="bytes")
    max_header_bytes: int = _spec(min=1024, max=1 << 20, unit="bytes")
    max_header_fields: int = _spec(min=1, max=10_000, unit="count")
    header_timeout_s: float = _spec(min=0.1, max=600.0, unit="s")
    body_timeout_s: float = _spec(min=0.1, max=3600.0, unit="s")
    keepalive_timeout_s: float = _spec(min=0.1, max=3600.0, unit="s")
    cors_origins: tuple[str, ...] = _spec()
    static_max_age_s: int = _spec(min=0, max=31536000, unit="s")
    h2_max_concurrent_streams: int = _spec(min=1, max=10_000, unit="count")
    listen_backlog: int = _spec(min=1, max=65535, unit="count")
    close_timeout_s: float = _spec(min=0.0, max=60.0, unit="s")
    max_query_fields: int = _spec(min=1, max=10_000, unit="count")
    cors_max_age_s: int = _spec(min=0, max=86400, unit="s")
    latency_buckets_s: tuple[float, ...] = _spec(unit="s")


@dataclass(frozen=True)
class RelayConfig:
    """[relay]: the moq-lite relay's limits."""

    path: str = _spec()
    max_broadcasts: int = _spec(min=1, max=1_000_000, unit="count")
    max_tracks_per_broadcast: int = _spec(min=2, max=1024, unit="count")
    max_subscribers_per_track: int = _spec(min=1, max=10_000_000, unit="count")
    max_frame_bytes: int = _spec(min=1024, max=1 << 30, unit="bytes")
    max_group_bytes: int = _spec(min=1024, max=1 << 34, unit="bytes")
    latency_budget_ms: int = _spec(min=10, max=60_000, unit="ms")
    max_subscriber_backlog_bytes: int = _spec(min=65536, max=1 << 32, unit="bytes")
    keyframe_request_interval_ms: int = _spec(min=0, max=60_000, unit="ms")
    publisher_takeover: bool = _spec()
    max_message_bytes: int = _spec(min=1024, max=1 << 24, unit="bytes")
    max_subscriptions_per_session: int = _spec(min=1, max=1_000_000, unit="count")
    max_announce_interests_per_session: int = _spec(min=1, max=10_000, unit="count")
    max_open_groups_per_track: int = _spec(min=1, max=64, unit="count")
    max_name_bytes: int = _spec(min=16, max=65536, unit="bytes")
    max_announce_paths: int = _spec(min=1, max=1_000_000, unit="count")
    max_early_bytes: int = _spec(min=1024, max=1 << 30, unit="bytes")
    max_setup_versions: int = _spec(min=1, max=1024, unit="count")
    max_setup_parameters: int = _spec(min=1, max=1024, unit="count")


@dataclass(frozen=True)
class RtmpConfig:
    """[rtmp]: RTMP ingest from OBS and ffmpeg, and its limits."""

    enabled: bool = _spec()
    host: str = _spec()
    port: int = _spec(min=0, max=65535)
    app: str = _spec()
    public_host: str = _spec()
    stream_key_secret_file: str = _spec()
    max_connections: int = _spec(min=1, max=1_000_000, unit="count")
    listen_backlog: int = _spec(min=1, max=65535, unit="count")
    handshake_timeout_s: float = _spec(min=0.1, max=600.0, unit="s")
    idle_timeout_s: float = _spec(min=0.1, max=3600.0, unit="s")
    receive_bytes: int = _spec(min=1024, max=1 << 24, unit="bytes")
    min_chunk_size: int = _spec(min=1, max=0x7FFFFFFF, unit="bytes")
    max_chunk_size: int = _spec(min=128, max=0x7FFFFFFF, unit="bytes")
    out_chunk_size: int = _spec(min=128, max=0x7FFFFFFF, unit="bytes")
    max_message_bytes: int = _spec(min=1024, max=1 << 30, unit="bytes")
    max_chunk_streams: int = _spec(min=2, max=65599, unit="count")
    max_buffered_bytes: int = _spec(min=1024, max=1 << 32, unit="bytes")
    ack_window_bytes: int = _spec(min=1024, max=0x7FFFFFFF, unit="bytes")
    peer_bandwidth_bytes: int = _spec(min=1024, max=0x7FFFFFFF, unit="bytes")
    amf0_max_depth: int = _spec(min=1, max=256, unit="count")
    amf0_max_items: int = _spec(min=8, max=1_000_000, unit="count")

    def __post_init__(self) -> None:
        if self.min_chunk_size > self.max_chunk_size:
            raise ValueError("rtmp.min_chunk_size must not exceed rtmp.max_chunk_size")
        if not self.app or "/" in self.app:
            raise ValueError(f"rtmp.app must be one path segment, got {self.app!r}")


@dataclass(frozen=True)
class DatagramConfig:
    """[datagram]: the low-latency datagram mode's path and limits (docs/datagram-mode.md)."""

    path: str = _spec()
    history_packets: int = _spec(min=64, max=32768, unit="packets")
    max_subscriptions_per_session: int = _spec(min=1, max=10_000, unit="count")
    max_control_message_bytes: int = _spec(min=256, max=1 << 20, unit="bytes")
    max_nack_seqs: int = _spec(min=1, max=570, unit="count")
    resend_rate_packets_per_s: float = _spec(min=0.0, max=1e7, unit="packets/s")
    resend_burst_packets: int = _spec(min=0, max=1_000_000, unit="packets")
    max_queued_datagrams: int = _spec(min=16, max=1_000_000, unit="packets")

    def __post_init__(self) -> None:
        size = self.history_packets
        if size & (size - 1):
            # Sequence numbers are 16 bits: a power of two keeps seq % size stable as they wrap.
            raise ValueError(f"datagram.history_packets must be a power of two, not {size}")


@dataclass(frozen=True)
class DemoConfig:
    """[demo]: the looping demo room."""

    enabled: bool = _spec()
    room: str = _spec()
    clip: str = _spec()
    # The demo shop and its show of cards (plugins/_demo_shop.py).
    shop_stock: int = _spec(min=1, max=1_000_000, unit="count")
    cycle_s: float = _spec(min=1.0, max=86_400.0, unit="s")
    product_pin_s: float = _spec(min=0.0, max=86_400.0, unit="s")
    product_unpin_s: float = _spec(min=0.0, max=86_400.0, unit="s")
    flash_sale_every: int = _spec(min=0, max=1_000_000, unit="count")
    flash_pin_s: float = _spec(min=0.0, max=86_400.0, unit="s")
    flash_unpin_s: float = _spec(min=0.0, max=86_400.0, unit="s")
    flash_countdown_s: int = _spec(min=0, max=86_400, unit="s")
    flash_duration_s: int = _spec(min=1, max=86_400, unit="s")
    flash_price_percent: int = _spec(min=1, max=100, unit="percent")
    flash_stock_cap: int = _spec(min=1, max=1_000_000, unit="count")
    flash_per_buyer_limit: int = _spec(min=1, max=1_000_000, unit="count")

    def __post_init__(self) -> None:
        if not self.product_pin_s < self.product_unpin_s <= self.cycle_s:
            raise ValueError("demo.product_unpin_s must be after demo.product_pin_s and at most "
                             "demo.cycle_s")
        if not self.flash_pin_s < self.flash_unpin_s <= self.cycle_s:
            raise ValueError("demo.flash_unpin_s must be after demo.flash_pin_s and at most "
                             "demo.cycle_s")


@dataclass(frozen=True)
class WebConfig:
    """[web]: the viewer pages (server/_pages.py, server/static/)."""

    player_latency_ms: int = _spec(min=0, max=10_000, unit="ms")
    chat_messages_shown: int = _spec(min=1, max=10_000, unit="count")
    pins_poll_interval_s: float = _spec(min=0.5, max=600.0, unit="s")
    order_poll_interval_s: float = _spec(min=0.2, max=600.0, unit="s")
    order_poll_max: int = _spec(min=0, max=100_000, unit="count")
    datagram_tick_ms: int = _spec(min=1, max=1000, unit="ms")
    datagram_nack_after_ms: int = _spec(min=1, max=10_000, unit="ms")
    datagram_held_packets_max: int = _spec(min=0, max=1_000_000, unit="count")
    datagram_frames_pending_max: int = _spec(min=1, max=1_000_000, unit="count")
    datagram_audio_ahead_max_s: float = _spec(min=0.01, max=60.0, unit="s")
    terms_file: str = _spec()


# --- plugins, storage, accounts, rooms, webhooks (plugins/) -------------------------


@dataclass(frozen=True)
class StorageConfig:
    """[storage]: the SQLite database <data_dir>/shopcast.db."""

    busy_timeout_s: float = _spec(min=0.0, max=600.0, unit="s")
    synchronous: str = _spec(choices=("normal", "full"))


@dataclass(frozen=True)
class PluginsConfig:
    """[plugins]: which entry points of the group ``shopcast.plugins`` load."""

    enabled: tuple[str, ...] = _spec()
    disabled: tuple[str, ...] = _spec()


@dataclass(frozen=True)
class AccountsConfig:
    """[accounts]: registration, passwords, sessions and activity limits."""

    terms_version: str = _spec()
    terms_url: str = _spec()
    access_token_ttl_s: int = _spec(min=60, max=31536000, unit="s")
    refresh_token_ttl_s: int = _spec(min=60, max=31536000, unit="s")
    scrypt_n: int = _spec(min=1024, max=1 << 20, unit="count")
    scrypt_r: int = _spec(min=1, max=32, unit="count")
    scrypt_p: int = _spec(min=1, max=16, unit="count")
    name_min_chars: int = _spec(min=1, max=64, unit="chars")
    name_max_chars: int = _spec(min=1, max=64, unit="chars")
    display_name_max_chars: int = _spec(min=1, max=256, unit="chars")
    password_min_chars: int = _spec(min=6, max=128, unit="chars")
    password_max_chars: int = _spec(min=8, max=4096, unit="chars")
    url_max_chars: int = _spec(min=16, max=8192, unit="chars")
    comment_max_chars: int = _spec(min=1, max=10000, unit="chars")
    login_failures_max: int = _spec(min=1, max=1000, unit="count")
    login_failure_window_s: float = _spec(min=1.0, max=86400.0, unit="s")
    require_verified_host: bool = _spec()

    def __post_init__(self) -> None:
        if self.name_min_chars > self.name_max_chars:
            raise ValueError("accounts.name_min_chars must not exceed accounts.name_max_chars")
        if self.password_min_chars > self.password_max_chars:
            raise ValueError("accounts.password_min_chars must not exceed accounts.password_max_chars")
        if self.scrypt_n & (self.scrypt_n - 1):
            raise ValueError(f"accounts.scrypt_n must be a power of two, got {self.scrypt_n}")


@dataclass(frozen=True)
class RoomsConfig:
    """[rooms]: room fields' limits, automatic start and end, search and recommendations."""

    title_max_chars: int = _spec(min=1, max=1000, unit="chars")
    description_max_chars: int = _spec(min=0, max=100000, unit="chars")
    keywords_max: int = _spec(min=0, max=100, unit="count")
    hashtags_max: int = _spec(min=0, max=100, unit="count")
    tag_max_chars: int = _spec(min=1, max=100, unit="chars")
    team_max: int = _spec(min=0, max=1000, unit="count")
    target_regions_max: int = _spec(min=0, max=300, unit="count")
    duration_min_s: int = _spec(min=1, max=86400, unit="s")
    duration_max_s: int = _spec(min=1, max=604800, unit="s")
    schedule_horizon_days: int = _spec(min=1, max=3650, unit="days")
    auto_end_grace_s: float = _spec(min=0.0, max=86400.0, unit="s")
    push_lost_end_after_s: float = _spec(min=0.0, max=3600.0, unit="s")
    tick_interval_s: float = _spec(min=0.05, max=3600.0, unit="s")
    page_size_default: int = _spec(min=1, max=1000, unit="count")
    page_size_max: int = _spec(min=1, max=1000, unit="count")
    search_query_max_chars: int = _spec(min=1, max=1000, unit="chars")
    recommend_follow_weight: float = _spec(min=0.0, max=1000.0, unit="ratio")
    recommend_hashtag_weight: float = _spec(min=0.0, max=1000.0, unit="ratio")
    recommend_language_weight: float = _spec(min=0.0, max=1000.0, unit="ratio")
    recommend_popularity_weight: float = _spec(min=0.0, max=1000.0, unit="ratio")

    def __post_init__(self) -> None:
        if self.duration_min_s > self.duration_max_s:
            raise ValueError("rooms.duration_min_s must not exceed rooms.duration_max_s")
        if self.page_size_default > self.page_size_max:
            raise ValueError("rooms.page_size_default must not exceed rooms.page_size_max")


@dataclass(frozen=True)
class WebhooksConfig:
    """[webhooks]: signed event delivery to the platform, from a persisted outbox."""

    urls: tuple[str, ...] = _spec()
    secret: str = _spec()
    timeout_s: float = _spec(min=0.1, max=300.0, unit="s")
    retry_base_s: float = _spec(min=0.001, max=3600.0, unit="s")
    retry_max_s: float = _spec(min=0.001, max=86400.0, unit="s")
    max_attempts: int = _spec(min=1, max=1000, unit="count")
    batch_events: int = _spec(min=1, max=10000, unit="count")

    def __post_init__(self) -> None:
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"webhooks.urls must hold http:// or https:// URLs, got {url!r}")
        if self.retry_base_s > self.retry_max_s:
            raise ValueError("webhooks.retry_base_s must not exceed webhooks.retry_max_s")


@dataclass(frozen=True)
class CommerceConfig:
    """[commerce]: the catalog, restricted goods, coupons and Buy Now holds (plugins/_commerce.py)."""

    pins_max: int = _spec(min=1, max=20, unit="count")
    hold_expiry_s: float = _spec(min=1.0, max=86400.0, unit="s")
    hold_check_interval_s: float = _spec(min=0.05, max=3600.0, unit="s")
    per_buyer_limit_default: int = _spec(min=1, max=1_000_000, unit="count")
    quantity_max: int = _spec(min=1, max=1_000_000, unit="count")
    products_per_room_max: int = _spec(min=1, max=10_000, unit="count")
    skus_max: int = _spec(min=1, max=1000, unit="count")
    images_max: int = _spec(min=0, max=100, unit="count")
    image_max_bytes: int = _spec(min=1024, max=100_000_000, unit="bytes")
    image_max_age_s: int = _spec(min=0, max=315_360_000, unit="s")
    title_max_chars: int = _spec(min=1, max=1000, unit="chars")
    name_max_chars: int = _spec(min=1, max=1000, unit="chars")
    description_max_chars: int = _spec(min=0, max=100_000, unit="chars")
    price_max_minor: int = _spec(min=1, max=1 << 53, unit="minor units")
    stock_max: int = _spec(min=1, max=1 << 40, unit="count")
    currencies: tuple[str, ...] = _spec()
    coupon_percent_max: int = _spec(min=1, max=100, unit="percent")
    coupon_uses_max: int = _spec(min=1, max=1 << 40, unit="count")
    restricted_rules_max: int = _spec(min=0, max=1_000_000, unit="count")
    idempotency_ttl_s: float = _spec(min=60.0, max=31_536_000.0, unit="s")
    buy_batch_max: int = _spec(min=1, max=10_000, unit="count")
    pins_state_interval_s: float = _spec(min=0.1, max=60.0, unit="s")
    flash_countdown_min_s: int = _spec(min=0, max=3600, unit="s")
    flash_countdown_max_s: int = _spec(min=0, max=3600, unit="s")
    flash_duration_min_s: int = _spec(min=1, max=86400, unit="s")
    flash_duration_max_s: int = _spec(min=1, max=86400, unit="s")
    tracking_number_max_chars: int = _spec(min=1, max=1000, unit="chars")
    complaint_max_chars: int = _spec(min=1, max=100_000, unit="chars")
    complaints_per_order_max: int = _spec(min=1, max=1000, unit="count")
    orders_page_max: int = _spec(min=1, max=10_000, unit="count")
    products_page_max: int = _spec(min=1, max=10_000, unit="count")
    sales_recent_max: int = _spec(min=0, max=10_000, unit="count")

    def __post_init__(self) -> None:
        if not self.currencies:
            raise ValueError("commerce.currencies must name at least one currency")
        for code in self.currencies:
            if len(code) != 3 or not code.isascii() or not code.isupper() or not code.isalpha():
                raise ValueError(f"commerce.currencies: {code!r} is not an ISO 4217 code such as EUR")
        if self.flash_countdown_min_s > self.flash_countdown_max_s:
            raise ValueError("commerce.flash_countdown_min_s must not exceed flash_countdown_max_s")
        if self.flash_duration_min_s > self.flash_duration_max_s:
            raise ValueError("commerce.flash_duration_min_s must not exceed flash_duration_max_s")


@dataclass(frozen=True)
class PaymentsConfig:
    """[payments]: the payments provider and its signed webhook events (plugins/_payments.py)."""

    provider: str = _spec(choices=("test",))
    secret: str = _spec()
    webhook_url: str = _spec()
    webhook_tolerance_s: float = _spec(min=1.0, max=86400.0, unit="s")
    events_seen_ttl_s: float = _spec(min=60.0, max=31_536_000.0, unit="s")
    test_delay_s: float = _spec(min=0.0, max=3600.0, unit="s")
    timeout_s: float = _spec(min=0.1, max=300.0, unit="s")
    retry_base_s: float = _spec(min=0.001, max=3600.0, unit="s")
    retry_max_s: float = _spec(min=0.001, max=86400.0, unit="s")
    max_attempts: int = _spec(min=1, max=1000, unit="count")
    batch_events: int = _spec(min=1, max=10000, unit="count")
    senders: int = _spec(min=1, max=64, unit="count")
    reconcile_interval_s: float = _spec(min=0.1, max=86400.0, unit="s")
    card_max_chars: int = _spec(min=12, max=64, unit="chars")
    signature_max_chars: int = _spec(min=80, max=65536, unit="chars")
    form_max_bytes: int = _spec(min=64, max=65536, unit="bytes")

    def __post_init__(self) -> None:
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError(f"payments.webhook_url must be an http:// or https:// URL, got "
                             f"{self.webhook_url!r}")
        if self.retry_base_s > self.retry_max_s:
            raise ValueError("payments.retry_base_s must not exceed payments.retry_max_s")


@dataclass(frozen=True)
class ChatConfig:
    """[chat]: live chat, reactions and view counts."""

    path: str = _spec()
    max_message_bytes: int = _spec(min=1, max=65536, unit="bytes")
    max_request_bytes: int = _spec(min=64, max=65535, unit="bytes")
    history_messages: int = _spec(min=0, max=10_000, unit="count")
    transcript_messages: int = _spec(min=1, max=10_000_000, unit="count")
    bucket_capacity: int = _spec(min=1, max=10_000, unit="count")
    bucket_refill_per_s: float = _spec(min=0.001, max=1000.0, unit="1/s")
    flood_strikes: int = _spec(min=1, max=1000, unit="count")
    flood_mute_s: float = _spec(min=1.0, max=86400.0, unit="s")
    tick_ms: int = _spec(min=10, max=10_000, unit="ms")
    reaction_interval_ms: int = _spec(min=10, max=60_000, unit="ms")
    reactions: tuple[str, ...] = _spec()
    max_blocklist_terms: int = _spec(min=0, max=100_000, unit="count")
    viewers_interval_ms: int = _spec(min=100, max=60_000, unit="ms")
    group_ms: int = _spec(min=100, max=600_000, unit="ms")
    global_blocklist: tuple[str, ...] = _spec()
    subscriber_backlog_bytes: int = _spec(min=1024, max=64 * 1024 * 1024, unit="bytes")
    save_interval_ms: int = _spec(min=10, max=60_000, unit="ms")
    ended_room_keep_s: float = _spec(min=0.0, max=7 * 86400.0, unit="s")
    audit_entries: int = _spec(min=1, max=1_000_000, unit="count")
    reaction_bucket_capacity: int = _spec(min=1, max=10_000, unit="count")
    reaction_refill_per_s: float = _spec(min=0.001, max=1000.0, unit="1/s")
    min_mute_s: float = _spec(min=1.0, max=31_536_000.0, unit="s")
    max_mute_s: float = _spec(min=1.0, max=31_536_000.0, unit="s")
    max_request_fields: int = _spec(min=6, max=64, unit="count")
    reply_window_messages: int = _spec(min=1, max=1_000_000, unit="count")

    def __post_init__(self) -> None:
        # A message travels inside a request: with its msgpack framing it must fit.
        if self.max_message_bytes + 64 > self.max_request_bytes:
            raise ValueError(f"chat.max_message_bytes ({self.max_message_bytes}) must leave 64 bytes "
                             f"of request framing under chat.max_request_bytes ({self.max_request_bytes})")
        if self.min_mute_s > self.max_mute_s:
            raise ValueError("chat.min_mute_s must not exceed chat.max_mute_s")
        if self.reply_window_messages < self.history_messages:
            raise ValueError("chat.reply_window_messages must be at least chat.history_messages "
                             "(history is drawn from the messages still visible)")


@dataclass(frozen=True)
class HostConsoleConfig:
    """[host_console]: what the host console (server/static/host/) encodes and how often it
    refreshes; served to the page at /host/settings.json."""

    capture_width_px: int = _spec(min=160, max=3840, unit="px")
    capture_height_px: int = _spec(min=120, max=2160, unit="px")
    capture_framerate_fps: float = _spec(min=1.0, max=60.0, unit="fps")
    video_bitrate_bps: int = _spec(min=100_000, max=20_000_000, unit="bit/s")
    audio_bitrate_bps: int = _spec(min=16_000, max=256_000, unit="bit/s")
    keyframe_interval_ms: int = _spec(min=250, max=10_000, unit="ms")
    max_encode_queue_frames: int = _spec(min=1, max=30, unit="frames")
    capture_log_frames: int = _spec(min=100, max=1_000_000, unit="frames")
    poll_interval_ms: int = _spec(min=250, max=60_000, unit="ms")
    chat_shown_messages: int = _spec(min=10, max=10_000, unit="count")
    mute_s: int = _spec(min=1, max=86_400, unit="s")
    chat_rate_window_ms: int = _spec(min=1000, max=3_600_000, unit="ms")
    go_live_lead_ms: int = _spec(min=500, max=60_000, unit="ms")


@dataclass(frozen=True)
class RecordingConfig:
    """[recording]: every live room recorded, its replay, its retention."""

    enabled: bool = _spec()
    directory: str = _spec()
    record_demo: bool = _spec()
    flush_interval_ms: int = _spec(min=10, max=1000, unit="ms")
    fsync_interval_ms: int = _spec(min=10, max=1000, unit="ms")
    max_bytes_per_room: int = _spec(min=1 << 20, max=1 << 42, unit="bytes")
    retention_days: float = _spec(min=0.0, max=36500.0, unit="days")
    retention_check_interval_s: float = _spec(min=1.0, max=604800.0, unit="s")
    replay_read_ahead_ms: int = _spec(min=10, max=60_000, unit="ms")
    max_replays: int = _spec(min=0, max=1_000_000, unit="count")
    max_announced_replays: int = _spec(min=0, max=30_000, unit="count")
    replay_read_threads: int = _spec(min=1, max=256, unit="count")
    max_download_bytes: int = _spec(min=1024, max=1 << 40, unit="bytes")
    max_concurrent_downloads: int = _spec(min=1, max=1024, unit="count")
    replay_index_cache_entries: int = _spec(min=1, max=100_000, unit="count")


@dataclass(frozen=True)
class StatisticsConfig:
    """[statistics]: the report of every live."""

    view_min_s: float = _spec(min=0.0, max=3600.0, unit="s")
    activation_s: float = _spec(min=0.0, max=3600.0, unit="s")
    timeline_bucket_s: int = _spec(min=1, max=3600, unit="s")
    max_timeline_buckets: int = _spec(min=1, max=100_000, unit="count")
    max_field_chars: int = _spec(min=8, max=1024, unit="chars")
    events_per_viewer_per_room_max: int = _spec(min=1, max=1_000_000, unit="count")
    chat_poll_interval_s: float = _spec(min=0.1, max=3600.0, unit="s")


@dataclass(frozen=True)
class Config:
    """The whole configuration; one attribute per TOML section."""

    server: ServerConfig
    log: LogConfig
    tls: TlsConfig
    tokens: TokensConfig
    quic: QuicConfig
    webtransport: WebTransportConfig
    http: HttpConfig
    media: MediaConfig
    relay: RelayConfig
    demo: DemoConfig
    web: WebConfig
    chat: ChatConfig
    datagram: DatagramConfig
    rtmp: RtmpConfig
    storage: StorageConfig
    plugins: PluginsConfig
    accounts: AccountsConfig
    rooms: RoomsConfig
    webhooks: WebhooksConfig
    commerce: CommerceConfig
    payments: PaymentsConfig
    host_console: HostConsoleConfig
    recording: RecordingConfig
    statistics: StatisticsConfig

    @property
    def data_path(self) -> Path:
        """The data directory as an absolute path."""
        return Path(self.server.data_dir).expanduser().resolve()


def default_config_text() -> str:
    """The text of conf/default.toml as shipped with the package."""
    return (resources.files("shopcast.conf") / "default.toml").read_text("utf-8")


def _describe(meta: Mapping[str, Any], kind: str) -> str:
    unit = f" {meta['unit']}" if meta.get("unit") else ""
    if "choices" in meta:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    if "min" in meta and "max" in meta:
        return f"{kind} from {meta['min']} to {meta['max']}{unit}"
    if "min" in meta:
        return f"{kind} of at least {meta['min']}{unit}"
    if "max" in meta:
        return f"{kind} of at most {meta['max']}{unit}"
    return kind


def _check_scalar(value: Any, tp: Any, meta: Mapping[str, Any], key: str, source: str) -> Any:
    """Type-check and range-check one value against its field type."""
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}", source)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected {_describe(meta, 'an integer')}, got {value!r}", source)
        kind = "an integer"
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected {_describe(meta, 'a number')}, got {value!r}", source)
        value = float(value)
        kind = "a number"
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected {_describe(meta, 'a string')}, got {value!r}", source)
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(key, f"expected {_describe(meta, 'a string')}, got {value!r}", source)
        return value
    else:  # pragma: no cover - a programming error in a dataclass, not user input
        raise TypeError(f"unsupported config field type {tp!r} for {key}")
    low, high = meta.get("min"), meta.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(key, f"expected {_describe(meta, kind)}, got {value!r}", source)
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(key, f"expected {_describe(meta, kind)}, got {value!r}", source)
    return value


def _check_value(value: Any, tp: Any, meta: Mapping[str, Any], key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        (item_tp, *_rest) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {value!r}", source)
        item_meta = {k: v for k, v in meta.items() if k != "unit"}
        return tuple(
            _check_scalar(item, item_tp, item_meta, f"{key}[{i}]", source)
            for i, item in enumerate(value)
        )
    return _check_scalar(value, tp, meta, key, source)


def _build_section(cls: type, table: Mapping[str, Any], section: str,
                   sources: Mapping[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in table:
        if name not in fields:
            key = f"{section}.{name}"
            allowed = ", ".join(sorted(fields))
            raise ConfigError(key, f"unknown key; {section} has: {allowed}", sources.get(key, ""))
    values = {}
    for name, f in fields.items():
        key = f"{section}.{name}"
        if name in table:
            values[name] = _check_value(table[name], hints[name], f.metadata, key, sources.get(key, ""))
        elif f.default is not dataclasses.MISSING:
            values[name] = f.default
        else:
            raise ConfigError(key, "missing (conf/default.toml must set every key)")
    try:
        return cls(**values)
    except ValueError as exc:
        # Rules across keys of one section; the message names the key first.
        message = str(exc)
        key = message.split(" ", 1)[0].rstrip(":")
        if key.startswith(f"{section}.") and key[len(section) + 1:] in fields:
            raise ConfigError(key, message, sources.get(key, "")) from None
        raise ConfigError(section, message) from None


def _merge(base: dict[str, Any], override: Mapping[str, Any], source: str,
           sources: dict[str, str]) -> None:
    for section, table in override.items():
        if not isinstance(table, dict):
            raise ConfigError(section, f"expected a [{section}] table, got {table!r}", source)
        for key, value in table.items():
            base.setdefault(section, {})[key] = value
            sources[f"{section}.{key}"] = source


def _parse_env_value(raw: str) -> Any:
    """Environment values are TOML values; a bare word is taken as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    tables: dict[str, dict[str, Any]] = {}
    names: dict[str, str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        tables.setdefault(section, {})[key] = _parse_env_value(raw)
        names[f"{section}.{key}"] = f"environment variable {name}"
    return tables, names


def load_config(path: str | os.PathLike[str] | None = None, *,
                environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    """Build the effective configuration.

    Layers, each overriding the one before: conf/default.toml, the file at
    ``path``, ``SHOPCAST_<SECTION>__<KEY>`` variables in ``environ`` (the
    process environment when None), then ``overrides`` (command-line flags,
    as ``{"server": {"port": 9000}}``).

    Raises ConfigError naming the key for any unknown key, wrong type or
    value out of range, and for a file that cannot be read or parsed.
    """
    sources: dict[str, str] = {}
    merged: dict[str, Any] = {}
    _merge(merged, tomllib.loads(default_config_text()), "conf/default.toml", sources)
    if path is not None:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError("--config", f"{path} is not UTF-8 text") from None
        try:
            user = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
        _merge(merged, user, str(path), sources)
    env_tables, env_sources = _env_overrides(os.environ if environ is None else environ)
    for section, table in env_tables.items():
        for key, value in table.items():
            merged.setdefault(section, {})[key] = value
    sources.update(env_sources)
    for section, table in (overrides or {}).items():
        for key, value in table.items():
            merged.setdefault(section, {})[key] = value
            sources[f"{section}.{key}"] = f"command-line flag for {section}.{key}"

    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    for section in merged:
        if section not in sections:
            first_key = next(iter(merged[section]), "")
            where = sources.get(f"{section}.{first_key}", "")
            raise ConfigError(section, "unknown section; known: " + ", ".join(sections), where)
    built = {
        name: _build_section(hints[name], merged.get(name, {}), name, sources)
        for name in sections
    }
    config = Config(**built)
    if config.tokens.default_ttl_s > config.tokens.max_ttl_s:
        raise ConfigError("tokens.default_ttl_s", "must not exceed tokens.max_ttl_s",
                          sources.get("tokens.default_ttl_s", ""))
    if not config.relay.path.startswith("/"):
        raise ConfigError("relay.path", f"must start with '/', got {config.relay.path!r}",
                          sources.get("relay.path", ""))
    if not config.datagram.path.startswith("/") or config.datagram.path == config.relay.path:
        raise ConfigError("datagram.path", f"must start with '/' and differ from relay.path, got "
                          f"{config.datagram.path!r}", sources.get("datagram.path", ""))
    if bool(config.tokens.api_key) != bool(config.tokens.api_secret):
        raise ConfigError("tokens.api_key", "tokens.api_key and tokens.api_secret are set together "
                          "or not at all", sources.get("tokens.api_key", "")
                          or sources.get("tokens.api_secret", ""))
    if bool(config.tls.cert_file) != bool(config.tls.key_file):
        raise ConfigError("tls.cert_file", "tls.cert_file and tls.key_file are set together or not at all",
                          sources.get("tls.cert_file", "") or sources.get("tls.key_file", ""))
    return config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")


def render_config(config: Config) -> str:
    """The effective configuration as TOML, for `shopcast config`."""
    lines: list[str] = []
    for section in dataclasses.fields(config):
        lines.append(f"[{section.name}]")
        for f in dataclasses.fields(getattr(config, section.name)):
            value = getattr(getattr(config, section.name), f.name)
            unit = f.metadata.get("unit", "")
            comment = f"  # {unit}" if unit and unit != "count" else ""
            lines.append(f"{f.name} = {_toml_value(value)}{comment}")
        lines.append("")
    return "\n".join(lines)

