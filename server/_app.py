"""The server process: config in, listeners up, routes registered, and a
graceful shutdown on request.

``run_server`` is what ``shopcast serve`` runs; tests start it in a nursery
with ``await nursery.start(run_server, config)`` and get the bound ports.
"""

from __future__ import annotations

import csv
import functools
import datetime as dt
import io
import socket
from dataclasses import dataclass
from pathlib import Path

import trio

import shopcast
from shopcast.server._auth import bearer_claims_untrusted
from shopcast.server._certs import Certificate, CertificateStore
from shopcast.server._config import Config
from shopcast.server._datagram import DatagramServer
from shopcast.server._http import serve_https
from shopcast.server._log import get_logger
from shopcast.server._metrics import CONTENT_TYPE, Registry
from shopcast.server._pages_host import register_host_pages
from shopcast.plugins._chat_engine import Author as ChatAuthor
from shopcast.plugins._chat_engine import ChatLimits, message_record
from shopcast.plugins._chat_engine import Role as ChatRole
from shopcast.server._hang_mux import HangMuxer, load_flv_clip, play_clip
from shopcast.server._chat_store import MIGRATIONS as CHAT_MIGRATIONS
from shopcast.server._interaction import (
    InteractionService,
    InteractionSettings,
    audit_record,
    author_from_claims,
)
from shopcast.server._moq_server import MoqServer, MoqSettings
from shopcast.server._recording import Recorder, RecordingSettings, ReplayService
from shopcast.server._quic import (
    H3Request,
    H3Response,
    QuicEndpoint,
    bind_udp_sockets,
    tcp_port_is_free,
)
from shopcast.server._relay import Relay, RelayLimits
from shopcast.server._rtmp import RtmpServer
from shopcast.server._stream_keys import StreamKeyStore
from shopcast.server._routing import (
    HTTPError,
    Request,
    Response,
    Router,
    request_from_pseudo_headers_untrusted,
)
from shopcast.server._tokens import ApiKey, Claims, TokenAuthority, load_or_create_api_key
from shopcast.server.moq import Limits as MoqLimits

__all__ = ["ServerApp", "Started", "resolve_addresses", "run_server"]

log = get_logger("server")
# Ephemeral ports tried before giving up on one free for both UDP and TCP.
EPHEMERAL_PORT_TRIES = 20


@dataclass(frozen=True)
class Started:
    """What ``run_server`` reports once it is really listening."""

    app: "ServerApp"
    port: int
    """The TCP and UDP port (the same number for both)."""


