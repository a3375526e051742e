"""The page routes over HTTPS without a browser: every page is an HTML shell naming its module,
every module and the player bundle are served with the right types, and the demo room's chat
token route refuses what it must."""

from __future__ import annotations

import re

import pytest

from shopcast.server._pages import PAGES
from shopcast.server._static import STATIC_DIR


def _path_for(pattern: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "demo", pattern)


async def test_every_page_route_serves_its_shell_and_module(web_api):
    for pattern, page, _ in PAGES:
        reply = await web_api.call("GET", _path_for(pattern))
        assert reply.status == 200, (pattern, reply.body)
        assert reply.headers["content-type"] == "text/html; charset=utf-8"
        assert f'src="/static/pages/{page}.js"' in reply.body
        module = await web_api.call("GET", f"/static/pages/{page}.js")
        assert module.status == 200 and module.headers["content-type"].startswith("text/javascript")
    for path in ("lib/api.js", "lib/i18n.js", "lib/chat.js", "lib/msgpack.js", "lib/player.js",
                 "lib/storage.js", "lib/datagram.js", "embed.js", "img/product.svg",
                 "app.css", "vendor/moq-watch.js"):
        reply = await web_api.call("GET", f"/static/{path}")
        assert reply.status == 200, path
        body = reply.body.encode() if isinstance(reply.body, str) else reply.body
        assert body == (STATIC_DIR / path).read_bytes(), path


async def test_static_refuses_paths_out_of_its_root(web_api):
    for path in ("/static/../_pages.py", "/static/%2e%2e/_pages.py", "/static/.hidden",
                 "/static/nope.js"):
        reply = await web_api.call("GET", path)
        assert reply.status == 404, path
        assert reply.body["error"]["field"] == "path"


async def test_settings_in_the_shell_come_from_config(server_factory, make_client):
    import html
    import json

    from shopcast.server._config import ConfigError, load_config

    started = await server_factory({"web": {"player_latency_ms": 420, "chat_messages_shown": 7,
                                            "order_poll_interval_s": 0.5, "order_poll_max": 9,
                                            "datagram_tick_ms": 7, "datagram_nack_after_ms": 33,
                                            "datagram_held_packets_max": 77, "datagram_frames_pending_max": 55,
                                            "datagram_audio_ahead_max_s": 0.25},
                                    "demo": {"enabled": False}})
    body = (await make_client(started).call("GET", "/live/room1")).body
    settings = json.loads(html.unescape(re.search(r'data-settings="([^"]*)"', body).group(1)))
    assert settings["playerLatencyMs"] == 420 and settings["chatMessagesShown"] == 7
    assert (settings["orderPollIntervalS"], settings["orderPollMax"]) == (0.5, 9)
    assert settings["datagram"] == {"tickMs": 7, "nackAfterMs": 33, "heldPacketsMax": 77,
                                    "framesPendingMax": 55, "audioAheadMaxS": 0.25}
    assert settings["demoRoom"] is None
    with pytest.raises(ConfigError, match="player_latency_ms"):
        load_config(environ={}, overrides={"web": {"player_latency_ms": -1}})
    with pytest.raises(ConfigError, match="datagram_tick_ms"):
        load_config(environ={}, overrides={"web": {"datagram_tick_ms": 0}})


@pytest.mark.parametrize("role", ["audience", "host"])
async def test_demo_token_needs_an_account_token_and_is_for_the_demo_room(web_api, role):
    import time

    app = web_api.app
    missing = await web_api.call("POST", "/api/v1/demo/media-token", {})
    assert missing.status == 401 and missing.body["error"]["field"] == "authorization"
    bad = await web_api.call("POST", "/api/v1/demo/media-token", {}, token="not-a-token")
    assert bad.status == 401
    token = await web_api.user(f"someone_{role}", role=role)
    reply = await web_api.call("POST", "/api/v1/demo/media-token", {}, token=token)
    assert reply.status == 200, reply.body
    claims = app.tokens.verify_untrusted(reply.body["token"], now=time.time())
    assert (claims.role, claims.room) == ("viewer", "demo")
    # The service keeps answering others.
    assert (await web_api.call("GET", "/healthz")).status == 200


async def test_serve_prints_the_home_and_demo_room_urls_and_they_answer(web_api, capsys):
    from shopcast.server._cli import _print_banner

    _print_banner(web_api.started)
    printed = capsys.readouterr().out
    port = web_api.port
    urls = re.findall(r"https://localhost:\d+/\S*", printed)
    assert f"https://localhost:{port}/" in urls
    assert f"https://localhost:{port}/live/demo" in urls
    assert f"https://localhost:{port}/host" in urls
    for url in (f"https://localhost:{port}/", f"https://localhost:{port}/live/demo"):
        reply = await web_api.call("GET", url.removeprefix(f"https://localhost:{port}"))
        assert reply.status == 200 and "/static/pages/" in reply.body
    console = await web_api.call("GET", "/host")
    assert console.status == 200 and "/static/host/console.js" in console.body


