"""Chat and view counts over loopback: chat sessions at /chat, the room's
chat and viewers tracks over moq-lite, moderation, bad input, downloads."""

import contextlib
import json
import time

import msgpack
import pytest
import trio

from shopcast.client import connect, connect_chat
from shopcast.server._client import open_webtransport


def token(started, role: str, subject: str, room: str = "demo") -> str:
    return started.app.tokens.mint(subject=subject, role=role, room=room, ttl_s=600, now=time.time())


def chat_url(started, tok: str, room: str = "demo") -> str:
    return f"https://127.0.0.1:{started.port}/chat?room={room}&token={tok}"


def open_chat(started, tok, room="demo"):
    return connect_chat(f"https://127.0.0.1:{started.port}", room, tok,
                        certificate_sha256=started.app.certificate.sha256_hex)


async def test_viewers_chat_with_each_other_and_see_counts(running_server):
    # Sessions close in reverse order, in this task (trio nurseries nest).
    async with contextlib.AsyncExitStack() as stack:
        started = running_server
        sha = started.app.certificate.sha256_hex
        alice = await stack.enter_async_context(open_chat(started, token(started, "viewer", "alice")))
        bob = await stack.enter_async_context(open_chat(started, token(started, "viewer", "bob")))
        async with connect(f"https://127.0.0.1:{started.port}/moq", certificate_sha256=sha) as watcher:
            chat_track = await watcher.subscribe("demo", "chat")
            viewers_track = await watcher.subscribe("demo", "viewers")
            reply = await alice.request(type="message", text="hello bob 👋")
            assert reply["type"] == "ok"
            first = reply["id"]
            reply = await bob.request(type="message", text="hi alice! 🎉", reply_to=first)
            assert reply["type"] == "ok"
            await alice.request(type="reaction", kind="heart")
            seen, reactions = [], {}
            with trio.fail_after(10):
                while len(seen) < 2 or not reactions:
                    batch = msgpack.unpackb((await chat_track.frames.receive()).payload)
                    # Server time is wall-clock Unix seconds, in batches and messages.
                    assert abs(batch["t"] - time.time()) < 60
                    assert all(abs(m["t"] - time.time()) < 60 for m in batch["messages"])
                    seen += [(m["name"], m["text"], m["reply_to"]) for m in batch["messages"]]
                    reactions.update(batch["reactions"])
            assert seen == [("alice", "hello bob 👋", None), ("bob", "hi alice! 🎉", first)]
            assert reactions == {"heart": 1}
            # The watcher is one viewer; a third joins and the count goes up.
            with trio.fail_after(10):
                counts = msgpack.unpackb((await viewers_track.frames.receive()).payload)
                while counts["concurrent"] < 1:
                    counts = msgpack.unpackb((await viewers_track.frames.receive()).payload)
            before = counts["concurrent"]
            # The host's console watching its own room is not audience: not counted. (Its
            # subscribe is answered before the third viewer's, so the count below is exact.)
            async with connect(f"https://127.0.0.1:{started.port}/moq", token=token(started, "host", "the-host"),
                               certificate_sha256=sha) as console:
                host_chat = await console.subscribe("demo", "chat")
                await host_chat.accepted.wait()
                assert started.app.relay.broadcasts["demo"].viewers.snapshot()["concurrent"] == before
            async with connect(f"https://127.0.0.1:{started.port}/moq", certificate_sha256=sha) as third:
                await third.subscribe("demo", "video")
                with trio.fail_after(10):
                    while counts["concurrent"] <= before:
                        counts = msgpack.unpackb((await viewers_track.frames.receive()).payload)
                assert counts["peak"] >= before + 1
                assert counts["concurrent"] == before + 1
        # A late joiner gets the history.
        carol = await stack.enter_async_context(open_chat(started, token(started, "viewer", "carol")))
        history = {"messages": carol.history}
        assert [m["text"] for m in history["messages"]] == ["hello bob 👋", "hi alice! 🎉"]


async def test_moderator_mute_takes_effect_at_once_and_viewers_cannot_moderate(running_server, http_get):
    # Sessions close in reverse order, in this task (trio nurseries nest).
    async with contextlib.AsyncExitStack() as stack:
        started = running_server
        host = await stack.enter_async_context(open_chat(started, token(started, "host", "the-host")))
        viewer = await stack.enter_async_context(open_chat(started, token(started, "viewer", "spammer")))
        sent = await viewer.request(type="message", text="buy followers")
        assert sent["type"] == "ok"
        refused = await viewer.request(type="mute", account="the-host", seconds=60)
        assert refused["type"] == "notice" and refused["code"] == "forbidden"
        assert (await host.request(type="mute", account="spammer", seconds=60))["type"] == "ok"
        muted = await viewer.request(type="message", text="still here?")
        assert muted["code"] == "muted" and muted["retry_after_s"] > 0
        room = started.app.interaction.rooms["demo"]
        assert sent["id"] not in [m.id for m in room.history()]
        before = time.time()
        # A ban ends the banned viewer's chat session.
        assert (await host.request(type="ban", account="spammer"))["type"] == "ok"
        with trio.fail_after(10):
            await viewer.session.wait_closed()
        assert "banned" in viewer.session.close_reason
        # Every action is in the audit log, with wall-clock times, for moderators only.
        status, body = await http_get(started, "/api/v1/rooms/demo/chat/audit", token(started, "host", "the-host"))
        assert status == 200
        entries = json.loads(body)["entries"]
        assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
            ("the-host", "mute", "spammer"), ("the-host", "ban", "spammer")]
        assert all(before - 60 <= e["t"] <= time.time() for e in entries)
        status, body = await http_get(started, "/api/v1/rooms/demo/chat/audit", token(started, "viewer", "v"))
        assert status == 403


