"""RTMP ingest: OBS and ffmpeg publish to ``rtmp://HOST:1935/live/STREAM_KEY``
and the room owning the key goes live as a hang broadcast named by its id.

The protocol is in `shopcast.server._rtmp_protocol` (sans-IO); this module
runs it on trio TCP connections, checks stream keys, and feeds audio and
video messages (FLV tag bodies) through `HangMuxer` into the relay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import trio

from shopcast.codecs import FlvTag, MalformedMedia, TagType, UnsupportedMedia
from shopcast.server._amf0 import UNDEFINED, Amf0Limits
from shopcast.server._config import RtmpConfig
from shopcast.server._hang_mux import HangMuxer
from shopcast.server._http import _bind
from shopcast.server._log import get_logger
from shopcast.server._metrics import Registry
from shopcast.server._relay import Broadcast, Relay, RelayError, Track
from shopcast.server._rtmp_protocol import (
    CommandReceived,
    DataReceived,
    Event,
    MediaReceived,
    Role,
    RtmpConnection,
    RtmpLimits,
    RtmpProtocolError,
)
from shopcast.server._routing import HTTPError, Request, Response, Router
from shopcast.server._stream_keys import KeyOwner, StreamKey, StreamKeyStore, valid_room_id

__all__ = ["MediaObserver", "RtmpServer", "push_url"]

log = get_logger("rtmp")

PUBLISH_STREAM_ID = 1
"""The message stream id createStream hands out (a publisher needs one)."""

MediaObserver = Callable[[str, FlvTag, float], None]
"""``observer(room, tag, arrival_s)`` for each audio/video message pushed into a
room, ``arrival_s`` being trio.current_time() when the bytes that completed it
were read. For measurements; it runs inline, so it must be cheap."""


class _Close(Exception):
    """End this connection; ``reason`` labels the metric, ``status`` (an
    onStatus code) and ``description`` are sent to the publisher first."""

    def __init__(self, reason: str, description: str, *, status: str | None = None,
                 command: str = "onStatus", transaction_id: float = 0.0) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description
        self.status = status
        self.command = command
        self.transaction_id = transaction_id


@dataclass
class RtmpStats:
    """Counters of the RTMP server, read by /metrics."""

    connections_open: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    publishes_total: int = 0
    messages_in: int = 0
    media_bytes_in: int = 0


class RtmpServer:
    """Accepts RTMP publishers and turns their streams into broadcasts.

    Stream keys are looked up in ``stream_keys`` at each publish (never
    cached, so a rotated key stops working at once). A room has one
    publisher: a second one is refused, or takes over, by
    ``relay.publisher_takeover`` (the relay enforces it for every ingest).
    """

    def __init__(self, config: RtmpConfig, *, relay: Relay, stream_keys: StreamKeyStore,
                 metrics: Registry, public_host: str = "localhost") -> None:
        self.config = config
        self.public_host = config.public_host or public_host
        """Host name in the push URLs the API prints."""
        self.port: int = config.port
        """The bound port once serving (config.rtmp.port before)."""
        self.relay = relay
        self.stream_keys = stream_keys
        self.limits = RtmpLimits(
            min_chunk_size=config.min_chunk_size, max_chunk_size=config.max_chunk_size,
            max_message_bytes=config.max_message_bytes, max_chunk_streams=config.max_chunk_streams,
            max_buffered_bytes=config.max_buffered_bytes,
            amf0=Amf0Limits(max_depth=config.amf0_max_depth, max_items=config.amf0_max_items))
        self.stats = RtmpStats()
        self.media_observer: MediaObserver | None = None
        self.publishers: dict[str, "_RtmpSession"] = {}
        """Room id -> its RTMP session, while publishing."""
        stats = self.stats
        metrics.gauge("shopcast_rtmp_connections", "Open RTMP connections.",
                      callback=lambda: stats.connections_open)
        for name, attr, help_text in (
            ("shopcast_rtmp_connections_total", "connections_total", "RTMP connections accepted."),
            ("shopcast_rtmp_connections_refused_total", "connections_refused",
             "RTMP connections closed at once (rtmp.max_connections reached or shutting down)."),
            ("shopcast_rtmp_publishes_total", "publishes_total", "RTMP publishes started."),
            ("shopcast_rtmp_messages_in_total", "messages_in", "RTMP audio and video messages received."),
            ("shopcast_rtmp_media_bytes_in_total", "media_bytes_in", "Bytes of RTMP audio and video."),
        ):
            metrics.counter_callback(name, help_text, callback=lambda a=attr: getattr(stats, a))
        self._closed = metrics.counter(
            "shopcast_rtmp_errors_total",
            "RTMP connections closed for a fault, by reason (wrong_key, handshake_timeout, "
            "idle_timeout, chunk_size, message_too_large, amf0, malformed, unsupported_media, "
            "duplicate_publisher, bad_app, ...).", ("reason",))

    # --- serving -----------------------------------------------------------------------------

    async def serve(self, addresses: Sequence[str], port: int, *, stop_accepting: trio.Event,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``port`` (0: any free one) of every address in
        ``addresses`` and serve RTMP publishers; never returns unless
        cancelled or ``stop_accepting`` is set. ``task_status.started`` gets
        the bound port once every socket listens.

        Resource handling: one task per connection, at most
        ``rtmp.max_connections`` (more are closed at once and counted). Each
        connection holds at most ``rtmp.max_buffered_bytes`` of unfinished
        messages and one read of ``rtmp.receive_bytes``. When
        ``stop_accepting`` is set the sockets close, the publishers'
        broadcasts end and every connection is closed at once: an encoder
        never finishes by itself, so there is nothing to drain.

        Error handling: a peer's protocol error, a limit, a timeout, a wrong
        stream key or refused media closes that connection only (with an
        onStatus error where the publisher can read one), logged and counted
        in ``shopcast_rtmp_errors_total``. Only errors binding the sockets
        propagate.
        """
        sockets = await _bind(addresses, port, self.config.listen_backlog)
        try:
            listeners = [trio.SocketListener(sock) for sock in sockets]
            bound_port = sockets[0].getsockname()[1]
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept_loop, listener, connections)
                    self.port = bound_port
                    log.info("listening", addresses=",".join(addresses), port=bound_port,
                             app=self.config.app)
                    task_status.started(bound_port)
                    await stop_accepting.wait()
                    accepting.cancel_scope.cancel()
                for sock in sockets:
                    sock.close()
                # An encoder never finishes by itself: end the broadcasts (viewers
                # are told) and close the connections; it reconnects elsewhere.
                for session in list(self.publishers.values()):
                    session.end_broadcast("server shutting down")
                connections.cancel_scope.cancel()
        finally:
            for sock in sockets:
                sock.close()

    async def _accept_loop(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # Out of descriptors: what is open still works; wait for some to close.
                log.warning("accept_failed", error=str(exc))
                await trio.sleep(self.config.handshake_timeout_s / 10)
                continue
            if self.stats.connections_open >= self.config.max_connections:
                self.stats.connections_refused += 1
                await trio.aclose_forcefully(stream)
                continue
            # Counted here, not in the task, so a burst of accepts cannot overshoot.
            self.stats.connections_open += 1
            self.stats.connections_total += 1
            connections.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        session = _RtmpSession(self, stream)
        try:
            await session.run()
        finally:
            self.stats.connections_open -= 1
            session.end_broadcast("connection closed")
            await trio.aclose_forcefully(stream)

    def count_error(self, reason: str) -> None:
        self._closed.labels(reason).inc()

    # --- the push URL API ------------------------------------------------------------------

    def register_routes(self, router: Router,
                        authorize: Callable[..., Any]) -> None:
        """``GET /api/v1/rooms/{room_id}/push``: the room's push URL and key
        (made when the room has none); ``POST .../push/rotate``: a new key,
        the old one refused from then on. For hosts of the room, operators
        and services."""

        async def push(request: Request, room_id: str) -> Response:
            _check_room_id(room_id)
            authorize(request, roles=("host", "operator", "service"), room=room_id)
            key = await trio.to_thread.run_sync(self.stream_keys.get_or_create, room_id)
            return Response.json(self._push_info(key), 201 if key.created else 200)

        async def rotate(request: Request, room_id: str) -> Response:
            _check_room_id(room_id)
            claims = authorize(request, roles=("host", "operator", "service"), room=room_id)
            key = await trio.to_thread.run_sync(self.stream_keys.rotate, room_id)
            log.info("stream_key_rotated", room=room_id, by=claims.subject)
            return Response.json(self._push_info(key))

        router.add("GET", "/api/v1/rooms/{room_id}/push", push, "rtmp_push_url")
        router.add("POST", "/api/v1/rooms/{room_id}/push/rotate", rotate, "rtmp_push_rotate")

    def _push_info(self, key: StreamKey) -> dict[str, Any]:
        server_url = push_url(self.public_host, self.port, self.config.app, "").rstrip("/")
        return {
            "room_id": key.room_id,
            "push_url": f"{server_url}/{key.key}",
            "server_url": server_url,
            "stream_key": key.key,
            "created": key.created,
            "rotated_at": key.rotated_at,
            "live": key.room_id in self.publishers,
        }


def push_url(host: str, port: int, app: str, key: str) -> str:
    """``rtmp://HOST:PORT/APP/KEY``, as OBS's server plus stream key."""
    return f"rtmp://{_url_host(host)}:{port}/{app}/{key}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _check_room_id(room_id: str) -> None:
    if not valid_room_id(room_id):
        raise HTTPError(400, "invalid_room_id", "a room id is 1 to 64 letters, digits, '_', '.' "
                        "or '-', starting with a letter or digit", "room_id")


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _command_app(command_object: Any) -> str:
    if not isinstance(command_object, dict):
        return ""
    app = command_object.get("app")
    return app.split("?", 1)[0].strip("/") if isinstance(app, str) else ""


class _RtmpSession:
    """One RTMP connection: its protocol state and, once publishing, its room."""

    def __init__(self, server: RtmpServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.config = server.config
        self.stream = stream
        self.peer = _peer(stream)
        self.rtmp = RtmpConnection(Role.SERVER, server.limits,
                                   ack_window_bytes=server.config.ack_window_bytes)
        self.connected = False
        self.room: str | None = None
        self.broadcast: Broadcast | None = None
        self.muxer: HangMuxer | None = None
        self._send_lock = trio.Lock()
        self._cancel: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._failure: _Close | RtmpProtocolError | None = None
        """Why the connection is being closed, when it is the peer's fault or a takeover."""

    # --- the connection -------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._cancel = nursery.cancel_scope
            self._nursery = nursery
            try:
                await self._receive_loop()
            except (_Close, RtmpProtocolError) as exc:
                self._failure = exc
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.info("connection_lost", peer=self.peer, room=self.room or "", detail=str(exc))
            nursery.cancel_scope.cancel()
        failure = self._failure
        if failure is None:
            return
        self.server.count_error(failure.reason)
        log.warning("connection_closed", peer=self.peer, room=self.room or "", reason=failure.reason,
                    detail=str(failure))
        if isinstance(failure, _Close) and failure.status is not None:
            await self._send_error(failure)

    async def _receive_loop(self) -> None:
        config = self.config
        deadline = trio.current_time() + config.handshake_timeout_s
        # Each round reads once; the loop ends when the peer closes, a
        # deadline passes or the peer breaks the protocol.
        while True:
            if self.rtmp.handshake_complete:
                deadline = trio.current_time() + config.idle_timeout_s
            data: bytes | None = None
            with trio.move_on_at(deadline):
                data = await self.stream.receive_some(config.receive_bytes)
            if data is None:
                if self.rtmp.handshake_complete:
                    raise _Close("idle_timeout", f"nothing received for {config.idle_timeout_s} s "
                                 "(rtmp.idle_timeout_s)", status="NetConnection.Connect.Closed")
                raise _Close("handshake_timeout", f"handshake not finished within "
                             f"{config.handshake_timeout_s} s (rtmp.handshake_timeout_s)")
            if not data:
                if self.room is not None:
                    log.info("publisher_disconnected", peer=self.peer, room=self.room)
                return
            arrival_s = trio.current_time()
            for event in self.rtmp.receive_data(data):
                await self._handle(event, arrival_s)
            await self._flush()

    async def _flush(self) -> None:
        data = self.rtmp.data_to_send()
        if not data:
            return
        async with self._send_lock:
            with trio.move_on_after(self.config.idle_timeout_s) as scope:
                await self.stream.send_all(data)
        if scope.cancelled_caught:
            raise _Close("send_timeout", f"peer read nothing for {self.config.idle_timeout_s} s")

    async def _send_error(self, close: _Close) -> None:
        """Tell the publisher why, half-close, and give it a moment to read."""
        info = {"level": "error", "code": close.status, "description": close.description}
        if close.command == "_error":
            self.rtmp.send_command("_error", close.transaction_id, None, info)
        else:
            self.rtmp.send_command("onStatus", 0.0, None, info,
                                   message_stream_id=PUBLISH_STREAM_ID if self.room else 0)
        with trio.move_on_after(self.config.handshake_timeout_s):
            try:
                async with self._send_lock:
                    await self.stream.send_all(self.rtmp.data_to_send())
                    await self.stream.send_eof()
                # Read until the peer closes, so that closing does not reset the
                # connection before it has read the reason. Bounded by the
                # timeout above.
                while await self.stream.receive_some(self.config.receive_bytes):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError,
                    OSError):
                pass

    # --- events ------------------------------------------------------------------------------

    async def _handle(self, event: Event, arrival_s: float) -> None:
        if isinstance(event, MediaReceived):
            self._media(event, arrival_s)
        elif isinstance(event, CommandReceived):
            await self._command(event)
        elif isinstance(event, DataReceived):
            self._data(event)

    async def _command(self, event: CommandReceived) -> None:
        name, txn = event.name, event.transaction_id
        rtmp = self.rtmp
        if name == "connect":
            app = _command_app(event.command_object)
            if app != self.config.app:
                raise _Close("bad_app", f"unknown application {app!r}; push to "
                             f"rtmp://HOST:PORT/{self.config.app}/STREAM_KEY",
                             status="NetConnection.Connect.Rejected", command="_error",
                             transaction_id=txn)
            self.connected = True
            rtmp.send_window_ack_size(self.config.ack_window_bytes)
            rtmp.send_set_peer_bandwidth(self.config.peer_bandwidth_bytes, 2)
            rtmp.send_set_chunk_size(self.config.out_chunk_size)
            rtmp.send_command("_result", txn, {"fmsVer": "FMS/3,5,7,7009", "capabilities": 31.0},
                              {"level": "status", "code": "NetConnection.Connect.Success",
                               "description": "Connection succeeded.", "objectEncoding": 0.0})
        elif not self.connected:
            raise RtmpProtocolError("malformed", f"command {name!r} before connect")
        elif name in ("releaseStream", "FCPublish"):
            rtmp.send_command("_result", txn, None, UNDEFINED)
            if name == "FCPublish":
                rtmp.send_command("onFCPublish", 0.0, None,
                                  {"code": "NetStream.Publish.Start", "description": "FCPublish"})
        elif name == "createStream":
            rtmp.send_command("_result", txn, None, float(PUBLISH_STREAM_ID))
        elif name == "publish":
            await self._publish(event)
        elif name in ("FCUnpublish", "deleteStream", "closeStream"):
            if self.broadcast is not None:
                log.info("publisher_unpublished", peer=self.peer, room=self.room, command=name)
                self.end_broadcast(name)
            if name == "FCUnpublish":
                rtmp.send_command("_result", txn, None, UNDEFINED)
        elif name == "_checkbw":
            rtmp.send_command("_result", txn, None, UNDEFINED)
        elif txn:
            # Answer what we do not implement, so a client waiting on it is not stuck.
            rtmp.send_command("_error", txn, None, {"level": "error", "code": "NetConnection.Call.Failed",
                                                    "description": f"{name} is not supported"})

    async def _publish(self, event: CommandReceived) -> None:
        args = event.arguments
        raw_name = args[0] if args and isinstance(args[0], str) else ""
        key = raw_name.split("?", 1)[0]
        if self.broadcast is not None or self.room is not None:
            raise _Close("malformed", "this connection already published", status="NetStream.Publish.BadName")
        owner: KeyOwner | None = await trio.to_thread.run_sync(
            self.server.stream_keys.lookup_untrusted, key)
        if owner is None:
            # The key itself is never logged: only its length.
            raise _Close("wrong_key", f"invalid stream key (of {len(key)} characters); get the push URL "
                         "with `shopcast push-url ROOM` or GET /api/v1/rooms/ROOM/push",
                         status="NetStream.Publish.BadName")
        try:
            broadcast = self.server.relay.publish(owner.room_id, owner=owner.owner,
                                                  on_keyframe_request=self._keyframe_requested)
        except RelayError as exc:
            reason = "duplicate_publisher" if exc.code == 12 else "relay_limit"
            raise _Close(reason, f"room {owner.room_id}: {exc}", status="NetStream.Publish.BadName") from None
        self.room = owner.room_id
        self.broadcast = broadcast
        self.muxer = HangMuxer(broadcast)
        self.server.publishers[owner.room_id] = self
        self.server.stats.publishes_total += 1
        assert self._nursery is not None
        self._nursery.start_soon(self._watch_broadcast, broadcast)
        self.rtmp.send_stream_begin(PUBLISH_STREAM_ID)
        self.rtmp.send_command("onStatus", 0.0, None,
                               {"level": "status", "code": "NetStream.Publish.Start",
                                "description": f"{owner.room_id} is now published."},
                               message_stream_id=PUBLISH_STREAM_ID)
        log.info("publish_started", peer=self.peer, room=owner.room_id)

    def _keyframe_requested(self, track: Track) -> None:
        # RTMP cannot ask the encoder for a keyframe: the next IDR answers
        # (rtmp docs: keep the GOP at 1-2 s). The relay counts the request.
        pass

    async def _watch_broadcast(self, broadcast: Broadcast) -> None:
        """Close this connection when its broadcast is ended by someone else
        (a publisher taking over)."""
        await broadcast.ended.wait()
        if self.broadcast is broadcast:
            self.broadcast = None
            self._failure = _Close("taken_over", f"another publisher took over room {self.room}",
                                    status="NetStream.Publish.BadName")
            assert self._cancel is not None
            self._cancel.cancel()

    def end_broadcast(self, why: str) -> None:
        broadcast, self.broadcast = self.broadcast, None
        self.muxer = None
        if self.room is not None and self.server.publishers.get(self.room) is self:
            del self.server.publishers[self.room]
        if broadcast is not None:
            broadcast.end()
            log.info("broadcast_ended", room=self.room, reason=why)

    def _data(self, event: DataReceived) -> None:
        values = list(event.values)
        if values and values[0] == "@setDataFrame":
            values.pop(0)
        if len(values) < 2 or values[0] != "onMetaData" or not isinstance(values[1], dict):
            return
        if self.muxer is None:
            return
        meta = values[1]

        def number(key: str) -> float | None:
            value = meta.get(key)
            return value if isinstance(value, float) and math.isfinite(value) and value > 0 else None

        video_kbps, audio_kbps, fps = number("videodatarate"), number("audiodatarate"), number("framerate")
        self.muxer.set_stream_info(
            video_bitrate_bps=round(video_kbps * 1000) if video_kbps and video_kbps < 1e7 else None,
            audio_bitrate_bps=round(audio_kbps * 1000) if audio_kbps and audio_kbps < 1e7 else None,
            framerate_fps=fps if fps and fps < 1000 else None)

    def _media(self, event: MediaReceived, arrival_s: float) -> None:
        muxer = self.muxer
        if muxer is None or event.message_stream_id != PUBLISH_STREAM_ID or not event.payload:
            return
        payload = event.payload
        if event.message_type == TagType.VIDEO and (payload[0] >> 4) & 0x07 == 5:
            return  # video info/command frame: no picture in it
        stats = self.server.stats
        stats.messages_in += 1
        stats.media_bytes_in += len(payload)
        tag = FlvTag(TagType(event.message_type), event.timestamp_ms, payload)
        try:
            muxer.push(tag)
        except UnsupportedMedia as exc:
            raise _Close("unsupported_media", str(exc), status="NetStream.Publish.Rejected") from None
        except MalformedMedia as exc:
            raise _Close("malformed_media", str(exc)) from None
        except RelayError as exc:
            raise _Close("relay_limit", str(exc), status="NetStream.Publish.Rejected") from None
        observer = self.server.media_observer
        if observer is not None and self.room is not None:
            observer(self.room, tag, arrival_s)
