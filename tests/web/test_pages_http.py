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

    started = await server_factory({"web": {"player_latency_ms": 420, "chat_messages_shown": 7},
                                    "demo": {"enabled": False}})
    body = (await make_client(started).call("GET", "/live/room1")).body
    settings = json.loads(html.unescape(re.search(r'data-settings="([^"]*)"', body).group(1)))
    assert settings["playerLatencyMs"] == 420 and settings["chatMessagesShown"] == 7
    assert settings["demoRoom"] is None
    with pytest.raises(ConfigError, match="player_latency_ms"):
        load_config(environ={}, overrides={"web": {"player_latency_ms": -1}})


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
