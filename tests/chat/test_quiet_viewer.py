"""A viewer of a quiet track keeps its connection: the Python client PINGs
inside the idle timeout in force (the smaller of its own and the server's),
so a chat subscriber that hears nothing for several idle timeouts still gets
the next message."""

import time

import msgpack
import trio

from shopcast.client import connect, connect_chat

IDLE_TIMEOUT_S = 1.0


async def test_a_quiet_subscription_outlives_the_idle_timeout(server_factory):
    started = await server_factory({"quic": {"idle_timeout_s": IDLE_TIMEOUT_S}})
    sha = started.app.certificate.sha256_hex
    base = f"https://127.0.0.1:{started.port}"
    async with connect(f"{base}/moq", certificate_sha256=sha) as watcher:
        chat = await watcher.subscribe("demo", "chat")
        await chat.accepted.wait()
        # Nothing is said for three idle timeouts: only the client's PINGs
        # keep the connection open.
        await trio.sleep(3 * IDLE_TIMEOUT_S)
        assert not chat.ended.is_set()
        token = started.app.tokens.mint(subject="alice", role="viewer", room="demo", ttl_s=600,
                                        now=time.time())
        async with connect_chat(base, "demo", token, certificate_sha256=sha) as alice:
            assert (await alice.request(type="message", text="still there? 👀"))["type"] == "ok"
            with trio.fail_after(10):
                texts = []
                while "still there? 👀" not in texts:
                    texts += [m["text"] for m in msgpack.unpackb((await chat.frames.receive()).payload)["messages"]]
