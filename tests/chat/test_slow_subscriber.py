"""A chat track subscriber that stops reading (a frozen machine, behind a UDP
proxy) is dropped from the chat track once it is more than
``chat.subscriber_backlog_bytes`` behind: its subscription ends with
BOUNDS_EXCEEDED, it is counted, everyone else gets every message, and it
can subscribe again (and gets the history from a new chat session)."""

import json
import time

import msgpack
import trio

from shopcast.bench._udp_proxy import UdpProxy
from shopcast.client import connect, connect_chat
from shopcast.server.moq import ErrorCode

BACKLOG_BYTES = 4096


async def test_a_frozen_chat_subscriber_is_dropped_counted_and_can_rejoin(server_factory, http_get):
    started = await server_factory({"chat": {"subscriber_backlog_bytes": BACKLOG_BYTES}})
    app = started.app
    sha = app.certificate.sha256_hex
    base = f"https://127.0.0.1:{started.port}"
    host_token = app.tokens.mint(subject="the-host", role="host", room="demo", ttl_s=600, now=time.time())
    async with trio.open_nursery() as nursery:
        proxy = UdpProxy(("127.0.0.1", started.port))
        proxy_port = await nursery.start(proxy.run)
        async with connect(f"{base}/moq", certificate_sha256=sha) as fast, \
                connect(f"https://127.0.0.1:{proxy_port}/moq", certificate_sha256=sha) as slow, \
                connect_chat(base, "demo", host_token, certificate_sha256=sha) as host:
            fast_chat = await fast.subscribe("demo", "chat")
            slow_chat = await slow.subscribe("demo", "chat")
            with trio.fail_after(10):
                await fast_chat.accepted.wait()
                await slow_chat.accepted.wait()
            proxy.frozen = True  # the slow viewer's machine stops: no acks, no reads
            sent = []
            with trio.fail_after(60):
                # 300 bytes each, so the bound is passed within some 15 of them.
                while app.interaction.subscribers_dropped == 0:
                    assert len(sent) < 200, "the frozen subscriber was never dropped"
                    reply = await host.request(type="message", text=f"{len(sent):03d} " + "x" * 296)
                    assert reply["type"] == "ok"
                    sent.append(reply["id"])
            assert len(sent) * 300 > BACKLOG_BYTES
            # The fast subscriber got every message, in order.
            seen = []
            with trio.fail_after(20):
                while seen[-1:] != sent[-1:]:
                    batch = msgpack.unpackb((await fast_chat.frames.receive()).payload)
                    seen += [m["id"] for m in batch["messages"]]
            assert seen[seen.index(sent[0]):] == sent
            assert "shopcast_chat_subscribers_dropped_total 1" in app.metrics.render()
            # The frozen viewer comes back: it is told its subscription ended, and why.
            proxy.frozen = False
            with trio.fail_after(30):
                await slow_chat.ended.wait()
            assert slow_chat.end_code == ErrorCode.BOUNDS_EXCEEDED
            # It subscribes again and hears what is said next.
            again = await slow.subscribe("demo", "chat")
            with trio.fail_after(10):
                await again.accepted.wait()
            after = (await host.request(type="message", text="welcome back 👋"))["id"]
            with trio.fail_after(20):
                heard = []
                while after not in heard:
                    batch = msgpack.unpackb((await again.frames.receive()).payload)
                    heard += [m["id"] for m in batch["messages"]]
            # A new chat session gives it the history it missed.
            viewer_token = app.tokens.mint(subject="slowpoke", role="viewer", room="demo", ttl_s=600,
                                           now=time.time())
            async with connect_chat(f"https://127.0.0.1:{proxy_port}", "demo", viewer_token,
                                    certificate_sha256=sha) as rejoined:
                assert {sent[-1], after} <= {m["id"] for m in rejoined.history}
            # The room's chat stats count it too.
            status, body = await http_get(started, "/api/v1/rooms/demo/chat", host_token)
            assert status == 200 and json.loads(body)["stats"]["subscribers_dropped"] == 1
        nursery.cancel_scope.cancel()
