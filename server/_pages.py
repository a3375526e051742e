"""The viewer pages: HTML routes (home, live room, embed, upcoming, search, accounts, orders,
statistics) and ``/static/{path}`` from server/static/.

Every page is the same small HTML shell naming its ES module under /static/pages/; the module
builds the page from the JSON API, so pages need no server-side templates and no build step.
The one bundled file, /static/vendor/moq-watch.js (the @moq/watch player), is built by
``python -m shopcast.server._pages build`` from server/static/src/ with the packages pinned in
tests/web/package-lock.json; tests/web/test_bundle.py rebuilds it and checks it is identical.
"""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from shopcast.server._routing import HTTPError, Request, Response
from shopcast.server._static import STATIC_DIR, StaticFiles

if TYPE_CHECKING:
    from shopcast.server._app import ServerApp

__all__ = ["PAGES", "build_player_bundle", "documented_routes", "register_pages"]

#: (route pattern, page module, route name). Path parameters reach the module through
#: ``location.pathname``.
PAGES = (
    ("/", "home", "page_home"),
    ("/live/{room_id}", "live", "page_live"),
    ("/replay/{room_id}", "live", "page_replay"),
    ("/embed/{room_id}", "live", "page_embed"),
    ("/upcoming", "upcoming", "page_upcoming"),
    ("/search", "search", "page_search"),
    ("/login", "login", "page_login"),
    ("/register", "register", "page_register"),
    ("/profile", "profile", "page_profile"),
    ("/orders", "orders", "page_orders"),
    ("/orders/{order_id}", "order", "page_order"),
    ("/rooms/{room_id}/stats", "stats", "page_stats"),
)

BUNDLE_ENTRY = "src/moq-watch-entry.js"
BUNDLE_OUT = "vendor/moq-watch.js"
# The esbuild flags of the committed bundle; changing them changes the bundle.
ESBUILD_FLAGS = ("--bundle", "--format=esm", "--target=es2022", "--minify",
                 "--legal-comments=none", "--log-level=warning")


def _shell(page: str, settings: dict) -> bytes:
    """The HTML of one page: styles, settings for the modules, and the page's module."""
    data = html.escape(json.dumps(settings, separators=(",", ":")), quote=True)
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<link rel=\"icon\" href=\"data:,\">\n<title>shopcast</title>\n"
        "<link rel=\"stylesheet\" href=\"/static/app.css\">\n"
        f"<script type=\"module\" src=\"/static/pages/{page}.js\"></script>\n"
        "</head>\n"
        f"<body data-page=\"{page}\" data-settings=\"{data}\">\n"
        "<noscript>shopcast pages need JavaScript.</noscript>\n"
        "</body>\n</html>\n").encode("utf-8")


def register_pages(app: "ServerApp") -> None:
    """Add the page routes, ``/static/{path}`` and the demo room's chat token to ``app``'s
    router."""
    web = app.config.web
    settings = {"playerLatencyMs": web.player_latency_ms,
                "chatMessagesShown": web.chat_messages_shown,
                "pinsPollIntervalS": web.pins_poll_interval_s,
                "demoRoom": app.config.demo.room if app.config.demo.enabled else None,
                "moqPath": app.config.relay.path, "chatPath": app.config.chat.path,
                "datagramPath": app.config.datagram.path,
                "reactions": list(app.config.chat.reactions)}
    static = StaticFiles(STATIC_DIR, max_age_s=app.config.http.static_max_age_s)
    router = app.router
    for pattern, page, name in PAGES:
        body = _shell(page, settings)

        async def handler(request: Request, body: bytes = body, **params: str) -> Response:
            return Response(200, (("content-type", "text/html; charset=utf-8"),
                                  ("cache-control", "no-cache"),
                                  ("x-content-type-options", "nosniff")), body)

        router.add("GET", pattern, handler, name)
    router.add("GET", "/static/{path:path}", static.handle, "static")

    async def demo_token(request: Request) -> Response:
        """A viewer token for the demo room's chat, for a logged-in account: the demo room is
        no room of the rooms plugin, so its media-token route does not know it."""
        claims = app.authorize(request, roles=("viewer", "host", "operator", "service"))
        if not app.config.demo.enabled:
            raise HTTPError(404, "not_found", "the demo room is off", "room_id")
        ttl_s = app.config.tokens.default_ttl_s
        role = "operator" if claims.role in ("operator", "service") else "viewer"
        room = "*" if role == "operator" else app.config.demo.room
        token = app.tokens.mint(subject=claims.subject, role=role, room=room, ttl_s=ttl_s,
                                now=time.time())
        return Response.json({"token": token, "broadcast": app.config.demo.room,
                              "expires_in": ttl_s})

    router.add("POST", "/api/v1/demo/media-token", demo_token, "demo_media_token")


def documented_routes() -> list[tuple[str, str, str, str, str, tuple[str, ...], dict]]:
    """(method, pattern, name, summary, content type, roles, responses) of every route
    ``register_pages`` adds, for the OpenAPI document (plugins/_openapi.py)."""
    everyone = ("anonymous", "viewer", "host", "operator", "service")
    error = {"$ref": "#/components/schemas/Error"}
    html_page = {200: ("The page: an HTML shell that loads its ES module.", {"type": "string"})}
    routes = [("GET", pattern, name, f"The {page} page (HTML).", "text/html", everyone, html_page)
              for pattern, page, name in PAGES]
    routes.append(("GET", "/static/{path}", "static", "The pages' files (server/static/).",
                   "application/octet-stream", everyone,
                   {200: ("The file.", {"type": "string"}), 304: ("Not modified.", None),
                    404: ("No such file.", error)}))
    routes.append(("POST", "/api/v1/demo/media-token", "demo_media_token",
                   "A viewer token for the demo room's chat, for a logged-in account.",
                   "application/json", ("viewer", "host", "operator", "service"),
                   {200: ("A media token.", {"type": "object", "required": ["token", "broadcast", "expires_in"],
                                             "properties": {"token": {"type": "string"},
                                                            "broadcast": {"type": "string"},
                                                            "expires_in": {"type": "integer"}}}),
                    401: ("No token, or an invalid one.", error),
                    404: ("The demo room is off.", error)}))
    return routes


def build_player_bundle(web_packages: Path, out_file: Path) -> None:
    """Build the player bundle from server/static/src/ with the packages installed in
    ``web_packages`` (tests/web, ``npm ci``) into ``out_file``. Raises RuntimeError with
    esbuild's message when it fails."""
    esbuild = web_packages / "node_modules" / ".bin" / "esbuild"
    # Paths relative to the working directory, so the output names no machine's paths.
    entry = os.path.relpath(STATIC_DIR / BUNDLE_ENTRY, web_packages)
    result = subprocess.run(
        [str(esbuild), entry, *ESBUILD_FLAGS, f"--outfile={out_file}"],
        cwd=web_packages, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NODE_PATH": str(web_packages / "node_modules")})
    if result.returncode != 0:
        raise RuntimeError(f"esbuild failed:\n{result.stdout}\n{result.stderr}")


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python -m shopcast.server._pages build  (after `cd tests/web && npm ci`)")
    repo = Path(__file__).resolve().parents[1]
    build_player_bundle(repo / "tests" / "web", STATIC_DIR / BUNDLE_OUT)
    print(f"built {STATIC_DIR / BUNDLE_OUT}")