def resolve_addresses(host: str) -> list[str]:
    """The addresses to bind for ``[server] host``.

    "::" is one dual-stack socket; "localhost" is 127.0.0.1 and ::1; anything
    else is what it resolves to (one address per family at most).
    """
    if host in ("::", "0.0.0.0"):
        return [host]
    if host == "localhost":
        return ["127.0.0.1", "::1"]
    seen: dict[int, str] = {}
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM):
        seen.setdefault(family, sockaddr[0])
    return list(seen.values())


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ServerApp:
    """Everything one server process holds: config, certificate, tokens,
    metrics, the router and the QUIC endpoint."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir: Path = config.data_path
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tls = config.tls
        self.cert_store = CertificateStore(
            self.data_dir, cert_file=tls.cert_file, key_file=tls.key_file,
            names=config.server.public_names, validity_days=tls.self_signed_validity_days,
            renew_before=dt.timedelta(hours=tls.renew_before_h))
        self.certificate: Certificate = self.cert_store.load(_utcnow())
        self.ssl_context = self.certificate.ssl_context()
        api_key, self.api_key_created = load_or_create_api_key(
            self.data_dir, config.tokens.api_key, config.tokens.api_secret)
        self.api_key: ApiKey = api_key
        self.tokens = TokenAuthority([api_key], leeway_s=config.tokens.leeway_s,
                                     max_ttl_s=config.tokens.max_ttl_s,
                                     max_token_bytes=config.tokens.max_token_bytes)
        self.metrics = Registry()
        self.router = Router(metrics=self.metrics, cors_origins=config.http.cors_origins,
                             cors_max_age_s=config.http.cors_max_age_s,
                             latency_buckets_s=config.http.latency_buckets_s)
        self.quic = QuicEndpoint(
            quic_config=config.quic, webtransport_config=config.webtransport,
            certificate=lambda: self.certificate, tokens=self.tokens,
            http_handler=self._handle_h3, max_body_bytes=config.http.max_body_bytes)
        relay = config.relay
        self.relay = Relay(RelayLimits(
            max_broadcasts=relay.max_broadcasts,
            max_tracks_per_broadcast=relay.max_tracks_per_broadcast,
            max_subscribers_per_track=relay.max_subscribers_per_track,
            max_frame_bytes=relay.max_frame_bytes,
            max_group_bytes=relay.max_group_bytes,
            keyframe_request_interval_s=relay.keyframe_request_interval_ms / 1000,
            max_open_groups_per_track=relay.max_open_groups_per_track,
            publisher_takeover=relay.publisher_takeover))
        self.moq = MoqServer(self.relay, MoqSettings(
            latency_budget_s=relay.latency_budget_ms / 1000,
            max_subscriber_backlog_bytes=relay.max_subscriber_backlog_bytes,
            limits=MoqLimits(
                max_message_size_bytes=relay.max_message_bytes,
                max_frame_size_bytes=relay.max_frame_bytes,
                max_peer_subscriptions=relay.max_subscriptions_per_session,
                max_peer_announce_interests=relay.max_announce_interests_per_session,
                max_name_size_bytes=relay.max_name_bytes,
                max_announce_paths=relay.max_announce_paths,
                max_early_bytes=relay.max_early_bytes,
                max_setup_versions=relay.max_setup_versions,
                max_setup_parameters=relay.max_setup_parameters)))
        self.quic.session_handlers[relay.path] = self.moq.handle_session
        chat = config.chat
        self.interaction = InteractionService(self.relay, InteractionSettings(
            limits=ChatLimits(
                max_message_bytes=chat.max_message_bytes, max_request_bytes=chat.max_request_bytes,
                history_messages=chat.history_messages, transcript_messages=chat.transcript_messages,
                bucket_capacity=chat.bucket_capacity, bucket_refill_per_s=chat.bucket_refill_per_s,
                flood_strikes=chat.flood_strikes, flood_mute_s=chat.flood_mute_s,
                tick_s=chat.tick_ms / 1000, reaction_interval_s=chat.reaction_interval_ms / 1000,
                reactions=chat.reactions, max_blocklist_terms=chat.max_blocklist_terms,
                reaction_bucket_capacity=chat.reaction_bucket_capacity,
                reaction_refill_per_s=chat.reaction_refill_per_s, min_mute_s=chat.min_mute_s,
                max_mute_s=chat.max_mute_s, max_request_fields=chat.max_request_fields,
                reply_window_messages=chat.reply_window_messages, audit_entries=chat.audit_entries),
            viewers_interval_s=chat.viewers_interval_ms / 1000,
            chat_group_s=chat.group_ms / 1000, global_blocklist=chat.global_blocklist,
            subscriber_backlog_bytes=chat.subscriber_backlog_bytes,
            save_interval_s=chat.save_interval_ms / 1000, ended_room_keep_s=chat.ended_room_keep_s))
        self.quic.session_handlers[chat.path] = self.interaction.handle_session
        # Datagram mode (server/_datagram.py): its own path, beside moq-lite.
        self.datagram = DatagramServer(self.relay, config.datagram, config.media)
        self.quic.session_handlers[config.datagram.path] = self.datagram.handle_session
        self._init_recording()
        self.port = config.server.port
        self.public_host = (config.server.public_names or ("localhost",))[0]
        self.stop_accepting = trio.Event()
        self.stream_keys = StreamKeyStore(self.data_dir, secret_file=config.rtmp.stream_key_secret_file)
        self.rtmp = RtmpServer(config.rtmp, relay=self.relay, stream_keys=self.stream_keys,
                               metrics=self.metrics, public_host=self.public_host)
        self._register_metrics()
        self._register_routes()
        # The viewer pages and /static/ (server/_pages.py).
        from shopcast.server._pages import register_pages
        register_pages(self)
        self.rtmp.register_routes(self.router, self.authorize)
        # Plugins (plugins/): found and checked here, so a bad plugin stops
        # start-up at once; their tables, routes and tasks come in start_plugins.
        # Imported here: shopcast.plugins imports shopcast.server's routing.
        from shopcast.plugins import Api, Database, PluginManager

        self.plugins = PluginManager(enabled=config.plugins.enabled,
                                     disabled=config.plugins.disabled)
        self.plugins.load_entry_points()
        self.plugins.check()
        self.db = Database.in_data_dir(self.data_dir, busy_timeout_s=config.storage.busy_timeout_s,
                                       synchronous=config.storage.synchronous)
        self.api = Api(self.router, self.tokens)

    def _init_recording(self) -> None:
        """The recorder of every live room and the replay of ended ones
        (server/_recording.py); started after the plugins in run_server."""
        rec = self.config.recording
        settings = RecordingSettings.from_config(rec)
        self.recorder = Recorder(self.relay, self.data_dir, settings, skip=self._skip_recording)
        # A room is replayed once it is over: no live broadcast of its name,
        # and the rooms plugin (when loaded) does not hold it as scheduled or live.
        self.replays = ReplayService(self.recorder, self.relay.limits, settings,
                                     may_replay=self._may_replay)
        if rec.enabled:
            self.moq.replays = self.replays
        recorder, replays = self.recorder, self.replays
        self.metrics.gauge("shopcast_recordings_open", "Broadcasts being recorded.",
                           callback=lambda: len(recorder.recordings))
        self.metrics.counter_callback("shopcast_recording_bytes_total", "Bytes appended to recordings.",
                                      callback=lambda: recorder.bytes_written)
        self.metrics.counter_callback("shopcast_recordings_stopped_total",
                                      "Recordings stopped by a full disk or recording.max_bytes_per_room.",
                                      callback=lambda: recorder.rooms_stopped)
        self.metrics.counter_callback("shopcast_replays_total", "Replay playbacks started.",
                                      callback=lambda: replays.replays_started)

    def _skip_recording(self, name: str) -> bool:
        if name == self.config.demo.room and not self.config.recording.record_demo:
            return True
        reason = self.plugins.veto("shopcast_room_may_record", room_id=name)
        if reason is not None:
            log.info("recording_refused", room=name, reason=reason)
        return reason is not None

    def _may_replay(self, room_id: str) -> bool:
        if room_id in self.relay.broadcasts:
            return False
        rooms = self.plugins.get("rooms") if hasattr(self, "plugins") else None
        if rooms is not None and hasattr(rooms, "is_over"):
            return rooms.is_over(room_id)
        return True

    @property
    def rtmp_port(self) -> int:
        """The RTMP port (the bound one once listening)."""
        return self.rtmp.port

    # --- identity -------------------------------------------------------------

    @property
    def webtransport_base_url(self) -> str:
        return f"https://{self.public_host}:{self.port}"

    def authorize(self, request: Request, *, roles: tuple[str, ...], room: str | None = None) -> Claims:
        """The verified bearer token of ``request``, or HTTPError 401/403."""
        claims = bearer_claims_untrusted(request, self.tokens, roles=roles, room=room)
        assert claims is not None  # anonymous requests are refused above
        return claims

    # --- routes -----------------------------------------------------------------

    def _register_routes(self) -> None:
        add = self.router.add
        add("GET", "/healthz", self._healthz, "healthz")
        add("GET", "/metrics", self._metrics_route, "metrics")
        add("GET", "/api/v1/server", self._server_info, "server_info")
        add("GET", "/api/v1/rooms/{room_id}/viewers", self._viewers, "room_viewers")
        add("GET", "/api/v1/rooms/{room_id}/chat", self._chat_download, "room_chat_download")
        add("GET", "/api/v1/rooms/{room_id}/chat/audit", self._chat_audit, "room_chat_audit")
        register_host_pages(self.router, max_age_s=self.config.http.static_max_age_s,
                            settings=self.config.host_console, config=self.config)

    async def _viewers(self, request: Request, room_id: str) -> Response:
        broadcast = self.relay.broadcasts.get(room_id)
        if broadcast is None:
            raise HTTPError(404, "not_found", f"room {room_id} is not live", "room_id")
        return Response.json({"room_id": room_id, **broadcast.viewers.snapshot()})

    async def _chat_download(self, request: Request, room_id: str) -> Response:
        """The room's whole chat (from the database, so also after a restart), for its
        owner or operators: JSON, or CSV with ?format=csv. Times are Unix seconds."""
        from shopcast.plugins._recordings import may_manage_room

        claims = self.authorize(request, roles=("host", "operator", "service"), room=room_id)
        fmt = request.query.get("format", "json")
        if fmt not in ("json", "csv"):
            raise HTTPError(400, "bad_format", "format must be json or csv", "format")
        await may_manage_room(self.plugins, claims, room_id)
        records = [{**message_record(m), "status": status}
                   for m, status in await self.interaction.transcript(room_id)]
        if fmt == "json":
            room = self.interaction.rooms.get(room_id)
            stats = {"subscribers_dropped": room.subscribers_dropped if room is not None else 0}
            return Response.json({"room_id": room_id, "messages": records, "stats": stats})
        out = io.StringIO()
        writer = csv.writer(out)
        columns = ["id", "t", "media_us", "author", "name", "role", "host", "reply_to", "status", "text"]
        writer.writerow(columns)
        for record in records:
            writer.writerow([record[c] if record[c] is not None else "" for c in columns])
        return Response(200, [("content-type", "text/csv; charset=utf-8"),
                              ("content-disposition", f'attachment; filename="chat-{room_id}.csv"')],
                        out.getvalue().encode("utf-8"))

    async def _chat_audit(self, request: Request, room_id: str) -> Response:
        """The room's chat moderation actions, for those who may moderate it: its owner,
        its team's moderators (as the accounts plugins say) and operators."""
        claims = self.authorize(request, roles=("host", "operator", "service"), room=room_id)
        author = await self.interaction.author_lookup(room_id, claims) or author_from_claims(claims, room_id)
        if author.role is ChatRole.VIEWER:
            raise HTTPError(403, "not_moderator", "only the room's owner, its moderators and operators "
                            "may read its chat audit log", "authorization")
        entries = await self.interaction.audit(room_id)
        return Response.json({"room_id": room_id, "entries": [audit_record(e) for e in entries]})

    async def _healthz(self, request: Request) -> Response:
        return Response.json({"status": "ok"})

    async def _metrics_route(self, request: Request) -> Response:
        return Response(200, [("content-type", CONTENT_TYPE)], self.metrics.render().encode())

    async def _server_info(self, request: Request) -> Response:
        cert = self.certificate
        return Response.json({
            "name": "shopcast",
            "version": shopcast.__version__,
            "webtransport_url": self.webtransport_base_url,
            "certificate": {
                "sha256": cert.sha256_hex,
                "not_after": cert.not_after.isoformat(),
                "self_signed": cert.self_signed,
            },
        })

    async def _handle_h3(self, h3: H3Request) -> H3Response:
        """HTTP/3 requests go through the same router as HTTP/1.1 and HTTP/2."""
        try:
            request = request_from_pseudo_headers_untrusted(
                h3.headers, body=h3.body, client=h3.remote_address[:2], http_version="3",
                max_query_fields=self.config.http.max_query_fields)
        except HTTPError as exc:
            response = exc.to_response()
        else:
            response = await self.router.handle(request)
        return H3Response(response.status, tuple(response.headers), response.body)

    # --- metrics ------------------------------------------------------------------

    def _register_metrics(self) -> None:
        stats = self.quic.stats
        for name, attr, help_text in (
            ("shopcast_quic_connections", "connections_open", "Open QUIC connections."),
            ("shopcast_webtransport_sessions", "sessions_open", "Open WebTransport sessions."),
        ):
            self.metrics.gauge(name, help_text, callback=lambda a=attr: getattr(stats, a))
        for name, attr, help_text in (
            ("shopcast_quic_connections_total", "connections_total", "QUIC connections accepted."),
            ("shopcast_quic_connections_refused_total", "connections_refused",
             "New QUIC connections refused (limit reached or shutting down)."),
            ("shopcast_webtransport_sessions_total", "sessions_total", "WebTransport sessions accepted."),
            ("shopcast_webtransport_sessions_refused_total", "sessions_refused",
             "WebTransport CONNECTs refused (unknown path, bad token, limits)."),
            ("shopcast_quic_packets_in_total", "datagrams_in", "UDP datagrams received."),
            ("shopcast_quic_packets_out_total", "datagrams_out", "UDP datagrams sent."),
            ("shopcast_quic_bytes_in_total", "bytes_in", "UDP payload bytes received."),
            ("shopcast_quic_bytes_out_total", "bytes_out", "UDP payload bytes sent."),
            ("shopcast_quic_inbound_dropped_total", "inbound_dropped",
             "Datagrams dropped because a connection's inbound queue was full."),
            ("shopcast_quic_undecodable_dropped_total", "undecodable_dropped",
             "Datagrams dropped as undecodable or unroutable."),
        ):
            self.metrics.counter_callback(name, help_text, callback=lambda a=attr: getattr(stats, a))
        self._register_relay_metrics()
        self.metrics.counter_callback(
            "shopcast_chat_subscribers_dropped_total",
            "Chat track subscribers dropped for falling more than chat.subscriber_backlog_bytes behind.",
            callback=lambda: self.interaction.subscribers_dropped)
        self.datagram.register_metrics(self.metrics)

    def _register_relay_metrics(self) -> None:
        labels = ("broadcast", "track")

        def per_track(attr: str):
            return lambda: {(b.name, t.name): getattr(t.stats, attr)
                            for b in self.relay.broadcasts.values() for t in b.tracks.values()}

        self.metrics.gauge("shopcast_relay_broadcasts", "Live broadcasts.",
                           callback=lambda: len(self.relay.broadcasts))
        self.metrics.gauge("shopcast_relay_subscribers", "Subscribers per track.", labels,
                           callback=lambda: {(b.name, t.name): t.subscriber_count
                                             for b in self.relay.broadcasts.values()
                                             for t in b.tracks.values()})
        self.metrics.gauge("shopcast_relay_queued_bytes",
                           "Bytes sent to a track's subscribers and not yet acknowledged.", labels,
                           callback=lambda: {(b.name, t.name): t.queued_bytes()
                                             for b in self.relay.broadcasts.values()
                                             for t in b.tracks.values()})
        for name, attr, help_text in (
            ("shopcast_relay_frames_in_total", "frames_in", "Frames received from the publisher."),
            ("shopcast_relay_bytes_in_total", "bytes_in", "Frame bytes received from the publisher."),
            ("shopcast_relay_frames_out_total", "frames_out", "Frames sent to subscribers (all of them)."),
            ("shopcast_relay_bytes_out_total", "bytes_out", "Frame bytes sent to subscribers."),
            ("shopcast_relay_groups_dropped_total", "groups_dropped",
             "Groups reset for subscribers past their latency budget or backlog limit."),
            ("shopcast_relay_keyframe_requests_total", "keyframe_requests",
             "Keyframe requests sent to publishers."),
        ):
            self.metrics.counter_callback(name, help_text, labels, callback=per_track(attr))
        moq = self.moq.stats
        for name, attr, help_text in (
            ("shopcast_moq_sessions_total", "sessions", "moq-lite sessions started."),
            ("shopcast_moq_groups_dropped_total", "groups_dropped", "Groups dropped, all tracks."),
            ("shopcast_moq_unauthorized_total", "refused_unauthorized",
             "Subscribes and publishes refused for want of a token."),
            ("shopcast_moq_protocol_errors_total", "protocol_errors",
             "Sessions closed for malformed moq-lite messages."),
        ):
            self.metrics.counter_callback(name, help_text, callback=lambda a=attr: getattr(moq, a))

    # --- lifecycle -------------------------------------------------------------------

    async def start_plugins(self, nursery: trio.Nursery) -> None:
        """Configure the plugins, open and migrate the database, register
        their routes and start their background tasks in ``nursery``; before
        the server listens."""
        plugins = self.plugins
        await plugins.collect("shopcast_configure", app=self, plugins=plugins)
        for permissions in await plugins.collect("shopcast_register_permissions"):
            plugins.permissions.update(permissions)
        migrations = [m for ms in await plugins.collect("shopcast_register_tables") for m in ms]
        await self.db.open(migrations + CHAT_MIGRATIONS)
        self.interaction.attach(self.db)
        await plugins.collect("shopcast_register_routes", api=self.api)
        await plugins.collect("shopcast_startup", app=self, nursery=nursery)

        def viewer_changed(broadcast, joined: bool, identity: str) -> None:
            # Once per viewer session and room, never per packet. A replay's
            # viewers are the room's, flagged as replay.
            hook = "shopcast_viewer_joined" if joined else "shopcast_viewer_left"
            replay_of = getattr(broadcast, "replay_of", None)
            nursery.start_soon(functools.partial(plugins.notify, hook, room_id=replay_of or broadcast.name,
                                                 subject=identity, replay=replay_of is not None))

        self.moq.viewer_listeners.append(viewer_changed)

        async def chat_author(room_id: str, claims: Claims) -> ChatAuthor | None:
            for answer in await plugins.collect("shopcast_chat_author", room_id=room_id,
                                                subject=claims.subject, role=claims.role):
                return ChatAuthor(claims.subject, answer["display_name"], ChatRole(answer["role"]),
                                  registered=answer["registered"], follows_host=answer["follows_host"])
            return None

        self.interaction.author_lookup = chat_author

    async def run_demo_room(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Loop the demo clip as the demo room's live broadcast; never returns.
        Started (``task_status``) once its shop is ready and its broadcast published."""
        demo = self.config.demo
        path = Path(demo.clip) if demo.clip else Path(__file__).parent / "media" / "demo.flv"
        clip = load_flv_clip(path.read_bytes())
        # Its shop and show of cards (plugins/_demo_shop.py), when commerce is loaded.
        commerce = self.plugins.get("commerce")
        if commerce is not None:
            from shopcast.plugins import _demo_shop

            await _demo_shop.prepare(commerce)
        broadcast = self.relay.publish(demo.room, owner="operator")
        log.info("demo_room_live", room=demo.room, clip=str(path), seconds=clip.duration_ms / 1000)
        try:
            async with trio.open_nursery() as nursery:
                if commerce is not None:
                    broadcast.track("commerce")  # exists from the start, as a live room's does
                    nursery.start_soon(_demo_shop.run_show, commerce, broadcast)
                task_status.started()
                await play_clip(HangMuxer(broadcast), clip)
        finally:
            broadcast.end()

    async def renew_certificate_forever(self) -> None:
        """Replace a self-signed certificate before it expires; never returns."""
        while True:
            await trio.sleep(self.config.tls.renew_check_interval_s)
            if self.cert_store.needs_renewal(self.certificate, _utcnow()):
                self.certificate = self.cert_store.load(_utcnow())
                self.ssl_context.load_cert_chain(self.certificate.cert_path, self.certificate.key_path)
                log.info("certificate_renewed", sha256=self.certificate.sha256_hex,
                         not_after=self.certificate.not_after.isoformat())


async def run_server(config: Config, *, shutdown: trio.Event | None = None,
                     task_status: trio.TaskStatus[Started] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the server until ``shutdown`` is set, then shut down gracefully.

    Never returns unless ``shutdown`` is set or it is cancelled.

    Resource handling: listening sockets, connections and sessions live in
    this function's nursery. On shutdown it stops accepting, closes WebTransport
    sessions and QUIC connections with a reason, lets HTTP requests in flight
    finish, and cancels whatever remains after ``server.drain_timeout_s``.

    Error handling: a port that cannot be bound raises OSError before
    ``task_status.started``; errors of one connection never reach here.
    """
    from shopcast.codecs import warmup

    app = ServerApp(config)
    warmup_s = await trio.to_thread.run_sync(warmup)
    log.info("kernels_ready", seconds=round(warmup_s, 3))
    addresses = resolve_addresses(config.server.host)
    # UDP first: with port 0 it picks the number, and TCP then takes the same
    # one, so Alt-Svc can name it. A number already taken for TCP is given
    # back and another is picked.
    for _ in range(EPHEMERAL_PORT_TRIES):
        sockets = bind_udp_sockets(addresses, config.server.port, config.quic.socket_buffer_bytes)
        port = sockets[0].getsockname()[1]
        if config.server.port != 0 or tcp_port_is_free(addresses, port):
            break
        for sock in sockets:
            sock.close()
    app.port = port
    shutdown = shutdown if shutdown is not None else trio.Event()
    async with trio.open_nursery() as nursery:
        await app.start_plugins(nursery)
        if config.recording.enabled:
            await nursery.start(app.recorder.run)
            await nursery.start(app.replays.run)
        await nursery.start(app.quic.serve, sockets)
        https_done = trio.Event()

        async def https(task_status: trio.TaskStatus[object]) -> None:
            try:
                await serve_https(
                    config=config.http, addresses=addresses, port=port,
                    ssl_context=app.ssl_context, router=app.router, metrics=app.metrics,
                    alt_svc=f'h3=":{port}"; ma=86400',
                    certificate_sha256=((lambda: app.certificate.sha256_hex)
                                        if config.webtransport.serve_certificate_hash_over_http
                                        else None),
                    stop_accepting=app.stop_accepting,
                    drain_timeout_s=config.server.drain_timeout_s, task_status=task_status)
            finally:
                https_done.set()

        await nursery.start(https)
        await trio.to_thread.run_sync(app.stream_keys.initialize)
        rtmp_done = trio.Event()
        if config.rtmp.enabled:
            async def rtmp(task_status: trio.TaskStatus[int]) -> None:
                try:
                    await app.rtmp.serve(
                        resolve_addresses(config.rtmp.host or config.server.host), config.rtmp.port,
                        stop_accepting=app.stop_accepting, task_status=task_status)
                finally:
                    rtmp_done.set()

            await nursery.start(rtmp)
        else:
            rtmp_done.set()
        nursery.start_soon(app.renew_certificate_forever)
        if config.demo.enabled:
            await nursery.start(app.run_demo_room)
        await nursery.start(app.interaction.run)
        log.info("listening", addresses=",".join(addresses), port=port,
                 url=f"https://localhost:{port}/", certificate_sha256=app.certificate.sha256_hex)
        task_status.started(Started(app, port))
        await shutdown.wait()
        log.info("shutting_down", drain_timeout_s=config.server.drain_timeout_s)
        app.stop_accepting.set()
        app.quic.close_all("server shutting down")
        # serve_https returns once its requests in flight have finished or
        # the same deadline has passed.
        with trio.move_on_after(config.server.drain_timeout_s):
            await app.quic.wait_all_closed()
            await https_done.wait()
            await rtmp_done.wait()
        await app.plugins.notify("shopcast_shutdown", app=app)
        await app.interaction.save()  # the chat's last changes, before the database closes
        nursery.cancel_scope.cancel()
    await app.db.close()
    log.info("stopped")