def _settings(body: str) -> dict:
    import html
    import json

    return json.loads(html.unescape(re.search(r'data-settings="([^"]*)"', body).group(1)))


async def test_viewer_token_for_guests_and_accounts_and_what_it_refuses(web_api, room_body):
    import time

    app = web_api.app
    host = await web_api.user("tokhost", "host")
    room_id = (await web_api.call("POST", "/api/v1/rooms", room_body("Token room"), token=host)).body["room"]["id"]
    path = f"/api/v1/rooms/{room_id}/viewer-token"
    guest_id = "g_0123456789abcdef-XY"
    first = await web_api.call("POST", path, {"guest_id": guest_id})
    again = await web_api.call("POST", path, {"guest_id": guest_id})
    assert first.status == 200, first.body
    assert first.body["subject"] == again.body["subject"] == f"guest:{guest_id}"
    claims = app.tokens.verify_untrusted(first.body["token"], now=time.time())
    assert (claims.subject, claims.role, claims.room) == (f"guest:{guest_id}", "viewer", room_id)
    assert first.body["expires_at"].endswith("Z")
    # No guest id: a new random one each time.
    fresh = [(await web_api.call("POST", path, raw=b"")).body["subject"] for _ in range(2)]
    assert fresh[0] != fresh[1] and all(s.startswith("guest:") for s in fresh)
    # An account's token: the subject is the account id.
    buyer = await web_api.user("tokbuyer", "audience")
    me = (await web_api.call("GET", "/api/v1/me", token=buyer)).body
    mine = await web_api.call("POST", path, {}, token=buyer)
    assert mine.status == 200 and mine.body["subject"] == me["id"], mine.body
    # The demo room (no room of the rooms plugin) has viewer tokens too.
    assert (await web_api.call("POST", "/api/v1/rooms/demo/viewer-token", {"guest_id": guest_id})).status == 200
    # Refused, naming the field.
    for body, field in (({"guest_id": "short"}, "guest_id"), ({"guest_id": "x" * 65}, "guest_id"),
                        ({"guest_id": "bad id with spaces!!"}, "guest_id"), ({"guest_id": 7}, "guest_id"),
                        ({"who": "me"}, "who")):
        reply = await web_api.call("POST", path, body)
        assert reply.status == 400 and reply.error_field == field, (body, reply.body)
    assert (await web_api.call("POST", path, raw=b"{nope")).status == 400
    assert (await web_api.call("POST", path, {}, token="not-a-token")).status == 401
    missing = await web_api.call("POST", "/api/v1/rooms/nosuchroom/viewer-token", {})
    assert missing.status == 404 and missing.error_field == "room_id"
    # The service keeps answering others.
    assert (await web_api.call("GET", "/healthz")).status == 200


async def test_terms_page_is_served_from_its_file_and_is_the_default_terms_url(server_factory, make_client, tmp_path):
    terms = tmp_path / "terms.txt"
    terms.write_text("Our house rules\n\nBe kind & pay on time.\n\nSecond paragraph.", encoding="utf-8")
    started = await server_factory({"web": {"terms_file": str(terms)}, "accounts": {"terms_version": "2026-11"}})
    api = make_client(started)
    assert (await api.call("GET", "/api/v1/terms")).body == {"version": "2026-11", "url": "/terms"}
    page = await api.call("GET", "/terms")
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<h1>Our house rules</h1>" in page.body and "Be kind &amp; pay on time." in page.body
    assert 'id="terms-version">Version 2026-11<' in page.body
    # The built-in text when no file is configured.
    default = await make_client(await server_factory({})).call("GET", "/terms")
    assert "shopcast terms of service" in default.body


async def test_share_page_redirects_to_the_live_page_and_replay_of_a_room_not_ended(web_api, room_body):
    host = await web_api.user("sharehost", "host")
    room_id = (await web_api.call("POST", "/api/v1/rooms", room_body("Share room"), token=host)).body["room"]["id"]
    share = await web_api.call("GET", f"/r/{room_id}")
    assert share.status == 200 and 'property="og:title" content="Share room"' in share.body
    assert f'<meta http-equiv="refresh" content="0; url=/live/{room_id}?from=share">' in share.body
    assert f'href="/live/{room_id}?from=share"' in share.body
    # A room not ended: its live page is served (no redirect), its replay page knows there is none.
    live = await web_api.call("GET", f"/live/{room_id}?from=share")
    assert live.status == 200 and "replayAvailable" not in _settings(live.body)
    replay = await web_api.call("GET", f"/replay/{room_id}")
    assert replay.status == 200 and _settings(replay.body)["replayAvailable"] is False
    assert _settings((await web_api.call("GET", "/replay/demo")).body)["replayAvailable"] is False
