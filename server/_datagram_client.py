"""The Python client of the datagram mode: subscribe to tracks over ``/dgram`` and get
their frames through a jitter buffer that repairs losses with FEC and NACKs.
``shopcast.client`` re-exports it.

    async with subscribe_datagrams("https://localhost:8443/dgram", "demo", "video",
                                   certificate_sha256=sha256) as subscription:
        async for frame in subscription.frames:
            ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import trio
from shopcast.codecs import JitterBuffer, JitterStatistics, MediaConfig
from shopcast.server._client import open_webtransport
from shopcast.server._config import Config, load_config
from shopcast.server._datagram import (
    ControlDecoder,
    DatagramProtocolError,
    Ended,
    Subscribe,
    Subscribed,
    SubscribeError,
    Unsubscribe,
    encode_control_message,
    encode_nack,
)
from shopcast.server._moq_client import _with_token
from shopcast.server._webtransport import (
    SessionClosed,
    StreamReset,
    WebTransportSession,
)
from shopcast.server.moq import ErrorCode

__all__ = [
    "DatagramClient",
    "DatagramFrame",
    "DatagramRefused",
    "DatagramSubscription",
    "connect_datagrams",
    "subscribe_datagrams",
]

_READ_CHUNK_BYTES = 16384
# Datagrams read in one wake-up, at most: one jitter-buffer kernel call each batch.
_BATCH_DATAGRAMS = 512
# Packets held for a track id whose Subscribed message has not arrived yet (packets).
_EARLY_PACKETS = 4096
_MAX_CONTROL_MESSAGE_BYTES = 65536


class DatagramRefused(Exception):
    """The server refused a subscription; ``code`` is an ErrorCode."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"subscription refused (code {code}): {reason}")


@dataclass(frozen=True)
class DatagramFrame:
    """A frame the jitter buffer released, in order."""

    group: int  #: group number (low 32 bits of the relay's); a group starts at a keyframe
    frame_seq: int  #: 16-bit frame sequence number of the track (wraps)
    timestamp_us: int  #: presentation time (µs), the hang timestamp
    keyframe: bool  #: the first frame of its group
    payload: bytes  #: the frame as published: a hang frame (timestamp varint + codec payload)
    arrival_s: float  #: trio.current_time() when the jitter buffer released it (s)


class DatagramSubscription:
    """One track delivered as datagrams.

    Wait on ``accepted`` (or ``ended``: a refusal sets ``error``); read ``frames``, a
    channel of DatagramFrame in order, each delivered at most once. ``statistics()``
    gives the jitter buffer's counters: losses repaired by FEC or by resends, frames
    skipped. Frames the reader does not take in time are dropped when the channel is
    full and counted in ``frames_dropped``.
    """

    def __init__(self, client: DatagramClient, subscription_id: int, broadcast: str, track: str,
                 queue_frames: int) -> None:
        self.client = client
        self.id = subscription_id
        self.broadcast = broadcast
        self.track = track
        self.accepted = trio.Event()
        self.ended = trio.Event()
        self.error: DatagramRefused | None = None
        self.track_id: int | None = None
        self.video = False
        self.jitter: JitterBuffer | None = None
        self.frames_dropped = 0
        self.frames_before_keyframe = 0
        """Video frames released before the first keyframe, which no decoder can use."""
        self._seen_keyframe = False
        self._send, self.frames = trio.open_memory_channel[DatagramFrame](queue_frames)

    def statistics(self) -> JitterStatistics | None:
        """The jitter buffer's counters, or None before the subscription is accepted."""
        return self.jitter.statistics() if self.jitter is not None else None

    def _accept(self, message: Subscribed, media: MediaConfig) -> None:
        self.track_id = message.track_id
        self.video = message.video
        # The packets' size is the server's choice: a smaller local setting would make
        # the buffer drop them as malformed.
        config = dataclasses.replace(
            media, datagram_payload_bytes=max(media.datagram_payload_bytes, message.payload_bytes))
        self.jitter = JitterBuffer(message.track_id, video=message.video, config=config)
        self.accepted.set()

    def _release(self, now_s: float) -> None:
        jitter = self.jitter
        if jitter is None:
            return
        now_us = int(now_s * 1_000_000)
        while True:
            batch = jitter.pop_ready_batch(now_us)
            if not len(batch):
                return
            for frame in batch:
                if self.video and not self._seen_keyframe:
                    if not frame.keyframe:
                        self.frames_before_keyframe += 1
                        continue
                    self._seen_keyframe = True
                record = DatagramFrame(group=frame.group, frame_seq=frame.frame_seq,
                                       timestamp_us=frame.timestamp_us, keyframe=frame.keyframe,
                                       payload=frame.payload, arrival_s=now_s)
                try:
                    self._send.send_nowait(record)
                except trio.WouldBlock:
                    self.frames_dropped += 1
                except trio.ClosedResourceError:
                    return

    def _end(self, error: DatagramRefused | None = None) -> None:
        if self.ended.is_set():
            return
        self.error = error
        self._send.close()
        self.ended.set()
        self.accepted.set()


