"""What the chat must keep outlives a restart of the server (SQLite on disk):
the owner's transcript, the audit log, room modes, the blocklist, bans and
mutes; unban and unmute lift them; a banned account may not subscribe to the
room's chat track."""

import functools
import json
import time

import pytest
import trio

from shopcast.client import connect, connect_chat
from shopcast.server._app import run_server
from shopcast.server._config import ConfigError, load_config
from shopcast.server._webtransport import SessionClosed
from shopcast.server.moq import ErrorCode


def config_for(data_dir, **chat):
    return load_config(environ={}, overrides={
        "server": {"host": "127.0.0.1", "port": 0, "drain_timeout_s": 2.0, "data_dir": str(data_dir)},
        "rtmp": {"port": 0}, "chat": chat})


def token(app, role: str, subject: str) -> str:
    return app.tokens.mint(subject=subject, role=role, room="demo", ttl_s=600, now=time.time())


def chat(started, tok):
    return connect_chat(f"https://127.0.0.1:{started.port}", "demo", tok,
                        certificate_sha256=started.app.certificate.sha256_hex)


async def test_chat_state_and_transcript_outlive_a_restart(tmp_path, http_get):
    data_dir = tmp_path / "data"
    before = time.time()
    async with trio.open_nursery() as nursery:
        shutdown = trio.Event()
        first = await nursery.start(functools.partial(run_server, config_for(data_dir), shutdown=shutdown))
        app = first.app
        async with chat(first, token(app, "host", "the-host")) as host, \
                chat(first, token(app, "viewer", "alice")) as alice:
            said = await alice.request(type="message", text="before the restart 🌙")
            assert said["type"] == "ok"
            assert (await host.request(type="mode", slow_mode_s=30, hold_for_review=True))["type"] == "ok"
            assert (await host.request(type="blocklist", terms=["ｓｐａｍ"]))["type"] == "ok"  # fullwidth
            assert (await host.request(type="ban", account="troll"))["type"] == "ok"
            assert (await host.request(type="mute", account="spammer", seconds=3600))["type"] == "ok"
        shutdown.set()
    async with trio.open_nursery() as nursery:
        shutdown = trio.Event()
        second = await nursery.start(functools.partial(run_server, config_for(data_dir), shutdown=shutdown))
        app = second.app
        host_token = token(app, "host", "the-host")
        # The owner's transcript and the audit log, from the database, with wall-clock times.
        status, body = await http_get(second, "/api/v1/rooms/demo/chat", host_token)
        assert status == 200
        messages = json.loads(body)["messages"]
        assert [(m["id"], m["text"], m["status"]) for m in messages] == [
            (said["id"], "before the restart 🌙", "visible")]
        assert before <= messages[0]["t"] <= time.time()
        status, body = await http_get(second, "/api/v1/rooms/demo/chat/audit", host_token)
        assert status == 200
        entries = json.loads(body)["entries"]
        assert [(e["action"], e["target"]) for e in entries] == [
            ("mode", "demo"), ("blocklist", "demo"), ("ban", "troll"), ("mute", "spammer")]
        assert all(before <= e["t"] <= time.time() for e in entries)
        # The ban holds: no chat session, and no subscription to the chat track.
        with pytest.raises(SessionClosed) as info:
            async with chat(second, token(app, "viewer", "troll")):
                pass
        assert "banned" in str(info.value)
        async with connect(f"https://127.0.0.1:{second.port}/moq", token=token(app, "viewer", "troll"),
                           certificate_sha256=app.certificate.sha256_hex) as watcher:
            refused = await watcher.subscribe("demo", "chat")
            with trio.fail_after(10):
                await refused.ended.wait()
            assert refused.end_code == ErrorCode.UNAUTHORIZED
        async with chat(second, host_token) as host, \
                chat(second, token(app, "viewer", "spammer")) as spammer, \
                chat(second, token(app, "viewer", "bob")) as bob:
            assert [m["id"] for m in host.history] == [said["id"]]
            assert (await spammer.request(type="message", text="let me out"))["code"] == "muted"
            # Hold-for-review and the blocklist (normalised) hold; so does slow mode.
            assert (await bob.request(type="message", text="cheap SPAM here"))["type"] == "held"
            assert (await bob.request(type="message", text="hello"))["code"] == "slow_mode"
            # Unmute and unban lift them; lifting what is not there is refused.
            assert (await host.request(type="unmute", account="spammer"))["type"] == "ok"
            assert (await host.request(type="unmute", account="spammer"))["code"] == "not_muted"
            new = await spammer.request(type="message", text="thanks")
            assert new["type"] == "ok" and new["id"] > said["id"]  # ids go on after a restart
            assert (await host.request(type="unban", account="troll"))["type"] == "ok"
            assert (await host.request(type="unban", account="troll"))["code"] == "not_banned"
            async with chat(second, token(app, "viewer", "troll")) as troll:
                assert (await troll.request(type="message", text="sorry"))["type"] == "ok"
        shutdown.set()


def test_a_message_cap_that_does_not_fit_in_a_request_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        config_for("/nonexistent", max_message_bytes=4000, max_request_bytes=2048)
    assert "chat.max_message_bytes" in str(info.value) and "chat.max_request_bytes" in str(info.value)
