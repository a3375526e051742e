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
import re
import secrets
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from shopcast.server._routing import HTTPError, Request, Response
from shopcast.server._static import STATIC_DIR, StaticFiles

if TYPE_CHECKING:
    from shopcast.server._app import ServerApp

__all__ = ["PAGES", "build_player_bundle", "documented_routes", "register_pages", "terms_text"]

GUEST_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
"""A browser's guest id (POST /api/v1/rooms/{room_id}/viewer-token)."""

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


def terms_text(app: "ServerApp") -> tuple[str, str]:
    """(title, text) of the terms of service: [web] terms_file, else server/static/terms.txt.
    The first line is the title."""
    path = Path(app.config.web.terms_file) if app.config.web.terms_file else STATIC_DIR / "terms.txt"
    text = path.read_text(encoding="utf-8").strip()
    title, _, rest = text.partition("\n")
    return title.strip(), rest.strip()


def _terms_page(title: str, text: str, version: str) -> bytes:
    paragraphs = "\n".join(f"<p>{html.escape(p.strip())}</p>" for p in text.split("\n\n") if p.strip())
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<link rel=\"icon\" href=\"data:,\">\n<title>{html.escape(title)}</title>\n"
        "<link rel=\"stylesheet\" href=\"/static/app.css\">\n</head>\n<body>\n"
        "<header><nav aria-label=\"shopcast\"><a href=\"/\" class=\"brand\">shopcast</a>"
        "<a href=\"/register\">Register</a></nav></header>\n"
        f"<main id=\"main\" class=\"terms\"><h1>{html.escape(title)}</h1>\n"
        f"<p class=\"muted\" id=\"terms-version\">Version {html.escape(version)}</p>\n"
        f"{paragraphs}\n</main>\n</body>\n</html>\n").encode("utf-8")


def register_pages(app: "ServerApp") -> None:
    """Add the page routes, ``/static/{path}``, ``/terms``, the demo room's chat token and the
    viewer token to ``app``'s router."""
    web = app.config.web
    settings = {"playerLatencyMs": web.player_latency_ms,
                "chatMessagesShown": web.chat_messages_shown,
                "pinsPollIntervalS": web.pins_poll_interval_s,
                "orderPollIntervalS": web.order_poll_interval_s,
                "orderPollMax": web.order_poll_max,
                "datagram": {"tickMs": web.datagram_tick_ms,
                             "nackAfterMs": web.datagram_nack_after_ms,
                             "heldPacketsMax": web.datagram_held_packets_max,
                             "framesPendingMax": web.datagram_frames_pending_max,
                             "audioAheadMaxS": web.datagram_audio_ahead_max_s},
                "demoRoom": app.config.demo.room if app.config.demo.enabled else None,
                "moqPath": app.config.relay.path, "chatPath": app.config.chat.path,
                "datagramPath": app.config.datagram.path,
                "reactions": list(app.config.chat.reactions)}
    static = StaticFiles(STATIC_DIR, max_age_s=app.config.http.static_max_age_s)
    router = app.router
    html_headers = (("content-type", "text/html; charset=utf-8"), ("cache-control", "no-cache"),
                    ("x-content-type-options", "nosniff"))

    def has_replay(room_id: str) -> bool:
        replays = getattr(app, "replays", None)
        return replays is not None and app.config.recording.enabled and replays.has_replay(room_id)

    for pattern, page, name in PAGES:
        body = _shell(page, settings)

        async def handler(request: Request, body: bytes = body, name: str = name,
                          **params: str) -> Response:
            room_id = params.get("room_id", "")
            if name == "page_live" and has_replay(room_id):
                # An ended room with a replay: its page is the replay (same query string).
                query = urllib.parse.urlencode(dict(request.query))
                target = f"/replay/{urllib.parse.quote(room_id, safe='')}" + (f"?{query}" if query else "")
                return Response(302, (("location", target), ("cache-control", "no-cache")), b"")
            if name == "page_replay":
                body = _shell("live", {**settings, "replayAvailable": has_replay(room_id)})
            return Response(200, html_headers, body)

        router.add("GET", pattern, handler, name)
    router.add("GET", "/static/{path:path}", static.handle, "static")

    async def terms(request: Request) -> Response:
        title, text = terms_text(app)
        return Response(200, html_headers, _terms_page(title, text, app.config.accounts.terms_version))

    router.add("GET", "/terms", terms, "page_terms")

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

    async def viewer_token(request: Request, room_id: str) -> Response:
        """A viewer token for ``room_id`` whose subject is the account (Bearer token) or the
        browser's guest id, so statistics count browsers, not addresses (CONTRACTS2.md)."""
        body = request.json() if request.body.strip() else {}
        guest_id = body.get("guest_id")
        unknown = sorted(set(body) - {"guest_id"})
        if unknown:
            raise HTTPError(400, "unknown_field", f"unknown field {unknown[0]}; allowed: guest_id",
                            unknown[0])
        if guest_id is not None and (not isinstance(guest_id, str) or not GUEST_ID.fullmatch(guest_id)):
            raise HTTPError(400, "bad_guest_id", "guest_id must be 16 to 64 characters of "
                            "A-Z a-z 0-9 _ -", "guest_id")
        rooms = app.plugins.get("rooms") if hasattr(app, "plugins") else None
        room = None
        if rooms is not None:
            try:
                room = await rooms.get(room_id)
            except HTTPError:
                room = None
        if room is None and room_id != settings["demoRoom"] and room_id not in app.relay.broadcasts \
                and not has_replay(room_id):
            raise HTTPError(404, "not_found", f"no room {room_id}", "room_id")
        if room is not None and room["state"] == "rehearsal":
            raise HTTPError(403, "rehearsal", "the rehearsal is visible only to the room's team "
                            "(POST /api/v1/rooms/{room_id}/media-token)", "room_id")
        if request.header("authorization") is not None:
            claims = app.authorize(request, roles=("viewer", "host", "operator", "service"))
            subject = claims.subject
            accounts = app.plugins.get("accounts") if hasattr(app, "plugins") else None
            if accounts is not None:
                try:
                    subject = (await accounts.require_account(claims))["id"]
                except HTTPError:
                    subject = claims.subject
        else:
            subject = f"guest:{guest_id or secrets.token_urlsafe(18)}"
        ttl_s = app.config.tokens.default_ttl_s
        now = time.time()
        token = app.tokens.mint(subject=subject, role="viewer", room=room_id, ttl_s=ttl_s, now=now)
        return Response.json({"token": token, "subject": subject,
                              "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + ttl_s))})

    router.add("POST", "/api/v1/rooms/{room_id}/viewer-token", viewer_token, "viewer_token")


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
    routes.append(("GET", "/terms", "page_terms", "The terms of service ([web] terms_file) and "
                   "their version ([accounts] terms_version).", "text/html", everyone, html_page))
    routes.append(("POST", "/api/v1/rooms/{room_id}/viewer-token", "viewer_token",
                   "A viewer token for the room: subject the account (with a Bearer token) or "
                   "guest:GUEST_ID (body {\"guest_id\"}, 16-64 of A-Za-z0-9_-; a new one when absent).",
                   "application/json", everyone,
                   {200: ("A viewer token.", {"type": "object", "required": ["token", "subject", "expires_at"],
                                              "properties": {"token": {"type": "string"},
                                                             "subject": {"type": "string"},
                                                             "expires_at": {"type": "string", "format": "date-time"}}}),
                    400: ("A bad guest_id or body.", error),
                    401: ("An invalid Bearer token.", error),
                    403: ("The room is in rehearsal.", error),
                    404: ("No such room.", error)}))
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