class DatagramClient:
    """A datagram-mode session: one control stream, datagrams both ways.

    Received datagrams are read in batches, one wake-up at a time, and given to each
    subscription's jitter buffer in one kernel call per batch; a timer task releases
    frames whose playout deadline passed and sends the NACKs the buffers ask for.
    """

    def __init__(self, session: WebTransportSession, media: MediaConfig, *, tick_s: float) -> None:
        self.session = session
        self.media = media
        self.tick_s = tick_s
        self.subscriptions: dict[int, DatagramSubscription] = {}
        self._by_track_id: dict[int, DatagramSubscription] = {}
        self._early: list[tuple[bytes, int]] = []
        self._next_id = 0
        self._control = None
        self._max_nack_seqs = 1
        self.datagrams_received = 0
        self.datagrams_unclaimed = 0
        """Datagrams for no subscription of ours (after an unsubscribe, say), or too short."""

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._control = await self.session.open_bidi_stream()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_control)
                nursery.start_soon(self._receive_datagrams)
                nursery.start_soon(self._tick)
                task_status.started()
                await self.session.wait_closed()
                nursery.cancel_scope.cancel()
        finally:
            for subscription in list(self.subscriptions.values()):
                subscription._end(DatagramRefused(self.session.close_code,
                                                  self.session.close_reason or "session closed"))

    async def subscribe(self, broadcast: str, track: str, *, queue_frames: int = 4096) -> DatagramSubscription:
        """Ask for ``broadcast``/``track``; wait on the result's ``accepted``."""
        subscription_id = self._next_id
        self._next_id += 1
        subscription = DatagramSubscription(self, subscription_id, broadcast, track, queue_frames)
        self.subscriptions[subscription_id] = subscription
        await self._control.send_all(encode_control_message(Subscribe(subscription_id, broadcast, track)))
        return subscription

    async def unsubscribe(self, subscription: DatagramSubscription) -> None:
        """Stop a subscription; its ``frames`` channel ends once the server confirms."""
        await self._control.send_all(encode_control_message(Unsubscribe(subscription.id)))

    # --- control stream ------------------------------------------------------------------------

    async def _read_control(self) -> None:
        decoder = ControlDecoder(_MAX_CONTROL_MESSAGE_BYTES)
        while True:
            try:
                data = await self._control.receive_some(_READ_CHUNK_BYTES)
            except (StreamReset, trio.ClosedResourceError):
                data = b""
            if not data:
                self.session.close(0, "control stream ended")
                return
            try:
                for message in decoder.feed_untrusted(data):
                    self._on_message(message)
            except DatagramProtocolError as exc:
                self.session.close(exc.code, f"malformed control message from the server: {exc.reason}")
                return

    def _on_message(self, message) -> None:
        subscription = self.subscriptions.get(getattr(message, "id", -1))
        if isinstance(message, (Subscribe, Unsubscribe)):
            raise DatagramProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "a client message")
        if subscription is None:
            return  # an answer to a subscription already ended
        if isinstance(message, Subscribed):
            if subscription.accepted.is_set() or message.track_id in self._by_track_id:
                raise DatagramProtocolError(ErrorCode.PROTOCOL_VIOLATION,
                                            "subscribed twice, or to a track id in use")
            self._max_nack_seqs = max(1, min(message.max_nack_seqs, 570))
            subscription._accept(message, self.media)
            self._by_track_id[message.track_id] = subscription
            early, self._early = self._early, []
            if early:
                self._ingest([packet for packet, _ in early], [arrival for _, arrival in early])
        elif isinstance(message, SubscribeError):
            self._forget(subscription)
            subscription._end(DatagramRefused(message.code, message.reason))
        elif isinstance(message, Ended):
            self._forget(subscription)
            subscription._release(trio.current_time())
            subscription._end()

    def _forget(self, subscription: DatagramSubscription) -> None:
        self.subscriptions.pop(subscription.id, None)
        if subscription.track_id is not None and self._by_track_id.get(subscription.track_id) is subscription:
            del self._by_track_id[subscription.track_id]

    # --- datagrams -----------------------------------------------------------------------------

    async def _receive_datagrams(self) -> None:
        session = self.session
        while True:
            try:
                first = await session.receive_datagram()
            except SessionClosed:
                return
            batch = [first]
            _drain_datagrams(session, batch, _BATCH_DATAGRAMS)
            now_s = trio.current_time()
            arrival_us = int(now_s * 1_000_000)
            self.datagrams_received += len(batch)
            touched = self._ingest(batch, [arrival_us] * len(batch))
            for subscription in touched:
                subscription._release(now_s)

    def _ingest(self, packets: list[bytes], arrivals_us: list[int]) -> list[DatagramSubscription]:
        """Hand packets to their subscriptions' jitter buffers, one kernel call per track."""
        lengths = np.fromiter(map(len, packets), dtype=np.int64, count=len(packets))
        offsets = np.zeros(len(packets), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        data = np.frombuffer(b"".join(packets), dtype=np.uint8)
        arrivals = np.asarray(arrivals_us, dtype=np.int64)
        usable = lengths >= 4
        track_ids = np.full(len(packets), -1, dtype=np.int64)
        track_ids[usable] = (data[offsets[usable] + 2].astype(np.int64) << 8) | data[offsets[usable] + 3]
        self.datagrams_unclaimed += int(np.count_nonzero(~usable))
        touched = []
        for track_id in np.unique(track_ids[usable]).tolist():
            mask = track_ids == track_id
            subscription = self._by_track_id.get(track_id)
            if subscription is None or subscription.jitter is None:
                self._hold_early(packets, arrivals_us, mask)
                continue
            subscription.jitter.push_batch(data, offsets[mask], lengths[mask], arrivals[mask])
            touched.append(subscription)
        return touched

    def _hold_early(self, packets: list[bytes], arrivals_us: list[int], mask: np.ndarray) -> None:
        # The server sends Subscribed before the first packet, but a datagram can overtake
        # the stream: hold packets while a subscription is still waiting for its answer.
        waiting = any(not s.accepted.is_set() for s in self.subscriptions.values())
        for index in np.flatnonzero(mask).tolist():
            if waiting and len(self._early) < _EARLY_PACKETS:
                self._early.append((packets[index], arrivals_us[index]))
            else:
                self.datagrams_unclaimed += 1

    async def _tick(self) -> None:
        """Release frames past their deadline and send NACKs, every ``tick_s``."""
        session = self.session
        while True:
            await trio.sleep(self.tick_s)
            now_s = trio.current_time()
            now_us = int(now_s * 1_000_000)
            for subscription in list(self._by_track_id.values()):
                subscription._release(now_s)
                seqs = subscription.jitter.nacks(now_us)
                step = self._max_nack_seqs
                for start in range(0, len(seqs), step):
                    session.send_datagram(encode_nack(subscription.track_id, seqs[start:start + step]))


def _drain_datagrams(session: WebTransportSession, batch: list[bytes], limit: int) -> None:
    """Add datagrams already received to ``batch`` without waiting, up to ``limit``."""
    while len(batch) < limit:
        datagram = session.receive_datagram_nowait()
        if datagram is None:
            return
        batch.append(datagram)


@asynccontextmanager
async def connect_datagrams(url: str, *, token: str | None = None, certificate_sha256: str | None = None,
                            verify: bool = True, config: Config | None = None,
                            tick_s: float = 0.005) -> AsyncIterator[DatagramClient]:
    """Open a datagram-mode session to ``url`` (``https://host:port/dgram``).

    ``config`` supplies the jitter buffer's [media] settings (default: conf/default.toml);
    ``tick_s`` is how often deadlines are checked and NACKs sent (s).
    """
    config = config or load_config(environ={})
    async with open_webtransport(_with_token(url, token), certificate_sha256=certificate_sha256,
                                 verify=verify, config=config) as session:
        client = DatagramClient(session, config.media, tick_s=tick_s)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(client._run)
                try:
                    yield client
                finally:
                    session.close(0, "client done")
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # As open_webtransport does: the nursery runs only our plumbing, so a single
            # error in it is the caller's own (DatagramRefused, say), raised as itself.
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
                raise group.exceptions[0] from None
            raise


@asynccontextmanager
async def subscribe_datagrams(url: str, broadcast: str, track: str, *, token: str | None = None,
                              certificate_sha256: str | None = None, verify: bool = True,
                              config: Config | None = None, tick_s: float = 0.005,
                              queue_frames: int = 4096) -> AsyncIterator[DatagramSubscription]:
    """Connect, subscribe to one track and wait until the server accepts.

    Raises DatagramRefused when the server refuses (unknown track, private broadcast
    without a token for its room, limits).
    """
    async with connect_datagrams(url, token=token, certificate_sha256=certificate_sha256, verify=verify,
                                 config=config, tick_s=tick_s) as client:
        subscription = await client.subscribe(broadcast, track, queue_frames=queue_frames)
        await subscription.accepted.wait()
        if subscription.error is not None:
            raise subscription.error
        yield subscription
