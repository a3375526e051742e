"""Datagram mode over loopback with real QUIC clients, through a lossy UDP proxy:
order, exactly-once delivery, repair by FEC and resends, authorisation, bad input."""

import statistics
import time

import pytest
import trio
from shopcast.bench._udp_proxy import UdpProxy
from shopcast.client import (
    DatagramRefused,
    connect,
    connect_datagrams,
    subscribe_datagrams,
)
from shopcast.server._client import open_webtransport
from shopcast.server._config import load_config
from shopcast.server._datagram import (
    CONTROL_LENGTH_BYTES,
    Subscribe,
    encode_control_message,
    encode_nack,
)
from shopcast.server.moq import (
    CATALOG_TRACK,
    AudioRendition,
    Catalog,
    ErrorCode,
    VideoRendition,
    encode_catalog,
    encode_frame,
)

CATALOG = encode_catalog(Catalog(
    video=(VideoRendition(track="video", codec="avc1.42c01f"),),
    audio=(AudioRendition(track="audio", codec="opus", sample_rate_hz=48000, channel_count=2),)))
FRAMES = 150
GOP = 30


def url(started, port: int | None = None, path: str = "/dgram") -> str:
    return f"https://127.0.0.1:{port or started.port}{path}"


def token(started, role: str, room: str) -> str:
    return started.app.tokens.mint(subject=f"{role}-1", role=role, room=room, ttl_s=600, now=time.time())


