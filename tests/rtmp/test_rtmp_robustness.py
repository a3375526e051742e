"""Misbehaving RTMP peers close their own connection only: garbage, oversized
messages, absurd chunk sizes, a handshake a byte a second, a wrong stream key,
refused codecs. Beside each, a healthy publisher keeps a room live and a MoQ
viewer keeps receiving its frames. Also: disconnect, reconnect and the one
publisher per room rule."""

from __future__ import annotations

import os
import struct

import pytest
import trio

from shopcast.client import connect
from shopcast.server._rtmp_protocol import HANDSHAKE_SIZE, MessageType

GOOD_ROOM = "good-room"


class Healthy:
    """A publisher playing the demo clip into GOOD_ROOM and a viewer counting its frames."""

    def __init__(self) -> None:
        self.frames = 0
        self.publisher = None

    async def frames_keep_coming(self, helpers, count: int = 10) -> None:
        target = self.frames + count
        await helpers.wait_until(lambda: self.frames >= target, what="the healthy room's frames")


@pytest.fixture
async def ingest(server_factory, rtmp_helpers, nursery):
    """(started, healthy): a server with a healthy RTMP publisher and viewer
    running, and a fast handshake timeout."""
    started = await server_factory({"demo": {"enabled": False},
                                    "rtmp": {"handshake_timeout_s": 2.0, "idle_timeout_s": 5.0}})
    healthy = Healthy()
    url = await rtmp_helpers.push_url(started, GOOD_ROOM)
    publisher = await rtmp_helpers.RawPublisher.connect(started.app.rtmp_port)
    status = await publisher.publish(url.rsplit("/", 1)[1])
    assert status.arguments[0]["code"] == "NetStream.Publish.Start"
    healthy.publisher = publisher
    nursery.start_soon(publisher.play_demo)

    async def drain_server_messages() -> None:
        while await publisher.receive():
            pass

    nursery.start_soon(drain_server_messages)
    await rtmp_helpers.wait_for_tracks(started, GOOD_ROOM)

    async def view() -> None:
        sha = started.app.certificate.sha256_hex
        async with connect(f"https://127.0.0.1:{started.port}/moq", certificate_sha256=sha) as client:
            upstream = await client.subscribe(GOOD_ROOM, "video")
            async for _ in upstream.frames:
                healthy.frames += 1

    nursery.start_soon(view)
    await healthy.frames_keep_coming(rtmp_helpers)
    yield started, healthy
    await publisher.aclose()


def errors(started, reason: str) -> float:
    return started.app.metrics.get("shopcast_rtmp_errors_total").value(reason)


async def connected(started, helpers):
    """A raw publisher past the handshake and connect."""
    client = await helpers.RawPublisher.connect(started.app.rtmp_port)
    await client.handshake_and_connect()
    result = await client.wait_command(lambda c: c.transaction_id == 1.0)
    assert result.name == "_result"
    return client


async def assert_closed_alone(client, started, healthy, helpers, reason: str) -> None:
    await client.wait_closed()
    await client.aclose()
    assert errors(started, reason) >= 1, started.app.metrics.render()
    assert GOOD_ROOM in started.app.relay.broadcasts
    await healthy.frames_keep_coming(helpers)


@pytest.mark.parametrize("after_handshake", [False, True])
async def test_garbage_bytes(ingest, rtmp_helpers, after_handshake):
    started, healthy = ingest
    if after_handshake:
        client = await connected(started, rtmp_helpers)
        # A chunk on a new chunk stream must begin with a type 0 header; then noise.
        await client.stream.send_all(b"\x47" + os.urandom(4000))
        reason = "malformed"
    else:
        client = await rtmp_helpers.RawPublisher.connect(started.app.rtmp_port)
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(4000))
        reason = "handshake"
    await assert_closed_alone(client, started, healthy, rtmp_helpers, reason)


async def test_garbage_amf0_command(ingest, rtmp_helpers):
    started, healthy = ingest
    client = await connected(started, rtmp_helpers)
    # A command whose string claims 60000 bytes that are not there, then a
    # strict array claiming 2^32-1 values.
    client.rtmp._send_message(3, MessageType.COMMAND_AMF0, 0, 0, b"\x02\xea\x60abc")
    client.rtmp._send_message(3, MessageType.COMMAND_AMF0, 0, 0, b"\x0a\xff\xff\xff\xff\x05")
    await client.flush()
    await assert_closed_alone(client, started, healthy, rtmp_helpers, "amf0")


