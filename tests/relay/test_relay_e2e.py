"""The relay over loopback with real QUIC clients: fan-out to 50 subscribers,
late joiners, a frozen viewer, authorisation and malformed input."""

import time

import pytest
import trio

from shopcast.bench._udp_proxy import UdpProxy
from shopcast.client import connect, decode_frame_untrusted
from shopcast.server._client import open_webtransport
from shopcast.server._moq_server import MoqSettings
from shopcast.server.moq import (
    CATALOG_TRACK,
    Catalog,
    ErrorCode,
    VideoRendition,
    encode_catalog,
    encode_frame,
)

CATALOG = encode_catalog(Catalog(video=(VideoRendition(track="video", codec="avc1.42c01f"),)))


def moq_url(started, port: int | None = None) -> str:
    return f"https://127.0.0.1:{port or started.port}/moq"


def token(started, role: str, room: str) -> str:
    return started.app.tokens.mint(subject=f"{role}-1", role=role, room=room, ttl_s=600, now=time.time())


async def wait_for_track(started, room: str, name: str) -> None:
    """Until the relay has made the track (it subscribes upstream on the
    publisher's catalog)."""
    with trio.fail_after(10):
        while True:
            broadcast = started.app.relay.broadcasts.get(room)
            if broadcast is not None and name in broadcast.tracks:
                return
            await trio.sleep(0.01)