def video_frame(index: int) -> bytes:
    # Keyframes span several FEC blocks; delta frames one or two.
    size = 30_000 if index % GOP == 0 else 2_000 + 97 * (index % 41)
    return encode_frame(index * 20_000, index.to_bytes(4, "big") * (size // 4))


async def wait_for_track(started, room: str, name: str) -> None:
    with trio.fail_after(10):
        while True:
            broadcast = started.app.relay.broadcasts.get(room)
            if broadcast is not None and name in broadcast.tracks:
                return
            await trio.sleep(0.01)


# (loss, fec_k, the viewer's smallest playout delay in ms). With 500 ms only the path's
# loss can cost a frame, not a busy machine, so every frame is demanded at 0% loss. At
# [media]'s default of 40 ms, how many frames arrive in time depends on the machine's
# load; docs/datagram-mode.md ("Measured") reports those runs.
@pytest.mark.parametrize(("loss", "fec_k", "delay_ms"), [
    (0.0, 8, 500.0), (0.02, 8, 500.0), (0.05, 8, 500.0), (0.05, 0, 500.0)])
async def test_frames_arrive_in_order_once_and_losses_are_repaired(server_factory, loss, fec_k, delay_ms):
    started = await server_factory({"demo": {"enabled": False}, "media": {"fec_k": fec_k}})
    viewer_config = load_config(environ={}, overrides={"media": {
        "target_delay_min_ms": delay_ms, "target_delay_initial_ms": max(100.0, delay_ms)}})
    sha = started.app.certificate.sha256_hex
    written_at: dict[int, float] = {}
    received = []
    async with trio.open_nursery() as nursery:
        proxy = UdpProxy(("127.0.0.1", started.port), loss=loss, seed=7)
        proxy_port = await nursery.start(proxy.run)
        async with connect(url(started, path="/moq"), token=token(started, "host", "room1"),
                           certificate_sha256=sha) as publisher:
            broadcast = publisher.publish("room1")
            broadcast.track(CATALOG_TRACK).write_frame(CATALOG, keyframe=True)
            video = broadcast.track("video")
            await wait_for_track(started, "room1", "video")
            video.write_frame(video_frame(0), keyframe=True)
            written_at[0] = trio.current_time()
            async with subscribe_datagrams(url(started, proxy_port), "room1", "video",
                                           certificate_sha256=sha, config=viewer_config) as subscription:
                assert subscription.video

                async def publish() -> None:
                    # Past FRAMES the publisher goes on, so the last frames under test
                    # are followed by packets that reveal their losses.
                    for index in range(1, 10 * FRAMES):
                        await trio.sleep(0.02)
                        video.write_frame(video_frame(index), keyframe=index % GOP == 0)
                        written_at[index] = trio.current_time()

                with trio.fail_after(60):
                    async with trio.open_nursery() as inner:
                        inner.start_soon(publish)
                        async for frame in subscription.frames:
                            received.append(frame)
                            if int.from_bytes(frame.payload[4:8], "big") >= FRAMES:
                                break
                        inner.cancel_scope.cancel()
                stats = subscription.statistics()
                before_keyframe = subscription.frames_before_keyframe
                dropped = subscription.frames_dropped
        nursery.cancel_scope.cancel()

    indices = [int.from_bytes(f.payload[4:8], "big") for f in received]
    # In order and exactly once, each payload intact.
    assert indices == sorted(set(indices))
    for frame, index in zip(received, indices):
        assert frame.payload == video_frame(index)
        assert frame.timestamp_us == index * 20_000
        assert frame.keyframe == (index % GOP == 0)
    # The first frame is the newest group's keyframe; every frame delivered can be
    # decoded: its group's frames before it were all delivered too.
    assert received[0].keyframe
    delivered = set(indices)
    for index in indices:
        assert all(i in delivered for i in range(index - index % GOP, index))
    # Whatever was not delivered was counted as skipped, never delivered late.
    first, last = indices[0], indices[-1]
    missing = (last - first + 1) - len(indices)
    assert dropped == 0 and before_keyframe == 0
    assert stats.frames_delivered >= len(indices)
    assert missing <= stats.frames_skipped + stats.frames_skipped_to_keyframe
    delays_ms = sorted(1000 * (f.arrival_s - written_at[i]) for f, i in zip(received, indices))
    print(f"\nloss {loss:.0%} fec_k {fec_k} playout >= {delay_ms:.0f} ms: frames {first}..{last}: delivered {len(indices)}, "
          f"missing {missing}; {stats}; added latency p50 {statistics.median(delays_ms):.1f} ms, "
          f"p99 {delays_ms[int(0.99 * (len(delays_ms) - 1))]:.1f} ms")
    if loss == 0.0 and delay_ms >= 500:
        assert missing == 0 and stats.lost == 0
    elif loss:
        assert stats.lost + stats.recovered_fec + stats.recovered_resend > 0
        if fec_k:
            assert stats.recovered_fec > 0
        else:
            assert stats.recovered_resend > 0 and stats.recovered_fec == 0
    metrics = started.app.metrics.render()
    assert "shopcast_datagram_frames_packetized_total" in metrics


async def test_demo_room_video_and_audio_over_datagrams(running_server):
    sha = running_server.app.certificate.sha256_hex
    async with connect_datagrams(url(running_server), certificate_sha256=sha) as client:
        with trio.fail_after(10):
            while "demo" not in running_server.app.relay.broadcasts or \
                    "video" not in running_server.app.relay.broadcasts["demo"].tracks:
                await trio.sleep(0.01)
        video = await client.subscribe("demo", "video")
        audio = await client.subscribe("demo", "audio")
        with trio.fail_after(10):
            await video.accepted.wait()
            await audio.accepted.wait()
        assert video.error is None and audio.error is None
        assert video.video and not audio.video
        assert video.track_id != audio.track_id
        with trio.fail_after(15):
            first = await video.frames.receive()
            times = [first.timestamp_us]
            async for frame in video.frames:
                times.append(frame.timestamp_us)
                if len(times) == 30:
                    break
            audio_frames = [await audio.frames.receive() for _ in range(20)]
        assert first.keyframe
        assert times == sorted(times)
        audio_times = [f.timestamp_us for f in audio_frames]
        assert audio_times == sorted(audio_times)
        await client.unsubscribe(video)
        with trio.fail_after(10):
            await video.ended.wait()
        assert video.error is None
    server = running_server.app.datagram
    with trio.fail_after(10):
        while server.fanouts or server.stats.sessions_open:
            await trio.sleep(0.01)


async def test_private_broadcast_needs_a_token_for_its_room(server_factory):
    started = await server_factory({"demo": {"enabled": False}})
    sha = started.app.certificate.sha256_hex
    secret = started.app.relay.publish("rehearsal", private=True)
    secret.track("video").write_frame(encode_frame(1, b"secret"), keyframe=True)
    with pytest.raises(DatagramRefused) as refused:
        async with subscribe_datagrams(url(started), "rehearsal", "video", certificate_sha256=sha):
            pass
    assert refused.value.code == ErrorCode.UNAUTHORIZED
    with pytest.raises(DatagramRefused) as refused:
        async with subscribe_datagrams(url(started), "rehearsal", "video", certificate_sha256=sha,
                                       token=token(started, "viewer", "other-room")):
            pass
    assert refused.value.code == ErrorCode.UNAUTHORIZED
    async with subscribe_datagrams(url(started), "rehearsal", "video", certificate_sha256=sha,
                                   token=token(started, "viewer", "rehearsal")) as subscription:
        with trio.fail_after(10):
            frame = await subscription.frames.receive()
        assert frame.payload == encode_frame(1, b"secret")
    with pytest.raises(DatagramRefused) as refused:
        async with subscribe_datagrams(url(started), "no-such-room", "video", certificate_sha256=sha):
            pass
    assert refused.value.code == ErrorCode.NOT_FOUND
    assert started.app.datagram.stats.refused["unauthorized"] == 2


def _length(body: bytes) -> bytes:
    return len(body).to_bytes(CONTROL_LENGTH_BYTES, "big") + body


def _nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\x00"


@pytest.mark.parametrize(("garbage", "reason"), [
    (b"\xff\xff\xff\xff", "declares 4294967295 bytes"),          # a huge declared size
    (_length(_nested(3000)), "msgpack"),                             # nesting deeper than anything valid
    (_length(b"\x81\xa4type\xa9subscribe"), "missing"),              # keys missing
    (_length(b"\x84\xa4type\xa9subscribe\xa2id\xc3\xa9broadcast\xa1x\xa5track\xa1y"), "id must be int"),
    (_length(b"\x93\x01\x02\x03"), "must be a map"),                 # not a map
    (_length(b"\x81\xa4type\xa4warp"), "unknown control message type"),
    (_length(b"\xc1"), "msgpack"),                                   # a byte msgpack never uses
    (encode_control_message(Subscribe(0, "demo", "video"))[:-1] + b"\xda\xff\xff", "msgpack"),
])
async def test_malformed_control_input_closes_only_that_session(running_server, garbage, reason):
    sha = running_server.app.certificate.sha256_hex
    async with subscribe_datagrams(url(running_server), "demo", "video", certificate_sha256=sha) as healthy:
        async with open_webtransport(url(running_server), certificate_sha256=sha) as raw:
            stream = await raw.open_bidi_stream()
            await stream.send_all(garbage)
            with trio.fail_after(10):
                await raw.wait_closed()
            assert raw.close_code in (ErrorCode.DECODE, ErrorCode.PROTOCOL_VIOLATION, ErrorCode.BOUNDS_EXCEEDED)
            assert reason in raw.close_reason
        with trio.fail_after(10):
            frames = [await healthy.frames.receive() for _ in range(5)]
        assert [f.timestamp_us for f in frames] == sorted(f.timestamp_us for f in frames)
    assert running_server.app.datagram.stats.protocol_errors == 1


@pytest.mark.parametrize(("datagram", "reason"), [
    (b"\x07\x00\x00\x00\x01", "only NACKs"),
    (b"\x01\x00\x00\x00", "whole 16-bit"),
    (b"\x01\x00\x00", "at least one"),
    (encode_nack(0, list(range(300))), "the limit is 256"),
])
async def test_malformed_nack_closes_only_that_session(running_server, datagram, reason):
    sha = running_server.app.certificate.sha256_hex
    async with subscribe_datagrams(url(running_server), "demo", "video", certificate_sha256=sha) as healthy, \
            subscribe_datagrams(url(running_server), "demo", "audio", certificate_sha256=sha) as victim:
        victim.client.session.send_datagram(datagram)
        with trio.fail_after(10):
            await victim.client.session.wait_closed()
        assert reason in victim.client.session.close_reason
        with trio.fail_after(10):
            frames = [await healthy.frames.receive() for _ in range(5)]
        assert len(frames) == 5