@pytest.mark.parametrize("payload, field", [
    (msgpack.packb({"type": "message", "text": "x" * 600}), "text"),
    (msgpack.packb({"type": "message", "text": 42}), "text"),
    (b"\xa2\xc3\x28", "request"),                    # invalid UTF-8
    (b"\x91" * 1500 + b"\xc0", "request"),            # deeply nested
    (b"\xdb\x7f\xff\xff\xff", "request"),            # a 2 GiB string declared
])
async def test_bad_messages_get_an_error_for_that_sender_alone(running_server, payload, field):
    # Sessions close in reverse order, in this task (trio nurseries nest).
    async with contextlib.AsyncExitStack() as stack:
        started = running_server
        bad = await stack.enter_async_context(open_chat(started, token(started, "viewer", "mallory")))
        good = await stack.enter_async_context(open_chat(started, token(started, "viewer", "grace")))
        await bad.send_raw(payload)
        notice = await bad.receive()
        assert notice["type"] == "notice" and notice["field"] == field
        assert (await good.request(type="message", text="all fine here"))["type"] == "ok"
        assert (await bad.request(type="message", text="and me, properly"))["type"] == "ok"


async def test_chat_needs_a_token_for_the_room(running_server):
    started = running_server
    for url in (f"https://127.0.0.1:{started.port}/chat?room=demo",
                chat_url(started, token(started, "viewer", "x", room="other"))):
        async with open_webtransport(url, certificate_sha256=started.app.certificate.sha256_hex) as s:
            with trio.fail_after(10):
                await s.wait_closed()
            assert s.close_code == 6


async def test_owner_downloads_the_chat_as_csv_and_json(running_server, http_get):
    # Sessions close in reverse order, in this task (trio nurseries nest).
    async with contextlib.AsyncExitStack() as stack:
        started = running_server
        alice = await stack.enter_async_context(open_chat(started, token(started, "viewer", "alice")))
        before = time.time()
        await alice.request(type="message", text='quotes "and", commas')
        host = token(started, "host", "the-host")
        status, body = await http_get(started, "/api/v1/rooms/demo/chat", host)
        assert status == 200
        messages = json.loads(body)["messages"]
        assert [m["text"] for m in messages] == ['quotes "and", commas']
        assert before <= messages[0]["t"] <= time.time()  # wall-clock Unix seconds
        status, body = await http_get(started, "/api/v1/rooms/demo/chat?format=csv", host)
        assert status == 200 and body.decode().splitlines()[1].endswith('"quotes ""and"", commas"')
        status, body = await http_get(started, "/api/v1/rooms/demo/chat", token(started, "viewer", "v"))
        assert status == 403
        status, body = await http_get(started, "/api/v1/rooms/demo/viewers", None)
        assert status == 200 and set(json.loads(body)) == {"room_id", "concurrent", "unique", "peak"}





async def test_a_ban_ends_the_banned_accounts_chat_track_subscription(server_factory):
    started = await server_factory({"chat": {"group_ms": 100}})
    sha = started.app.certificate.sha256_hex
    moq_url = f"https://127.0.0.1:{started.port}/moq"
    async with contextlib.AsyncExitStack() as stack:
        host = await stack.enter_async_context(open_chat(started, token(started, "host", "the-host")))
        troll = await stack.enter_async_context(
            connect(moq_url, token=token(started, "viewer", "troll"), certificate_sha256=sha))
        other = await stack.enter_async_context(
            connect(moq_url, token=token(started, "viewer", "fine"), certificate_sha256=sha))
        troll_chat = await troll.subscribe("demo", "chat")
        other_chat = await other.subscribe("demo", "chat")
        with trio.fail_after(10):
            await troll_chat.accepted.wait()
            await other_chat.accepted.wait()
        assert (await host.request(type="ban", account="troll"))["type"] == "ok"
        # At the chat track's next group the banned account's subscription ends.
        with trio.fail_after(20):
            while not troll_chat.ended.is_set():
                assert (await host.request(type="message", text="carry on"))["type"] == "ok"
                with trio.move_on_after(0.5):
                    await troll_chat.ended.wait()
        assert troll_chat.end_code == 6  # UNAUTHORIZED
        assert not other_chat.ended.is_set()
        # And it may not subscribe again while banned.
        again = await troll.subscribe("demo", "chat")
        with trio.fail_after(10):
            await again.ended.wait()
        assert again.end_code == 6