async def test_oversized_message(ingest, rtmp_helpers):
    started, healthy = ingest
    client = await connected(started, rtmp_helpers)
    too_big = started.app.config.rtmp.max_message_bytes + 1
    # Type 0 header on chunk stream 6: timestamp 0, the length, video, stream 1.
    header = bytes((6,)) + bytes(3) + too_big.to_bytes(3, "big") + bytes((9,)) + struct.pack("<I", 1)
    await client.stream.send_all(header + bytes(4096))
    await assert_closed_alone(client, started, healthy, rtmp_helpers, "message_too_large")


@pytest.mark.parametrize("size", [0, 1, 0x80000000, 0xFFFFFFFF, 1_000_000])
async def test_absurd_chunk_size(ingest, rtmp_helpers, size):
    started, healthy = ingest
    client = await connected(started, rtmp_helpers)
    client.rtmp._send_message(2, MessageType.SET_CHUNK_SIZE, 0, 0, struct.pack(">I", size))
    await client.flush()
    await assert_closed_alone(client, started, healthy, rtmp_helpers, "chunk_size")


async def test_handshake_a_byte_a_second_times_out(ingest, rtmp_helpers):
    started, healthy = ingest
    timeout_s = started.app.config.rtmp.handshake_timeout_s
    client = await rtmp_helpers.RawPublisher.connect(started.app.rtmp_port)
    c0c1 = bytes((3,)) + bytes(HANDSHAKE_SIZE)
    closed_at = None
    began = trio.current_time()
    frames_before = healthy.frames
    # At most timeout + 3 bytes: the server must have closed by then.
    for byte in c0c1[: int(timeout_s) + 3]:
        try:
            await client.stream.send_all(bytes((byte,)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            break
        with trio.move_on_after(1.0):
            if not await client.receive():
                closed_at = trio.current_time()
                break
    if closed_at is None:
        await client.wait_closed()
        closed_at = trio.current_time()
    await client.aclose()
    assert closed_at - began < timeout_s + 3
    assert errors(started, "handshake_timeout") == 1
    # The healthy room was served all along.
    assert healthy.frames > frames_before
    await healthy.frames_keep_coming(rtmp_helpers)


async def test_wrong_key_is_refused_logged_and_counted(ingest, rtmp_helpers, caplog):
    started, healthy = ingest
    client = await rtmp_helpers.RawPublisher.connect(started.app.rtmp_port)
    # Someone else's room: a key that is not this room's (nor any room's).
    status = await client.publish("A" * 43)
    assert status is not None and status.name == "onStatus"
    info = status.arguments[0]
    assert info["level"] == "error" and info["code"] == "NetStream.Publish.BadName"
    assert "invalid stream key" in info["description"]
    await assert_closed_alone(client, started, healthy, rtmp_helpers, "wrong_key")
    assert any("wrong_key" in str(getattr(r, "fields", {}).get("reason")) for r in caplog.records)
    assert 'shopcast_rtmp_errors_total{reason="wrong_key"} 1' in started.app.metrics.render()


async def test_rotated_key_is_refused(ingest, rtmp_helpers):
    started, healthy = ingest
    old = (await rtmp_helpers.push_url(started, "rotating")).rsplit("/", 1)[1]
    new = (await trio.to_thread.run_sync(started.app.stream_keys.rotate, "rotating")).key
    assert new != old
    client = await rtmp_helpers.RawPublisher.connect(started.app.rtmp_port)
    status = await client.publish(old)
    assert status.arguments[0]["code"] == "NetStream.Publish.BadName"
    await assert_closed_alone(client, started, healthy, rtmp_helpers, "wrong_key")
    client = await rtmp_helpers.RawPublisher.connect(started.app.rtmp_port)
    status = await client.publish(new)
    assert status.arguments[0]["code"] == "NetStream.Publish.Start"
    await client.aclose()


async def test_wrong_app_is_refused(ingest, rtmp_helpers):
    started, healthy = ingest
    client = await rtmp_helpers.RawPublisher.connect(started.app.rtmp_port)
    await client.handshake_and_connect(app="vod")
    result = await client.wait_command(lambda c: c.transaction_id == 1.0)
    assert result.name == "_error"
    assert result.arguments[0]["code"] == "NetConnection.Connect.Rejected"
    await assert_closed_alone(client, started, healthy, rtmp_helpers, "bad_app")


async def test_enhanced_rtmp_hevc_is_refused_by_name(ingest, rtmp_helpers):
    started, healthy = ingest
    client = await rtmp_helpers.RawPublisher.connect(started.app.rtmp_port)
    key = (await rtmp_helpers.push_url(started, "hevc-room")).rsplit("/", 1)[1]
    assert (await client.publish(key)).arguments[0]["code"] == "NetStream.Publish.Start"
    # Enhanced RTMP: IsExHeader | keyframe | SequenceStart, FourCC hvc1, an hvcC.
    client.rtmp.send_media(MessageType.VIDEO, 0, bytes((0x80 | 0x10 | 0,)) + b"hvc1" + bytes(23))
    await client.flush()
    status = await client.wait_command(lambda c: c.name == "onStatus" and c.arguments[0]["level"] == "error")
    assert status.arguments[0]["code"] == "NetStream.Publish.Rejected"
    assert "HEVC" in status.arguments[0]["description"]
    await assert_closed_alone(client, started, healthy, rtmp_helpers, "unsupported_media")
    assert "hevc-room" not in started.app.relay.broadcasts


async def test_second_publisher_is_refused_by_default(ingest, rtmp_helpers):
    started, healthy = ingest
    key = (await rtmp_helpers.push_url(started, GOOD_ROOM)).rsplit("/", 1)[1]
    client = await rtmp_helpers.RawPublisher.connect(started.app.rtmp_port)
    status = await client.publish(key)
    assert status.arguments[0]["code"] == "NetStream.Publish.BadName"
    assert "already has a publisher" in status.arguments[0]["description"]
    await assert_closed_alone(client, started, healthy, rtmp_helpers, "duplicate_publisher")


async def test_disconnect_ends_broadcast_and_reconnect_resumes(server_factory, rtmp_helpers):
    started = await server_factory({"demo": {"enabled": False}})
    room = "comeback"
    key = (await rtmp_helpers.push_url(started, room)).rsplit("/", 1)[1]
    sha = started.app.certificate.sha256_hex
    for attempt in range(2):
        publisher = await rtmp_helpers.RawPublisher.connect(started.app.rtmp_port)
        assert (await publisher.publish(key)).arguments[0]["code"] == "NetStream.Publish.Start"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.play_demo)
            await rtmp_helpers.wait_for_tracks(started, room)
            async with connect(f"https://127.0.0.1:{started.port}/moq", certificate_sha256=sha) as viewer:
                upstream = await viewer.subscribe(room, "video")
                got = 0
                with trio.fail_after(rtmp_helpers.WAIT_S):
                    async for _ in upstream.frames:
                        got += 1
                        if got == 10:
                            # The encoder goes away: the viewer is told.
                            nursery.cancel_scope.cancel()
                            await publisher.aclose()
                            break
                    async for _ in upstream.frames:
                        pass
                await upstream.ended.wait()
                assert upstream.end_code is not None, attempt
        await rtmp_helpers.wait_until(lambda: room not in started.app.relay.broadcasts,
                                      what="the broadcast to end")


async def test_publisher_takeover_when_configured(server_factory, rtmp_helpers):
    started = await server_factory({"demo": {"enabled": False}, "relay": {"publisher_takeover": True}})
    key = (await rtmp_helpers.push_url(started, "takeover")).rsplit("/", 1)[1]
    first = await rtmp_helpers.RawPublisher.connect(started.app.rtmp_port)
    assert (await first.publish(key)).arguments[0]["code"] == "NetStream.Publish.Start"
    old = started.app.relay.broadcasts["takeover"]
    second = await rtmp_helpers.RawPublisher.connect(started.app.rtmp_port)
    assert (await second.publish(key)).arguments[0]["code"] == "NetStream.Publish.Start"
    told = await first.wait_command(lambda c: c.name == "onStatus" and c.arguments[0]["level"] == "error")
    assert "took over" in told.arguments[0]["description"]
    await first.wait_closed()
    assert old.ended.is_set()
    assert started.app.relay.broadcasts["takeover"] is not old
    assert started.app.rtmp.publishers["takeover"] is not None
    await first.aclose()
    await second.aclose()