async def test_fifty_subscribers_receive_every_frame_in_order(server_factory):
    # Fifty clients and the server share one process and core here, so the
    # latency budget is set wide: this test is about integrity and order;
    # dropping late groups has its own test below.
    started = await server_factory({"demo": {"enabled": False},
                                    "relay": {"latency_budget_ms": 60000}})
    sha = started.app.certificate.sha256_hex
    payloads = [encode_frame(i * 33_333, bytes([i % 256]) * (500 + 37 * i)) for i in range(90)]
    results: dict[int, list] = {}
    ready = trio.Semaphore(0)

    async def subscriber(index: int) -> None:
        async with connect(moq_url(started), certificate_sha256=sha) as client:
            upstream = await client.subscribe("room1", "video")
            await upstream.accepted.wait()
            ready.release()
            received = []
            async for frame in upstream.frames:
                received.append(frame)
                if len(received) == len(payloads):
                    break
            results[index] = received

    async with connect(moq_url(started), token=token(started, "host", "room1"),
                       certificate_sha256=sha, settings=MoqSettings(latency_budget_s=60)) as publisher:
        broadcast = publisher.publish("room1")
        broadcast.track(CATALOG_TRACK).write_frame(CATALOG, keyframe=True)
        video = broadcast.track("video")
        await wait_for_track(started, "room1", "video")
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for index in range(50):
                    nursery.start_soon(subscriber, index)
                for _ in range(50):
                    await ready.acquire()
                for i, payload in enumerate(payloads):
                    video.write_frame(payload, keyframe=(i % 30 == 0))
                    await trio.sleep(0.01)
    assert len(results) == 50
    for received in results.values():
        # Every frame, intact, each group complete and in order within itself
        # (groups travel on separate streams and may interleave on arrival).
        placed = {(f.group_sequence, f.index): f.payload for f in received}
        assert placed == {(i // 30, i % 30): payload for i, payload in enumerate(payloads)}
        for group in range(3):
            arrival = [f.index for f in received if f.group_sequence == group]
            assert arrival == list(range(30))
    timestamps = [decode_frame_untrusted(placed[(i // 30, i % 30)])[0] for i in range(90)]
    assert timestamps == sorted(timestamps)


async def test_late_joiner_starts_at_the_current_groups_keyframe(server_factory):
    started = await server_factory({"demo": {"enabled": False}})
    sha = started.app.certificate.sha256_hex
    async with connect(moq_url(started), token=token(started, "host", "room1"),
                       certificate_sha256=sha) as publisher:
        broadcast = publisher.publish("room1")
        broadcast.track(CATALOG_TRACK).write_frame(CATALOG, keyframe=True)
        video = broadcast.track("video")
        await wait_for_track(started, "room1", "video")
        # Two and a half groups, then a late joiner, with the publisher idle:
        # it can only be served from the cache.
        for i in range(25):
            video.write_frame(encode_frame(i, b"frame %d" % i), keyframe=(i % 10 == 0))
        relay_track = started.app.relay.broadcasts["room1"].tracks["video"]
        with trio.fail_after(10):
            while relay_track.stats.frames_in < 25:
                await trio.sleep(0.01)
        async with connect(moq_url(started), certificate_sha256=sha) as viewer:
            asked = trio.current_time()
            upstream = await viewer.subscribe("room1", "video")
            with trio.fail_after(10):
                first = await upstream.frames.receive()
            print(f"late joiner: first frame {1000 * (first.arrival_s - asked):.1f} ms after subscribing")
            # The newest group from its keyframe, not a wait for the next group.
            assert (first.group_sequence, first.index) == (2, 0)
            assert first.payload == encode_frame(20, b"frame 20")
            rest = [await upstream.frames.receive() for _ in range(4)]
            assert [f.payload for f in rest] == [encode_frame(i, b"frame %d" % i) for i in range(21, 25)]
            assert relay_track.subscriber_count == 1
        # The viewer left: its subscription is gone from the track.
        with trio.fail_after(10):
            while relay_track.subscriber_count:
                await trio.sleep(0.01)
        metrics = started.app.metrics.render()
        assert 'shopcast_relay_subscribers{broadcast="room1",track="video"} 0' in metrics
        assert 'shopcast_relay_queued_bytes{broadcast="room1",track="video"}' in metrics


async def test_frozen_viewer_has_groups_dropped_while_others_keep_up(server_factory):
    started = await server_factory({"demo": {"enabled": False},
                                    "relay": {"latency_budget_ms": 100}})
    sha = started.app.certificate.sha256_hex
    payloads = [encode_frame(i, bytes([i % 251]) * 3000) for i in range(150)]
    async with trio.open_nursery() as nursery:
        proxy = UdpProxy(("127.0.0.1", started.port))
        proxy_port = await nursery.start(proxy.run)
        async with connect(moq_url(started), token=token(started, "host", "room1"),
                           certificate_sha256=sha) as publisher, \
                connect(moq_url(started), certificate_sha256=sha) as fast, \
                connect(moq_url(started, proxy_port), certificate_sha256=sha) as frozen:
            broadcast = publisher.publish("room1")
            broadcast.track(CATALOG_TRACK).write_frame(CATALOG, keyframe=True)
            video = broadcast.track("video")
            await wait_for_track(started, "room1", "video")
            fast_up = await fast.subscribe("room1", "video")
            frozen_up = await frozen.subscribe("room1", "video")
            with trio.fail_after(10):
                await fast_up.accepted.wait()
                await frozen_up.accepted.wait()
            proxy.frozen = True  # the viewer's machine stops: no more acks, no reads
            received = []

            async def read_fast() -> None:
                async for frame in fast_up.frames:
                    received.append(frame.payload)
                    if len(received) == len(payloads):
                        return

            with trio.fail_after(60):
                async with trio.open_nursery() as inner:
                    inner.start_soon(read_fast)
                    for i, payload in enumerate(payloads):
                        video.write_frame(payload, keyframe=(i % 10 == 0))
                        await trio.sleep(0.02)
            assert received == payloads
            track = started.app.relay.broadcasts["room1"].tracks["video"]
            assert track.stats.groups_dropped >= 3, track.stats
            metrics = started.app.metrics.render()
            assert 'shopcast_relay_groups_dropped_total{broadcast="room1",track="video"}' in metrics
        nursery.cancel_scope.cancel()


async def test_publishing_needs_a_host_token_for_that_room(server_factory):
    started = await server_factory({"demo": {"enabled": False}})
    sha = started.app.certificate.sha256_hex
    for bad in (None, token(started, "viewer", "room1"), token(started, "host", "other-room")):
        async with connect(moq_url(started), token=bad, certificate_sha256=sha) as client:
            client.publish("room1")
            with trio.fail_after(10):
                await client.session.wait_closed()
            assert client.session.close_code == ErrorCode.UNAUTHORIZED
            assert "host token" in client.session.close_reason
    assert "room1" not in started.app.relay.broadcasts
    async with connect(moq_url(started), token=token(started, "service", "*"),
                       certificate_sha256=sha) as client:
        client.publish("room1")
        with trio.fail_after(10):
            while "room1" not in started.app.relay.broadcasts:
                await trio.sleep(0.01)


async def test_private_broadcast_needs_a_token_for_its_room(server_factory):
    started = await server_factory({"demo": {"enabled": False}})
    sha = started.app.certificate.sha256_hex
    secret = started.app.relay.publish("rehearsal", private=True)
    secret.track("video").write_frame(b"x", keyframe=True)
    async with connect(moq_url(started), certificate_sha256=sha) as anonymous:
        upstream = await anonymous.subscribe("rehearsal", "video")
        with trio.fail_after(10):
            await upstream.ended.wait()
        assert upstream.end_code == ErrorCode.UNAUTHORIZED
        assert "rehearsal" not in anonymous.connection.announced
    async with connect(moq_url(started), token=token(started, "viewer", "rehearsal"),
                       certificate_sha256=sha) as invited:
        upstream = await invited.subscribe("rehearsal", "video")
        with trio.fail_after(10):
            frame = await upstream.frames.receive()
        assert frame.payload == b"x"


async def test_unknown_track_is_refused_not_found(running_server):
    sha = running_server.app.certificate.sha256_hex
    async with connect(moq_url(running_server), certificate_sha256=sha) as client:
        upstream = await client.subscribe("no-such-room", "video")
        with trio.fail_after(10):
            await upstream.ended.wait()
        assert upstream.end_code == ErrorCode.NOT_FOUND


@pytest.mark.parametrize("garbage", [
    b"\x20\x00\x05\xff\xff\xff\xff\xff",          # compat SETUP with a truncated/invalid body
    b"\x07",                                        # a stream type moq-lite does not know
    b"\x20" + b"\x00\x03" + b"\xc0" * 3,            # a varint cut short inside SETUP
])
async def test_malformed_moq_closes_only_that_session(running_server, garbage):
    sha = running_server.app.certificate.sha256_hex
    async with connect(moq_url(running_server), certificate_sha256=sha) as healthy:
        upstream = await healthy.subscribe("demo", "video")
        async with open_webtransport(moq_url(running_server), certificate_sha256=sha) as raw:
            stream = await raw.open_bidi_stream()
            await stream.send_all(garbage)
            await stream.send_eof()
            with trio.fail_after(10):
                try:
                    while await stream.receive_some():
                        pass
                except Exception:  # noqa: BLE001 - a reset stream is one acceptable answer
                    pass
                if garbage == b"\x07":
                    # An unknown stream type resets only that stream; the
                    # session stays usable, as in the reference client.
                    assert not raw.closed.is_set()
                else:
                    await raw.wait_closed()
                    assert raw.close_code in (ErrorCode.PROTOCOL_VIOLATION, ErrorCode.DECODE,
                                              ErrorCode.VERSION_MISMATCH if hasattr(ErrorCode, "VERSION_MISMATCH") else -1)
        with trio.fail_after(10):
            frames = [await upstream.frames.receive() for _ in range(3)]
        assert len(frames) == 3


async def test_demo_room_plays_with_advancing_timestamps(running_server):
    sha = running_server.app.certificate.sha256_hex
    async with connect(moq_url(running_server), certificate_sha256=sha) as viewer:
        with trio.fail_after(10):
            await viewer.wait_announced("demo")
        catalog = await viewer.catalog("demo")
        assert catalog.video[0].codec.startswith("avc1.")
        assert catalog.audio[0].codec == "mp4a.40.2"
        upstream = await viewer.subscribe("demo", "video")
        with trio.fail_after(15):
            first = await upstream.frames.receive()
            assert first.index == 0
            times = []
            async for frame in upstream.frames:
                times.append(decode_frame_untrusted(frame.payload)[0])
                if len(times) == 45:
                    break
        assert times == sorted(times) and times[-1] - times[0] >= 1_000_000


async def test_session_closes_reach_subscribers_when_the_publisher_leaves(server_factory):
    started = await server_factory({"demo": {"enabled": False}})
    sha = started.app.certificate.sha256_hex
    async with connect(moq_url(started), certificate_sha256=sha) as viewer:
        async with connect(moq_url(started), token=token(started, "host", "room1"),
                           certificate_sha256=sha) as publisher:
            broadcast = publisher.publish("room1")
            video = broadcast.track("video")  # before the catalog that names it
            broadcast.track(CATALOG_TRACK).write_frame(CATALOG, keyframe=True)
            await wait_for_track(started, "room1", "video")
            video.write_frame(b"one", keyframe=True)
            upstream = await viewer.subscribe("room1", "video")
            with trio.fail_after(10):
                assert (await upstream.frames.receive()).payload == b"one"
        with trio.fail_after(10):
            await upstream.ended.wait()
            while "room1" in viewer.connection.announced:
                await trio.sleep(0.01)
        assert "room1" not in started.app.relay.broadcasts
